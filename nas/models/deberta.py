"""The DeBERTa-v2 / v3 family: DebertaV2ForSequenceClassification (transformers `deberta-v2`).

DeBERTa is a post-norm encoder like BERT with disentangled attention: each layer's attention adds
content-to-position and position-to-content scores computed from one relative-position embedding table
(`encoder.rel_embeddings`, log-bucketed in v3) that every layer shares, projected by the layer's own key /
query projections (`share_att_key`, v3) or by its own `pos_key_proj` / `pos_query_proj` (v2). A v3
vocabulary has 128,100 tokens: the embedding table is most of a base model's parameters.

The five axes, physically:

| axis    | sliced                                                                                   |
|---------|------------------------------------------------------------------------------------------|
| depth   | encoder.layer                                                                             |
| heads   | query / key / value (and pos_key / pos_query) output rows, attention-output input columns  |
| ffn     | intermediate output rows, FFN-output input columns                                        |
| hidden  | word embedding columns (embed_proj rows where the embedding is narrower), the shared       |
|         | relative-position table and its LayerNorm, every Linear's hidden side, every LayerNorm,   |
|         | the pooler and classifier                                                                 |
| context | the absolute position table where there is one (v2 `position_biased_input`), the position |
|         | ids and max_position_embeddings; the relative span stays the base's (max_relative_positions |
|         | written out), so relative buckets are the base's                                          |

The vocabulary is not an axis: a hidden cut narrows all 128k rows. Stock DeBERTa builds one shape for every layer
with heads x head size = hidden (its attention output projection is hidden x hidden); other shapes are exported
with `modeling_nas_deberta.py` (trust_remote_code).
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

MODEL_TYPES = ("deberta-v2",)
REMOTE_CODE = Path(__file__).resolve().parent / "hf_remote" / "modeling_nas_deberta.py"
REMOTE = RemoteCode(REMOTE_CODE, "NasDebertaV2Config", "NasDebertaV2ForSequenceClassification")
SHAPE_KEYS = ("nas_heads", "nas_ffn", "nas_head_size")  # dropped where a stock config holds the shape


def deberta_base_shape(config: Any) -> BaseShape:
    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    return BaseShape(
        num_layers=int(config.num_hidden_layers),
        num_heads=heads,
        head_size=int(getattr(config, "attention_head_size", None) or hidden // heads),
        hidden_size=hidden,
        ffn_size=int(config.intermediate_size),
        max_positions=int(config.max_position_embeddings),
    )


def relative_span(config: Any) -> int:
    """The relative distance the attention reads (max_relative_positions; < 1 means max_position_embeddings)."""
    span = int(getattr(config, "max_relative_positions", -1))
    return span if span >= 1 else int(config.max_position_embeddings)


def head_projections(attention: nn.Module) -> list[nn.Linear]:
    """The Linears whose output rows are heads side by side: query, key, value, and v2's position projections."""
    names = ("query_proj", "key_proj", "value_proj", "pos_key_proj", "pos_query_proj")
    return [getattr(attention, n) for n in names if isinstance(getattr(attention, n, None), nn.Linear)]


