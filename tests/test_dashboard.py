"""optuna-dashboard, the real server, on a study this project wrote: the study, its two
directions, its trials and their user attributes come back over the dashboard's HTTP API."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tiny import EXPORT_SPACE as TINY_SPACE
from tiny import N_TRIALS, tiny_search_run

HOST = "127.0.0.1"  # loopback only
ATTRS = ("shape", "latency_ms", "speedup", "params", "flops", "val_accuracy")

pytestmark = pytest.mark.usefixtures("one_thread")

# no proxy, even if the environment names one: the server is on loopback
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    return tiny_search_run(tmp_path_factory.getbasetemp())  # shared with test_export.py in one session


def console_script(name: str) -> Path | None:
    """A console script of the environment running the tests: next to sys.executable (a venv's
    bin/ or Scripts/, wherever it lives), else on PATH. Never a fixed path inside the repository."""
    here = shutil.which(name, path=os.path.dirname(sys.executable))
    found = here or shutil.which(name)
    return Path(found) if found else None


def test_console_script_lookup_follows_the_environment(tmp_path, monkeypatch):
    """The lookup finds a script beside the interpreter first, then on PATH, and None otherwise."""
    beside, on_path = tmp_path / "venv" / "bin", tmp_path / "elsewhere"
    for folder in (beside, on_path):
        folder.mkdir(parents=True)
        (folder / "nas-fake-tool").write_text("#!/bin/sh\n")
        (folder / "nas-fake-tool").chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path))
    monkeypatch.setattr(sys, "executable", str(beside / "python"))
    assert console_script("nas-fake-tool") == beside / "nas-fake-tool"
    (beside / "nas-fake-tool").unlink()
    assert console_script("nas-fake-tool") == on_path / "nas-fake-tool"
    monkeypatch.setenv("PATH", str(tmp_path))
    assert console_script("nas-fake-tool") is None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5.0) -> dict:
    with OPENER.open(url, timeout=timeout) as response:
        assert response.status == 200
        return json.loads(response.read().decode())


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"optuna-dashboard exited with {proc.returncode}:\n{log.read_text()}")
        try:
            return get_json(url, timeout=2.0)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                pytest.fail(f"optuna-dashboard did not answer {url} within {timeout:.0f} s:\n{log.read_text()}")
            time.sleep(0.2)


def attr_map(serialized: list[dict]) -> dict[str, str]:
    return {a["key"]: a["value"] for a in serialized}


def test_dashboard_serves_the_study_with_its_trials(search_run, tmp_path):
    import optuna
    from omegaconf import OmegaConf

    dashboard = console_script("optuna-dashboard")
    assert dashboard is not None, (f"optuna-dashboard is neither next to {sys.executable} nor on PATH; "
                                   "install the project with its dependencies into this environment")
    db = search_run / "study.db"
    study_name = OmegaConf.load(search_run / ".hydra" / "config.yaml").search.study_name
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{db}")
    assert len(study.trials) == N_TRIALS

    port = free_port()
    base = f"http://{HOST}:{port}"
    log = tmp_path / "dashboard.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(dashboard), f"sqlite:///{db}", "--host", HOST, "--port", str(port)],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        listing = wait_until_up(f"{base}/api/studies", proc, log)
        summaries = [s for s in listing["study_summaries"] if s["study_name"] == study_name]
        assert len(summaries) == 1, listing
        summary = summaries[0]
        assert summary["directions"] == ["maximize", "minimize"]
        study_attrs = attr_map(summary["user_attrs"])
        assert study_attrs["space"] == TINY_SPACE["name"]
        assert json.loads(study_attrs["objectives"]) == ["accuracy", "params"]

        detail = get_json(f"{base}/api/studies/{summary['study_id']}")
        assert detail["name"] == study_name
        assert detail["directions"] == ["maximize", "minimize"]
        trials = {t["number"]: t for t in detail["trials"]}
        assert sorted(trials) == list(range(N_TRIALS))
        for trial in study.trials:
            served = trials[trial.number]
            assert served["state"] == "Complete"
            assert served["values"] == pytest.approx(trial.values)  # [val_accuracy, params]
            attrs = attr_map(served["user_attrs"])
            for key in ATTRS:
                assert key in attrs, (trial.number, key, sorted(attrs))
            assert attrs["shape"] == trial.user_attrs["shape"]
            for key in ATTRS[1:]:
                assert float(attrs[key]) == pytest.approx(trial.user_attrs[key]), key
            assert {p["name"] for p in served["params"]} == set(trial.params)
        assert {a["key"] for a in detail["union_user_attrs"]} >= set(ATTRS)
        # the front the dashboard draws is the one the run's reports list
        front = pd.read_csv(search_run / "pareto.csv")
        members = set(front.loc[~front["is_base"].astype(bool), "number"].astype(int))
        assert {t["number"] for t in detail["best_trials"]} == members == {t.number for t in study.best_trials}

        with pytest.raises(urllib.error.HTTPError) as missing:
            get_json(f"{base}/api/studies/{summary['study_id'] + 1000}")
        assert missing.value.code == 404
        with OPENER.open(f"{base}/dashboard", timeout=5) as page:  # the web UI itself is served
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
    assert proc.poll() is not None  # the server is gone
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        get_json(f"{base}/api/studies", timeout=2.0)
