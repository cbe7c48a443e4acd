"""Shared by the benchmark scripts: the embedded model and a task, shapes from report rows,
paired timers (nas.cost.latency's one definition), and the old fixed-length rule for comparison.

Weights do not change a model's speed, so latency benchmarks time the pretrained MiniLM with
a fresh head, pruned keep-first-k, against itself unpruned.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nas.models.registry import base_shape

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parts(data: Mapping[str, Any] | None = None) -> tuple[Any, Any, Any]:
    """(base model, task, tokenizer) for the embedded MiniLM on a task (default: Rotten Tomatoes)."""
    import torch

    from nas.data.tasks import load_task
    from nas.models.loading import load_base_model, load_tokenizer
    from nas.util import quiet_libraries

    quiet_libraries()
    torch.manual_seed(0)
    task = load_task(dict(data or {"kind": "rotten_tomatoes"}))
    return load_base_model(None, num_labels=task.num_labels), task, load_tokenizer(None)


def timer(base: Any, task: Any, tokenizer: Any, *, max_length: int, **settings: Any) -> Any:
    """A PairedTimer with these latency settings (the rest at the project's defaults)."""
    from types import SimpleNamespace

    from nas.cost.latency import LatencySettings, PairedTimer

    prep = SimpleNamespace(base=base, task=task, tokenizer=tokenizer, shape=base_shape(base.config))
    return PairedTimer.for_prepared(prep, LatencySettings(**settings).validate(), max_length=max_length)


def uniform_spec(base: Any, *, layers: int | None = None, heads: int | None = None, ffn: int | None = None,
                 hidden: int | None = None, context: int | None = None) -> Any:
    from nas.spec import SubnetSpec

    shape = base_shape(base.config)
    return SubnetSpec.uniform(
        layers=tuple(range(layers or shape.num_layers)), heads=heads or shape.num_heads, ffn=ffn or shape.ffn_size,
        hidden=hidden or shape.hidden_size, context=context or shape.max_positions,
    ).validate(shape)


def spec_from_row(base: Any, row: Mapping[str, Any]) -> Any:
    """The shape of a trials.csv / pareto.csv row (uniform spaces: heads and ffn are per-layer values)."""
    return uniform_spec(base, layers=int(row["n_layers"]), heads=int(round(float(row["heads"]))),
                        ffn=int(round(float(row["ffn"]))), hidden=int(row["hidden"]), context=int(row["context"]))


def pruned(base: Any, spec: Any) -> Any:
    from nas.cut.prune import prune_model

    return prune_model(base, spec).eval()


def old_rule_ms(model: Any, *, seq_len: int, runs: int = 20, warmup: int = 5, threads: int = 1) -> float:
    """The rule used before real inputs: random ids padded to `seq_len`, batch 1, median of `runs`,
    each model timed on its own (the base once per run)."""
    import torch

    from nas.cost.latency import num_threads

    vocab = int(model.config.vocab_size)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(1000, vocab - 1), vocab, (1, seq_len), generator=g)
    feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    times = []
    with num_threads(threads), torch.inference_mode():
        model.eval()
        for _ in range(warmup):
            model(**feed)
        for _ in range(runs):
            t0 = time.perf_counter()
            model(**feed)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties counted as in scipy's default)."""
    n, concordant, discordant, tx, ty = len(x), 0, 0, 0, 0
    for i in range(n):
        for j in range(i + 1, n):
            a, b = x[i] - x[j], y[i] - y[j]
            if a == 0 and b == 0:
                continue
            if a == 0:
                tx += 1
            elif b == 0:
                ty += 1
            elif (a > 0) == (b > 0):
                concordant += 1
            else:
                discordant += 1
    denom = ((concordant + discordant + tx) * (concordant + discordant + ty)) ** 0.5
    return (concordant - discordant) / denom if denom else float("nan")


def paired_bootstrap(model: Any, base: Any, *, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """90% interval of mean(model) - mean(base) over paired resamples of the same examples, in points
    (model, base: per-example correctness, 0/1 arrays in the same order)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    diff = np.asarray(model, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    means = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(resamples)]
    return float(np.percentile(means, 5) * 100), float(np.percentile(means, 95) * 100)
