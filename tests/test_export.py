"""Export: the HF folder loads in a fresh process with the Auto classes and gives the pruned
model's logits (stock and remote-code shapes, BERT / RoBERTa / DistilBERT, the real MiniLM);
model.onnx matches torch at any batch and sequence length; `python -m nas.export` end to end
on a tiny search run, its picks and its one-line failures; `choose` on a hand-made front."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from nas.models.registry import base_shape
from nas.spec import SubnetSpec
from tiny import EXPORT_SPACE, N_TRIALS, tiny_search_run
from tiny import write_tokenizer as write_tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable  # the environment running the tests, wherever it lives (not <repo>/.venv)
VOCAB = 99
ATOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_SPACE = EXPORT_SPACE


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # one thread per process: the test's processes share two cores (latency is measured on one anyway)
    return {**env, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def random_scores(model, seed: int):
    """Importance scores in random order, so pruning keeps scattered heads / neurons / channels."""
    from nas.cut.importance import ImportanceScores

    shape = base_shape(model.config)
    g = torch.Generator().manual_seed(seed)
    return ImportanceScores(
        layers=torch.rand(shape.num_layers, generator=g), heads=torch.rand(shape.num_layers, shape.num_heads, generator=g),
        ffn=torch.rand(shape.num_layers, shape.ffn_size, generator=g), hidden=torch.rand(shape.hidden_size, generator=g),
        method="random",
    )


def logits(model, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.numpy()


def nonblank_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


class Background:
    """A subprocess started now and collected later (output in files: a full pipe cannot stall it),
    so the slow exports run while the tests do other work on the second core."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self._out, self._err = open(cwd / "stdout.txt", "w+"), open(cwd / "stderr.txt", "w+")
        self.popen = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._out, stderr=self._err,
                                      stdin=subprocess.DEVNULL, text=True)
        self._result: subprocess.CompletedProcess | None = None

    def result(self, timeout: float = 300) -> subprocess.CompletedProcess:
        if self._result is None:
            self.popen.wait(timeout=timeout)
            self._out.seek(0)
            self._err.seek(0)
            self._result = subprocess.CompletedProcess(self.popen.args, self.popen.returncode, self._out.read(),
                                                       self._err.read())
            self._out.close()
            self._err.close()
        return self._result

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=30)
        if self._result is None:
            self._out.close()
            self._err.close()


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    return tiny_search_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def front(search_run):
    frame = pd.read_csv(search_run / "pareto.csv")
    members = frame[~frame["is_base"].astype(bool)]
    # the run is seeded and its cost (params) is exact: two members with different accuracy
    assert len(members) >= 2 and members["val_accuracy"].nunique() >= 2, frame
    return frame


@pytest.fixture(scope="module")
def cli_export(search_run, tmp_path_factory):
    """`python -m nas.export run_dir=...` (pick=knee, default out folder), started in the background."""
    job = Background([PYTHON, "-m", "nas.export", f"run_dir={search_run}"], cwd=tmp_path_factory.mktemp("cli_cwd"),
                     env=cli_env())
    yield job
    job.stop()


# ---- 1. the HF folder in a fresh Python process ---------------------------------------------------

# Runs outside the repository with PYTHONPATH unset: only transformers and the folder's own files.
LOADER = textwrap.dedent('''
    import json, sys
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(1)
    cases = json.loads(open(sys.argv[1]).read())
    out = {}
    for name, case in cases.items():
        folder, trust = case["folder"], case["trust_remote_code"]
        tokenizer = AutoTokenizer.from_pretrained(folder)  # never with trust_remote_code: must not prompt
        model = AutoModelForSequenceClassification.from_pretrained(folder, **({"trust_remote_code": True} if trust else {}))
        model.eval()
        ids, mask = torch.tensor(case["input_ids"]), torch.tensor(case["attention_mask"])
        enc = tokenizer(case["texts"], padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            batch_logits = model(input_ids=ids, attention_mask=mask).logits
            text_logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        res = {
            "logits": batch_logits.tolist(), "text_ids": enc["input_ids"].tolist(),
            "text_mask": enc["attention_mask"].tolist(), "text_logits": text_logits.tolist(),
            "model_class": type(model).__name__, "model_module": type(model).__module__,
            "config_class": type(model.config).__name__, "model_type": model.config.model_type,
            "tokenizer_class": type(tokenizer).__name__, "model_max_length": tokenizer.model_max_length,
            "num_labels": model.config.num_labels,
        }
        if trust:  # the stock class must refuse these weights, not load a wrong model
            try:
                AutoModelForSequenceClassification.from_pretrained(folder)
                res["without_trust"] = "loaded"
            except Exception as e:
                res["without_trust"] = type(e).__name__
        out[name] = res
    out["_project_modules"] = sorted(m for m in sys.modules if m == "nas" or m.startswith("nas."))
    open(sys.argv[2], "w").write(json.dumps(out))
''')


