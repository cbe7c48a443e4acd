"""Modeling code for ModernBERT classifiers pruned by nas-prune, shipped inside each exported folder.

A pruned ModernBERT can have its own number of attention heads and FFN neurons in every layer, a head
size that is not hidden_size / num_attention_heads, and an attn_norm in its first layer (when the base's
layer 0 was cut away); the stock classes derive all three from the config. These classes build the stock
model, then give each layer its shapes from `nas_heads`, `nas_ffn`, `nas_head_size` and `nas_attn_norm`.
Load with:

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)

config.json keeps model_type "modernbert" (the config and tokenizer load without custom code) and points
`auto_map` here. Self-contained: needs only torch and transformers.
"""

from __future__ import annotations

import copy

from torch import nn
from transformers import ModernBertConfig, ModernBertForSequenceClassification


class NasModernBertConfig(ModernBertConfig):
    model_type = "modernbert"

    def __init__(self, nas_heads=None, nas_ffn=None, nas_head_size=None, nas_attn_norm=None, **kwargs):
        super().__init__(**kwargs)
        self.nas_heads = list(nas_heads or [])
        self.nas_ffn = list(nas_ffn or [])
        self.nas_head_size = nas_head_size
        self.nas_attn_norm = list(nas_attn_norm or [])


class NasModernBertForSequenceClassification(ModernBertForSequenceClassification):
    config_class = NasModernBertConfig

    def __init__(self, config):
        n = config.num_hidden_layers
        heads = list(config.nas_heads or [config.num_attention_heads] * n)
        ffn = list(config.nas_ffn or [config.intermediate_size] * n)
        norms = list(config.nas_attn_norm or [i > 0 for i in range(n)])
        if not len(heads) == len(ffn) == len(norms) == n:
            raise ValueError(f"nas_heads ({len(heads)}), nas_ffn ({len(ffn)}) and nas_attn_norm ({len(norms)}) "
                             f"must list all {n} layers")
        head_size = config.nas_head_size or config.hidden_size // config.num_attention_heads
        build = copy.deepcopy(config)
        # the stock attention insists on hidden % heads == 0; its layers are rebuilt below
        build.num_attention_heads = 1
        build.head_dim = head_size  # the rotary embedding's size
        super().__init__(build)
        hidden = config.hidden_size
        for layer, h, f, norm in zip(self.model.layers, heads, ffn, norms):
            att, mlp = layer.attn, layer.mlp
            att.Wqkv = nn.Linear(hidden, 3 * h * head_size, bias=config.attention_bias)
            att.Wo = nn.Linear(h * head_size, hidden, bias=config.attention_bias)
            att.head_dim = head_size
            mlp.Wi = nn.Linear(hidden, 2 * f, bias=config.mlp_bias)
            mlp.Wo = nn.Linear(f, hidden, bias=config.mlp_bias)
            layer.attn_norm = (nn.LayerNorm(hidden, eps=config.norm_eps, bias=config.norm_bias) if norm
                               else nn.Identity())
        build.num_attention_heads = config.num_attention_heads  # what config.json says again (forward never reads it)
        self.post_init()
