"""int8 models (nas.deploy.quantize): close to fp32, the sensitive layers kept in fp32 on request,
and every unsupported setting refused in one line before any work."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import tiny
from nas.cost.latency import LatencySettings, parse_variant
from nas.deploy.llamacpp import llama_cpp_reason
from nas.deploy.onnx import export_onnx, onnx_session
from nas.deploy.quantize import QuantSettings, fp32_nodes, node_module, quantize_onnx

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reviews(minilm_tokenizer):
    """200 validation reviews of the embedded task, tokenized as the base sees them (batches of 20)."""
    from nas.config import compose
    from nas.data.tasks import load_task

    texts = load_task(compose([])["data"]).validation["text"][:200]
    out = []
    for start in range(0, len(texts), 20):
        enc = minilm_tokenizer(texts[start:start + 20], truncation=True, max_length=64, padding=True, return_tensors="np")
        out.append({"input_ids": enc["input_ids"].astype(np.int64),
                    "attention_mask": enc["attention_mask"].astype(np.int64)})
    return out


@pytest.fixture(scope="module")
def exported(minilm, minilm_tokenizer, tmp_path_factory):
    """The embedded MiniLM exported to ONNX, fp32, with its head fitted (ridge regression, lambda 10, on the
    pooled features of 300 training reviews): predictions with real margins, as a fine-tuned model has."""
    import torch

    from nas.config import compose
    from nas.data.tasks import load_task

    train = load_task(compose([])["data"]).train[:300]
    enc = minilm_tokenizer(train["text"], truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.inference_mode():
        pooled = minilm.bert(**enc).pooler_output  # (300, 384)
    x = torch.cat([pooled, torch.ones(len(pooled), 1)], 1)
    y = torch.nn.functional.one_hot(torch.tensor(train["label"]), 2).float() * 2 - 1
    w = torch.linalg.solve(x.T @ x + 10.0 * torch.eye(x.shape[1]), x.T @ y)  # (385, 2)
    with torch.no_grad():
        minilm.classifier.weight.copy_(w[:-1].T)
        minilm.classifier.bias.copy_(w[-1])
    folder = tmp_path_factory.mktemp("quant")
    export_onnx(minilm, folder / "model.onnx", max_seq=64)
    return folder


def run(path, batches):
    session = onnx_session(path, threads=1)
    return np.concatenate([session.run(None, b)[0] for b in batches])


def test_dynamic_int8_logits_close_to_fp32_and_predictions_agree(exported, reviews):
    """Stated tolerance: every logit within 0.05 of fp32 plus 10% of the logits' spread (std); predictions
    agree on at least 98% of 200 real reviews (measured: 0.044 against a spread of 0.33; 100%)."""
    fp32 = run(exported / "model.onnx", reviews)
    path = quantize_onnx(exported / "model.onnx", exported / "dyn.int8.onnx", QuantSettings())
    int8 = run(path, reviews)
    assert int8.shape == fp32.shape == (200, 2)
    spread = float(fp32.std())
    assert np.abs(int8 - fp32).max() <= 0.05 + 0.1 * spread, (np.abs(int8 - fp32).max(), spread)
    assert (int8.argmax(-1) == fp32.argmax(-1)).mean() >= 0.98
    graph = onnx.load(str(path)).graph
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in graph.node)  # int8 kernels
    assert path.stat().st_size < 0.4 * (exported / "model.onnx").stat().st_size  # int8 weights: ~4x smaller


def test_static_qdq_calibrated_on_inputs_and_keep_fp32(exported, reviews):
    """Static QDQ calibrated on given inputs; keep_fp32=[classifier] leaves the head's product unquantized."""
    settings = QuantSettings(quantization="static", keep_fp32=("classifier",), calibration=4).validate()
    source = onnx.load(str(exported / "model.onnx"))
    kept = fp32_nodes(source, settings.keep_fp32)
    assert kept and all(node_module(n).startswith("classifier") for n in source.graph.node if n.name in kept)
    path = quantize_onnx(exported / "model.onnx", exported / "static.int8.onnx", settings, calibration=reviews[:4])
    graph = onnx.load(str(path)).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # QDQ format
    # the classifier's MatMul still reads fp32 tensors: no DequantizeLinear feeds it
    producers = {out: n for n in graph.node for out in n.output}
    head = [n for n in graph.node if n.name in kept and n.op_type in ("MatMul", "Gemm")]
    assert head and all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
                        for n in head for i in n.input)
    fp32, int8 = run(exported / "model.onnx", reviews), run(path, reviews)
    assert (int8.argmax(-1) == fp32.argmax(-1)).mean() >= 0.9