def prune_deberta(base: nn.Module, spec: SubnetSpec, scores: Any = None) -> nn.Module:
    """A new DeBERTa-v2 cut down to `spec` (the base is untouched); `scores=None` keeps the first k."""
    shape = deberta_base_shape(base.config)
    spec.validate(shape)
    if scores is not None:
        scores.check_fits(shape)
    if getattr(base.deberta.encoder, "conv", None) is not None:
        raise ValueError("conv_kernel_size > 0 (DeBERTa-v2-xlarge's convolution after layer 0) is not pruned; "
                         "allowed: DeBERTa-v2 / v3 models without it (conv_kernel_size=0)")
    model = copy.deepcopy(base)
    body, enc = model.deberta, model.deberta.encoder
    kept = kept_units(shape, spec, scores)
    hidden_idx, hd = kept.hidden, shape.head_size

    enc.layer = nn.ModuleList([enc.layer[i] for i in spec.layers])
    for layer, heads, head_idx, ffn_idx in zip(enc.layer, spec.heads, kept.heads, kept.ffn, strict=True):
        att = layer.attention.self
        rows = head_rows(head_idx, hd)
        for lin in head_projections(att):
            shrink_linear(lin, out_idx=rows, in_idx=hidden_idx)
        att.num_attention_heads = heads
        att.attention_head_size = hd
        att.all_head_size = heads * hd
        shrink_linear(layer.attention.output.dense, out_idx=hidden_idx, in_idx=rows)
        shrink_layernorm(layer.attention.output.LayerNorm, hidden_idx)
        shrink_linear(layer.intermediate.dense, out_idx=ffn_idx, in_idx=hidden_idx)
        shrink_linear(layer.output.dense, out_idx=hidden_idx, in_idx=ffn_idx)
        shrink_layernorm(layer.output.LayerNorm, hidden_idx)

    emb = body.embeddings
    if emb.embed_proj is not None:  # a narrower embedding, projected up: the projection's rows carry the stream
        shrink_linear(emb.embed_proj, out_idx=hidden_idx)
    else:
        shrink_embedding(emb.word_embeddings, cols=hidden_idx)
        for table in (emb.position_embeddings, emb.token_type_embeddings):
            if table is not None:
                shrink_embedding(table, cols=hidden_idx)
    if emb.position_embeddings is not None:
        shrink_embedding(emb.position_embeddings, rows=torch.arange(spec.context))
    emb.position_ids = emb.position_ids[:, :spec.context].clone()
    shrink_layernorm(emb.LayerNorm, hidden_idx)
    if getattr(enc, "rel_embeddings", None) is not None:
        shrink_embedding(enc.rel_embeddings, cols=hidden_idx)
    if isinstance(getattr(enc, "LayerNorm", None), nn.LayerNorm):
        shrink_layernorm(enc.LayerNorm, hidden_idx)
    shrink_linear(model.pooler.dense, out_idx=hidden_idx, in_idx=hidden_idx)
    shrink_linear(model.classifier, in_idx=hidden_idx)
    update_config(model.config, spec, shape)
    return model


def update_config(config: Any, spec: SubnetSpec, base: BaseShape) -> None:
    """Config attributes follow the weights; per-layer counts in nas_* keys."""
    if getattr(config, "relative_attention", False):
        config.max_relative_positions = relative_span(config)  # the base's span, whatever the context becomes
    config.num_hidden_layers = len(spec.layers)
    config.hidden_size = spec.hidden
    config.pooler_hidden_size = spec.hidden
    config.num_attention_heads = max(spec.heads)
    config.intermediate_size = max(spec.ffn)
    config.max_position_embeddings = spec.context
    config.attention_head_size = base.head_size  # stock DeBERTa reads it (hidden / heads no longer holds)
    record_cut(config, spec, base)


def deberta_params(spec: SubnetSpec, config: Any, *, head_size: int) -> int:
    """Parameters of a DeBERTa-v2 classifier of this shape, in closed form (`config`: the base's, for its options)."""
    d, a = spec.hidden, head_size
    e = int(getattr(config, "embedding_size", None) or config.hidden_size)
    e = d if e == int(config.hidden_size) else e  # an embedding as wide as the stream is cut with it
    total = config.vocab_size * e + 2 * d  # word embeddings, LayerNorm
    if getattr(config, "position_biased_input", True):
        total += spec.context * e
    if config.type_vocab_size > 0:
        total += config.type_vocab_size * e
    if e != d:
        total += e * d  # embed_proj
    if getattr(config, "relative_attention", False):
        buckets = int(getattr(config, "position_buckets", -1))
        total += 2 * (buckets if buckets > 0 else relative_span(config)) * d
        if "layer_norm" in str(getattr(config, "norm_rel_ebd", "none")).lower():
            total += 2 * d
    pos_att = list(config.pos_att_type or [])
    own_pos = 0 if getattr(config, "share_att_key", False) or not getattr(config, "relative_attention", False) else (
        ("c2p" in pos_att) + ("p2c" in pos_att))
    for h, f in zip(spec.heads, spec.ffn, strict=True):
        total += (3 + own_pos) * (d * h * a + h * a)  # query, key, value (+ pos_key, pos_query)
        total += h * a * d + d + 2 * d  # attention output, its LayerNorm
        total += d * f + f + f * d + d + 2 * d  # FFN in, out, LayerNorm
    return total + d * d + d + d * config.num_labels + config.num_labels  # pooler, classifier


