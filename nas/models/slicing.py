"""Tensor surgery shared by the model families: which units to keep, and slicing a module to them.

Pure functions on modules and index tensors; each family (nas.models.encoder, nas.models.decoder)
uses them to cut its own layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nas.spec import BaseShape, SubnetSpec


def keep_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, in ascending index order (so kept units keep their order).

    Ties break towards the lower index, which makes the all-equal case 'keep the first k'.
    """
    if not 0 < k <= scores.numel():
        raise ValueError(f"keep_top: k={k} is out of range; allowed 1..{scores.numel()}")
    if k == scores.numel():
        return torch.arange(k)
    # stable descending sort: equal scores keep index order
    order = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices
    return torch.sort(order[:k]).values


def shrink_linear(linear: nn.Linear, *, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> None:
    """Keep rows `out_idx` and columns `in_idx` of a Linear, in place."""
    weight = linear.weight.detach()
    if out_idx is not None:
        weight = weight.index_select(0, out_idx.to(weight.device))
    if in_idx is not None:
        weight = weight.index_select(1, in_idx.to(weight.device))
    linear.weight = nn.Parameter(weight.clone(), requires_grad=linear.weight.requires_grad)
    if linear.bias is not None and out_idx is not None:
        bias = linear.bias.detach().index_select(0, out_idx.to(weight.device))
        linear.bias = nn.Parameter(bias.clone(), requires_grad=linear.bias.requires_grad)
    linear.out_features, linear.in_features = weight.shape


def shrink_layernorm(norm: nn.LayerNorm, idx: torch.Tensor) -> None:
    """Keep channels `idx` of a LayerNorm, in place (statistics are then taken over the kept channels)."""
    if norm.weight is not None:
        norm.weight = nn.Parameter(norm.weight.detach().index_select(0, idx).clone())
    if getattr(norm, "bias", None) is not None:
        norm.bias = nn.Parameter(norm.bias.detach().index_select(0, idx).clone())
    norm.normalized_shape = (len(idx),)


def shrink_embedding(emb: nn.Embedding, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    weight = emb.weight.detach()
    if rows is not None:
        weight = weight.index_select(0, rows)
    if cols is not None:
        weight = weight.index_select(1, cols)
    emb.weight = nn.Parameter(weight.clone(), requires_grad=emb.weight.requires_grad)
    emb.num_embeddings, emb.embedding_dim = weight.shape


def head_rows(head_idx: torch.Tensor, head_size: int) -> torch.Tensor:
    """Row indices of Q/K/V (and columns of the output projection) belonging to the kept heads."""
    offsets = torch.arange(head_size)
    return (head_idx[:, None] * head_size + offsets[None, :]).reshape(-1)  # (heads,) x (size,) -> (heads*size,)


@dataclass(frozen=True)
class Kept:
    """Which units of the base a spec keeps: hidden channels, and per kept layer its heads and
    FFN neurons (indices into the base's layer `spec.layers[i]`), each ascending."""

    hidden: torch.Tensor
    heads: tuple[torch.Tensor, ...]
    ffn: tuple[torch.Tensor, ...]


def kept_units(shape: BaseShape, spec: SubnetSpec, scores: Any = None) -> Kept:
    """The units prune_model keeps for `spec`: the top-k by importance (first k when `scores` is None)."""
    return Kept(
        hidden=select_units(scores, "hidden", None, spec.hidden, shape.hidden_size),
        heads=tuple(select_units(scores, "heads", b, h, shape.num_heads) for b, h in zip(spec.layers, spec.heads, strict=True)),
        ffn=tuple(select_units(scores, "ffn", b, f, shape.ffn_size) for b, f in zip(spec.layers, spec.ffn, strict=True)),
    )


def select_units(scores: Any, axis: str, layer: int | None, k: int, total: int) -> torch.Tensor:
    if k == 0:  # none kept (a decoder layer whose attention was removed or replaced)
        return torch.zeros(0, dtype=torch.long)
    if k == total:
        return torch.arange(total)
    if scores is None:
        return torch.arange(k)
    values = getattr(scores, axis)
    return keep_top(values if layer is None else values[layer], k)


def shrink_norm(norm: nn.Module, idx: torch.Tensor) -> None:
    """Keep channels `idx` of an RMSNorm (its mean of squares is then over the kept channels)."""
    norm.weight = nn.Parameter(norm.weight.detach().index_select(0, idx).clone())
    if getattr(norm, "bias", None) is not None:
        norm.bias = nn.Parameter(norm.bias.detach().index_select(0, idx).clone())
    if hasattr(norm, "normalized_shape"):
        norm.normalized_shape = (len(idx),)
