"""The one place that builds the tiny models, tokenizer, tasks and configs the tests use.

Models are random, built from configs (no hub): transformers' own test sizes for encoders (vocab 99,
hidden 32, 2 layers, 4 heads, FFN 37) and a small Llama with grouped-query attention for decoders.
A task is a two-class CSV whose texts draw words from a pool per label, and a saved model folder
beside it with a 99-word WordPiece tokenizer. Every builder is seeded: the same call builds the same
weights and rows. conftest.py turns the common ones into fixtures.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from nas.config import compose, compose_or_refuse
from nas.cut.importance import ImportanceScores
from nas.spec import BaseShape

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 99  # 5 special tokens, then w0..w93
WORDS = [f"w{i}" for i in range(VOCAB - 5)]
TINY = dict(vocab=VOCAB, hidden=32, layers=2, heads=4, ffn=37, positions=512, labels=3)

# The tiny search setting: a 2-layer BERT (positions 64, 2 labels) and a space of every axis over it.
TINY_SHAPE = BaseShape(num_layers=2, num_heads=4, head_size=8, hidden_size=32, ffn_size=37, max_positions=64)
TINY_SPACE = {
    "name": "tiny",
    "per_layer": False,
    "align": 8,
    "axes": {
        "layers": {"low": 1, "high": 2},
        "heads": {"low": 1, "high": 4},
        "ffn": {"choices": [8, 16, 37]},
        "hidden": {"choices": [16, 32]},
        "context": {"choices": [16, 32, 64]},
    },
}


# A tiny search run for export: per-layer heads / FFN, so the exported folder needs modeling_nas.py.
EXPORT_SPACE = {**TINY_SPACE, "name": "tiny_export", "per_layer": True}
N_TRIALS = 3  # trials of tiny_search_run


# ---- encoders --------------------------------------------------------------------------------------


def bert(*, layers: int = TINY["layers"], hidden: int = TINY["hidden"], heads: int = TINY["heads"],
         ffn: int = TINY["ffn"], positions: int = TINY["positions"], labels: int = TINY["labels"], types: int = 16,
         vocab: int = VOCAB, seed: int = 0) -> Any:
    """A random BertForSequenceClassification (pad id 0), in eval mode; `vocab` 30522 fits MiniLM's tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=positions, type_vocab_size=types,
                     num_labels=labels, pad_token_id=0)
    torch.manual_seed(seed)
    return BertForSequenceClassification(cfg).eval()


def roberta(*, layers: int = TINY["layers"], seed: int = 0) -> Any:
    """A random RobertaForSequenceClassification (pad id 1, positions numbered from 2: 512 + 2 rows)."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    cfg = RobertaConfig(vocab_size=VOCAB, hidden_size=TINY["hidden"], num_hidden_layers=layers,
                        num_attention_heads=TINY["heads"], intermediate_size=TINY["ffn"],
                        max_position_embeddings=TINY["positions"] + 2, type_vocab_size=1, num_labels=TINY["labels"],
                        pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(seed)
    return RobertaForSequenceClassification(cfg).eval()


def distilbert(*, layers: int = TINY["layers"], seed: int = 0) -> Any:
    """A random DistilBertForSequenceClassification (dim 32, 4 heads, hidden_dim 37)."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    cfg = DistilBertConfig(vocab_size=VOCAB, dim=TINY["hidden"], n_layers=layers, n_heads=TINY["heads"],
                           hidden_dim=TINY["ffn"], max_position_embeddings=TINY["positions"],
                           num_labels=TINY["labels"], pad_token_id=0)
    torch.manual_seed(seed)
    return DistilBertForSequenceClassification(cfg).eval()


# ---- decoders --------------------------------------------------------------------------------------

# vocab, hidden, query heads, key/value heads, head dim, FFN, positions, layers
LLAMA = dict(vocab=VOCAB, hidden=64, heads=4, kv_heads=2, head_dim=16, ffn=48, positions=128, layers=4)


