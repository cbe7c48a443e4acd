"""The newer model families (nas.models.modernbert, nas.models.deberta, nas.models.qwen3, nas.models.smollm3) on
tiny random models built from their transformers configs: keep-everything is exact; a cut to a spec has the spec's
shapes and the closed-form parameter count; removed heads / neurons are exactly their zeroed contributions; each
family's head-size rule survives every cut; the HF export reloads with equal logits in a fresh process that imports
nothing of this project; int8 ONNX (classifiers) and f32 GGUF in the family's own llama.cpp architecture (language
models, greedy tokens included) agree with torch; cuts a family cannot express are refused in one line. For the
classifiers also: the latency table's decomposition (stem, k-layer models) on a FLOP clock and a search with the
table; rescale recovery where the family says; hidden-state distillation on where hidden states pair by layer; and
what a family does not apply (prune.recovery, train.distill=hidden) refused in one line before any work.

Tolerances: fp32 ONNX and the reloaded folder FP32_TOL absolute; int8 ONNX (onnxruntime dynamic quantization,
per-channel int8 weights, uint8 activations), one input at a time: a mean |logit error| of INT8_TOL of the
logits' spread and the same prediction on 85% of inputs; f32 GGUF in llama.cpp GGUF_F32_TOL of the largest |logit|
and the same greedy tokens; q8_0 5% of it (tests/test_gguf.py's tolerances).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tiny
from nas.cut.importance import compute_scores
from nas.cut.prune import count_parameters, prune_model
from nas.models.deberta import deberta_params
from nas.models.decoder import decoder_params, select_heads
from nas.models.modernbert import modernbert_params
from nas.models.qwen3 import qwen3_params
from nas.models.registry import base_shape, family_for
from nas.spec import SpecError, SubnetSpec

pytestmark = pytest.mark.usefixtures("one_thread")

FP32_TOL = 1e-4
INT8_TOL = 0.25  # of the logits' spread (std), mean over inputs


@dataclass(frozen=True)
class Case:
    """One family's tiny model, how to count its parameters, its specs and its head-size rule."""

    build: Callable[[], Any]
    params: Callable[[Any, SubnetSpec], int]  # (model, spec) -> closed-form count
    specs: dict[str, SubnetSpec]
    stock: SubnetSpec  # a cut a stock config of the family holds
    head_rule: Callable[[Any], None]  # asserts the family's head-size rule on a (pruned) model
    zero: Callable[[Any, int, str, torch.Tensor], None]  # zero a layer's removed heads / ffn units in place
    zero_spec: SubnetSpec | None = None  # the cut the zeroing test makes (None: per-layer heads and FFN)


# ---- ModernBERT --------------------------------------------------------------------------------------

MB_SPECS = {
    "depth": SubnetSpec(layers=(1, 2), heads=(4, 4), ffn=(37, 37), hidden=32, context=128),
    "heads": SubnetSpec(layers=(0, 1, 2, 3), heads=(1, 4, 2, 3), ffn=(37,) * 4, hidden=32, context=128),
    "ffn": SubnetSpec(layers=(0, 1, 2, 3), heads=(4,) * 4, ffn=(37, 1, 20, 8), hidden=32, context=128),
    "hidden": SubnetSpec(layers=(0, 1, 2, 3), heads=(4,) * 4, ffn=(37,) * 4, hidden=20, context=128),
    "context": SubnetSpec(layers=(0, 1, 2, 3), heads=(4,) * 4, ffn=(37,) * 4, hidden=32, context=16),
    "all": SubnetSpec(layers=(1, 3), heads=(3, 1), ffn=(5, 30), hidden=24, context=16),
}


def mb_params(model: Any, spec: SubnetSpec) -> int:
    cfg = model.config
    return modernbert_params(spec, vocab=cfg.vocab_size, head_size=8, labels=cfg.num_labels,
                             attn_norm=[i > 0 for i in spec.layers], norm_bias=cfg.norm_bias,
                             attention_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias,
                             classifier_bias=cfg.classifier_bias)


def mb_head_rule(model: Any) -> None:
    """Fused Wqkv: three equal thirds of heads x head size, read as such by the attention."""
    spec = SubnetSpec.from_dict(model.config.nas_spec) if hasattr(model.config, "nas_spec") else None
    for i, layer in enumerate(model.model.layers):
        heads = spec.heads[i] if spec else model.config.num_attention_heads
        assert layer.attn.head_dim == 8
        assert layer.attn.Wqkv.out_features == 3 * heads * 8
        assert layer.attn.Wo.in_features == heads * 8
        assert layer.mlp.Wi.out_features == 2 * layer.mlp.Wo.in_features  # both GeGLU halves, the same width


def mb_zero(model: Any, layer: int, axis: str, keep: torch.Tensor) -> None:
    lin = model.model.layers[layer].attn.Wo if axis == "heads" else model.model.layers[layer].mlp.Wo
    unit = 8 if axis == "heads" else 1
    drop = torch.ones(lin.in_features, dtype=torch.bool)
    drop[(keep[:, None] * unit + torch.arange(unit)).reshape(-1)] = False
    with torch.no_grad():
        lin.weight[:, drop] = 0


# ---- DeBERTa-v2 / v3 ----------------------------------------------------------------------------------


def db_params(model: Any, spec: SubnetSpec) -> int:
    return deberta_params(spec, model.config, head_size=8)


