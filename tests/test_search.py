"""The search end to end on a tiny random BERT and a tiny CSV task: trials, reports, resuming,
reproducibility, infeasible shapes, and the command line's fast failures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from nas.spec import SubnetSpec
from tiny import ROOT, TINY_SHAPE, TINY_SPACE, make_cfg, trained_trials

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB, TYPES, LABELS = 99, 2, 2


def bert_params(spec: SubnetSpec) -> int:
    """Closed-form parameter count of a pruned BertForSequenceClassification."""
    d, a = spec.hidden, TINY_SHAPE.head_size
    total = VOCAB * d + spec.context * d + TYPES * d + 2 * d  # embeddings + LayerNorm
    for h, f in zip(spec.heads, spec.ffn, strict=True):
        total += 3 * (d * h * a + h * a) + (h * a * d + d) + 2 * d  # Q, K, V, output, LayerNorm
        total += (d * f + f) + (f * d + d) + 2 * d  # FFN in, out, LayerNorm
    return total + (d * d + d) + (d * LABELS + LABELS)  # pooler, classifier


def finished_specs(study) -> list[dict]:
    return [t.user_attrs["spec"] for t in sorted(study.trials, key=lambda t: t.number)]


@pytest.fixture(scope="module")
def first_run(tiny_env):
    from nas.study.search import run_search

    run_dir = tiny_env["root"] / "run1"
    t0 = time.perf_counter()
    study, search = run_search(make_cfg(tiny_env), run_dir)
    return {"study": study, "search": search, "run_dir": run_dir, "seconds": time.perf_counter() - t0}


@pytest.fixture
def finetune_calls(monkeypatch) -> list[int]:
    """Counts fine-tunes in this process, the base's and the trials': one entry (the model's layer count)
    per call (nas.quality.finetune's own name for the base, nas.study.trial's for a trial)."""
    import nas.quality.finetune
    import nas.study.trial

    calls: list[int] = []
    real = nas.quality.finetune.finetune

    def counting(model, *args, **kwargs):
        calls.append(model.config.num_hidden_layers)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(nas.quality.finetune, "finetune", counting)
    monkeypatch.setattr(nas.study.trial, "finetune", counting)
    return calls


# ---- a 2-trial search ---------------------------------------------------------------------------


def test_two_trial_search_end_to_end(first_run):
    from optuna.trial import TrialState

    study, search = first_run["study"], first_run["search"]
    assert search.prep.shape == TINY_SHAPE
    assert len(study.trials) == 2
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert study.user_attrs["space"] == "tiny"
    assert study.user_attrs["objectives"] == ["accuracy", "latency"]
    assert study.metric_names == ["val_accuracy", "latency_ratio"]
    recorded = study.user_attrs["latency"]
    assert recorded["inputs"] == "real" and recorded["runtime"] == "torch" and recorded["batch_size"] == 1
    lengths = study.user_attrs["task_lengths"]
    assert lengths["n"] == len(search.prep.task.train) and lengths["p50"] <= lengths["p95"] <= lengths["max"] <= 32

    base = search.base_metrics
    assert base["params"] == bert_params(SubnetSpec.full(TINY_SHAPE))
    assert base["latency_ms"] > 0 and base["flops"] > 0
    for t in study.trials:
        a = t.user_attrs
        spec = SubnetSpec.from_dict(a["spec"]).validate(TINY_SHAPE)
        assert a["shape"] == spec.describe() and a["n_layers"] == len(spec.layers)
        assert a["hidden"] == spec.hidden and a["context"] == spec.context
        # the latency objective is the ratio to the base timed beside it, in the same rounds
        assert t.values == [a["val_accuracy"], a["latency_ratio"]]
        assert a["latency_ratio"] == pytest.approx(1 / a["speedup"])
        assert 0.0 <= a["val_accuracy"] <= 1.0
        assert a["latency_ms"] > 0 and a["latency_p90_ms"] >= a["latency_ms"] and a["base_latency_ms"] > 0
        assert a["speedup_p10"] <= a["speedup"] <= a["speedup_p90"]
        # real inputs, truncated at the trial's context: never longer than it
        assert 0 < a["mean_tokens"] <= min(spec.context, 32) and a["latency_cap"] == min(spec.context, 32)
        assert a["params"] == bert_params(spec)
        if spec != SubnetSpec.full(TINY_SHAPE):
            assert a["params"] < base["params"]
        assert a["flops"] > 0
        assert a["size_mb"] == pytest.approx(a["params"] * 4 / 1e6, rel=0.05)
        assert a["seconds_finetune"] > 0


def test_reports_of_the_search(first_run):
    study, run = first_run["study"], first_run["run_dir"]
    trials = pd.read_csv(run / "trials.csv")
    assert len(trials) == 2
    for col in ("number", "state", "n_layers", "heads", "ffn", "hidden", "context", "shape", "val_accuracy",
                "test_accuracy", "latency_ms", "speedup", "params", "flops", "size_mb"):
        assert col in trials.columns, col
    assert list(trials["state"]) == ["COMPLETE", "COMPLETE"]

    pareto = pd.read_csv(run / "pareto.csv")
    members = pareto[~pareto["is_base"].astype(bool)]
    assert len(members) >= 1 and pareto["is_base"].astype(bool).sum() == 1
    assert set(members["number"].astype(int)) == {t.number for t in study.best_trials}
    assert members["test_accuracy"].notna().all()
    test_acc = study.user_attrs["test_accuracy"]
    for _, row in members.iterrows():
        assert row["test_accuracy"] == pytest.approx(test_acc[str(int(row["number"]))])
        assert 0.0 <= row["test_accuracy"] <= 1.0
    # weights are kept for exactly the front members
    kept = {int(p.stem.split("_")[1]) for p in (run / "models").glob("trial_*.safetensors")}
    assert kept == {t.number for t in study.best_trials}

    assert (run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotly" in (run / "pareto.html").read_text().lower()
    best = yaml.safe_load((run / "best.yaml").read_text())
    spec = SubnetSpec.from_dict(best["spec"]).validate(TINY_SHAPE)
    assert best["trial"] in set(members["number"].astype(int))
    assert spec == SubnetSpec.from_dict(study.trials[best["trial"]].user_attrs["spec"])
    assert best["space"] == "tiny" and best["model"] == str(first_run["search"].cfg.model.name_or_path)
    assert (run / "study.db").is_file()
    assert not [p.name for p in run.iterdir() if "tmp" in p.name]


def test_search_continues_and_reuses_the_cached_base(tiny_env, first_run, finetune_calls):
    from nas.study.search import run_search

    run = tiny_env["root"] / "run1_continued"
    shutil.copytree(first_run["run_dir"], run)
    before = [(t.number, t.user_attrs["spec"], t.values) for t in first_run["study"].trials]
    base_infos = sorted((tiny_env["cache"] / "base").glob("*/info.json"))
    assert len(base_infos) == 1
    stamp = (base_infos[0].stat().st_mtime_ns, base_infos[0].read_text())
    scores = sorted((tiny_env["cache"] / "importance").glob("*.pt"))
    score_stamps = [p.stat().st_mtime_ns for p in scores]

    study, search = run_search(make_cfg(tiny_env, "search.n_trials=3"), run)
    # the continuing run seeds its own sampler (pid-derived), so it may propose a tried shape first:
    # such a repeat reuses its result and does not count
    assert len(trained_trials(study)) == 3
    assert [(t.number, t.user_attrs["spec"], t.values) for t in study.trials[:2]] == before
    assert len(finetune_calls) == 1  # the new trial only: the base fine-tune came from the cache
    assert search.prep.base_info.get("cached") is True
    assert sorted((tiny_env["cache"] / "base").glob("*/info.json")) == base_infos
    assert (base_infos[0].stat().st_mtime_ns, base_infos[0].read_text()) == stamp
    assert [p.stat().st_mtime_ns for p in sorted((tiny_env["cache"] / "importance").glob("*.pt"))] == score_stamps
    assert len(pd.read_csv(run / "trials.csv")) == len(study.trials)

    # a finished study with as many trials as asked runs none
    n_before = len(study.trials)
    finetune_calls.clear()
    study, _ = run_search(make_cfg(tiny_env, "search.n_trials=3"), run)
    assert len(study.trials) == n_before and finetune_calls == []


def test_trial_settings_reuse_the_cached_base_and_its_scores(tiny_env, tmp_path, finetune_calls):
    """The base depends on its recipe and optimiser, not on how trials train: a run that changes only
    trial settings (threads, steps, distillation, evaluation batch) must not fine-tune it again; one
    that changes what the base trains with gets a new base, and importance scores of that base."""
    from nas.study.prepare import prepare

    cache = tmp_path / "cache"

    def cached_files():
        return sorted((cache / "base").glob("*/info.json")), sorted((cache / "importance").glob("*.pt"))

    first = prepare(make_cfg(tiny_env, f"cache_dir={cache}"))
    assert first.base_info["cached"] is False and len(finetune_calls) == 1
    # its validation accuracy (taken from the monitor, not measured twice) is the restored weights'
    from nas.data.tasks import make_loader, sorted_by_length, tokenize
    from nas.quality.metrics import accuracy

    val = sorted_by_length(tokenize(first.task.validation, first.tokenizer, max_length=32))
    assert first.base_info["validation_accuracy"] == accuracy(first.base, make_loader(val, first.tokenizer,
                                                                                     batch_size=64, shuffle=False))
    made = cached_files()
    assert [len(files) for files in made] == [1, 1]

    again = prepare(make_cfg(tiny_env, f"cache_dir={cache}", "train.threads=1", "train.max_steps=7",
                             "train.distill=hidden", "train.hidden_weight=2", "train.temperature=3",
                             "train.distill_weight=0.9", "train.eval_batch_size=8"))
    assert again.base_info["cached"] is True and again.base_info["key"] == first.base_info["key"]
    assert len(finetune_calls) == 1 and cached_files() == made
    assert torch.equal(again.scores.heads, first.scores.heads)

    other = prepare(make_cfg(tiny_env, f"cache_dir={cache}", "train.weight_decay=0.3"))
    assert other.base_info["cached"] is False and other.base_info["key"] != first.base_info["key"]
    assert len(finetune_calls) == 2
    assert [len(files) for files in cached_files()] == [2, 2]  # the new base got its own scores


def test_the_band_rows_are_held_out_of_every_selection(tiny_env, tmp_path):
    """final.judge_share of the validation rows go to `judge`, which only the final stage's band reads: the base's
    early stopping, the trials, the rungs and the members' checkpoints read `validation`, the rest; the two are a
    seeded partition of the task's validation split, and share 0 holds nothing out."""
    from collections import Counter

    from nas.data.tasks import load_task
    from nas.study.prepare import prepare

    cfg = make_cfg(tiny_env, f"cache_dir={tmp_path / 'cache'}")
    whole = list(load_task(cfg.data).validation["text"])
    prep = prepare(cfg)
    select, judge = list(prep.task.validation["text"]), list(prep.task.judge["text"])
    assert Counter(select) + Counter(judge) == Counter(whole)  # every row in exactly one of them
    assert len(judge) == round(0.5 * len(whole)) and select and judge
    again = prepare(cfg)
    assert list(again.task.judge["text"]) == judge  # the same rows every run (seeded)
    none = prepare(make_cfg(tiny_env, f"cache_dir={tmp_path / 'cache'}", "final.judge_share=0"))
    assert none.task.judge is None and sorted(none.task.validation["text"]) == sorted(whole)
    assert none.base_info["key"] != prep.base_info["key"]  # a base stopped early on other rows is another base


def test_same_seed_same_shapes_in_separate_runs(tiny_env, first_run):
    from nas.study.search import run_search

    study, _ = run_search(make_cfg(tiny_env), tiny_env["root"] / "run_same_seed")
    assert finished_specs(study) == finished_specs(first_run["study"])
    other, _ = run_search(make_cfg(tiny_env, "search.seed=1"), tiny_env["root"] / "run_other_seed")
    assert finished_specs(other) != finished_specs(first_run["study"])


def test_too_slow_shape_is_pruned_without_finetuning(tiny_env):
    from optuna.trial import TrialState

    from nas.study.search import run_search

    run = tiny_env["root"] / "run_infeasible"
    study, _ = run_search(make_cfg(tiny_env, "search.n_trials=1", "search.max_latency_ms=1e-6"), run)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    a = trial.user_attrs
    assert a["infeasible"] is True
    assert "max_latency_ms" in a["fail_reason"]
    assert a["latency_ms"] > 1e-6
    assert "seconds_finetune" not in a and "val_accuracy" not in a
    trials = pd.read_csv(run / "trials.csv")
    assert list(trials["state"]) == ["PRUNED"] and bool(trials["infeasible"].iloc[0])
    assert not (run / "best.yaml").exists()
    assert not list(run.glob("models/*.safetensors"))


def test_repeated_shapes_are_not_trained_again_and_an_exhausted_space_stops(tiny_env, monkeypatch, finetune_calls):
    """A 2-shape space asked for 3 trials: each shape trains once, repeats reuse the results and
    do not count, and the search stops after MAX_CONSECUTIVE_REPEATS repeats in a row."""
    import nas.study.loop
    from nas.study.search import run_search

    monkeypatch.setattr(nas.study.loop, "MAX_CONSECUTIVE_REPEATS", 4)
    space = {"name": "two_depths", "per_layer": False, "axes": {"layers": {"low": 1, "high": 2}}}
    run = tiny_env["root"] / "run_repeats"
    study, _ = run_search(make_cfg(tiny_env, "search.n_trials=3", "search.sampler=random", space=space), run)

    trained = [t for t in study.trials if "repeat_of" not in t.user_attrs]
    repeats = [t for t in study.trials if "repeat_of" in t.user_attrs]
    assert sorted(len(t.user_attrs["spec"]["layers"]) for t in trained) == [1, 2]
    assert sorted(finetune_calls) == [1, 2]  # one fine-tune per distinct shape
    assert len(repeats) >= 4 and all("repeat_of" in t.user_attrs for t in study.trials[-4:])
    by_number = {t.number: t for t in study.trials}
    for t in repeats:
        original = by_number[t.user_attrs["repeat_of"]]
        assert "repeat_of" not in original.user_attrs and original.number < t.number
        assert t.user_attrs["spec"] == original.user_attrs["spec"]
        assert t.values == original.values and "seconds_finetune" not in t.user_attrs
    assert {p.name for p in (run / "models").glob("*.safetensors")} <= {f"trial_{t.number}.safetensors" for t in trained}

    front = pd.read_csv(run / "pareto.csv")
    members = front[~front["is_base"]]
    assert set(members["number"].astype(int)) <= {t.number for t in trained}
    assert members["repeat_of"].isna().all()
    table = pd.read_csv(run / "trials.csv")
    assert len(table) == len(study.trials)
    assert sorted(table["repeat_of"].dropna().astype(int)) == sorted(t.user_attrs["repeat_of"] for t in repeats)


def test_time_budget_stops_new_trials_once_spent(tiny_env, finetune_calls):
    """search.time_budget: once the run's seconds are spent no new trial starts, whatever n_trials says;
    the trial that spent it is kept and reported. A budget spent before the first trial runs none."""
    from nas.study.search import Search
    from nas.study.settings import SearchSettings

    run = tiny_env["root"] / "run_budget"
    search = Search(make_cfg(tiny_env, "search.n_trials=50", "search.time_budget=3600"), run)
    search.prepare()
    evaluate = search.evaluate_trial

    def spend_it(trial, spec):  # the first trial uses up the hour
        values = evaluate(trial, spec)
        search.started -= 3600
        return values

    search.evaluate_trial = spend_it
    study = search.run()
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(finished) == 1 and len(study.trials) == 1 and finetune_calls == [len(finished[0].user_attrs["spec"]["layers"])]
    assert len(pd.read_csv(run / "trials.csv")) == 1

    finetune_calls.clear()
    late = Search(make_cfg(tiny_env, "search.n_trials=50", "search.time_budget=1e-9"), tiny_env["root"] / "run_late")
    late.prepare()
    assert len(late.run().trials) == 0 and finetune_calls == []
    assert SearchSettings.from_cfg({"time_budget": None}).time_budget is None


# ---- the command line fails fast ----------------------------------------------------------------


def run_cli(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NAS_CACHE_DIR": str(tmp_path / "cache")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nas.search", f"hydra.run.dir={tmp_path / 'run'}", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    return proc, time.perf_counter() - t0


def test_cli_without_space_lists_the_spaces(tmp_path):
    from nas.study.space import available_spaces

    proc, seconds = run_cli(tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "+space=" in out
    for name in ("depth", "width", "length", "dual", "triple"):
        assert name in out, out
    assert set(available_spaces()) >= {"depth", "width", "length", "dual", "triple"}
    assert "Traceback" not in out
    assert not (tmp_path / "cache" / "base").exists()  # nothing heavy started
    assert seconds < 20, seconds


def test_cli_unknown_sampler_is_one_line(tmp_path):
    proc, seconds = run_cli(tmp_path, "+space=depth", "search.sampler=bogus")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert "bogus" in lines[0] and "search.sampler" in lines[0] and "nsga2" in lines[0]
    assert not (tmp_path / "cache" / "base").exists()
    assert seconds < 20, seconds


def test_bad_settings_fail_before_prepare(tiny_env, tmp_path, monkeypatch):
    """Search() validates every setting up front: nothing is loaded or trained on a typo."""
    import nas.study.search
    from nas.study.search import Search

    monkeypatch.setattr(nas.study.search, "prepare", lambda cfg: pytest.fail("prepare() ran"))
    for override, word in [("search.sampler=bogus", "bogus"), ("search.objectives=[latency,accuracy]", "objectives"),
                           ("search.n_trials=0", "n_trials"),
                           ("latency.sample_size=0", r"latency\.sample_size=0 must be an integer >= 1"),
                           ("latency.runtime=tvm", r"latency\.runtime='tvm' is not known; allowed: torch, onnxruntime"),
                           ("latency.inputs=padded", r"latency\.inputs='padded' is not known; allowed: real, fixed"),
                           ("latency.rounds=1", r"latency\.rounds=1 must be >= 3"),
                           ("latency.seq_len=64", r"latency\.seq_len=64 applies to latency\.inputs=fixed only"),
                           ("train.distill_weight=2", "distill_weight"), ("search.max_latency_ms=-1", "max_latency_ms"),
                           ("search.time_budget=0", r"search\.time_budget=0\.0 must be > 0"),
                           # a wrong type: refused by the config's schema when it is composed (nas/config.py)
                           ("search.time_budget=soon", r"search\.time_budget='soon': Value 'soon' of type 'str' could "
                                                       r"not be converted to Float")]:
        with pytest.raises(ValueError, match=word):
            Search(make_cfg(tiny_env, override), tmp_path / "bad")
    bad_space = {**TINY_SPACE, "axes": {"depth": {"low": 1, "high": 2}}}
    with pytest.raises(ValueError, match="unknown axis 'depth'"):
        Search(make_cfg(tiny_env, space=bad_space), tmp_path / "bad")


def test_space_too_big_for_the_base_fails_in_prepare(tiny_env, tmp_path):
    from nas.study.search import Search

    big = {**TINY_SPACE, "axes": {**TINY_SPACE["axes"], "layers": {"low": 1, "high": 6}}}
    search = Search(make_cfg(tiny_env, space=big), tmp_path / "big")
    with pytest.raises(ValueError, match="layers choice 3"):
        search.prepare()
