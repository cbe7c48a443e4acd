"""Shared fixtures: the tiny random models, tasks and search setting (built in tests/tiny.py, the one
place that builds them) and the embedded MiniLM."""

from __future__ import annotations

import pytest
import torch

import tiny


@pytest.fixture(scope="module")
def minilm():
    """The embedded all-MiniLM-L6-v2 with a seeded random 2-label head (loaded once per module)."""
    from nas.models.loading import load_base_model

    return load_base_model(None, num_labels=2)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from nas.models.loading import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="session")
def tiny_bert():
    """Factory: tiny random BertForSequenceClassification (vocab 99, hidden 32, 4 heads, FFN 37, 3 labels)."""
    return tiny.bert


@pytest.fixture(scope="session")
def tiny_roberta():
    """Factory: tiny random RobertaForSequenceClassification (pad_token_id 1, 512 + 2 positions)."""
    return tiny.roberta


@pytest.fixture(scope="session")
def tiny_distilbert():
    """Factory: tiny random DistilBertForSequenceClassification (dim 32, 4 heads, hidden_dim 37)."""
    return tiny.distilbert


@pytest.fixture(scope="session")
def tiny_llama():
    """Factory: tiny random Llama with grouped-query attention (hidden 64, 4 query / 2 key-value heads)."""
    return tiny.llama


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    """The tiny search setting: a saved random 2-layer BERT with its tokenizer and a 60-row two-class
    CSV task, {root, model, csv, cache} (with tiny.make_cfg / tiny.cli_args)."""
    return tiny.task_folder(tmp_path_factory.mktemp("tiny_search"))


@pytest.fixture(scope="session")
def padded_batch():
    """Factory: a right-padded batch of random ids {input_ids, attention_mask}."""
    return tiny.padded_batch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's small forwards on one intra-op thread (far faster and steadier on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
