"""The SmolLM3 family: SmolLM3ForCausalLM (transformers `smollm3`).

SmolLM3 is the Llama-family decoder of nas.models.decoder with one difference: every fourth layer skips the
rotary embedding (NoPE layers: `no_rope_layers[i] == 0`). The five axes are cut as for Llama
(nas.models.decoder.prune_decoder) and each kept layer keeps its own rotary choice, written back to
`no_rope_layers`. Deployment is llama.cpp's own `smollm3` architecture, which knows no per-layer list: its graph
skips the rotary embedding in layer i exactly when (i + 1) % 4 == 0, with one shape for every layer. So a depth cut
must keep that pattern (drop whole blocks of four layers, or layers from the top), and per-layer counts or
attention variants are refused, each in one line, before anything is cut.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nas.models.decoder import DecoderFamily, prune_decoder
from nas.models.qwen3 import check_uniform
from nas.spec import SpecError, SubnetSpec

MODEL_TYPES = ("smollm3",)
NOPE_STEP = 4  # llama.cpp's smollm3 graph: layer i has no rotary embedding when (i + 1) % 4 == 0


def rope_pattern(config: Any) -> list[int]:
    """Per layer, 1 where it applies the rotary embedding (HF's no_rope_layers)."""
    return [int(x) for x in config.no_rope_layers[: int(config.num_hidden_layers)]]


def check_nope_pattern(config: Any, spec: SubnetSpec) -> None:
    """Refuse a depth cut whose kept layers' rotary choices are not llama.cpp's fixed every-fourth pattern."""
    base = rope_pattern(config)
    kept = [base[i] for i in spec.layers]
    want = [int((i + 1) % NOPE_STEP != 0) for i in range(len(kept))]
    if kept != want:
        raise SpecError(f"SubnetSpec.layers={list(spec.layers)} leaves rotary layers {kept}: llama.cpp's smollm3 graph "
                        f"skips the rotary embedding in every {NOPE_STEP}th layer only ({want}); allowed: depth cuts "
                        f"that keep that pattern (drop whole blocks of {NOPE_STEP} layers, or layers from the top)")


class SmolLM3Family(DecoderFamily):
    name = "smollm3"
    model_types = MODEL_TYPES
    gguf_arch = "smollm3"
    per_layer_shapes = False  # llama.cpp's smollm3 graph has one shape for every layer
    output_biases = False  # nor attn_output / ffn_down biases: healing refits without one

    def prune(self, base: nn.Module, spec: SubnetSpec, scores: Any = None) -> nn.Module:
        check_uniform(spec, self.gguf_arch)
        check_nope_pattern(base.config, spec)
        pattern = rope_pattern(base.config)
        model = prune_decoder(base, spec, scores)
        model.config.no_rope_layers = [pattern[i] for i in spec.layers]
        return model

    def loads_with(self, model: nn.Module) -> tuple[str, str, str]:
        return (super().loads_with(model)[0], "", "every layer of a SmolLM3 cut has one shape: a stock SmolLM3Config "
                "holds it")


SMOLLM3 = SmolLM3Family()
