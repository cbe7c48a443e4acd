"""The exported HF folder, written one way for every family (each family gives its own answers).

A cut records, on its config, its per-layer counts (`nas_heads`, `nas_ffn`, `nas_head_size`, and what else the
family keeps per layer) and, for this project only, the spec and the base's dimensions (`nas_spec`,
`nas_base_shape`: `record_cut`). An export (`save_hf_folder`) drops the project's record; where a stock config
of the family holds the shape it drops the per-layer keys too and names the stock class, and otherwise it ships
the family's modeling file (nas/models/hf_remote/) and points `auto_map` at its classes. Then the state dict and
the tokenizer, which truncates at the kept context.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from nas.spec import BaseShape, SubnetSpec

PROJECT_KEYS = ("nas_spec", "nas_base_shape")  # the cut's record for this project; never exported


@dataclass(frozen=True)
class RemoteCode:
    """The modeling file an export ships when no stock config holds the shape, and the classes config.json names."""

    file: Path  # in nas/models/hf_remote/; copied under its own name
    config_class: str
    model_class: str
    auto_class: str = "AutoModelForSequenceClassification"
    model_type: str | None = None  # written to config.json (None: the config's own)

    def auto_map(self) -> dict[str, str]:
        module = self.file.stem
        return {"AutoConfig": f"{module}.{self.config_class}", self.auto_class: f"{module}.{self.model_class}"}


def record_cut(config: Any, spec: SubnetSpec, base: BaseShape, **per_layer: list[Any] | None) -> None:
    """Write a cut's per-layer counts (`nas_heads`, `nas_ffn`, the base's `nas_head_size`, and each `per_layer`
    list as nas_<name>) and, for this project, the spec and the base's dimensions on `config`."""
    config.nas_head_size = base.head_size
    config.nas_heads = list(spec.heads)
    config.nas_ffn = list(spec.ffn)
    for name, values in per_layer.items():
        setattr(config, f"nas_{name}", None if values is None else list(values))
    config.nas_spec = spec.to_dict()
    dims = {"num_layers": base.num_layers, "num_heads": base.num_heads, "head_size": base.head_size,
            "hidden_size": base.hidden_size, "ffn_size": base.ffn_size, "max_positions": base.max_positions}
    if base.num_kv_heads is not None:
        dims["num_kv_heads"] = base.num_kv_heads
    config.nas_base_shape = dims


def one_square_shape(config: Any, hidden: int) -> bool:
    """True when a cut (or an uncut model) has the same heads and FFN width in every layer and heads x head size =
    `hidden`: what stock encoder configs derive (head size = hidden / heads, one shape for all layers)."""
    heads = getattr(config, "nas_heads", None)
    if heads is None:
        return True
    return len(set(heads)) == 1 and len(set(config.nas_ffn)) == 1 and heads[0] * config.nas_head_size == hidden


def save_hf_folder(model: nn.Module, tokenizer: Any, out: str | Path, *, context: int, stock: bool,
                   remote: RemoteCode, shape_keys: Sequence[str], state: Mapping[str, torch.Tensor] | None = None,
                   config_extra: Mapping[str, Any] | None = None, name_tokenizer: bool = True) -> dict[str, Any]:
    """An HF folder that loads outside this project; returns {'remote_code': bool}.

    stock: a stock config of the family holds the shape (the per-layer `shape_keys` are dropped, `remote.file`
    removed from `out`); otherwise `remote.file` is shipped and config.json names its classes. state: the tensors
    to save (None: the model's state dict); config_extra: keys set on config.json last; name_tokenizer: write the
    tokenizer's class into tokenizer_config.json (where it has none) so that AutoTokenizer picks it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    for key in PROJECT_KEYS:
        cfg.pop(key, None)
    code = out / remote.file.name
    if stock:
        for key in (*shape_keys, "auto_map"):
            cfg.pop(key, None)
        cfg["architectures"] = [type(model).__name__]
        code.unlink(missing_ok=True)
    else:
        if remote.model_type is not None:
            cfg["model_type"] = remote.model_type
        cfg.update(architectures=[remote.model_class], auto_map=remote.auto_map())
        shutil.copyfile(remote.file, code)
    cfg.pop("transformers_version", None)
    cfg.update(config_extra or {})
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if state is None:
        state = model.state_dict()
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    save_tokenizer(tokenizer, out, context=context, name_class=name_tokenizer)
    return {"remote_code": not stock}


def save_tokenizer(tokenizer: Any, out: Path, *, context: int, name_class: bool = True) -> None:
    """The tokenizer, truncating at the kept context (model_max_length) and, with `name_class`, naming its class
    for AutoTokenizer; the caller's tokenizer object is left as it was."""
    tokenizer.save_pretrained(out)
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    cfg["model_max_length"] = int(context)
    if name_class:
        cfg.setdefault("tokenizer_class", type(tokenizer).__name__)
    cfg.pop("auto_map", None)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
