"""Every invalid input is refused with one line that names the bad value and what is allowed,
before anything expensive starts: no fine-tuning and no importance function runs (they fail the
test if called), and nothing appears under <cache>/base."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from tiny import TINY_SPACE, cli_args, cli_env, make_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


# where each expensive function is called from (a module's own name for what it imported)
EXPENSIVE = {"nas.quality.finetune": ("finetune_base_cached", "finetune"),
             "nas.study.prepare": ("finetune_base_cached", "cached_scores"),
             "nas.study.trial": ("finetune",),
             "nas.cut.importance": ("cached_scores", "compute_scores")}


@pytest.fixture
def env(tiny_env, tmp_path, monkeypatch):
    """The tiny model and CSV with a fresh cache; any fine-tuning or importance function fails the
    test if it starts."""
    import importlib

    # every module imported before any is patched: one imported while another's function is patched would keep the
    # stand-in under its own name after the test (nas.study.prepare imports finetune_base_cached by name)
    modules = {module: importlib.import_module(module) for module in EXPENSIVE}
    for module, names in EXPENSIVE.items():
        for name in names:
            def started(*args, _name=f"{module}.{name}", **kwargs):
                pytest.fail(f"{_name} started on an invalid input")

            monkeypatch.setattr(modules[module], name, started)
    return {**tiny_env, "cache": tmp_path / "cache", "tmp": tmp_path}


def refused(env: dict, *overrides: str, space: dict | None = None, run_dir: Path | None = None, **paths) -> str:
    """The one-line ValueError that Search() or Search.prepare() raises for this setting."""
    from nas.study.search import Search

    with pytest.raises(ValueError) as info:
        Search(make_cfg({**env, **paths}, *overrides, space=space), run_dir or env["tmp"] / "run").prepare()
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


# ---- round two: lengths, encodings, folders, the storage ----------------------------------------


def test_max_length_beyond_the_model(env):
    message = refused(env, "max_length=100000")
    assert message == (f"max_length=100000 exceeds the 64 positions of the model ({env['model']}); "
                       "allowed: 2..64")


def test_max_length_too_small(env):
    assert refused(env, "max_length=1") == "max_length=1 must be an integer; allowed: 2..64"


def not_utf8_csv(folder: Path) -> Path:
    """A Latin-1 CSV: 'café' is byte 0xe9 where UTF-8 expects a continuation byte."""
    path = folder / "latin1.csv"
    lines = ["text,label"] + [f"w{i} w{i % 3},{'pos' if i % 2 else 'neg'}" for i in range(30)] + ["café w1,pos"]
    path.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    return path


def test_data_not_in_the_declared_encoding(env):
    csv = not_utf8_csv(env["tmp"])
    offset = csv.read_bytes().index(b"\xe9")
    message = refused(env, csv=csv)
    assert message == (f"data.path='{csv}' is not valid utf-8: byte e9 at byte offset {offset} cannot be decoded; "
                       "set data.encoding to the file's encoding (e.g. cp1252, latin-1, utf-16)")


def test_unknown_encoding(env):
    message = refused(env, "data.encoding=utf-9")
    assert message == "data.encoding='utf-9' is not a known text encoding; e.g. utf-8, utf-8-sig, latin-1, cp1252, utf-16"


def test_data_path_is_a_folder(env):
    assert refused(env, csv=env["tmp"]) == f"data.path='{env['tmp']}' does not exist or is not a file"


def test_run_folder_under_a_file(env):
    blocker = env["tmp"] / "afile"
    blocker.write_text("x")
    message = refused(env, run_dir=blocker / "run")
    assert message == f"hydra.run.dir='{blocker / 'run'}' cannot be a folder: '{blocker}' is a file; give a folder path"


def test_cache_dir_under_a_file(env):
    blocker = env["tmp"] / "afile"
    blocker.write_text("x")
    message = refused(env, cache=blocker / "cache")
    assert message == f"cache_dir='{blocker / 'cache'}' cannot be a folder: '{blocker}' is a file; give a folder path"


@pytest.mark.parametrize("override, expected", [
    ("importance.method=bogus", "importance.method='bogus' is not known; allowed: fisher, naive"),
    ("importance.max_batches=0", "importance.max_batches=0 must be an integer >= 1"),
    ("base.max_steps=-1", "base.max_steps=-1 must be an integer >= 0"),
    ("search.stale_timeout=0", "search.stale_timeout=0 must be >= 1 (seconds)"),
    ("search.estimator=proxy", "search.estimator='proxy' is not known; allowed: finetune, supernet, none, auto"),
    ("search.final_k=-1", "search.final_k=-1 must be an integer >= 0 (0: no final training)"),
    ("prune.recovery=lsq", "prune.recovery='lsq' is not known; allowed: auto, none, bias, rescale, both"),
    ("train.distill=attention", "train.distill='attention' is not known; allowed: logits, hidden"),
    ("base.patience=-1", "base.patience=-1 must be >= 0 (0: never stop early)"),
    ("supernet.steps=-1", "supernet.steps=-1 must be >= 0"),
    ("supernet.distill=teacher", "supernet.distill='teacher' is not known; allowed: largest, base, none"),
    ("latency.precision=int4", "latency.precision='int4' is not known; allowed: fp32, int8, f16, q8_0, q6_k, q5_k_m, q5_0, q4_k_m, iq4_nl, q4_0, auto"),
    ("latency.runtime=tvm", "latency.runtime='tvm' is not known; allowed: torch, onnxruntime, llamacpp, auto"),
    ("latency.precision=int8", "latency.precision=int8 has no path in torch eager here; use "
     "latency.runtime=onnxruntime (onnxruntime's int8 kernels) or latency.precision=fp32"),
    ("latency.runtime=onnxruntime latency.precision=int8 latency.activations=int8",
     "latency.activations=int8 is not supported by onnxruntime's dynamic quantization (uint8 activations only); "
     "use latency.activations=uint8 or latency.quantization=static"),
    ("latency.runtime=onnxruntime latency.precision=int8 latency.keep_fp32=[clasifier]",
     "latency.keep_fp32 pattern 'clasifier' matches no Linear module of the model; module paths look like: "
     "bert.encoder.layer.0.attention.self.query, bert.encoder.layer.0.attention.self.key, "
     "bert.encoder.layer.0.attention.self.value, classifier"),
    ("latency.imatrix=validation", "an importance matrix is computed from the training text only; "
     "split='validation' is not allowed (allowed: train): validation and test judge the model"),
    ("latency.rounding=awq", "latency.rounding='awq' is not known; allowed: gptq, llamacpp"),
    ("prune.heal=ridge", "prune.heal='ridge' is not known; allowed: none, bias, lsq, auto"),
    ("train.precision=fp16", "train.precision='fp16' is not known; allowed: auto, fp32, bf16"),
    ("final.rule=best", "final.rule='best' is not known; allowed: halving, fastest, accuracy"),
    ("final.judge_share=1", "final.judge_share=1 must be in [0, 1) (the share of the validation rows held out for "
     "the band; 0: none)"),
    ("final.time_budget=0", "final.time_budget=0 must be > 0 (seconds) or null (no limit)"),
    ("search.final_k=3 final.candidates=2", "final.candidates=2 is fewer than search.final_k=3: halving starts from "
     "at least the members it ends with"),
    ("final.start=scratch", "final.start='scratch' is not known; allowed: base, trial"),
    ("final.patience=-1", "final.patience=-1 must be >= 0 (0: never stop early)"),
    ("final.transfer=web", "final.transfer='web' is not known; allowed: auto, none, augment, imdb, file, hf"),
    ("search.final_k=2 final.transfer=file final.transfer_path=/no/such/texts.csv",
     "final.transfer_path='/no/such/texts.csv' does not exist or is not a file"),
])
def test_other_cheap_settings(env, override, expected):
    assert refused(env, *override.split()) == expected


def test_transfer_file_without_the_column(env):
    path = write_csv(env["tmp"], [{"review": "fine", "stars": 5}], name="unlabelled.csv")
    message = refused(env, "search.final_k=2", "final.transfer=file", f"final.transfer_path={path}",
                      "final.transfer_column=text")
    assert message == f"final.transfer_column='text' is not a column of {path}; columns are: review, stars"


def test_database_unreachable(env):
    """The issue's case: first the base and the importance scores, then a traceback blaming a
    missing module. Now: one line with host, port and the driver's reason, password masked."""
    message = refused(env, "search.storage=postgresql://nas:S3cretPa55word@127.0.0.1:1/nas")
    assert message.startswith("search.storage='postgresql://nas:***@127.0.0.1:1/nas': cannot connect to the database "
                              "at host 127.0.0.1, port 1: connection to server at \"127.0.0.1\", port 1 failed: "
                              "Connection refused"), message
    assert "S3cretPa55word" not in message


