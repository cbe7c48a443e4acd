"""llama.cpp's own quantizer (`llama_model_quantize`, through llama-cpp-python) for GGUF files.

A quantized GGUF file is made as llama.cpp's `llama-quantize` makes it: nas.deploy.gguf writes the
model at f32 with gguf-py, and llama.cpp's quantizer turns that file into the asked type, with its
per-tensor rules (K-quant presets give some tensors more bits; rows that a type's blocks do not fit
fall back to a type that fits them, e.g. Q4_K -> Q5_0 on SmolLM2's 576-wide rows).

- **Types** (`QUANT_TYPES`, llama.cpp's preset names, lower case): q8_0, q6_k, q5_k_m, q5_0, q4_k_m,
  iq4_nl, q4_0.
- **Head.** The output layer (and, when tied, the token embedding it shares) gets llama.cpp's choice
  (Q8_0 on SmolLM2 under every preset) unless `head` names a type (`HEAD_TYPES`). A precision with
  its own head type is written `<type>_head_<head>` (e.g. `iq4_nl_head_q5_0`): one name for the
  latency settings, the search's precision axis and the file names.
- **Importance matrix.** The mean of x^2 over calibration tokens for every input column of every
  weight matrix, keyed by the GGUF tensor name (nas.deploy.imatrix computes it). llama.cpp weighs
  each column's rounding error by it. A name that matches no tensor of the file, or a length that is
  not the tensor's row length, is refused (llama.cpp would silently quantize that tensor without it).
"""

from __future__ import annotations

import ctypes
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nas.deploy.llamacpp import llama_cpp_reason, quiet_stderr

# preset -> llama_ftype (llama.h)
QUANT_TYPES = {"q8_0": 7, "q6_k": 18, "q5_k_m": 17, "q5_0": 8, "q4_k_m": 15, "iq4_nl": 25, "q4_0": 2}
# a head (output / tied embedding) type -> ggml_type (ggml.h)
HEAD_TYPES = {"f16": 1, "q8_0": 8, "q6_k": 14, "q5_0": 6, "q4_k": 12, "iq4_nl": 20, "q4_0": 2}
GGML_TYPE_COUNT = 43  # ggml.h in the llama.cpp llama-cpp-python 0.3.36 vendors: ends a list of tensor type overrides
HEAD_SEP = "_head_"
# a file of mixed types chosen by measured sensitivity (nas.deploy.mixed): mix<n>_<low>, the n cheapest tensor groups
# at the low type, every other matrix at q8_0
MIX = re.compile(r"^mix(\d+)_([a-z0-9_]+)$")
MIX_LOW = ("q5_0", "q4_0", "iq4_nl")  # the low types of a mixed file: the ones GPTQ rounds (nas.deploy.gptq)


def parse_mix(precision: str) -> tuple[int, str] | None:
    """(groups at the low type, the low type) of a `mix<n>_<low>` precision, None for any other."""
    m = MIX.match(str(precision))
    return (int(m.group(1)), m.group(2)) if m else None


def split_precision(precision: str) -> tuple[str, str | None]:
    """'iq4_nl_head_q5_0' -> ('iq4_nl', 'q5_0'); 'q8_0' -> ('q8_0', None). No checking (see check_precision)."""
    body, sep, head = precision.partition(HEAD_SEP)
    return body, (head if sep else None)


def join_precision(body: str, head: str | None) -> str:
    return body if head is None else f"{body}{HEAD_SEP}{head}"


def check_precision(precision: str, *, allowed_bodies: tuple[str, ...]) -> tuple[str, str | None]:
    """(body, head) of a GGUF precision name; one-line ValueError naming what is allowed. A mixed file
    (`mix<n>_<low>`) is its own body, without a head type (the head is one of its tensor groups)."""
    mix = parse_mix(str(precision))
    if mix is not None:
        if mix[1] not in MIX_LOW:
            raise ValueError(f"mixed GGUF type {precision!r}: the low type {mix[1]!r} is not one of {', '.join(MIX_LOW)} "
                             "(mix<n>_<low>: the n cheapest tensor groups at the low type, the rest at q8_0)")
        return str(precision), None
    body, head = split_precision(str(precision))
    if body not in allowed_bodies:
        raise ValueError(f"GGUF type {body!r} is not known; allowed: {', '.join(allowed_bodies)} "
                         f"(a head type of its own: <type>{HEAD_SEP}<head>, head one of {', '.join(HEAD_TYPES)})")
    if head is not None:
        if head not in HEAD_TYPES:
            raise ValueError(f"GGUF head type {head!r} (in {precision!r}) is not known; allowed: {', '.join(HEAD_TYPES)}")
        if body not in QUANT_TYPES:
            raise ValueError(f"GGUF precision {precision!r}: a head type goes with a quantized type "
                             f"({', '.join(QUANT_TYPES)}); {body} files keep every matrix at {body}")
    return body, head


