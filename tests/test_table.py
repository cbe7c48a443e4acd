"""The latency table (nas.cost.table): a prediction is its table sum, the table survives its cache
and is rebuilt on another machine, and a search with it predicts every trial and measures the final."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

import tiny
from nas.cost import table as T
from nas.cost.latency import LatencySettings, PairedTimer
from nas.models.registry import base_shape
from nas.spec import SubnetSpec

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = LatencySettings(runtime="onnxruntime", precision="int8", model="table", sample_size=4, rounds=3,
                           warmup=1).validate()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny BERT (hidden 32, 4 heads, FFN 37) on the tiny CSV task, its timer and a small grid."""
    from nas.data.tasks import load_task
    from nas.models.loading import load_tokenizer

    env = tiny.task_folder(tmp_path_factory.mktemp("table"))
    task = load_task({"kind": "file", "path": str(env["csv"])})
    base = tiny.bert(labels=2)
    prep = SimpleNamespace(base=base, task=task, tokenizer=load_tokenizer(env["model"]), shape=base_shape(base.config))
    timer = PairedTimer.for_prepared(prep, SETTINGS, max_length=32)
    grid = T.Grid(hidden=(16, 32), heads=(2, 4), ffn=(16, 37), widths=tuple(T.sample_widths(timer, [16, 32])))
    yield {"base": base, "timer": timer, "grid": grid, "cache": tmp_path_factory.mktemp("cache")}
    timer.close()


@pytest.fixture(scope="module")
def table(parts):
    return T.cached_table(parts["timer"], parts["grid"], cache_dir=parts["cache"], contexts=[16, 32], reps=3)


def test_prediction_of_a_calibrated_shape_is_its_table_sum(parts, table):
    """Heads on the attention line, FFN on the FFN line, hidden and widths in the grid: the prediction is
    scale x (stem + each layer's attention and FFN entries - their crossing + overhead), by hand."""
    timer = parts["timer"]
    spec = SubnetSpec(layers=(0, 1), heads=(2, 4), ffn=(16, 37), hidden=16, context=32)
    batches = timer.sample.batches(timer.caps(32)[0])
    assert batches and all(b["input_ids"].shape[1] in table.widths for b in batches)
    by_hand = 0.0
    for b in batches:
        w = table.widths.index(b["input_ids"].shape[1])
        by_hand += table.stem[16][w] + table.overhead
        for h, f in zip(spec.heads, spec.ffn):
            by_hand += table.attention[16][h][w] + table.ffn[16][f][w] - table.ffn[16][table.f0][w]
    by_hand *= table.scale / len(batches)
    assert table.predict(spec, batches) == pytest.approx(by_hand, rel=1e-12)
    assert table.scale > 0 and table.info["calibration"]["anchors"]
    # the model's own shape, read from its config, gives the same prediction as its spec
    from nas.cut.prune import prune_model

    model = prune_model(parts["base"], spec)
    assert table.predict_model(model, batches) == pytest.approx(table.predict(spec, batches), rel=1e-12)


def test_interpolates_between_grid_points(table):
    lo, hi = table.layer_ms(16, 2, 16, table.widths[0]), table.layer_ms(16, 4, 16, table.widths[0])
    mid = table.layer_ms(16, 3, 16, table.widths[0])
    assert mid == pytest.approx((lo + hi) / 2)


