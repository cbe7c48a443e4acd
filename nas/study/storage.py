"""The Optuna storage: URLs, the reachability check, opening the study, and trials left RUNNING.

- `make_storage(url)`: sqlite:///PATH, postgresql://..., any SQLAlchemy URL, or journal:PATH.
- `check_reachable(url)`: connect once, before any expensive work; one line naming the host,
  the port and the driver's own reason when it fails.
- `open_study(settings, run_dir)`: create the study or join it (a joiner seeds its own sampler).
- Trials left RUNNING by a killed worker: every running trial records its worker (host, pid and
  the pid's start time, `record_worker`); `recover_stale_trials` fails a RUNNING trial whose
  process is gone from this machine, or, for another machine, whose heartbeat (database
  storages) or start time plus `search.stale_timeout` (journal file: no heartbeat) is too old,
  or which no worker recorded within `search.grace_period` of its start, and queues its shape
  again, exactly once even when several workers look at the same moment.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
import random
import socket
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy
from optuna.exceptions import ExperimentalWarning, StorageInternalError, UpdateFinishedTrialError
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from nas.redact import mask_url, register
from nas.study.settings import make_sampler

log = logging.getLogger("nas.search")

WORKER_ATTR = "nas_worker"  # trial system attribute: who runs it
FAIL_REASON = "fail_reason"
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
# The driver a URL without one (postgresql://) gets, in order of preference, and what to install.
DEFAULT_DRIVERS = {"postgresql": ("psycopg", "psycopg2"), "mysql": ("MySQLdb", "pymysql")}
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
                   "pymysql": "PyMySQL", "pg8000": "pg8000", "oracledb": "oracledb", "pyodbc": "pyodbc"}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}
# A killed trial's shape is queued again at most this many times (a shape that kills its worker
# every time must not take the whole study down with it).
MAX_RETRY = 2


def _masked(url: str) -> str:
    return mask_url(url)


def storage_url(settings: Any, run_dir: Path) -> str:
    if settings.storage:
        return str(settings.storage)
    return f"sqlite:///{(Path(run_dir) / 'study.db').resolve()}"


def is_journal(url: str) -> bool:
    return url.startswith("journal:") or ("://" not in url and url.endswith(JOURNAL_SUFFIXES))


def journal_path(url: str) -> Path:
    return Path(url.removeprefix("journal:").removeprefix("//")).expanduser()


def normalize_url(url: str) -> str:
    """postgres:// -> postgresql://, and a URL that names no driver gets one that is installed:
    SQLAlchemy 2.1 picks psycopg (3) for postgresql://, while psycopg2 is the one commonly installed."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    scheme, sep, rest = url.partition("://")
    if sep and "+" not in scheme and scheme in DEFAULT_DRIVERS:
        installed = [m for m in DEFAULT_DRIVERS[scheme] if importlib.util.find_spec(m) is not None]
        if installed and installed[0] != DEFAULT_DRIVERS[scheme][0]:
            return f"{scheme}+{installed[0].lower()}://{rest}"
    return url


def _one_line(text: str) -> str:
    parts = [p.strip() for p in str(text).replace("\t", " ").splitlines()]
    return "; ".join(p for p in parts if p and not p.startswith("(Background on this error"))


