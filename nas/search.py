"""`python -m nas.search +space=NAME`: the Optuna search over pruned shapes.

Each trial: sample a SubnetSpec from the space -> prune the fine-tuned base with the cached
importance scores -> time it in alternating rounds with the base on the task's own inputs
(nas.latency; infeasible shapes stop here) -> fine-tune briefly with
Lightning, distilling from the unpruned base -> validation accuracy -> params / FLOPs / size.
Reports in the run folder are refreshed after every trial; at the end every Pareto member is
evaluated on the held-out test split.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.lm import quality_text  # accuracy or perplexity, as printed
from nas.storage import open_study, storage_url  # the storage: URLs, the study, trials left RUNNING

log = logging.getLogger("nas.search")

SAMPLERS = ("nsga2", "tpe", "random")
# This many proposals in a row of shapes already tried ends the search: the space is used up.
MAX_CONSECUTIVE_REPEATS = 30
OBJECTIVES = ("accuracy", "perplexity", "latency", "params", "flops", "size")
# The latency objective is the candidate's latency relative to the base, timed in pairs: a ratio
# stays comparable across workers, machines and a busier moment, where milliseconds do not.
OBJECTIVE_ATTR = {"accuracy": "val_accuracy", "perplexity": "val_perplexity", "latency": "latency_ratio", "params": "params", "flops": "flops",
                  "size": "size_mb"}
# What makes two runs' latencies comparable: a study continued with other values is refused.
LATENCY_DEFINITION = ("inputs", "runtime", "batch_size", "seq_len", "threads", "sample_size", "seed", "split",
                      "generation", "new_tokens")


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SearchSettings:
    n_trials: int
    seed: int
    sampler: str
    storage: str | None
    study_name: str
    objectives: tuple[str, ...]
    max_latency_ms: float | None
    population_size: int = 8
    max_consecutive_failures: int = 5
    heartbeat_interval: int = 10
    grace_period: int = 30
    stale_timeout: int = 3600
    estimator: str = "finetune"
    final_k: int = 0
    time_budget: float | None = None

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> SearchSettings:
        objectives = tuple(str(o) for o in (cfg.get("objectives") or ("accuracy", "latency")))
        settings = cls(
            n_trials=int(cfg.get("n_trials", 12)),
            seed=int(cfg.get("seed", 0)),
            sampler=str(cfg.get("sampler", "nsga2")),
            storage=cfg.get("storage") or None,
            study_name=str(cfg.get("study_name", "nas")),
            objectives=objectives,
            max_latency_ms=None if cfg.get("max_latency_ms") is None else float(cfg.get("max_latency_ms")),
            population_size=int(cfg.get("population_size", 8)),
            max_consecutive_failures=int(cfg.get("max_consecutive_failures", 5)),
            heartbeat_interval=int(cfg.get("heartbeat_interval", 10) or 0),
            grace_period=int(cfg.get("grace_period", 30) or 0),
            stale_timeout=int(cfg.get("stale_timeout", 3600)),
            estimator=str(cfg.get("estimator", "finetune")),
            final_k=cfg.get("final_k", 0),
            time_budget=_seconds_or_none(cfg.get("time_budget"), "search.time_budget"),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.n_trials < 1:
            raise ValueError(f"search.n_trials={self.n_trials} must be >= 1")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"search.sampler={self.sampler!r} is not known; allowed: {', '.join(SAMPLERS)}")
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad:
            raise ValueError(f"search.objectives has {bad[0]!r}; allowed: {', '.join(OBJECTIVES)}")
        if (not self.objectives or self.objectives[0] not in ("accuracy", "perplexity")
                or "accuracy" in self.objectives[1:] or "perplexity" in self.objectives[1:]
                or len(set(self.objectives)) != len(self.objectives)):
            raise ValueError(
                f"search.objectives={list(self.objectives)} must start with the quality ('accuracy', or 'perplexity' "
                "for language modelling) followed by distinct costs, e.g. [accuracy, latency]"
            )
        if self.max_latency_ms is not None and self.max_latency_ms <= 0:
            raise ValueError(f"search.max_latency_ms={self.max_latency_ms} must be > 0 or null")
        if self.population_size < 2:
            raise ValueError(f"search.population_size={self.population_size} must be >= 2")
        if self.heartbeat_interval < 0 or (self.heartbeat_interval and self.grace_period <= self.heartbeat_interval):
            raise ValueError(
                f"search.grace_period={self.grace_period} must exceed search.heartbeat_interval={self.heartbeat_interval}"
            )
        if self.max_consecutive_failures < 1:
            raise ValueError(f"search.max_consecutive_failures={self.max_consecutive_failures} must be >= 1")
        from nas.evaluate import ESTIMATORS

        if self.estimator not in ESTIMATORS:
            raise ValueError(f"search.estimator={self.estimator!r} is not known; allowed: {', '.join(ESTIMATORS)}")
        if isinstance(self.final_k, bool) or not isinstance(self.final_k, int) or self.final_k < 0:
            raise ValueError(f"search.final_k={self.final_k!r} must be an integer >= 0 (0: no final training)")
        if self.stale_timeout < 1:
            raise ValueError(f"search.stale_timeout={self.stale_timeout} must be >= 1 (seconds)")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"search.time_budget={self.time_budget} must be > 0 (seconds) or null")

    @property
    def directions(self) -> list[str]:
        from nas.lm import QUALITY

        return [QUALITY[self.objectives[0]][1]] + ["minimize"] * (len(self.objectives) - 1)


def _seconds_or_none(value: Any, key: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r} must be a number of seconds > 0, or null") from None


def final_train_settings(cfg: Mapping[str, Any]) -> Any:
    """The final recipe (final.*) for the front's top-K: the trial's train.* settings, longer."""
    from nas.train import TrainSettings

    final = dict(cfg.get("final") or {})
    overrides = {"max_steps": int(final.get("max_steps", 400)), "lr": float(final.get("lr", 1e-4))}
    if final.get("distill") is not None:
        overrides["distill"] = str(final["distill"])
    return TrainSettings.from_cfg(cfg.get("train") or {}, **overrides)


def make_sampler(settings: SearchSettings) -> Any:
    import optuna

    if settings.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=settings.seed, population_size=settings.population_size)
    if settings.sampler == "tpe":
        multivariate = len(settings.objectives) == 1
        return optuna.samplers.TPESampler(seed=settings.seed, multivariate=multivariate, n_startup_trials=5)
    return optuna.samplers.RandomSampler(seed=settings.seed)


def chosen_space(cfg: Mapping[str, Any]) -> Any:
    from nas.space import SearchSpace, available_spaces

    if "space" not in cfg or cfg["space"] is None:
        raise ValueError(f"no search space chosen; add +space=NAME with NAME one of: {', '.join(available_spaces())}")
    return SearchSpace.from_cfg(cfg["space"])


# ---------------------------------------------------------------------------- the search


@dataclass
class PhaseClock:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, s: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + s


class Search:
    """Owns the prepared base, the study and the per-trial evaluation."""

    def __init__(self, cfg: Any, run_dir: str | Path, *, console: Any = None) -> None:
        from omegaconf import OmegaConf

        from nas.checks import writable_folder
        from nas.latency import LatencySettings
        from nas.train import TrainSettings

        self.cfg = cfg
        self.run_dir = writable_folder(run_dir, "hydra.run.dir")
        container = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        # Cheap checks first: nothing expensive starts on a bad setting.
        self.space = chosen_space(container)
        self.settings = SearchSettings.from_cfg(container.get("search", {}))
        from dataclasses import replace

        from nas.lm import quality_objective
        from nas.textdata import is_lm_data

        # A language-modelling task (plain text, nas.textdata): its quality is perplexity (nas.lm).
        self.lm = is_lm_data(container.get("data"))
        self.settings = replace(self.settings, objectives=quality_objective(self.settings.objectives, lm=self.lm))
        if self.lm and self.settings.estimator == "supernet":
            raise ValueError("search.estimator=supernet is for classification tasks; a language-modelling task "
                             "allows: finetune, none")
        self.train_settings = TrainSettings.from_cfg(container.get("train", {}))
        self.latency = LatencySettings.from_cfg(container.get("latency"))
        from nas.recovery import RecoverySettings

        self.recovery = RecoverySettings.from_cfg(container.get("prune"))
        from nas.supernet import SupernetSettings

        self.supernet_settings = SupernetSettings.from_cfg(container.get("supernet"))
        self.recovery = self.recovery.resolved(self.settings.estimator)
        self.supernet: Any = None
        self.final_settings = final_train_settings(container)
        self.evaluator: Any = None  # nas.evaluate.Evaluator, built once the base is ready
        self.max_length = int(container.get("max_length", 128))
        self.console = console
        self.clock = PhaseClock()
        self.started = time.perf_counter()  # search.time_budget counts from here: preparation included
        self.prep: Any = None
        self.timer: Any = None  # nas.latency.PairedTimer, built once the base is ready
        self.task_lengths: dict[str, Any] = {}
        self.base_metrics: dict[str, Any] = {}
        self.teacher_cache: dict[bytes, Any] = {}
        self._consecutive_failures = 0
        self._consecutive_repeats = 0
        self.last_error: str | None = None
        self.study: Any = None  # opened by prepare's checks, before any expensive work
        self.poll_seconds = 2.0  # how often a worker waiting on the others' last trials looks again

    # -- phase 1 -------------------------------------------------------------------------
    def prepare(self) -> None:
        from nas.pipeline import prepare

        from transformers import AutoConfig

        from nas.models import resolve_model_source
        from nas.space import context_cap, task_token_lengths
        from nas.spec import BaseShape

        from nas.checks import preflight

        # Settings, files, max_length and the storage (the study is opened here), before any expensive work.
        self.study = preflight(self.cfg, self.run_dir, settings=self.settings)
        # The space must fit the base model: checked on its config, before any training.
        source = resolve_model_source(self.cfg["model"]["name_or_path"])
        try:
            base_config = AutoConfig.from_pretrained(source)
        except OSError as e:
            raise ValueError(f"model.name_or_path={source!r} cannot be read: {str(e).splitlines()[0]}") from None
        # Fractions and context quantiles become sizes here (printed once the inputs are known good,
        # stored in the study).
        from nas.lm import check_family

        check_family(base_config, lm=self.lm)
        shape = BaseShape.from_config(base_config)
        lengths = None
        if self.space.needs_lengths:
            lengths = task_token_lengths(self.cfg, cap=context_cap(shape, self.max_length))
        self.space = self.space.resolve(shape, max_length=self.max_length, lengths=lengths)
        t0 = time.perf_counter()
        self.prep = prepare(self.cfg)
        self.space.validate(self.prep.shape)
        self._say(f"space {self.space.name} on {shape.num_layers}L/{shape.num_heads}H/{shape.ffn_size}F/"
                  f"{shape.hidden_size}D: {self.space.describe()}")
        for phase, s in self.prep.timings.items():
            self.clock.add(phase, s)
        self.task_lengths = self._task_lengths()
        from nas.latency import PairedTimer

        self.timer = PairedTimer.for_prepared(self.prep, self.latency, max_length=self.max_length)
        from nas.evaluate import Evaluator

        if self.settings.estimator == "supernet":
            self.supernet = self._train_supernet()
        self.evaluator = Evaluator(prep=self.prep, timer=self.timer, train=self.train_settings, recovery=self.recovery,
                                   estimator=self.settings.estimator, max_latency_ms=self.settings.max_latency_ms,
                                   clock=self.clock.add, teacher_cache=self.teacher_cache, supernet=self.supernet,
                                   lm=self.lm)
        self.base_metrics = self._base_metrics()
        self._say(
            f"base {self.prep.shape.num_layers}L/{self.prep.shape.num_heads}H/{self.prep.shape.ffn_size}F/"
            f"{self.prep.shape.hidden_size}D: val {quality_text(self.base_metrics)}, "
            f"test {quality_text(self.base_metrics, 'test')}, latency {self.base_metrics['latency_ms']:.2f} {self.timer.settings.unit} "
            f"(prepared in {time.perf_counter() - t0:.0f}s)"
        )
        self._say(f"latency: {self.timer.settings.describe()}; every trial is timed in alternating rounds with the base "
                  f"(mean {self.timer.sample.mean_tokens(self.timer.base_cap):.1f} tokens per timed input)")

    def _train_supernet(self) -> Any:
        """The elastic-trained supernet (nas.supernet): trained once per base, task, space and recipe,
        cached; a killed training resumes from its checkpoint; other workers wait for it."""
        from nas.supernet import cached_supernet

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
        from nas.data import length_summary, split_token_lengths

        cap = min(self.max_length, self.prep.shape.max_positions)
        contexts = [c for c in self.space.axes["context"].values if c < cap] if "context" in self.space.axes else []
        summary = length_summary(split_token_lengths(self.prep.task.train, self.prep.tokenizer, cap=cap), contexts)
        longer = ", ".join(f"> {c}: {share:.1%}" for c, share in summary["longer_than"].items())
        self._say(f"task token lengths (train, {summary['n']} texts, capped at {cap}): mean {summary['mean']:.1f}, "
                  f"p50 {summary['p50']:.0f}, p95 {summary['p95']:.0f}, max {summary['max']}"
                  + (f"; longer than the space's contexts {longer}" if longer else ""))
        return summary

    def _base_metrics(self) -> dict[str, Any]:
        from nas.latency import model_size
        from nas.spec import SubnetSpec

        base = self.prep.base
        spec = SubnetSpec.full(self.prep.shape)
        t0 = time.perf_counter()
        latency_ms = self.timer.base_latency_ms()
        self.clock.add("latency", time.perf_counter() - t0)
        info = self.prep.base_info
        return {
            **shape_attrs(spec),
            **{key.replace("validation", "val"): value for key, value in info.items()
               if key.endswith(("_accuracy", "_perplexity"))},  # the quality: accuracy, or perplexity (nas.lm)
            "latency_ms": latency_ms,
            "base_latency_ms": latency_ms,
            "speedup": 1.0,
            "latency_ratio": 1.0,
            "mean_tokens": self.timer.sample.mean_tokens(self.timer.base_cap),
            "flops": self.timer.flops(base),
            **model_size(base),
        }

    # -- one trial ------------------------------------------------------------------------
    def objective(self, trial: Any) -> Sequence[float]:
        """Sample a shape, hand it to the evaluator (nas.evaluate), keep its weights, return the objectives."""
        import optuna

        from nas.evaluate import Infeasible

        spec = self.space.suggest(trial, self.prep.shape, self.prep.scores)
        for key, value in {**shape_attrs(spec), "spec": spec.to_dict()}.items():
            trial.set_user_attr(key, value)
        original = tried_before(trial.study, spec, exclude=trial.number)
        if original is not None:
            return self._repeat(trial, original)
        try:
            model = self.evaluator.evaluate(spec, record=trial.set_user_attr, name=f"trial_{trial.number}")
        except Infeasible as e:
            raise optuna.TrialPruned(str(e)) from None
        self._save_model(trial.number, model)
        del model
        attrs = {**trial.user_attrs}
        return [attrs[OBJECTIVE_ATTR[o]] for o in self.settings.objectives]

    def _repeat(self, trial: Any, original: Any) -> Sequence[float]:
        """A shape already trained (the samplers propose repeats, NSGA-II often): its results
        again, at no cost. The sampler sees the true values; the budget does not count it."""
        import optuna
        from optuna.trial import TrialState

        trial.set_user_attr("repeat_of", original.number)
        for key, value in original.user_attrs.items():
            if key not in trial.user_attrs and not key.startswith("seconds_") and key != "final_loss":
                trial.set_user_attr(key, value)
        if original.state == TrialState.PRUNED:
            raise optuna.TrialPruned(f"repeat of trial {original.number}: {original.user_attrs.get('fail_reason')}")
        return list(original.values)

    # -- models of the front --------------------------------------------------------------
    def model_path(self, number: int) -> Path:
        return self.run_dir / "models" / f"trial_{number}.safetensors"

    def _save_model(self, number: int, model: Any, *, path: Path | None = None) -> None:
        from safetensors.torch import save_model

        path = path or self.model_path(number)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_model(model, str(tmp))  # stores a tied matrix (a decoder's embeddings and lm_head) once
        tmp.replace(path)

    def load_trial_model(self, trial: Any) -> Any:
        """Rebuild a trial's fine-tuned model: prune the base to its spec, load its weights."""
        from safetensors.torch import load_model

        from nas.prune import prune_model
        from nas.spec import SubnetSpec

        spec = SubnetSpec.from_dict(trial.user_attrs["spec"])
        model = prune_model(self.prep.base, spec, self.prep.scores)
        load_model(model, str(self.model_path(trial.number)))
        return model.eval()

    def _drop_dominated_models(self, study: Any) -> None:
        """Keep weights only for the current front (the export step needs those)."""
        from optuna.trial import TrialState

        keep = {t.number for t in study.best_trials}
        # Only trials that are finished and off the front lose their weights: another worker's
        # trial may have saved its model and not yet reported its values.
        finished = {t.number for t in study.get_trials(deepcopy=False)
                    if t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)}
        folder = self.run_dir / "models"
        if not folder.is_dir():
            return
        for path in folder.glob("trial_*.safetensors"):
            number = int(path.stem.split("_")[1])
            if number in finished and number not in keep:
                path.unlink(missing_ok=True)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> Any:
        import optuna
        from optuna.trial import TrialState

        # Optuna's own warning for a failed trial is a full traceback; our trial line says why.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        study = self.study if self.study is not None else open_study(self.settings, self.run_dir)
        self._check_latency_definition(study)
        study.set_user_attr("latency", self.timer.record())
        study.set_user_attr("task_lengths", self.task_lengths)
        study.set_metric_names([OBJECTIVE_ATTR[o] for o in self.settings.objectives])
        study.set_user_attr("base", self.base_metrics)
        study.set_user_attr("objectives", list(self.settings.objectives))
        study.set_user_attr("space", self.space.name)
        study.set_user_attr("space_choices", self.space.choices())  # sizes, as resolved on this base
        study.set_user_attr("label_names", list(self.prep.task.label_names))
        study.set_user_attr("num_labels", int(self.prep.task.num_labels))
        # search.n_trials is the study's target of finished trials (COMPLETE or infeasible),
        # shared by every worker on this storage; failed trials do not count towards it.
        counted = (TrialState.COMPLETE, TrialState.PRUNED)

        # A repeated shape costs nothing and does not count either.
        def n_finished(study: Any) -> int:
            return sum("repeat_of" not in t.user_attrs for t in study.get_trials(deepcopy=False, states=counted))

        # What a killed worker left: its partial model files, its trials still marked RUNNING.
        for partial in (self.run_dir / "models").glob("*.tmp"):
            partial.unlink(missing_ok=True)
        self._recover(study)
        done = n_finished(study)
        remaining = max(0, self.settings.n_trials - done)
        if done:
            self._say(f"continuing study '{self.settings.study_name}': {done} finished trials, {remaining} to go")

        progress = self._progress(remaining)

        def after_trial(study: Any, trial: Any) -> None:
            self._recover(study)
            if "repeat_of" in trial.user_attrs:
                self._consecutive_repeats += 1
                self._say(trial_line(trial, self.settings.objectives))
                if self._consecutive_repeats >= MAX_CONSECUTIVE_REPEATS:
                    self._say(f"stopping: the last {self._consecutive_repeats} proposals were all shapes already "
                              f"tried ({n_finished(study)} distinct); the space looks exhausted")
                    study.stop()
                elif self._target_reached(study, n_finished):
                    study.stop()
                return
            self._consecutive_repeats = 0
            if trial.user_attrs.get("surplus"):
                pass  # not run at all: neither a failure nor a success
            elif trial.state == TrialState.FAIL:
                self._consecutive_failures += 1
                self.last_error = trial.user_attrs.get("fail_reason") or trial.system_attrs.get("fail_reason")
            else:
                self._consecutive_failures = 0
            self._say(trial_line(trial, self.settings.objectives))
            if progress is not None:
                progress[0].advance(progress[1])
            self._drop_dominated_models(study)
            self.write(study)
            if self._consecutive_failures >= self.settings.max_consecutive_failures:
                study.stop()
            elif self._target_reached(study, n_finished):
                study.stop()
            elif self._out_of_time():
                self._say(f"stopping: search.time_budget={self.settings.time_budget:g}s is spent "
                          f"({n_finished(study)} finished trials); no new trial starts")
                study.stop()

        def guarded(trial: Any) -> Sequence[float]:
            from nas.storage import record_worker

            record_worker(trial)  # host, pid and start time: a later worker can tell if this one died
            # Trials numbered below this one (finished, or running elsewhere) that already make up
            # search.n_trials: two workers that started a trial at the same moment overshoot the target.
            ahead = sum(1 for t in study.get_trials(deepcopy=False, states=(*counted, TrialState.RUNNING))
                        if t.number < trial.number and "repeat_of" not in t.user_attrs)
            if ahead >= self.settings.n_trials:
                trial.set_user_attr("surplus", True)
                trial.set_user_attr("fail_reason", f"not run: the {ahead} trials before it make up "
                                                   f"search.n_trials={self.settings.n_trials}")
                raise RuntimeError(trial.user_attrs["fail_reason"])
            try:
                return self.objective(trial)
            except optuna.TrialPruned:
                raise
            except Exception as e:  # recorded on the trial, the study goes on
                trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}".splitlines()[0][:500])
                raise

        if remaining and self._out_of_time():
            self._say(f"search.time_budget={self.settings.time_budget:g}s was spent before the first trial "
                      "(preparation); no trial runs")
        elif remaining and not self._target_reached(study, n_finished):
            try:
                if progress is not None:
                    progress[0].start()
                # No trial count here: the callback stops when the study (all workers) is done.
                study.optimize(guarded, n_trials=None, callbacks=[after_trial], catch=(Exception,),
                               gc_after_trial=True)
            finally:
                if progress is not None:
                    progress[0].stop()
        if self._consecutive_failures >= self.settings.max_consecutive_failures:
            raise RuntimeError(
                f"stopped after {self._consecutive_failures} consecutive failed trials; last error: {self.last_error}"
            )
        self._drop_dominated_models(study)  # the front as it ends, other workers' last trials included
        self.final_stage(study)
        self.evaluate_front_on_test(study)
        return study

    def _out_of_time(self) -> bool:
        """search.time_budget: seconds since this process began the run (preparation, supernet training
        and trials); once spent, no new trial starts (the running one finishes; the final stage still runs)."""
        budget = self.settings.time_budget
        return budget is not None and time.perf_counter() - self.started >= budget

    # -- after the trials: the final stage ---------------------------------------------------------
    def final_path(self, number: int) -> Path:
        return self.run_dir / "models" / f"final_{number}.safetensors"

    def final_stage(self, study: Any) -> None:
        """Train the search.final_k chosen front members longer (final.*), from their trial weights,
        and evaluate them on validation and test. Resumable: members already done are skipped."""
        from nas.report import choose_final, cost_column, pareto_frame, quality_column
        from nas.spec import SubnetSpec

        quality = quality_column(self.settings.objectives)  # val_accuracy, or val_perplexity (LM)
        front = pareto_frame(study, None, cost=cost_column(self.settings.objectives), quality=quality)
        chosen = choose_final(front, self.settings.final_k, quality=quality)
        q = quality.removeprefix("val_")
        if not chosen:
            return
        done = {int(n) for n in (study.user_attrs.get("final") or {})}
        todo = [n for n in chosen if n not in done or not self.final_path(n).is_file()]
        fs = self.final_settings
        self._say(f"final stage: trials {', '.join(map(str, chosen))} trained {fs.max_steps} more steps "
                  f"(lr {fs.lr:g}, distill {fs.distill}, weight {fs.distill_weight:g}); "
                  f"{len(todo)} to train" + (f", {len(chosen) - len(todo)} done before" if len(todo) < len(chosen) else ""))
        for number in todo:
            trial = study.trials[number]
            if not self.model_path(number).is_file():
                self._say(f"final stage: trial {number}'s weights are not in this run folder (another worker's); skipped")
                continue
            spec = SubnetSpec.from_dict(trial.user_attrs["spec"])
            model = self.load_trial_model(trial)
            t0 = time.perf_counter()
            self.evaluator.fit(model, spec, fs)
            seconds = time.perf_counter() - t0
            self.clock.add("final training", seconds)
            t0 = time.perf_counter()
            result = {f"val_{q}": self.evaluator.quality_of(model, spec, "validation")[1],
                      f"test_{q}": self.evaluator.quality_of(model, spec, "test")[1], "steps": fs.max_steps,
                      "seconds": round(seconds, 1)}
            self.clock.add("evaluation", time.perf_counter() - t0)
            self._save_model(number, model, path=self.final_path(number))
            latest = dict(study.user_attrs.get("final") or {})  # other workers may have added theirs
            latest[str(number)] = result
            study.set_user_attr("final", latest)
            a = trial.user_attrs
            short = q[:3] if q == "accuracy" else "ppl"
            self._say(f"final    {number:3d} {a['shape']:28s} val {short} {a[f'val_{q}']:.4f} -> {result[f'val_{q}']:.4f}"
                      f"  test {short} {result[f'test_{q}']:.4f}  speedup {a['speedup']:.2f}x  ({seconds:.0f}s)")
            self.write(study)

    def _recover(self, study: Any) -> None:
        """Fail and queue again the trials that dead workers left RUNNING (nas.storage)."""
        from nas.storage import is_journal, recover_stale_trials

        heartbeat = bool(self.settings.heartbeat_interval) and not is_journal(storage_url(self.settings, self.run_dir))
        for r in recover_stale_trials(study, heartbeat=heartbeat, grace_period=self.settings.grace_period,
                                      stale_timeout=self.settings.stale_timeout):
            then = f"its shape is queued again as trial {r.retry}" if r.retry is not None else r.why_not
            self._say(f"recovered trial {r.number}, left RUNNING: {r.reason}; marked FAIL, {then}")

    def _target_reached(self, study: Any, n_finished: Any) -> bool:
        """True once the study holds search.n_trials counted trials. While trials running on other
        workers could still make up the target, wait for them (failing those whose worker dies)
        instead of starting one that would overshoot it."""
        from optuna.trial import TrialState

        said = False
        while True:
            done = n_finished(study)
            if done >= self.settings.n_trials:
                return True
            running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if done + running < self.settings.n_trials:
                return False
            if not said:
                self._say(f"waiting: {done} trials finished and {running} running on other workers make up "
                          f"search.n_trials={self.settings.n_trials}")
                said = True
            time.sleep(self.poll_seconds)
            self._recover(study)

    def evaluate_front_on_test(self, study: Any) -> None:
        from nas.lm import evaluate

        # A finished trial's attributes are frozen in Optuna's storage, so test accuracies live
        # in one study attribute {trial number: accuracy}; the reports merge them in.
        t0 = time.perf_counter()
        attr = "test_perplexity" if self.lm else "test_accuracy"
        known = {int(k): v for k, v in (study.user_attrs.get(attr) or {}).items()}
        for trial in study.best_trials:
            if trial.number in known or not self.model_path(trial.number).is_file():
                continue
            model = self.load_trial_model(trial)
            loader = self.prep.loader("test", trial.user_attrs["context"], batch_size=self.train_settings.eval_batch_size,
                                      shuffle=False)
            known[trial.number] = evaluate(model, loader, lm=self.lm)[1]
            study.set_user_attr(attr, {str(k): v for k, v in sorted(known.items())})
        self.clock.add("evaluation", time.perf_counter() - t0)
        self.write(study)

    def _check_latency_definition(self, study: Any) -> None:
        """A study continued (or joined) with another latency definition would mix incomparable figures."""
        before = study.user_attrs.get("latency")
        if not before:
            return
        now = self.timer.record()
        for key in LATENCY_DEFINITION:
            if key in before and before[key] != now[key]:
                raise ValueError(
                    f"latency.{key}={now[key]!r} differs from the study's {before[key]!r} (study "
                    f"{self.settings.study_name!r}): its latencies would not be comparable; use the same setting "
                    "or another search.study_name"
                )

    def write(self, study: Any) -> dict[str, Any]:
        from nas.report import write_reports

        if self.timer is not None and self.timer.base_rounds:
            # the base's figure is the median of all its rounds so far, taken beside the trials
            self.base_metrics["latency_ms"] = self.base_metrics["base_latency_ms"] = self.timer.base_latency_ms()
            study.set_user_attr("base", self.base_metrics)
        return write_reports(
            study, self.run_dir, base=self.base_metrics, objectives=self.settings.objectives,
            best_extra={"model": str(self.cfg["model"]["name_or_path"] or "embedded:all-MiniLM-L6-v2"),
                        "data": self.prep.task.fingerprint, "space": self.space.name},
        )

    # -- output ---------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False)
        else:
            log.info(text)

    def _progress(self, total: int) -> Any:
        if self.console is None or total == 0:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=self.console, transient=True)
        task = progress.add_task("trials", total=total)
        return progress, task