def test_keep_fp32_names_modules_of_the_model():
    model = tiny.bert()
    QuantSettings(keep_fp32=("classifier", "*.layer.0.*")).check_modules(model)
    with pytest.raises(ValueError) as info:
        QuantSettings(keep_fp32=("clasifier",)).check_modules(model)
    assert str(info.value).startswith("latency.keep_fp32 pattern 'clasifier' matches no Linear module of the model; "
                                      "module paths look like: ")


@pytest.mark.parametrize("settings, expected", [
    ({"precision": "int4"}, "latency.precision='int4' is not known; allowed: fp32, int8, f16, q8_0, q6_k, q5_k_m, q5_0, q4_k_m, iq4_nl, q4_0, auto"),
    ({"runtime": "tvm"}, "latency.runtime='tvm' is not known; allowed: torch, onnxruntime, llamacpp, auto"),
    ({"runtime": "torch", "precision": "int8"},
     "latency.precision=int8 has no path in torch eager here; use latency.runtime=onnxruntime (onnxruntime's int8 "
     "kernels) or latency.precision=fp32"),
    ({"runtime": "onnxruntime", "precision": "int8", "activations": "int8"},
     "latency.activations=int8 is not supported by onnxruntime's dynamic quantization (uint8 activations only); "
     "use latency.activations=uint8 or latency.quantization=static"),
    ({"runtime": "onnxruntime", "precision": "int8", "quantization": "qat"},
     "latency.quantization='qat' is not known; allowed: dynamic, static"),
    ({"runtime": "onnxruntime", "precision": "int8", "quantization": "static", "calibration": 0},
     "latency.calibration=0 must be an integer >= 1 (training inputs)"),
    ({"runtime": "torch", "keep_fp32": ["classifier"]},
     "latency.keep_fp32=['classifier'] applies to latency.precision=int8 only"),
    ({"model": "guess"}, "latency.model='guess' is not known; allowed: measured, table, auto"),
])
def test_bad_latency_settings_refused_in_one_line(settings, expected):
    with pytest.raises(ValueError) as info:
        LatencySettings.from_cfg(settings)
    assert str(info.value) == expected


def test_auto_resolves_per_task_kind():
    auto = LatencySettings(runtime="auto", precision="auto", model="auto").validate()
    classifier = auto.resolved(lm=False)
    assert (classifier.runtime, classifier.precision, classifier.model, classifier.variant) == (
        "onnxruntime", "int8", "table", "onnxruntime_int8")
    lm = auto.resolved(lm=True)  # llama.cpp at q8_0 where llama-cpp-python imports, else torch fp32
    want = ("torch", "fp32", "measured", "torch") if llama_cpp_reason() else ("llamacpp", "q8_0", "measured",
                                                                           "llamacpp_q8_0")
    assert (lm.runtime, lm.precision, lm.model, lm.variant) == want
    assert parse_variant("onnxruntime_int8") == ("onnxruntime", "int8") and parse_variant("torch") == ("torch", "fp32")
    with pytest.raises(ValueError, match="runtime 'torch_int8' is not known; allowed: torch, onnxruntime, "
                                         "onnxruntime_int8, llamacpp, llamacpp_f16, llamacpp_q8_0, llamacpp_q6_k"):
        parse_variant("torch_int8")


def test_continuing_a_study_in_another_runtime_or_precision_is_refused(tiny_env, tmp_path):
    """A study timed in onnxruntime fp32, continued in int8 or in torch, would mix incomparable latencies."""
    from nas.study.search import run_search

    storage = f"search.storage=sqlite:///{tmp_path}/study.db"
    first = ("latency.runtime=onnxruntime", "latency.precision=fp32", "latency.model=measured")
    run_search(tiny.make_cfg(tiny_env, storage, "search.n_trials=1", *first), tmp_path / "run1")
    for change, expected in (
        ("latency.precision=int8", "latency.precision='int8' differs from the study's 'fp32'"),
        ("latency.runtime=torch", "latency.runtime='torch' differs from the study's 'onnxruntime'"),
        ("latency.model=table", "latency.model='table' differs from the study's 'measured'"),
    ):
        with pytest.raises(ValueError) as info:
            run_search(tiny.make_cfg(tiny_env, storage, "search.n_trials=2", *first, change), tmp_path / "run2")
        assert str(info.value).startswith(expected + " (study 'nas'): its latencies would not be comparable"), info.value


