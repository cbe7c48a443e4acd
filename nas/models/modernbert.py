"""The ModernBERT family: ModernBertForSequenceClassification (transformers `modernbert`).

ModernBERT is a pre-norm encoder: token embeddings and a LayerNorm (no position table: rotary
positions), then layers of `attn_norm -> attention (fused Wqkv, rotary, global or sliding-window) ->
mlp_norm -> GeGLU FFN (Wi holds the input and gate halves)`, a final norm and a head (dense, norm,
classifier). Layer 0 has no attn_norm (the embedding norm comes right before it).

The five axes, physically:

| axis    | sliced                                                                             |
|---------|------------------------------------------------------------------------------------|
| depth   | model.layers, with each kept layer's attention type (global / sliding) in layer_types |
| heads   | the kept heads' rows in each third (q, k, v) of Wqkv, Wo's input columns              |
| ffn     | the kept neurons' rows in both halves (input, gate) of Wi, Wo's input columns         |
| hidden  | tok_embeddings columns, every Linear's hidden side, every LayerNorm, the head        |
| context | max_position_embeddings (rotary: no table to cut)                                   |

The head size stays the base's (Wqkv is viewed as (3, heads, head_size)); stock ModernBERT derives it as
hidden / heads, so a shape the stock config cannot hold (per-layer counts, heads x head size != hidden, or
a first kept layer that has an attn_norm) is exported with `modeling_nas_modernbert.py` (trust_remote_code).

Importance (nas.cut.importance): head / neuron masks at Wo's inputs; one residual-channel mask where the
stream is written (the embedding norm's output, every attention and FFN Wo's output), as in a pre-norm
decoder; block influence per layer.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.models.family import Family, MaskSites, RecoveryLayer
from nas.models.folder import RemoteCode, one_square_shape, record_cut, save_hf_folder
from nas.models.slicing import head_rows, kept_units, shrink_embedding, shrink_layernorm, shrink_linear
from nas.spec import BaseShape, SubnetSpec

MODEL_TYPES = ("modernbert",)
REMOTE_CODE = Path(__file__).resolve().parent / "hf_remote" / "modeling_nas_modernbert.py"
REMOTE = RemoteCode(REMOTE_CODE, "NasModernBertConfig", "NasModernBertForSequenceClassification")
SHAPE_KEYS = ("nas_heads", "nas_ffn", "nas_head_size", "nas_attn_norm")  # dropped where a stock config holds the shape


def modernbert_base_shape(config: Any) -> BaseShape:
    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    return BaseShape(
        num_layers=int(config.num_hidden_layers),
        num_heads=heads,
        head_size=int(getattr(config, "nas_head_size", None) or hidden // heads),
        hidden_size=hidden,
        ffn_size=int(config.intermediate_size),
        max_positions=int(config.max_position_embeddings),
    )


def qkv_rows(head_idx: torch.Tensor, head_size: int, heads: int) -> torch.Tensor:
    """Rows of the fused Wqkv (q, k, v stacked, each `heads` x `head_size`) that belong to the kept heads."""
    rows = head_rows(head_idx, head_size)
    return torch.cat([rows + part * heads * head_size for part in range(3)])  # q rows, then k, then v


def glu_rows(ffn_idx: torch.Tensor, ffn: int) -> torch.Tensor:
    """Rows of Wi (input half, then gate half, each `ffn` wide) that belong to the kept neurons."""
    return torch.cat([ffn_idx, ffn_idx + ffn])


def prune_modernbert(base: nn.Module, spec: SubnetSpec, scores: Any = None) -> nn.Module:
    """A new ModernBERT cut down to `spec` (the base is untouched); `scores=None` keeps the first k."""
    shape = modernbert_base_shape(base.config)
    spec.validate(shape)
    if scores is not None:
        scores.check_fits(shape)
    # per layer of the (possibly pruned) base: its heads and FFN width, whether it has an attn_norm
    base_heads = list(getattr(base.config, "nas_heads", None) or [shape.num_heads] * shape.num_layers)
    base_ffn = list(getattr(base.config, "nas_ffn", None) or [shape.ffn_size] * shape.num_layers)
    model = copy.deepcopy(base)
    body = model.model
    kept = kept_units(shape, spec, scores)
    hidden_idx, hd = kept.hidden, shape.head_size

    body.layers = nn.ModuleList([body.layers[i] for i in spec.layers])
    for pos, (old, head_idx, ffn_idx) in enumerate(zip(spec.layers, kept.heads, kept.ffn, strict=True)):
        layer = body.layers[pos]
        att, mlp = layer.attn, layer.mlp
        shrink_linear(att.Wqkv, out_idx=qkv_rows(head_idx, hd, base_heads[old]), in_idx=hidden_idx)
        shrink_linear(att.Wo, out_idx=hidden_idx, in_idx=head_rows(head_idx, hd))
        att.head_dim = hd
        att.layer_idx = layer.layer_idx = pos
        if isinstance(layer.attn_norm, nn.LayerNorm):
            shrink_layernorm(layer.attn_norm, hidden_idx)
        shrink_linear(mlp.Wi, out_idx=glu_rows(ffn_idx, base_ffn[old]), in_idx=hidden_idx)
        shrink_linear(mlp.Wo, out_idx=hidden_idx, in_idx=ffn_idx)
        shrink_layernorm(layer.mlp_norm, hidden_idx)

    shrink_embedding(body.embeddings.tok_embeddings, cols=hidden_idx)
    shrink_layernorm(body.embeddings.norm, hidden_idx)
    shrink_layernorm(body.final_norm, hidden_idx)
    shrink_linear(model.head.dense, out_idx=hidden_idx, in_idx=hidden_idx)
    shrink_layernorm(model.head.norm, hidden_idx)
    shrink_linear(model.classifier, in_idx=hidden_idx)
    update_config(model.config, spec, shape, attn_norm=[isinstance(layer.attn_norm, nn.LayerNorm)
                                                         for layer in body.layers])
    return model


def update_config(config: Any, spec: SubnetSpec, base: BaseShape, *, attn_norm: list[bool]) -> None:
    """Config attributes follow the weights; per-layer counts (and which layers have an attn_norm) in nas_* keys."""
    layer_types = list(config.layer_types)
    config.layer_types = [layer_types[i] for i in spec.layers]
    config.num_hidden_layers = len(spec.layers)
    config.hidden_size = spec.hidden
    config.num_attention_heads = max(spec.heads)
    config.intermediate_size = max(spec.ffn)
    config.max_position_embeddings = spec.context
    config.head_dim = base.head_size  # the rotary embedding reads it; hidden / heads no longer holds
    record_cut(config, spec, base, attn_norm=attn_norm)


def modernbert_params(spec: SubnetSpec, *, vocab: int, head_size: int, labels: int, attn_norm: list[bool],
                      norm_bias: bool = False, attention_bias: bool = False, mlp_bias: bool = False,
                      classifier_bias: bool = False) -> int:
    """Parameters of a ModernBERT classifier of this shape, in closed form."""
    d, a = spec.hidden, head_size
    norm = d * (2 if norm_bias else 1)
    total = vocab * d + norm  # tok_embeddings, embedding norm
    for h, f, has_norm in zip(spec.heads, spec.ffn, attn_norm, strict=True):
        total += 3 * d * h * a + h * a * d + (3 * h * a + d if attention_bias else 0)  # Wqkv, Wo
        total += 2 * d * f + f * d + (2 * f + d if mlp_bias else 0)  # Wi (two halves), Wo
        total += norm * (2 if has_norm else 1)  # attn_norm (not in layer 0), mlp_norm
    total += norm  # final_norm
    total += d * d + (d if classifier_bias else 0) + norm  # head.dense, head.norm
    return total + d * labels + labels  # classifier


def fits_stock(config: Any) -> bool:
    """True when a stock ModernBertConfig builds this shape: the same heads and FFN in every layer, heads x
    head size = hidden, and an attn_norm in every layer but the first."""
    if getattr(config, "nas_heads", None) is None:
        return True
    norms = list(config.nas_attn_norm)
    return one_square_shape(config, config.hidden_size) and norms == [False] + [True] * (len(norms) - 1)


def modernbert_mask_sites(model: nn.Module) -> MaskSites:
    body = model.model
    layers = list(body.layers)
    return MaskSites(layers=layers, heads_in=[layer.attn.Wo for layer in layers],
                     ffn_in=[layer.mlp.Wo for layer in layers],
                     residual_out=[body.embeddings.norm,
                                   *(m for layer in layers for m in (layer.attn.Wo, layer.mlp.Wo))])


class ModernBertFamily(Family):
    name = "modernbert"
    model_types = MODEL_TYPES
    causal_lm = False
    # nas.cut.recovery rescales heads and neurons where the stream is read next (pre-norm); no bias methods: their
    # hidden-channel compensation knows BERT's separate q/k/v only, and a stock config may have no Wo bias for a shift
    recovery_methods = ("none", "rescale")
    # output_hidden_states ends with the final norm's output, not the last layer's: a cut's last pair would compare a
    # normalised state with a raw one
    hidden_distill = False
    latency_table = True  # drop_layers below

    def base_shape(self, config: Any) -> BaseShape:
        return modernbert_base_shape(config)

    def prune(self, base: nn.Module, spec: SubnetSpec, scores: Any = None) -> nn.Module:
        return prune_modernbert(base, spec, scores)

    def mask_sites(self, model: nn.Module) -> MaskSites:
        return modernbert_mask_sites(model)

    def save_folder(self, model: nn.Module, tokenizer: Any, out: Path, *, context: int) -> dict[str, Any]:
        return save_hf_folder(model, tokenizer, out, context=context, stock=fits_stock(model.config), remote=REMOTE,
                              shape_keys=SHAPE_KEYS)

    def recovery_layers(self, model: nn.Module) -> list[RecoveryLayer]:
        body = model.model
        layers = list(body.layers)
        # pre-norm: the stream after the attention enters mlp_norm; after the FFN, the next layer's attn_norm (layer 0,
        # whose attn_norm is an Identity, is never a next layer) or the final norm
        after = [layer.attn_norm for layer in layers[1:]] + [body.final_norm]
        return [RecoveryLayer(layer.attn.Wo, layer.mlp_norm, layer.mlp.Wo, nxt) for layer, nxt in zip(layers, after)]

    def drop_layers(self, model: nn.Module) -> None:
        model.model.layers = nn.ModuleList()
        model.config.num_hidden_layers = 0
        model.config.layer_types = []
        for key in ("nas_heads", "nas_ffn", "nas_attn_norm"):
            if getattr(model.config, key, None) is not None:
                setattr(model.config, key, [])

    def loads_with(self, model: nn.Module) -> tuple[str, str, str]:
        return ("AutoModelForSequenceClassification", REMOTE_CODE.name,
                "it derives head size from hidden size / heads and gives every layer but the first an attn_norm")


MODERNBERT = ModernBertFamily()
