"""Physical structured pruning: a SubnetSpec and importance scores in, a smaller model out.

Each model family cuts its own layers (nas.models.encoder, nas.models.decoder: smaller matrices,
not masks, with the config updated in the same place); this is the one entry point.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nas.cut.vocab import trim_model
from nas.models.registry import family_for
from nas.spec import SubnetSpec


def prune_model(base: nn.Module, spec: SubnetSpec, scores: Any = None) -> nn.Module:
    """Return a new model cut down to `spec`, keeping the most important structures.

    `scores` (nas.cut.importance.ImportanceScores) rank the units; None keeps the first k of
    everything (the naive baseline). The base is untouched. A spec's `vocab` keeps the ids its ranking
    (`scores.vocab`, nas.cut.vocab.VocabRanking: the training text's tokens, most used first) puts first
    (cut_vocabulary, after the structural cut).
    """
    family = family_for(base)
    if spec.vocab is not None and not family.causal_lm:
        raise ValueError(f"SubnetSpec.vocab={spec.vocab}: vocabulary pruning is for causal language models; "
                         f"{family.name} models keep their vocabulary")
    model = family.prune(base, spec, scores)
    return cut_vocabulary(model, spec, scores)


def cut_vocabulary(model: nn.Module, spec: SubnetSpec, scores: Any) -> nn.Module:
    """`model` (cut to `spec`'s structure, its whole vocabulary) with the vocabulary `spec.vocab` keeps, in place; a
    spec without one leaves it whole. Healing (nas.cut.heal) runs between the two cuts: it reads the base's ids."""
    if spec.vocab is None or spec.vocab >= int(model.config.vocab_size):
        return model
    ranking = getattr(scores, "vocab", None)
    if ranking is None:
        raise ValueError(f"SubnetSpec.vocab={spec.vocab} needs the vocabulary ranking of the training text "
                         "(nas.cut.vocab.rank_vocabulary, scores.vocab); these scores have none")
    return trim_model(model, ranking.kept(spec.vocab))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
