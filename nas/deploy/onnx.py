"""ONNX export of a pruned model (dynamic batch and sequence axes), its onnxruntime session, and
the accuracy of a model as it runs there."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch


def export_onnx(model: Any, path: str | Path, *, max_seq: int, fast: bool = False) -> None:
    """ONNX with dynamic batch and sequence axes.

    The default is the torch.onnx dynamo exporter (what nas.export ships: 4-12 s for MiniLM). `fast`
    uses the TorchScript exporter (~0.1-1 s; deprecated by torch, same graph speed here, measured
    in experiments/latency_table) for the latency table's many small calibration models, and falls
    back to dynamo where it fails.
    """

    for noisy in ("torch.onnx", "onnx_ir", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    model = model.eval()
    use_cache = getattr(model.config, "use_cache", False)
    model.config.use_cache = False  # a decoder's forward without its KV cache: logits are the only output
    vocab = int(model.config.vocab_size)
    ids = torch.randint(1000 if vocab > 1000 else 1, vocab, (2, min(8, max_seq)))
    mask = torch.ones_like(ids)
    try:
        with warnings.catch_warnings():  # the exporter's deprecation chatter, not the caller's warnings
            warnings.filterwarnings("ignore", module=r"torch\.onnx.*")
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            if fast:
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                try:
                    with torch.no_grad():
                        torch.onnx.export(model, (ids, mask), str(path), dynamo=False, opset_version=17,
                                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                                        "attention_mask": {0: "batch", 1: "seq"}})
                    return
                except Exception:  # noqa: BLE001 - a model the TorchScript exporter cannot trace: use dynamo
                    pass
            batch = torch.export.Dim("batch", min=1, max=4096)
            seq = torch.export.Dim("seq", min=1, max=max_seq)
            program = torch.onnx.export(
                model, (), kwargs={"input_ids": ids, "attention_mask": mask}, dynamo=True, verbose=False,
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                input_names=["input_ids", "attention_mask"], output_names=["logits"],
            )
            program.save(str(path))
    finally:
        model.config.use_cache = use_cache


def onnx_session(path: str | Path, *, threads: int) -> Any:
    """An onnxruntime CPU session with `threads` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort  # heavy: only where ONNX models run

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def session_correct(session: Any, batches: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """Per input of a loader's batches ({input_ids, attention_mask, labels}), 1 where a classifier's ONNX session
    predicts its label, scored as the model is served: one input at a time, its real tokens only. Batched, an int8
    model would score another accuracy: dynamic quantization takes one activation scale per tensor, so padding rows
    move it (the same int8 model: 0.8155 batched in the final stage, 0.8111 batched in an export, 0.8133 one review
    at a time)."""
    wanted = {i.name for i in session.get_inputs()}
    out: list[int] = []
    for batch in batches:
        arrays = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in batch.items()}
        mask = arrays.get("attention_mask", np.ones_like(arrays["input_ids"])).astype(bool)
        for i, label in enumerate(arrays["labels"]):
            feed = {k: arrays[k][i][mask[i]][None].astype(np.int64) for k in wanted if k in arrays}  # (1, tokens)
            out.append(int(session.run(None, feed)[0][0].argmax() == label))
    return np.asarray(out, dtype=np.int8)


def session_accuracy(session: Any, batches: Iterable[Mapping[str, Any]]) -> float:
    """Accuracy of a classifier's ONNX session as served (session_correct: one input at a time)."""
    correct = session_correct(session, batches)
    if correct.size == 0:
        raise ValueError("no inputs to evaluate the ONNX session on")
    return float(correct.mean())
