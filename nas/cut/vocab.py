"""Vocabulary pruning of byte-level BPE language models: keep the tokens the task's training text uses.

A language model's output layer scores every token of its vocabulary at every step (SmolLM2: 576 x 49,152,
about a fifth of a token's multiply-adds), yet a domain's text uses a fraction of it (the plays: 17,502 of
49,152 ids). Cutting the vocabulary removes rows of the token embedding and of the output layer, renumbers
the ids, and rewrites the tokenizer so that it can never produce a removed token.

- **Which tokens** (`rank_vocabulary`, from the training split only): first the ones always kept (the 256
  byte-level base tokens the vocabulary holds, so any text still tokenizes; every added / special token: BOS,
  EOS, padding, control tokens; the tokens of the model's chat template), then the training text's tokens by
  frequency. Each token comes after the two it is merged from (its merge parts), so every prefix of the
  ranking is closed: a kept token can still be built by the kept merges. A spec keeps a prefix
  (SubnetSpec.vocab ids); a coverage share (the search space's `vocab` axis) resolves to the shortest prefix
  that covers that share of the training tokens (`VocabRanking.size_for`).
- **The tokenizer** (`trim_tokenizer`): tokenizers' own BPE model, from its JSON with the removed tokens
  dropped, the ids renumbered in their old order, and every merge whose result or either part is removed
  dropped. BPE builds a word by merges in rank order; with a merge gone, the word stops at smaller kept pieces,
  down to its bytes. A word whose tokenization used only kept tokens tokenizes exactly as before (its merges are
  all kept, and removing others never makes them lose their turn). Added tokens and the post-processor's ids
  are renumbered. Anything the base could not encode (SmolLM2 has no token for 21 of the 256 bytes, e.g.
  control byte 0x04: its tokenizer drops them) the trimmed one cannot either; all else round-trips.
- **The model** (`trim_model`): embedding and output rows selected to match (tied stays tied), the config's
  vocab_size and special ids renumbered, `config.nas_vocab` the kept base ids in their new order (what the
  GGUF writer and the exported folder read).

Renormalising the softmax over fewer logits can only raise a kept token's probability: on text that tokenizes
the same, the trimmed model scores at least as well. Its cost is text split into more, smaller pieces; so
models with different vocabularies are compared on bits per byte of the same text (nas.quality.bytes).

Refused in one line: a tokenizer that is not byte-level BPE (a SentencePiece / WordPiece vocabulary has no byte
tokens to fall back to), a coverage share outside (0, 1], a size below the always-kept tokens or above the base.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.util import cache_key

CHAT_SAMPLES = (  # messages rendered through the chat template: the tokens it writes around them are kept
    [{"role": "user", "content": "x"}],
    [{"role": "system", "content": "x"}, {"role": "user", "content": "x"}, {"role": "assistant", "content": "x"}],
)


# ---------------------------------------------------------------------------- the tokenizer's BPE


def tokenizer_spec(tokenizer: Any) -> dict[str, Any]:
    """The tokenizers JSON of a byte-level BPE fast tokenizer; one-line ValueError for any other."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"vocabulary pruning needs a fast (tokenizers) tokenizer; {type(tokenizer).__name__} is not one")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or not _has_byte_level(spec.get("pre_tokenizer")):
        kind = model.get("type") or "unknown"
        why = ("with byte fallback (SentencePiece-style)" if model.get("byte_fallback") else
               "without a byte-level pre-tokenizer" if kind == "BPE" else "")
        raise ValueError(f"vocabulary pruning needs a byte-level BPE tokenizer (GPT-2 / Llama 3 / SmolLM style: every "
                         f"byte has a token, so text falls back to bytes); this one is {kind} {why}".rstrip())
    return spec


def _has_byte_level(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    if node.get("type") == "ByteLevel":
        return True
    return any(_has_byte_level(n) for n in node.get("pretokenizers") or [])


def _merge_pairs(model: dict[str, Any]) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in model.get("merges", [])]


def merge_parts(spec: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """{token id: (left id, right id)} of every token a merge builds (its lowest-ranked merge)."""
    vocab: dict[str, int] = spec["model"]["vocab"]
    parts: dict[int, tuple[int, int]] = {}
    for left, right in _merge_pairs(spec["model"]):
        result = vocab.get(left + right)
        if result is not None and result not in parts and left in vocab and right in vocab:
            parts[result] = (vocab[left], vocab[right])
    return parts


def always_kept(tokenizer: Any, spec: dict[str, Any] | None = None) -> set[int]:
    """Ids kept at any size: the byte-level base tokens, every added token (special or not), the special ids the
    tokenizer names, and the tokens its chat template writes."""
    from tokenizers.pre_tokenizers import ByteLevel

    spec = spec or tokenizer_spec(tokenizer)
    vocab: dict[str, int] = spec["model"]["vocab"]
    keep = {vocab[c] for c in ByteLevel.alphabet() if c in vocab}
    keep |= {int(t["id"]) for t in spec.get("added_tokens", [])}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            keep.add(value)
    if getattr(tokenizer, "chat_template", None):
        for messages in CHAT_SAMPLES:
            for prompt in (False, True):
                try:
                    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt)
                except Exception:  # a template that refuses a system message or these roles
                    continue
                ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
                keep |= {int(i) for i in ids}
    return keep


