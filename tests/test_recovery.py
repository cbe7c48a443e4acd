"""No trial stuck RUNNING: a worker that dies leaves its trial RUNNING, and the next worker to
look (at its start, and after each of its trials) fails it and queues its shape again, once.

Unit level on SQLite, the journal file and PostgreSQL: which RUNNING trials are taken as dead
(process gone from this machine, pid reused, heartbeat stale, no heartbeat since the start,
journal start time past search.stale_timeout) and which are left alone; two workers recovering
at the same moment queue each shape once. Process level: a real worker killed with SIGKILL on the
journal file, and one killed before its first heartbeat on SQLite, are requeued by the next worker.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pg import postgres_url_or_skip

from tiny import cli_args, cli_env, load, tmp_leftovers

pytestmark = pytest.mark.usefixtures("one_thread")

GRACE = 2
TIMEOUT = 50  # search.stale_timeout for the journal cases


# ---- unit level: which RUNNING trials are dead -------------------------------------------------------


@pytest.fixture(scope="module")
def pg_url():
    with postgres_url_or_skip() as url:
        yield url


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def study(request, tmp_path):
    """A fresh two-objective study on each storage kind, with heartbeat where the storage has one."""
    import optuna

    from nas.study.storage import dispose, make_storage

    kind = request.param
    name = f"recovery_{tmp_path.name}"
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'study.db'}"
    elif kind == "journal":
        url = f"journal:{tmp_path / 'study.log'}"
    else:
        url = request.getfixturevalue("pg_url")
    storage = make_storage(url, heartbeat_interval=1, grace_period=GRACE)
    study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"])
    study.kind, study.url = kind, url
    yield study
    dispose(storage)


def dead_process() -> dict:
    """The record of a worker that ran on this machine and is gone (a real, reaped process)."""
    from nas.study.storage import process_start, this_worker

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = process_start(proc.pid)
        assert start is not None
    finally:
        proc.kill()
        proc.wait()
    return {**this_worker(), "pid": proc.pid, "pid_start": start}


def add_running(study, number_hint: str, *, worker: dict | None, started_ago: float = 0.0) -> int:
    """A RUNNING trial with a sampled shape, as a worker leaves it; returns its trial id."""
    import optuna
    from optuna.distributions import IntDistribution
    from optuna.trial import TrialState

    from nas.study.storage import WORKER_ATTR

    template = optuna.create_trial(state=TrialState.RUNNING, params={"layers": len(number_hint)},
                                   distributions={"layers": IntDistribution(1, 20)},
                                   user_attrs={"case": number_hint},
                                   system_attrs={WORKER_ATTR: worker} if worker else {})
    template.datetime_start = dt.datetime.now() - dt.timedelta(seconds=started_ago)
    if worker:
        worker["started"] = time.time() - started_ago
    return study._storage.create_new_trial(study._study_id, template_trial=template)


def by_case(study) -> dict:
    return {t.user_attrs["case"]: t for t in study.get_trials(deepcopy=False) if "retry_history" not in t.system_attrs}


def recover(study, *, grace_period: int = GRACE, **kw):
    from nas.study.storage import recover_stale_trials

    heartbeat = study.kind != "journal"
    return recover_stale_trials(study, heartbeat=heartbeat, grace_period=grace_period, stale_timeout=TIMEOUT, **kw)


def test_dead_and_live_workers(study):
    from optuna.trial import TrialState

    from nas.study.storage import WORKER_ATTR, process_start, this_worker

    live_child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        reused = {**this_worker(), "pid": live_child.pid, "pid_start": process_start(live_child.pid) - 1}
        elsewhere = {**this_worker(), "host": "another-machine", "pid": 1}
        add_running(study, "gone", worker=dead_process())
        add_running(study, "pidreused", worker=reused)  # a live process now holds the dead worker's pid
        add_running(study, "alive", worker=this_worker(), started_ago=10_000)  # this very process: alive
        add_running(study, "alivechild", worker={**this_worker(), "pid": live_child.pid,
                                                  "pid_start": process_start(live_child.pid)}, started_ago=10_000)
        add_running(study, "remote_new", worker=dict(elsewhere), started_ago=0)
        # a worker that sends no heartbeat (search.heartbeat_interval=0): judged by its start time only
        add_running(study, "remote_no_beat", worker={**elsewhere, "heartbeat": 0}, started_ago=GRACE + 10)
        add_running(study, "remote_old", worker=dict(elsewhere), started_ago=TIMEOUT + 20)
        add_running(study, "unrecorded_old", worker=None, started_ago=GRACE + 10)  # died before recording itself
        add_running(study, "unrecorded_new", worker=None, started_ago=0)  # may be about to record itself
        recovered = recover(study)
        again = recover(study)  # looking again changes nothing: no second retry, live trials untouched
    finally:
        live_child.kill()
        live_child.wait()

    # on every storage: a local worker is judged by its process; another machine's by heartbeat
    # (none was ever written: stale after search.grace_period) or, on the journal, by start time
    # against search.stale_timeout
    expected_dead = {"gone", "pidreused", "remote_old", "unrecorded_old"}
    cases = by_case(study)
    assert {c for c, t in cases.items() if t.state == TrialState.FAIL} == expected_dead
    assert {c for c, t in cases.items() if t.state == TrialState.RUNNING} == {"alive", "alivechild", "remote_new",
                                                                               "remote_no_beat", "unrecorded_new"}
    assert sorted(r.number for r in recovered) == sorted(cases[c].number for c in expected_dead)
    reasons = {cases[c].number: r.reason for r in recovered for c in expected_dead if cases[c].number == r.number}
    assert "on this machine) is gone" in reasons[cases["gone"].number]
    assert "on this machine) is gone" in reasons[cases["pidreused"].number]
    assert reasons[cases["unrecorded_old"].number].startswith("no worker recorded itself in the ")
    if study.kind == "journal":
        assert f"longer than search.stale_timeout={TIMEOUT} (this storage has no heartbeat)" in \
            reasons[cases["remote_old"].number]
    else:
        assert "never sent a heartbeat" in reasons[cases["remote_old"].number]
    for c in expected_dead:  # the reason is on the failed trial (trials.csv shows it)
        assert cases[c].system_attrs["fail_reason"].startswith("worker lost: ")

    # each dead trial's shape is queued once, marked as Optuna's retry callback marks it
    retries = [t for t in study.get_trials(deepcopy=False) if "retry_history" in t.system_attrs]
    assert sorted(t.system_attrs["failed_trial"] for t in retries) == sorted(cases[c].number for c in expected_dead)
    for t in retries:
        original = study.trials[t.system_attrs["failed_trial"]]
        assert t.state == TrialState.WAITING and t.params == original.params
        assert t.system_attrs["retry_history"] == [original.number]
        assert WORKER_ATTR not in t.system_attrs and "fail_reason" not in t.system_attrs
        assert {r.retry for r in recovered if r.number == original.number} == {t.number}

    assert again == []
    # the child worker has died since: the next look takes its trial, and only that one (a long
    # grace period here, so that "unrecorded_new" is not old enough yet on a slow machine)
    (late,) = recover(study, grace_period=600)
    assert late.number == cases["alivechild"].number and late.retry is not None
    assert len([t for t in study.get_trials(deepcopy=False) if "retry_history" in t.system_attrs]) == len(expected_dead) + 1
    assert recover(study, grace_period=600) == []


def test_heartbeat_decides_for_other_machines(study):
    """Database storages: another machine's trial is alive while its heartbeat is fresh, whatever
    its age, and dead once the heartbeat is older than search.grace_period."""
    from optuna.trial import TrialState

    from nas.study.storage import this_worker

    if study.kind == "journal":
        pytest.skip("the journal file has no heartbeat (its rule is the start time, tested above)")
    elsewhere = {**this_worker(), "host": "another-machine", "pid": 1}
    beating = add_running(study, "beating", worker=dict(elsewhere), started_ago=1000)
    silent = add_running(study, "silent", worker=dict(elsewhere), started_ago=1000)
    backend = study._storage._backend
    backend.record_heartbeat(silent)
    backend.record_heartbeat(beating)
    assert recover(study) == []  # both beat a moment ago
    time.sleep(GRACE + 1.5)
    backend.record_heartbeat(beating)
    (recovered,) = recover(study)
    cases = by_case(study)
    assert recovered.number == cases["silent"].number and "sent no heartbeat for" in recovered.reason
    assert cases["silent"].state == TrialState.FAIL and cases["beating"].state == TrialState.RUNNING


def test_retries_are_bounded(study):
    """A shape whose worker dies every time is queued again at most MAX_RETRY times."""
    from optuna.trial import TrialState

    from nas.study.storage import MAX_RETRY

    add_running(study, "crashy", worker=dead_process())
    for attempt in range(MAX_RETRY + 1):
        (r,) = recover(study)
        if attempt < MAX_RETRY:
            assert r.retry is not None
            retry = study.trials[r.retry]
            assert retry.system_attrs["retry_history"] == list(range(attempt + 1))
            assert retry.system_attrs["failed_trial"] == 0
            # the retry is picked up by a worker that dies too
            study._storage.set_trial_state_values(retry._trial_id, TrialState.RUNNING)
            from nas.study.storage import WORKER_ATTR

            study._storage.set_trial_system_attr(retry._trial_id, WORKER_ATTR, dead_process())
        else:
            assert r.retry is None and r.why_not == f"not queued again: shape already retried {MAX_RETRY} times"
    assert len(study.trials) == MAX_RETRY + 1
    assert all(t.state == TrialState.FAIL for t in study.trials)


def test_two_workers_recovering_at_once_queue_each_shape_once(study):
    """Both workers see the same dead trials at the same moment: each is failed and queued once."""
    import optuna
    from optuna.trial import TrialState

    from nas.study.storage import dispose, make_storage

    for i in range(4):
        add_running(study, "x" * (i + 1), worker=dead_process())
    others = [optuna.load_study(study_name=study.study_name,
                                storage=make_storage(study.url, heartbeat_interval=1, grace_period=GRACE))
              for _ in range(2)]
    for other in others:
        other.kind = study.kind
    results: list = [None, None]
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        barrier.wait()
        results[i] = recover(others[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for other in others:
        dispose(other._storage)
    won = sorted(r.number for rs in results for r in rs)
    assert won == [0, 1, 2, 3]  # every dead trial recovered by exactly one of the two
    retries = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING]
    assert sorted(t.system_attrs["failed_trial"] for t in retries) == [0, 1, 2, 3]


def test_fail_if_running_is_a_compare_and_set(study):
    from optuna.trial import TrialState

    from nas.study.storage import fail_if_running

    trial_id = add_running(study, "cas", worker=dead_process())
    assert fail_if_running(study._storage, trial_id) is True
    assert fail_if_running(study._storage, trial_id) is False
    assert study.trials[0].state == TrialState.FAIL


# ---- opening a fresh database from several workers at once --------------------------------------------


OPEN_STUDY = """
import sys, time
from pathlib import Path
from nas.study.settings import SearchSettings
from nas.study.storage import dispose, open_study
settings = SearchSettings.from_cfg({"storage": sys.argv[1], "study_name": "together", "sampler": "random"})
while time.time() < float(sys.argv[2]):
    pass
