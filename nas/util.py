"""Small helpers every stage uses: dotted config access, cache keys and folders, quiet libraries."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any


def cfg_get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            return default
    return default if node is None else node


def resolve_cache_dir(cfg: Any) -> Path | None:
    raw = cfg_get(cfg, "cache_dir")
    if raw in (None, "", "none", "null"):
        return None
    path = Path(str(raw)).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def quiet_libraries() -> None:
    """Progress bars and deprecation chatter of the libraries drown the search's own lines."""

    import datasets  # heavy: only to silence it
    from transformers.utils import logging as hf_logging  # heavy (~6 s cold): only where a model is loaded

    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`torch.utils._pytree.*")


def cache_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def native_bf16() -> bool:
    """True when this machine computes bf16 natively (a CUDA device with bf16, or a CPU with AVX512-BF16 / AMX):
    where bf16 matmuls are faster than fp32 (on an AVX2-only CPU they are tens of times slower)."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if callable(check))



# x86-64 features a CPU runtime's speed depends on, each read from any of these /proc/cpuinfo flags: AVX2 (the
# baseline of onnxruntime's and torch's fast kernels), AVX-512, VNNI (int8 dot products: what makes int8 pay most;
# the 512-bit or the AVX-VNNI form), native bf16 (AVX512-BF16 or AMX-BF16: bf16 training only pays with it), AMX tiles
CPU_FEATURES: dict[str, tuple[str, ...]] = {"avx2": ("avx2",), "avx512": ("avx512f",),
                                            "vnni": ("avx512_vnni", "avx_vnni"), "bf16": ("avx512_bf16", "amx_bf16"),
                                            "amx": ("amx_tile",)}
FEATURE_NAMES = {"avx2": "AVX2", "avx512": "AVX-512", "vnni": "VNNI", "bf16": "bf16", "amx": "AMX"}


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """The CPU's model name and features (CPU_FEATURES) from the text of /proc/cpuinfo (its first processor)."""
    name, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name is None:
            name = value.strip()
        elif key == "flags" and flags is None:
            flags = set(value.split())
    features = {f: (None if flags is None else any(flag in flags for flag in names))
                for f, names in CPU_FEATURES.items()}
    return {"cpu": name, **features}


def cpu_features() -> dict[str, Any]:
    """This machine's CPU: model name, cores, architecture and features (True / False; None: not known), read from
    /proc/cpuinfo on Linux; elsewhere from torch's own CPU checks (imported only then)."""
    import os
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            found = parse_cpuinfo(f.read())
    except OSError:
        found = {"cpu": None, **dict.fromkeys(CPU_FEATURES)}
    if found["avx2"] is None and platform.machine().lower() in ("x86_64", "amd64"):
        import torch  # heavy (~2 s cold): only off Linux

        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
        checks = {"vnni": "_is_avx512_vnni_supported", "bf16": "_is_avx512_bf16_supported",
                  "amx": "_is_amx_tile_supported"}
        found.update(avx2=capability in ("AVX2", "AVX512"), avx512=capability == "AVX512",
                     **{f: bool(getattr(torch.cpu, name, lambda: False)()) for f, name in checks.items()})
    return {**found, "cpu": found["cpu"] or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "arch": platform.machine()}


def describe_cpu(info: dict[str, Any]) -> str:
    """One line: 'AMD EPYC, 2 cores (x86_64): AVX2 yes, AVX-512 no, VNNI no, bf16 no, AMX no'."""
    said = {True: "yes", False: "no", None: "unknown"}
    return (f"{info.get('cpu')}, {info.get('cores')} cores ({info.get('arch')}): "
            + ", ".join(f"{FEATURE_NAMES[f]} {said[info.get(f)]}" for f in CPU_FEATURES))
