"""Reliability of the search on the tiny setting: a killed worker is resumed (stale trial failed
and retried, finished trials kept, reports rebuilt), a failing trial is contained, repeated
failures stop the search with one clear line, and a seeded search repeats itself exactly."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sqlite3
import subprocess
import time

import pandas as pd
import pytest
import torch

from tiny import TINY_SPACE, cli_args, cli_env, load, make_cfg, tmp_leftovers, trained_trials

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the tiny setting on the command line ---------------------------------------------------------


# ---- 1. kill -9 during a trial, then resume ---------------------------------------------------------


def test_killed_worker_is_resumed(tiny_env, tmp_path):
    import optuna
    from optuna.trial import TrialState

    url, name = f"sqlite:///{(tmp_path / 'study.db').resolve()}", "killed"
    assert url.startswith("sqlite:////")
    run_dir = tmp_path / "run"
    grace = 2
    args = cli_args(tiny_env, run_dir, "search.n_trials=4", "search.sampler=random", "train.max_steps=120",
                    f"search.storage={url}", f"search.study_name={name}", "search.heartbeat_interval=1",
                    f"search.grace_period={grace}")
    log1 = tmp_path / "first.log"
    with open(log1, "w") as out:
        proc = subprocess.Popen(args, cwd=tmp_path, env=cli_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        # trials.csv appears once trial 0 is finished: the storage exists by then.
        deadline = time.monotonic() + 90
        while not (run_dir / "trials.csv").is_file():
            assert proc.poll() is None, f"search exited early ({proc.returncode}):\n{log1.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no trial finished in 90 s"
            time.sleep(0.1)
        storage = optuna.storages.RDBStorage(url)  # a plain reader: no heartbeat of its own
        study_id = storage.get_study_id_from_name(name)
        # Kill once a trial is COMPLETE and the next one is RUNNING with its shape sampled and its first
        # heartbeat written: Optuna writes it from a thread, and a trial killed before that write has
        # no heartbeat, so no worker could ever see it as stale.

        def has_heartbeat(trial_id: int) -> bool:
            with contextlib.closing(sqlite3.connect(tmp_path / "study.db")) as db:
                return db.execute("SELECT 1 FROM trial_heartbeats WHERE trial_id = ?", (trial_id,)).fetchone() is not None

        while True:
            trials = storage.get_all_trials(study_id)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            if (any(t.state == TrialState.COMPLETE for t in trials) and running and "spec" in running[0].user_attrs
                    and has_heartbeat(running[0]._trial_id)):
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = time.monotonic()
                break
            assert proc.poll() is None, f"search ended before it could be killed:\n{log1.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "never saw a RUNNING trial after a COMPLETE one"
            time.sleep(0.05)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    before = storage.get_all_trials(study_id)
    storage.remove_session()
    storage.engine.dispose()
    complete_before = [t for t in before if t.state == TrialState.COMPLETE]
    (killed,) = [t for t in before if t.state == TrialState.RUNNING]
    assert killed.params and len(killed.params) == len(TINY_SPACE["axes"])

    # What the killed run left on disk is whole: reports written atomically, no temp files.
    assert tmp_leftovers(run_dir) == []
    trials_csv = pd.read_csv(run_dir / "trials.csv")
    assert sorted(trials_csv["number"]) == sorted(t.number for t in complete_before)
    assert set(trials_csv["state"]) == {"COMPLETE"}
    assert trials_csv["val_accuracy"].notna().all() and trials_csv["latency_ms"].notna().all()
    pareto = pd.read_csv(run_dir / "pareto.csv")
    assert pareto["is_base"].astype(bool).sum() == 1
    members = set(pareto.loc[~pareto["is_base"].astype(bool), "number"].astype(int))
    assert members and members <= {t.number for t in complete_before}

    # The stale trial is failed only once its heartbeat is older than grace_period.
    time.sleep(max(0.0, grace + 1.5 - (time.monotonic() - killed_at)))
    second = subprocess.run(args, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=110)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert (f"continuing study '{name}': {len(complete_before)} finished trials, "
            f"{4 - len(complete_before)} to go") in out, out[-4000:]

    study = load(url, name)
    trials = study.trials
    states = [t.state for t in trials]
    assert all(s.is_finished() for s in states), states
    retries = [t for t in trials if t.system_attrs.get("failed_trial") is not None]
    # the resumed run seeds its own sampler, so it may propose a shape already tried: reused, not counted
    repeats = [t for t in trials if "repeat_of" in t.user_attrs]
    assert len(trials) == 4 + len(retries) + len(repeats), states
    assert states.count(TrialState.COMPLETE) == 4 + len(repeats) and states.count(TrialState.FAIL) == 1, states
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    for old in complete_before:  # finished work is kept as it was
        new = trials[old.number]
        assert new.state == TrialState.COMPLETE
        assert (new.values, new.params, new.user_attrs) == (old.values, old.params, old.user_attrs)
    assert trials[killed.number].state == TrialState.FAIL
    # Optuna's RetryFailedTrialCallback queued the killed shape again, marked with 'failed_trial'.
    (retry,) = retries
    assert retry.system_attrs["failed_trial"] == killed.number
    assert retry.system_attrs.get("retry_history") == [killed.number]
    assert retry.number > killed.number and retry.state == TrialState.COMPLETE
    assert retry.params == killed.params
    assert retry.user_attrs["spec"] == killed.user_attrs["spec"]
    assert math.isfinite(retry.user_attrs["val_accuracy"])

    # Reports rebuilt over the whole study.
    assert tmp_leftovers(run_dir) == []
    trials_csv = pd.read_csv(run_dir / "trials.csv")
    assert list(trials_csv["number"]) == [t.number for t in trials]
    assert list(trials_csv["state"]) == [s.name for s in states]
    pareto = pd.read_csv(run_dir / "pareto.csv")
    members = set(pareto.loc[~pareto["is_base"].astype(bool), "number"].astype(int))
    assert members == {t.number for t in study.best_trials if "repeat_of" not in t.user_attrs}
    assert (run_dir / "best.yaml").is_file()


# ---- 2. a failing trial does not stop the study --------------------------------------------------


def faulty_finetune(monkeypatch, *, fail_on: set[int] | None, fault: str = "runtime") -> list[int]:
    """Patch the trial's fine-tune (nas.study.trial.finetune): trial calls in `fail_on`
    (1-based; None = every one) fail. The base fine-tune (no teacher_cache) is left alone."""
    import nas.study.trial

    real = nas.study.trial.finetune
    calls: list[int] = []

    def patched(model, loader, settings, **kwargs):
        if "teacher_cache" not in kwargs:
            return real(model, loader, settings, **kwargs)
        calls.append(len(calls) + 1)
        if fail_on is None or calls[-1] in fail_on:
            if fault == "runtime":
                raise RuntimeError("injected fault")
            with torch.no_grad():  # a real NaN loss: the training step must notice it
                for p in model.classifier.parameters():
                    p.fill_(float("nan"))
        return real(model, loader, settings, **kwargs)

    monkeypatch.setattr(nas.study.trial, "finetune", patched)
    return calls


@pytest.mark.parametrize("fault, reason", [("runtime", "RuntimeError: injected fault"),
                                           ("nan", "FloatingPointError: non-finite training loss nan")])
def test_failing_trial_is_contained(tiny_env, tmp_path, monkeypatch, fault, reason):
    from optuna.trial import TrialState

    from nas.study.search import run_search

    calls = faulty_finetune(monkeypatch, fail_on={2}, fault=fault)
    run = tmp_path / "run"
    study, search = run_search(make_cfg(tiny_env, "search.n_trials=3", "search.sampler=random", "train.max_steps=4"), run)
    # n_trials counts finished trials (COMPLETE/PRUNED): the failed one is made up for.
    assert len(calls) == 4
    states = [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert [t.state for t in study.trials] == states
    failed = study.trials[1]
    assert failed.user_attrs["fail_reason"].startswith(reason), failed.user_attrs["fail_reason"]
    assert "\n" not in failed.user_attrs["fail_reason"]
    assert "spec" in failed.user_attrs and "val_accuracy" not in failed.user_attrs
    assert search.loop.consecutive_failures == 0

    trials = pd.read_csv(run / "trials.csv")
    assert list(trials["state"]) == [s.name for s in states]
    assert trials.loc[1, "fail_reason"].startswith(reason)
    assert trials.loc[[0, 2, 3], "val_accuracy"].notna().all()
    pareto = pd.read_csv(run / "pareto.csv")
    members = set(pareto.loc[~pareto["is_base"].astype(bool), "number"].astype(int))
    assert members and members <= {0, 2, 3}
    assert not (run / "models" / "trial_1.safetensors").exists()
    assert (run / "best.yaml").is_file()
    assert tmp_leftovers(run) == []


# ---- 3. consecutive failures stop the search -------------------------------------------------------


def test_consecutive_failures_stop_the_search(tiny_env, tmp_path, monkeypatch):
    from optuna.trial import TrialState

    from nas.study.search import run_search

    calls = faulty_finetune(monkeypatch, fail_on=None)
    run = tmp_path / "run"
    cfg = make_cfg(tiny_env, "search.n_trials=5", "search.sampler=random", "train.max_steps=4",
                   "search.max_consecutive_failures=2")
    with pytest.raises(RuntimeError) as info:
        run_search(cfg, run)
    message = str(info.value)
    assert message == "stopped after 2 consecutive failed trials; last error: RuntimeError: injected fault"
    assert len(calls) == 2  # stopped at once: no third trial
    study = load(f"sqlite:///{(run / 'study.db').resolve()}", "nas")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert list(pd.read_csv(run / "trials.csv")["state"]) == ["FAIL", "FAIL"]


def test_cli_consecutive_failures_exit_with_one_line(tiny_env, tmp_path):
    # lr=1e30 blows the weights up: every trial's loss turns NaN at step 1 (the base uses base.lr).
    args = cli_args(tiny_env, tmp_path / "run", "search.n_trials=5", "search.sampler=random", "train.max_steps=4",
                    "train.lr=1e30", "search.max_consecutive_failures=2")
    proc = subprocess.run(args, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=90)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    errors = [line for line in out.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, out[-3000:]
    assert errors[0].startswith("error: stopped after 2 consecutive failed trials; last error: FloatingPointError: "
                                "non-finite training loss nan"), errors[0]
    assert [line for line in proc.stdout.splitlines() if line.strip()][-1] == errors[0]
    assert len([line for line in proc.stdout.splitlines() if line.startswith("trial ")]) == 2
    assert list(pd.read_csv(tmp_path / "run" / "trials.csv")["state"]) == ["FAIL", "FAIL"]


# ---- 4. the same seed gives the same search -------------------------------------------------------


def test_same_seed_same_trials_and_accuracies(tiny_env, tmp_path):
    from nas.study.search import run_search

    def summary(run: str) -> list[tuple]:
        study, _ = run_search(make_cfg(tiny_env, "search.n_trials=3", "train.max_steps=6", "search.seed=3"),
                              tmp_path / run)
        return [(t.number, t.state.name, t.user_attrs["spec"], t.user_attrs["val_accuracy"], t.user_attrs["final_loss"])
                for t in study.trials]

    first, second = summary("a"), summary("b")  # fresh run folders, one shared cache
    assert len(first) == 3 and len({str(row[2]) for row in first}) > 1
    for a, b in zip(first, second, strict=True):
        assert a[:3] == b[:3]
        assert a[3] == pytest.approx(b[3], abs=1e-6)
        assert a[4] == pytest.approx(b[4], abs=1e-6)


@pytest.mark.parametrize("sampler", ["random", "nsga2"])
def test_resumed_search_samples_new_shapes(tiny_env, tmp_path, sampler):
    """Continuing a study must not restart the sampler's random stream: the new trials would
    re-evaluate the shapes of the first ones, in the same order."""
    from nas.study.search import run_search

    run = tmp_path / "run"
    first, _ = run_search(make_cfg(tiny_env, "search.n_trials=2", f"search.sampler={sampler}", "train.max_steps=2"), run)
    study, _ = run_search(make_cfg(tiny_env, "search.n_trials=4", f"search.sampler={sampler}", "train.max_steps=2"), run)
    # the resumed run's proposals, repeats included: a replayed stream proposes trials 0 and 1 again, in order
    shapes = [t.user_attrs["shape"] for t in study.trials]
    assert len(trained_trials(study)) == 4
    assert shapes[2:4] != shapes[:2], f"the resumed run replayed the first trials' shapes: {shapes}"