study = open_study(settings, Path("."))
print(study.study_name, len(study.directions))
dispose(study._storage)
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_workers_opening_a_fresh_database_at_once(kind, tmp_path, request):
    """Optuna creates the tables and stamps the schema version when it first opens a database;
    workers started together race for that (one got 'UNIQUE constraint failed:
    alembic_version.version_num'). Every one of them must open the study."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}" if kind == "sqlite" else request.getfixturevalue("pg_url")
    go = time.time() + 8  # all start their first query at the same moment, imports done
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STUDY, url, str(go)], cwd=tmp_path, env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
        assert out.strip() == "together 2"


# ---- process level: real workers killed with SIGKILL --------------------------------------------------


def running_with_shape(url: str, name: str):
    """The RUNNING trials that have sampled their shape, read with a plain storage."""
    from optuna.trial import TrialState

    from nas.study.storage import dispose, make_storage

    storage = make_storage(url)
    try:
        import optuna

        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            return [], []
        trials = study.get_trials(deepcopy=False)
        return trials, [t for t in trials if t.state == TrialState.RUNNING and "spec" in t.user_attrs]
    finally:
        dispose(storage)


def kill_during_a_trial(args: list[str], url: str, name: str, folder: Path, log_name: str) -> tuple:
    """Start a worker, SIGKILL it once a trial is COMPLETE and the next one RUNNING with its shape;
    return (the killed trial, the trials before the kill)."""
    from optuna.trial import TrialState

    log = folder / log_name
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=folder, env=cli_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150
        while True:
            trials, running = running_with_shape(url, name)
            if running and any(t.state == TrialState.COMPLETE for t in trials):
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert proc.poll() is None, f"worker exited before it could be killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "never saw a RUNNING trial after a COMPLETE one"
            time.sleep(0.05)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    trials, running = running_with_shape(url, name)
    (killed,) = running
    return killed, trials


def check_requeued_and_finished(url: str, name: str, killed, output: str, n_trials: int) -> None:
    from optuna.trial import TrialState

    line = (f"recovered trial {killed.number}, left RUNNING: its worker (pid {killed.system_attrs['nas_worker']['pid']} "
            "on this machine) is gone; marked FAIL, its shape is queued again as trial ")
    assert line in output, output[-4000:]
    trials, _ = running_with_shape(url, name)
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, states
    assert trials[killed.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["spec"] == killed.user_attrs["spec"]
    assert retry.system_attrs["retry_history"] == [killed.number]
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and "repeat_of" not in t.user_attrs]
    assert len(counted) == n_trials
    assert len({str(t.user_attrs["spec"]) for t in counted}) == n_trials  # no shape trained twice


def test_killed_worker_on_the_journal_is_requeued(tiny_env, tmp_path):
    """The journal file has no heartbeat: the next worker on this machine sees the pid is gone."""
    url, name, n = f"journal:{tmp_path / 'study.log'}", "journal_kill", 3
    args = cli_args(tiny_env, tmp_path / "run", f"search.n_trials={n}", "search.sampler=random", "train.max_steps=150",
                    f"search.storage={url}", f"search.study_name={name}")
    killed, before = kill_during_a_trial(args, url, name, tmp_path, "first.log")
    assert killed.system_attrs["nas_worker"]["host"] and killed.system_attrs["nas_worker"]["pid_start"]
    t0 = time.monotonic()
    second = subprocess.run(args, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=200)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    check_requeued_and_finished(url, name, killed, out, n)
    assert time.monotonic() - t0 < 200
    assert tmp_leftovers(tmp_path / "run") == []


def test_worker_killed_before_its_first_heartbeat_is_requeued(tiny_env, tmp_path):
    """A trial with no heartbeat row was never picked up by Optuna's own stale check. The first worker
    here writes no heartbeat at all (heartbeat_interval=0): its trial is exactly what a worker killed
    before its first heartbeat leaves. The next worker (heartbeat on) requeues it at once, without
    waiting for any grace period."""
    db = tmp_path / "study.db"
    url, name, n = f"sqlite:///{db}", "no_heartbeat", 3
    common = [f"search.n_trials={n}", "search.sampler=random", "train.max_steps=150", f"search.storage={url}",
              f"search.study_name={name}"]
    first = cli_args(tiny_env, tmp_path / "run", *common, "search.heartbeat_interval=0")
    killed, _ = kill_during_a_trial(first, url, name, tmp_path, "first.log")
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("SELECT COUNT(*) FROM trial_heartbeats").fetchone()[0] == 0
    second_args = cli_args(tiny_env, tmp_path / "run", *common, "search.heartbeat_interval=5", "search.grace_period=600")
    second = subprocess.run(second_args, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=200)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    check_requeued_and_finished(url, name, killed, out, n)
    study = load(url, name)
    assert "worker lost: its worker (pid" in study.trials[killed.number].system_attrs["fail_reason"]