def check_reachable(url: str, *, timeout_s: int = 10) -> None:
    """Connect to the storage once; a ValueError with one line if that is not possible."""

    shown = f"search.storage={_masked(url)!r}"
    if is_journal(url):
        path = journal_path(url)
        folder = path.parent
        blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise ValueError(f"{shown}: the journal file cannot be written: {str(blocker)!r} is a file, not a folder; "
                             "give a path in a folder you can write to")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(path, "ab"):
                pass
        except OSError as e:
            raise ValueError(f"{shown}: the journal file cannot be written ({e.strerror or e}); "
                             "give a path in a folder you can write to") from None
        return
    if "://" not in url:
        raise ValueError(f"{shown} is not a storage URL; allowed: sqlite:///PATH, postgresql://USER@HOST:PORT/DB "
                         "(any SQLAlchemy URL), or journal:PATH")
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ValueError(f"{shown} is not a valid database URL ({_one_line(e)}); allowed: sqlite:///PATH, "
                         "postgresql://USER@HOST:PORT/DB, or journal:PATH") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        db = parsed.database or ""
        if db and db != ":memory:" and not db.startswith("file:"):
            folder = Path(db).expanduser().resolve().parent
            if not folder.is_dir():
                raise ValueError(f"{shown}: the folder {str(folder)!r} of the SQLite file does not exist; "
                                 "create it or give another path (an absolute path needs four slashes: sqlite:////abs/path.db)")
    connect_args: dict[str, Any] = {}
    if backend in ("postgresql", "mysql", "mariadb"):
        connect_args["connect_timeout"] = timeout_s
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args)
    except NoSuchModuleError:
        raise ValueError(f"{shown}: no database dialect {parsed.drivername!r} in SQLAlchemy; allowed: sqlite:///PATH, "
                         "postgresql://..., mysql://..., or journal:PATH") from None
    except ImportError as e:
        module = getattr(e, "name", None) or str(e)
        package = DRIVER_PACKAGES.get(module, module)
        example = {"postgresql": "postgresql+psycopg2://", "mysql": "mysql+pymysql://"}.get(backend, "DIALECT+DRIVER://")
        raise ValueError(f"{shown}: the database driver {module!r} is not installed; install it "
                         f"(pip install {package}) or name an installed driver in the URL, e.g. {example}") from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as e:
        reason = _one_line(getattr(e, "orig", None) or e)
        if backend == "sqlite":
            raise ValueError(f"{shown}: cannot open the SQLite file ({reason})") from None
        host = parsed.host or "localhost"
        port = parsed.port or f"{DEFAULT_PORTS.get(backend, '?')} (default)"
        raise ValueError(f"{shown}: cannot connect to the database at host {host}, port {port}: {reason}") from None
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------- the storage


def _rdb_storage_class() -> type:
    class Storage(RDBStorage):
        """RDBStorage whose stale trials are handled by `recover_stale_trials` alone: Optuna's own
        check (run at every trial start) would fail them with a read-then-write that two workers
        can both win on SQLite, and queue the shape twice."""

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            return []

        def heartbeat_ages(self, study_id: int) -> dict[int, float]:
            """Seconds since the last heartbeat of each RUNNING trial that has one (database clock)."""
            with _create_scoped_session(self.scoped_session, True) as session:
                now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
                rows = (session.query(models.TrialHeartbeatModel.trial_id, models.TrialHeartbeatModel.heartbeat)
                        .join(models.TrialModel, models.TrialModel.trial_id == models.TrialHeartbeatModel.trial_id)
                        .filter(models.TrialModel.study_id == study_id)
                        .filter(models.TrialModel.state == TrialState.RUNNING)
                        .all())
            return {trial_id: (now - beat.replace(tzinfo=None)).total_seconds() for trial_id, beat in rows}

        def fail_if_running(self, trial_id: int) -> bool:
            """RUNNING -> FAIL in one conditional UPDATE: exactly one caller wins."""

            now_utc = datetime.now(timezone.utc).replace(tzinfo=None)  # Optuna stores naive UTC
            with _create_scoped_session(self.scoped_session, True) as session:
                result = session.execute(
                    sqlalchemy.update(models.TrialModel)
                    .where(models.TrialModel.trial_id == trial_id, models.TrialModel.state == TrialState.RUNNING)
                    .values({models.TrialModel.state: TrialState.FAIL, models.TrialModel._datetime_complete_utc: now_utc})
                    .execution_options(synchronize_session=False)
                )
                return result.rowcount == 1

    return Storage


def make_storage(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None) -> Any:
    """An Optuna storage for a URL: sqlite:///..., postgresql://..., or journal:PATH (a journal file).

    Database storages record a heartbeat every `heartbeat_interval` seconds while a trial runs;
    `recover_stale_trials` uses it. A journal file has no heartbeat.
    """

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    register(url)
    if is_journal(url):
        path = journal_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ValueError(f"search.storage={_masked(url)!r} is not a storage URL; use sqlite:///PATH, postgresql://..., "
                         "or journal:PATH")
    url = normalize_url(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 120}  # several local workers wait for the file lock
    else:
        engine_kwargs["pool_pre_ping"] = True
    kwargs: dict[str, Any] = {}
    if heartbeat_interval:
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period or 2 * heartbeat_interval)
    return _rdb_storage_class()(url, engine_kwargs=engine_kwargs, **kwargs)


