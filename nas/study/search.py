"""One search run, start to end: settings -> the prepared base -> the study loop -> final stage ->
test evaluation -> reports.

`Search` holds what the run needs (settings, the prepared base, the latency timer, the trial
evaluator) and wires the pieces together; each piece lives in its own module:

    nas.study.prepare   task, fine-tuned base, importance scores (cached)
    nas.study.trial     one trial: spec -> candidate -> cost -> quality
    nas.study.loop      sampling, repeats, dead workers, stopping, reports after each trial
    nas.study.final     the final stage and the front's test evaluation
    nas.study.report    trials.csv, pareto.csv / .png / .html, best.yaml
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf

from nas.cost.generation import resolve_mode
from nas.cost.latency import LatencySettings, PairedTimer, model_size
from nas.cost.table import Grid, cached_table, sample_widths
from nas.cut.heal import heal_settings
from nas.cut.prune import cut_vocabulary
from nas.cut.recovery import RecoverySettings
from nas.data.tasks import length_summary, split_token_lengths
from nas.data.text import is_lm_data
from nas.deploy.gguf_quant import parse_mix
from nas.deploy.mixed import describe as describe_sensitivity
from nas.models.loading import check_family, module_names, read_config
from nas.models.registry import base_shape, family_for_config
from nas.quality.finetune import TrainSettings
from nas.quality.metrics import quality_objective, quality_text
from nas.quality.supernet import SupernetSettings, cached_supernet
from nas.spec import SubnetSpec
from nas.study.console import shape_attrs
from nas.study.final import evaluate_front_on_test, final_stage
from nas.study.loop import StudyLoop
from nas.study.preflight import preflight, writable_folder
from nas.study.prepare import prepare
from nas.study.report import write_reports
from nas.study.settings import (
    LATENCY_DEFINITION,
    OBJECTIVE_ATTR,
    QUANT_ALONE_ATTR,
    FinalSettings,
    SearchSettings,
    chosen_space,
    final_train_settings,
)
from nas.study.space import ATTENTION_AXES, check_precision_axis, context_cap, task_token_lengths, task_vocabulary
from nas.study.storage import open_study, storage_url
from nas.study.trial import Evaluator, Infeasible
from nas.study.weights import RunWeights
from nas.util import cpu_features, describe_cpu, resolve_cache_dir

log = logging.getLogger("nas.search")


@dataclass
class PhaseClock:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, s: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + s


class Search:
    """Owns the prepared base, the study and the per-trial evaluation."""

    def __init__(self, cfg: Any, run_dir: str | Path, *, console: Any = None) -> None:
        self.cfg = cfg
        self.run_dir = writable_folder(run_dir, "hydra.run.dir")
        container = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        # Cheap checks first: nothing expensive starts on a bad setting.
        self.space = chosen_space(container)
        self.settings = SearchSettings.from_cfg(container.get("search", {}))
        # A language-modelling task (plain text, nas.data.text): its quality is perplexity (nas.quality.lm).
        self.lm = is_lm_data(container.get("data"))
        # auto: a language model's trials are scored right after closed-form healing (no training: on a CPU a
        # trial's steps cannot heal a deep cut); a classifier's get a brief fine-tune
        estimator = self.settings.estimator if self.settings.estimator != "auto" else ("none" if self.lm else "finetune")
        self.settings = replace(self.settings, objectives=quality_objective(self.settings.objectives, lm=self.lm),
                                estimator=estimator)
        if self.lm and self.settings.estimator == "supernet":
            raise ValueError("search.estimator=supernet is for classification tasks; a language-modelling task "
                             "allows: finetune, none")
        self.train_settings = TrainSettings.from_cfg(container.get("train", {}))
        self.latency_model_asked = str((container.get("latency") or {}).get("model", "measured"))
        self.latency = LatencySettings.from_cfg(container.get("latency")).resolved(lm=self.lm)
        if self.space.precisions:
            check_precision_axis(self.space, lm=self.lm, runtime=self.latency.runtime)
        if self.lm and self.latency.model == "table":
            raise ValueError("latency.model=table knows encoder classifiers; a language-modelling task is timed "
                             "generating: set latency.model=measured (or auto)")
        self.recovery = RecoverySettings.from_cfg(container.get("prune")).resolved(self.settings.estimator)
        self.heal = heal_settings(container.get("prune"))
        self.supernet_settings = SupernetSettings.from_cfg(container.get("supernet"))
        self.supernet: Any = None
        self.final_settings = final_train_settings(container)  # a language model's fixed-length final training
        self.final = FinalSettings.from_cfg(container)
        self._exits_possible()  # exits.layers=all or a list where exits cannot run: refused before any work
        if self.final.members and not self.lm:
            self.final.transfer.check()  # a missing transfer file or column: refused before any work
        self.evaluator: Evaluator | None = None  # built once the base is ready
        self.max_length = container.get("max_length", 128)
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int):
            raise ValueError(f"max_length={self.max_length!r} must be an integer (tokens)")
        self.console = console
        self.clock = PhaseClock()
        self.started = time.perf_counter()  # search.time_budget counts from here: preparation included
        self.prep: Any = None
        self.weights: RunWeights | None = None  # the run's model files, once the base is ready
        self.timer: PairedTimer | None = None  # built once the base is ready
        self.task_lengths: dict[str, Any] = {}
        self.base_metrics: dict[str, Any] = {}
        self.teacher_cache: dict[bytes, Any] = {}
        self.study: Any = None  # opened by prepare's checks, before any expensive work
        self.machine: dict[str, Any] = {}  # the CPU and its features (nas.util.cpu_features), read by prepare
        self.loop: StudyLoop | None = None  # the study loop of the last run()

    # -- phase 1 -------------------------------------------------------------------------
    def prepare(self) -> None:
        # Settings, files, max_length and the storage (the study is opened here), before any expensive work.
        self.study = preflight(self.cfg, self.run_dir, settings=self.settings)
        # a study continued in another runtime / precision / latency model: refused before any work
        settings = replace(self.latency, generation=resolve_mode(self.latency.generation, lm=self.lm,
                                                                 settings=self.latency))
        self._check_latency_definition(self.study, {**asdict(settings), "keep_fp32": list(settings.keep_fp32)})
        # The space must fit the base model: checked on its config, before any training.
        base_config = read_config(self.cfg["model"]["name_or_path"])
        # Fractions and context quantiles become sizes here (printed once the inputs are known good,
        # stored in the study).
        check_family(base_config, lm=self.lm)
        if self.latency.keep_fp32:  # a typo would quietly quantize the layer it meant to protect
            self.latency.quant.check_modules(module_names(base_config))
        family = family_for_config(base_config)
        self._exits_possible(base_config)
        if not family.per_layer_shapes and (self.space.per_layer or set(ATTENTION_AXES) & set(self.space.axes)):
            raise ValueError(f"space.per_layer=true / attn_none / attn_linear: {family.name} models have one shape in "
                             f"every layer (llama.cpp's {family.gguf_arch} graph); allowed: space.per_layer=false "
                             "without the attention axes")
        if self.settings.estimator == "supernet" and not family.supernet:
            raise ValueError(f"search.estimator=supernet knows the BERT-style encoders' layers; {family.name} models "
                             "allow: finetune, none")
        if self.latency.model == "table" and not family.latency_table:
            if self.latency_model_asked != "auto":
                raise ValueError(f"latency.model=table knows encoder classifiers; {family.name} models: set "
                                 "latency.model=measured (or auto)")
            self.latency = replace(self.latency, model="measured")  # auto: every trial timed instead
        shape = base_shape(base_config)
        lengths = None
        if self.space.needs_lengths:
            lengths = task_token_lengths(self.cfg, cap=context_cap(shape, self.max_length))
        vocabulary = None
        if "vocab" in self.space.axes:
            if not self.lm:
                raise ValueError(f"space {self.space.name}: axis vocab (vocabulary pruning) is for language models on "
                                 "plain text (data=text, data=shakespeare); this task is classification")
            vocabulary = task_vocabulary(self.cfg)  # the training text's tokens, ranked (cached; no model loaded)
        self.space = self.space.resolve(shape, max_length=self.max_length, lengths=lengths, vocabulary=vocabulary)
        self.machine = cpu_features()
        t0 = time.perf_counter()
        # the run's first line once the settings and the data are known good (a refusal stays one line): what the
        # figures depend on, int8 gains less without VNNI, bf16 training needs native bf16
        self.prep = prepare(self.cfg, loaded=lambda: self._say(
            f"machine: {describe_cpu(self.machine)}; training precision {self.train_settings.resolved_precision}"))
        self.space.validate(self.prep.shape)
        self._say(f"space {self.space.name} on {shape.num_layers}L/{shape.num_heads}H/{shape.ffn_size}F/"
                  f"{shape.hidden_size}D: {self.space.describe()}")
        for phase, s in self.prep.timings.items():
            self.clock.add(phase, s)
        self.task_lengths = self._task_lengths()
        self.timer = PairedTimer.for_prepared(self.prep, self.latency, max_length=self.max_length)
        self.timer.fast_export = True  # trials and final members: the fast exporter (nas.deploy.onnx)
        if self.latency.model == "table":
            self.timer.table = self._latency_table()
        if self.settings.estimator == "supernet":
            self.supernet = self._train_supernet()
        self.evaluator = Evaluator(prep=self.prep, timer=self.timer, train=self.train_settings, recovery=self.recovery,
                                   estimator=self.settings.estimator, max_latency_ms=self.settings.max_latency_ms,
                                   clock=self.clock.add, teacher_cache=self.teacher_cache, supernet=self.supernet,
                                   lm=self.lm, heal_settings=self.heal)
        if self.timer.settings.runtime == "llamacpp":  # GPTQ and the quantizer's importance matrix read them
            self.timer.moments = self.evaluator.moments
            lows = {parse_mix(p)[1] for p in self.space.precisions if parse_mix(p)}
            if len(lows) > 1:
                raise ValueError(f"space {self.space.name}: mixed types {sorted(lows)}: one low type per space")
            for low in lows:  # mixed files (mix<n>_<low>): which tensor groups cost least at the low type, measured once
                sensitivity = self.evaluator.sensitivity(low, say=self._say)
                self.timer.mix_order = sensitivity.order
                self._say(f"sensitivity: {describe_sensitivity(sensitivity)}")
        self.weights = RunWeights(self.run_dir, self.prep.base, self.prep.scores)
        self.base_metrics = self._base_metrics()
        self._say(
            f"base {self.prep.shape.num_layers}L/{self.prep.shape.num_heads}H/{self.prep.shape.ffn_size}F/"
            f"{self.prep.shape.hidden_size}D: val {quality_text(self.base_metrics)}, "
            f"test {quality_text(self.base_metrics, 'test')}, latency {self.base_metrics['latency_ms']:.2f} {self.timer.settings.unit} "
            f"(prepared in {time.perf_counter() - t0:.0f}s)"
        )
        how = ("each trial's latency is predicted from the latency table; final members are timed in alternating "
               "rounds with the base" if self.timer.table is not None else
               "every trial is timed in alternating rounds with the base")
        self._say(f"latency: {self.timer.settings.describe()}; {how} "
                  f"(mean {self.timer.sample.mean_tokens(self.timer.base_cap):.1f} tokens per timed input)")

    def _exits_possible(self, config: Any = None) -> bool:
        """Whether the final members carry early exits (nas.quality.exits.ExitSettings.enabled; `config`: the base's,
        once read); explicit exits where they cannot run are refused."""
        exits, lat = self.final.exits, self.latency
        return exits is not None and exits.enabled(lm=self.lm, batch_size=lat.batch_size, runtime=lat.runtime,
                                                   quantization=lat.quantization, keep_fp32=lat.keep_fp32,
                                                   config=config)

    def _latency_table(self) -> Any:
        """The latency table (nas.cost.table) of this machine for the space's sizes: cached, or calibrated."""
        t0 = time.perf_counter()
        contexts = list(self.space.axes["context"].values) if "context" in self.space.axes else []
        grid = Grid.for_space(self.space, self.prep.shape, sample_widths(self.timer, contexts))
        table = cached_table(self.timer, grid, cache_dir=resolve_cache_dir(self.cfg), contexts=contexts,
                             scores=self.prep.scores, say=self._say)
        for precision in self.space.precisions:  # a table per precision of the space's precision axis
            if precision != self.latency.precision:
                other = replace(self.timer, settings=replace(self.timer.settings, precision=precision), _passes={},
                                base_rounds=[], _tmp=None)
                try:
                    self.timer.tables[precision] = cached_table(other, grid, cache_dir=resolve_cache_dir(self.cfg),
                                                                contexts=contexts, scores=self.prep.scores, say=self._say)
                finally:
                    other.close()
        seconds = time.perf_counter() - t0
        self.clock.add("latency table", seconds)
        fit = table.info.get("calibration", {})
        self._say(f"latency table: {'cached' if table.info.get('cached') else 'built'} in {seconds:.0f}s; each trial's "
                  f"latency is predicted from it (scale {fit.get('scale', table.scale):.3f}, overhead "
                  f"{fit.get('overhead_ms', table.overhead):.3f} ms per forward); final members are measured")
        return table

    def _train_supernet(self) -> Any:
        """The elastic-trained supernet (nas.quality.supernet): trained once per base, task, space and
        recipe, cached; a killed training resumes from its checkpoint; other workers wait for it."""
        t0 = time.perf_counter()
        s = self.supernet_settings
        net, info = cached_supernet(self.prep, self.space, s)
        seconds = time.perf_counter() - t0
        self.clock.add("supernet", seconds)
        how = "cached" if info.get("cached") else (f"trained {s.steps} steps" + (
            f" (resumed at step {info['resumed_from']})" if info.get("resumed_from") else ""))
        self._say(f"supernet: {how} in {seconds:.0f}s; every trial is cut from it, not trained")
        return net

    def _task_lengths(self) -> dict[str, Any]:
        """The task's token lengths, printed once: whether a context cut can pay on this data."""
        cap = min(self.max_length, self.prep.shape.max_positions)
        contexts = [c for c in self.space.axes["context"].values if c < cap] if "context" in self.space.axes else []
        summary = length_summary(split_token_lengths(self.prep.task.train, self.prep.tokenizer, cap=cap), contexts)
        longer = ", ".join(f"> {c}: {share:.1%}" for c, share in summary["longer_than"].items())
        self._say(f"task token lengths (train, {summary['n']} texts, capped at {cap}): mean {summary['mean']:.1f}, "
                  f"p50 {summary['p50']:.0f}, p95 {summary['p95']:.0f}, max {summary['max']}"
                  + (f"; longer than the space's contexts {longer}" if longer else ""))
        return summary

    def _base_metrics(self) -> dict[str, Any]:
        base = self.prep.base
        spec = SubnetSpec.full(self.prep.shape)
        t0 = time.perf_counter()
        latency_ms = self.timer.base_latency_ms()
        self.clock.add("latency", time.perf_counter() - t0)
        info = self.prep.base_info
        quality = {key.replace("validation", "val"): value for key, value in info.items()
                   if key.endswith("_accuracy")}  # a classifier's quality
        if self.lm:  # per byte of the evaluation text (and per token of its tokenizer), as the trials are scored
            t0 = time.perf_counter()
            for split, key in (("validation", "val"), ("test", "test")):
                quality.update(self.evaluator.text_metrics(base, spec, split, key))
            if self.evaluator.in_llamacpp:  # scored as the trials are: its GGUF file in llama.cpp
                quality.update({f"{k}_fp32": quality[k] for k in ("val_byte_perplexity", "val_perplexity")})
                quality.update(self.evaluator.gguf_text_metrics(self.timer.gguf_path("base"), spec, "validation", "val"))
            self.clock.add("evaluation", time.perf_counter() - t0)
        return {
            **shape_attrs(spec),
            **quality,
            "latency_ms": latency_ms,
            "base_latency_ms": latency_ms,
            "speedup": 1.0,
            "latency_ratio": 1.0,
            "mean_tokens": self.timer.sample.mean_tokens(self.timer.base_cap),
            "flops": self.timer.flops(base),
            **model_size(base),
        }

    # -- one trial ------------------------------------------------------------------------
    def propose(self, trial: Any) -> SubnetSpec:
        attention = None
        if any(axis in self.space.axes for axis in ATTENTION_AXES):  # which layers lose their attention first
            attention = self.evaluator.calibration().influence()["attention"]
        spec = self.space.suggest(trial, self.prep.shape, self.prep.scores, attention=attention)
        precision = self.space.suggest_precision(trial)
        if precision is not None:
            trial.set_user_attr("precision", precision)
        return spec

    def evaluate_trial(self, trial: Any, spec: SubnetSpec) -> Sequence[float]:
        """Hand the shape to the evaluator (nas.study.trial), keep its weights, return the objectives."""
        try:
            model = self.evaluator.evaluate(spec, record=trial.set_user_attr, name=f"trial_{trial.number}",
                                            precision=trial.user_attrs.get("precision"))
        except Infeasible as e:
            raise optuna.TrialPruned(str(e)) from None
        self.weights.save(model, self.weights.trial_path(trial.number))
        del model
        attrs = {**trial.user_attrs}
        return [attrs[OBJECTIVE_ATTR[o]] for o in self.settings.objectives]

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> Any:
        study = self.study if self.study is not None else open_study(self.settings, self.run_dir)
        self._check_latency_definition(study)
        study.set_user_attr("latency", self.timer.record())
        study.set_user_attr("task_lengths", self.task_lengths)
        study.set_user_attr("machine", {**self.machine, "training_precision": self.train_settings.resolved_precision})
        study.set_metric_names([OBJECTIVE_ATTR[o] for o in self.settings.objectives])
        study.set_user_attr("base", self.base_metrics)
        study.set_user_attr("objectives", list(self.settings.objectives))
        study.set_user_attr("space", self.space.name)
        study.set_user_attr("space_choices", self.space.choices())  # sizes, as resolved on this base
        study.set_user_attr("label_names", list(self.prep.task.label_names))
        study.set_user_attr("num_labels", int(self.prep.task.num_labels))
        self.weights.drop_partial()  # what a killed worker left

        def after_each(study: Any) -> None:
            self.weights.drop_dominated(study)
            self._drop_dominated_files()
            self.write(study)

        self.loop = StudyLoop(settings=self.settings, storage_url=storage_url(self.settings, self.run_dir),
                              propose=self.propose, evaluate=self.evaluate_trial, after_each=after_each,
                              out_of_time=self._out_of_time, say=self._say, console=self.console)
        self.loop.run(study)
        self.weights.drop_dominated(study)  # the front as it ends, other workers' last trials included
        self._drop_dominated_files()
        deployed_key = "val_byte_perplexity_deployed" if self.lm else "val_accuracy_deployed"
        if self.lm and self.evaluator.in_llamacpp:  # the base at every GGUF type: where cutting pays and where not
            alone = self._quantization_alone(study)
            reference = alone[self.timer.settings.precision]
            self.base_metrics.update({f"{k}_deployed": reference[k] for k in LM_SCORES if k in reference})
            study.set_user_attr("base", self.base_metrics)
        if self.settings.final_k and deployed_key not in self.base_metrics:
            t0 = time.perf_counter()
            self.base_metrics.update(self.evaluator.base_deployed())  # what quantization alone gives
            judge = None if self.lm else self.evaluator.judge_accuracy(self.prep.base, SubnetSpec.full(self.prep.shape))
            if judge is not None:  # the band's reference: the fp32 base on the rows no selection read
                self.base_metrics["judge_accuracy"] = judge
            self.clock.add("evaluation", time.perf_counter() - t0)
            study.set_user_attr("base", self.base_metrics)
        final_stage(study, weights=self.weights, evaluator=self.evaluator, objectives=self.settings.objectives,
                    settings=self.final, lm_recipe=self.final_settings, say=self._say, clock=self.clock.add,
                    write=self.write)
        evaluate_front_on_test(study, weights=self.weights, prep=self.prep, lm=self.lm,
                               batch_size=self.train_settings.eval_batch_size, clock=self.clock.add)
        self.write(study)
        return study

    def _drop_dominated_files(self) -> None:
        """A trial's GGUF files (the timer's working folder) go with its weights: only the front's stay, for the final
        stage to time an untrained member from (disk stays bounded by the front, not the number of trials)."""
        if self.timer is None:
            return
        for path in self.timer.written("trial_*.gguf"):
            number = path.name.split(".")[0].split("_")[1]
            if number.isdigit() and not self.weights.trial_path(int(number)).is_file():
                path.unlink(missing_ok=True)

    def _quantization_alone(self, study: Any) -> dict[str, dict[str, Any]]:
        """The unpruned base alone: at the run's reference GGUF type and at every type of the space's precision axis,
        and with each cut vocabulary of the space's vocab axis at its last (most compressed) type; each written as the
        trials are (llama.cpp's quantizer, the same importance matrix), timed against the base at the reference type
        and scored by llama.cpp on its own file, per byte (validation and test): what quantization and the
        vocabulary alone give, shown beside the front, and files the winner may be (nas.study.lm_final). Recorded
        as the study attribute `quantization_alone` (key `<precision>` or `<precision> V<ids>`; resumable)."""
        known = dict(study.user_attrs.get(QUANT_ALONE_ATTR) or {})
        reference = self.timer.settings.precision
        shape = self.prep.shape
        context = int(shape.max_positions)
        rows: list[tuple[str, int | None]] = [(p, None) for p in dict.fromkeys([reference, *self.space.precisions])]
        if "vocab" in self.space.axes:
            last = self.space.precisions[-1] if self.space.precisions else reference
            rows += [(last, int(v)) for v in self.space.axes["vocab"].values if v < (shape.vocab_size or 0)]
        for precision, vocab in rows:
            key = precision if vocab is None else f"{precision} V{vocab}"
            if key in known:
                continue
            t0 = time.perf_counter()
            spec = replace(SubnetSpec.full(shape), vocab=vocab)
            if key == reference:
                row = {"speedup": 1.0, "speedup_p10": 1.0, "speedup_p90": 1.0, "latency_ms": self.timer.base_latency_ms()}
                path = self.timer.gguf_path("base")
            else:  # written where the base's own file at that type goes: the final stage's baselines reuse it
                model, name = self.prep.base, "base"
                if vocab is not None:  # the base with its vocabulary cut; its layers read the text as the base's do
                    model, name = cut_vocabulary(copy.deepcopy(self.prep.base), spec, self.prep.scores), f"base_v{vocab}"
                    model.nas_moments = self.evaluator.moments(self.prep.base)
                measured = self.timer.measure(model, context=context, name=name, precision=precision)
                row = {k: measured[k] for k in ("speedup", "speedup_p10", "speedup_p90", "latency_ms")}
                path = self.timer.gguf_path(name, precision)
            for split, key_ in (("validation", "val"), ("test", "test")):
                row.update(self.evaluator.gguf_text_metrics(path, None, split, key_))
            row.update(bytes=path.stat().st_size, seconds=round(time.perf_counter() - t0, 1), precision=precision,
                       vocab=vocab, spec=spec.to_dict(), params=self.base_metrics["params"] if vocab is None else
                       sum(p.numel() for p in model.parameters()))
            known[key] = row
            study.set_user_attr(QUANT_ALONE_ATTR, known)
            self.clock.add("quantization alone", row["seconds"])
            self._say(f"the base alone at {key}: decode {row['speedup']:.2f}x "
                      f"[{row['speedup_p10']:.2f}-{row['speedup_p90']:.2f}] over the base at {reference}, val "
                      f"{quality_text(row)}, test {quality_text(row, 'test')}, {row['bytes'] / 1e6:.0f} MB")
        return known

    def _out_of_time(self) -> bool:
        """search.time_budget: seconds since this process began the run (preparation, supernet training
        and trials); once spent, no new trial starts (the running one finishes; the final stage still runs)."""
        budget = self.settings.time_budget
        return budget is not None and time.perf_counter() - self.started >= budget

    def _check_latency_definition(self, study: Any, now: dict[str, Any] | None = None) -> None:
        """A study continued (or joined) with another latency definition would mix incomparable figures.
        `now`: the settings to compare (default: the timer's record)."""
        before = study.user_attrs.get("latency") if study is not None else None
        if not before:
            return
        now = now if now is not None else self.timer.record()
        for key in LATENCY_DEFINITION:
            if key in before and before[key] != now[key]:
                raise ValueError(
                    f"latency.{key}={now[key]!r} differs from the study's {before[key]!r} (study "
                    f"{self.settings.study_name!r}): its latencies would not be comparable; use the same setting "
                    "or another search.study_name"
                )

    def write(self, study: Any) -> dict[str, Any]:
        if self.timer is not None and self.timer.base_rounds:
            # the base's figure is the median of all its rounds so far, taken beside the trials
            self.base_metrics["latency_ms"] = self.base_metrics["base_latency_ms"] = self.timer.base_latency_ms()
            study.set_user_attr("base", self.base_metrics)
        return write_reports(
            study, self.run_dir, base=self.base_metrics, objectives=self.settings.objectives,
            best_extra={"model": str(self.cfg["model"]["name_or_path"] or "embedded:all-MiniLM-L6-v2"),
                        "data": self.prep.task.fingerprint, "space": self.space.name},
        )

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False, markup=False)  # "[q8_0, q4_0]" is text, not markup
        else:
            log.info(text)


# a language model's scores on a split's evaluation text (nas.quality.metrics.TextScore.metrics)
LM_SCORES = tuple(f"{split}_{name}" for split in ("val", "test")
                  for name in ("byte_perplexity", "perplexity", "bits_per_byte", "tokens"))


def run_search(cfg: Any, run_dir: str | Path, *, console: Any = None) -> tuple[Any, Search]:
    search = Search(cfg, run_dir, console=console)
    try:
        search.prepare()
        study = search.run()
    finally:
        if search.timer is not None:
            search.timer.close()
    return study, search