def test_precision_axis_chooses_per_shape(tiny_env, tmp_path):
    """`precision: [fp32, int8]` in the space: each trial draws its precision, is timed at it against the base
    at latency.precision, and reports its validation accuracy as deployed (its ONNX session at that
    precision) beside the torch fp32 one; a shape tried at one precision is not a repeat at the other."""
    from nas.study.search import run_search

    space = {**tiny.TINY_SPACE, "precision": ["fp32", "int8"]}
    study, _ = run_search(tiny.make_cfg(tiny_env, "search.n_trials=4", "search.sampler=random", "latency.runtime=onnxruntime",
                                        "latency.precision=int8", "latency.model=measured", space=space),
                          tmp_path / "run")
    done = [t for t in study.trials if t.state.name == "COMPLETE" and "repeat_of" not in t.user_attrs]
    assert {t.user_attrs["precision"] for t in done} == {"fp32", "int8"}
    for t in done:
        a = t.user_attrs
        assert a["speedup"] > 0 and 0 <= a["val_accuracy"] <= 1
        assert 0 <= a["val_accuracy_fp32"] <= 1  # torch fp32, beside the accuracy as deployed at its precision
        if a["precision"] == "fp32":  # the fp32 ONNX session computes what torch does
            assert a["val_accuracy"] == pytest.approx(a["val_accuracy_fp32"], abs=0.02)
    assert study.user_attrs["space_choices"]["precision"] == ["fp32", "int8"]
    import pandas as pd

    trials = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert set(trials["precision"].dropna()) == {"fp32", "int8"}


def test_precision_axis_needs_onnxruntime(tiny_env, tmp_path):
    from nas.study.search import Search

    space = {**tiny.TINY_SPACE, "precision": ["fp32", "int8"]}
    with pytest.raises(ValueError) as info:
        Search(tiny.make_cfg(tiny_env, space=space), tmp_path / "run")
    assert str(info.value) == (f"space {space['name']}: precision=['fp32', 'int8'] needs latency.runtime=onnxruntime "
                               "and fp32 / int8 (a classifier; int8 has no path in torch here)")
    with pytest.raises(ValueError, match=r"precision=\['int4'\] must be a list of fp32, int8"):
        Search(tiny.make_cfg(tiny_env, space={**tiny.TINY_SPACE, "precision": ["int4"]}), tmp_path / "run")


def test_latency_table_is_for_encoders(tiny_env, tmp_path):
    """A decoder classifier: latency.model=table is refused before any work; auto falls back to measured."""
    from nas.study.search import Search

    folder = tmp_path / "llama"
    tiny.write_tokenizer(folder)
    tiny.llama(labels=2).save_pretrained(folder)
    env = {**tiny_env, "model": folder, "cache": tmp_path / "cache"}
    with pytest.raises(ValueError) as info:
        Search(tiny.make_cfg(env, "latency.runtime=onnxruntime", "latency.precision=int8", "latency.model=table"),
               tmp_path / "run").prepare()
    assert str(info.value) == ("latency.model=table knows encoder classifiers; decoder models: set "
                               "latency.model=measured (or auto)")
    assert not (tmp_path / "cache" / "base").exists()


def test_int8_accuracy_is_scored_as_served_one_review_at_a_time(exported, reviews, minilm_tokenizer):
    """session_accuracy (final stage, nas.export, nas.train, benchmarks) equals a loop that feeds each review alone,
    tokenized alone (no padding), exactly; a padded batch moves dynamic int8's activation scale."""
    from nas.config import compose
    from nas.data.tasks import load_task
    from nas.deploy.onnx import session_accuracy

    int8 = quantize_onnx(exported / "model.onnx", exported / "served.int8.onnx", QuantSettings())
    session = onnx_session(int8, threads=1)
    texts = load_task(compose([])["data"]).validation["text"][:200]
    labels = np.array([1, 0] * 100)  # any labels: both sides are scored against the same ones
    batches = [{**b, "labels": labels[i * 20:(i + 1) * 20]} for i, b in enumerate(reviews)]
    served = session_accuracy(session, batches)
    alone, logits = [], []
    for text in texts:
        enc = minilm_tokenizer(text, truncation=True, max_length=64, return_tensors="np")
        feed = {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}
        logits.append(session.run(None, feed)[0][0])
        alone.append(int(logits[-1].argmax()))
    assert served == float(np.mean(np.array(alone) == labels))
    padded = np.concatenate([session.run(None, {k: b[k] for k in ("input_ids", "attention_mask")})[0] for b in reviews])
    assert np.abs(padded - np.array(logits)).max() > 1e-4  # why: padding rows move dynamic int8's activation scale