def llama(*, tied: bool = True, labels: int | None = None, seed: int = 0, layers: int = LLAMA["layers"],
          hidden: int = LLAMA["hidden"], ffn: int = LLAMA["ffn"], positions: int = LLAMA["positions"],
          vocab: int = VOCAB, bos: int = 1, random_norms: bool = True) -> Any:
    """A random Llama with grouped-query attention: a causal LM, or a classifier with `labels`. The
    causal LM's RMSNorm gains are random (a channel slip would show)."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=LLAMA["heads"], num_key_value_heads=LLAMA["kv_heads"],
                      intermediate_size=ffn, max_position_embeddings=positions, tie_word_embeddings=tied,
                      pad_token_id=0, bos_token_id=bos, eos_token_id=2)
    torch.manual_seed(seed)
    if labels is not None:
        cfg.num_labels = labels
        return LlamaForSequenceClassification(cfg).eval()
    model = LlamaForCausalLM(cfg).eval()
    if random_norms:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.uniform_(0.5, 1.5)
    return model


# ---- tokenizer, tasks, saved folders ---------------------------------------------------------------


def write_tokenizer(folder: Path) -> Any:
    """A 99-word WordPiece tokenizer (ids 0-4 special, then w0..w93) saved as an HF tokenizer."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab))
    assert len(tokenizer) == VOCAB
    tokenizer.save_pretrained(folder)
    return tokenizer


