"""GGUF export of Llama-family causal LMs, for llama.cpp (and everything built on it).

A pruned decoder is written as one GGUF file at f32 or f16 (gguf-py), or quantized by llama.cpp's own
quantizer from the f32 file (nas.deploy.gguf_quant: q8_0, q6_k, q5_k_m, q5_0, q4_k_m, iq4_nl, q4_0, each
optionally with its own head type and an importance matrix):

- **Architecture.** `llama` when every layer has the same query heads, key/value heads and FFN
  width; `deci` (the Nemotron-NAS architecture, which llama.cpp builds layer by layer from arrays
  of per-layer counts) when they differ. `arch=auto` picks between the two.
  A family with its own architecture in llama.cpp (Family.gguf_arch: `qwen3`, with attn_q_norm /
  attn_k_norm) is written in it, and only with one shape for every layer.
- **Rotary layout.** HF Llama rotates channel j of a head with channel j + d/2; llama.cpp's
  `llama` / `deci` graphs rotate adjacent pairs (2j, 2j + 1). The rows of q_proj and k_proj are
  reordered inside each head accordingly (the usual convert step), so the logits are the same.
- **Types.** Norms and biases stay f32. A quantized type is llama.cpp's preset of that name, applied by
  `llama_model_quantize` to the f32 file (its per-tensor rules and fallbacks included: a row that a
  type's blocks do not fit gets a type that fits it; spaces with `align: 32` keep every pruned width
  on 32-value blocks). The file's tensor types are read back and returned. A file whose matrices GPTQ
  rounded (nas.deploy.gptq: q4_0, q5_0, iq4_nl, the rest at q8_0) is written without the quantizer, its
  values stored as llama.cpp's blocks of their type: the bytes the quantizer writes, without its scale search.
- **Tokenizer.** A model whose base came from a GGUF file carries that file's `tokenizer.ggml.*`
  fields (cut to the model's own ids where its vocabulary is cut, nas.cut.vocab). Otherwise the HF
  fast tokenizer's byte-level BPE (tokens, merges, special tokens) is written; llama.cpp also needs the name of the
  pre-tokenizer regex, which is found by tokenizing sample texts with each known name and keeping
  the first that gives the HF ids (`check_tokenizer` verifies the written file the same way).

Refused in one line before anything is written: an encoder or a classifier, an unknown type or
architecture, per-layer shapes asked for as `llama` (llama.cpp's llama graph has one shape for every
layer), an odd head size (rotary pairs), rope scaling other than the default, a non-Llama family; for a
family with its own architecture (qwen3, smollm3), another architecture or per-layer shapes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.cut.vocab import tokenizer_for
from nas.deploy.gguf_quant import QUANT_TYPES, check_precision, llama_quantize, parse_mix, split_precision
from nas.deploy.gptq import BLOCK_BYTES, GPTQ_TYPES, encode_rounded, round_matrices
from nas.deploy.llamacpp import llama_cpp_available, load_gguf
from nas.deploy.mixed import for_layers, mixed_types
from nas.models.decoder import attention_kind, backbone, is_tied
from nas.models.registry import family_for_config

log = logging.getLogger(__name__)
logging.getLogger("gguf").setLevel(logging.WARNING)  # gguf-py's writer logs every file it writes at INFO

GGUF_TYPES = ("f32", "f16", *QUANT_TYPES)
GGUF_ARCHES = ("auto", "llama", "deci", "qwen3", "smollm3")
PAIRED_ROPE = ("llama", "deci", "smollm3")  # llama.cpp graphs that rotate adjacent pairs (the others rotate halves)
HEAD_TENSORS = ("token_embd.weight", "output.weight")  # the output layer (tied: the token embedding) and the embedding
LLAMA_TYPES = ("llama", "mistral")  # HF model types llama.cpp builds as `llama` / `deci` (no biases)
# llama.cpp's names for pre-tokenizer regexes, tried in this order when a tokenizer has no GGUF origin
PRE_TOKENIZERS = ("smollm", "gpt-2", "llama-bpe", "qwen2", "default", "starcoder", "refact", "falcon",
                  "deepseek-llm", "deepseek-coder", "olmo", "tekken", "gpt-4o")


# ---------------------------------------------------------------------------- what is exported


def layer_shapes(config: Any) -> dict[str, list[Any]]:
    """Per-layer query heads, key/value heads, FFN widths and attention kinds of a (possibly pruned) Llama
    config, as llama.cpp's deci graph reads them: a linear-attention layer has query heads (the base's) and
    no key/value heads; a layer without attention has neither."""
    n = int(config.num_hidden_layers)
    heads = list(getattr(config, "nas_heads", None) or [int(config.num_attention_heads)] * n)
    kv = list(getattr(config, "nas_kv_heads", None) or [int(getattr(config, "num_key_value_heads", None)
                                                               or config.num_attention_heads)] * n)
    ffn = list(getattr(config, "nas_ffn", None) or [int(config.intermediate_size)] * n)
    attn = list(getattr(config, "nas_attn", None) or ["full"] * n)
    heads = [int(h) if a == "full" else (int(config.num_attention_heads) if a == "linear" else 0)
             for h, a in zip(heads, attn, strict=True)]
    kv = [int(k) if a == "full" else 0 for k, a in zip(kv, attn, strict=True)]
    return {"heads": heads, "kv_heads": kv, "ffn": [int(f) for f in ffn], "attn": attn}


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


def choose_arch(config: Any, arch: str, native: str = "llama") -> str:
    """`native`: the family's architecture (Family.gguf_arch); only `llama` has `deci` for per-layer shapes."""
    shapes = layer_shapes(config)
    uniform = all(len(set(v)) == 1 for v in shapes.values()) and shapes["attn"][0] == "full"
    if native != "llama":
        if arch not in ("auto", native):
            raise ValueError(f"gguf arch={arch}: {config.model_type} models are written as llama.cpp's {native} "
                             f"architecture; allowed: auto, {native}")
        if not uniform:
            raise ValueError(f"llama.cpp's {native} graph needs every layer the same shape, and these differ (query "
                             f"heads {shapes['heads']}, key/value heads {shapes['kv_heads']}, FFN {shapes['ffn']}, "
                             f"attention {shapes['attn']}); search with space.per_layer=false")
        return native
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
        family = family_for_config(config)
        decoder, native = bool(family.causal_lm), family.gguf_arch
    except ValueError:  # a family this project does not prune
        decoder, native = False, None
    if not decoder:
        raise ValueError(f"GGUF export is for decoder LMs (Llama family) that llama.cpp runs; this model is "
                         f"{kind!r}, an encoder: export it as ONNX (onnx=true) instead")
    if native is None or native == "llama" and kind not in LLAMA_TYPES:
        raise ValueError(f"GGUF export writes the llama / deci architectures (no attention biases) and the families' "
                         f"own (qwen3, smollm3); model_type={kind!r} is not exported yet (allowed: "
                         f"{', '.join(LLAMA_TYPES)}, qwen3, smollm3)")
    if hasattr(model, "score") or getattr(config, "architectures", None) and any(
            "SequenceClassification" in a for a in config.architectures):
        raise ValueError("GGUF export is for causal LMs: this decoder is a sequence classifier (its `score` head "
                         "has no place in llama.cpp); export it as ONNX instead")
    for t in types:
        check_precision(t, allowed_bodies=GGUF_TYPES)
    if arch not in GGUF_ARCHES:
        raise ValueError(f"gguf arch {arch!r} is not known; allowed: {', '.join(GGUF_ARCHES)}")
    if rope_type(config) != "default":
        raise ValueError(f"rope scaling {rope_type(config)!r} is not exported to GGUF yet (only the default rope)")
    hd = head_size(config)
    if hd % 2:
        raise ValueError(f"head size {hd} is odd: llama.cpp's rotary embedding needs an even head size")
    shapes = layer_shapes(config)
    if shapes["attn"][0] != "full":
        raise ValueError(f"layer 0 has attention {shapes['attn'][0]!r}: llama.cpp reads the head size from layer 0, "
                         "so the first layer keeps its attention")
    for i, (f, a) in enumerate(zip(shapes["ffn"], shapes["attn"], strict=True)):
        if f == 0 and a != "none":
            raise ValueError(f"layer {i} has no FFN but keeps its attention ({a}): llama.cpp's deci graph skips "
                             "such a layer's residual add; keep an FFN or drop the layer")
    return choose_arch(config, arch, native)


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
    family = family_for_config(model.config)
    pairs = family.gguf_arch in PAIRED_ROPE  # rope_rows; the others rotate halves, as HF does
    for i, layer in enumerate(body.layers):
        outputs = (("attn_output", getattr(layer.self_attn, "o_proj", None)), ("ffn_down", layer.mlp.down_proj))
        for name, proj in outputs:
            if not family.output_biases and getattr(proj, "bias", None) is not None:
                raise ValueError(f"blk.{i}.{name}.bias: llama.cpp's {family.gguf_arch} graph has no output biases; "
                                 "heal this family without them (nas.cut.heal reads Family.output_biases)")
    out = [("token_embd.weight", body.embed_tokens.weight)]
    for i, layer in enumerate(body.layers):
        att, mlp = layer.self_attn, layer.mlp
        kind = attention_kind(layer)
        if kind != "none":
            out.append((f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight))
        if kind == "full":
            out += [(f"blk.{i}.attn_q.weight", rope_rows(att.q_proj.weight, shapes["heads"][i]) if pairs
                     else att.q_proj.weight),
                    (f"blk.{i}.attn_k.weight", rope_rows(att.k_proj.weight, shapes["kv_heads"][i]) if pairs
                     else att.k_proj.weight),
                    (f"blk.{i}.attn_v.weight", att.v_proj.weight)]
            out += [(f"blk.{i}.attn_{x}_norm.weight", getattr(att, f"{x}_norm").weight) for x in ("q", "k")
                    if isinstance(getattr(att, f"{x}_norm", None), nn.Module)]  # Qwen3: per-head RMSNorm
        if kind != "none":
            out.append((f"blk.{i}.attn_output.weight", att.o_proj.weight))
            if att.o_proj.bias is not None:
                if kind == "linear":  # llama.cpp's linear attention adds no bias: it would be dropped silently
                    raise ValueError(f"layer {i}: a linear attention with a bias has no place in llama.cpp's deci graph")
                out.append((f"blk.{i}.attn_output.bias", att.o_proj.bias))
        out += [(f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight),
                (f"blk.{i}.ffn_gate.weight", mlp.gate_proj.weight),
                (f"blk.{i}.ffn_up.weight", mlp.up_proj.weight),
                (f"blk.{i}.ffn_down.weight", mlp.down_proj.weight)]
        if mlp.down_proj.bias is not None:
            out.append((f"blk.{i}.ffn_down.bias", mlp.down_proj.bias))
        for name, module in ((f"blk.{i}.attn_q", getattr(att, "q_proj", None)), (f"blk.{i}.attn_k", getattr(att, "k_proj", None)),
                             (f"blk.{i}.attn_v", getattr(att, "v_proj", None)), (f"blk.{i}.ffn_gate", mlp.gate_proj),
                             (f"blk.{i}.ffn_up", mlp.up_proj)):
            bias = getattr(module, "bias", None)
            if bias is not None and bool(bias.detach().abs().max() > 0):
                raise ValueError(f"{name}.bias is not zero: the llama / deci architectures written here carry biases "
                                 "on attn_output and ffn_down only")
    out.append(("output_norm.weight", body.norm.weight))
    if not is_tied(model):
        out.append(("output.weight", model.lm_head.weight))
    return out


