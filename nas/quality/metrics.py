"""What a model's quality is: accuracy on a classification task (higher is better), perplexity on a
language-modelling task (exp of the mean next-token NLL over the split's blocks; lower is better).
The search's first objective is this quality."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

# The quality objective of each task kind: (trial attribute, direction).
QUALITY = {"accuracy": ("val_accuracy", "maximize"), "perplexity": ("val_perplexity", "minimize")}


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