@pytest.fixture(scope="module")
def exports(request, tmp_path_factory, tiny_bert, tiny_roberta, tiny_distilbert, padded_batch, minilm,
            minilm_tokenizer):
    """Pruned models saved with nas.export, and what a fresh process loads from each folder.

    The slow parts overlap on the two cores: the fresh process loads the folders while the tiny
    search runs here; then `python -m nas.export` (cli_export) runs while the MiniLM goes to ONNX."""
    from transformers import AutoTokenizer

    from nas.cut.prune import prune_model
    from nas.deploy.bundle import export_all, save_hf_folder
    from nas.deploy.onnx import export_onnx

    root = tmp_path_factory.mktemp("exports")
    write_tiny_tokenizer(root / "tokenizer")
    tiny_tok = AutoTokenizer.from_pretrained(root / "tokenizer")
    long_words = " ".join(f"w{i % 90}" for i in range(150))  # longer than any kept context: truncated
    tiny_texts = ["w1 w2 w3 w4", "w7 w8", long_words]
    cases = {
        # name: (base, spec, pad id, tokenizer, texts, ONNX here, fits the stock config)
        "bert_remote": (tiny_bert(), SubnetSpec(layers=(0, 1), heads=(3, 1), ffn=(20, 37), hidden=24, context=40),
                        0, tiny_tok, tiny_texts, False, False),
        "bert_stock": (tiny_bert(), SubnetSpec.uniform(layers=(0, 1), heads=2, ffn=16, hidden=16, context=32),
                       0, tiny_tok, tiny_texts, False, True),
        "bert_uniform_remote": (tiny_bert(), SubnetSpec.uniform(layers=(1,), heads=2, ffn=16, hidden=24, context=32),
                                0, tiny_tok, tiny_texts, False, False),  # uniform, but 2 heads * 8 != 24
        "roberta_remote": (tiny_roberta(), SubnetSpec(layers=(0, 1), heads=(2, 4), ffn=(37, 10), hidden=24, context=30),
                           1, tiny_tok, tiny_texts, False, False),
        "distilbert_remote": (tiny_distilbert(), SubnetSpec(layers=(0, 1), heads=(1, 3), ffn=(16, 37), hidden=16,
                                                            context=20), 0, tiny_tok, tiny_texts, False, False),
        "minilm": (minilm, SubnetSpec(layers=(0, 2, 5), heads=(8, 6, 12), ffn=(768, 512, 1536), hidden=320,
                                      context=64),
                   0, minilm_tokenizer, ["a gripping, funny and humane film", "dull", "long " * 200], True, False),
    }
    built, payload = {}, {}
    for i, (name, (base, spec, pad_id, tokenizer, texts, onnx, stock)) in enumerate(cases.items()):
        model = prune_model(base, spec, random_scores(base, seed=i)).eval()
        folder = root / name
        if name in ("bert_remote", "minilm"):
            info = export_all(model, tokenizer, spec, folder, metrics={"val_accuracy": 0.5, "latency_ms": 1.25},
                              source={"model": name, "trial": 7, "space": "test"}, onnx=False)
        else:
            info = save_hf_folder(model, tokenizer, folder, context=spec.context)
        vocab = int(model.config.vocab_size)
        batch = padded_batch(pad_id=pad_id, batch=4, length=min(11, spec.context), vocab=vocab, seed=i)
        built[name] = {"model": model, "spec": spec, "folder": folder, "info": info, "tokenizer": tokenizer,
                       "texts": texts, "batch": batch, "stock": stock, "onnx": onnx}
        payload[name] = {"folder": str(folder), "trust_remote_code": not stock, "texts": texts,
                         "input_ids": batch["input_ids"].tolist(), "attention_mask": batch["attention_mask"].tolist()}

    work = tmp_path_factory.mktemp("fresh_process")  # cwd outside the repository
    (work / "cases.json").write_text(json.dumps(payload))
    (work / "load.py").write_text(LOADER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    job = Background([PYTHON, "load.py", "cases.json", "result.json"], cwd=work, env=env)
    try:
        request.getfixturevalue("cli_export")  # the search, then the CLI export in the background
        for name, case in built.items():
            if case["onnx"]:
                export_onnx(case["model"], case["folder"] / "model.onnx", max_seq=case["spec"].context)
        proc = job.result(timeout=240)
    finally:
        job.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    loaded = json.loads((work / "result.json").read_text())
    return {"cases": built, "loaded": loaded, "proc": proc}


def test_fresh_process_uses_only_transformers_and_raises_no_prompt_or_type_warning(exports):
    loaded, proc = exports["loaded"], exports["proc"]
    assert loaded["_project_modules"] == []  # nothing of this project was imported to load the folders
    out = proc.stdout + proc.stderr
    assert "Do you wish to run the custom code" not in out  # AutoTokenizer never needs trust_remote_code
    assert "to instantiate a model of type" not in out  # config classes agree with config.json's model_type
    assert "Traceback" not in out


@pytest.mark.parametrize("name", ["bert_remote", "bert_stock", "bert_uniform_remote", "roberta_remote",
                                  "distilbert_remote", "minilm"])
def test_hf_folder_round_trip_gives_the_pruned_logits(exports, name):
    case, got = exports["cases"][name], exports["loaded"][name]
    model, batch = case["model"], case["batch"]
    assert (batch["attention_mask"] == 0).any()  # padded rows
    want = logits(model, batch["input_ids"], batch["attention_mask"])
    np.testing.assert_allclose(np.array(got["logits"]), want, atol=ATOL, rtol=0)
    assert got["num_labels"] == model.config.num_labels

    # the tokenizer: same ids as the project's tokenizer, truncated at the kept context
    assert got["model_max_length"] == case["spec"].context
    ref = case["tokenizer"](case["texts"], padding=True, truncation=True, max_length=case["spec"].context,
                            return_tensors="pt")
    assert got["text_ids"] == ref["input_ids"].tolist()
    assert max(len(r) for r in got["text_ids"]) == case["spec"].context  # the long text was cut to the context
    want_text = logits(model, ref["input_ids"], ref["attention_mask"])
    np.testing.assert_allclose(np.array(got["text_logits"]), want_text, atol=ATOL, rtol=0)

    folder = case["folder"]
    config = json.loads((folder / "config.json").read_text())
    family = {"bert_stock": "bert", "roberta_remote": "roberta", "distilbert_remote": "distilbert"}.get(
        name, "bert")
    assert config["model_type"] == got["model_type"] == family
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] and "auto_map" not in tok_config
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert "nas_spec" not in config and "nas_base_shape" not in config
    if case["stock"]:
        assert case["info"] == {"remote_code": False}
        assert not (folder / "modeling_nas.py").exists()
        assert "auto_map" not in config and not any(k.startswith("nas_") for k in config)
        assert got["model_module"].startswith("transformers.models.")  # the stock class, no custom code
        assert got["model_class"] == "BertForSequenceClassification" == config["architectures"][0]
        assert (config["num_attention_heads"], config["hidden_size"], config["intermediate_size"]) == (2, 16, 16)
    else:
        assert case["info"] == {"remote_code": True}
        assert (folder / "modeling_nas.py").read_text() == (ROOT / "nas" / "models" / "hf_remote" / "modeling_nas.py").read_text()
        model_cls = got["model_class"]
        assert config["auto_map"] == {"AutoConfig": f"modeling_nas.{got['config_class']}",
                                      "AutoModelForSequenceClassification": f"modeling_nas.{model_cls}"}
        assert config["architectures"] == [model_cls] and model_cls.startswith("Nas")
        assert "modeling_nas" in got["model_module"]
        assert config["nas_heads"] == list(case["spec"].heads) and config["nas_ffn"] == list(case["spec"].ffn)
        assert got["without_trust"] not in ("loaded", "")  # stock classes refuse the shapes loudly


