"""Where the prunable pieces live in each supported Hugging Face encoder family.

Pruning code never names a module path itself: it asks an `Arch` for the embeddings, the
encoder layers, the Linear/LayerNorm parts of a layer and the classification head. Adding a
family means adding one Arch here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from nas.spec import BaseShape


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
        from nas.decoder import DECODER_TYPES

        raise ValueError(f"model_type={model_type!r} is not supported; supported families: "
                         f"{sorted(ARCHES)} (encoders), {list(DECODER_TYPES)} (decoders)")
    return ARCHES[model_type]


def arch_for(model: nn.Module) -> Arch:
    return arch_for_config(model.config)
