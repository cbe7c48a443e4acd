"""GGUF export of Llama-family causal LMs, for llama.cpp (and everything built on it).

A pruned decoder is written as one GGUF file at f32, f16, q8_0 or q4_0:

- **Architecture.** `llama` when every layer has the same query heads, key/value heads and FFN
  width; `deci` (the Nemotron-NAS architecture, which llama.cpp builds layer by layer from arrays
  of per-layer counts) when they differ. `arch=auto` picks between the two.
- **Rotary layout.** HF Llama rotates channel j of a head with channel j + d/2; llama.cpp's
  `llama` / `deci` graphs rotate adjacent pairs (2j, 2j + 1). The rows of q_proj and k_proj are
  reordered inside each head accordingly (the usual convert step), so the logits are the same.
- **Types.** Norms stay f32. q8_0 / q4_0 quantize every weight matrix in blocks of 32 values
  along its rows (gguf-py's reference quantizer, the one llama.cpp's own converter uses); at q4_0
  the token embedding (which is also the output layer when tied) is kept at q8_0, as llama.cpp's
  quantizer keeps its output layer above 4 bits. A matrix whose rows are not whole 32-value blocks
  (a pruned width that is not a multiple of 32) stays f16, as llama.cpp's own quantizer does; a
  warning says so (spaces with `align: 32` avoid it).
- **Tokenizer.** A model whose base came from a GGUF file carries that file's `tokenizer.ggml.*`
  fields unchanged (the vocabulary is never pruned). Otherwise the HF fast tokenizer's byte-level
  BPE (tokens, merges, special tokens) is written; llama.cpp also needs the name of the
  pre-tokenizer regex, which is found by tokenizing sample texts with each known name and keeping
  the first that gives the HF ids (`check_tokenizer` verifies the written file the same way).

Refused in one line before anything is written: an encoder or a classifier, an unknown type or
architecture, per-layer shapes asked for as `llama` (llama.cpp's llama graph has one shape for every
layer), an odd head size (rotary pairs), rope scaling other than the default, a non-Llama family.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.deploy.llamacpp import llama_cpp_available, load_gguf
from nas.models.decoder import backbone, is_tied
from nas.models.registry import family_for_config

log = logging.getLogger(__name__)
logging.getLogger("gguf").setLevel(logging.WARNING)  # gguf-py's writer logs every file it writes at INFO

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
GGUF_ARCHES = ("auto", "llama", "deci")
BLOCK = 32  # values per q8_0 / q4_0 block, along a weight's rows
LLAMA_TYPES = ("llama", "mistral")  # HF model types llama.cpp builds as `llama` / `deci` (no biases)
# llama.cpp's names for pre-tokenizer regexes, tried in this order when a tokenizer has no GGUF origin
PRE_TOKENIZERS = ("smollm", "gpt-2", "llama-bpe", "qwen2", "default", "starcoder", "refact", "falcon",
                  "deepseek-llm", "deepseek-coder", "olmo", "tekken", "gpt-4o")


# ---------------------------------------------------------------------------- what is exported


def layer_shapes(config: Any) -> dict[str, list[int]]:
    """Per-layer query heads, key/value heads and FFN widths of a (possibly pruned) Llama config."""
    n = int(config.num_hidden_layers)
    heads = list(getattr(config, "nas_heads", None) or [int(config.num_attention_heads)] * n)
    kv = list(getattr(config, "nas_kv_heads", None) or [int(getattr(config, "num_key_value_heads", None)
                                                               or config.num_attention_heads)] * n)
    ffn = list(getattr(config, "nas_ffn", None) or [int(config.intermediate_size)] * n)
    return {"heads": [int(h) for h in heads], "kv_heads": [int(k) for k in kv], "ffn": [int(f) for f in ffn]}


def head_size(config: Any) -> int:
    return int(getattr(config, "nas_head_size", None) or getattr(config, "head_dim", None)
               or config.hidden_size // config.num_attention_heads)


def rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else getattr(config, "rope_theta", 10000.0))


def rope_type(config: Any) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return str(params.get("rope_type") or params.get("type") or "default") if isinstance(params, dict) else "default"


def choose_arch(config: Any, arch: str) -> str:
    shapes = layer_shapes(config)
    uniform = all(len(set(v)) == 1 for v in shapes.values())
    if arch == "auto":
        return "llama" if uniform else "deci"
    if arch == "llama" and not uniform:
        raise ValueError(f"gguf arch=llama needs every layer the same shape, and these differ (query heads "
                         f"{shapes['heads']}, key/value heads {shapes['kv_heads']}, FFN {shapes['ffn']}); "
                         "use arch=deci or auto (llama.cpp builds deci layer by layer)")
    return arch


def check_request(model: Any, types: Sequence[str], arch: str = "auto") -> str:
    """Refuse in one line what cannot become a GGUF llama.cpp builds; returns the architecture to write."""
    config = model.config if hasattr(model, "config") else model
    kind = getattr(config, "model_type", None)
    try:
        decoder = bool(family_for_config(config).causal_lm)
    except ValueError:  # a family this project does not prune
        decoder = False
    if not decoder:
        raise ValueError(f"GGUF export is for decoder LMs (Llama family) that llama.cpp runs; this model is "
                         f"{kind!r}, an encoder: export it as ONNX (onnx=true) instead")
    if kind not in LLAMA_TYPES:
        raise ValueError(f"GGUF export writes the llama / deci architectures (no attention biases); model_type="
                         f"{kind!r} is not exported yet (allowed: {', '.join(LLAMA_TYPES)})")
    if hasattr(model, "score") or getattr(config, "architectures", None) and any(
            "SequenceClassification" in a for a in config.architectures):
        raise ValueError("GGUF export is for causal LMs: this decoder is a sequence classifier (its `score` head "
                         "has no place in llama.cpp); export it as ONNX instead")
    for t in types:
        if t not in GGUF_TYPES:
            raise ValueError(f"gguf type {t!r} is not known; allowed: {', '.join(GGUF_TYPES)}")
    if arch not in GGUF_ARCHES:
        raise ValueError(f"gguf arch {arch!r} is not known; allowed: {', '.join(GGUF_ARCHES)}")
    if rope_type(config) != "default":
        raise ValueError(f"rope scaling {rope_type(config)!r} is not exported to GGUF yet (only the default rope)")
    hd = head_size(config)
    if hd % 2:
        raise ValueError(f"head size {hd} is odd: llama.cpp's rotary embedding needs an even head size")
    return choose_arch(config, arch)


# ---------------------------------------------------------------------------- tensors


def rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q_proj / k_proj rows from HF's rotate-half order to llama.cpp's adjacent pairs, head by head."""
    out, d_in = weight.shape
    d = out // n_heads
    # (heads, 2, d/2, in): half k of pair j -> (heads, d/2, 2, in): row 2j + k
    return weight.reshape(n_heads, 2, d // 2, d_in).transpose(1, 2).reshape(out, d_in)


def gguf_tensors(model: Any) -> list[tuple[str, torch.Tensor]]:
    """(GGUF name, weight) of every tensor llama.cpp's llama / deci graphs read, in file order."""
    body = backbone(model)
    shapes = layer_shapes(model.config)
    out = [("token_embd.weight", body.embed_tokens.weight)]
    for i, layer in enumerate(body.layers):
        att, mlp = layer.self_attn, layer.mlp
        out += [
            (f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight),
            (f"blk.{i}.attn_q.weight", rope_rows(att.q_proj.weight, shapes["heads"][i])),
            (f"blk.{i}.attn_k.weight", rope_rows(att.k_proj.weight, shapes["kv_heads"][i])),
            (f"blk.{i}.attn_v.weight", att.v_proj.weight),
            (f"blk.{i}.attn_output.weight", att.o_proj.weight),
            (f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight),
            (f"blk.{i}.ffn_gate.weight", mlp.gate_proj.weight),
            (f"blk.{i}.ffn_up.weight", mlp.up_proj.weight),
            (f"blk.{i}.ffn_down.weight", mlp.down_proj.weight),
        ]
    out.append(("output_norm.weight", body.norm.weight))
    if not is_tied(model):
        out.append(("output.weight", model.lm_head.weight))
    return out


def encode(name: str, weight: torch.Tensor, kind: str) -> tuple[np.ndarray, Any]:
    """(array, raw GGML type or None) of one tensor at the file's type; norms stay f32, and a matrix whose
    rows are not a whole number of 32-value blocks stays f16 in a quantized file (llama.cpp cannot hold it
    quantized; its own quantizer falls back the same way)."""
    import gguf

    array = weight.detach().float().cpu().numpy()
    if array.ndim == 1 or kind == "f32":
        return array, None
    if kind == "f16" or array.shape[-1] % BLOCK:
        return array.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType.Q8_0 if kind == "q8_0" or name == "token_embd.weight" else \
        gguf.GGMLQuantizationType.Q4_0
    return gguf.quants.quantize(array, qtype), qtype


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}


