"""One trial, read straight down: spec -> candidate -> cost -> quality -> metrics.

    candidate  prune the base to the spec (nas.cut.prune), then the training-free recovery (nas.cut.recovery)
    cost       real-input latency paired with the base (nas.cost.latency), FLOPs, parameters, size
    quality    the estimator: `finetune` (brief distilled fine-tune), `supernet` (the candidate is cut
               from the elastic-trained supernet instead of the base: no training) or `none` (accuracy
               as pruned and recovered: the zero-cost proxy); each then measures validation accuracy

The study loop (sampling, repeats, stopping, reports) lives in nas.search and calls
`Evaluator.evaluate`; the final stage (nas.study.final) reuses its cut, measurements and training data.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nas.cost.latency import model_size
from nas.cut.heal import Calibration, HealSettings, heal
from nas.cut.prune import cut_vocabulary, prune_model
from nas.cut.recovery import calibration_batches, recover
from nas.cut.vocab import tokenizer_for
from nas.data.transfer import build_transfer_texts
from nas.deploy.gguf import carried_tokenizer
from nas.deploy.imatrix import calibration_ids, input_moments, recording_moments
from nas.deploy.llamacpp import file_text_nll
from nas.deploy.mixed import cached_sensitivity, measure_sensitivity
from nas.deploy.onnx import onnx_session, session_accuracy
from nas.models.registry import family_for
from nas.models.slicing import kept_units
from nas.quality.distill import DistillData, DistillRun, cached_teacher_logits
from nas.quality.finetune import HiddenMap, finetune
from nas.quality.lm import finetune_lm, positions_fraction
from nas.quality.metrics import TextScore, anchor_id, evaluate, text_score
from nas.util import cache_key, cfg_get

ESTIMATORS = ("finetune", "supernet", "none")


class Infeasible(Exception):
    """The candidate breaks a constraint (e.g. search.max_latency_ms): recorded, not trained."""


@dataclass
class Evaluator:
    prep: Any  # nas.study.prepare.Prepared
    timer: Any  # nas.cost.latency.PairedTimer
    train: Any  # nas.quality.finetune.TrainSettings of a trial's fine-tune
    recovery: Any  # nas.cut.recovery.RecoverySettings
    estimator: str = "finetune"
    max_latency_ms: float | None = None
    clock: Callable[[str, float], None] = lambda phase, s: None
    teacher_cache: dict[bytes, Any] = field(default_factory=dict)
    supernet: Any = None  # nas.quality.supernet.Supernet, for estimator=supernet
    lm: bool = False  # a language-modelling task: the quality is perplexity (nas.quality.lm)
    heal_settings: HealSettings = field(default_factory=lambda: HealSettings(method="none"))  # decoders (nas.cut.heal)
    _transfer: list[str] | None = field(default=None, repr=False)  # the final stage's transfer texts, built once
    _calibration: Calibration | None = field(default=None, repr=False)  # the base's streams on calibration blocks
    _base_moments: dict[str, Any] | None = field(default=None, repr=False)  # the base's input moments (GGUF names)
    _calibration_ids: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"search.estimator={self.estimator!r} is not known; allowed: {', '.join(ESTIMATORS)}")
        if self.estimator == "supernet" and self.supernet is None:
            raise ValueError("search.estimator=supernet needs the trained supernet (nas.quality.supernet.cached_supernet)")

    # -- the four steps ---------------------------------------------------------------------------
    def candidate(self, spec: Any) -> tuple[Any, dict[str, Any]]:
        t0 = time.perf_counter()
        structure = replace(spec, vocab=None)  # the vocabulary is cut last: healing reads the base's token ids
        if self.estimator == "supernet":  # the same physical cut, of the elastic-trained weights
            model = self.supernet.slice(structure)
        else:
            model = prune_model(self.prep.base, structure, self.prep.scores)
        metrics: dict[str, Any] = {"seconds_prune": time.perf_counter() - t0}
        self.clock("pruning", metrics["seconds_prune"])

        if self.heal_settings.active and self.family.heals:  # decoders: closed-form healing from calibration text
            t0 = time.perf_counter()
            report = heal(model, self.prep.base, spec, self.prep.scores, self.calibration(), self.heal_settings)
            metrics["heal_error_ratio"] = report.ratio()
            metrics["seconds_heal"] = time.perf_counter() - t0
            model.nas_moments = report.moments  # read off the same pass; dropped once the model trains (fit)
            self.clock("healing", metrics["seconds_heal"])
        # a supernet slice was trained to work as it is; decoders are healed instead (recovery_methods: none)
        if (self.recovery.active and self.estimator != "supernet"
                and self.recovery.method in family_for(self.prep.base).recovery_methods):
            t0 = time.perf_counter()
            batches = calibration_batches(self.prep, spec.context, self.recovery, seed=self.train.seed)
            report = recover(model, self.prep.base, spec, self.prep.scores, batches, self.recovery)
            metrics["recovery_error_ratio"] = report.ratio()
            metrics["seconds_recovery"] = time.perf_counter() - t0
            self.clock("recovery", metrics["seconds_recovery"])
        if spec.vocab is not None:  # the healing pass's input moments stand: a cut vocabulary leaves every input width
            cut_vocabulary(model, spec, self.prep.scores)
            metrics["vocab"] = int(model.config.vocab_size)
        return model, metrics

    def cost(self, model: Any, spec: Any, *, name: str = "candidate", precision: str | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        lat = self.timer.measure(model, context=spec.context, name=name, precision=precision)
        metrics = {**lat, "flops": self.timer.flops(model, context=spec.context), **model_size(model)}
        metrics["seconds_latency"] = time.perf_counter() - t0
        self.clock("latency", metrics["seconds_latency"])
        if self.max_latency_ms is not None and lat["latency_ms"] > self.max_latency_ms:
            metrics["infeasible"] = True
            metrics["fail_reason"] = f"latency {lat['latency_ms']:.2f} ms > search.max_latency_ms={self.max_latency_ms}"
        return metrics

    def quality(self, model: Any, spec: Any, *, name: str = "candidate", precision: str | None = None) -> dict[str, Any]:
        """`precision` (a space's precision axis): the validation accuracy is the model's as it will run
        there (its ONNX session, int8 quantized), with the fp32 accuracy beside it. A language model timed in
        llama.cpp is scored there too: the validation perplexity of the GGUF file it was timed from."""
        metrics: dict[str, Any] = {}
        if self.estimator == "finetune":
            t0 = time.perf_counter()
            result = self.fit(model, spec, self.train)
            metrics["seconds_finetune"] = time.perf_counter() - t0
            self.clock("fine-tuning", metrics["seconds_finetune"])
            if result["losses"]:
                metrics["final_loss"] = float(sum(result["losses"][-5:]) / len(result["losses"][-5:]))
        t0 = time.perf_counter()
        if self.lm and self.in_llamacpp:
            path = self.timer.gguf_path(name, precision)
            if not path.is_file():  # a trial whose cost was not measured in this process
                self.timer.write_gguf(model, path, precision=precision)
            metrics.update(self.gguf_text_metrics(path, spec, "validation", "val"))
            # test as deployed too, while the file is here (a report only: nothing in the search reads it)
            metrics.update(self.gguf_text_metrics(path, spec, "test", "test"))
            # kept while the trial is on the front (Search drops the others' files with their weights): an untrained
            # final member is timed from this very file instead of writing it again
            metrics["seconds_eval"] = time.perf_counter() - t0
            self.clock("evaluation", metrics["seconds_eval"])
            return metrics
        if self.lm:  # in torch: per byte of the validation text, its own tokenizer
            metrics.update(self.text_metrics(model, spec, "validation", "val"))
            metrics["seconds_eval"] = time.perf_counter() - t0
            self.clock("evaluation", metrics["seconds_eval"])
            return metrics
        quality, value = self.quality_of(model, spec, "validation")
        metrics[f"val_{quality}"] = value
        path = self.timer.deployed_file(model, context=spec.context, name=name, precision=precision) \
            if precision is not None and not self.lm else None
        if path is not None:
            metrics["val_accuracy_fp32"] = value
            metrics["val_accuracy"] = self.session_accuracy(path, spec.context, "validation")
        metrics["seconds_eval"] = time.perf_counter() - t0
        self.clock("evaluation", metrics["seconds_eval"])
        return metrics

    def evaluate(self, spec: Any, *, record: Callable[[str, Any], None], name: str = "candidate",
                 precision: str | None = None) -> Any:
        """Every step in order; each metric is handed to `record` as soon as it is known (a killed
        trial keeps what it measured). Returns the trained model; raises Infeasible."""
        model, metrics = self.candidate(spec)
        for key, value in metrics.items():
            record(key, value)
        cost = self.cost(model, spec, name=name, precision=precision)
        for key, value in cost.items():
            record(key, value)
        if cost.get("infeasible"):
            raise Infeasible(cost["fail_reason"])
        for key, value in self.quality(model, spec, name=name, precision=precision).items():
            record(key, value)
        return model

    # -- shared by the steps and the final stage ---------------------------------------------------
    def fit(self, model: Any, spec: Any, settings: Any, *, progress: str | None = None) -> dict[str, Any]:
        model.__dict__.pop("nas_moments", None)  # the healing pass's input moments no longer hold
        loader = self.prep.loader("train", spec.context, batch_size=settings.batch_size, shuffle=True, seed=settings.seed,
                                  tokenizer=self.tokenizer(model))

        hidden = settings.distill == "hidden" and family_for(self.prep.base).hidden_distill
        teacher = self.prep.base if settings.distill_weight > 0 or hidden else None
        return finetune(model, loader, settings, teacher=teacher, teacher_cache=self.teacher_cache,
                        hidden_map=self.hidden_map(spec) if hidden else None, progress=progress)

    def fit_lm(self, model: Any, spec: Any, settings: Any, *, progress: str, deadline: float | None = None,
               eval_every: int = 25, patience: int = 3) -> dict[str, Any]:
        """A language model's final training (nas.quality.lm.finetune_lm): up to settings.max_steps steps distilled
        from the base (top-k KL, cached per block), in settings' precision (bf16 where native), validation
        perplexity every `eval_every` steps with early stopping, the best checkpoint kept (possibly the model as it
        came), no step started after `deadline` (time.perf_counter())."""
        moments = model.__dict__.pop("nas_moments", None)  # the healing pass's input moments hold until it trains
        tokenizer = self.tokenizer(model)  # a cut vocabulary trains and validates on its own tokenization
        loader = self.prep.loader("train", spec.context, batch_size=settings.batch_size, shuffle=True, seed=settings.seed,
                                  tokenizer=tokenizer)
        val = self.prep.loader("validation", spec.context, batch_size=self.train.eval_batch_size, shuffle=False,
                               tokenizer=tokenizer)
        result = finetune_lm(model, loader, val, steps=settings.max_steps, lr=settings.lr,
                           weight_decay=settings.weight_decay, warmup_ratio=settings.warmup_ratio,
                           eval_every=eval_every, patience=patience, what=progress, teacher=self.prep.base,
                           distill_weight=settings.distill_weight, temperature=settings.temperature,
                           topk=settings.distill_topk, teacher_cache=self.teacher_cache,
                           precision=settings.resolved_precision, deadline=deadline,
                           positions=positions_fraction(model, settings.lm_positions), seed=settings.seed)
        if result["best_step"] == 0 and moments:  # it ends with the weights it came with: their moments still hold
            model.nas_moments = moments
        return result

    def lm_baselines(self, precision: str | None) -> tuple[str, ...]:
        """What a language model's final member is timed against: the base at the run's reference type, and the
        base quantized alike when the member runs at another type (nas.cost.latency.BASELINES)."""
        if precision in (None, self.timer.settings.precision):
            return ("quantized_base",)
        return ("reference_base", "quantized_base")

    def quality_of(self, model: Any, spec: Any, split: str) -> tuple[str, float]:
        """("accuracy", value), or ("byte_perplexity", value) on a language-modelling task (in torch, per byte of the
        split's evaluation text, nas.quality.metrics.text_score)."""
        if self.lm:
            return "byte_perplexity", self.text_metrics(model, spec, split, "x")["x_byte_perplexity"]
        loader = self.prep.loader(split, spec.context, batch_size=self.train.eval_batch_size, shuffle=False)
        return evaluate(model, loader, lm=self.lm)

    def tokenizer(self, model: Any) -> Any:
        """The tokenizer `model` reads: the base's, cut to its vocabulary where that is cut (nas.cut.vocab)."""
        return tokenizer_for(model, self.prep.tokenizer)

    def text_metrics(self, model: Any, spec: Any, split: str, prefix: str, suffix: str = "") -> dict[str, float]:
        """A language model's per-byte and per-token scores on `split`'s evaluation text, in torch
        (nas.quality.metrics.TextScore.metrics: {prefix}_byte_perplexity, _perplexity, _bits_per_byte, _tokens)."""
        chunks = self.prep.chunks(split, spec.context)
        score = text_score(model, self.tokenizer(model), chunks, batch_size=self.train.eval_batch_size)
        return score.metrics(prefix, suffix)

    def sensitivity(self, low: str, *, tokens: int = 1024, say: Callable[[str], None] = lambda text: None) -> Any:
        """Each tensor group's cost at `low` against q8_0 everywhere, in bits per byte of the first `tokens` tokens of
        the validation text (nas.deploy.mixed.measure_sensitivity, GPTQ under the base's input moments), measured on
        the base once and cached under cache_dir by base, text and type."""
        chunks = self.prep.chunks("validation", self.prep.shape.max_positions).head(self.prep.tokenizer, tokens)
        key = cache_key(what="sensitivity", version=1, base=self.prep.base_info.get("key"), data=self.prep.task.fingerprint,
                        low=low, tokens=chunks.base_tokens, heal_blocks=self.heal_settings.blocks)
        path = None if self.prep.cache_dir is None else Path(self.prep.cache_dir) / "sensitivity" / f"{key}.json"

        def measure() -> Any:
            base = self.prep.base
            return measure_sensitivity(base, lambda m: text_score(m, self.prep.tokenizer, chunks,
                                                                  batch_size=self.train.eval_batch_size).nll,
                                       self.moments(base), low=low, bytes_=chunks.bytes, tokens=chunks.base_tokens,
                                       say=say)

        t0 = time.perf_counter()
        result, _ = cached_sensitivity(path, measure)
        self.clock("sensitivity", time.perf_counter() - t0)
        return result

    def gguf_text_metrics(self, path: Any, spec: Any, split: str, prefix: str, suffix: str = "") -> dict[str, float]:
        """text_metrics of the GGUF file at `path` in llama.cpp, its own tokenizer reading the same text."""
        chunks = self.prep.chunks(split, spec.context if spec is not None else self.prep.shape.max_positions)
        ids, anchor = None, None
        if self.timer.source_gguf is None and carried_tokenizer(self.prep.tokenizer) is None:
            # a timing file's stand-in vocabulary tokenizes nothing: the pieces in the model's own ids (the base's)
            ids = self.prep.tokenizer(list(chunks.texts), add_special_tokens=False)["input_ids"]
            anchor = anchor_id(self.prep.tokenizer)
        # scoring is not timing: every core (the timer's thread count is for the paired rounds)
        nll, tokens = file_text_nll(path, chunks.texts, threads=os.cpu_count() or 1, token_ids=ids,
                                    anchor=anchor)
        return TextScore(nll=nll, tokens=tokens, bytes=chunks.bytes, base_tokens=chunks.base_tokens).metrics(prefix, suffix)

    def deployed(self, model: Any, spec: Any, *, name: str, precision: str | None = None,
                 baselines: Any = None, reuse: bool = False, scored: Any = None) -> dict[str, Any]:
        """The model as it will run (latency.runtime and latency.precision, e.g. its int8 ONNX export, or `precision`
        from a space's precision axis): validation and test accuracy there, and its speedups over each baseline
        (`baselines`: nas.cost.latency.BASELINES names, default the timer's), each timed in paired rounds with the
        base (nas.cost.latency.PairedTimer.measure_baselines). A language model: its perplexity as it runs (its GGUF
        file in llama.cpp), or in torch. `reuse`: the file already written under `name` holds these weights;
        `scored`: that file's scores as deployed, already taken (a language model's `*_deployed` keys): not taken again."""
        t0 = time.perf_counter()
        out = self.timer.measure_baselines(model, context=spec.context, name=name, precision=precision,
                                           baselines=baselines, reuse=reuse)
        self.clock("latency", time.perf_counter() - t0)
        if self.lm and scored:
            return {**out, **scored}
        if self.lm:
            t0 = time.perf_counter()
            gguf = self.timer.gguf_path(name, precision) if self.in_llamacpp else None
            for split, key in (("validation", "val"), ("test", "test")):
                out.update(self.gguf_text_metrics(gguf, spec, split, key, "_deployed") if gguf else
                           self.text_metrics(model, spec, split, key, "_deployed"))
            self.clock("evaluation", time.perf_counter() - t0)
            return out
        path = self.timer.deployed_path(name, precision)
        t0 = time.perf_counter()
        for split, key in self.scored_splits:
            out[f"{key}_accuracy_deployed"] = (self.accuracy(model, spec, split) if path is None else  # torch eager fp32
                                               self.session_accuracy(path, spec.context, split))
        self.clock("evaluation", time.perf_counter() - t0)
        return out

    @property
    def scored_splits(self) -> tuple[tuple[str, str], ...]:
        """(split, key) a classifier is scored on as deployed: validation, test, and the judge rows where held out
        (nas.data.splits.hold_out_judge: the final stage's band reads only those)."""
        judge = (("judge", "judge"),) if self.judge_held_out else ()
        return (("validation", "val"), ("test", "test"), *judge)

    def judge_accuracy(self, model: Any, spec: Any) -> float | None:
        """Accuracy on the judge rows (in torch), or None where none are held out."""
        return self.accuracy(model, spec, "judge") if self.judge_held_out else None

    @property
    def judge_held_out(self) -> bool:
        """Whether part of validation is held out for the final stage's band (nas.data.splits.hold_out_judge)."""
        return getattr(self.prep.task, "judge", None) is not None

    def session_accuracy(self, path: Any, context: int, split: str) -> float:
        """Accuracy on `split` of the ONNX model at `path` (its onnxruntime session), inputs cut at `context`."""
        session = onnx_session(path, threads=max(1, self.timer.settings.threads))
        loader = self.prep.loader(split, context, batch_size=self.train.eval_batch_size, shuffle=False)
        return session_accuracy(session, loader)

    def base_deployed(self) -> dict[str, Any]:
        """The unpruned base as it would run in this runtime and precision (quantization alone): its
        validation and test accuracy there (perplexity: its GGUF file in llama.cpp)."""
        self.timer.base_pass()  # exports (and quantizes) the base once
        if self.lm:
            if self.timer.settings.runtime != "llamacpp":
                return {}
            out: dict[str, Any] = {}
            for split, key in (("validation", "val"), ("test", "test")):
                out.update(self.gguf_text_metrics(self.timer.gguf_path("base"), None, split, key, "_deployed"))
            return out
        path = self.timer.deployed_path("base")
        if path is None:
            return {}
        context = int(self.prep.shape.max_positions)
        return {f"{key}_accuracy_deployed": self.session_accuracy(path, context, split)
                for split, key in self.scored_splits}

    @property
    def family(self) -> Any:
        return family_for(self.prep.base)

    @property
    def in_llamacpp(self) -> bool:
        return self.timer is not None and self.timer.settings.runtime == "llamacpp"

    def calibration_ids(self, tokenizer: Any = None) -> Any:
        """The calibration blocks (prune.heal_blocks of them, max_length tokens, from the training split only):
        what healing fits and importance matrices are computed on. Seeded by train.seed. `tokenizer`: a cut
        vocabulary's (the same text in its ids), else the base's (memoised)."""
        if tokenizer is not None and tokenizer is not self.prep.tokenizer:
            return calibration_ids(self.prep.task, tokenizer, blocks=self.heal_settings.blocks,
                                   max_length=int(cfg_get(self.prep.cfg, "max_length", 128)), seed=self.train.seed)
        if self._calibration_ids is None:
            self._calibration_ids = calibration_ids(self.prep.task, self.prep.tokenizer, blocks=self.heal_settings.blocks,
                                                    max_length=int(cfg_get(self.prep.cfg, "max_length", 128)),
                                                    seed=self.train.seed)
        return self._calibration_ids

    def calibration(self) -> Calibration:
        """The base's residual streams on the calibration blocks (computed once per run)."""
        if self._calibration is None:
            t0 = time.perf_counter()
            with recording_moments(self.prep.base) as moments:  # one pass of the base gives both
                self._calibration = Calibration.of(self.prep.base, self.calibration_ids(),
                                                   batch_size=self.heal_settings.batch_size)
            self._base_moments = self._base_moments or moments()
            self.clock("healing", time.perf_counter() - t0)
        return self._calibration

    def moments(self, model: Any) -> dict[str, Any]:
        """`model`'s input second moments per GGUF tensor on the calibration blocks (training text only): what GPTQ
        rounds under and, on their diagonal, the importance matrix llama.cpp's quantizer weighs by. The base's are
        computed once per run; a healed candidate's are read off its healing pass; any other's computed here."""
        t0 = time.perf_counter()
        try:
            if model is self.prep.base:
                if self._base_moments is None and self.heal_settings.active:
                    self.calibration()  # its pass records the base's moments too
                if self._base_moments is None:
                    self._base_moments = input_moments(model, self.calibration_ids())
                return self._base_moments
            stash = getattr(model, "nas_moments", None)
            if stash:
                return stash
            tokenizer = self.tokenizer(model)  # a cut vocabulary reads the calibration text in its own ids
            ids = self.calibration_ids() if tokenizer is self.prep.tokenizer else self.calibration_ids(tokenizer)
            return input_moments(model, ids)
        finally:
            self.clock("calibration statistics", time.perf_counter() - t0)

    @property
    def pad_id(self) -> int:
        pad = self.prep.tokenizer.pad_token_id
        return int(pad if pad is not None else 0)

    def distill_data(self, context: int, transfer: Any, *, say: Callable[[str], None] = lambda text: None) -> Any:
        """The final members' training rows at `context`: the labelled training split and the transfer set
        (nas.data.transfer), each row with the base's logits on it (computed once, cached on disk by base
        and text set). The teacher sees each text at the run's max_length; the student at `context`."""
        prep = self.prep
        max_length = int(cfg_get(prep.cfg, "max_length", 128))
        texts = [str(t) for t in prep.task.train["text"]]
        common = {"max_length": max_length, "cache_dir": prep.cache_dir, "base_key": prep.base_info["key"], "say": say,
                  "precision": self.train.resolved_precision}
        logits = cached_teacher_logits(prep.base, texts, prep.tokenizer, name="training", **common)
        if transfer is not None:
            transfer = transfer.for_task(len(texts))  # auto: augment on a task with few labels
        if self._transfer is None:
            self._transfer = build_transfer_texts(transfer, prep.task) if transfer is not None else []
            if self._transfer:
                say(f"transfer set: {len(self._transfer)} {transfer.source} texts (none equal to a validation or test text)")
        extra = self._transfer
        extra_logits = cached_teacher_logits(prep.base, extra, prep.tokenizer, name=transfer.source, **common) \
            if extra else None
        return DistillData.build(prep.tokenizer, texts, [int(x) for x in prep.task.train["label"]], context=context,
                                 teacher=logits, transfer_texts=extra, transfer_teacher=extra_logits,
                                 transfer_share=transfer.share if extra else 0.0)

    def distill_run(self, model: Any, spec: Any, recipe: Any, data: Any, *, start_step: int = 0,
                    exits: Any = None) -> Any:
        """A member's final training (nas.quality.distill.DistillRun) on `data` (distill_data's), validated
        on this task's validation split at the spec's context; the base is the teacher (live, for its
        hidden states, with distill=hidden on an encoder). `exits` (nas.quality.exits.ExitTraining): early-exit
        heads trained with it."""
        hidden = recipe.train.distill == "hidden" and self.family.hidden_distill
        return DistillRun(model, data, recipe, pad_id=self.pad_id, teacher=self.prep.base,
                          hidden_map=self.hidden_map(spec) if hidden else None, start_step=start_step, exits=exits,
                          val_loader=self.prep.loader("validation", spec.context, batch_size=self.train.eval_batch_size,
                                                      shuffle=False))

    def accuracy(self, model: Any, spec: Any, split: str) -> float:
        return self.quality_of(model, spec, split)[1]

    def hidden_map(self, spec: Any) -> Any:
        kept = kept_units(self.prep.shape, spec, self.prep.scores)
        return HiddenMap(layers=tuple(spec.layers), channels=kept.hidden)
