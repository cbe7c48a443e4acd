"""Measured cost of a model: latency (median of timed runs), parameters, FLOPs, size."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class LatencySettings:
    batch_size: int = 1
    seq_len: int | None = None  # None: the model's context length (capped by the caller)
    threads: int = 1
    warmup: int = 5
    runs: int = 20

    def validate(self) -> LatencySettings:
        if self.batch_size < 1:
            raise ValueError(f"latency.batch_size={self.batch_size} must be >= 1")
        if self.seq_len is not None and self.seq_len < 1:
            raise ValueError(f"latency.seq_len={self.seq_len} must be >= 1 or null")
        if self.threads < 1:
            raise ValueError(f"latency.threads={self.threads} must be >= 1")
        if self.runs < 20:
            raise ValueError(f"latency.runs={self.runs} must be >= 20 (the median needs many runs)")
        if self.warmup < 0:
            raise ValueError(f"latency.warmup={self.warmup} must be >= 0")
        return self


def latency_lengths(seq_len: int | None, *, context: int, max_length: int, max_positions: int) -> tuple[int, int]:
    """(pruned model's, base's) input length for timing, one rule for search, export and final training.

    `seq_len` None times each at its own length: the pruned model at its context, the base at
    max_length; both are capped by max_length, the base also by its positions.
    """
    model_seq = min(seq_len or context, context, max_length)
    base_seq = min(seq_len or max_length, max_length, max_positions)
    return model_seq, base_seq


@contextmanager
def num_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def dummy_inputs(model: nn.Module, batch_size: int, seq_len: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random in-vocabulary token ids with a full attention mask (every position is real work)."""
    g = torch.Generator().manual_seed(seed)
    vocab = int(model.config.vocab_size)
    device = next(model.parameters()).device
    ids = torch.randint(low=min(1000, vocab - 1), high=vocab, size=(batch_size, seq_len), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


@torch.inference_mode()
def measure_latency(model: nn.Module, *, batch_size: int, seq_len: int, threads: int = 1,
                    warmup: int = 5, runs: int = 20) -> dict[str, float]:
    """Median / p90 wall time in ms of one forward pass, after warm-up, with a fixed thread count."""
    was_training = model.training
    model.eval()
    inputs = dummy_inputs(model, batch_size, seq_len)
    cuda = inputs["input_ids"].is_cuda
    times = []
    with num_threads(threads):
        for _ in range(warmup):
            model(**inputs)
        for _ in range(runs):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(**inputs)
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1000.0)
    model.train(was_training)
    times.sort()
    return {
        "latency_ms": statistics.median(times),
        "latency_p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
        "latency_min_ms": times[0],
    }


@torch.inference_mode()
def count_flops(model: nn.Module, *, batch_size: int, seq_len: int) -> int:
    """Forward FLOPs at this input size, counted by torch.utils.flop_counter (matmuls, SDPA)."""
    from torch.utils.flop_counter import FlopCounterMode

    inputs = dummy_inputs(model, batch_size, seq_len)
    counter = FlopCounterMode(display=False)
    with counter:
        model(**inputs)
    return int(counter.get_total_flops())


def model_size(model: nn.Module) -> dict[str, Any]:
    params = sum(p.numel() for p in model.parameters())
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    size += sum(b.numel() * b.element_size() for b in model.buffers())
    return {"params": int(params), "size_mb": size / 1e6}