# ---------------------------------------------------------------------------- the ranking


@dataclass(frozen=True)
class VocabRanking:
    """Every base id, most important first (`order`), each after its merge parts: any prefix is a vocabulary a
    byte-level BPE can still build. `counts[i]`: how often order[i] occurs in the training text; the first
    `forced` ids are always kept."""

    order: tuple[int, ...]
    counts: tuple[int, ...]
    forced: int

    @property
    def size(self) -> int:
        return len(self.order)

    @property
    def used(self) -> int:
        """Ids up to the last one the training text uses (coverage 1.0)."""
        return self.size_for(1.0)

    def size_for(self, coverage: float) -> int:
        """The shortest prefix (never below the always-kept ids) holding `coverage` of the training tokens."""
        coverage = check_coverage(coverage)
        cumulative = np.cumsum(np.asarray(self.counts, dtype=np.int64))
        total = int(cumulative[-1]) if len(cumulative) else 0
        if total == 0:
            return self.forced
        need = coverage * total
        n = int(np.searchsorted(cumulative, need - 1e-9 * total, side="left")) + 1
        return max(self.forced, min(n, self.size))

    def coverage_of(self, n: int) -> float:
        """The share of training tokens the first `n` ids cover."""
        total = sum(self.counts)
        return sum(self.counts[:n]) / total if total else 1.0

    def kept(self, n: int) -> list[int]:
        """The first `n` ids, in base-id order (their new ids are their positions)."""
        n = int(n)
        if not self.forced <= n <= self.size:
            raise ValueError(f"vocab={n} is out of range: keep {self.forced} (the byte, special and chat-template "
                             f"tokens) to {self.size} (the whole vocabulary)")
        return sorted(self.order[:n])

    def digest(self) -> str:
        return hashlib.sha256(np.asarray(self.order, dtype=np.int64).tobytes()).hexdigest()[:16]


def check_coverage(coverage: Any) -> float:
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0 < float(coverage) <= 1:
        raise ValueError(f"vocabulary coverage {coverage!r} is not a share in (0, 1] of the training text's tokens "
                         "(e.g. 1.0, 0.9999, 0.999)")
    return float(coverage)


def count_tokens(tokenizer: Any, texts: Iterable[str], *, batch: int = 256) -> np.ndarray:
    """How often each id occurs when `texts` are tokenized (no special tokens added)."""
    size = len(tokenizer)
    counts = np.zeros(size, dtype=np.int64)
    texts = list(texts)
    for start in range(0, len(texts), batch):
        for ids in tokenizer(texts[start:start + batch], add_special_tokens=False)["input_ids"]:
            counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=size)[:size]
    return counts


def rank_vocabulary(tokenizer: Any, texts: Iterable[str]) -> VocabRanking:
    """The ranking of `tokenizer`'s ids on `texts` (the task's training split: never validation or test)."""
    spec = tokenizer_spec(tokenizer)
    parts = merge_parts(spec)
    counts = count_tokens(tokenizer, texts)
    order: list[int] = []
    seen: set[int] = set()

    def add(token: int) -> None:
        stack = [token]
        while stack:  # parts first (iterative: merge chains are deep)
            t = stack[-1]
            if t in seen:
                stack.pop()
                continue
            missing = [p for p in parts.get(t, ()) if p not in seen]
            if missing:
                stack.extend(missing)
                continue
            seen.add(t)
            order.append(t)
            stack.pop()

    for t in sorted(always_kept(tokenizer, spec)):
        add(t)
    forced = len(order)
    for t in sorted((int(i) for i in np.flatnonzero(counts)), key=lambda i: (-int(counts[i]), i)):
        add(t)
    for t in range(len(counts)):  # the rest, unused: only the whole vocabulary keeps them
        add(t)
    return VocabRanking(order=tuple(order), counts=tuple(int(counts[t]) for t in order), forced=forced)


# ---------------------------------------------------------------------------- cutting


def trimmed_spec(spec: dict[str, Any], kept: Sequence[int]) -> dict[str, Any]:
    """The tokenizers JSON restricted to the base ids `kept` (sorted), renumbered 0..len-1 in that order."""
    new_id = {int(old): new for new, old in enumerate(kept)}
    spec = json.loads(json.dumps(spec))  # a copy
    model = spec["model"]
    vocab = {tok: new_id[i] for tok, i in model["vocab"].items() if i in new_id}
    model["vocab"] = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    merges = []
    for merge, (left, right) in zip(model.get("merges", []), _merge_pairs(model), strict=True):
        if left in vocab and right in vocab and left + right in vocab:
            merges.append(merge)
    model["merges"] = merges
    added = []
    for t in spec.get("added_tokens", []):
        if int(t["id"]) not in new_id:
            raise ValueError(f"added token {t['content']!r} (id {t['id']}) is not among the kept ids")
        added.append({**t, "id": new_id[int(t["id"])]})
    spec["added_tokens"] = added
    _renumber_post_processor(spec.get("post_processor"), new_id)
    return spec


