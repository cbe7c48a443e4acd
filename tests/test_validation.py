"""Every invalid input is refused with one line that names the bad value and what is allowed,
before anything expensive starts (no base fine-tune: nothing appears under <cache>/base)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from test_reliability import cli_args, cli_env
from test_search import TINY_SPACE, make_cfg, tiny_env  # noqa: F401  (tiny_env is a fixture)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def env(tiny_env, tmp_path, monkeypatch):
    """The tiny model and CSV with a fresh cache; the base fine-tune fails the test if it starts."""
    import nas.train

    def no_finetune(**kwargs):
        pytest.fail("the base fine-tune started on an invalid input")

    monkeypatch.setattr(nas.train, "finetune_base_cached", no_finetune)
    return {**tiny_env, "cache": tmp_path / "cache", "tmp": tmp_path}


def refused(env: dict, *overrides: str, space: dict | None = None, **paths) -> str:
    """The one-line ValueError that Search() or Search.prepare() raises for this setting."""
    from nas.search import Search

    with pytest.raises(ValueError) as info:
        Search(make_cfg({**env, **paths}, *overrides, space=space), env["tmp"] / "run").prepare()
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and message, repr(message)
    assert not (env["cache"] / "base").exists()
    return message


def write_csv(folder: Path, rows: list[dict], name: str = "data.csv") -> Path:
    path = folder / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def rows(n: int = 40, *, labels=("neg", "pos"), split: bool = False) -> list[dict]:
    out = [{"text": f"w{i % 7} w{i % 5} w{i % 3}", "label": labels[i % len(labels)]} for i in range(n)]
    if split:
        for i, row in enumerate(out):
            row["part"] = "train" if i % 4 else "validation"  # no test rows
    return out


# ---- search settings ------------------------------------------------------------------------------


def test_unknown_sampler(env):
    message = refused(env, "search.sampler=bogus")
    assert "search.sampler='bogus'" in message and "nsga2, tpe, random" in message


def test_zero_trials(env):
    message = refused(env, "search.n_trials=0")
    assert "search.n_trials=0" in message and ">= 1" in message


# ---- a space the base model cannot hold -----------------------------------------------------------


@pytest.mark.parametrize("axis, raw, bad, top", [
    ("layers", {"low": 1, "high": 9}, 3, 2),
    ("heads", {"low": 1, "high": 8}, 5, 4),
    ("ffn", {"choices": [8, 64]}, 64, 37),
    ("hidden", {"choices": [16, 64]}, 64, 32),
    ("context", {"choices": [16, 128]}, 128, 64),
])
def test_space_outside_the_base_model(env, axis, raw, bad, top):
    space = {**TINY_SPACE, "axes": {**TINY_SPACE["axes"], axis: raw}}
    message = refused(env, space=space)
    assert message == f"space tiny: {axis} choice {bad} is outside the base model's range 1..{top}"


# ---- data -----------------------------------------------------------------------------------------


def test_data_file_missing(env):
    missing = env["tmp"] / "nope.csv"
    message = refused(env, csv=missing)
    assert f"data.path='{missing}'" in message and "does not exist" in message


@pytest.mark.parametrize("key", ["text_column", "label_column"])
def test_missing_column(env, key):
    message = refused(env, f"data.{key}=body")
    assert f"data.{key}='body' not found" in message and "columns are: text, label" in message


def test_train_split_with_one_class(env):
    csv = write_csv(env["tmp"], rows(labels=("pos",)))
    message = refused(env, csv=csv)
    assert "train split" in message and "only one class ('pos')" in message and "at least 2" in message


def test_split_without_rows(env):
    csv = write_csv(env["tmp"], rows(split=True))
    message = refused(env, "data.split_column=part", csv=csv)
    assert message.startswith("test split of ") and "has no rows" in message


# ---- the model folder -----------------------------------------------------------------------------


def test_model_folder_without_config(env):
    folder = env["tmp"] / "empty_model"
    folder.mkdir()
    message = refused(env, model=folder)
    assert f"model.name_or_path='{folder}'" in message and "no config.json" in message


def test_model_config_is_garbage(env):
    folder = env["tmp"] / "garbage_model"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    message = refused(env, model=folder)
    assert f"model.name_or_path='{folder}'" in message and "config.json" in message and "not a valid JSON" in message


def test_model_path_that_does_not_exist(env):
    """A mistyped local path is not a hub name: say that the folder does not exist."""
    missing = env["tmp"] / "no_such_model"
    message = refused(env, model=missing)
    assert f"model.name_or_path='{missing}'" in message
    assert "does not exist" in message, message


# ---- the command line: one line on stderr/stdout, non-zero exit, nothing started ------------------


CLI_CASES = {
    "unknown_space": (["+space=nope"], "error: space='nope' is not known; available spaces: depth, dual, length, triple, width"),
    # a space from the user's own folder (hydra.searchpath) is found, then checked like a shipped one
    "own_space_folder": (["hydra.searchpath=[file://{tmp}/own]", "+space=mine"],
                         "error: space mine: layers choice 3 is outside the base model's range 1..2"),
    "zero_trials": (["search.n_trials=0"], "error: search.n_trials=0 must be >= 1"),
    # shipped spaces are fractions of the base and fit it; absolute sizes above it are still refused
    "space_too_big": (["+space=depth", "space.axes.layers={{low:1,high:3}}"],
                      "error: space depth: layers choice 3 is outside the base model's range 1..2"),
    "data_missing": (["data.path={tmp}/nope.csv"], "error: data.path='{tmp}/nope.csv' does not exist or is not a file"),
    "model_garbage": (["model.name_or_path={tmp}/garbage"],
                      "error: model.name_or_path='{tmp}/garbage' cannot be read: It looks like the config file at "
                      "'{tmp}/garbage/config.json' is not a valid JSON file."),
}


@pytest.fixture(scope="module")
def cli_runs(tiny_env, tmp_path_factory):
    """All command-line cases at once (each is a fresh interpreter: run them side by side)."""
    results = {}
    procs = {}
    for name, (overrides, _) in CLI_CASES.items():
        tmp = tmp_path_factory.mktemp(name)
        (tmp / "garbage").mkdir()
        (tmp / "garbage" / "config.json").write_text("{not json")
        (tmp / "own" / "space").mkdir(parents=True)
        (tmp / "own" / "space" / "mine.yaml").write_text(
            "# @package space\nname: mine\nper_layer: false\naxes:\n  layers: {low: 1, high: 4, step: 1}\n")
        env = {**tiny_env, "cache": tmp / "cache"}
        space = None if any(o.startswith("+space=") for o in overrides) else TINY_SPACE
        args = cli_args(env, tmp / "run", *(o.format(tmp=tmp) for o in overrides), space=space)
        procs[name] = (tmp, time.monotonic(), subprocess.Popen(args, cwd=tmp, env=cli_env(), stdout=subprocess.PIPE,
                                                               stderr=subprocess.PIPE, text=True))
    for name, (tmp, t0, proc) in procs.items():
        out, err = proc.communicate(timeout=60)
        results[name] = {"tmp": tmp, "rc": proc.returncode, "out": out, "err": err, "seconds": time.monotonic() - t0}
    return results


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_refuses_with_one_line(cli_runs, case):
    run = cli_runs[case]
    expected = CLI_CASES[case][1].format(tmp=run["tmp"])
    text = run["out"] + run["err"]
    lines = [line for line in text.splitlines() if line.strip()]
    assert run["rc"] != 0, text
    assert lines == [expected], text
    assert "Traceback" not in text
    assert not (run["tmp"] / "cache" / "base").exists()
