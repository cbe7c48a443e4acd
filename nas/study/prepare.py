"""The shared first phase of every job: task, fine-tuned base, importance scores.

`prepare(cfg)` is what `nas.search`, the benchmarks and `nas.train` call before they prune.
Everything expensive in it is cached on disk under cfg.cache_dir.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nas.cut.importance import cached_scores
from nas.data.splits import hold_out_judge
from nas.data.tasks import load_task, make_loader, sorted_by_length, tokenize
from nas.cut.vocab import cached_ranking
from nas.data.text import lm_blocks, lm_chunks, lm_loader
from nas.models.gguf import gguf_file_of
from nas.models.loading import model_fingerprint
from nas.models.registry import base_shape
from nas.quality.finetune import BaseRecipe, TrainSettings, finetune_base_cached
from nas.quality.lm import lm_base_cached
from nas.spec import BaseShape
from nas.util import cfg_get, quiet_libraries, resolve_cache_dir

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    cfg: Any
    task: Any
    tokenizer: Any
    base: Any  # fine-tuned, unpruned model (reference and teacher)
    base_info: dict[str, Any]
    shape: BaseShape
    scores: Any  # ImportanceScores used for pruning
    cache_dir: Path | None
    timings: dict[str, float] = field(default_factory=dict)
    source_gguf: Path | None = None  # the GGUF file the base model came from (its tokenizer goes into GGUF exports)
    _tokenized: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def tokenized(self, split: str, context: int, *, tokenizer: Any = None) -> Any:
        """A split tokenized at min(context, max_length), memoised per context length. `tokenizer`: a language
        model's own when its vocabulary is cut (nas.cut.vocab.tokenizer_for), else the base's."""

        length = min(int(context), int(cfg_get(self.cfg, "max_length", 128)))
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        key = (split, length) if tokenizer is self.tokenizer else (split, length, id(tokenizer))
        if key not in self._tokenized and getattr(self.task, "is_lm", False):
            self._tokenized[key] = lm_blocks(self.task, split, tokenizer, block=length)
        if key not in self._tokenized:
            ds = tokenize(getattr(self.task, split), self.tokenizer, max_length=length)
            if split != "train":
                # Evaluation order does not matter: sorting by length makes batches of similar
                # lengths, so dynamic padding wastes almost nothing (about 2x faster here).
                ds = sorted_by_length(ds)
            self._tokenized[key] = ds
        return self._tokenized[key]

    def loader(self, split: str, context: int, *, batch_size: int, shuffle: bool, seed: int = 0,
               tokenizer: Any = None) -> Any:
        if getattr(self.task, "is_lm", False):
            return lm_loader(self.tokenized(split, context, tokenizer=tokenizer), batch_size=batch_size,
                             shuffle=shuffle, seed=seed)
        return make_loader(self.tokenized(split, context), self.tokenizer, batch_size=batch_size, shuffle=shuffle,
                           seed=seed, group_by_length=shuffle)

    def chunks(self, split: str, context: int) -> Any:
        """A language-modelling split's evaluation text for per-byte scores (nas.data.text.lm_chunks): pieces of
        min(context, max_length) tokens of the base's tokenizer, memoised."""
        length = min(int(context), int(cfg_get(self.cfg, "max_length", 128)))
        key = ("chunks", split, length)
        if key not in self._tokenized:
            self._tokenized[key] = lm_chunks(self.task, split, self.tokenizer, block=length)
        return self._tokenized[key]


def base_recipe(cfg: Any) -> Any:
    node = cfg_get(cfg, "base", {})
    return BaseRecipe.from_cfg({k: node[k] for k in ("max_epochs", "max_steps", "eval_every", "patience") if k in node})


