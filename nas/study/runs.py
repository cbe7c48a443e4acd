"""A finished search run folder: its saved config, its study, and its trials' weights."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
from omegaconf import OmegaConf

from nas.cut.prune import cut_vocabulary, prune_model
from nas.models.loading import load_base_model, load_causal_lm
from nas.redact import ENV_VAR, is_masked, mask_url
from nas.study.space import task_vocabulary
from nas.study.storage import check_reachable, make_storage
from nas.study.weights import final_path, load_weights, trial_path


def load_run(run_dir: str | Path) -> tuple[Any, Any]:
    """(run config, study) of a search run folder."""

    run_dir = Path(run_dir)
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        raise ValueError(f"run_dir={str(run_dir)!r} is not a search run folder (no .hydra/config.yaml)")
    cfg = OmegaConf.load(cfg_path)
    storage = run_storage_url(cfg, run_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    check_reachable(storage)
    try:
        study = optuna.load_study(study_name=cfg.search.study_name, storage=make_storage(storage))
    except KeyError:
        raise ValueError(f"study {cfg.search.study_name!r} is not in {mask_url(storage)}") from None
    return cfg, study


def run_storage_url(cfg: Any, run_dir: Path) -> str:
    """The storage a run used. Its saved config holds NAS_STORAGE_URL as an interpolation, or a URL
    whose password was masked: either way the real URL comes from that environment variable."""

    raw = OmegaConf.to_container(cfg.search, resolve=False).get("storage")
    from_env = isinstance(raw, str) and ENV_VAR in raw and "${" in raw
    url = os.environ.get(ENV_VAR) if from_env else raw
    if is_masked(url):
        env = os.environ.get(ENV_VAR)
        if not env or mask_url(env) != url:
            raise ValueError(f"this run's search.storage is saved with its password masked ({url}); set the "
                             f"environment variable {ENV_VAR} to the full URL and run again")
        url = env
    if url:
        return str(url)
    local = run_dir / "study.db"
    if from_env and not local.is_file():
        raise ValueError(f"this run's study is in the storage named by {ENV_VAR}, which is not set here; "
                         "set it to the URL the search used")
    return f"sqlite:///{local.resolve()}"


def trial_weights(run_dir: Path, number: int) -> Path:
    """A trial's weights: the final stage's when it trained this trial, else the trial's own."""
    final = final_path(run_dir, number)
    return final if final.is_file() else trial_path(run_dir, number)


def rebuild_trial_model(cfg: Any, run_dir: Path, number: int, spec: Any, num_labels: int, label_names: Any) -> Any:
    """The pruned, fine-tuned model of a trial: base architecture cut to `spec`, its weights loaded
    (the final stage's when they exist). Which units were kept does not matter here: the saved
    weights replace them all; a cut vocabulary's ids do (they are the tokenizer's), read from the
    training text's ranking."""

    path = trial_weights(run_dir, number)
    if not path.is_file():
        raise ValueError(f"trial {number}'s weights are not in {path.parent} (only Pareto members keep weights)")
    if num_labels == 0:  # a language-modelling study (nas.quality.lm): the causal LM

        base = load_causal_lm(cfg.model.name_or_path)
    else:
        base = load_base_model(cfg.model.name_or_path, num_labels=num_labels, label_names=label_names)
    model = prune_model(base, replace(spec, vocab=None))
    if spec.vocab is not None:  # which ids a cut vocabulary keeps: the training text's ranking (cached by the search)
        cut_vocabulary(model, spec, SimpleNamespace(vocab=task_vocabulary(cfg)))
    load_weights(model, path)
    return model.eval()