def file_tensors(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (GGML type name, shape as numpy reads it: rows first)} of a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, tuple(int(x) for x in reversed(t.shape.tolist()))) for t in reader.tensors}


def check_imatrix(imatrix: Mapping[str, np.ndarray], tensors: Mapping[str, tuple[str, tuple[int, ...]]]) -> None:
    """Every entry names a weight matrix of the file and has one value per input column, all finite and >= 0."""
    for name, values in imatrix.items():
        if name not in tensors:
            close = sorted(t for t in tensors if t.endswith(name.split(".")[-2] + ".weight"))[:3]
            raise ValueError(f"importance matrix entry {name!r} matches no tensor of the GGUF file"
                             + (f" (e.g. {', '.join(close)})" if close else ""))
        shape = tensors[name][1]
        if len(shape) != 2 or np.asarray(values).shape != (shape[-1],):
            raise ValueError(f"importance matrix entry {name!r} has {np.asarray(values).shape} values; the tensor "
                             f"{shape} needs one per input column ({shape[-1]})")
        if not np.all(np.isfinite(values)) or np.any(np.asarray(values) < 0):
            raise ValueError(f"importance matrix entry {name!r} has negative or non-finite values")


def llama_quantize(src: str | Path, dst: str | Path, kind: str, *, head: str | None = None,
                   imatrix: Mapping[str, np.ndarray] | None = None, threads: int = 0, pure: bool = False,
                   overrides: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Quantize the f32 / f16 GGUF file `src` to `dst` with llama.cpp's quantizer at preset `kind`.

    `head`: the output layer's type (HEAD_TYPES; with tied embeddings also the token embedding's);
    None: llama.cpp's choice. `imatrix`: {tensor name: mean x^2 per input column}. `threads` 0: all cores.
    `pure`: every matrix at the preset's own type (no per-tensor mixture; the head still follows `head`).
    `overrides`: {tensor name: type (HEAD_TYPES)}, each tensor at its own type (llama.cpp's tensor type overrides).
    Returns {"seconds", "types": {GGML type: tensors}, "bytes"}."""
    reason = llama_cpp_reason()
    if reason:
        raise RuntimeError(f"quantized GGUF files are written by llama.cpp's quantizer: {reason}")
    if kind not in QUANT_TYPES:
        raise ValueError(f"llama.cpp quantization type {kind!r} is not known; allowed: {', '.join(QUANT_TYPES)}")
    if head is not None and head not in HEAD_TYPES:
        raise ValueError(f"GGUF head type {head!r} is not known; allowed: {', '.join(HEAD_TYPES)}")
    import llama_cpp

    t0 = time.perf_counter()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[kind]
    params.nthread = int(threads)
    params.pure = bool(pure)
    if head is not None:
        params.output_tensor_type = HEAD_TYPES[head]
        params.token_embedding_type = HEAD_TYPES[head]
    keep: list[Any] = []  # the arrays llama.cpp reads must outlive the call
    if imatrix:
        check_imatrix(imatrix, file_tensors(src))
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            data = np.ascontiguousarray(values, dtype=np.float32)
            keep += [data, name.encode()]
            entries[i].name = keep[-1]
            entries[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = data.size
        entries[len(imatrix)].name = None  # the list ends with a NULL name
        params.imatrix = entries
        keep.append(entries)
    if overrides:
        unknown = sorted(set(overrides.values()) - set(HEAD_TYPES))
        if unknown:
            raise ValueError(f"tensor type {unknown[0]!r} is not known; allowed: {', '.join(HEAD_TYPES)}")
        table = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (name, kind_) in enumerate(sorted(overrides.items())):
            keep.append(f"^{re.escape(name)}$".encode())  # one tensor, by its whole name (llama.cpp: regex search)
            table[i].pattern = keep[-1]
            table[i].type = HEAD_TYPES[kind_]
        table[len(overrides)].pattern = None  # the list ends with a NULL pattern
        table[len(overrides)].type = int(getattr(llama_cpp, "GGML_TYPE_COUNT", GGML_TYPE_COUNT))
        params.tt_overrides = table
        keep.append(table)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with quiet_stderr(1, 2):
        status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if status != 0:
        dst.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp's quantizer failed on {Path(src).name} -> {kind} (status {status})")
    types: dict[str, int] = {}
    for t, shape in file_tensors(dst).values():
        if len(shape) == 2:
            types[t] = types.get(t, 0) + 1
    return {"seconds": round(time.perf_counter() - t0, 2), "types": types, "bytes": dst.stat().st_size}