def base_train_settings(cfg: Any) -> Any:
    """The base's optimiser settings (its length is base_recipe's: epochs, early stopping)."""

    return TrainSettings.from_cfg(
        cfg_get(cfg, "train", {}),
        max_steps=0,  # set from the recipe once the training split's size is known
        lr=float(cfg_get(cfg, "base.lr", 5e-5)),
        batch_size=int(cfg_get(cfg, "base.batch_size", 32)),
        distill_weight=0.0,
    )


def prepare(cfg: Any, *, importance_method: str | None = None, loaded: Callable[[], None] | None = None) -> Prepared:
    """Load the task, fine-tune (or load) the base, and compute (or load) importance scores. `loaded`: called once the
    task's data is read and checked, before anything expensive (a run prints its first line there)."""
    quiet_libraries()

    timings: dict[str, float] = {}
    cache_dir = resolve_cache_dir(cfg)
    model_name = cfg_get(cfg, "model.name_or_path")
    t0 = time.perf_counter()
    task = load_task(cfg["data"])
    if not getattr(task, "is_lm", False):  # the band's rows, out of every selection, the base's early stopping included
        task = hold_out_judge(task, float(cfg_get(cfg, "final.judge_share", 0.5)),
                              seed=int(cfg_get(cfg, "data.seed", 0) or 0))
        if task.judge is not None:
            log.info("validation: %d rows select (early stopping, checkpoints, rungs, trials), %d judge the band",
                     len(task.validation), len(task.judge))
    timings["data"] = time.perf_counter() - t0
    if loaded is not None:
        loaded()

    settings = base_train_settings(cfg)
    recipe = base_recipe(cfg)
    max_length = int(cfg_get(cfg, "max_length", 128))
    key_parts = {"model": model_fingerprint(model_name), "data": task.fingerprint}
    t0 = time.perf_counter()
    if getattr(task, "is_lm", False):  # language modelling: the LM fine-tuned on the task's text (nas.quality.lm)
        base, tokenizer, info = lm_base_cached(model_name=model_name, task=task, max_length=max_length,
                                               cache_dir=cache_dir, key_parts=key_parts, recipe=recipe,
                                               settings=settings)
    else:
        base, tokenizer, info = finetune_base_cached(
            model_name=model_name, task=task, settings=settings, max_length=max_length,
            cache_dir=cache_dir, key_parts=key_parts, recipe=recipe,
        )
    timings["base_finetune"] = time.perf_counter() - t0
    shape = base_shape(base.config)
    log.info("base: %s %s (%s)", shape, {k: v for k, v in info.items() if k.endswith(("accuracy", "perplexity"))},
             "cached" if info.get("cached") else f"{info['train_seconds']:.0f}s")

    prepared = Prepared(cfg=cfg, task=task, tokenizer=tokenizer, base=base, base_info=info, shape=shape,
                        scores=None, cache_dir=cache_dir, timings=timings, source_gguf=gguf_file_of(model_name))
    method = importance_method or str(cfg_get(cfg, "importance.method", "fisher"))
    imp_batch = int(cfg_get(cfg, "importance.batch_size", 32))
    seed = int(cfg_get(cfg, "train.seed", 0))
    t0 = time.perf_counter()
    prepared.scores = cached_scores(
        base,
        lambda: prepared.loader("train", max_length, batch_size=imp_batch, shuffle=True, seed=seed),
        method=method,
        cache_dir=cache_dir,
        # the base's own cache key: scores follow the base's weights, whatever setting changed them
        key_parts={**key_parts, "base": info["key"], "seed": seed, "batch_size": imp_batch, "max_length": max_length},
        max_batches=int(cfg_get(cfg, "importance.max_batches", 16)),
    )
    timings["importance"] = time.perf_counter() - t0
    if getattr(task, "is_lm", False):  # the vocabulary's ranking on the training text (SubnetSpec.vocab)
        t0 = time.perf_counter()
        ranking = cached_ranking(tokenizer, task, cache_dir=cache_dir)
        prepared.scores = replace(prepared.scores, vocab=ranking)
        timings["vocabulary"] = time.perf_counter() - t0
    return prepared