@pytest.mark.parametrize("url, expected", [
    ("mysql://nas:S3cretPa55word@127.0.0.1/nas",
     "search.storage='mysql://nas:***@127.0.0.1/nas': the database driver 'MySQLdb' is not installed; install it "
     "(pip install mysqlclient) or name an installed driver in the URL, e.g. mysql+pymysql://"),
    ("sqlite:///{tmp}/no/such/folder/study.db",
     "search.storage='sqlite:///{tmp}/no/such/folder/study.db': the folder '{tmp}/no/such/folder' of the SQLite file "
     "does not exist; create it or give another path (an absolute path needs four slashes: sqlite:////abs/path.db)"),
    ("journal:{tmp}/afile/study.log",
     "search.storage='journal:{tmp}/afile/study.log': the journal file cannot be written: '{tmp}/afile' is a file, "
     "not a folder; give a path in a folder you can write to"),
    ("study.db", "search.storage='study.db' is not a storage URL; allowed: sqlite:///PATH, "
     "postgresql://USER@HOST:PORT/DB (any SQLAlchemy URL), or journal:PATH"),
    ("nosuchdialect://x/y", "search.storage='nosuchdialect://x/y': no database dialect 'nosuchdialect' in SQLAlchemy; "
     "allowed: sqlite:///PATH, postgresql://..., mysql://..., or journal:PATH"),
])
def test_storage_refused(env, url, expected):
    (env["tmp"] / "afile").write_text("x")
    tmp = str(env["tmp"])
    assert refused(env, f"search.storage={url.format(tmp=tmp)}") == expected.format(tmp=tmp)