def _renumber_post_processor(node: Any, new_id: dict[int, int]) -> None:
    """Special-token ids in a post-processor (TemplateProcessing, BertProcessing, Sequence of them)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ids" and isinstance(value, list) and all(isinstance(v, int) for v in value):
                node[key] = [new_id[v] for v in value]
            elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                value[1] = new_id[value[1]]
            else:
                _renumber_post_processor(value, new_id)
    elif isinstance(node, list):
        for item in node:
            _renumber_post_processor(item, new_id)


_TRIMMED: dict[tuple[str, str], Any] = {}


def trim_tokenizer(tokenizer: Any, kept: Sequence[int]) -> Any:
    """A tokenizer of the same class and settings over the base ids `kept` (sorted; new id = position), that can
    never produce a removed id (see the module's text). Cached by tokenizer and ids."""
    kept = [int(i) for i in kept]
    if kept != sorted(set(kept)):
        raise ValueError("kept ids must be strictly increasing base ids")
    spec = tokenizer_spec(tokenizer)
    key = (hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(),
           hashlib.sha256(np.asarray(kept, dtype=np.int64).tobytes()).hexdigest())
    if key not in _TRIMMED:
        from transformers import AutoTokenizer

        new = trimmed_spec(spec, kept)
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            (Path(tmp) / "tokenizer.json").write_text(json.dumps(new, ensure_ascii=False))
            trimmed = AutoTokenizer.from_pretrained(tmp)
        if len(trimmed) != len(kept):
            raise RuntimeError(f"the trimmed tokenizer has {len(trimmed)} ids, not the {len(kept)} kept")
        _TRIMMED[key] = trimmed
    return _TRIMMED[key]


def tokenizer_for(model: Any, tokenizer: Any) -> Any:
    """The tokenizer `model` reads: `tokenizer` (the base's), trimmed to the model's vocabulary when it is cut."""
    config = getattr(model, "config", model)
    kept = getattr(config, "nas_vocab", None)
    if not kept or len(tokenizer) == int(config.vocab_size):  # uncut, or already the cut one (an exported folder)
        return tokenizer
    return trim_tokenizer(tokenizer, kept)


def trim_model(model: nn.Module, kept: Sequence[int]) -> nn.Module:
    """Keep the token embedding and output rows of the base ids `kept` (sorted), in place: ids renumbered by
    position, a tied output layer stays tied, the config's vocabulary size and special ids follow.
    `config.nas_vocab` records the kept base ids (composed with any earlier cut)."""
    kept = [int(i) for i in kept]
    config = model.config
    size = int(config.vocab_size)
    if not kept or kept != sorted(set(kept)) or kept[-1] >= size:
        raise ValueError(f"kept ids must be strictly increasing ids below the vocabulary size {size}")
    index = torch.tensor(kept, dtype=torch.long)
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    new_embed = nn.Embedding(len(kept), embed.embedding_dim, padding_idx=None, dtype=embed.weight.dtype)
    with torch.no_grad():
        new_embed.weight.copy_(embed.weight[index])
    model.set_input_embeddings(new_embed)
    if head is not None:
        if tied:
            head.weight = new_embed.weight
        else:
            head.weight = nn.Parameter(head.weight.detach()[index].clone())
            if getattr(head, "bias", None) is not None:
                head.bias = nn.Parameter(head.bias.detach()[index].clone())
        head.out_features = len(kept)
    new_id = {old: new for new, old in enumerate(kept)}
    for holder in (config, getattr(model, "generation_config", None)):
        if holder is None:
            continue
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(holder, name, None)
            if isinstance(value, int):
                setattr(holder, name, new_id.get(value))
            elif isinstance(value, list):
                setattr(holder, name, [new_id[v] for v in value if v in new_id] or None)
    earlier = getattr(config, "nas_vocab", None)
    config.nas_vocab = [int(earlier[i]) for i in kept] if earlier else kept
    config.vocab_size = len(kept)
    return model


RANKING_VERSION = 1


def cached_ranking(tokenizer: Any, task: Any, *, cache_dir: str | Path | None) -> VocabRanking | None:
    """rank_vocabulary on the task's training split, cached by tokenizer and data (None when the tokenizer is not
    byte-level BPE: a spec that cuts the vocabulary is then refused with the reason, nas.study.space)."""
    try:
        spec = tokenizer_spec(tokenizer)
    except ValueError:
        return None
    key = cache_key(what="vocab_ranking", version=RANKING_VERSION, data=getattr(task, "fingerprint", None),
                    tokenizer=hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest())
    path = Path(cache_dir) / "vocab" / f"{key}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        data = json.loads(path.read_text())
        return VocabRanking(order=tuple(data["order"]), counts=tuple(data["counts"]), forced=int(data["forced"]))
    ranking = rank_vocabulary(tokenizer, task.train["text"])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"order": list(ranking.order), "counts": list(ranking.counts),
                                   "forced": ranking.forced}))
        tmp.replace(path)
    return ranking