def tried_before(study: Any, spec: Any, *, exclude: int) -> Any:
    """The first finished trial (complete or infeasible) that trained or timed this exact spec, or None."""
    from optuna.trial import TrialState

    wanted = json.loads(json.dumps(spec.to_dict()))  # as the storage hands it back: lists, not tuples
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.number != exclude and "repeat_of" not in t.user_attrs and t.user_attrs.get("spec") == wanted:
            return t
    return None


def shape_attrs(spec: Any) -> dict[str, Any]:
    return {
        "n_layers": len(spec.layers),
        "heads": round(sum(spec.heads) / len(spec.heads), 2),
        "ffn": round(sum(spec.ffn) / len(spec.ffn), 1),
        "hidden": spec.hidden,
        "context": spec.context,
        "shape": spec.describe(),
    }


def trial_line(trial: Any, objectives: Sequence[str]) -> str:
    a = trial.user_attrs
    head = f"trial {trial.number:3d} {trial.state.name:8s} {a.get('shape', '?'):28s}"
    if "repeat_of" in a:
        return f"{head} repeat of trial {a['repeat_of']}: not trained again, not counted"
    if trial.state.name == "COMPLETE":
        spread = f" [{a['speedup_p10']:.2f}-{a['speedup_p90']:.2f}]" if "speedup_p10" in a else ""
        return (f"{head} {quality_text(a)}  latency {a['latency_ms']:7.2f} ms  "
                f"speedup {a['speedup']:.2f}x{spread}  params {a['params'] / 1e6:.1f}M")
    reason = a.get("fail_reason") or trial.system_attrs.get("fail_reason") or ""
    return f"{head} {reason}"