def fits_stock(config: Any) -> bool:
    """True when a stock DebertaV2Config builds this shape: one shape for every layer and heads x head size =
    hidden (stock DeBERTa reads attention_head_size, but its attention output projection is hidden x hidden)."""
    return one_square_shape(config, config.hidden_size)


def deberta_mask_sites(model: nn.Module) -> MaskSites:
    layers = list(model.deberta.encoder.layer)
    return MaskSites(layers=layers, heads_in=[layer.attention.output.dense for layer in layers],
                     ffn_in=[layer.output.dense for layer in layers],
                     residual_out=[model.deberta.embeddings.LayerNorm,
                                   *(n for layer in layers for n in (layer.attention.output.LayerNorm,
                                                                      layer.output.LayerNorm))])


class PassThrough(nn.Module):
    """A layer that returns its input (the latency table's stem: embeddings and head, no layer's work)."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return hidden_states, None


class DebertaFamily(Family):
    name = "deberta"
    model_types = MODEL_TYPES
    causal_lm = False
    # nas.cut.recovery rescales heads and neurons at the LayerNorm after each sub-layer (post-norm, as BERT); its bias
    # compensation is BERT's only (here query / key also project the shared relative-position table)
    recovery_methods = ("none", "rescale")
    hidden_distill = True  # output_hidden_states: the embeddings, then each layer's output (no final norm)
    latency_table = True  # drop_layers below
    attn_implementation = "eager"  # transformers' DeBERTa has no sdpa path

    def base_shape(self, config: Any) -> BaseShape:
        return deberta_base_shape(config)

    def prune(self, base: nn.Module, spec: SubnetSpec, scores: Any = None) -> nn.Module:
        return prune_deberta(base, spec, scores)

    def mask_sites(self, model: nn.Module) -> MaskSites:
        return deberta_mask_sites(model)

    def save_folder(self, model: nn.Module, tokenizer: Any, out: Path, *, context: int) -> dict[str, Any]:
        return save_hf_folder(model, tokenizer, out, context=context, stock=fits_stock(model.config), remote=REMOTE,
                              shape_keys=SHAPE_KEYS)

    def recovery_layers(self, model: nn.Module) -> list[RecoveryLayer]:
        return [RecoveryLayer(layer.attention.output.dense, layer.attention.output.LayerNorm, layer.output.dense,
                              layer.output.LayerNorm) for layer in model.deberta.encoder.layer]

    def drop_layers(self, model: nn.Module) -> None:
        # DeBERTa's encoder returns its last layer's output: one pass-through layer stands for none
        model.deberta.encoder.layer = nn.ModuleList([PassThrough()])
        model.config.num_hidden_layers = 0
        for key in ("nas_heads", "nas_ffn"):
            if getattr(model.config, key, None) is not None:
                setattr(model.config, key, [])

    def loads_with(self, model: nn.Module) -> tuple[str, str, str]:
        return ("AutoModelForSequenceClassification", REMOTE_CODE.name,
                "stock DeBERTa needs one shape in every layer and heads x head size = hidden size")


DEBERTA = DebertaFamily()