def test_study_with_other_objectives(env):
    import optuna

    db = env["tmp"] / "study.db"
    optuna.create_study(study_name="nas", storage=f"sqlite:///{db}", direction="maximize")
    message = refused(env, f"search.storage=sqlite:///{db}")
    assert message == ("search.study_name='nas' exists in this storage with 1 objectives; "
                       "search.objectives=['accuracy', 'latency'] does not match it (use another study_name)")


def test_postgres_database_missing(env):
    from pg import postgres_url_or_skip

    with postgres_url_or_skip() as url:
        bad = url.rsplit("/", 1)[0] + "/nope"
        message = refused(env, f"search.storage={bad}")
    host_port = bad.split("@")[1].split("/")[0]
    host, port = host_port.split(":")
    assert message == (f"search.storage={bad!r}: cannot connect to the database at host {host}, port {port}: "
                       f"connection to server at \"{host}\", port {port} failed: FATAL:  database \"nope\" does not exist")


# ---- the command line: one line on stderr/stdout, non-zero exit, nothing started ------------------


CLI_CASES = {
    "unknown_space": (["+space=nope"], "error: space='nope' is not known; available spaces: decoder, depth, dual, length, triple, width"),
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
    # round two (issue 15)
    "max_length": (["max_length=100000"],
                   "error: max_length=100000 exceeds the 64 positions of the model ({model}); allowed: 2..64"),
    "not_utf8": (["data.path={tmp}/latin1.csv"],
                 "error: data.path='{tmp}/latin1.csv' is not valid utf-8: byte e9 at byte offset {offset} cannot be "
                 "decoded; set data.encoding to the file's encoding (e.g. cp1252, latin-1, utf-16)"),
    "db_unreachable": (["search.storage=postgresql://nas:S3cretPa55word@127.0.0.1:1/nas"],
                       ["warning: search.storage has a password on the command line: it is masked (***) in the run "
                        "folder and in the output, but shell history and the process list still show it; put the URL "
                        "in the environment variable NAS_STORAGE_URL instead and leave search.storage unset "
                        "(docs/scaling.md)",
                        "error: search.storage='postgresql://nas:***@127.0.0.1:1/nas': cannot connect to the database "
                        "at host 127.0.0.1, port 1: connection to server at \"127.0.0.1\", port 1 failed: Connection "
                        "refused; Is the server running on that host and accepting TCP/IP connections?"]),
    "wrong_type": (["train.max_steps=abc"],
                   "error: train.max_steps='abc': Value 'abc' of type 'str' could not be converted to Integer"),
    "unknown_key": (["latency.thread=1"],
                    "error: latency.thread=1 is not a setting (Key 'thread' not in 'LatencySchema'); allowed: "
                    "latency.inputs, latency.runtime, latency.batch_size, latency.seq_len, latency.threads, "
                    "latency.sample_size, latency.rounds, latency.warmup, latency.chunk, latency.seed, latency.split, "
                    "latency.generation, latency.new_tokens, latency.precision, latency.quantization, "
                    "latency.activations, latency.per_channel, latency.keep_fp32, latency.calibration, latency.model, "
                    "latency.imatrix, latency.rounding"),
    "run_dir_under_a_file": (["hydra.run.dir={tmp}/afile/run"],
                             "error: hydra.run.dir='{tmp}/afile/run' cannot be a folder: '{tmp}/afile' is a file; "
                             "give a folder path"),
}