# ---------------------------------------------------------------------------- tokenizer


def copy_tokenizer_fields(writer: Any, source: Path) -> int:
    """Every tokenizer.* field of a GGUF file, written unchanged; returns how many."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    n = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                values = [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]
            else:
                values = [field.parts[i].tolist()[0] for i in field.data]
            writer.add_key_value(name, values, kind, sub_type=sub)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_key_value(name, bytes(field.parts[field.data[0]]).decode("utf-8"), kind)
        else:
            writer.add_key_value(name, field.parts[field.data[0]].tolist()[0], kind)
        n += 1
    return n


def bpe_fields(tokenizer: Any) -> dict[str, Any]:
    """The byte-level BPE vocabulary of an HF fast tokenizer as llama.cpp's `gpt2` tokenizer model."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("GGUF export needs a fast (tokenizers) tokenizer; this one is slow / Python only")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ValueError(f"GGUF export carries byte-level BPE tokenizers (GPT-2 / Llama 3 / SmolLM style); this one is "
                         f"{model.get('type')}{' with byte fallback (SentencePiece-style)' if model.get('byte_fallback') else ''}")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = int(t["id"])
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [5] * size  # unused
    for token, i in vocab.items():
        tokens[i] = token
        t = added.get(token)
        types[i] = 1 if t is None else (3 if t.get("special") else 4)  # normal, control, user defined
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    ids = {}
    for key in ("bos", "eos", "unk", "pad"):
        value = getattr(tokenizer, f"{key}_token_id", None)
        if value is not None:
            ids[key] = int(value)
    return {"tokens": tokens, "types": types, "merges": merges, "ids": ids,
            "add_bos": bool(getattr(tokenizer, "add_bos_token", False))}


