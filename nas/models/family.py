"""What a model family is: the one interface the generic stages ask instead of testing which family
a model belongs to.

A family says, in one place, for every model type it covers:
- where the layers, heads, key/value groups, FFN neurons and hidden channels live, as the base's
  dimensions (`base_shape`);
- how to cut a base to a SubnetSpec, physically (`prune`);
- where importance masks go (`mask_sites`, read by nas.cut.importance);
- which training-free recovery and hidden-state distillation apply (`recovery_methods`: the prune.recovery
  methods of nas.cut.recovery, fitted at `recovery_layers`; `hidden_distill`: train.distill=hidden pairs its
  hidden states; `heals`: nas.cut.heal's layer-by-layer refits of a decoder's output projections);
- whether it is a causal LM that can model text (`causal_lm`);
- how to make it a classifier (`classifier_config`) and how to export it as an HF folder that loads
  outside this project (`save_folder`, written by nas.models.folder; `loads_with`).

Families live in nas.models.encoder (BERT, RoBERTa, DistilBERT), nas.models.decoder (Llama, Qwen2,
Mistral), nas.models.modernbert, nas.models.deberta (DeBERTa-v2/v3), nas.models.qwen3 (Qwen3) and nas.models.smollm3
(SmolLM3);
nas.models.registry finds the family of a model. A new family is a new module with
a Family subclass, added to the registry's list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from nas.spec import BaseShape, SubnetSpec


@dataclass(frozen=True)
class MaskSites:
    """Where compute_scores puts its masks in one model family.

    heads_in / ffn_in: per layer, the module whose input holds the heads side by side (attention
    output projection) / the FFN neurons (FFN output projection); a mask on each unit multiplies
    that input. residual_out: the modules whose outputs carry the residual stream's channels (an
    encoder's LayerNorms; a pre-norm decoder's embedding, o_proj and down_proj, where the stream
    is written): one mask per channel, shared by all of them, acts as removing the channel
    everywhere. layers: the blocks whose input and output give block influence.
    """

    layers: Sequence[nn.Module]
    heads_in: Sequence[nn.Module]
    ffn_in: Sequence[nn.Module]
    residual_out: Sequence[nn.Module]


@dataclass(frozen=True)
class RecoveryLayer:
    """One layer as nas.cut.recovery fits it: each sub-layer's output projection (its input: the heads side by side,
    head size columns each / the FFN neurons) and the module whose input is the residual stream plus that output
    (a post-norm encoder's LayerNorm after the sub-layer; in a pre-norm model the next sub-layer's norm, or the final
    norm after the last layer)."""

    attention_out: nn.Linear
    attention_sum: nn.Module
    ffn_out: nn.Linear
    ffn_sum: nn.Module


class Family:
    """The interface; every method is answered by each family module."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    causal_lm: bool = False  # can model text (a language-modelling task needs one)
    recovery: bool = False  # BERT-style encoder: final.layers=auto trains on the bottom layers (nas.study.final)
    recovery_methods: tuple[str, ...] = ("none",)  # prune.recovery methods nas.cut.recovery applies (recovery_layers)
    hidden_distill: bool = False  # train.distill=hidden: its output_hidden_states pair with the teacher's by layer
    heals: bool = False  # nas.cut.heal (closed-form healing of decoder cuts) knows its layers
    latency_table: bool = False  # drop_layers is answered: nas.cost.table can time its stem and layers
    supernet: bool = False  # nas.quality.supernet (search.estimator=supernet) knows its layers
    attn_implementation: str | None = None  # the attention it must run with (None: model.attn_implementation)
    output_biases: bool = True  # its llama.cpp graph loads attn_output / ffn_down biases (nas.cut.heal may fit them)
    per_layer_shapes: bool = True  # layers may differ (per-layer spaces, attention variants); False: one shape for all
    gguf_arch: str | None = None  # llama.cpp's architecture for a uniform shape (nas.deploy.gguf); None: no GGUF

    def covers(self, config: Any) -> bool:
        return getattr(config, "model_type", None) in self.model_types

    def base_shape(self, config: Any) -> BaseShape:
        """The dimensions of an (unpruned or pruned) model of this family that bound every spec."""
        raise NotImplementedError

    def prune(self, base: nn.Module, spec: SubnetSpec, scores: Any = None) -> nn.Module:
        """A new model cut down to `spec` (the base is untouched), keeping the units `scores`
        (nas.cut.importance.ImportanceScores) rank highest; None keeps the first k of everything."""
        raise NotImplementedError

    def mask_sites(self, model: nn.Module) -> MaskSites:
        raise NotImplementedError

    def classifier_config(self, config: Any, pad_token_id: Callable[[], int | None]) -> None:
        """Make `config` fit a sequence-classification head of this family (in place)."""

    def save_folder(self, model: nn.Module, tokenizer: Any, out: Path, *, context: int) -> dict[str, Any]:
        """An HF folder that loads outside this project; returns {'remote_code': bool}."""
        raise NotImplementedError

    def recovery_layers(self, model: nn.Module) -> list[RecoveryLayer]:
        """Per layer of `model`, where nas.cut.recovery fits it (families whose recovery_methods go beyond none)."""
        raise NotImplementedError(f"prune.recovery knows no {self.name} layers; {self.name} models allow: none")

    def drop_layers(self, model: nn.Module) -> None:
        """Remove every transformer layer of `model` in place (embeddings and head stay): the stem the
        latency table (nas.cost.table) times on its own. Families without it cannot use the table."""
        raise NotImplementedError(f"the latency table does not know {self.name} models; use latency.model=measured")

    def loads_with(self, model: nn.Module) -> tuple[str, str]:
        """(transformers Auto class, the custom modeling file a non-stock shape ships) for the README."""
        raise NotImplementedError
