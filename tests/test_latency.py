"""What latency timing measures (never how long anything takes): which inputs each model
receives, that base and candidate see the same sample in alternating rounds, the fixed-length
rule, batching, FLOPs per input, the onnxruntime path, and one-line refusals of bad settings."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest
import torch

import tiny
from nas.cost.latency import (
    InputSample,
    LatencySettings,
    PairedRounds,
    PairedTimer,
    flops_curve,
    flops_per_input,
    paired_rounds,
)
from nas.models.registry import base_shape
from nas.spec import SubnetSpec

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_LENGTH = 64


@pytest.fixture(scope="module")
def task():
    """The embedded Rotten Tomatoes task (real review texts)."""
    from nas.config import compose
    from nas.data.tasks import load_task

    return load_task(compose([])["data"])


@pytest.fixture(scope="module")
def base():
    """A tiny random BERT with MiniLM's vocabulary, so the real tokenizer's ids fit it."""
    return tiny.bert(vocab=30522, labels=2, types=2)


def make_timer(base, task, tokenizer, **settings) -> PairedTimer:
    s = LatencySettings(**settings).validate()
    prep = SimpleNamespace(base=base, task=task, tokenizer=tokenizer, shape=base_shape(base.config))
    return PairedTimer.for_prepared(prep, s, max_length=MAX_LENGTH)


def candidate(base, *, context: int):
    from nas.cut.prune import prune_model

    shape = base_shape(base.config)
    return prune_model(base, SubnetSpec(layers=(0,), heads=(2,), ffn=(16,), hidden=32, context=context).validate(shape),
                       None)


class Recorder:
    """Records, in call order, which model ran a forward and on which input_ids / attention_mask."""

    def __init__(self, **models) -> None:
        self.calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.handles = [m.register_forward_pre_hook(self._hook(name), with_kwargs=True) for name, m in models.items()]

    def _hook(self, name):
        def hook(module, args, kwargs):
            self.calls.append((name, kwargs["input_ids"].clone(), kwargs["attention_mask"].clone()))
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def recorded(timer: PairedTimer, base, model, *, context: int) -> tuple[dict, list]:
    """timer.measure(model) with every forward of both sides recorded, in call order."""
    rec = Recorder(base=base, candidate=model)
    try:
        return timer.measure(model, context=context), rec.calls
    finally:
        rec.close()


def test_real_inputs_have_the_sample_lengths_truncated_at_each_context(base, task, minilm_tokenizer):
    timer = make_timer(base, task, minilm_tokenizer, sample_size=12, rounds=3, warmup=0)
    model = candidate(base, context=16)
    _, calls = recorded(timer, base, model, context=16)
    texts = timer.sample.texts
    assert len(texts) == 12 and set(texts) <= set(task.validation["text"])  # never the test split
    want = {
        "base": minilm_tokenizer(list(texts), truncation=True, max_length=MAX_LENGTH)["input_ids"],
        "candidate": minilm_tokenizer(list(texts), truncation=True, max_length=16)["input_ids"],
    }
    # every timed forward of each side, in order, is one input of the sample exactly as tokenized
    for side in ("base", "candidate"):
        seen = [ids for name, ids, _ in calls if name == side]
        assert len(seen) == 3 * 12
        for i, ids in enumerate(seen):
            assert ids.shape[0] == 1  # batch 1: no padding
            assert ids[0].tolist() == want[side][i % 12]
    lengths = [len(ids) for ids in want["candidate"]]
    assert max(lengths) == 16 and min(lengths) < 16  # some reviews are cut at the context, others are shorter
    assert timer.sample.mean_tokens(16) == pytest.approx(statistics.mean(lengths))


def test_rounds_alternate_base_and_candidate_on_every_input(base, task, minilm_tokenizer):
    timer = make_timer(base, task, minilm_tokenizer, sample_size=4, rounds=3, warmup=2)
    model = candidate(base, context=32)
    metrics, calls = recorded(timer, base, model, context=32)
    order = [name for name, _, _ in calls]
    warm = ["base"] * 2 + ["candidate"] * 2
    rounds = ["base", "candidate"] * 4 + ["candidate", "base"] * 4 + ["base", "candidate"] * 4  # first side flips
    assert order == warm + rounds
    # each alternation is the same input on both sides (the candidate's cut at its context of 32)
    texts = list(timer.sample.texts)
    full = minilm_tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    cut = minilm_tokenizer(texts, truncation=True, max_length=32)["input_ids"]
    for k, (a, b) in enumerate(zip(calls[4::2], calls[5::2])):
        i = k % 4
        got = {a[0]: a[1][0].tolist(), b[0]: b[1][0].tolist()}
        assert got == {"base": full[i], "candidate": cut[i]}
    assert len(timer.base_rounds) == 3  # the base's figure is the median of every round it ran
    assert metrics["base_latency_ms"] == pytest.approx(statistics.median(timer.base_rounds))
    assert metrics["speedup_p10"] <= metrics["speedup"] <= metrics["speedup_p90"]
    assert metrics["latency_ratio"] == pytest.approx(1 / metrics["speedup"])
    # chunk=2: two inputs of one side, then the same two of the other
    chunked = make_timer(base, task, minilm_tokenizer, sample_size=4, rounds=3, warmup=0, chunk=2)
    _, calls = recorded(chunked, base, model, context=32)
    assert [name for name, _, _ in calls][:8] == ["base"] * 2 + ["candidate"] * 2 + ["base"] * 2 + ["candidate"] * 2


def test_paired_summary_is_the_median_of_per_round_ratios():
    rounds = PairedRounds(base_ms=(10.0, 20.0, 30.0, 12.0), model_ms=(5.0, 5.0, 10.0, 4.0))  # ratios 2, 4, 3, 3
    s = rounds.summary()
    assert s["speedup"] == 3.0 and s["latency_ratio"] == pytest.approx(1 / 3)
    assert s["speedup_p10"] == pytest.approx(2.3) and s["speedup_p90"] == pytest.approx(3.7)
    assert s["base_latency_ms"] == 16.0 and s["latency_ms"] == 5.0
    # a machine that slows down mid-measurement moves both sides of an alternation: the ratio holds
    calls = []

    def side(name, ms):
        def run(start, stop):
            calls.append((name, start, stop))
            return (stop - start) * ms * (1 + len(calls) // 4) / 1000  # ever slower
        return run

    steady = paired_rounds(side("b", 8.0), side("m", 2.0), n_batches=3, n_inputs=3, rounds=5, warmup=0)
    assert steady.summary()["speedup"] == pytest.approx(4.0, rel=0.2)
    assert [c[0] for c in calls[:6]] == ["b", "m", "b", "m", "b", "m"] and [c[0] for c in calls[6:8]] == ["m", "b"]
    assert {(c[1], c[2]) for c in calls} == {(0, 1), (1, 2), (2, 3)}


def test_fixed_inputs_reproduce_full_context_random_ids(base, task, minilm_tokenizer):
    timer = make_timer(base, task, minilm_tokenizer, inputs="fixed", sample_size=3, rounds=3, warmup=0)
    assert timer.sample.texts is None
    model = candidate(base, context=16)
    _, calls = recorded(timer, base, model, context=16)
    for name, ids, mask in calls:
        assert ids.shape == (1, 16 if name == "candidate" else MAX_LENGTH)  # padded to the whole context
        assert bool(mask.all())
    # one fixed length for both with seq_len
    fixed = make_timer(base, task, minilm_tokenizer, inputs="fixed", seq_len=24, sample_size=3, rounds=3)
    assert fixed.caps(16) == (16, 24) and fixed.caps(64) == (24, 24)


def test_batches_pad_consecutive_inputs_to_the_longest(base, task, minilm_tokenizer):
    s = LatencySettings(batch_size=4, sample_size=10).validate()
    sample = InputSample.from_task(task, minilm_tokenizer, s, cap=MAX_LENGTH)
    batches = sample.batches(MAX_LENGTH)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 2]
    rows = minilm_tokenizer(list(sample.texts), truncation=True, max_length=MAX_LENGTH)["input_ids"]
    for k, b in enumerate(batches):
        group = rows[4 * k:4 * k + 4]
        assert b["input_ids"].shape[1] == max(len(r) for r in group)
        for i, r in enumerate(group):
            assert b["attention_mask"][i].sum() == len(r)
            assert b["input_ids"][i, :len(r)].tolist() == r
            assert (b["input_ids"][i, len(r):] == minilm_tokenizer.pad_token_id).all()


def test_sample_is_seeded_and_stratified_by_length(task, minilm_tokenizer):
    import numpy as np

    from nas.data.tasks import token_lengths

    s = LatencySettings(sample_size=16, seed=3).validate()
    a = InputSample.from_task(task, minilm_tokenizer, s, cap=MAX_LENGTH)
    b = InputSample.from_task(task, minilm_tokenizer, s, cap=MAX_LENGTH)
    c = InputSample.from_task(task, minilm_tokenizer, LatencySettings(sample_size=16, seed=4), cap=MAX_LENGTH)
    assert a.texts == b.texts and a.texts != c.texts
    everything = token_lengths(task.validation["text"], minilm_tokenizer, cap=MAX_LENGTH)
    picked = np.sort(token_lengths(a.texts, minilm_tokenizer, cap=MAX_LENGTH))
    # one text per equal-count stratum of lengths: the k-th shortest pick lies in the k-th stratum
    bounds = np.array_split(np.sort(everything), 16)
    for k, stratum in enumerate(bounds):
        assert stratum.min() <= picked[k] <= stratum.max()
    train = InputSample.from_task(task, minilm_tokenizer, LatencySettings(sample_size=8, split="train"), cap=MAX_LENGTH)
    assert set(train.texts) <= set(task.train["text"])


def test_flops_per_input_equal_direct_counts_over_the_sample(base, task, minilm_tokenizer):
    from torch.utils.flop_counter import FlopCounterMode

    def direct(model, batch) -> int:
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            model(input_ids=torch.from_numpy(batch["input_ids"]), attention_mask=torch.from_numpy(batch["attention_mask"]))
        return int(counter.get_total_flops())

    curve = flops_curve(base)
    for length in (5, 17, 40):
        ids = torch.full((1, length), 1000)
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            base(input_ids=ids, attention_mask=torch.ones_like(ids))
        assert curve(length) == counter.get_total_flops()
    for batch_size in (1, 3):
        s = LatencySettings(batch_size=batch_size, sample_size=6).validate()
        batches = InputSample.from_task(task, minilm_tokenizer, s, cap=MAX_LENGTH).batches(MAX_LENGTH)
        assert flops_per_input(base, batches) == pytest.approx(sum(direct(base, b) for b in batches) / 6)
    timer = make_timer(base, task, minilm_tokenizer, sample_size=6)
    assert timer.flops(candidate(base, context=16), context=16) < timer.flops(base)


def test_onnxruntime_times_exported_models_and_exports_the_base_once(base, task, minilm_tokenizer, monkeypatch):
    import nas.cost.latency

    exported: list[int] = []
    real_export = nas.cost.latency.export_onnx

    def counting_export(model, path, *, max_seq, fast=False):
        exported.append(max_seq)
        return real_export(model, path, max_seq=max_seq, fast=fast)

    fed: list[list[tuple[int, ...]]] = []  # per session built: the input shapes it is fed
    real_pass = nas.cost.latency.onnx_pass

    def recording_pass(session, batches):
        fed.append([tuple(b["input_ids"].shape) for b in batches])
        return real_pass(session, batches)

    monkeypatch.setattr(nas.cost.latency, "export_onnx", counting_export)
    monkeypatch.setattr(nas.cost.latency, "onnx_pass", recording_pass)
    timer = make_timer(base, task, minilm_tokenizer, runtime="onnxruntime", sample_size=4, rounds=3, warmup=1)
    try:
        for context in (16, 32):
            metrics = timer.measure(candidate(base, context=context), context=context)
            assert metrics["speedup"] > 0 and metrics["seconds_runtime_prepare"] > 0
    finally:
        timer.close()
    assert exported == [16, MAX_LENGTH, 32]  # the candidate first, the base once, then the next candidate
    texts = list(timer.sample.texts)
    for cap, shapes in zip([16, MAX_LENGTH, 32], fed, strict=True):
        rows = minilm_tokenizer(texts, truncation=True, max_length=cap)["input_ids"]
        assert shapes == [(1, len(r)) for r in rows]


@pytest.mark.parametrize("key, value, message", [
    ("sample_size", 0, "latency.sample_size=0 must be an integer >= 1"),
    ("runtime", "tvm", "latency.runtime='tvm' is not known; allowed: torch, onnxruntime"),
    ("inputs", "padded", "latency.inputs='padded' is not known; allowed: real, fixed"),
    ("rounds", 2, "latency.rounds=2 must be >= 3"),
    ("split", "test", "latency.split='test' is not allowed"),
    ("batch_size", 9, "latency.batch_size=9 must be <= latency.sample_size=8"),
    ("runs", 20, "latency.runs is not a setting; allowed:"),
    ("chunk", 0, "latency.chunk=0 must be an integer >= 1"),
])
def test_bad_settings_are_refused_in_one_line(key, value, message):
    with pytest.raises(ValueError) as err:
        LatencySettings.from_cfg({key: value})
    assert message in str(err.value) and "\n" not in str(err.value)