def stand_in_fields(vocab_size: int) -> dict[str, Any]:
    """A vocabulary of `vocab_size` placeholder tokens (no merges): enough for llama.cpp to load and run a
    model fed token ids, as the latency timer does; it tokenizes nothing meaningfully (timing only)."""
    return {"tokens": [f"<t{i}>" for i in range(vocab_size)], "types": [1] * vocab_size, "merges": [],
            "ids": {"eos": 0}, "add_bos": False}


def carried_tokenizer(tokenizer: Any) -> Any:
    """`tokenizer` when its vocabulary can be written to GGUF, else None (a timing GGUF gets a stand-in)."""
    try:
        bpe_fields(tokenizer)
    except (ValueError, KeyError, TypeError):
        return None
    return tokenizer


def write_bpe_fields(writer: Any, fields: dict[str, Any], pre: str) -> None:
    if not fields["merges"]:  # a stand-in: llama.cpp's vocabulary-less model type, fed token ids
        writer.add_tokenizer_model("no_vocab")
        return
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(fields["tokens"])
    writer.add_token_types(fields["types"])
    writer.add_token_merges(fields["merges"])
    for key, value in fields["ids"].items():
        getattr(writer, f"add_{key}_token_id")(value)
    writer.add_add_bos_token(fields["add_bos"])
    writer.add_add_eos_token(False)


def sample_texts(texts: Sequence[str] | None) -> list[str]:
    base = ["Hello world! It's 2026, and llama.cpp runs GGUF files.", "  two  spaces\tand a tab\n\nnew lines",
            "numbers 1234567 and 3.14159; punctuation: (a) [b] {c} <d> 'e' \"f\"", "émigré café naïve 東京 🙂",
            "KING HENRY. Once more unto the breach, dear friends, once more;"]
    return base + [t for t in (texts or []) if t]


_PRE_FOUND: dict[str, str] = {}  # tokenizer JSON digest -> pre-tokenizer name (found once per process)


def find_pre_tokenizer(fields: dict[str, Any], tokenizer: Any, texts: Sequence[str] | None) -> str:
    """The first of llama.cpp's pre-tokenizer names whose tokenization equals the HF tokenizer's on the
    sample texts ('default' when llama.cpp is not installed: then nothing could be checked)."""
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    if digest not in _PRE_FOUND:
        _PRE_FOUND[digest] = _try_pre_tokenizers(fields, tokenizer, texts)
    return _PRE_FOUND[digest]


