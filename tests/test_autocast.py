"""Training precision (nas.quality.autocast): bf16 only where the machine has it natively, refused in one line when
forced without it; the LM training loop runs its forward in it and keeps evaluation in fp32."""

from __future__ import annotations

import pytest
import torch

from nas.quality.autocast import resolve_precision, training_autocast
from nas.quality.finetune import TrainSettings
from nas.util import native_bf16


def test_auto_takes_bf16_only_where_detected():
    assert resolve_precision("auto", native=True) == "bf16"
    assert resolve_precision("auto", native=False) == "fp32"
    assert resolve_precision("fp32", native=True) == "fp32"
    assert resolve_precision("auto") == ("bf16" if native_bf16() else "fp32")  # this machine, detected


def test_forced_bf16_without_native_support_is_refused_in_one_line():
    with pytest.raises(ValueError, match="train.precision=bf16: this CPU has no native bf16") as e:
        resolve_precision("bf16", native=False)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="train.precision='fp8' is not known; allowed: auto, fp32, bf16"):
        TrainSettings(precision="fp8").validate()


def test_autocast_runs_matmuls_in_bf16_and_leaves_fp32_alone():
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    with training_autocast("bf16"):
        assert (x @ w).dtype == torch.bfloat16
    with training_autocast("fp32"):
        assert (x @ w).dtype == torch.float32
