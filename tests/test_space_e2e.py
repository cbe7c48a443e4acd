"""A shipped space on a base it was not written for: `python -m nas.search +space=triple` on a saved
5-layer BERT (4 heads of size 64, hidden 256, FFN 1000) runs end to end with the sizes resolved from
fractions, printed and stored in the study; context quantiles resolve from the task's own token
lengths before anything expensive starts."""

from __future__ import annotations

import subprocess

import numpy as np
import optuna
import pandas as pd
import pytest
from transformers import AutoConfig

import tiny
from nas.config import compose
from nas.models.registry import base_shape
from nas.spec import BaseShape, SubnetSpec
from tiny import cli_args, cli_env

BERT5 = BaseShape(num_layers=5, num_heads=4, head_size=64, hidden_size=256, ffn_size=1000, max_positions=128)
VOCAB = 99
# search_spaces/triple.yaml on BERT5 at max_length=32 (the context cap: fractions 1/4, 1/2, 1 of 32)
TRIPLE_ON_BERT5 = {
    "layers": [1, 2, 3, 4, 5],
    "heads": [1, 2, 3, 4],
    "ffn": [96, 160, 256, 320, 416, 512, 576, 672, 736, 832, 928, 1000],
    "hidden": [96, 128, 160, 224, 256],
    "context": [8, 16, 32],
}
SHRINK = ["train.batch_size=16", "train.eval_batch_size=64", "base.max_steps=2", "base.batch_size=16", "max_length=32",
          "latency.warmup=1", "importance.max_batches=2", "importance.batch_size=16", "search.final_k=0"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bert5(tmp_path_factory):
    """A saved random 5-layer BERT folder with its tokenizer, and a small two-class CSV task (4..31 tokens
    a text with [CLS] and [SEP])."""
    env = tiny.task_folder(tmp_path_factory.mktemp("bert5"), words=(2, 30), layers=5, hidden=256, ffn=1000,
                           positions=128)
    assert base_shape(AutoConfig.from_pretrained(env["model"])) == BERT5
    return env


def test_triple_runs_end_to_end_on_a_5_layer_bert(bert5, tmp_path):
    run_dir = tmp_path / "run"
    args = cli_args(bert5, run_dir, "+space=triple", "search.n_trials=2", "train.max_steps=2", space=None)
    assert "model=hf" in args and f"model.name_or_path={bert5['model']}" in args
    proc = subprocess.run(args, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]

    # the resolved sizes are printed at the start, before the base line
    line = ("space triple on 5L/4H/1000F/256D: layers 1..5 | heads 1..4 | "
            "ffn [96, 160, 256, 320, 416, 512, 576, 672, 736, 832, 928, 1000] | hidden [96, 128, 160, 224, 256] | "
            "context [8, 16, 32]")
    assert line in out, out[-4000:]
    assert out.index(line) < out.index("base 5L/4H/1000F/256D")

    study = optuna.load_study(study_name="nas", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert study.user_attrs["space"] == "triple"
    assert study.user_attrs["space_choices"] == TRIPLE_ON_BERT5
    trained = [t for t in study.trials if "repeat_of" not in t.user_attrs]
    assert len(trained) == 2
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        spec = SubnetSpec.from_dict(t.user_attrs["spec"]).validate(BERT5)
        # the trial's parameters are the sizes of its shape, drawn from the resolved choices
        sizes = {"layers": len(spec.layers), "heads": spec.heads[0], "ffn": spec.ffn[0], "hidden": spec.hidden,
                 "context": spec.context}
        assert t.params == sizes
        for axis, value in sizes.items():
            assert value in TRIPLE_ON_BERT5[axis], (axis, value)
        assert len(set(spec.heads)) == 1 and len(set(spec.ffn)) == 1
        assert 0.0 <= t.user_attrs["val_accuracy"] <= 1.0 and t.user_attrs["params"] > 0
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == len(study.trials)
    assert set(trials["hidden"]) <= set(TRIPLE_ON_BERT5["hidden"])
    assert (run_dir / "pareto.csv").is_file()


# ---- context quantiles inside the search ---------------------------------------------------------


class Stop(Exception):
    pass


@pytest.mark.parametrize("max_length", [32, 12])
def test_context_quantiles_resolve_from_the_task_before_the_base_fine_tune(bert5, tmp_path, monkeypatch, max_length):
    from omegaconf import OmegaConf, open_dict
    from transformers import AutoTokenizer

    import nas.study.search
    from nas.data.tasks import load_task
    from nas.study.search import Search

    quantiles = [0.25, 0.5, 0.9, 1.0]
    space = {"name": "q", "axes": {"layers": {"low": 0.5, "high": 1.0}, "context": {"quantiles": quantiles}}}
    cfg = compose(["model=hf", f"model.name_or_path={bert5['model']}", "data=file", f"data.path={bert5['csv']}",
                   "+space=triple", f"cache_dir={tmp_path / 'cache'}", *SHRINK, f"max_length={max_length}"])
    with open_dict(cfg):
        cfg.space = OmegaConf.create(space)

    seen = []

    def no_prepare(cfg, **_):  # the expensive part: by now the space must be in sizes
        seen.append(search.space)
        raise Stop

    monkeypatch.setattr(nas.study.search, "prepare", no_prepare)
    resolved = []
    for _ in range(2):
        search = Search(cfg, tmp_path / "run")
        with pytest.raises(Stop):
            search.prepare()
        resolved.append(seen[-1])
    assert resolved[0] == resolved[1]  # deterministic
    assert resolved[0].base == BERT5 and resolved[0].choices()["layers"] == [3, 4, 5]

    # the same quantiles computed here from the task's training texts, as the model tokenizes them
    tokenizer = AutoTokenizer.from_pretrained(bert5["model"])
    texts = list(load_task(cfg["data"]).train["text"])
    lengths = np.array([len(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts])
    assert lengths.max() <= max_length
    per_quantile = [int(np.quantile(lengths, q, method="inverted_cdf")) for q in quantiles]
    for q, c in zip(quantiles, per_quantile):
        assert (lengths <= c).mean() >= q > (lengths <= c - 1).mean()  # the shortest context a share q fits in
    got = resolved[0].choices()["context"]
    assert got == list(dict.fromkeys(per_quantile))
    assert got[-1] == lengths.max() and all(c <= max_length for c in got)
    if max_length == 32:
        assert len(got) == len(quantiles)  # distinct lengths: 4..31 tokens, nothing cut
    else:
        assert got[-1] == 12  # the cap bounds the longest
