"""Which family a model belongs to. A new family is one module with a Family subclass, listed here."""

from __future__ import annotations

from typing import Any

from torch import nn

from nas.models.deberta import DEBERTA
from nas.models.decoder import DECODER
from nas.models.encoder import ENCODER
from nas.models.family import Family
from nas.models.modernbert import MODERNBERT
from nas.models.qwen3 import QWEN3
from nas.models.smollm3 import SMOLLM3
from nas.spec import BaseShape

FAMILIES: tuple[Family, ...] = (ENCODER, DECODER, MODERNBERT, DEBERTA, QWEN3, SMOLLM3)


def family_for_config(config: Any) -> Family:
    for family in FAMILIES:
        if family.covers(config):
            return family
    known = ", ".join(f"{sorted(f.model_types)} ({f.name}s)" for f in FAMILIES)
    raise ValueError(f"model_type={getattr(config, 'model_type', None)!r} is not supported; supported families: {known}")


def family_for(model: nn.Module) -> Family:
    return family_for_config(model.config)


def base_shape(config: Any) -> BaseShape:
    """The dimensions of a model (from its config) that bound every SubnetSpec."""
    return family_for_config(config).base_shape(config)