def db_head_rule(model: Any) -> None:
    """Every head projection (content and, in v2, position) is heads x head size; the attention says so."""
    for layer in model.deberta.encoder.layer:
        att = layer.attention.self
        assert att.attention_head_size == 8 and att.all_head_size == att.num_attention_heads * 8
        for name in ("query_proj", "key_proj", "value_proj", "pos_key_proj", "pos_query_proj"):
            if hasattr(att, name):
                assert getattr(att, name).out_features == att.all_head_size, name
        assert layer.attention.output.dense.in_features == att.all_head_size


def db_zero(model: Any, layer: int, axis: str, keep: torch.Tensor) -> None:
    block = model.deberta.encoder.layer[layer]
    lin = block.attention.output.dense if axis == "heads" else block.output.dense
    unit = 8 if axis == "heads" else 1
    drop = torch.ones(lin.in_features, dtype=torch.bool)
    drop[(keep[:, None] * unit + torch.arange(unit)).reshape(-1)] = False
    with torch.no_grad():
        lin.weight[:, drop] = 0


STOCK = SubnetSpec.uniform(layers=(0, 2, 3), heads=3, ffn=20, hidden=24, context=64)
CASES: dict[str, Case] = {
    "modernbert": Case(build=tiny.modernbert, params=mb_params, specs=MB_SPECS,
                       stock=SubnetSpec.uniform(layers=(0, 2, 3), heads=3, ffn=20, hidden=24, context=64),
                       head_rule=mb_head_rule, zero=mb_zero),
    "deberta_v3": Case(build=tiny.deberta, params=db_params, specs=MB_SPECS, stock=STOCK, head_rule=db_head_rule,
                       zero=db_zero),
    "deberta_v2": Case(build=lambda: tiny.deberta(v3=False), params=db_params, specs=MB_SPECS, stock=STOCK,
                       head_rule=db_head_rule, zero=db_zero),
}
CLASSIFIERS = ["modernbert", "deberta_v3", "deberta_v2"]


# ---- Qwen3 ---------------------------------------------------------------------------------------------

QW = tiny.QWEN3
QW_SPECS = {  # llama.cpp's qwen3 graph has one shape for every layer: uniform cuts only
    "depth": SubnetSpec.uniform(layers=(0, 2, 3), heads=4, kv_heads=2, ffn=48, hidden=64, context=128),
    "heads": SubnetSpec.uniform(layers=(0, 1, 2, 3), heads=2, kv_heads=2, ffn=48, hidden=64, context=128),
    "groups": SubnetSpec.uniform(layers=(0, 1, 2, 3), heads=2, kv_heads=1, ffn=48, hidden=64, context=128),
    "ffn": SubnetSpec.uniform(layers=(0, 1, 2, 3), heads=4, kv_heads=2, ffn=20, hidden=64, context=128),
    "hidden": SubnetSpec.uniform(layers=(0, 1, 2, 3), heads=4, kv_heads=2, ffn=48, hidden=40, context=128),
    "context": SubnetSpec.uniform(layers=(0, 1, 2, 3), heads=4, kv_heads=2, ffn=48, hidden=64, context=16),
    "all": SubnetSpec.uniform(layers=(1, 3), heads=2, kv_heads=1, ffn=30, hidden=40, context=32),
}


def qw_params(model: Any, spec: SubnetSpec) -> int:
    return qwen3_params(spec, vocab=model.config.vocab_size, head_size=QW["head_dim"], tied=True)


