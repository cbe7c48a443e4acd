"""Checks that run before any expensive work (data loading, the base fine-tune, importance scores).

Each failure is a ValueError with one line naming the setting, the bad value and what is allowed.
`preflight(cfg, run_dir, settings=...)` is called at the top of `Search.prepare` and of
`nas.train.run_final`; `cli_prelude(argv)` runs before Hydra even parses the command line.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from nas.cut.importance import METHODS
from nas.cut.recovery import check_recovery
from nas.data.tasks import check_source
from nas.models.loading import read_config
from nas.models.registry import base_shape, family_for_config
from nas.redact import PASSWORD_WARNING, guard_output, hide_storage_password, mask
from nas.study.prepare import base_recipe, base_train_settings
from nas.study.storage import check_reachable, open_study, storage_url
from nas.util import cfg_get

RUN_DIR_KEY = "hydra.run.dir"


def writable_folder(path: str | Path, setting: str) -> Path:
    """Create `path` if needed and prove a file can be written in it; the resolved path."""
    path = Path(path).expanduser()
    shown = f"{setting}={str(path)!r}"
    blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"{shown} cannot be a folder: {str(blocker)!r} is a file; give a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".nas-write-check-"):
            pass
    except OSError as e:
        raise ValueError(f"{shown} is not writable ({e.strerror or type(e).__name__}); "
                         "give a folder you can write to") from None
    return path.resolve()


def _creatable(path: Path, setting: str) -> None:
    """Without creating anything: the nearest existing ancestor is a folder we may write in."""
    shown = f"{setting}={str(path)!r}"
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{shown} cannot be a folder: {str(parent)!r} is a file; give a folder path")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{shown} cannot be created: {str(parent)!r} is not writable; "
                                 "give a folder you can write to")
            return


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    return cfg_get(cfg, dotted, default)


def _int_setting(cfg: Any, key: str, default: int, *, low: int) -> int:
    value = _get(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key}={value!r} must be an integer >= {low}")
    return value


def check_model_and_length(cfg: Any) -> Any:
    """The base model's config (read cheaply, no weights) and max_length against its positions."""
    name = _get(cfg, "model.name_or_path")
    config = read_config(name)
    shape = base_shape(config)
    max_length = _get(cfg, "max_length", 128)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length={max_length!r} must be an integer; allowed: 2..{shape.max_positions}")
    if max_length > shape.max_positions:
        raise ValueError(f"max_length={max_length} exceeds the {shape.max_positions} positions of the model "
                         f"({name or 'embedded'}); allowed: 2..{shape.max_positions}")
    return config


def check_family_settings(cfg: Any, config: Any) -> None:
    """prune.recovery and hidden-state distillation (train.distill, final.distill) where the model's family
    applies them; elsewhere refused in one line instead of quietly skipped."""
    family = family_for_config(config)
    check_recovery(str(_get(cfg, "prune.recovery", "auto")), family)
    if family.hidden_distill:
        return
    for key in ("train.distill", "final.distill"):
        if _get(cfg, key) == "hidden":
            raise ValueError(f"{key}=hidden is for encoders whose hidden states pair layer by layer (BERT-style, "
                             f"DeBERTa); {family.name} models allow: logits")


def check_pipeline_settings(cfg: Any) -> None:
    """importance.* and base.*: used only after the data is loaded, checked now."""

    method = _get(cfg, "importance.method", "fisher")
    if method not in METHODS:
        raise ValueError(f"importance.method={method!r} is not known; allowed: {', '.join(METHODS)}")
    _int_setting(cfg, "importance.max_batches", 16, low=1)
    _int_setting(cfg, "importance.batch_size", 32, low=1)
    _int_setting(cfg, "base.batch_size", 32, low=1)
    _int_setting(cfg, "base.max_steps", 150, low=0)
    base_train_settings(cfg)  # base.lr and the train.* it inherits
    base_recipe(cfg)  # base.max_epochs, eval_every, patience


def preflight(cfg: Any, run_dir: str | Path, *, settings: Any = None) -> Any:
    """Every cheap check, cheapest first. With search `settings`: the storage too (connect,
    create or open the study); returns the opened study (None without settings)."""

    writable_folder(run_dir, RUN_DIR_KEY)
    cache = _get(cfg, "cache_dir")
    if cache not in (None, "", "none", "null"):
        writable_folder(str(cache), "cache_dir")
    check_source(_get(cfg, "data", {}))
    check_pipeline_settings(cfg)
    check_family_settings(cfg, check_model_and_length(cfg))
    if settings is None:
        return None

    check_reachable(storage_url(settings, Path(run_dir)))
    try:
        return open_study(settings, Path(run_dir))
    except ValueError:
        raise
    except Exception as e:  # the database answered but refused: permissions, schema, ...

        reason = mask(str(getattr(e, "orig", None) or e)).strip().splitlines()
        raise ValueError(f"search.storage: cannot create or open study {settings.study_name!r}: "
                         f"{type(e).__name__}: {reason[0] if reason else ''}") from None


def cli_prelude(argv: list[str]) -> str | None:
    """Before Hydra parses the command line: hide a storage password given there (the real URL is
    returned, to be restored into the config) and refuse a run folder Hydra could not create
    (Hydra would end with a traceback). Output is masked from here on."""

    guard_output()
    real_url = hide_storage_password(argv)
    if real_url is not None:
        print(PASSWORD_WARNING, file=sys.stderr)
    run_dirs = [arg.partition("=")[2] for arg in argv[1:] if arg.partition("=")[0].lstrip("+~") == RUN_DIR_KEY]
    run_dir = run_dirs[-1].strip("'\"") if run_dirs else "outputs"  # Hydra's default: outputs/DATE/TIME here
    if "${" not in run_dir:
        try:
            _creatable(Path(run_dir).expanduser().absolute(), RUN_DIR_KEY)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    return real_url