def _try_pre_tokenizers(fields: dict[str, Any], tokenizer: Any, texts: Sequence[str] | None) -> str:
    if not llama_cpp_available():
        log.warning("llama-cpp-python is not installed: the GGUF tokenizer's pre-tokenizer is 'default', unchecked")
        return "default"
    texts = sample_texts(texts)[:64]
    with tempfile.TemporaryDirectory() as tmp:
        for pre in PRE_TOKENIZERS:
            path = Path(tmp) / f"vocab-{pre}.gguf"
            write_vocab_only(path, fields, pre)
            if tokenizer_mismatch(path, tokenizer, texts) is None:
                return pre
    raise ValueError(f"no llama.cpp pre-tokenizer ({', '.join(PRE_TOKENIZERS)}) tokenizes like this HF tokenizer; "
                     "its GGUF would tokenize differently")


def write_vocab_only(path: Path, fields: dict[str, Any], pre: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(4096)
    write_bpe_fields(writer, fields, pre)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---------------------------------------------------------------------------- the file


def write_gguf(model: Any, tokenizer: Any, path: str | Path, *, kind: str = "f32", arch: str = "auto",
               source_gguf: str | Path | None = None, texts: Sequence[str] | None = None,
               name: str = "nas-pruned") -> dict[str, Any]:
    """Write `model` (a Llama-family causal LM, pruned or not) as a GGUF file llama.cpp loads."""
    import gguf

    arch = check_request(model, [kind], arch)
    t0 = time.perf_counter()
    config = model.config
    shapes = layer_shapes(config)
    hd = head_size(config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bpe = None
    if source_gguf is None and tokenizer is None:
        bpe, pre = stand_in_fields(int(config.vocab_size)), "default"
    elif source_gguf is None:
        bpe = bpe_fields(tokenizer)
        pre = find_pre_tokenizer(bpe, tokenizer, texts)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_name(name)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[kind]))
    if kind.startswith("q"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    if arch == "llama":
        writer.add_feed_forward_length(shapes["ffn"][0])
        writer.add_head_count(shapes["heads"][0])
        writer.add_head_count_kv(shapes["kv_heads"][0])
    else:
        writer.add_feed_forward_length(shapes["ffn"])
        writer.add_head_count(shapes["heads"])
        writer.add_head_count_kv(shapes["kv_heads"])
    writer.add_key_length(hd)
    writer.add_value_length(hd)
    writer.add_rope_dimension_count(hd)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(float(getattr(config, "rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(config.vocab_size))
    if source_gguf is not None:
        copy_tokenizer_fields(writer, Path(source_gguf))
        pre = "copied from " + Path(source_gguf).name
    else:
        assert bpe is not None
        write_bpe_fields(writer, bpe, pre)
    fallback = []
    with torch.no_grad():
        for tensor_name, weight in gguf_tensors(model):
            array, raw = encode(tensor_name, weight, kind)
            if raw is None:
                writer.add_tensor(tensor_name, array)
            else:
                writer.add_tensor(tensor_name, array, raw_dtype=raw)
            if kind.startswith("q") and weight.dim() == 2 and raw is None:
                fallback.append(tensor_name)
    if fallback:
        log.warning("GGUF %s: %d matrices have rows that are not a multiple of %d values and stay f16 (e.g. %s); "
                    "a space with align: %d avoids it", path.name, len(fallback), BLOCK, fallback[0], BLOCK)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    if source_gguf is None and tokenizer is None:
        pre = "stand-in vocabulary (timing only)"
    info = {"path": str(path), "type": kind, "arch": arch, "bytes": path.stat().st_size, "tokenizer": pre,
            "seconds": round(time.perf_counter() - t0, 2), "layers": int(config.num_hidden_layers), **shapes,
            "head_size": hd, "hidden": int(config.hidden_size), "f16_fallback": len(fallback)}
    log.info("GGUF %s: %s, %s, %.1f MB (%.1fs)", path.name, kind, arch, info["bytes"] / 1e6, info["seconds"])
    return info


# ---------------------------------------------------------------------------- llama.cpp


def tokenizer_mismatch(path: str | Path, tokenizer: Any, texts: Sequence[str]) -> str | None:
    """The first text llama.cpp (vocabulary of the GGUF at `path`) tokenizes unlike `tokenizer`, or None."""
    llm = load_gguf(path, vocab_only=True)
    try:
        for text in texts:
            ours = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            theirs = tokenizer(text, add_special_tokens=False)["input_ids"]
            if list(ours) != list(theirs):
                return text
        return None
    finally:
        llm.close()