def qw_head_rule(model: Any) -> None:
    """The explicit head_dim (24 on a hidden of 64, or of any cut hidden) stays in the weights, the q/k norms,
    the attention and the config."""
    hd = QW["head_dim"]
    assert model.config.head_dim == hd
    for layer in model.model.layers:
        att = layer.self_attn
        assert att.head_dim == hd and att.q_norm.weight.numel() == att.k_norm.weight.numel() == hd
        assert att.q_proj.out_features % hd == 0 and att.k_proj.out_features % hd == 0
        assert att.o_proj.in_features == att.q_proj.out_features
        assert (att.q_proj.out_features // hd) // (att.k_proj.out_features // hd) == att.num_key_value_groups


def qw_zero(model: Any, layer: int, axis: str, keep: torch.Tensor, unit: int = QW["head_dim"]) -> None:
    block = model.model.layers[layer]
    lin, unit = (block.self_attn.o_proj, unit) if axis == "heads" else (block.mlp.down_proj, 1)
    drop = torch.ones(lin.in_features, dtype=torch.bool)
    drop[(keep[:, None] * unit + torch.arange(unit)).reshape(-1)] = False
    with torch.no_grad():
        lin.weight[:, drop] = 0


CASES["qwen3"] = Case(build=tiny.qwen3, params=qw_params, specs=QW_SPECS, stock=QW_SPECS["all"], head_rule=qw_head_rule,
                      zero=qw_zero, zero_spec=SubnetSpec.uniform(layers=(0, 1, 2, 3), heads=2, kv_heads=2, ffn=20,
                                                                 hidden=64, context=128))


# ---- SmolLM3 (8 layers: NoPE in layers 3 and 7; depth cuts keep llama.cpp's every-fourth pattern) -------

SM_ALL = tuple(range(8))
SM_SPECS = {
    "depth": SubnetSpec.uniform(layers=(4, 5, 6, 7), heads=4, kv_heads=2, ffn=48, hidden=64, context=128),
    "groups": SubnetSpec.uniform(layers=SM_ALL, heads=2, kv_heads=1, ffn=48, hidden=64, context=128),
    "ffn": SubnetSpec.uniform(layers=SM_ALL, heads=4, kv_heads=2, ffn=20, hidden=64, context=128),
    "hidden": SubnetSpec.uniform(layers=SM_ALL, heads=4, kv_heads=2, ffn=48, hidden=40, context=128),
    "context": SubnetSpec.uniform(layers=SM_ALL, heads=4, kv_heads=2, ffn=48, hidden=64, context=16),
    "all": SubnetSpec.uniform(layers=(0, 1, 2), heads=2, kv_heads=1, ffn=30, hidden=40, context=32),
}


def sm_head_rule(model: Any) -> None:
    """Head size 16 in every projection; each kept layer's rotary choice is in its module and its config."""
    for layer, rope in zip(model.model.layers, model.config.no_rope_layers, strict=True):
        att = layer.self_attn
        assert att.head_dim == 16 and att.q_proj.out_features % 16 == 0 and att.use_rope == bool(rope)
        assert att.o_proj.in_features == att.q_proj.out_features


CASES["smollm3"] = Case(build=tiny.smollm3, specs=SM_SPECS, stock=SM_SPECS["all"], head_rule=sm_head_rule,
                        params=lambda m, spec: decoder_params(spec, vocab=m.config.vocab_size, head_size=16, tied=True),
                        zero=lambda m, i, axis, keep: qw_zero(m, i, axis, keep, unit=16),
                        zero_spec=SubnetSpec.uniform(layers=SM_ALL, heads=2, kv_heads=2, ffn=20, hidden=64,
                                                     context=128))


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return {name: case.build() for name, case in CASES.items()}


def batch(model: Any, *, length: int = 14, batch: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded ids, longer than the tiny ModernBERT's sliding window (8)."""
    return tiny.padded_batch(pad_id=int(model.config.pad_token_id or 0), batch=batch, length=length,
                             vocab=int(model.config.vocab_size), seed=seed)


def logits(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


# ---- cuts ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_keep_everything_is_exact_and_the_count_is_closed_form(name, models):
    model = models[name]
    shape = base_shape(model.config)
    full = prune_model(model, SubnetSpec.full(shape), tiny.random_scores(shape))
    x = batch(model)
    assert torch.equal(logits(full, x), logits(model, x))
    assert count_parameters(model) == CASES[name].params(model, SubnetSpec.full(shape))


@pytest.mark.parametrize(("name", "axis"), [(n, a) for n, c in CASES.items() for a in c.specs])
def test_a_cut_has_the_spec_shape_params_and_head_rule(name, axis, models):
    case, model = CASES[name], models[name]
    spec = case.specs[axis]
    pruned = prune_model(model, spec, tiny.random_scores(base_shape(model.config)))
    assert count_parameters(pruned) == case.params(pruned, spec)
    got = base_shape(pruned.config)
    assert (got.num_layers, got.num_heads, got.head_size, got.hidden_size, got.ffn_size, got.max_positions,
            got.num_kv_heads) == (len(spec.layers), max(spec.heads), base_shape(model.config).head_size, spec.hidden,
                                  max(spec.ffn), spec.context, None if spec.kv_heads is None else max(spec.kv_heads))
    case.head_rule(pruned)
    out = logits(pruned, batch(model, length=min(14, spec.context)))
    assert out.shape[0] == 3 and torch.isfinite(out).all()
    assert count_parameters(model) == case.params(model, SubnetSpec.full(base_shape(model.config)))  # base untouched


@pytest.mark.parametrize("name", list(CASES))
def test_removed_heads_and_neurons_are_their_zeroed_contributions(name, models):
    """Which heads / neurons a cut keeps (by scores) is exactly which the unpruned model keeps non-zero."""
    case, model = CASES[name], models[name]
    shape = base_shape(model.config)
    scores = tiny.random_scores(shape, seed=3)
    spec = case.zero_spec or SubnetSpec(layers=tuple(range(shape.num_layers)), heads=(1, 3, 2, 4),
                                        ffn=(5, shape.ffn_size, 9, 20), hidden=shape.hidden_size,
                                        context=shape.max_positions)
    pruned = prune_model(model, spec, scores)
    zeroed = prune_model(model, SubnetSpec.full(shape))
    from nas.models.slicing import keep_top

    for i in range(shape.num_layers):
        heads = (keep_top(scores.heads[i], spec.heads[i]) if spec.kv_heads is None else
                 select_heads(scores.heads[i], kv_heads=spec.kv_heads[i], heads=spec.heads[i], shape=shape)[1])
        case.zero(zeroed, i, "heads", heads)
        case.zero(zeroed, i, "ffn", keep_top(scores.ffn[i], spec.ffn[i]))
    x = batch(model)
    torch.testing.assert_close(logits(pruned, x), logits(zeroed, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_importance_masks_sit_where_the_family_says(name, models):
    """Fisher scores from the family's mask sites: the right shapes, finite, and not all equal."""
    model = models[name]
    shape = base_shape(model.config)
    x = batch(model)
    labels = x["input_ids"] if family_for(model).causal_lm else torch.tensor([0, 1, 2]) % model.config.num_labels
    scores = compute_scores(model, [{**x, "labels": labels}], max_batches=1)
    scores.check_fits(shape)
    for axis in ("layers", "heads", "ffn", "hidden"):
        values = getattr(scores, axis)
        assert torch.isfinite(values).all() and values.std() > 0, axis


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_the_latency_tables_stem_runs_without_layers(name, models):
    """The stem is the embeddings and the head: every parameter but the layers', and it runs."""
    model = models[name]
    family = family_for(model)
    assert family.latency_table
    stem = prune_model(model, SubnetSpec.full(base_shape(model.config)))
    family.drop_layers(stem)
    layers = sum(count_parameters(layer) for layer in family.mask_sites(model).layers)
    assert count_parameters(stem) == count_parameters(model) - layers and stem.config.num_hidden_layers == 0
    assert logits(stem, batch(stem)).shape == (3, stem.config.num_labels)


FLOP_CLOCK_TOL = 1e-6  # relative; the decomposition is exact on this clock (measured: 4e-16)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_the_latency_table_predicts_held_out_shapes_on_a_flop_clock(name, models, monkeypatch):
    """What the latency table assumes of a family, on a clock that ticks the model's FLOPs (nas.cost.latency's count)
    instead of time, so nothing here is timed: the stem (drop_layers), each layer as (k-layer model - stem) / k on
    small-vocabulary copies, the attention and FFN lines and the interpolation between grid points add up, for every
    held-out shape (heads and FFN between grid points, 1 to 4 layers where the table built 2), to the cut model's own
    count within FLOP_CLOCK_TOL; more layers cost more."""
    from nas.cost import table as T
    from nas.cost.latency import LatencySettings, _flops_at

    def flop_clock(model: Any, feeds: list[dict[str, Any]], **_: Any) -> Callable[[int, int], float]:
        cost = [int(f["input_ids"].shape[0]) * _flops_at(model, int(f["input_ids"].shape[1])) * 1e-12 for f in feeds]
        return lambda start, stop: sum(cost[start:stop])

    monkeypatch.setattr(T, "runtime_pass", flop_clock)
    model = models[name]
    grid = T.Grid(hidden=(16, 32), heads=(2, 4), ffn=(16, 37), widths=(8, 16))
    table = T.build_table(model, grid, LatencySettings(runtime="onnxruntime", precision="int8").validate(), reps=1, k=2)
    for hidden in grid.hidden:
        for width in grid.widths:
            predicted = []
            for depth in (1, 2, 3, 4):
                spec = SubnetSpec.uniform(layers=tuple(range(depth)), heads=3, ffn=24, hidden=hidden, context=64)
                count = _flops_at(prune_model(model, spec), width) * 1e-9  # ms on the clock, batch of one
                predicted.append(table.forward_ms(spec, width))
                assert predicted[-1] == pytest.approx(count, rel=FLOP_CLOCK_TOL), (hidden, width, depth)
            assert predicted == sorted(predicted) and len(set(predicted)) == 4


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_a_search_with_the_latency_table_and_no_training_predicts_and_rescales_every_trial(name, tmp_path):
    """latency.model=table end to end (onnxruntime int8, as the main command times classifiers): the table is built
    from the family's stems and k-layer models on this machine and cached, and every trial's latency is its
    prediction. Nothing is timed against a bound: entries are finite and >= 0 and a prediction grows with depth.
    With search.estimator=none, prune.recovery=auto rescales every cut (nas.cut.recovery through the family) and
    its reconstruction error drops."""
    import math

    from nas.cost.table import LatencyTable
    from nas.study.search import run_search

    build = {"modernbert": lambda: tiny.modernbert(labels=2, positions=64),
             "deberta_v3": lambda: tiny.deberta(labels=2, positions=64),
             "deberta_v2": lambda: tiny.deberta(labels=2, positions=64, v3=False)}[name]
    env = tiny.task_folder(tmp_path)
    folder = tmp_path / name
    tiny.write_tokenizer(folder)
    build().save_pretrained(folder)
    env = {**env, "model": folder}
    space = {**tiny.TINY_SPACE, "axes": {**tiny.TINY_SPACE["axes"], "layers": {"low": 1, "high": 4}}}
    study, _ = run_search(tiny.make_cfg(env, "latency.runtime=onnxruntime", "latency.precision=int8",
                                        "latency.model=table", "search.sampler=random", "search.estimator=none",
                                        space=space), tmp_path / "run")
    trials = tiny.trained_trials(study)
    assert trials and all(t.state.name == "COMPLETE" for t in trials)
    for t in trials:
        speedup = t.user_attrs["speedup"]
        assert t.user_attrs["latency_predicted"] and math.isfinite(speedup) and speedup > 0
        assert 0 < t.user_attrs["recovery_error_ratio"] <= 1
    assert any(t.user_attrs["recovery_error_ratio"] < 1 for t in trials)
    files = list((env["cache"] / "latency_table").glob("*.json"))
    assert len(files) == 1
    table = LatencyTable.from_json(files[0].read_text())
    entries = [*table.stem.values(), *(s for line in table.attention.values() for s in line.values()),
               *(s for line in table.ffn.values() for s in line.values())]
    assert all(math.isfinite(x) and x >= 0 for series in entries for x in series)
    for width in table.widths:
        depth = [table.forward_ms(SubnetSpec.uniform(layers=tuple(range(n)), heads=3, ffn=16, hidden=16, context=64),
                                  width) for n in (1, 2, 3, 4)]
        assert all(math.isfinite(x) for x in depth) and depth == sorted(depth)


# ---- export --------------------------------------------------------------------------------------------

RELOAD = r"""
import json, sys
import torch
from transformers import AutoModelForSequenceClassification
folder, remote, inputs = sys.argv[1], sys.argv[2] == "1", json.loads(sys.argv[3])
model = AutoModelForSequenceClassification.from_pretrained(folder, **({"trust_remote_code": True} if remote else {}))
with torch.no_grad():
    out = model.eval()(input_ids=torch.tensor(inputs["input_ids"]),
                       attention_mask=torch.tensor(inputs["attention_mask"]))
print(json.dumps({"logits": out.logits.tolist(), "class": type(model).__name__,
                  "project": sorted(m for m in sys.modules if m == "nas" or m.startswith("nas."))}))
"""


def reload_fresh(folder: Path, remote: bool, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Load `folder` in a new interpreter started outside the repository, without PYTHONPATH."""
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    feed = json.dumps({k: v.tolist() for k, v in inputs.items()})
    run = subprocess.run([sys.executable, "-c", RELOAD, str(folder), "1" if remote else "0", feed],
                         capture_output=True, text=True, timeout=300, cwd=folder, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("shape_kind", ["stock", "per_layer"])
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_hf_export_reloads_without_this_project(name, shape_kind, models, tmp_path):
    case, model = CASES[name], models[name]
    spec = case.stock if shape_kind == "stock" else case.specs["all"]
    pruned = prune_model(model, spec, tiny.random_scores(base_shape(model.config)))
    tokenizer = tiny.write_tokenizer(tmp_path / "tok")
    info = family_for(pruned).save_folder(pruned, tokenizer, tmp_path / "out", context=spec.context)
    assert info["remote_code"] == (shape_kind == "per_layer")
    x = batch(model, length=min(14, spec.context))
    got = reload_fresh(tmp_path / "out", info["remote_code"], x)
    assert got["project"] == []
    torch.testing.assert_close(torch.tensor(got["logits"]), logits(pruned, x), atol=FP32_TOL, rtol=0)
    assert got["class"].startswith("Nas") == info["remote_code"]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_onnx_fp32_and_int8_agree_with_torch(name, models, tmp_path):
    """fp32 ONNX: every logit within FP32_TOL, padded batches included. int8 (dynamic, as the search times it),
    scored as served (one input at a time, real tokens only) on 32 inputs: mean |logit error| within
    INT8_TOL of the logits' spread and the same prediction on at least 85% of them. Tiny random models
    quantize coarsely (measured on the tiny ModernBERT cut: mean error 0.20 of the spread, 94% agreement)."""
    import onnxruntime as ort

    from nas.deploy.onnx import export_onnx
    from nas.deploy.quantize import QuantSettings, quantize_onnx

    spec = CASES[name].specs["all"]
    pruned = prune_model(models[name], spec, tiny.random_scores(base_shape(models[name].config)))
    export_onnx(pruned, tmp_path / "model.onnx", max_seq=spec.context)
    quantize_onnx(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", QuantSettings())
    fp32 = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for length, seed in ((spec.context, 2), (9, 4)):
        x = batch(pruned, length=length, seed=seed)
        got = fp32.run(None, {k: v.numpy() for k, v in x.items()})[0]
        np.testing.assert_allclose(got, logits(pruned, x).numpy(), atol=FP32_TOL, rtol=0)
    int8 = ort.InferenceSession(str(tmp_path / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    want, got = [], []
    for _ in range(32):
        length = int(torch.randint(3, spec.context + 1, (1,), generator=g))
        ids = torch.randint(4, int(pruned.config.vocab_size), (1, length), generator=g)
        want.append(logits(pruned, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})[0].numpy())
        got.append(int8.run(None, {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())})[0][0])
    want, got = np.stack(want), np.stack(got)
    assert np.abs(got - want).mean() <= INT8_TOL * want.std(), (np.abs(got - want).mean(), want.std())
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.85


# ---- training-free recovery and hidden-state distillation ------------------------------------------------


def calibration(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    return [tiny.padded_batch(pad_id=0, batch=8, length=12, seed=seed + i) for i in range(n)]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_rescale_recovery_fits_where_the_family_says(name, models):
    """prune.recovery=rescale through the family's recovery_layers (post-norm DeBERTa: the LayerNorm after each
    sub-layer; pre-norm ModernBERT: the next sub-layer's norm, the final norm after the last layer). A context cut
    leaves every sub-layer's sum as it was on short inputs: the fit finds every scale 1 and the logits stay equal,
    which holds only if each sum is read at the right place. A cut of every axis: each sub-layer's error drops,
    and the last one's reported error is the corrected model's own, measured afresh against the base's sum."""
    from nas.cut.recovery import RecoverySettings, _accumulate, _teacher_pass, recover
    from nas.models.slicing import kept_units

    base = models[name]
    family = family_for(base)
    assert family.recovery_methods == ("none", "rescale")
    settings = RecoverySettings(method="rescale", ridge=0.0)
    calib, held_out = calibration(4, 3), calibration(2, 30)
    context = SubnetSpec.uniform(layers=(0, 1, 2, 3), heads=4, ffn=37, hidden=32, context=16)
    model = prune_model(base, context)
    report = recover(model, base, context, None, calib, settings)
    assert len(report.errors) == 8
    for e in report.errors:
        assert e["scale_min"] == pytest.approx(1.0, abs=1e-4) and e["scale_max"] == pytest.approx(1.0, abs=1e-4), e
    for b in held_out:
        torch.testing.assert_close(logits(model, b), logits(base, b), atol=1e-4, rtol=0)

    spec = CASES[name].specs["all"]
    model = prune_model(base, spec)
    report = recover(model, base, spec, None, calib, replace(settings, ridge=1e-3))
    assert len(report.errors) == 2 * len(spec.layers) and report.ratio() < 1.0
    assert all(e["after"] <= e["before"] for e in report.errors)
    shape = base_shape(base.config)
    kept = kept_units(shape, spec, None)
    teacher = [family.recovery_layers(base)[b] for b in spec.layers]
    targets, _ = _teacher_pass(base, teacher, calib, kept.hidden, torch.tensor([], dtype=torch.long), {})
    last = family.recovery_layers(model)[-1]
    fit = _accumulate(model, last.ffn_out, last.ffn_sum, calib, targets[(len(spec.layers) - 1, "ffn")], None)
    measured = fit.error(torch.ones(fit.gram.shape[0], dtype=torch.float64), torch.zeros_like(fit.rsum))
    assert measured == pytest.approx(report.errors[-1]["after"], rel=1e-5)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_hidden_distillation_is_on_where_hidden_states_pair_layer_by_layer(name, models):
    """train.distill=hidden compares student layer i's output with its teacher layer's at the kept channels
    (nas.quality.finetune.HiddenMap). A cut keeping the first two layers whole is its teacher's first two layers, so the
    loss is zero where the pairing holds: DeBERTa (post-norm, hidden states are each layer's output). ModernBERT's last
    hidden state is the final norm's output, not its last layer's, so the pair is wrong and the family says so
    (hidden_distill False: refused in one line, below)."""
    from nas.quality.finetune import HiddenMap, hidden_loss

    base = models[name]
    spec = SubnetSpec.uniform(layers=(0, 1), heads=4, ffn=37, hidden=32, context=128)
    student = prune_model(base, spec)
    x = batch(base)
    with torch.no_grad():
        s = student(**x, output_hidden_states=True).hidden_states
        t = base(**x, output_hidden_states=True).hidden_states
    loss = float(hidden_loss(s, t, HiddenMap(layers=spec.layers, channels=torch.arange(32)), x["attention_mask"]))
    assert family_for(base).hidden_distill == (loss < 1e-10), loss


# ---- refusals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_cuts_an_encoder_cannot_express_are_refused_in_one_line(name, models):
    model = models[name]
    shape = base_shape(model.config)
    n = shape.num_layers
    grouped = SubnetSpec(layers=tuple(range(n)), heads=(2,) * n, kv_heads=(1,) * n, ffn=(shape.ffn_size,) * n,
                         hidden=shape.hidden_size, context=shape.max_positions)
    too_many = SubnetSpec.uniform(layers=tuple(range(n)), heads=shape.num_heads + 1, ffn=shape.ffn_size,
                                  hidden=shape.hidden_size, context=shape.max_positions)
    for spec, words in ((grouped, "kv_heads"), (too_many, "heads")):
        with pytest.raises(SpecError) as err:
            prune_model(model, spec)
        message = str(err.value)
        assert "\n" not in message and words in message and ("allowed" in message or "leave" in message)


# ---- Qwen3: export, llama.cpp, healing, refusals ------------------------------------------------------

LM_RELOAD = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM
folder, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
model = AutoModelForCausalLM.from_pretrained(folder).eval()
with torch.no_grad():
    logits = model(input_ids=ids).logits
    gen = model.generate(ids[:1], max_new_tokens=8, do_sample=False, pad_token_id=0)
print(json.dumps({"logits": logits.tolist(), "gen": gen.tolist(), "class": type(model).__name__,
                  "head_dim": model.config.head_dim,
                  "project": sorted(m for m in sys.modules if m == "nas" or m.startswith("nas."))}))
"""


# a cut of every axis llama.cpp's graph of the family can build (SmolLM3: layers 0-3 keep its NoPE pattern)
LM_CUTS = {"qwen3": QW_SPECS["all"],
           "smollm3": SubnetSpec.uniform(layers=(0, 1, 2, 3), heads=2, kv_heads=1, ffn=30, hidden=40, context=32)}


@pytest.fixture(scope="module", params=list(LM_CUTS))
def lm_env(request):
    """A tiny Qwen3 / SmolLM3 on a byte-level BPE tokenizer (what GGUF carries), and a cut of every axis."""
    from test_gguf import bpe_tokenizer

    texts = [f"the quick brown fox {i} jumps over the lazy dog number {i * 7}, said KING LEAR." for i in range(200)]
    tokenizer = bpe_tokenizer(texts)
    model = getattr(tiny, request.param)(vocab=len(tokenizer))
    shape = base_shape(model.config)
    cut = prune_model(model, LM_CUTS[request.param], tiny.random_scores(shape))
    ids = tokenizer(texts[3] + " " + texts[11])["input_ids"][:30]
    return {"name": request.param, "texts": texts, "tokenizer": tokenizer, "model": model, "cut": cut, "ids": ids,
            "head_dim": shape.head_size}


def test_lm_hf_export_reloads_as_the_stock_class_without_this_project(lm_env, tmp_path):
    cut, ids = lm_env["cut"], torch.tensor([lm_env["ids"][:12], lm_env["ids"][12:24]])
    info = family_for(cut).save_folder(cut, lm_env["tokenizer"], tmp_path, context=LM_CUTS[lm_env["name"]].context)
    assert info == {"remote_code": False}
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", LM_RELOAD, str(tmp_path), json.dumps(ids.tolist())],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        want = cut(input_ids=ids).logits
        gen = cut.generate(ids[:1], max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert got["project"] == [] and got["class"] == type(cut).__name__ and got["head_dim"] == lm_env["head_dim"]
    torch.testing.assert_close(torch.tensor(got["logits"]), want, atol=FP32_TOL, rtol=0)
    assert got["gen"] == gen.tolist()


GGUF_F32_TOL = 5e-3  # of the largest |logit|, as tests/test_gguf.py: llama.cpp's own kernels, f32 accumulation


@pytest.mark.parametrize("which", ["model", "cut"])
def test_lm_gguf_f32_in_its_own_llama_cpp_architecture_agrees_with_torch(lm_env, which, tmp_path):
    from test_gguf import hf_greedy, hf_logits, llama_cpp_side, needs_llama_cpp

    from nas.deploy.gguf import write_gguf

    if needs_llama_cpp.args[0]:
        pytest.skip(needs_llama_cpp.kwargs["reason"])
    import gguf

    model, ids = lm_env[which], lm_env["ids"]
    info = write_gguf(model, lm_env["tokenizer"], tmp_path / "m.gguf", kind="f32", texts=lm_env["texts"][:20])
    arch = family_for(model).gguf_arch
    assert info["arch"] == arch == lm_env["name"] and info["head_size"] == lm_env["head_dim"]
    fields = gguf.GGUFReader(str(tmp_path / "m.gguf")).fields
    assert int(fields[f"{arch}.attention.key_length"].parts[-1][0]) == lm_env["head_dim"]  # the head size, in GGUF
    got, tokens = llama_cpp_side(tmp_path / "m.gguf", ids)
    want = hf_logits(model, ids)
    assert np.abs(np.asarray(got) - want).max() <= GGUF_F32_TOL * np.abs(want).max()
    assert list(tokens) == hf_greedy(model, ids, len(tokens))


def test_qwen3_q8_0_is_quantized_by_llama_cpp_and_stays_close(tmp_path):
    """q8_0 by llama.cpp's quantizer, on a cut whose widths fit 32-value blocks except the attention output
    (2 heads x 24 = 48 inputs), which llama.cpp keeps at f16; logits within 5% of the scale of torch's."""
    from test_gguf import bpe_tokenizer

    texts = [f"the quick brown fox {i} jumps over the lazy dog number {i * 7}, said KING LEAR." for i in range(200)]
    tokenizer = bpe_tokenizer(texts)
    lm_env = {"model": tiny.qwen3(vocab=len(tokenizer)), "tokenizer": tokenizer, "texts": texts,
              "ids": tokenizer(texts[3] + " " + texts[11])["input_ids"][:30]}
    from test_gguf import Q8_TOL, hf_logits, llama_cpp_side, needs_llama_cpp

    from nas.deploy.gguf import write_gguf
    from nas.deploy.gguf_quant import file_tensors

    if needs_llama_cpp.args[0]:
        pytest.skip(needs_llama_cpp.kwargs["reason"])
    model = lm_env["model"]
    cut = prune_model(model, SubnetSpec.uniform(layers=(1, 3), heads=2, kv_heads=1, ffn=32, hidden=64, context=32))
    write_gguf(cut, lm_env["tokenizer"], tmp_path / "q8.gguf", kind="q8_0", texts=lm_env["texts"][:20])
    types = {name: t for name, (t, shape) in file_tensors(tmp_path / "q8.gguf").items() if len(shape) == 2}
    assert {t for name, t in types.items() if "attn_output" not in name} == {"Q8_0"}
    assert {t for name, t in types.items() if "attn_output" in name} == {"F16"}
    got, _ = llama_cpp_side(tmp_path / "q8.gguf", lm_env["ids"])
    want = hf_logits(cut, lm_env["ids"])
    assert np.abs(np.asarray(got) - want).max() <= Q8_TOL * np.abs(want).max()


def test_lm_healing_brings_the_cut_stream_closer_and_the_healed_cut_runs_in_llama_cpp(lm_env, tmp_path):
    """Closed-form healing refits the output projections without biases (llama.cpp's qwen3 / smollm3 graphs have
    none), and the healed cut's f32 GGUF agrees with torch as any other."""
    from test_gguf import hf_greedy, hf_logits, llama_cpp_side, needs_llama_cpp

    from nas.cut.heal import Calibration, HealSettings, heal
    from nas.deploy.gguf import write_gguf

    model = lm_env["model"]
    spec = LM_CUTS[lm_env["name"]]
    cut = prune_model(model, spec)
    ids = torch.randint(3, model.config.vocab_size, (8, 24), generator=torch.Generator().manual_seed(0))
    report = heal(cut, model, spec, None, Calibration.of(model, ids), HealSettings(method="lsq"))
    assert report.errors and report.ratio() < 1.0
    assert all(m.bias is None for layer in cut.model.layers for m in (layer.self_attn.o_proj, layer.mlp.down_proj))
    if lm_env["name"] == "qwen3":
        qw_head_rule(cut)
    if needs_llama_cpp.args[0]:
        pytest.skip(needs_llama_cpp.kwargs["reason"])
    write_gguf(cut, lm_env["tokenizer"], tmp_path / "healed.gguf", kind="f32", texts=lm_env["texts"][:20])
    got, tokens = llama_cpp_side(tmp_path / "healed.gguf", lm_env["ids"])
    want = hf_logits(cut, lm_env["ids"])
    assert np.abs(np.asarray(got) - want).max() <= GGUF_F32_TOL * np.abs(want).max()
    assert list(tokens) == hf_greedy(cut, lm_env["ids"], len(tokens))


def test_cuts_qwen3_cannot_express_are_refused_in_one_line():
    from nas.deploy.gguf import check_request

    model = tiny.qwen3()
    per_layer = SubnetSpec(layers=(0, 1), heads=(4, 2), kv_heads=(2, 2), ffn=(48, 48), hidden=64, context=128)
    no_attention = SubnetSpec(layers=(0, 1), heads=(4, 0), kv_heads=(2, 0), ffn=(48, 48), hidden=64, context=128,
                              attn=("full", "none"))
    for spec, words in ((per_layer, "SubnetSpec.heads"), (no_attention, "SubnetSpec.attn")):
        with pytest.raises(SpecError) as err:
            prune_model(model, spec)
        assert "\n" not in str(err.value) and words in str(err.value) and "allowed" in str(err.value)
    with pytest.raises(ValueError, match=r"^gguf arch=deci: qwen3 models are written as llama.cpp's qwen3 "
                                         r"architecture; allowed: auto, qwen3$"):
        check_request(model, ["f32"], "deci")


def test_gemma3_is_refused_in_one_line_naming_the_supported_families():
    from transformers import Gemma3TextConfig

    from nas.models.registry import family_for_config

    with pytest.raises(ValueError) as err:
        family_for_config(Gemma3TextConfig())
    message = str(err.value)
    assert "\n" not in message and "'gemma3_text'" in message
    assert all(t in message for t in ("modernbert", "deberta-v2", "qwen3", "llama"))


def test_smollm3_depth_cuts_keep_llama_cpps_nope_pattern_or_are_refused():
    """llama.cpp's smollm3 graph skips rotary in every fourth layer: layers 0-3 or 4-7 keep that, 0, 2, 3, 4 not."""
    model = tiny.smollm3()
    assert model.config.no_rope_layers == [1, 1, 1, 0, 1, 1, 1, 0]
    for layers in ((0, 1, 2, 3), (4, 5, 6, 7), (0, 1, 2)):
        cut = prune_model(model, SubnetSpec.uniform(layers=layers, heads=4, kv_heads=2, ffn=48, hidden=64, context=128))
        assert cut.config.no_rope_layers == [int((i + 1) % 4 != 0) for i in range(len(layers))]
        assert [layer.self_attn.use_rope for layer in cut.model.layers] == cut.config.no_rope_layers
    with pytest.raises(SpecError) as err:
        prune_model(model, SubnetSpec.uniform(layers=(0, 2, 3, 4), heads=4, kv_heads=2, ffn=48, hidden=64, context=128))
    assert "\n" not in str(err.value) and "SubnetSpec.layers" in str(err.value) and "allowed" in str(err.value)


# ---- the search asks the family ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "overrides", "message"), [
    ("qwen3", ["data=shakespeare", "+space=decoder", "space.per_layer=true"],
     r"^space.per_layer=true / attn_none / attn_linear: qwen3 models have one shape in every layer \(llama.cpp's "
     r"qwen3 graph\); allowed: space.per_layer=false without the attention axes$"),
    ("modernbert", ["+space=triple", "search.estimator=supernet"],
     r"^search.estimator=supernet knows the BERT-style encoders' layers; modernbert models allow: finetune, none$"),
    ("modernbert", ["+space=triple", "search.estimator=none", "prune.recovery=both"],
     r"^prune.recovery=both is for BERT-style encoders; modernbert models allow: none, rescale$"),
    ("deberta_v3", ["+space=triple", "prune.recovery=bias"],
     r"^prune.recovery=bias is for BERT-style encoders; deberta models allow: none, rescale$"),
    ("modernbert", ["+space=triple", "train.distill=hidden"],
     r"^train.distill=hidden is for encoders whose hidden states pair layer by layer \(BERT-style, DeBERTa\); "
     r"modernbert models allow: logits$"),
    ("qwen3", ["data=shakespeare", "+space=decoder", "prune.recovery=rescale"],
     r"^prune.recovery=rescale is for encoders; qwen3 models allow: none \(its cuts are healed instead: prune.heal\)$"),
])
def test_a_search_refuses_what_the_family_cannot_do_before_any_work(name, overrides, message, tmp_path):
    from nas.config import compose
    from nas.study.search import Search

    CASES[name].build().save_pretrained(tmp_path / name)
    cfg = compose(["model=hf", f"model.name_or_path={tmp_path / name}", f"cache_dir={tmp_path / 'cache'}", *overrides])
    with pytest.raises(ValueError, match=message):
        Search(cfg, tmp_path / "run").prepare()


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_flops_are_counted_exactly_and_the_model_stays_trainable(name, models):
    """The FLOPs a trial reports (nas.cost.latency.flops_curve, a quadratic in length) for each classifier family;
    DeBERTa feeds a parameter (its relative-position table) to a module, which the counter must not trip on."""
    from nas.cost.latency import _flops_at, flops_curve

    model = models[name]
    curve = flops_curve(model)
    assert curve(7) == _flops_at(model, 7) > curve(5) > 0
    assert all(p.requires_grad for p in model.parameters())