def review_texts(n: int, *, words: tuple[int, int] = (4, 12), own: float | None = None,
                 seed: int = 0) -> tuple[list[str], list[int]]:
    """`n` texts of two alternating labels: each of its `words` (a random count in [low, high)) is drawn
    from its label's half of the vocabulary, or, with `own`, from it with that probability only
    (learnable, not trivial)."""
    g = torch.Generator().manual_seed(seed)
    pools = (WORDS[: len(WORDS) // 2], WORDS[len(WORDS) // 2:])
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        count = int(torch.randint(*words, (1,), generator=g))
        if own is None:
            picks = torch.randint(0, len(pools[label]), (count,), generator=g).tolist()
            texts.append(" ".join(pools[label][j] for j in picks))
        else:
            mine = (torch.rand(count, generator=g) < own).tolist()
            picks = torch.randint(0, len(pools[0]), (count,), generator=g).tolist()
            texts.append(" ".join(pools[label if m else 1 - label][j] for m, j in zip(mine, picks)))
        labels.append(label)
    return texts, labels


def task_folder(root: Path, *, rows: int = 60, words: tuple[int, int] = (4, 12), own: float | None = None,
                layers: int = 2, hidden: int = 32, heads: int = 4, ffn: int = 37, positions: int = 64,
                types: int = 2) -> dict[str, Path]:
    """A saved random 2-label BERT folder with its tokenizer, and a two-class CSV task (labels neg, pos):
    {root, model, csv, cache} for `model=hf data=file` runs."""
    model_dir = root / "model"
    write_tokenizer(model_dir)
    bert(layers=layers, hidden=hidden, heads=heads, ffn=ffn, positions=positions, labels=2,
         types=types).save_pretrained(model_dir)
    texts, labels = review_texts(rows, words=words, own=own)
    csv = root / "reviews.csv"
    pd.DataFrame({"text": texts, "label": [["neg", "pos"][y] for y in labels]}).to_csv(csv, index=False)
    return {"root": root, "model": model_dir, "csv": csv, "cache": root / "cache"}


def padded_batch(*, pad_id: int, batch: int = 3, length: int = 9, vocab: int = VOCAB, seed: int = 1) -> dict:
    """Random token ids with right padding: row i has length - 2*i real tokens (attention_mask has zeros)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(1, batch):
        mask[i, length - 2 * i:] = 0
    ids = ids.masked_fill(mask == 0, pad_id)
    assert (mask == 0).any()
    return {"input_ids": ids, "attention_mask": mask}


def tiny_search_run(base: Path) -> Path:
    """A finished 3-trial search (EXPORT_SPACE, accuracy and parameters) on a tiny random BERT and a
    160-row CSV task whose words follow their label 70% of the time (learnable, not trivial), with the
    run folder the CLI would write (.hydra/config.yaml included). Built once per test session under `base`."""
    from omegaconf import OmegaConf, open_dict

    from nas.study.search import run_search

    root = base / "tiny_search"
    run_dir = root / "run"
    if (run_dir / ".done").is_file():
        return run_dir
    env = task_folder(root, rows=160, own=0.7)
    cfg = compose([
        "model=hf", f"model.name_or_path={env['model']}", "data=file", f"data.path={env['csv']}",
        "data.split.validation=0.3", "+space=triple", f"search.n_trials={N_TRIALS}", "search.final_k=0",
        "search.sampler=random", "search.objectives=[accuracy,params]", "train.batch_size=16",
        "train.eval_batch_size=64", "train.lr=0.003", "base.lr=0.003", "train.max_steps=30", "train.distill_weight=0",
        "base.max_steps=30", "base.batch_size=16", f"cache_dir={env['cache']}", "max_length=32", "latency.warmup=1",
        "importance.max_batches=2", "importance.batch_size=16",
    ])
    with open_dict(cfg):
        cfg.space = OmegaConf.create(EXPORT_SPACE)
    run_search(cfg, run_dir)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # what `python -m nas.search` writes
    (run_dir / ".done").write_text("ok\n")
    return run_dir


def trained_trials(study: Any) -> list:
    """The trials that trained their shape (a repeated proposal reuses an earlier result)."""
    return [t for t in study.trials if "repeat_of" not in t.user_attrs]


# ---- configs and the command line ------------------------------------------------------------------


def no_final_stage(overrides: Any) -> list[str]:
    """search.final_k=0 unless the test asks for a final stage: the default trains the front's top-K
    400 steps more after the trials, which the tests of other features do not need to pay for."""
    return [] if any(str(o).startswith("search.final_k=") for o in overrides) else ["search.final_k=0"]


# Tiny searches time in torch fp32, measured: the default (onnxruntime int8 with the latency table,
# nas.cost.table) is exercised by the tests that name it (test_quantize.py, test_table.py).
TINY_LATENCY = ("latency.runtime=torch", "latency.precision=fp32", "latency.model=measured")


def make_cfg(env: dict, *overrides: str, space: dict | None = None) -> Any:
    """The composed config of a tiny search on `env` (task_folder's) with `space` (TINY_SPACE); a wrong key
    or type is the one-line ValueError the command line prints."""
    from omegaconf import OmegaConf, open_dict

    cfg = compose_or_refuse([
        "model=hf", f"model.name_or_path={env['model']}", "data=file", f"data.path={env['csv']}", "+space=triple",
        "search.n_trials=2", "train.max_steps=2", "train.batch_size=16", "train.eval_batch_size=64",
        "base.max_steps=2", "base.batch_size=16", f"cache_dir={env['cache']}", "max_length=32",
        "latency.warmup=1", "importance.max_batches=2", "importance.batch_size=16", *TINY_LATENCY,
        *no_final_stage(overrides), *overrides,
    ], config_name="config")
    with open_dict(cfg):
        cfg.space = OmegaConf.create(space or TINY_SPACE)
    return cfg


def space_overrides(space: dict = TINY_SPACE) -> list[str]:
    """Command-line overrides that turn `+space=triple` into `space` (the CLI only knows packaged spaces)."""
    out = ["+space=triple", f"space.name={space['name']}", f"space.align={space.get('align', 1)}",
           f"space.per_layer={str(space.get('per_layer', False)).lower()}"]
    for axis in ("layers", "heads", "ffn", "hidden", "context"):
        out.append(f"~space.axes.{axis}")
    for axis, raw in space["axes"].items():
        inner = ",".join(f"{k}:[{','.join(map(str, v))}]" if isinstance(v, list) else f"{k}:{v}"
                         for k, v in raw.items())
        out.append(f"+space.axes.{axis}={{{inner}}}")
    return out


def cli_args(env: dict, run_dir: Path, *overrides: str, space: dict | None = TINY_SPACE) -> list[str]:
    """`python -m nas.search` on the tiny model and CSV; one torch thread (the box has 2 busy cores).
    space=None leaves `+space=...` to the overrides."""
    return [
        sys.executable, "-m", "nas.search", f"hydra.run.dir={run_dir}", *(space_overrides(space) if space else []),
        "model=hf", f"model.name_or_path={env['model']}", "data=file", f"data.path={env['csv']}",
        "train.batch_size=16", "train.eval_batch_size=64", "train.threads=1", "base.max_steps=2",
        "base.batch_size=16", f"cache_dir={env['cache']}", "max_length=32", "latency.warmup=1",
        "importance.max_batches=2", "importance.batch_size=16", *TINY_LATENCY, *no_final_stage(overrides), *overrides,
    ]


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tmp_leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name)


def load(url: str, name: str) -> Any:
    import optuna

    return optuna.load_study(study_name=name, storage=url)


# ---- the newer families (tests/test_families.py) ---------------------------------------------------


def modernbert(*, layers: int = 4, hidden: int = 32, heads: int = 4, ffn: int = 37, positions: int = 128,
               labels: int = TINY["labels"], vocab: int = VOCAB, biases: bool = True, seed: int = 0) -> Any:
    """A random ModernBertForSequenceClassification: global attention every 2nd layer, a sliding window of 8
    tokens (short inputs see it), every bias on (a slipped bias row would show), random norm gains."""
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    cfg = ModernBertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=ffn, max_position_embeddings=positions, local_attention=8,
                           global_attn_every_n_layers=2, pad_token_id=0, cls_token_id=2, sep_token_id=3,
                           bos_token_id=2, eos_token_id=3, num_labels=labels, norm_bias=biases,
                           attention_bias=biases, mlp_bias=biases, classifier_bias=biases)
    torch.manual_seed(seed)
    model = ModernBertForSequenceClassification(cfg).eval()
    _random_norms(model)
    return model


def _random_norms(model: Any) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm) and module.weight is not None:
                module.weight.uniform_(0.5, 1.5)
                if module.bias is not None:
                    module.bias.uniform_(-0.2, 0.2)


def deberta(*, layers: int = 4, hidden: int = 32, heads: int = 4, ffn: int = 37, positions: int = 128,
            labels: int = TINY["labels"], vocab: int = VOCAB, v3: bool = True, seed: int = 0) -> Any:
    """A random DebertaV2ForSequenceClassification. v3: relative attention over 8 log buckets each way, keys shared
    (share_att_key), no absolute positions, a LayerNorm on the relative table; v2 (v3=False): own position
    projections (pos_key_proj / pos_query_proj), absolute positions, no buckets. Initialised at 10x DeBERTa's
    scale (initializer_range 0.2), so that its logits are of order one and a slipped unit shows."""
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    variant = (dict(position_buckets=8, share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
                    max_relative_positions=-1, type_vocab_size=0) if v3 else
               dict(position_buckets=-1, share_att_key=False, norm_rel_ebd="none", position_biased_input=True,
                    max_relative_positions=16, type_vocab_size=2))
    cfg = DebertaV2Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                          intermediate_size=ffn, max_position_embeddings=positions, relative_attention=True,
                          pos_att_type=["p2c", "c2p"], pad_token_id=0, num_labels=labels, initializer_range=0.2,
                          **variant)
    torch.manual_seed(seed)
    model = DebertaV2ForSequenceClassification(cfg).eval()
    _random_norms(model)
    return model


# vocab, hidden, query heads, key/value heads, head dim (explicit: not hidden / heads), FFN, positions, layers
QWEN3 = dict(vocab=VOCAB, hidden=64, heads=4, kv_heads=2, head_dim=24, ffn=48, positions=128, layers=4)


def qwen3(*, tied: bool = True, labels: int | None = None, seed: int = 0, layers: int = QWEN3["layers"],
          hidden: int = QWEN3["hidden"], ffn: int = QWEN3["ffn"], vocab: int = VOCAB) -> Any:
    """A random Qwen3 (head_dim 24 on a hidden of 64, 4 query heads on 2 key/value heads): a causal LM, or a
    classifier with `labels`; every RMSNorm gain random, q_norm / k_norm included (a slipped channel would show)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3ForSequenceClassification

    cfg = Qwen3Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=QWEN3["heads"], num_key_value_heads=QWEN3["kv_heads"],
                      head_dim=QWEN3["head_dim"], intermediate_size=ffn,
                      max_position_embeddings=QWEN3["positions"], tie_word_embeddings=tied, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    if labels is not None:
        cfg.num_labels = labels
    model = (Qwen3ForCausalLM(cfg) if labels is None else Qwen3ForSequenceClassification(cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def smollm3(*, seed: int = 0, layers: int = 8, vocab: int = VOCAB) -> Any:
    """A random SmolLM3 causal LM: 8 layers, rotary in all but every fourth (NoPE layers 3 and 7), 4 query heads on
    2 key/value heads of 16, random RMSNorm gains."""
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    cfg = SmolLM3Config(vocab_size=vocab, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=48, max_position_embeddings=128,
                        tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = SmolLM3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def random_scores(shape: BaseShape, seed: int = 0) -> ImportanceScores:
    """Importance scores in no particular order for `shape`, so a cut keeps scattered units, not the first k."""
    g = torch.Generator().manual_seed(seed)
    return ImportanceScores(layers=torch.rand(shape.num_layers, generator=g),
                            heads=torch.rand(shape.num_layers, shape.num_heads, generator=g),
                            ffn=torch.rand(shape.num_layers, shape.ffn_size, generator=g),
                            hidden=torch.rand(shape.hidden_size, generator=g), method="fisher")


def classifier_axes(space: Any) -> Any:
    """A search space without its vocabulary axis, which only a causal language model has (tests/test_vocab.py):
    the shipped spaces resolved on a BERT."""
    return dataclasses.replace(space, axes={k: v for k, v in space.axes.items() if k != "vocab"})