def _make_storage_retrying(url: str, *, attempts: int = 6, **kwargs: Any) -> Any:
    """make_storage, tried again when another worker is creating the same fresh database at this very
    moment (Optuna creates the tables and stamps the schema version: the loser of that race gets an
    IntegrityError or "database is locked")."""

    for attempt in range(attempts):
        try:
            return make_storage(url, **kwargs)
        except (SQLAlchemyError, StorageInternalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)
    raise AssertionError("unreachable")


def dispose(storage: Any) -> None:
    """Close a storage's database connections (a no-op for a journal file)."""
    backend = getattr(storage, "_backend", storage)
    engine = getattr(backend, "engine", None)
    if engine is not None:
        backend.remove_session()
        engine.dispose()


def open_study(settings: Any, run_dir: Path) -> Any:
    """Create the study, or join it when this storage already holds one with this name.

    Only the process that creates the study samples with `search.seed` as given: a worker
    joining it, or a run continuing it, derives its own seed (from the seed, the trials so far
    and its pid), otherwise it would replay the shapes already tried.
    """

    if optuna.logging.get_verbosity() < optuna.logging.WARNING:  # "A new study created ...": not news
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _make_storage_retrying(storage_url(settings, run_dir), heartbeat_interval=settings.heartbeat_interval,
                                     grace_period=settings.grace_period)
    try:
        return optuna.create_study(study_name=settings.study_name, storage=storage, directions=settings.directions,
                                   sampler=make_sampler(settings))
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=settings.study_name, storage=storage)
    if list(study.directions) != [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else
                                  optuna.study.StudyDirection.MINIMIZE for d in settings.directions]:
        raise ValueError(
            f"search.study_name={settings.study_name!r} exists in this storage with {len(study.directions)} objectives; "
            f"search.objectives={list(settings.objectives)} does not match it (use another study_name)"
        )
    n = len(study.get_trials(deepcopy=False))
    seed = int(np.random.SeedSequence([settings.seed, n, os.getpid()]).generate_state(1)[0])
    return optuna.load_study(study_name=settings.study_name, storage=storage,
                             sampler=make_sampler(dataclasses.replace(settings, seed=seed)))


# ---------------------------------------------------------------------------- who runs a trial


@functools.lru_cache(maxsize=1)
def _machine() -> tuple[str, str | None, str | None]:
    """(host name, boot id, pid namespace): a pid means the same process only within all three."""
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip() or None
        except OSError:
            return None

    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = None
    return socket.gethostname(), read("/proc/sys/kernel/random/boot_id"), pidns


