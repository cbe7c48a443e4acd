"""int8 versions of an exported ONNX model, made with onnxruntime's own quantizer.

Two ways, both with int8 weights (per output channel by default):

- `dynamic`: activations are quantized at run time, per tensor, from each input's own range
  (`quantize_dynamic`: MatMulInteger / DynamicQuantizeLinear). No calibration data.
- `static`: activation ranges are fixed once from calibration inputs of the task's training split
  (QDQ format: QuantizeLinear / DequantizeLinear pairs that onnxruntime fuses into int8 kernels).

`keep_fp32` names modules (fnmatch patterns over the torch module path, e.g. `classifier` or
`*.layer.0.*`) whose matrix products stay in fp32: the layers an int8 model is most sensitive to.

Trap (measured): the quantizer fails on the dynamo exporter's graph ("Inferred shape and existing
shape differ in dimension 0") until the graph's value_info is dropped; `quantize_onnx` drops it.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PRECISIONS = ("fp32", "int8")
QUANTIZATIONS = ("dynamic", "static")
ACTIVATIONS = ("uint8", "int8")


@dataclass(frozen=True)
class QuantSettings:
    """How an int8 model is made (latency.quantization, latency.activations, latency.per_channel,
    latency.keep_fp32, latency.calibration)."""

    quantization: str = "dynamic"  # dynamic | static
    activations: str = "uint8"  # uint8 | int8 (static only: onnxruntime's dynamic quantization is uint8 only)
    per_channel: bool = True  # int8 weights with one scale per output channel (false: one per matrix)
    keep_fp32: tuple[str, ...] = ()  # module-path patterns whose matrix products stay fp32
    calibration: int = 64  # static: training inputs that fix the activation ranges

    def validate(self, prefix: str = "latency.") -> QuantSettings:
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"{prefix}quantization={self.quantization!r} is not known; allowed: {', '.join(QUANTIZATIONS)}")
        if self.activations not in ACTIVATIONS:
            raise ValueError(f"{prefix}activations={self.activations!r} is not known; allowed: {', '.join(ACTIVATIONS)}")
        if self.quantization == "dynamic" and self.activations != "uint8":
            raise ValueError(f"{prefix}activations={self.activations} is not supported by onnxruntime's dynamic "
                             f"quantization (uint8 activations only); use {prefix}activations=uint8 or "
                             f"{prefix}quantization=static")
        if not isinstance(self.per_channel, bool):
            raise ValueError(f"{prefix}per_channel={self.per_channel!r} must be true or false")
        if isinstance(self.calibration, bool) or not isinstance(self.calibration, int) or self.calibration < 1:
            raise ValueError(f"{prefix}calibration={self.calibration!r} must be an integer >= 1 (training inputs)")
        for pattern in self.keep_fp32:
            if not isinstance(pattern, str) or not pattern.strip():
                raise ValueError(f"{prefix}keep_fp32 entry {pattern!r} must be a module-path pattern, e.g. classifier")
        return self

    def check_modules(self, model: Any, prefix: str = "latency.") -> None:
        """Every keep_fp32 pattern must name a Linear module of `model` (a typo would silently quantize it).
        `model`: a torch module, or the list of its Linear modules' paths."""
        names = model if isinstance(model, list) else [
            name for name, module in model.named_modules() if type(module).__name__ == "Linear"]
        for pattern in self.keep_fp32:
            if not any(_matches(pattern, name) for name in names):
                examples = ", ".join(names[:3] + names[-1:])
                raise ValueError(f"{prefix}keep_fp32 pattern {pattern!r} matches no Linear module of the model; "
                                 f"module paths look like: {examples}")

    def describe(self) -> str:
        how = (f"{self.quantization} int8 (onnxruntime quantizer, {'per-channel' if self.per_channel else 'per-tensor'}"
               f" int8 weights, {self.activations} activations"
               + (f", calibrated on {self.calibration} training inputs" if self.quantization == "static" else "") + ")")
        if self.keep_fp32:
            how += f", fp32 kept in {', '.join(self.keep_fp32)}"
        return how


def _matches(pattern: str, module: str) -> bool:
    """A pattern names a module, its children (prefix), or any path by fnmatch."""
    return module == pattern or module.startswith(pattern + ".") or fnmatch.fnmatchcase(module, pattern)


def node_module(node: Any) -> str:
    """The torch module path an ONNX node came from: the dynamo exporter records it in the node's
    metadata (pkg.torch.onnx.name_scopes); the TorchScript exporter in the node name (/a/b.0/c/MatMul)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = [s.strip().strip("'\"") for s in prop.value.strip("[]").split(",")]
            scopes = [s for s in scopes if s]
            # the last scope names the op (linear_37) unless it extends the module path before it
            if len(scopes) > 1 and not scopes[-1].startswith(scopes[-2] + "."):
                scopes = scopes[:-1]
            return scopes[-1] if scopes else ""
    parts = [p for p in node.name.split("/") if p]
    return ".".join(parts[:-1])


def fp32_nodes(model: Any, patterns: Sequence[str]) -> list[str]:
    """Names of the nodes the keep_fp32 patterns select in an ONNX graph."""
    if not patterns:
        return []
    return [n.name for n in model.graph.node if any(_matches(p, node_module(n)) for p in patterns)]


class _Feeds:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]], inputs: set[str]) -> None:
        self._it = iter([{k: v for k, v in f.items() if k in inputs} for f in feeds])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_onnx(src: str | Path, dst: str | Path, settings: QuantSettings, *,
                  calibration: Sequence[Mapping[str, np.ndarray]] | None = None) -> Path:
    """Write the int8 version of the fp32 ONNX model `src` to `dst`; returns `dst`.

    `calibration`: feeds (input name -> array) of training inputs, needed by static quantization.
    """
    from onnxruntime.quantization import (  # heavy: only where a model is quantized
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    import onnx  # ~1.2 s to import (its ml_dtypes): not at every command's start

    for noisy in ("root", "onnxruntime"):  # "Please consider to run pre-processing" on every call
        logging.getLogger(noisy).setLevel(logging.ERROR)
    model = onnx.load(str(src))
    del model.graph.value_info[:]  # the trap above
    exclude = fp32_nodes(model, settings.keep_fp32)
    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix="nas_quant_") as tmp:
        clean = os.path.join(tmp, "model.onnx")
        onnx.save(model, clean)
        if settings.quantization == "dynamic":
            quantize_dynamic(clean, str(dst), per_channel=settings.per_channel, weight_type=QuantType.QInt8,
                             nodes_to_exclude=exclude)
        else:
            if not calibration:
                raise ValueError("latency.quantization=static needs calibration inputs from the training split")
            inputs = {i.name for i in model.graph.input}
            activation = QuantType.QUInt8 if settings.activations == "uint8" else QuantType.QInt8
            quantize_static(clean, str(dst), _Feeds(calibration[: settings.calibration], inputs),
                            quant_format=QuantFormat.QDQ, per_channel=settings.per_channel,
                            weight_type=QuantType.QInt8, activation_type=activation,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude,
                            op_types_to_quantize=["MatMul", "Gemm"],
                            extra_options={"ActivationSymmetric": settings.activations == "int8"})
    return dst
