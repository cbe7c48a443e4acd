"""Export of pruned decoders (nas.decoder) as HF folders that load outside this project.

A uniform shape (the same query heads, key/value groups and FFN width in every layer) is a
stock config: LlamaConfig with num_attention_heads, num_key_value_heads, intermediate_size and
head_dim given explicitly (hidden / heads no longer holds), loaded by AutoModelForCausalLM with
no custom code. Other shapes ship `modeling_nas_llama.py` and need trust_remote_code=True.
A tied lm_head is stored once, as the embedding (transformers ties it again on load).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

REMOTE_CODE = Path(__file__).resolve().parent / "hf_remote" / "modeling_nas_llama.py"


def auto_class(model: Any) -> str:
    return "AutoModelForSequenceClassification" if hasattr(model, "score") else "AutoModelForCausalLM"


def save_decoder_folder(model: Any, tokenizer: Any, out: str | Path, *, context: int) -> dict[str, Any]:
    from safetensors.torch import save_file

    from nas.decoder import is_tied, is_uniform

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    for key in ("nas_spec", "nas_base_shape"):
        cfg.pop(key, None)
    remote = not is_uniform(model.config)
    if remote:
        if cfg.get("model_type") != "llama":
            raise ValueError(f"per-layer shapes of model_type={cfg.get('model_type')!r} cannot be exported yet; "
                             "search with a uniform space (per_layer: false) or a Llama model")
        cls = "NasLlamaForSequenceClassification" if hasattr(model, "score") else "NasLlamaForCausalLM"
        cfg.update(architectures=[cls], auto_map={"AutoConfig": "modeling_nas_llama.NasLlamaConfig",
                                                  auto_class(model): f"modeling_nas_llama.{cls}"})
        shutil.copyfile(REMOTE_CODE, out / "modeling_nas_llama.py")
    else:
        for key in ("nas_heads", "nas_kv_heads", "nas_ffn", "nas_head_size", "auto_map"):
            cfg.pop(key, None)
        cfg["architectures"] = [type(model).__name__]
        (out / "modeling_nas_llama.py").unlink(missing_ok=True)
    cfg.pop("transformers_version", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if not (k == "lm_head.weight" and is_tied(model))}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
    tok_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_path.read_text()) if tok_path.is_file() else {}
    tok_cfg["model_max_length"] = int(context)
    tok_cfg.pop("auto_map", None)
    tok_path.write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n")
    return {"remote_code": remote}


def fix_readme(out: str | Path, model: Any) -> None:
    """The exported README names the Auto class that loads this decoder."""
    path = Path(out) / "README.md"
    if path.is_file():
        text = path.read_text().replace("AutoModelForSequenceClassification", auto_class(model))
        text = text.replace("modeling_nas.py", "modeling_nas_llama.py")
        text = text.replace("it derives head size from hidden size / heads", "every layer has its own query heads, "
                                                                               "key/value groups and FFN width")
        path.write_text(text)