def process_start(pid: int) -> int | None:
    """The start time of a live process (clock ticks since boot, /proc/PID/stat field 22), or None
    when there is no such process or it is a zombie (killed, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def has_proc() -> bool:
    return Path("/proc/self/stat").is_file()


def this_worker() -> dict[str, Any]:
    host, boot, pidns = _machine()
    pid = os.getpid()
    return {"host": host, "boot": boot, "pidns": pidns, "pid": pid, "pid_start": process_start(pid),
            "started": time.time()}


def record_worker(trial: Any) -> None:
    """Note on a running trial which process runs it, and whether it sends heartbeats (read by
    `recover_stale_trials`)."""

    storage = trial.storage
    beats = storage.get_heartbeat_interval() if is_heartbeat_enabled(storage) else 0
    storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, {**this_worker(), "heartbeat": beats or 0})


def local_process_state(info: dict[str, Any]) -> str:
    """'alive' or 'gone' for a worker of this machine; 'elsewhere' for another machine (or container)."""
    host, boot, pidns = _machine()
    if info.get("host") != host or info.get("pidns") != pidns:
        return "elsewhere"
    if info.get("boot") and boot and info["boot"] != boot:
        return "gone"  # the machine restarted since
    pid = int(info.get("pid", -1))
    if has_proc():
        start = process_start(pid)
        if start is None:
            return "gone"
        # the pid of a dead worker may belong to a new process by now: compare start times
        return "alive" if info.get("pid_start") in (None, start) else "gone"
    if pid == os.getpid():
        return "alive"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "alive"
    return "alive"


# ---------------------------------------------------------------------------- trials left RUNNING


@dataclass(frozen=True)
class Recovered:
    number: int
    reason: str
    retry: int | None  # number of the queued retry, None when nothing was queued
    why_not: str = ""


def _started(trial: Any, info: dict[str, Any] | None) -> float | None:
    if info and info.get("started"):
        return float(info["started"])
    if trial.datetime_start is not None:
        return trial.datetime_start.timestamp()  # naive local time, as Optuna stores it
    return None


def stale_reason(trial: Any, *, heartbeat_age: float | None, heartbeat: bool, grace_period: int,
                 stale_timeout: int, now: float) -> str | None:
    """Why a RUNNING trial is taken as dead, or None when it may still be running."""
    info = trial.system_attrs.get(WORKER_ATTR)
    if info:
        state = local_process_state(info)
        if state == "gone":
            return f"its worker (pid {info.get('pid')} on this machine) is gone"
        if state == "alive":
            return None
    started = _started(trial, info)
    age = None if started is None else now - started
    if not info:
        # A worker records itself the moment its trial starts: none after grace_period means it died
        # in between (or the trial is not one of ours), whatever the storage.
        if age is not None and age > grace_period:
            return f"no worker recorded itself in the {age:.0f} s since it started (search.grace_period={grace_period})"
        return None
    where = f"on {info.get('host')}"
    if not info.get("heartbeat", 1):
        heartbeat = False  # that worker sends none (search.heartbeat_interval=0): its silence means nothing
    if heartbeat:
        if heartbeat_age is not None:
            if heartbeat_age > grace_period:
                return f"its worker {where} sent no heartbeat for {heartbeat_age:.0f} s (search.grace_period={grace_period})"
            return None
        if age is not None and age > grace_period:
            return (f"its worker {where} never sent a heartbeat in the {age:.0f} s since it started "
                    f"(search.grace_period={grace_period})")
        return None
    if age is not None and age > stale_timeout:
        return (f"RUNNING {where} for {age:.0f} s, longer than search.stale_timeout={stale_timeout} "
                "(this storage has no heartbeat)")
    return None


def fail_if_running(storage: Any, trial_id: int) -> bool:
    """Mark a RUNNING trial FAIL; True for the one caller that did it (False: already finished)."""

    backend = getattr(storage, "_backend", storage)
    if hasattr(backend, "fail_if_running"):
        return bool(backend.fail_if_running(trial_id))
    try:  # a journal file: operations apply in log order, so a second FAIL is refused
        return bool(storage.set_trial_state_values(trial_id, state=TrialState.FAIL))
    except UpdateFinishedTrialError:
        return False


def requeue(study: Any, trial: Any, *, max_retry: int = MAX_RETRY) -> tuple[int | None, str]:
    """Queue a failed trial's shape again as a WAITING trial, marked like Optuna's
    RetryHeartbeatStaleTrialCallback does (system attrs failed_trial and retry_history).
    Returns (the new trial's number or None, why not)."""

    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > max_retry:
        return None, f"not queued again: shape already retried {max_retry} times"
    if not trial.params:
        return None, "not queued again: it had sampled no shape yet"
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k not in (WORKER_ATTR, FAIL_REASON)}
    system_attrs.setdefault("failed_trial", trial.number)
    system_attrs["retry_history"] = history
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k != FAIL_REASON}
    template = optuna.create_trial(state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
                                   user_attrs=user_attrs, system_attrs=system_attrs)
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)  # as study.add_trial does
    return study._storage.get_trial_number_from_id(trial_id), ""


def recover_stale_trials(study: Any, *, heartbeat: bool, grace_period: int, stale_timeout: int,
                         max_retry: int = MAX_RETRY) -> list[Recovered]:
    """Fail every RUNNING trial of the study whose worker is dead and queue its shape again."""

    storage = study._storage
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    backend = getattr(storage, "_backend", storage)
    ages = backend.heartbeat_ages(study._study_id) if heartbeat and hasattr(backend, "heartbeat_ages") else {}
    now = time.time()
    out = []
    for trial in running:
        reason = stale_reason(trial, heartbeat_age=ages.get(trial._trial_id), heartbeat=heartbeat,
                              grace_period=grace_period, stale_timeout=stale_timeout, now=now)
        if reason is None:
            continue
        try:  # the reason shows in trials.csv; fails harmlessly if the trial has just finished
            storage.set_trial_system_attr(trial._trial_id, FAIL_REASON, f"worker lost: {reason}")
        except UpdateFinishedTrialError:
            continue
        if not fail_if_running(storage, trial._trial_id):
            continue  # another worker failed it first, and queues it
        failed = storage.get_trial(trial._trial_id)
        retry, why_not = requeue(study, failed, max_retry=max_retry)
        out.append(Recovered(number=trial.number, reason=reason, retry=retry, why_not=why_not))
    return out