def front_table(front: Any, console: Any, *, quality: str = "val_accuracy") -> None:
    """The front, printed: `quality` is the study's quality column (quality_column(objectives))."""
    import pandas as pd
    from rich.table import Table

    table = Table(title="Pareto front (validation; test for members; final: after the final stage's training); "
                        "latency per input, speedup vs the base timed in alternating rounds (p10-p90 of the rounds)")
    q, t = quality, quality.replace("val_", "test_")
    final = "final_" + q in front and front["final_" + q].notna().any()
    cols = ["trial", "shape", f"val {q[4:7]}", f"test {q[4:7]}"] + (["final val", "final test"] if final else [])
    for col in cols + ["latency ms", "speedup", "p10-p90", "params M"]:
        table.add_column(col, justify="right" if col != "shape" else "left")

    def num(value: Any) -> str:
        return "" if value is None or value != value else f"{value:.4f}"

    for _, row in front.iterrows():
        table.add_row(
            "base" if row.get("is_base") else str(int(row["number"])),
            str(row["shape"]),
            f"{row[q]:.4f}",
            num(row.get(t)),
            *([num(row.get("final_" + q)), num(row.get("final_" + t))] if final else []),
            f"{row['latency_ms']:.2f}",
            f"{row['speedup']:.2f}x",
            "" if row.get("is_base") or pd.isna(row.get("speedup_p10")) else
            f"{row['speedup_p10']:.2f}-{row['speedup_p90']:.2f}",
            f"{row['params'] / 1e6:.1f}",
        )
    console.print(table)