def test_modeling_nas_is_self_contained():
    import ast

    tree = ast.parse((ROOT / "nas" / "models" / "hf_remote" / "modeling_nas.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= {"__future__", "torch", "transformers"}, roots


def test_export_all_writes_config_and_readme(exports):
    for name in ("bert_remote", "minilm"):
        case = exports["cases"][name]
        folder, spec = case["folder"], case["spec"]
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert SubnetSpec.from_dict(config["arch"]) == spec
        assert config["source"] == {"model": name, "trial": 7, "space": "test"}
        assert config["metrics"] == {"val_accuracy": 0.5, "latency_ms": 1.25}
        readme = (folder / "README.md").read_text()
        assert spec.describe() in readme and "trust_remote_code=True" in readme
        assert "model.onnx" not in readme  # exported with onnx=False (the MiniLM's ONNX is written separately)
        assert str(list(spec.heads)) in readme and str(list(spec.ffn)) in readme
    # the caller's tokenizer is not changed by the export
    assert exports["cases"]["minilm"]["tokenizer"].model_max_length != 64


# ---- 2. ONNX ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_search_export", "minilm"])
def test_onnx_matches_torch_at_any_batch_and_length(name, request, padded_batch):
    """model.onnx of the pruned MiniLM (export_onnx) and of the tiny trial `python -m nas.export` wrote."""
    import onnxruntime as ort

    if name == "minilm":
        case = request.getfixturevalue("exports")["cases"]["minilm"]
        model, context, path = case["model"], case["spec"].context, case["folder"] / "model.onnx"
    else:
        knee = request.getfixturevalue("knee_export")
        model, context, path = knee["model"], knee["spec"].context, knee["out"] / "model.onnx"
    vocab = int(model.config.vocab_size)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    assert [i.name for i in inputs] == ["input_ids", "attention_mask"]
    assert all(isinstance(d, str) for i in inputs for d in i.shape)  # both axes are symbolic (dynamic)
    assert [o.name for o in session.get_outputs()] == ["logits"]

    g = torch.Generator().manual_seed(3)
    shapes = [(1, 1), (1, context), (2, 7), (5, 13), (3, context)]
    feeds = [(ids, torch.ones_like(ids)) for ids in (torch.randint(5, vocab, s, generator=g) for s in shapes)]
    padded = padded_batch(pad_id=0, batch=4, length=min(context, 17), vocab=vocab, seed=5)
    feeds.append((padded["input_ids"], padded["attention_mask"]))
    for ids, mask in feeds:
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        assert got.shape == (ids.shape[0], model.config.num_labels)
        np.testing.assert_allclose(got, logits(model, ids, mask), atol=ATOL, rtol=0, err_msg=str(tuple(ids.shape)))


# ---- 3. python -m nas.export end to end ------------------------------------------------------------


def exported_trial(text: str) -> int:
    found = re.findall(r"^exporting trial (\d+) ", text, flags=re.M)
    assert len(found) == 1, text
    return int(found[0])


@pytest.fixture(scope="module")
def knee_export(search_run, cli_export):
    """The finished background `python -m nas.export run_dir=...` and the trial model it exported,
    rebuilt here from the run folder."""
    from nas.study.runs import load_run, rebuild_trial_model

    proc = cli_export.result()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    number = exported_trial(proc.stdout)
    cfg, study = load_run(search_run)
    spec = SubnetSpec.from_dict(study.trials[number].user_attrs["spec"])
    model = rebuild_trial_model(cfg, search_run, number, spec, 2, ("neg", "pos"))
    return {"proc": proc, "number": number, "out": search_run / "export" / f"trial_{number}", "cfg": cfg,
            "study": study, "spec": spec, "model": model}


def test_cli_export_of_the_knee(search_run, front, knee_export):
    from transformers import AutoModelForSequenceClassification

    from nas.export import choose

    proc, number, out, spec = knee_export["proc"], knee_export["number"], knee_export["out"], knee_export["spec"]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert number == int(choose(front, pick="knee", cost="params")["number"])
    assert number == yaml.safe_load((search_run / "best.yaml").read_text())["trial"]  # the search's knee too

    for name in ("config.yaml", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "model.onnx", "README.md"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary base export left beside it

    trial = knee_export["study"].trials[number]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert SubnetSpec.from_dict(config["arch"]) == spec
    # the default pick is the final stage's winner; this run had no final stage, so it is the knee
    assert config["source"]["trial"] == number and config["source"]["pick"] == "winner"
    assert config["metrics"]["val_accuracy"] == pytest.approx(trial.user_attrs["val_accuracy"])
    assert config["metrics"]["params"] == trial.user_attrs["params"]
    assert config["config"]["model"]["name_or_path"] == knee_export["cfg"].model.name_or_path
    remote = (out / "modeling_nas.py").is_file()
    assert remote == (len(set(spec.heads)) > 1 or len(set(spec.ffn)) > 1 or spec.heads[0] * 8 != spec.hidden)
    readme = (out / "README.md").read_text()
    assert ("trust_remote_code=True" in readme) == remote and "model.onnx" in readme and spec.describe() in readme
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == spec.context

    # latency of the export vs the base, in torch and onnxruntime, each printed with how it was taken
    for runtime in ("torch", "onnxruntime"):
        m = re.search(rf"^{runtime}\s*: ([\d.]+) ms vs base ([\d.]+) ms per input -> ([\d.]+)x "
                      rf"\(p10-p90 ([\d.]+)-([\d.]+); real inputs, sample 8, batch 1, 1 thread, {runtime} fp32, ",
                      proc.stdout, re.M)
        assert m, proc.stdout
        ms, base_ms, speedup, p10, p90 = (float(v) for v in m.groups())
        assert ms > 0 and base_ms > 0 and float(p10) <= speedup <= float(p90)
        assert config["metrics"][f"speedup_{runtime}"] == pytest.approx(speedup, abs=0.006)
    assert config["metrics"]["latency_definition"] == "real inputs, sample 8, batch 1, 1 thread, 3 paired rounds"
    assert "against the unpruned base timed beside it in alternating rounds" in readme

    # the folder holds the trial's fine-tuned weights: same logits as the model rebuilt from the run
    hf = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=remote).eval()
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (3, spec.context), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, 2:] = 0
    np.testing.assert_allclose(logits(hf, ids, mask), logits(knee_export["model"], ids, mask), atol=ATOL, rtol=0)


@pytest.mark.parametrize("pick", ["max_accuracy", "min_latency", "trial"])
def test_cli_picks_the_right_trial(search_run, front, pick, tmp_path, capsys):
    from nas.export import main
    from nas.study.runs import load_run

    members = front[~front["is_base"].astype(bool)]
    if pick == "max_accuracy":
        best = members["val_accuracy"].max()
        assert (members["val_accuracy"] < best).any()  # a real choice
        expected = int(members[members["val_accuracy"] == best].sort_values("params").iloc[0]["number"])
        args = [f"pick={pick}"]
    elif pick == "min_latency":
        expected = int(members.sort_values(["latency_ms", "val_accuracy"], ascending=[True, False]).iloc[0]["number"])
        args = [f"pick={pick}"]
    else:
        expected = int(members["number"].iloc[-1])
        args = ["pick=trial", f"trial={expected}"]
    rc = main([f"run_dir={search_run}", *args, "onnx=false", f"out={tmp_path / 'out'}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert exported_trial(out) == expected
    config = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    _, study = load_run(search_run)
    assert config["source"]["trial"] == expected and config["source"]["pick"] == pick
    assert SubnetSpec.from_dict(config["arch"]) == SubnetSpec.from_dict(study.trials[expected].user_attrs["spec"])
    assert not (tmp_path / "out" / "model.onnx").exists()  # onnx=false
    assert re.search(r"^torch\s*: [\d.]+ ms vs base [\d.]+ ms per input", out, re.M) and "onnxruntime" not in out


def test_cli_trial_off_the_front_has_no_weights(search_run, front, capsys):
    from nas.export import main

    off = sorted(set(range(N_TRIALS)) - set(front["number"].dropna().astype(int)))
    assert off
    rc = main([f"run_dir={search_run}", "pick=trial", f"trial={off[0]}", "onnx=false"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert rc != 0 and len(lines) == 1, lines
    assert f"trial {off[0]}" in lines[0] and "weights" in lines[0]


def test_cli_failures_are_one_line_naming_the_value(search_run, front, tmp_path):
    cases = {
        "bogus_pick": (["pick=bogus"], ["pick='bogus'", "knee", "max_accuracy"]),
        "trial_without_number": (["pick=trial"], ["pick=trial", "trial=N"]),
        "unknown_trial": (["pick=trial", "trial=99"], ["trial=99", "0..2"]),
        "unmet_budget": (["max_latency_ms=0.000001"], ["max_latency_ms=", "closest"]),
        "bad_runtime": (["latency.runtime=tvm"], ["latency.runtime='tvm' is not known", "torch, onnxruntime"]),
        "bad_sample": (["latency.sample_size=0"], ["latency.sample_size=0 must be an integer >= 1"]),
        "gguf_of_an_encoder": (["gguf=[q8_0]"], ["gguf=['q8_0']", "GGUF files are for language models",
                                                 "classifier", "onnx=true"]),
        "unknown_gguf_type": (["gguf=[q5_k]"], ["GGUF type 'q5_k' is not known; allowed: f32, f16, q8_0, q6_k"]),
        "unknown_gguf_arch": (["gguf_arch=gpt2"], ["gguf_arch='gpt2' is not known; allowed: auto, llama, deci"]),
    }
    procs = {name: subprocess.Popen([PYTHON, "-m", "nas.export", f"run_dir={search_run}", *args], cwd=tmp_path,
                                    env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    stdin=subprocess.DEVNULL)
             for name, (args, _) in cases.items()}  # independent: run side by side
    results = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        results[name] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    for name, (_, words) in cases.items():
        proc = results[name]
        lines = nonblank_lines(proc)
        assert proc.returncode != 0, (name, lines)
        assert len(lines) == 1, (name, lines)
        assert lines[0].startswith("error: "), (name, lines)
        for word in words:
            assert word in lines[0], (name, word, lines[0])
    budget = nonblank_lines(results["unmet_budget"])[0]
    assert float(re.search(r"max_latency_ms=(\S+);", budget).group(1)) == pytest.approx(1e-6)
    for number in front["number"].dropna().astype(int):  # every front member is named, with its latency
        assert f"trial {number} (" in budget
    assert not (search_run / "export" / "trial_99").exists()


def test_export_is_a_hydra_app(tmp_path):
    """The same --help and override grammar as nas.search; its settings are typed (conf/export.yaml) and
    Hydra leaves no files of its own beside an export."""
    proc = subprocess.run([PYTHON, "-m", "nas.export", "--help"], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in ("run_dir: ???", "pick: null", "onnx: true", "  sample_size: null"):
        assert line in proc.stdout.splitlines(), proc.stdout
    bad = subprocess.run([PYTHON, "-m", "nas.export", "run_dir=x", "latency.rounds=many"], cwd=tmp_path, env=cli_env(),
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    lines = [line for line in (bad.stdout + bad.stderr).splitlines() if line.strip()]
    assert bad.returncode == 2 and lines == [
        "error: latency.rounds='many': Value 'many' of type 'str' could not be converted to Integer"], lines
    assert list(tmp_path.iterdir()) == []


def test_parse_args_rejects_contradictions():
    from nas.export import parse_args

    assert parse_args(["run_dir=x"])["pick"] == "winner"  # the final stage's winner, else the knee
    assert parse_args(["run_dir=x", "trial=3"])["pick"] == "trial"  # trial=N alone means pick=trial
    for argv, word in [(["pick=knee"], "run_dir"), (["run_dir=x", "pick=knee", "trial=1"], "trial=1"),
                       (["run_dir=x", "max_latency_ms=-1"], "max_latency_ms=-1"),
                       (["run_dir=x", "min_accuracy=1.5"], "min_accuracy=1.5"),
                       (["run_dir=x", "trial=two"], "trial='two'"),
                       (["run_dir=x", "trial=1", "min_accuracy=0.5"], "pick=trial"),
                       (["run_dir=x", "bogus=1"], "bogus=1")]:
        with pytest.raises(ValueError, match=re.escape(word)):
            parse_args(argv)


# ---- 4. choose -------------------------------------------------------------------------------------


def hand_front() -> pd.DataFrame:
    """Four members (latency, accuracy): (1, .50) (2, .85) (3, .88) (10, .90), params falling with
    latency except member 12, and the base (more accurate, slower) as reference row."""
    rows = [
        {"number": 11, "state": "COMPLETE", "val_accuracy": 0.50, "latency_ms": 1.0, "params": 100, "is_base": False},
        {"number": 12, "state": "COMPLETE", "val_accuracy": 0.85, "latency_ms": 2.0, "params": 400, "is_base": False},
        {"number": 13, "state": "COMPLETE", "val_accuracy": 0.88, "latency_ms": 3.0, "params": 300, "is_base": False},
        {"number": 14, "state": "COMPLETE", "val_accuracy": 0.90, "latency_ms": 10.0, "params": 900, "is_base": False},
        {"number": None, "state": "BASE", "val_accuracy": 0.95, "latency_ms": 20.0, "params": 1000, "is_base": True},
    ]
    return pd.DataFrame(rows)


def hand_trials() -> pd.DataFrame:
    front = hand_front()
    extra = pd.DataFrame([{"number": 15, "state": "FAIL", "is_base": False},
                          {"number": 16, "state": "COMPLETE", "val_accuracy": 0.6, "latency_ms": 5.0, "params": 500,
                           "is_base": False}])
    return pd.concat([front[~front["is_base"]], extra], ignore_index=True)


def test_choose_picks_by_rule():
    from nas.export import choose

    front = hand_front()
    assert choose(front, pick="max_accuracy")["number"] == 14  # never the base, though it is more accurate
    assert choose(front, pick="min_latency")["number"] == 11
    # knee: farthest from the line through (1, .50) and (10, .90) in [0, 1]-scaled objectives
    assert choose(front, pick="knee")["number"] == 12
    assert choose(front, pick="knee", cost="params")["number"] == 13


def test_choose_the_winner_of_the_final_stage():
    """pick=winner takes the final stage's winner when it meets the budgets; otherwise (or with no
    final stage) the knee."""
    from nas.export import choose

    front = hand_front()
    assert choose(front, pick="winner", winner=14)["number"] == 14  # not the knee (12)
    assert choose(front, pick="winner", winner=None)["number"] == 12
    assert choose(front, pick="winner", winner=14, max_latency_ms=5.0)["number"] == 12  # the winner is too slow


def test_choose_ties_break_toward_the_other_objective():
    from nas.export import choose

    front = hand_front()
    front.loc[front["number"] == 13, "val_accuracy"] = 0.90  # ties 14 on accuracy, is faster
    assert choose(front, pick="max_accuracy")["number"] == 13
    front.loc[front["number"] == 12, "latency_ms"] = 1.0  # ties 11 on latency, is more accurate
    assert choose(front, pick="min_latency")["number"] == 12


def test_choose_budgets_filter_before_the_rule():
    from nas.export import choose

    front = hand_front()
    assert choose(front, pick="max_accuracy", max_latency_ms=2.5)["number"] == 12
    assert choose(front, pick="min_latency", min_accuracy=0.86)["number"] == 13
    assert choose(front, pick="max_accuracy", max_latency_ms=3.0, min_accuracy=0.8)["number"] == 13
    assert choose(front, pick="knee", max_latency_ms=3.0)["number"] in (12, 13)
    # max_latency_ms bounds latency_ms even when the study's cost is params
    assert choose(front, pick="max_accuracy", max_latency_ms=2.5, cost="params")["number"] == 12
    assert choose(front, pick="max_accuracy", max_latency_ms=1.0)["number"] == 11  # the bound is inclusive


def test_choose_unmet_budgets_name_the_closest_trials():
    from nas.export import choose

    front = hand_front()
    with pytest.raises(ValueError) as e:
        choose(front, pick="knee", max_latency_ms=0.5)
    msg = str(e.value)
    assert "\n" not in msg and "max_latency_ms=0.5" in msg and "min_accuracy" not in msg
    assert msg.index("trial 11 (") < msg.index("trial 12 (") < msg.index("trial 13 (")  # closest first, three
    assert "trial 14 (" not in msg
    with pytest.raises(ValueError, match=r"min_accuracy=0\.99; closest: trial 14 \("):
        choose(front, pick="max_accuracy", min_accuracy=0.99)
    with pytest.raises(ValueError, match=r"max_latency_ms=2 and min_accuracy=0\.89"):
        choose(front, pick="max_accuracy", max_latency_ms=2, min_accuracy=0.89)


def test_choose_by_trial_number():
    from nas.export import choose

    front, trials = hand_front(), hand_trials()
    assert choose(front, pick="trial", trial=13, trials=trials)["number"] == 13
    assert choose(front, pick="trial", trial=16, trials=trials)["number"] == 16  # any completed trial, front or not
    with pytest.raises(ValueError, match=r"trial=99 is not in this study; trials run: 11\.\.16"):
        choose(front, pick="trial", trial=99, trials=trials)
    with pytest.raises(ValueError, match=r"trial=15 did not complete \(state FAIL\)"):
        choose(front, pick="trial", trial=15, trials=trials)
    with pytest.raises(ValueError, match="pick=trial needs trial=N"):
        choose(front, pick="trial", trials=trials)
    with pytest.raises(ValueError, match=r"pick='best' is not known; allowed: winner, knee, max_accuracy, min_latency, trial"):
        choose(front, pick="best")


def test_choose_small_and_empty_fronts():
    from nas.export import choose

    front = hand_front()
    one = front[front["number"].isin([12]) | front["is_base"]]
    for pick in ("knee", "max_accuracy", "min_latency"):
        assert choose(one, pick=pick)["number"] == 12
    two = front[front["number"].isin([11, 14]) | front["is_base"]]
    # two members: the one nearer the ideal (accuracy / max, latency / max): 14 at (1, 1) vs 11 at (.56, .1)
    assert choose(two, pick="knee")["number"] == 11
    with pytest.raises(ValueError, match="no completed trial"):
        choose(front[front["is_base"]], pick="knee")


def test_int8_export_reloads_in_a_fresh_process_with_the_reported_accuracy(knee_export):
    """The run timed and deployed in onnxruntime int8 (the default): the export ships model.int8.onnx, reports
    its accuracy and its speedups over the three named baselines, and a fresh process that loads that file
    and scores the same validation and test batches gets exactly the reported accuracies."""
    out = knee_export["out"]
    assert (out / "model.int8.onnx").is_file()
    metrics = yaml.safe_load((out / "config.yaml").read_text())["metrics"]
    assert metrics["deployed"] == "onnxruntime_int8"
    for baseline in ("quantized_base", "runtime_fp32_base", "torch_fp32_base"):
        assert metrics[f"speedup_over_{baseline}"] > 0
    assert "int8" in metrics["latency_definition_deployed"] and "paired rounds" in metrics["latency_definition_deployed"]
    readme = (out / "README.md").read_text()
    assert "model.int8.onnx" in readme and "ort.InferenceSession" in readme and "quantization alone" in readme
    assert "deployed (onnxruntime_int8): val acc" in knee_export["proc"].stdout

    script = f"""
import json, sys
import numpy as np, onnxruntime as ort
from transformers import AutoTokenizer
from nas.data.tasks import load_task, make_loader, tokenize
from omegaconf import OmegaConf
cfg = OmegaConf.load({str(out / "config.yaml")!r}).config
task = load_task(cfg.data)
tokenizer = AutoTokenizer.from_pretrained({str(out)!r})
session = ort.InferenceSession({str(out / "model.int8.onnx")!r}, providers=["CPUExecutionProvider"])
result = {{}}
for split, key in (("validation", "val"), ("test", "test")):
    loader = make_loader(tokenize(getattr(task, split), tokenizer, max_length={min(knee_export["spec"].context, int(knee_export["cfg"].max_length))}), tokenizer,
                         batch_size=64, shuffle=False)
    hits = n = 0
    for b in loader:
        logits = session.run(None, {{"input_ids": b["input_ids"].numpy(), "attention_mask": b["attention_mask"].numpy()}})[0]
        hits += int((logits.argmax(-1) == b["labels"].numpy()).sum()); n += len(b["labels"])
    result[key] = hits / n
print(json.dumps(result))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fresh["val"] == pytest.approx(metrics["val_accuracy_deployed"], abs=1e-12)
    assert fresh["test"] == pytest.approx(metrics["test_accuracy_deployed"], abs=1e-12)
