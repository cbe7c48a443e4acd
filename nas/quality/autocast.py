"""Training precision: bf16 autocast where the CPU computes bf16 natively, fp32 elsewhere.

`train.precision`: auto | fp32 | bf16. `torch.autocast("cpu", dtype=torch.bfloat16)` runs the matmuls in bf16
and keeps reductions and losses in fp32; no gradient scaler is needed (bf16 has fp32's range). Only CPUs with
native bf16 (AVX512-BF16 or AMX) gain: on an AVX2-only CPU bf16 matmuls run 44-499x slower (pytorch #146508), so
`auto` takes bf16 only where it is detected at run time, and a forced `bf16` on a CPU without it is refused in
one line before any work. Evaluation always runs in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from nas.util import native_bf16

TRAIN_PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(setting: str, *, native: bool | None = None) -> str:
    """`train.precision` made concrete: fp32 or bf16. One-line ValueError for an unknown value, or for bf16 asked
    on a machine without native bf16 (`native`: the detection's answer, for tests; None detects)."""
    if setting not in TRAIN_PRECISIONS:
        raise ValueError(f"train.precision={setting!r} is not known; allowed: {', '.join(TRAIN_PRECISIONS)}")
    native = native_bf16() if native is None else native
    if setting == "bf16" and not native:
        raise ValueError("train.precision=bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 matmuls "
                         "run tens of times slower than fp32; use train.precision=auto or fp32")
    if setting == "auto":
        return "bf16" if native else "fp32"
    return setting


@contextlib.contextmanager
def training_autocast(precision: str, device: str = "cpu") -> Iterator[None]:
    """The forward and loss of a training step at `precision` (resolve_precision's): bf16 autocast, or as is."""
    if precision == "bf16":
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            yield
    else:
        yield
