"""Two search workers at once on one study (journal file, SQLite, PostgreSQL) and one cache:
every trial is accounted for, the base model is fine-tuned exactly once, and the second
worker does not replay the first one's shapes."""

from __future__ import annotations

import math
import re
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from pg import postgres_url_or_skip

from tiny import TINY_SPACE, cli_args, cli_env, tmp_leftovers

N_TRIALS = 3
TRIAL_LINE = re.compile(r"^trial\s+(\d+) (\w+)")
# The tiny space widened (33,744 shapes): two independent random streams start alike by chance
# far less often than the replay test could notice.
WIDE_SPACE = {**TINY_SPACE, "name": "tiny_wide", "align": 1,
              "axes": {**TINY_SPACE["axes"], "ffn": {"low": 1, "high": 37}, "context": {"low": 8, "high": 64}}}
CONTINUING = re.compile(r"continuing study '[^']*': (\d+) finished trials, (\d+) to go")


@contextmanager
def storage_url(kind: str, folder: Path):
    if kind == "journal":
        yield f"journal:{folder / 'study.log'}"
    elif kind == "sqlite":
        yield f"sqlite:///{(folder / 'study.db').resolve()}"
    else:
        with postgres_url_or_skip() as url:
            yield url


def open_storage(url: str):
    from nas.study.storage import make_storage

    return make_storage(url)  # the project's own mapping of URLs (journal:PATH included)


@pytest.fixture(scope="module", params=["journal", "sqlite", "postgresql"])
def two_workers(request, tiny_env, tmp_path_factory):
    """Start two `python -m nas.search` workers at once on one storage and one fresh cache; wait;
    return their outputs and the study's trials (the PostgreSQL server is gone afterwards)."""
    import optuna

    kind = request.param
    folder = tmp_path_factory.mktemp(f"workers_{kind}")
    cache = folder / "cache"  # fresh: the base fine-tune happens here
    name = "shared"
    with storage_url(kind, folder) as url:
        common = [f"search.storage={url}", f"search.study_name={name}", f"search.n_trials={N_TRIALS}",
                  "search.sampler=random", "train.max_steps=150", f"cache_dir={cache}", "base.max_steps=4", "search.final_k=0"]
        procs, logs = [], []
        t0 = time.monotonic()
        for i in range(2):
            logs.append(folder / f"worker{i}.log")
            with open(logs[-1], "w") as out:
                args = cli_args(tiny_env, folder / f"run{i}", *common, space=WIDE_SPACE)
                procs.append(subprocess.Popen(args, cwd=folder, env=cli_env(), stdout=out, stderr=subprocess.STDOUT))
        try:
            for proc in procs:
                proc.wait(timeout=max(1.0, 100 - (time.monotonic() - t0)))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        outputs = [log.read_text() for log in logs]
        for proc, out in zip(procs, outputs):
            assert proc.returncode == 0, out[-4000:]
        storage = open_storage(url)
        trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        if hasattr(storage, "engine"):
            storage.engine.dispose()
    ran = []  # per worker: {trial number: state} from its own "trial N STATE ..." lines
    for out in outputs:
        ran.append({int(m[1]): m[2] for m in map(TRIAL_LINE.match, out.splitlines()) if m})
    return {"kind": kind, "folder": folder, "cache": cache, "outputs": outputs, "trials": trials, "ran": ran}


def test_every_trial_is_accounted_for(two_workers):
    from optuna.trial import TrialState

    trials, ran, outputs = two_workers["trials"], two_workers["ran"], two_workers["outputs"]
    # search.n_trials is the study-wide target of finished (COMPLETE/PRUNED) trials: a worker
    # stops after a trial once the study has that many, and waits rather than start one while the
    # other's running trial can complete the target (Search.run). A trial both workers started at
    # the same moment past the target is not run: FAIL, marked surplus.
    for out in outputs:
        cont = CONTINUING.search(out)
        if cont:
            assert int(cont[2]) == max(0, N_TRIALS - int(cont[1]))
    # Trials take ~1-2 s while the waiting worker needs ~1 s more than the first to start: both
    # work on the study (otherwise this test would not exercise two writers at all).
    assert all(ran), [sorted(r) for r in ran]
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # no duplicate or missing numbers
    assert not set(ran[0]) & set(ran[1])  # no trial run by both workers
    assert set(ran[0]) | set(ran[1]) == set(numbers)  # every trial ran in one of them
    surplus = [t for t in trials if t.user_attrs.get("surplus")]
    assert all(t.state == TrialState.FAIL for t in surplus)
    trials = [t for t in trials if not t.user_attrs.get("surplus")]
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    # a proposal of a shape already tried reuses its result and does not count (repeat_of)
    assert len([t for t in trials if "repeat_of" not in t.user_attrs]) == N_TRIALS
    for t in trials:
        assert {**ran[0], **ran[1]}[t.number] == "COMPLETE"
        assert all(math.isfinite(v) for v in t.values)
        assert t.values == [t.user_attrs["val_accuracy"], t.user_attrs["latency_ratio"]]  # paired with the base
    # Each worker's reports parse and only name trials of the study, its own included.
    for i in range(2):
        run = two_workers["folder"] / f"run{i}"
        assert tmp_leftovers(run) == []
        frame = pd.read_csv(run / "trials.csv")
        assert frame["number"].is_unique
        assert set(frame["number"]) <= set(numbers) and set(ran[i]) <= set(frame["number"])


def test_base_is_finetuned_once(two_workers):
    cache, text = two_workers["cache"], "\n".join(two_workers["outputs"])
    # One worker fine-tuned under the lock; the other waited and loaded the cached folder.
    assert text.count("base model: fine-tuning") == 1, text[-4000:]
    assert text.count("base model: cached fine-tune") == 1, text[-4000:]
    assert len([p for p in (cache / "base").iterdir() if p.is_dir()]) == 1
    assert text.count("importance scores: computed") == 1
    assert text.count("importance scores: cached") == 1
    assert len(list((cache / "importance").glob("*.pt"))) == 1
    assert tmp_leftovers(cache) == []


def test_second_worker_does_not_replay_the_first(two_workers):
    """With one search.seed for both workers (the default), the second must not sample the very
    shapes the first did, in the same order: that is a trial budget spent twice."""
    # A surplus trial (both workers started one at the same moment past the target) was never
    # sampled into a shape: it is not part of either worker's sequence.
    by_number = {t.number: t.user_attrs["shape"] for t in two_workers["trials"] if not t.user_attrs.get("surplus")}
    assert len(by_number) >= N_TRIALS
    first, second = sorted(two_workers["ran"], key=lambda r: min(r, default=0))
    a = [by_number[n] for n in sorted(first) if n in by_number]
    b = [by_number[n] for n in sorted(second) if n in by_number]
    assert a, first
    if not b:  # its only trial came too late and was surplus: it sampled nothing, so replayed nothing
        pytest.skip(f"the second worker sampled no shape this time (its trials: {second})")
    assert b != a[: len(b)], f"worker 2 replayed worker 1's shapes: {a} then {b}"
