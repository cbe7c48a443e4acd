"""What a model's quality is: accuracy on a classification task (higher is better), perplexity on a
language-modelling task (lower is better). The search's first objective is this quality.

A language model's quality is its perplexity per byte of the split's evaluation text (nas.data.text.lm_chunks):
exp(total next-token NLL / UTF-8 bytes), each piece scored after one anchor token (EOS), so that models whose
tokenizers differ (a cut vocabulary) compare on the same text. Beside it, `perplexity` is per token of the base's
tokenizer, exp(NLL / the base's token count of the same text): the usual per-token perplexity for a model with the
base's vocabulary, and for one with a cut vocabulary its NLL of that text spread over the same tokens (both rank
models alike; a 10% band on the first is about a 4x wider one in log terms on the second for English prose, whose
tokens hold ~4 bytes). Bits per byte: log2 of the per-byte perplexity. `perplexity(model, loader)` (token blocks)
stays what training validates on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# The quality objective of each task kind: (trial attribute, direction).
QUALITY = {"accuracy": ("val_accuracy", "maximize"), "perplexity": ("val_byte_perplexity", "minimize")}


def quality_objective(objectives: tuple[str, ...], *, lm: bool) -> tuple[str, ...]:
    """The search's objectives for this task: a language-modelling task's quality is perplexity
    (the default [accuracy, ...] becomes [perplexity, ...]); perplexity on a classification task is refused."""
    if lm and objectives and objectives[0] == "accuracy":
        return ("perplexity", *objectives[1:])
    if not lm and objectives and objectives[0] == "perplexity":
        raise ValueError("search.objectives starts with 'perplexity', a language-modelling objective; this task is "
                         "classification: use accuracy, or data=text / data=shakespeare")
    return objectives


def quality_of(info: Mapping[str, Any], prefix: str = "val") -> tuple[str, float]:
    """(attribute, value) of the quality in a metrics mapping: val_accuracy, val_byte_perplexity (or, in records
    that predate it, val_perplexity)."""
    for name in ("byte_perplexity", "perplexity", "accuracy"):
        if info.get(f"{prefix}_{name}") is not None:
            return f"{prefix}_{name}", float(info[f"{prefix}_{name}"])
    raise KeyError(f"no {prefix}_accuracy or {prefix}_byte_perplexity in {sorted(info)}")


def quality_text(attrs: Mapping[str, Any], prefix: str = "val") -> str:
    name, value = quality_of(attrs, prefix)
    if name.endswith("byte_perplexity"):
        token = attrs.get(f"{prefix}_perplexity")
        return f"ppl/byte {value:.4f}" + (f" (ppl/token {float(token):.2f})" if token is not None else "")
    return f"ppl {value:8.3f}" if name.endswith("perplexity") else f"acc {value:.4f}"


@dataclass(frozen=True)
class TextScore:
    """A language model's total next-token NLL (nats) over a split's evaluation text (nas.data.text.TextChunks):
    `tokens` predicted (its own tokenizer's), the text's `bytes` and the base tokenizer's token count of it."""

    nll: float
    tokens: int
    bytes: int
    base_tokens: int

    @property
    def byte_perplexity(self) -> float:
        return math.exp(self.nll / self.bytes)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / self.bytes / math.log(2)

    @property
    def perplexity(self) -> float:
        """Per token of the base's tokenizer (see the module's text)."""
        return math.exp(self.nll / self.base_tokens)

    def metrics(self, prefix: str, suffix: str = "") -> dict[str, float]:
        """{prefix}_<name>{suffix} for each of SCORE_NAMES."""
        return {f"{prefix}_{name}{suffix}": getattr(self, name) for name in SCORE_NAMES}


SCORE_NAMES = ("byte_perplexity", "perplexity", "bits_per_byte", "tokens")  # TextScore.metrics' keys, in order


def anchor_id(tokenizer: Any) -> int:
    """The token every evaluation piece is scored after: EOS (what training puts between documents), else BOS."""
    for name in ("eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    raise ValueError("per-byte scores need an EOS or BOS token to start each piece from; this tokenizer has neither")


@torch.inference_mode()
def text_score(model: nn.Module, tokenizer: Any, chunks: Any, *, batch_size: int = 8) -> TextScore:
    """`model`'s NLL over `chunks` (nas.data.text.TextChunks), each tokenized by `tokenizer` (the model's own) and
    scored after the anchor token; every token of the text is predicted."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    anchor = anchor_id(tokenizer)
    rows = [[anchor, *ids] for ids in tokenizer(list(chunks.texts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths batched: little padding
    nll, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        group = [rows[i] for i in order[start:start + batch_size]]
        width = max(len(r) for r in group)
        ids = torch.full((len(group), width), anchor, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for i, r in enumerate(group):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        loss = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
        valid = mask[:, 1:].bool()
        nll += float(loss[valid].double().sum())
        count += int(valid.sum())
    model.train(was_training)
    return TextScore(nll=nll, tokens=count, bytes=int(chunks.bytes), base_tokens=int(chunks.base_tokens))


def evaluate(model: nn.Module, loader: Any, *, lm: bool) -> tuple[str, float]:
    """('perplexity', ppl) for a language-modelling loader, ('accuracy', acc) otherwise."""
    if lm:
        return "perplexity", perplexity(model, loader)

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


@torch.inference_mode()
def predict(model: nn.Module, loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) over a loader, in eval mode, on the model's device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    all_logits, all_labels = [], []
    for batch in loader:
        logits = model(**{k: v.to(device) for k, v in model_inputs(batch).items()}).logits
        all_logits.append(logits.float().cpu())
        all_labels.append(batch["labels"].cpu())
    model.train(was_training)
    return torch.cat(all_logits), torch.cat(all_labels)


def accuracy(model: nn.Module, loader: Any) -> float:
    logits, labels = predict(model, loader)
    if labels.numel() == 0:
        raise ValueError("accuracy: the evaluation split has no rows")
    return float((logits.argmax(-1) == labels).float().mean())


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