def test_cached_and_rebuilt_for_another_machine(parts, table, monkeypatch):
    again = T.cached_table(parts["timer"], parts["grid"], cache_dir=parts["cache"], contexts=[16, 32], reps=3)
    assert again.info["cached"]
    for name in ("widths", "stem", "attention", "ffn", "h0", "f0", "scale", "overhead"):
        assert getattr(again, name) == getattr(table, name), name
    files = list((parts["cache"] / "latency_table").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["widths"] == list(table.widths)

    built = []
    real = T.build_table
    monkeypatch.setattr(T, "build_table", lambda *a, **k: built.append(1) or real(*a, **k))
    monkeypatch.setattr(T, "machine_fingerprint", lambda: {"cpu": "another machine"})
    T.cached_table(parts["timer"], parts["grid"], cache_dir=parts["cache"], contexts=[16, 32], reps=3)
    assert built == [1] and len(list((parts["cache"] / "latency_table").glob("*.json"))) == 2


def test_timer_predicts_with_the_table_and_measures_without(parts, table):
    timer = parts["timer"]
    from nas.cut.prune import prune_model

    spec = SubnetSpec(layers=(0,), heads=(2,), ffn=(16,), hidden=16, context=16)
    model = prune_model(parts["base"], spec)
    timer.table = table
    predicted = timer.measure(model, context=16)
    assert predicted["latency_predicted"] and predicted["seconds_runtime_prepare"] < 1.0
    assert predicted["speedup"] == pytest.approx(timer.base_latency_ms() / predicted["latency_ms"])
    measured = replace(timer, settings=replace(timer.settings, model="measured"), table=None, base_rounds=[], _passes={},
                       _tmp=None)
    try:
        m = measured.measure(model, context=16)
        assert "latency_predicted" not in m and m["speedup"] > 0
        deployed = measured.measure_baselines(model, context=16, name="d")
        for baseline in ("quantized_base", "runtime_fp32_base", "torch_fp32_base"):
            assert deployed[f"speedup_over_{baseline}"] > 0
        assert measured.deployed_path("d").name == "d.int8.onnx" and measured.deployed_path("d").is_file()
        assert "paired rounds" in deployed["definition"] and "int8" in deployed["definition"]
    finally:
        measured.close()


def test_table_models_are_timed_right_after_the_base_as_candidates_are():
    """paired_ratios on scripted passes: a model slower right after another model's forward (0.5 ms back to back,
    0.8 ms after the base, as small cuts run on an AVX2 EPYC) is kept at its after-the-base time, as a ratio to the
    base in the same rounds; the base's times (one per round and width) are what the table converts with."""
    last: list[str] = []

    def side(name: str, ms: list[float], cold: float = 0.0):
        def run(start: int, stop: int) -> float:
            after_other = bool(last) and last[-1] != name
            last.append(name)
            return (ms[start] + (cold if after_other else 0.0)) / 1000.0
        return run

    base = side("base", [4.0, 8.0])
    model = side("model", [0.5, 1.0], cold=0.3)
    base_ms: list[list[float]] = [[], []]
    ratios = T.paired_ratios(base, model, widths=2, reps=5, base_ms=base_ms)
    assert ratios == pytest.approx([0.8 / 4.0, 1.3 / 8.0])
    assert [len(b) for b in base_ms] == [5, 5] and base_ms[1] == pytest.approx([8.0] * 5)
    # rounds alternate which side goes first, as nas.cost.latency.paired_rounds does
    timed = last[4:]  # after the untimed forward of each, at each width
    assert timed[:4] == ["base", "model", "base", "model"] and timed[4:8] == ["model", "base", "model", "base"]


def test_calibration_fits_the_anchors_speedups_not_their_drifting_milliseconds(parts, table):
    """Anchors whose measured speedups follow the table plus 0.05 ms per forward, measured while the machine's speed
    drifted (the base at 0.5x to 3x its time beside one anchor or another): the fit finds the overhead, every
    anchor's speedup error is nil, and the scale puts the base at its median measured latency."""
    import statistics

    timer = parts["timer"]
    fitted = replace(table)  # a copy: the module's table keeps its own fit
    shape = base_shape(parts["base"].config)
    specs = T.anchor_specs(parts["grid"], shape, [16, 32])

    def sum_and_forwards(spec, cap):
        batches = timer.sample.batches(cap)
        return fitted.table_sum(spec, batches), len(batches) / sum(int(b["input_ids"].shape[0]) for b in batches)

    s_b, p_b = sum_and_forwards(SubnetSpec.full(shape), timer.base_cap)
    overhead, measured = 0.05, []
    for spec, drift in zip(specs, [1.0, 3.0, 0.5, 2.0, 1.5]):
        s, p = sum_and_forwards(spec, timer.caps(spec.context)[0])
        speedup = (s_b + overhead * p_b) / (s + overhead * p)
        base_ms = drift * (s_b + overhead * p_b)
        measured.append({"speedup": speedup, "base_latency_ms": base_ms, "latency_ms": base_ms / speedup})
    fit = T.calibrate(fitted, timer, specs, measured=measured)
    assert fit["overhead_ms"] == pytest.approx(overhead, rel=1e-6) and fit["max_anchor_error"] < 1e-9
    assert fitted.scale == pytest.approx(statistics.median(m["base_latency_ms"] for m in measured)
                                         / (s_b + overhead * p_b))
    base_batches = timer.sample.batches(timer.base_cap)
    for spec, m in zip(specs, measured):  # the fitted table predicts each anchor's measured speedup
        predicted = fitted.predict(SubnetSpec.full(shape), base_batches) / fitted.predict(
            spec, timer.sample.batches(timer.caps(spec.context)[0]))
        assert predicted == pytest.approx(m["speedup"], rel=1e-9)
