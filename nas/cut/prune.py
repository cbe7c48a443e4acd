"""Physical structured pruning: a SubnetSpec and importance scores in, a smaller model out.

Each model family cuts its own layers (nas.models.encoder, nas.models.decoder: smaller matrices,
not masks, with the config updated in the same place); this is the one entry point.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nas.models.registry import family_for
from nas.spec import SubnetSpec


def prune_model(base: nn.Module, spec: SubnetSpec, scores: Any = None) -> nn.Module:
    """Return a new model cut down to `spec`, keeping the most important structures.

    `scores` (nas.cut.importance.ImportanceScores) rank the units; None keeps the first k of
    everything (the naive baseline). The base is untouched.
    """
    return family_for(base).prune(base, spec, scores)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
