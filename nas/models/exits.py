"""What early exits need to know about a classifier's layers: how to run its embeddings, a range of its layers and
its own classification head apart, so that a model can be cut into consecutive segments (nas.deploy.exits) and read
after any layer (nas.quality.exits).

The BERT-style encoders (BERT, RoBERTa, XLM-RoBERTa) are known: their layers take (hidden, attention mask) and give
the next hidden states, and their heads read the first token. `exit_reason` names why another model has no exits.
Segments run one input at a time with its real tokens only, so no attention mask is passed: a mask of ones, which
the single graph receives, adds nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nas.models.encoder import arch_for

EXIT_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")


def exit_reason(config: Any) -> str | None:
    """Why a model with this config cannot carry early exits (None: it can)."""
    model_type = getattr(config, "model_type", None)
    if model_type in EXIT_MODEL_TYPES:
        return None
    return (f"early exits know the BERT-style encoders ({', '.join(EXIT_MODEL_TYPES)}); this model is "
            f"model_type={model_type!r}")


def layer_count(model: nn.Module) -> int:
    """Encoder layers the model has (a cut keeps fewer than its base)."""
    return len(arch_for(model).layers(model))


def hidden_size(model: nn.Module) -> int:
    return int(arch_for(model).embeddings(model).word.embedding_dim)


def embed(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """(batch, tokens, hidden): the embeddings' output for real tokens (token type 0, positions from the start)."""
    return arch_for(model).backbone(model).embeddings(input_ids=input_ids)


def run_layers(model: nn.Module, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """The model's layers start..stop-1 (0-based positions among the layers it keeps) over `hidden`, unmasked."""
    for layer in list(arch_for(model).layers(model))[start:stop]:
        hidden = layer(hidden, None)
    return hidden


def classify(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's own head over its last hidden states: logits (batch, labels)."""
    arch = arch_for(model)
    if arch.family == "bert":
        return model.classifier(model.dropout(model.bert.pooler(hidden)))
    return model.classifier(hidden)  # RoBERTa's head reads the first token itself
