"""Latency of a member with early exits, as served: one input at a time, per input, paired with another side.

An exit runner's time depends on the input (where it leaves), so it is timed per input on a sample of real inputs,
and paired as every speedup in this project is (nas.cost.latency): the two sides alternate on every input, in one
process, the side that goes first flipping each round. Per round, the ratio of the two sides' totals; the speedup
is the median over rounds (p10 / p90 beside it). Per input, the median over rounds: its mean and p90 over the
inputs are the runner's time per input.

`segment_seconds` times each segment of a runner that runs every exit (no early exit): the per-segment costs the
exit rule is chosen from (nas.quality.exits.fit_segment_costs).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from nas.cost.latency import _quantile


def paired_inputs(sides: Mapping[str, Callable[[int], Any]], n: int, *, rounds: int,
                  warmup: int = 2) -> dict[str, np.ndarray]:
    """(rounds, n) milliseconds per input of each side, the sides taking turns on every input (in order on even
    rounds, reversed on odd ones) after `warmup` untimed inputs of each."""
    names = list(sides)
    for name in names:
        for i in range(min(warmup, n)):
            sides[name](i)
    out = {name: np.zeros((rounds, n)) for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for i in range(n):
            for name in order:
                t0 = time.perf_counter()
                sides[name](i)
                out[name][r, i] = (time.perf_counter() - t0) * 1000.0
    return out


def pair_summary(model_ms: np.ndarray, base_ms: np.ndarray) -> dict[str, float]:
    """The model against the base from paired_inputs' arrays: speedup (median over rounds of the ratio of totals)
    with p10 / p90; the model's and the base's mean time per input (median over rounds) and the model's p90 per
    input (each input's median over rounds)."""
    ratios = sorted(float(b) / float(m) for b, m in zip(base_ms.sum(axis=1), model_ms.sum(axis=1)))
    per_input = np.median(model_ms, axis=0)
    return {"speedup": statistics.median(ratios), "speedup_p10": _quantile(ratios, 0.1),
            "speedup_p90": _quantile(ratios, 0.9), "latency_ms": float(np.median(model_ms.mean(axis=1))),
            "latency_p90_ms": float(np.quantile(per_input, 0.9)),
            "base_latency_ms": float(np.median(base_ms.mean(axis=1))),
            "base_latency_p90_ms": float(np.quantile(np.median(base_ms, axis=0), 0.9))}


def segment_seconds(runner: Any, inputs: Sequence[np.ndarray], *, rounds: int, warmup: int = 2) -> np.ndarray:
    """(inputs, segments) seconds each segment of `runner` (nas.deploy.exit_runner.ExitRunner) takes on each input,
    every segment run (no early exit): the median over `rounds` passes."""
    for ids in inputs[:warmup]:
        runner.all_logits(ids)
    times = np.zeros((rounds, len(inputs), len(runner.sessions)))
    for r in range(rounds):
        for i, ids in enumerate(inputs):
            seconds: list[float] = []
            runner.all_logits(ids, seconds=seconds)
            times[r, i] = seconds
    return np.median(times, axis=0)


def session_call(session: Any, feeds: Sequence[Mapping[str, np.ndarray]]) -> Callable[[int], Any]:
    """A side for paired_inputs: `session` (onnxruntime) run on feeds[i]."""
    wanted = {i.name for i in session.get_inputs()}
    ready = [{k: v for k, v in f.items() if k in wanted} for f in feeds]
    return lambda i: session.run(None, ready[i])
