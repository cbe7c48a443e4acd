"""Physical structured pruning: a SubnetSpec and importance scores in, a smaller model out.

Every axis slices real weight matrices (no masks) and updates the config in the same place:

| axis    | sliced                                                                  |
|---------|-------------------------------------------------------------------------|
| depth   | encoder ModuleList                                                       |
| heads   | Q/K/V output rows, attention-output input columns, head count attribute |
| ffn     | intermediate output rows, FFN-output input columns                      |
| hidden  | embeddings, every Linear's hidden side, every LayerNorm, the task head  |
| context | position-embedding rows and the position / token-type id buffers        |
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nas.arch import Arch, arch_for
from nas.spec import BaseShape, SubnetSpec

if TYPE_CHECKING:
    from nas.importance import ImportanceScores


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


def kept_units(shape: BaseShape, spec: SubnetSpec, scores: ImportanceScores | None = None) -> Kept:
    """The units prune_model keeps for `spec`: the top-k by importance (first k when `scores` is None)."""
    return Kept(
        hidden=_select(scores, "hidden", None, spec.hidden, shape.hidden_size),
        heads=tuple(_select(scores, "heads", b, h, shape.num_heads) for b, h in zip(spec.layers, spec.heads, strict=True)),
        ffn=tuple(_select(scores, "ffn", b, f, shape.ffn_size) for b, f in zip(spec.layers, spec.ffn, strict=True)),
    )


def prune_model(base: nn.Module, spec: SubnetSpec, scores: ImportanceScores | None = None) -> nn.Module:
    """Return a new model cut down to `spec`, keeping the most important structures.

    `scores=None` keeps the first k of everything (the naive baseline). The base is untouched.
    """
    from nas.decoder import is_decoder, prune_decoder

    if is_decoder(base):  # Llama family: grouped-query attention, gated FFN, RMSNorm (nas.decoder)
        return prune_decoder(base, spec, scores)
    arch = arch_for(base)
    shape = BaseShape.from_config(base.config)
    spec.validate(shape)
    if scores is not None:
        scores.check_fits(shape)
    model = copy.deepcopy(base)
    kept = kept_units(shape, spec, scores)
    hidden_idx = kept.hidden

    _prune_depth(model, arch, spec)
    for new_pos, (heads, head_idx, ffn_idx) in enumerate(zip(spec.heads, kept.heads, kept.ffn, strict=True)):
        layer = arch.layers(model)[new_pos]
        parts = arch.layer_parts(layer)
        rows = head_rows(head_idx, shape.head_size)
        for lin in (parts.q, parts.k, parts.v):
            shrink_linear(lin, out_idx=rows, in_idx=hidden_idx)
        shrink_linear(parts.o, out_idx=hidden_idx, in_idx=rows)
        shrink_layernorm(parts.attn_norm, hidden_idx)
        shrink_linear(parts.ffn_in, out_idx=ffn_idx, in_idx=hidden_idx)
        shrink_linear(parts.ffn_out, out_idx=hidden_idx, in_idx=ffn_idx)
        shrink_layernorm(parts.ffn_norm, hidden_idx)
        _set_heads(parts.attention, arch, heads, shape.head_size)
        if hasattr(parts.attention, "layer_idx"):
            parts.attention.layer_idx = new_pos

    _prune_embeddings(model, arch, hidden_idx, spec.context + arch.position_offset(model.config))
    for part in arch.head(model):
        shrink_linear(
            part.linear,
            out_idx=hidden_idx if part.out_hidden else None,
            in_idx=hidden_idx if part.in_hidden else None,
        )
    _update_config(model.config, arch, spec, shape)
    return model


def _select(scores: Any, axis: str, layer: int | None, k: int, total: int) -> torch.Tensor:
    if k == total:
        return torch.arange(total)
    if scores is None:
        return torch.arange(k)
    values = getattr(scores, axis)
    return keep_top(values if layer is None else values[layer], k)


def _prune_depth(model: nn.Module, arch: Arch, spec: SubnetSpec) -> None:
    owner, name = arch.layer_container(model)
    layers = getattr(owner, name)
    setattr(owner, name, nn.ModuleList([layers[i] for i in spec.layers]))


def _set_heads(attention: nn.Module, arch: Arch, heads: int, head_size: int) -> None:
    setattr(attention, arch.heads_attr, heads)
    attention.attention_head_size = head_size  # unchanged, but no longer derivable from the config
    if hasattr(attention, "all_head_size"):
        attention.all_head_size = heads * head_size


def _prune_embeddings(model: nn.Module, arch: Arch, hidden_idx: torch.Tensor, positions: int) -> None:
    emb = arch.embeddings(model)
    shrink_embedding(emb.word, cols=hidden_idx)
    shrink_embedding(emb.position, rows=torch.arange(positions), cols=hidden_idx)
    if emb.token_type is not None:
        shrink_embedding(emb.token_type, cols=hidden_idx)
    shrink_layernorm(emb.norm, hidden_idx)
    for buffer in ("position_ids", "token_type_ids"):
        value = getattr(emb.module, buffer, None)
        if isinstance(value, torch.Tensor):
            setattr(emb.module, buffer, value[:, :positions].clone())


def _update_config(config: Any, arch: Arch, spec: SubnetSpec, base: BaseShape) -> None:
    """Config attributes follow the weights. Per-layer counts that differ are kept in nas_* keys."""
    setattr(config, arch.cfg_layers, len(spec.layers))
    setattr(config, arch.cfg_hidden, spec.hidden)
    setattr(config, arch.cfg_heads, max(spec.heads))
    setattr(config, arch.cfg_ffn, max(spec.ffn))
    config.max_position_embeddings = spec.context + arch.position_offset(config)
    config.nas_head_size = base.head_size
    config.nas_heads = list(spec.heads)
    config.nas_ffn = list(spec.ffn)
    config.nas_spec = spec.to_dict()
    config.nas_base_shape = {
        "num_layers": base.num_layers,
        "num_heads": base.num_heads,
        "head_size": base.head_size,
        "hidden_size": base.hidden_size,
        "ffn_size": base.ffn_size,
        "max_positions": base.max_positions,
    }


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
