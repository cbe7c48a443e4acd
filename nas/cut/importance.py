"""Importance scores for the five axes, computed once per (base model, task, settings) and cached.

Criteria (higher = more important, kept first):
- heads, ffn: Fisher information of a mask on each head / neuron (Michel et al. 2019;
  Kwon et al. 2022): per-example gradient of the loss w.r.t. a multiplicative mask of ones,
  squared and summed over examples.
- hidden: Fisher information of one mask per residual channel, shared by every LayerNorm
  output (zeroing a channel there removes it from the whole residual stream, which is what
  hidden-size pruning does). Activation magnitude (Minitron) was tried first and lost to
  keep-first-k on this task (experiments/prune_importance/README.md).
- layers: block influence 1 - cos(layer input, layer output) over real tokens (ShortGPT). The final
  stage keeps an encoder member's bottom layers instead (final.layers, FinalRecipe.member_spec): a
  3-of-6-layer cut keeps layers 0-2 there, 2.3 validation points better after training to convergence
  than the 3-5 block influence keeps, which in turn are better after a 60-step trial
  (experiments/final_stage/layers.json).
- context: positions are kept in order (the first C); there is no choice to score.
`naive` keeps the first k of everything: the baseline the criteria must beat.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from nas.models.registry import base_shape, family_for
from nas.models.slicing import keep_top
from nas.spec import BaseShape
from nas.util import cache_key

log = logging.getLogger(__name__)

METHODS = ("fisher", "naive")
SCORES_VERSION = 3  # bump when a criterion changes: old cache entries are then ignored


@dataclass(frozen=True)
class ImportanceScores:
    layers: torch.Tensor  # (L,)
    heads: torch.Tensor  # (L, H)
    ffn: torch.Tensor  # (L, F)
    hidden: torch.Tensor  # (D,)
    method: str
    # A causal LM's vocabulary ranking on the training text (nas.cut.vocab.rank_vocabulary), for SubnetSpec.vocab:
    # attached by nas.study.prepare, not part of the cached scores (cheap, and independent of the method)
    vocab: Any = None

    def check_fits(self, shape: BaseShape) -> None:
        want = {
            "layers": (shape.num_layers,),
            "heads": (shape.num_layers, shape.num_heads),
            "ffn": (shape.num_layers, shape.ffn_size),
            "hidden": (shape.hidden_size,),
        }
        for name, expected in want.items():
            got = tuple(getattr(self, name).shape)
            if got != expected:
                raise ValueError(f"importance scores '{name}' have shape {got}; the base model needs {expected}")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("layers", "heads", "ffn", "hidden", "method")}  # vocab: not cached

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.to_dict(), tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> ImportanceScores:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return cls(**data)

    def top_layers(self, n: int) -> tuple[int, ...]:
        return tuple(int(i) for i in keep_top(self.layers, n))


def naive_scores(shape: BaseShape) -> ImportanceScores:
    """Scores that make every axis keep its first k units."""

    def descending(n: int) -> torch.Tensor:
        return torch.arange(n, 0, -1, dtype=torch.float32)

    return ImportanceScores(
        layers=descending(shape.num_layers),
        heads=descending(shape.num_heads).repeat(shape.num_layers, 1),
        ffn=descending(shape.ffn_size).repeat(shape.num_layers, 1),
        hidden=descending(shape.hidden_size),
        method="naive",
    )


def compute_scores(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], *, max_batches: int = 16) -> ImportanceScores:
    """Fisher / block-influence scores from a few labelled batches (encoders and decoders alike;
    a decoder's labels are its next tokens or its classes).

    The model is put in eval mode (no dropout); its weights are not changed.
    """

    sites = family_for(model).mask_sites(model)
    shape = base_shape(model.config)
    n_layers = len(sites.layers)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    # Accumulated on the CPU in float64, whatever device the model is on.
    head_fisher = torch.zeros(n_layers, shape.num_heads, dtype=torch.float64)
    ffn_fisher = torch.zeros(n_layers, shape.ffn_size, dtype=torch.float64)
    hidden_fisher = torch.zeros(shape.hidden_size, dtype=torch.float64)
    influence = torch.zeros(n_layers, dtype=torch.float64)
    tokens_seen = 0
    state: dict[str, Any] = {}
    handles = []

    def unit_mask(key: str, units: int, unit_size: int):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]):
            x = args[0]  # (B, T, units * unit_size)
            mask = torch.ones(x.shape[0], units, device=x.device, dtype=x.dtype, requires_grad=True)
            state[key] = mask
            scale = mask.repeat_interleave(unit_size, dim=1)[:, None, :]  # (B, 1, units*unit_size)
            return (x * scale,) + tuple(args[1:])

        return hook

    def residual_mask(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        return out * state["hidden"][:, None, :]  # (B, T, D) * (B, 1, D)

    def influence_hook(idx: int):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            x_in = (args[0] if args else kwargs["hidden_states"]).detach()
            x_out = (out[0] if isinstance(out, tuple) else out).detach()
            cos = nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)  # (B, T)
            influence[idx] += ((1 - cos).clamp_min(0).double() * state["tokens"]).sum().cpu()

        return hook

    for i in range(n_layers):
        handles.append(sites.heads_in[i].register_forward_pre_hook(unit_mask(f"head{i}", shape.num_heads, shape.head_size)))
        handles.append(sites.ffn_in[i].register_forward_pre_hook(unit_mask(f"ffn{i}", shape.ffn_size, 1)))
        handles.append(sites.layers[i].register_forward_hook(influence_hook(i), with_kwargs=True))
    handles.extend(module.register_forward_hook(residual_mask) for module in sites.residual_out)

    try:
        for b, batch in enumerate(batches):
            if b >= max_batches:
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            attn = batch.get("attention_mask")
            if attn is None:
                attn = torch.ones_like(batch["input_ids"])
            state["tokens"] = attn.double()  # (B, T): real tokens count for block influence
            state["hidden"] = torch.ones(attn.shape[0], shape.hidden_size, device=device, requires_grad=True)
            tokens_seen += int(attn.sum())
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                out = model(**batch)
                masks = [state[f"head{i}"] for i in range(n_layers)] + [state[f"ffn{i}"] for i in range(n_layers)]
                # HF's loss is a batch mean: scale back to a per-example sum so Fisher terms do not
                # depend on how examples were grouped into batches.
                grads = torch.autograd.grad(out.loss * attn.shape[0], [*masks, state["hidden"]])
            for i in range(n_layers):  # sums over examples of squared per-example gradients
                head_fisher[i] += (grads[i].double() ** 2).sum(0).cpu()
                ffn_fisher[i] += (grads[n_layers + i].double() ** 2).sum(0).cpu()
            hidden_fisher += (grads[-1].double() ** 2).sum(0).cpu()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)

    if tokens_seen == 0:
        raise ValueError("compute_scores got no batches; pass at least one labelled batch")
    return ImportanceScores(
        layers=(influence / tokens_seen).float(),
        heads=head_fisher.float(),
        ffn=ffn_fisher.float(),
        hidden=hidden_fisher.float(),
        method="fisher",
    )


def cached_scores(
    model: nn.Module,
    batches_fn: Any,
    *,
    method: str,
    cache_dir: str | Path | None,
    key_parts: dict[str, Any],
    max_batches: int = 16,
) -> ImportanceScores:
    """Scores for `method`, read from `cache_dir` when computed before with the same key."""
    if method not in METHODS:
        raise ValueError(f"importance.method={method!r} is not known; allowed: {', '.join(METHODS)}")
    shape = base_shape(model.config)
    if method == "naive":
        return naive_scores(shape)
    if cache_dir is None:
        return compute_scores(model, batches_fn(), max_batches=max_batches)

    key = cache_key(method=method, max_batches=max_batches, version=SCORES_VERSION, **key_parts)
    path = Path(cache_dir) / "importance" / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Several workers on one cache: the first computes, the others wait and read.
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            log.info("importance scores: cached %s", path)
            scores = ImportanceScores.load(path)
            scores.check_fits(shape)
            return scores
        scores = compute_scores(model, batches_fn(), max_batches=max_batches)
        scores.save(path)
        log.info("importance scores: computed and cached at %s", path)
    return scores