@pytest.fixture(scope="module")
def cli_runs(tiny_env, tmp_path_factory):
    """All command-line cases, four at a time (each is a fresh interpreter: run them side by side)."""
    results = {}
    procs = {}

    def collect() -> None:
        for name, (tmp, t0, proc) in procs.items():
            out, err = proc.communicate(timeout=120)
            results[name] = {"tmp": tmp, "rc": proc.returncode, "out": out, "err": err,
                             "seconds": time.monotonic() - t0, "model": tiny_env["model"]}
        procs.clear()

    for name, (overrides, _) in CLI_CASES.items():
        if len(procs) == 4:
            collect()
        tmp = tmp_path_factory.mktemp(name)
        not_utf8_csv(tmp)
        (tmp / "afile").write_text("x")
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
    collect()
    return results


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_refuses_with_one_line(cli_runs, case):
    run = cli_runs[case]
    expected = CLI_CASES[case][1]
    offset = not_utf8_csv(run["tmp"]).read_bytes().index(b"\xe9")
    expected = [line.format(tmp=run["tmp"], model=run["model"], offset=offset)
                for line in ([expected] if isinstance(expected, str) else expected)]
    text = run["out"] + run["err"]
    lines = [line for line in text.splitlines() if line.strip()]
    assert run["rc"] != 0, text
    assert sorted(lines) == sorted(expected), text  # a warning goes to stderr, the error to stdout
    assert "Traceback" not in text
    assert not (run["tmp"] / "cache" / "base").exists()
    assert not list((run["tmp"] / "cache").glob("importance/*.pt"))
    assert "S3cretPa55word" not in text
