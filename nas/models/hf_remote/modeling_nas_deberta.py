"""Modeling code for DeBERTa-v2 / v3 classifiers pruned by nas-prune, shipped inside each exported folder.

A pruned DeBERTa can have its own number of attention heads and FFN neurons in every layer and heads x head size
other than its hidden size; the stock classes build one shape for every layer, an attention output projection of
hidden x hidden, and insist on hidden_size % num_attention_heads == 0. These classes build the stock model, then give each layer its shapes
from `nas_heads`, `nas_ffn` and `nas_head_size`. Load with:

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)

config.json keeps model_type "deberta-v2" (the config and tokenizer load without custom code) and points
`auto_map` here. Self-contained: needs only torch and transformers.
"""

from __future__ import annotations

import copy

from torch import nn
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification


class NasDebertaV2Config(DebertaV2Config):
    model_type = "deberta-v2"

    def __init__(self, nas_heads=None, nas_ffn=None, nas_head_size=None, **kwargs):
        super().__init__(**kwargs)
        self.nas_heads = list(nas_heads or [])
        self.nas_ffn = list(nas_ffn or [])
        self.nas_head_size = nas_head_size


class NasDebertaV2ForSequenceClassification(DebertaV2ForSequenceClassification):
    config_class = NasDebertaV2Config

    def __init__(self, config):
        n = config.num_hidden_layers
        heads = list(config.nas_heads or [config.num_attention_heads] * n)
        ffn = list(config.nas_ffn or [config.intermediate_size] * n)
        if not len(heads) == len(ffn) == n:
            raise ValueError(f"nas_heads ({len(heads)}) and nas_ffn ({len(ffn)}) must list all {n} layers")
        head_size = config.nas_head_size or config.hidden_size // config.num_attention_heads
        build = copy.deepcopy(config)
        # the stock attention insists on hidden % heads == 0; its layers are rebuilt below
        build.num_attention_heads = 1
        super().__init__(build)
        build.num_attention_heads = config.num_attention_heads  # what config.json says again
        hidden = config.hidden_size
        for layer, h, f in zip(self.deberta.encoder.layer, heads, ffn):
            att, inner = layer.attention.self, h * head_size
            for name in ("query_proj", "key_proj", "value_proj", "pos_key_proj", "pos_query_proj"):
                if isinstance(getattr(att, name, None), nn.Linear):
                    setattr(att, name, nn.Linear(hidden, inner))
            att.num_attention_heads, att.attention_head_size, att.all_head_size = h, head_size, inner
            layer.attention.output.dense = nn.Linear(inner, hidden)
            layer.intermediate.dense = nn.Linear(hidden, f)
            layer.output.dense = nn.Linear(f, hidden)
        self.post_init()
