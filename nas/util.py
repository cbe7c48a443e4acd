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

