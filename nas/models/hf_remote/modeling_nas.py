"""Modeling code for encoders pruned by nas-prune, shipped inside each exported folder.

A pruned model can have a different number of attention heads and FFN neurons in every
layer, and a head size that is not hidden_size / num_attention_heads; the stock classes
derive both from the config. These classes build the stock model and then give each layer
its own shapes from `nas_heads`, `nas_ffn` and `nas_head_size`. Load with:

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    AutoTokenizer.from_pretrained(folder)  # the stock tokenizer; no custom code involved

config.json keeps the stock `model_type` ("bert", "roberta", "distilbert") and points
`auto_map` here. So the config and tokenizer resolve to stock classes without custom code
(no trust prompt), while the model needs trust_remote_code=True: without it the stock class
is built and loading stops with a size-mismatch error instead of giving a wrong model.

Self-contained: needs only torch and transformers.
"""

from __future__ import annotations

from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)


def _resize_layers(layers, heads, ffn, head_size, hidden, family):
    """Give every layer its own head count and FFN width (fresh weights: loading fills them)."""
    if not (len(layers) == len(heads) == len(ffn)):
        raise ValueError(f"nas_heads ({len(heads)}) and nas_ffn ({len(ffn)}) must list all {len(layers)} layers")
    for layer, h, f in zip(layers, heads, ffn):
        inner = h * head_size
        if family == "distilbert":
            att = layer.attention
            att.q_lin, att.k_lin, att.v_lin = (nn.Linear(hidden, inner) for _ in range(3))
            att.out_lin = nn.Linear(inner, hidden)
            att.n_heads = h
            layer.ffn.lin1 = nn.Linear(hidden, f)
            layer.ffn.lin2 = nn.Linear(f, hidden)
        else:
            att = layer.attention.self
            att.query, att.key, att.value = (nn.Linear(hidden, inner) for _ in range(3))
            att.num_attention_heads = h
            att.all_head_size = inner
            layer.attention.output.dense = nn.Linear(inner, hidden)
            layer.intermediate.dense = nn.Linear(hidden, f)
            layer.output.dense = nn.Linear(f, hidden)
        att.attention_head_size = head_size
        att.scaling = head_size**-0.5


class _NasConfigMixin:
    def __init__(self, nas_heads=None, nas_ffn=None, nas_head_size=None, **kwargs):
        super().__init__(**kwargs)
        self.nas_heads = list(nas_heads or [])
        self.nas_ffn = list(nas_ffn or [])
        self.nas_head_size = nas_head_size


# The stock model_type on purpose: config.json says "bert" (etc.) so that AutoConfig and
# AutoTokenizer resolve without custom code, and loading this class raises no type warning.
class NasBertConfig(_NasConfigMixin, BertConfig):
    model_type = "bert"


class NasRobertaConfig(_NasConfigMixin, RobertaConfig):
    model_type = "roberta"


class NasDistilBertConfig(_NasConfigMixin, DistilBertConfig):
    model_type = "distilbert"


def _build(model, base_cls, config, family, heads_attr, hidden_attr, layers_of):
    """Run the stock constructor of `base_cls` on `model`, then resize every layer to its own shape."""
    # The stock constructor insists on hidden % heads == 0: build with one head, then resize.
    real_heads = getattr(config, heads_attr)
    setattr(config, heads_attr, 1)
    try:
        base_cls.__init__(model, config)
    finally:
        setattr(config, heads_attr, real_heads)
    _resize_layers(layers_of(model), config.nas_heads, config.nas_ffn, config.nas_head_size,
                   getattr(config, hidden_attr), family)
    model.post_init()


class NasBertForSequenceClassification(BertForSequenceClassification):
    config_class = NasBertConfig

    def __init__(self, config):
        _build(self, BertForSequenceClassification, config, "bert", "num_attention_heads", "hidden_size",
               lambda m: m.bert.encoder.layer)


class NasRobertaForSequenceClassification(RobertaForSequenceClassification):
    config_class = NasRobertaConfig

    def __init__(self, config):
        _build(self, RobertaForSequenceClassification, config, "roberta", "num_attention_heads", "hidden_size",
               lambda m: m.roberta.encoder.layer)


class NasDistilBertForSequenceClassification(DistilBertForSequenceClassification):
    config_class = NasDistilBertConfig

    def __init__(self, config):
        _build(self, DistilBertForSequenceClassification, config, "distilbert", "n_heads", "dim",
               lambda m: m.distilbert.transformer.layer)