def encode(weight: torch.Tensor, kind: str) -> np.ndarray:
    """One tensor as gguf-py writes it: vectors (norms, biases) at f32, matrices at the file's type (f32 / f16)."""
    array = weight.detach().float().cpu().numpy()
    return array if array.ndim == 1 or kind == "f32" else array.astype(np.float16)


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16"}


# ---------------------------------------------------------------------------- tokenizer


def read_tokenizer_fields(source: Path) -> list[tuple[str, Any, Any, Any]]:
    """Every tokenizer.* field of a GGUF file as (name, value, GGUF type, array element type or None). Memoised per
    file (path, size, modification time): a run writes every trial from the same source file, and parsing its
    49,152 tokens and merges in Python takes ~4 s each time. Callers get their own copy of the list."""
    source = Path(source)
    stat = source.stat()
    key = (str(source.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _TOKENIZER_FIELDS:
        _TOKENIZER_FIELDS.clear()  # one source file per run: keep only the latest
        _TOKENIZER_FIELDS[key] = _read_tokenizer_fields(source)
    return [(name, list(value) if isinstance(value, list) else value, kind, sub)
            for name, value, kind, sub in _TOKENIZER_FIELDS[key]]


_TOKENIZER_FIELDS: dict[tuple[str, int, int], list[tuple[str, Any, Any, Any]]] = {}


def _read_tokenizer_fields(source: Path) -> list[tuple[str, Any, Any, Any]]:
    import gguf

    reader = gguf.GGUFReader(str(source))
    out = []
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        sub = None
        if kind == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                value: Any = [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]
            else:
                value = [field.parts[i].tolist()[0] for i in field.data]
        elif kind == gguf.GGUFValueType.STRING:
            value = bytes(field.parts[field.data[0]]).decode("utf-8")
        else:
            value = field.parts[field.data[0]].tolist()[0]
        out.append((name, value, kind, sub))
    return out


def trim_tokenizer_fields(fields: Sequence[tuple[str, Any, Any, Any]], kept: Sequence[int]
                          ) -> list[tuple[str, Any, Any, Any]]:
    """A GGUF file's tokenizer fields restricted to the base ids `kept` (sorted; new id = position), as
    nas.cut.vocab.trimmed_spec restricts an HF tokenizer: per-token arrays (tokens, types, scores) selected, every
    merge whose result or either part is removed dropped, special ids renumbered (one no longer kept is refused)."""
    kept = [int(i) for i in kept]
    new_id = {old: new for new, old in enumerate(kept)}
    names = dict((f[0], f[1]) for f in fields)
    tokens = names.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ValueError("the GGUF file has no tokenizer.ggml.tokens: its vocabulary cannot be cut")
    size = len(tokens)
    kept_tokens = {tokens[i] for i in kept}
    out = []
    for name, value, kind, sub in fields:
        if isinstance(value, list) and len(value) == size and name != "tokenizer.ggml.merges":
            value = [value[i] for i in kept]  # tokens, token_type, scores
        elif name == "tokenizer.ggml.merges":
            value = [m for m in value if _merge_kept(m, kept_tokens)]
        elif name.endswith("_token_id"):
            if int(value) not in new_id:
                raise ValueError(f"{name}={value} is not among the kept ids")
            value = new_id[int(value)]
        out.append((name, value, kind, sub))
    return out


def _merge_kept(merge: str, kept_tokens: set[str]) -> bool:
    left, _, right = merge.partition(" ")
    return left in kept_tokens and right in kept_tokens and left + right in kept_tokens


def copy_tokenizer_fields(writer: Any, source: Path, kept: Sequence[int] | None = None) -> int:
    """Every tokenizer.* field of a GGUF file, written unchanged (or cut to the base ids `kept`); returns how many."""
    fields = read_tokenizer_fields(source)
    if kept is not None:
        fields = trim_tokenizer_fields(fields, kept)
    for name, value, kind, sub in fields:
        writer.add_key_value(name, value, kind, sub_type=sub)
    return len(fields)


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
               name: str = "nas-pruned", imatrix: Mapping[str, np.ndarray] | None = None,
               moments: Mapping[str, torch.Tensor] | None = None, threads: int = 0,
               mix_order: Sequence[str] | None = None, direct: bool = True) -> dict[str, Any]:
    """Write `model` (a Llama-family causal LM, pruned or not) as a GGUF file llama.cpp loads.

    `kind`: f32 / f16 (written by gguf-py), or a llama.cpp quantization type (QUANT_TYPES, optionally
    `<type>_head_<head>`), written at f32 first and quantized by llama.cpp (`imatrix`: its importance
    matrix, nas.deploy.imatrix; `threads`: the quantizer's, 0 for all cores). With `moments` (each matrix's
    input second moment, nas.deploy.imatrix.input_moments) and a type GPTQ runs for (nas.deploy.gptq.GPTQ_TYPES),
    every matrix is first rounded GPTQ-style onto that type's grid (the head onto its own type when GPTQ knows it;
    q8_0 by default) and llama.cpp's quantizer, asked for that type everywhere (`pure`), keeps the values. Such a file
    is then written `direct`ly instead: GPTQ's values as llama.cpp's blocks of their type
    (nas.deploy.gptq.encode_rounded) and the q8_0 matrices by llama.cpp's q8_0 rounding (gguf-py's, the same), the
    bytes the quantizer would write (tests/test_gptq.py compares every tensor) without its ~16 s scale search per
    file; a value off the grid, or `direct=False`, leaves the file to the quantizer.

    A mixed file (`mix<n>_<low>`, nas.deploy.mixed) holds the n cheapest tensor groups of `mix_order` (its measured
    sensitivity, cheapest first) at the low type (GPTQ-rounded given `moments`) and every other matrix at q8_0, each
    set by llama.cpp's per-tensor type overrides."""
    arch = check_request(model, [kind], arch)
    body, head = split_precision(kind)
    rounded, pure, overrides = None, False, None
    mix = parse_mix(kind)
    if mix is not None:
        if mix_order is None:
            raise ValueError(f"GGUF type {kind}: a mixed file needs the tensor groups' measured sensitivity "
                             "(nas.deploy.mixed.measure_sensitivity)")
        spec = getattr(model.config, "nas_spec", None)  # a cut model's layers are the base's spec.layers, renumbered
        order = for_layers(mix_order, spec.get("layers") if isinstance(spec, Mapping) else None)
        types = mixed_types([n for n, w in gguf_tensors(model) if w.dim() == 2], order, mix[0], mix[1])
        if moments:
            rounded = round_matrices(dict(gguf_tensors(model)), moments, types)
        body, head, pure = mix[1], None, True
        overrides = {n: t for n, t in types.items() if t != body}
    elif moments and body in GPTQ_TYPES:  # every matrix at the type asked (pure), the head at its own (q8_0 unless set)
        head = head or "q8_0"
        types = {n: (head if n in HEAD_TENSORS else body) for n, w in gguf_tensors(model) if w.dim() == 2}
        rounded = round_matrices(dict(gguf_tensors(model)), moments, types)
        pure = True
    t0 = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    plain = "f32" if body in QUANT_TYPES else body
    blocks = encoded_blocks(model, rounded, types) if rounded is not None and direct else None
    try:
        info = _write_plain(model, tokenizer, tmp, kind=plain, arch=arch, source_gguf=source_gguf, texts=texts,
                            name=name, replace=rounded, blocks=blocks, file_type=body if blocks else None)
        if blocks is not None:
            tmp.replace(path)
            info["tensor_types"] = dict(Counter(kind_.upper() for _, kind_ in blocks.values()))
        elif body in QUANT_TYPES:
            done = llama_quantize(tmp, path, body, head=head, imatrix=imatrix, threads=threads, pure=pure,
                                  overrides=overrides)
            info["tensor_types"] = done["types"]
        else:
            tmp.replace(path)
            info["tensor_types"] = {plain.upper(): sum(1 for _, w in gguf_tensors(model) if w.dim() == 2)}
    finally:
        tmp.unlink(missing_ok=True)
    info.update(path=str(path), type=kind, bytes=path.stat().st_size, seconds=round(time.perf_counter() - t0, 2),
                imatrix=bool(imatrix) and blocks is None, rounding="gptq" if rounded else "llama.cpp",
                writer="blocks written directly" if blocks is not None else "llama.cpp's quantizer" if
                body in QUANT_TYPES else "gguf-py")
    log.info("GGUF %s: %s, %s, %.1f MB (%.1fs)", path.name, kind, arch, info["bytes"] / 1e6, info["seconds"])
    return info


def encoded_blocks(model: Any, rounded: Mapping[str, torch.Tensor],
                   types: Mapping[str, str]) -> dict[str, tuple[np.ndarray, str]] | None:
    """Every matrix of `model` as llama.cpp's blocks of its type in `types` ({GGUF name: (uint8 rows, type)}): GPTQ's
    `rounded` values encoded as they are (nas.deploy.gptq.encode_rounded), q8_0 by llama.cpp's own rounding of the
    weights. None when a matrix is neither (a type or width this cannot write, or a value off the grid)."""
    import gguf

    out: dict[str, tuple[np.ndarray, str]] = {}
    for tensor_name, weight in gguf_tensors(model):
        if weight.dim() != 2:
            continue
        kind = types.get(tensor_name)
        if tensor_name in rounded and kind in BLOCK_BYTES:
            data = encode_rounded(rounded[tensor_name], kind)
        elif kind == "q8_0" and weight.shape[1] % 32 == 0:
            data = gguf.quants.quantize(weight.detach().float().cpu().numpy(), gguf.GGMLQuantizationType.Q8_0)
        else:
            data = None
        if data is None:
            return None
        out[tensor_name] = (data, kind)
    return out


def _write_plain(model: Any, tokenizer: Any, path: Path, *, kind: str, arch: str, source_gguf: str | Path | None,
                 texts: Sequence[str] | None, name: str, replace: Mapping[str, torch.Tensor] | None = None,
                 blocks: Mapping[str, tuple[np.ndarray, str]] | None = None, file_type: str | None = None
                 ) -> dict[str, Any]:
    """The f32 / f16 file gguf-py writes (every quantized type starts from the f32 one); `replace`: tensors
    written instead of the model's own, by GGUF name (GPTQ's rounded matrices); `blocks`: matrices written as these
    llama.cpp blocks instead (encoded_blocks), the file then of llama.cpp type `file_type` (a QUANT_TYPES name)."""
    import gguf

    config = model.config
    shapes = layer_shapes(config)
    hd = head_size(config)
    bpe = None
    if source_gguf is None and tokenizer is None:
        bpe, pre = stand_in_fields(int(config.vocab_size)), "default"
    elif source_gguf is None:  # the model's own vocabulary (cut to config.nas_vocab); the regex is the base's
        bpe = bpe_fields(tokenizer_for(model, tokenizer))
        pre = find_pre_tokenizer(bpe_fields(tokenizer), tokenizer, texts)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    if file_type is not None:  # what llama.cpp's quantizer records: the preset, and the block format's version
        writer.add_file_type(QUANT_TYPES[file_type])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    else:
        writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[kind]))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    if arch != "deci":  # one shape for every layer
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
        kept = getattr(config, "nas_vocab", None)
        copy_tokenizer_fields(writer, Path(source_gguf), kept=kept or None)
        pre = ("copied from " if not kept else f"cut to {len(kept)} of the ids of ") + Path(source_gguf).name
    else:
        assert bpe is not None
        write_bpe_fields(writer, bpe, pre)
    with torch.no_grad():
        for tensor_name, weight in gguf_tensors(model):
            if blocks and tensor_name in blocks:
                data, type_ = blocks[tensor_name]
                writer.add_tensor(tensor_name, data, raw_dtype=getattr(gguf.GGMLQuantizationType, type_.upper()))
            else:
                writer.add_tensor(tensor_name, encode((replace or {}).get(tensor_name, weight), kind))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if source_gguf is None and tokenizer is None:
        pre = "stand-in vocabulary (timing only)"
    return {"arch": arch, "tokenizer": pre, "layers": int(config.num_hidden_layers), **shapes, "head_size": hd,
            "hidden": int(config.hidden_size)}


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
