"""Modeling code for Llama-family decoders pruned by nas-prune, shipped inside exported folders
whose layers differ in shape (a uniform shape loads with the stock classes and no custom code).

Every layer may keep its own number of query heads, key/value groups and gated-FFN neurons.
These classes build the stock model from the config and then give each layer its own shapes
from `nas_heads`, `nas_kv_heads` and `nas_ffn` (head size: `head_dim`). Load with:

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    AutoTokenizer.from_pretrained(folder)  # the stock tokenizer

config.json keeps model_type "llama" and points `auto_map` here. Self-contained: needs only
torch and transformers.
"""

from __future__ import annotations

from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification


class NasLlamaConfig(LlamaConfig):
    model_type = "llama"

    def __init__(self, nas_heads=None, nas_kv_heads=None, nas_ffn=None, nas_head_size=None, **kwargs):
        super().__init__(**kwargs)
        self.nas_heads = list(nas_heads or [])
        self.nas_kv_heads = list(nas_kv_heads or [])
        self.nas_ffn = list(nas_ffn or [])
        self.nas_head_size = nas_head_size


def _resize_layers(model, config):
    layers = model.model.layers
    heads, kv, ffn = config.nas_heads, config.nas_kv_heads, config.nas_ffn
    if not (len(layers) == len(heads) == len(kv) == len(ffn)):
        raise ValueError(f"nas_heads, nas_kv_heads and nas_ffn must list all {len(layers)} layers")
    d, a, bias = config.hidden_size, config.head_dim, getattr(config, "attention_bias", False)
    mlp_bias = getattr(config, "mlp_bias", False)
    for layer, h, g, f in zip(layers, heads, kv, ffn):
        att, mlp = layer.self_attn, layer.mlp
        att.q_proj = nn.Linear(d, h * a, bias=bias)
        att.k_proj = nn.Linear(d, g * a, bias=bias)
        att.v_proj = nn.Linear(d, g * a, bias=bias)
        att.o_proj = nn.Linear(h * a, d, bias=bias)
        att.num_key_value_groups = h // g  # query heads per key/value group in this layer
        mlp.gate_proj = nn.Linear(d, f, bias=mlp_bias)
        mlp.up_proj = nn.Linear(d, f, bias=mlp_bias)
        mlp.down_proj = nn.Linear(f, d, bias=mlp_bias)


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
