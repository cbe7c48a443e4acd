"""ONNX export of a pruned model: the forward pass with dynamic batch and sequence axes."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch


def export_onnx(model: Any, path: str | Path, *, max_seq: int) -> None:
    """ONNX with dynamic batch and sequence axes (torch.onnx dynamo exporter)."""

    for noisy in ("torch.onnx", "onnx_ir", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    model = model.eval()
    use_cache = getattr(model.config, "use_cache", False)
    model.config.use_cache = False  # a decoder's forward without its KV cache: logits are the only output
    ids = torch.randint(1000 if model.config.vocab_size > 1000 else 1, model.config.vocab_size, (2, min(8, max_seq)))
    mask = torch.ones_like(ids)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=1, max=max_seq)
    try:
        with warnings.catch_warnings():  # the exporter's deprecation chatter, not the caller's warnings
            warnings.filterwarnings("ignore", module=r"torch\.onnx.*")
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            program = torch.onnx.export(
                model, (), kwargs={"input_ids": ids, "attention_mask": mask}, dynamo=True, verbose=False,
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                input_names=["input_ids", "attention_mask"], output_names=["logits"],
            )
    finally:
        model.config.use_cache = use_cache
    program.save(str(path))