def run_search(cfg: Any, run_dir: str | Path, *, console: Any = None) -> tuple[Any, Search]:
    search = Search(cfg, run_dir, console=console)
    try:
        search.prepare()
        study = search.run()
    finally:
        if search.timer is not None:
            search.timer.close()
    return study, search


def dashboard_url(url: str) -> str:
    """The storage as the dashboard hint shows it: a URL with a password by its variable, never in clear."""
    from nas.masking import ENV_VAR, has_password

    return f'"${ENV_VAR}"' if has_password(url) else url


def _main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from rich.console import Console

    from nas.checks import cli_prelude
    from nas.config import CONF_DIR
    from nas.masking import protect_run
    from nas.report import quality_column
    from nas.space import available_spaces

    real_storage = cli_prelude(sys.argv)  # a password on the command line never reaches Hydra's files
    # Hydra's own message for an unknown group option spans several lines: say it in one.
    # With hydra.searchpath the user's own folders may hold further spaces: Hydra checks those.
    own_folders = any(arg.partition("=")[0].lstrip("+~") == "hydra.searchpath" for arg in sys.argv[1:])
    for arg in sys.argv[1:]:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") == "space" and value and not own_folders and value not in available_spaces():
            print(f"error: space={value!r} is not known; available spaces: {', '.join(available_spaces())}",
                  file=sys.stderr)
            sys.exit(2)

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def main(cfg: Any) -> None:
        console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 120)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        protect_run(cfg, run_dir, real_storage)
        logging.getLogger("nas").setLevel(logging.INFO)
        t0 = time.perf_counter()
        try:
            study, search = run_search(cfg, run_dir, console=console)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            console.print(f"[red]error:[/red] {e}", highlight=False)
            sys.exit(2)
        out = search.write(study)
        front_table(out["front"], console, quality=quality_column(search.settings.objectives))
        console.print(f"latency: {search.timer.settings.describe()}; base {search.base_metrics['latency_ms']:.2f} {search.timer.settings.unit} "
                      f"(median of its {len(search.timer.base_rounds)} rounds)", highlight=False)
        phases = ", ".join(f"{k} {v:.0f}s" for k, v in search.clock.seconds.items())
        console.print(f"time per phase: {phases}; total {time.perf_counter() - t0:.0f}s", highlight=False)
        console.print(f"run folder: {run_dir}\n  best.yaml, pareto.csv, pareto.png, pareto.html, trials.csv\n"
                      f"  inspect: optuna-dashboard {dashboard_url(storage_url(search.settings, run_dir))}",
                      highlight=False)

    main()


if __name__ == "__main__":
    _main()
