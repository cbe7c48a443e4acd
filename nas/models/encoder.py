"""The encoder family: BERT, RoBERTa (and XLM-RoBERTa), DistilBERT sequence classifiers.

The five axes, physically (every axis slices real weight matrices and updates the config in the
same place):

| axis    | sliced                                                                  |
|---------|-------------------------------------------------------------------------|
| depth   | encoder ModuleList                                                       |
| heads   | Q/K/V output rows, attention-output input columns, head count attribute |
| ffn     | intermediate output rows, FFN-output input columns                      |
| hidden  | embeddings, every Linear's hidden side, every LayerNorm, the task head  |
| context | position-embedding rows and the position / token-type id buffers        |

Code never names a module path itself: it asks an `Arch` (one per model type) for the embeddings,
the encoder layers, the Linear/LayerNorm parts of a layer and the classification head. Another
encoder model type is one more Arch here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.models.family import Family, MaskSites, RecoveryLayer
from nas.models.folder import RemoteCode, one_square_shape, record_cut, save_hf_folder
from nas.models.slicing import head_rows, kept_units, shrink_embedding, shrink_layernorm, shrink_linear
from nas.spec import BaseShape, SubnetSpec


@dataclass(frozen=True)
class LayerParts:
    """The prunable modules of one encoder layer."""

    attention: nn.Module  # holds the head count attribute
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear  # attention output projection: in = heads * head_size, out = hidden
    attn_norm: nn.LayerNorm
    ffn_in: nn.Linear
    ffn_out: nn.Linear
    ffn_norm: nn.LayerNorm


@dataclass(frozen=True)
class EmbeddingParts:
    word: nn.Embedding
    position: nn.Embedding
    token_type: nn.Embedding | None
    norm: nn.LayerNorm
    module: nn.Module  # owner of the position_ids / token_type_ids buffers


@dataclass(frozen=True)
class HeadLinear:
    """A Linear of the task head and which of its sides live in the hidden space."""

    linear: nn.Linear
    in_hidden: bool
    out_hidden: bool


@dataclass(frozen=True)
class Arch:
    """Accessors and config names of one model family."""

    family: str
    backbone_attr: str
    layer_container: Callable[[nn.Module], tuple[nn.Module, str]]  # (owner, attribute name of ModuleList)
    embeddings: Callable[[nn.Module], EmbeddingParts]
    layer_parts: Callable[[nn.Module], LayerParts]
    head: Callable[[nn.Module], list[HeadLinear]]
    heads_attr: str  # attribute on the attention module holding its head count
    cfg_layers: str
    cfg_heads: str
    cfg_hidden: str
    cfg_ffn: str
    position_offset: Callable[[Any], int]  # positions the model reserves before the first token

    def backbone(self, model: nn.Module) -> nn.Module:
        return getattr(model, self.backbone_attr)

    def layers(self, model: nn.Module) -> nn.ModuleList:
        owner, name = self.layer_container(model)
        return getattr(owner, name)

    def base_shape(self, config: Any) -> BaseShape:
        hidden = getattr(config, self.cfg_hidden)
        heads = getattr(config, self.cfg_heads)
        head_size = getattr(config, "nas_head_size", None) or hidden // heads
        return BaseShape(
            num_layers=getattr(config, self.cfg_layers),
            num_heads=heads,
            head_size=head_size,
            hidden_size=hidden,
            ffn_size=getattr(config, self.cfg_ffn),
            max_positions=config.max_position_embeddings - self.position_offset(config),
        )


def _bert_layer(layer: nn.Module) -> LayerParts:
    att = layer.attention
    return LayerParts(
        attention=att.self,
        q=att.self.query,
        k=att.self.key,
        v=att.self.value,
        o=att.output.dense,
        attn_norm=att.output.LayerNorm,
        ffn_in=layer.intermediate.dense,
        ffn_out=layer.output.dense,
        ffn_norm=layer.output.LayerNorm,
    )


def _bert_like_embeddings(backbone_attr: str) -> Callable[[nn.Module], EmbeddingParts]:
    def get(model: nn.Module) -> EmbeddingParts:
        emb = getattr(model, backbone_attr).embeddings
        return EmbeddingParts(
            word=emb.word_embeddings,
            position=emb.position_embeddings,
            token_type=getattr(emb, "token_type_embeddings", None),
            norm=emb.LayerNorm,
            module=emb,
        )

    return get


def _bert_head(model: nn.Module) -> list[HeadLinear]:
    parts = []
    pooler = getattr(model.bert, "pooler", None)
    if pooler is not None:
        parts.append(HeadLinear(pooler.dense, True, True))
    parts.append(HeadLinear(model.classifier, True, False))
    return parts


def _roberta_head(model: nn.Module) -> list[HeadLinear]:
    return [HeadLinear(model.classifier.dense, True, True), HeadLinear(model.classifier.out_proj, True, False)]


def _distilbert_layer(layer: nn.Module) -> LayerParts:
    att = layer.attention
    return LayerParts(
        attention=att,
        q=att.q_lin,
        k=att.k_lin,
        v=att.v_lin,
        o=att.out_lin,
        attn_norm=layer.sa_layer_norm,
        ffn_in=layer.ffn.lin1,
        ffn_out=layer.ffn.lin2,
        ffn_norm=layer.output_layer_norm,
    )


def _distilbert_embeddings(model: nn.Module) -> EmbeddingParts:
    emb = model.distilbert.embeddings
    return EmbeddingParts(
        word=emb.word_embeddings, position=emb.position_embeddings, token_type=None, norm=emb.LayerNorm, module=emb
    )


BERT = Arch(
    family="bert",
    backbone_attr="bert",
    layer_container=lambda m: (m.bert.encoder, "layer"),
    embeddings=_bert_like_embeddings("bert"),
    layer_parts=_bert_layer,
    head=_bert_head,
    heads_attr="num_attention_heads",
    cfg_layers="num_hidden_layers",
    cfg_heads="num_attention_heads",
    cfg_hidden="hidden_size",
    cfg_ffn="intermediate_size",
    position_offset=lambda cfg: 0,
)

ROBERTA = Arch(
    family="roberta",
    backbone_attr="roberta",
    layer_container=lambda m: (m.roberta.encoder, "layer"),
    embeddings=_bert_like_embeddings("roberta"),
    layer_parts=_bert_layer,
    head=_roberta_head,
    heads_attr="num_attention_heads",
    cfg_layers="num_hidden_layers",
    cfg_heads="num_attention_heads",
    cfg_hidden="hidden_size",
    cfg_ffn="intermediate_size",
    # RoBERTa numbers positions from padding_idx + 1.
    position_offset=lambda cfg: cfg.pad_token_id + 1,
)

DISTILBERT = Arch(
    family="distilbert",
    backbone_attr="distilbert",
    layer_container=lambda m: (m.distilbert.transformer, "layer"),
    embeddings=_distilbert_embeddings,
    layer_parts=_distilbert_layer,
    head=lambda m: [HeadLinear(m.pre_classifier, True, True), HeadLinear(m.classifier, True, False)],
    heads_attr="n_heads",
    cfg_layers="n_layers",
    cfg_heads="n_heads",
    cfg_hidden="dim",
    cfg_ffn="hidden_dim",
    position_offset=lambda cfg: 0,
)

ARCHES: dict[str, Arch] = {"bert": BERT, "roberta": ROBERTA, "xlm-roberta": ROBERTA, "distilbert": DISTILBERT}


def arch_for_config(config: Any) -> Arch:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHES:
        raise ValueError(f"model_type={model_type!r} is not an encoder this project knows; encoders: {sorted(ARCHES)}")
    return ARCHES[model_type]


def arch_for(model: nn.Module) -> Arch:
    return arch_for_config(model.config)


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
    record_cut(config, spec, base)


REMOTE_CODE = Path(__file__).resolve().parent / "hf_remote" / "modeling_nas.py"


# family -> what a non-stock shape loads with. The model_type stays the stock one: AutoConfig / AutoTokenizer then
# need no custom code (no trust prompt) and only the model needs trust_remote_code=True (without it, loading fails
# on mismatched shapes).
REMOTE_CLASSES = {
    "bert": RemoteCode(REMOTE_CODE, "NasBertConfig", "NasBertForSequenceClassification", model_type="bert"),
    "roberta": RemoteCode(REMOTE_CODE, "NasRobertaConfig", "NasRobertaForSequenceClassification",
                          model_type="roberta"),
    "distilbert": RemoteCode(REMOTE_CODE, "NasDistilBertConfig", "NasDistilBertForSequenceClassification",
                             model_type="distilbert"),
}
SHAPE_KEYS = ("nas_heads", "nas_ffn", "nas_head_size")  # dropped where a stock config holds the shape


def fits_stock(model: Any) -> bool:
    """True when the stock config expresses the shape: equal heads and FFN in every layer and
    heads * head_size == hidden (stock BERT derives head size = hidden / heads)."""
    return one_square_shape(model.config, getattr(model.config, arch_for(model).cfg_hidden))


def encoder_mask_sites(model: nn.Module) -> MaskSites:
    arch = arch_for(model)
    layers = list(arch.layers(model))
    parts = [arch.layer_parts(layer) for layer in layers]
    return MaskSites(layers=layers, heads_in=[p.o for p in parts], ffn_in=[p.ffn_out for p in parts],
                     residual_out=[arch.embeddings(model).norm, *(n for p in parts for n in (p.attn_norm, p.ffn_norm))])


def prune_encoder(base: nn.Module, spec: SubnetSpec, scores: Any = None) -> nn.Module:
    """A new encoder cut down to `spec` (the base is untouched); `scores=None` keeps the first k."""
    arch = arch_for(base)
    shape = arch.base_shape(base.config)
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


class EncoderFamily(Family):
    name = "encoder"
    model_types = tuple(ARCHES)
    causal_lm = False
    recovery = True  # BERT-style: final.layers=auto keeps the bottom layers
    recovery_methods = ("none", "bias", "rescale", "both")  # nas.cut.recovery: bias compensation knows q/k/v (Arch)
    hidden_distill = True  # output_hidden_states: the embeddings, then each layer's output (no final norm)
    latency_table = True  # drop_layers below: nas.cost.table times the stem and each layer shape
    supernet = True  # nas.quality.supernet slices these layers (Arch)

    def base_shape(self, config: Any) -> BaseShape:
        return arch_for_config(config).base_shape(config)

    def prune(self, base: nn.Module, spec: SubnetSpec, scores: Any = None) -> nn.Module:
        return prune_encoder(base, spec, scores)

    def mask_sites(self, model: nn.Module) -> MaskSites:
        return encoder_mask_sites(model)

    def save_folder(self, model: nn.Module, tokenizer: Any, out: Path, *, context: int) -> dict[str, Any]:
        return save_hf_folder(model, tokenizer, out, context=context, stock=fits_stock(model),
                              remote=REMOTE_CLASSES[arch_for(model).family], shape_keys=SHAPE_KEYS)

    def recovery_layers(self, model: nn.Module) -> list[RecoveryLayer]:
        arch = arch_for(model)
        parts = [arch.layer_parts(layer) for layer in arch.layers(model)]
        return [RecoveryLayer(p.o, p.attn_norm, p.ffn_out, p.ffn_norm) for p in parts]  # post-norm

    def drop_layers(self, model: nn.Module) -> None:
        arch = arch_for(model)
        owner, name = arch.layer_container(model)
        setattr(owner, name, nn.ModuleList())
        setattr(model.config, arch.cfg_layers, 0)

    def loads_with(self, model: nn.Module) -> tuple[str, str, str]:
        return ("AutoModelForSequenceClassification", "modeling_nas.py",
                "it derives head size from hidden size / heads")


ENCODER = EncoderFamily()
