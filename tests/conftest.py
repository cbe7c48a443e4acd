"""Shared fixtures: tiny random encoders built from configs (no hub) and the embedded MiniLM."""

from __future__ import annotations

import pytest
import torch

def no_final_stage(overrides) -> list[str]:
    """search.final_k=0 unless the test asks for a final stage: the default trains the front's top-K
    400 steps more after the trials, which the tests of other features do not need to pay for."""
    return [] if any(str(o).startswith("search.final_k=") for o in overrides) else ["search.final_k=0"]


# transformers' own test sizes
TINY = dict(vocab=99, hidden=32, layers=2, heads=4, ffn=37, positions=512, labels=3)


def _tiny_bert(*, layers: int = TINY["layers"], seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=TINY["vocab"],
        hidden_size=TINY["hidden"],
        num_hidden_layers=layers,
        num_attention_heads=TINY["heads"],
        intermediate_size=TINY["ffn"],
        max_position_embeddings=TINY["positions"],
        type_vocab_size=16,
        num_labels=TINY["labels"],
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return BertForSequenceClassification(cfg).eval()


def _tiny_roberta(*, layers: int = TINY["layers"], seed: int = 0):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    cfg = RobertaConfig(
        vocab_size=TINY["vocab"],
        hidden_size=TINY["hidden"],
        num_hidden_layers=layers,
        num_attention_heads=TINY["heads"],
        intermediate_size=TINY["ffn"],
        max_position_embeddings=TINY["positions"] + 2,
        type_vocab_size=1,
        num_labels=TINY["labels"],
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return RobertaForSequenceClassification(cfg).eval()


def _tiny_distilbert(*, layers: int = TINY["layers"], seed: int = 0):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    cfg = DistilBertConfig(
        vocab_size=TINY["vocab"],
        dim=TINY["hidden"],
        n_layers=layers,
        n_heads=TINY["heads"],
        hidden_dim=TINY["ffn"],
        max_position_embeddings=TINY["positions"],
        num_labels=TINY["labels"],
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return DistilBertForSequenceClassification(cfg).eval()


def _padded_batch(*, pad_id: int, batch: int = 3, length: int = 9, vocab: int = TINY["vocab"], seed: int = 1):
    """Random token ids with right padding: row i has length - 2*i real tokens (attention_mask has zeros)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(1, batch):
        mask[i, length - 2 * i :] = 0
    ids = ids.masked_fill(mask == 0, pad_id)
    assert (mask == 0).any()
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def minilm():
    """The embedded all-MiniLM-L6-v2 with a seeded random 2-label head (loaded once per module)."""
    from nas.models import load_base_model

    return load_base_model(None, num_labels=2)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from nas.models import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="session")
def tiny_bert():
    """Factory: tiny random BertForSequenceClassification (vocab 99, hidden 32, 4 heads, FFN 37, 3 labels)."""
    return _tiny_bert


@pytest.fixture(scope="session")
def tiny_roberta():
    """Factory: tiny random RobertaForSequenceClassification (pad_token_id 1, 512 + 2 positions)."""
    return _tiny_roberta


@pytest.fixture(scope="session")
def tiny_distilbert():
    """Factory: tiny random DistilBertForSequenceClassification (dim 32, 4 heads, hidden_dim 37)."""
    return _tiny_distilbert


@pytest.fixture(scope="session")
def padded_batch():
    """Factory: a right-padded batch of random ids {input_ids, attention_mask}."""
    return _padded_batch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's small forwards on one intra-op thread (far faster and steadier on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
