"""The Qwen3 family: Qwen3ForCausalLM / Qwen3ForSequenceClassification (transformers `qwen3`).

Qwen3 is the Llama-family decoder of nas.models.decoder (grouped-query attention, gated FFN, RMSNorm, rotary
positions) with two differences, both kept by every cut:
- an explicit `head_dim` that need not be hidden / heads (Qwen3-0.6B: 16 heads of 128 on a hidden of 1024):
  the cut keeps the base's head size and writes head_dim, so a hidden cut never changes it;
- `q_norm` / `k_norm`: one RMSNorm of head_dim channels on every query / key head, shared by the heads of a
  layer, so a head or group cut keeps them whole (they are not on the hidden side either).

The five axes are cut as for Llama (nas.models.decoder.prune_decoder). Deployment is llama.cpp's own `qwen3`
architecture (nas.deploy.gguf: q_norm / k_norm as attn_q_norm / attn_k_norm, rotate-half rotary as HF has it),
whose graph has one shape for every layer: per-layer head, group or FFN counts and the attention variants
(`deci`'s linear / no attention) are refused in one line, before anything is cut.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nas.models.decoder import DecoderFamily, decoder_params, prune_decoder
from nas.spec import SpecError, SubnetSpec

MODEL_TYPES = ("qwen3",)


def check_uniform(spec: SubnetSpec, arch: str = "qwen3") -> None:
    """Refuse what llama.cpp's `arch` graph cannot build: per-layer counts, attention variants."""
    if spec.attn is not None and set(spec.attn) != {"full"}:
        raise SpecError(f"SubnetSpec.attn={list(spec.attn)}: {arch} layers keep their attention (llama.cpp's {arch} "
                        "graph has no linear / no-attention layers); allowed: full")
    for name in ("heads", "kv_heads", "ffn"):
        values = getattr(spec, name) or ()
        if len(set(values)) > 1:
            raise SpecError(f"SubnetSpec.{name}={list(values)} differs by layer: llama.cpp's {arch} graph has one "
                            f"shape for every layer; allowed: the same {name} in every kept layer "
                            "(space.per_layer: false)")


def qwen3_params(spec: SubnetSpec, *, vocab: int, head_size: int, tied: bool, labels: int | None = None) -> int:
    """Parameters of a Qwen3 model of this shape, in closed form: Llama's plus q_norm and k_norm per layer."""
    return decoder_params(spec, vocab=vocab, head_size=head_size, tied=tied, labels=labels) + 2 * head_size * len(
        spec.layers)


class Qwen3Family(DecoderFamily):
    name = "qwen3"
    model_types = MODEL_TYPES
    gguf_arch = "qwen3"
    per_layer_shapes = False  # check_uniform; the search refuses per-layer spaces up front
    output_biases = False  # llama.cpp's qwen3 graph has no attn_output / ffn_down bias: healing refits without one

    def prune(self, base: nn.Module, spec: SubnetSpec, scores: Any = None) -> nn.Module:
        check_uniform(spec, self.gguf_arch)
        return prune_decoder(base, spec, scores)

    def loads_with(self, model: nn.Module) -> tuple[str, str, str]:
        return (super().loads_with(model)[0], "",
                "every layer of a Qwen3 cut has one shape: a stock Qwen3Config holds it")


QWEN3 = Qwen3Family()
