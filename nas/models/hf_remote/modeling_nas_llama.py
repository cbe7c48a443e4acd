"""Modeling code for Llama-family decoders pruned by nas-prune, shipped inside exported folders
whose layers differ in shape (a uniform shape loads with the stock classes and no custom code).

Every layer may keep its own number of query heads, key/value groups and gated-FFN neurons, and its
attention may be replaced by one linear map of the normed stream (`linear`) or removed (`none`).
These classes build the stock model from the config and then give each layer its own shapes
from `nas_heads`, `nas_kv_heads`, `nas_ffn` and `nas_attn` (head size: `head_dim`). Load with:

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    AutoTokenizer.from_pretrained(folder)  # the stock tokenizer

config.json keeps model_type "llama" and points `auto_map` here. Self-contained: needs only
torch and transformers.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification


class NasLlamaConfig(LlamaConfig):
    model_type = "llama"

    def __init__(self, nas_heads=None, nas_kv_heads=None, nas_ffn=None, nas_head_size=None, nas_attn=None, **kwargs):
        super().__init__(**kwargs)
        self.nas_heads = list(nas_heads or [])
        self.nas_kv_heads = list(nas_kv_heads or [])
        self.nas_ffn = list(nas_ffn or [])
        self.nas_head_size = nas_head_size
        self.nas_attn = list(nas_attn) if nas_attn else None


class LinearAttention(nn.Module):
    """The attention replaced by one linear map of the normed stream (no bias)."""

    kind = "linear"

    def __init__(self, hidden, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, hidden_states, *args, **kwargs):
        return self.o_proj(hidden_states), None


class NoAttention(nn.Module):
    """No attention: the layer is its FFN alone."""

    kind = "none"

    def __init__(self, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


def _resize_layers(model, config):
    layers = model.model.layers
    heads, kv, ffn = config.nas_heads, config.nas_kv_heads, config.nas_ffn
    if not (len(layers) == len(heads) == len(kv) == len(ffn)):
        raise ValueError(f"nas_heads, nas_kv_heads and nas_ffn must list all {len(layers)} layers")
    d, a, bias = config.hidden_size, config.head_dim, getattr(config, "attention_bias", False)
    mlp_bias = getattr(config, "mlp_bias", False)
    attn = config.nas_attn or ["full"] * len(layers)
    for i, (layer, h, g, f, kind) in enumerate(zip(layers, heads, kv, ffn, attn)):
        att, mlp = layer.self_attn, layer.mlp
        mlp.gate_proj = nn.Linear(d, f, bias=mlp_bias)
        mlp.up_proj = nn.Linear(d, f, bias=mlp_bias)
        mlp.down_proj = nn.Linear(f, d, bias=mlp_bias)
        if kind == "linear":
            layer.self_attn = LinearAttention(d, i)
            continue
        if kind == "none":
            layer.self_attn = NoAttention(i)
            layer.input_layernorm = nn.Identity()
            continue
        att.q_proj = nn.Linear(d, h * a, bias=bias)
        att.k_proj = nn.Linear(d, g * a, bias=bias)
        att.v_proj = nn.Linear(d, g * a, bias=bias)
        att.o_proj = nn.Linear(h * a, d, bias=bias)
        att.num_key_value_groups = h // g  # query heads per key/value group in this layer


class NasLlamaForCausalLM(LlamaForCausalLM):
    config_class = NasLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        _resize_layers(self, config)
        self.post_init()


class NasLlamaForSequenceClassification(LlamaForSequenceClassification):
    config_class = NasLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        _resize_layers(self, config)
        self.post_init()
