"""The study's settings (search.*), its objectives, the sampler and the final stage's recipe."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from nas.data.transfer import TransferSettings
from nas.quality.distill import FinalRecipe
from nas.quality.exits import ExitSettings
from nas.quality.finetune import TrainSettings
from nas.quality.metrics import QUALITY
from nas.study.space import SearchSpace, available_spaces
from nas.study.trial import ESTIMATORS

SAMPLERS = ("nsga2", "tpe", "random")
OBJECTIVES = ("accuracy", "perplexity", "latency", "params", "flops", "size")
# The latency objective is the candidate's latency relative to the base, timed in pairs: a ratio
# stays comparable across workers, machines and a busier moment, where milliseconds do not.
OBJECTIVE_ATTR = {"accuracy": "val_accuracy", "perplexity": "val_byte_perplexity", "latency": "latency_ratio", "params": "params", "flops": "flops",
                  "size": "size_mb"}
# A language model's base at each GGUF type of the run (nas.study.search.Search._quantization_alone)
QUANT_ALONE_ATTR = "quantization_alone"
# What makes two runs' latencies comparable: a study continued with other values is refused.
LATENCY_DEFINITION = ("inputs", "runtime", "precision", "quantization", "activations", "per_channel", "keep_fp32",
                      "calibration", "model", "batch_size", "seq_len", "threads", "sample_size", "seed", "split",
                      "generation", "new_tokens")


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

        if self.estimator not in (*ESTIMATORS, "auto"):
            raise ValueError(f"search.estimator={self.estimator!r} is not known; allowed: {', '.join(ESTIMATORS)}, auto")
        if isinstance(self.final_k, bool) or not isinstance(self.final_k, int) or self.final_k < 0:
            raise ValueError(f"search.final_k={self.final_k!r} must be an integer >= 0 (0: no final training)")
        if self.stale_timeout < 1:
            raise ValueError(f"search.stale_timeout={self.stale_timeout} must be >= 1 (seconds)")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"search.time_budget={self.time_budget} must be > 0 (seconds) or null")

    @property
    def directions(self) -> list[str]:
        return [QUALITY[self.objectives[0]][1]] + ["minimize"] * (len(self.objectives) - 1)


def _seconds_or_none(value: Any, key: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r} must be a number of seconds > 0, or null") from None


def final_train_settings(cfg: Mapping[str, Any]) -> Any:
    """The final training's optimiser and loss settings (final.lr, final.distill over train.*). For a
    language model, whose final stage trains a fixed number of steps with the trial's trainer, also its
    length: final.max_steps (400 when null)."""

    final = dict(cfg.get("final") or {})
    steps = final.get("max_steps")
    overrides = {"max_steps": 400 if steps is None else int(steps), "lr": float(final.get("lr", 1e-4))}
    if final.get("distill") is not None:
        overrides["distill"] = str(final["distill"])
    return TrainSettings.from_cfg(cfg.get("train") or {}, **overrides)


def final_recipe(cfg: Mapping[str, Any]) -> Any:
    """The final recipe (final.*) of a classifier: epochs, validation, the checkpoint it ends with."""
    final = dict(cfg.get("final") or {})
    steps = final.get("max_steps")
    recipe = FinalRecipe(train=final_train_settings(cfg), max_epochs=float(final.get("max_epochs", 3)),
                         max_steps=None if steps is None else int(steps),
                         eval_every=int(final.get("eval_every", 100)), patience=int(final.get("patience", 0)),
                         start=str(final.get("start", "base")), layers=str(final.get("layers", "auto")),
                         checkpoint=str(final.get("checkpoint", "auto")))
    recipe.validate()
    return recipe


RULES = ("halving", "fastest", "accuracy")


@dataclass(frozen=True)
class FinalSettings:
    """The final stage (final.*, search.final_k): which front members train to convergence, and for how long.

    rule halving: the `candidates` fastest front members whose trial accuracy is within `slack` of the
    base's are trained `rung_steps` steps each; the half projected most accurate at its planned length
    (nas.study.final.projected_accuracy) goes on, for as many steps again
    (each rung doubles the steps done), until `members` (search.final_k) are left; those train to
    convergence. fastest: the `members` fastest such members, trained to convergence. accuracy: the
    front's most accurate members at evenly spaced ranks (the rule before halving). `time_budget`
    (seconds) bounds the whole stage: the stage times a few steps of each candidate and plans from them
    (nas.study.final_plan: fewer candidates, then shorter rungs, before shorter members); a member whose time is
    spent anyway ends at its best checkpoint so far.
    The winner (best.yaml, nas.export) is the fastest member within `band` points of the base's accuracy on the
    judge rows (`judge_share` of validation, held out from every selection), as deployed; none within: the most
    accurate there."""

    recipe: Any  # nas.quality.distill.FinalRecipe
    members: int
    rule: str = "halving"
    candidates: int = 4
    slack: float = 0.08
    rung_steps: int = 200
    band: float = 1.0
    judge_share: float = 0.5  # classifiers: validation rows held out for the band (nas.data.splits.hold_out_judge)
    time_budget: float | None = 480.0
    transfer: Any = None  # nas.data.transfer.TransferSettings
    ppl_slack: float = 3.0  # language models: members' trial perplexity at most (1 + this) x the base's
    ppl_band: float = 0.10  # language models: the winner is the fastest within (1 + this) x the base's perplexity
    exits: Any = None  # nas.quality.exits.ExitSettings (exits.*); None: members carry no early exits

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> FinalSettings:
        final = dict(cfg.get("final") or {})
        search = dict(cfg.get("search") or {})
        settings = cls(recipe=final_recipe(cfg), members=search.get("final_k", 0),
                       rule=str(final.get("rule", "halving")), candidates=final.get("candidates", 4),
                       slack=final.get("slack", 0.08), rung_steps=final.get("rung_steps", 200),
                       band=final.get("band", 1.0), judge_share=final.get("judge_share", 0.5),
                       time_budget=_seconds_or_none(final.get("time_budget"), "final.time_budget"),
                       transfer=TransferSettings.from_cfg(final), ppl_slack=final.get("ppl_slack", 3.0),
                       ppl_band=final.get("ppl_band", 0.10), exits=ExitSettings.from_cfg(cfg.get("exits")))
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"final.rule={self.rule!r} is not known; allowed: {', '.join(RULES)}")
        for key, value, low in (("final.candidates", self.candidates, 1), ("final.rung_steps", self.rung_steps, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key}={value!r} must be an integer >= {low}")
        if self.rule == "halving" and self.members and self.candidates < self.members:
            raise ValueError(f"final.candidates={self.candidates} is fewer than search.final_k={self.members}: "
                             "halving starts from at least the members it ends with")
        if isinstance(self.slack, bool) or not isinstance(self.slack, (int, float)) or not 0 <= self.slack <= 1:
            raise ValueError(f"final.slack={self.slack!r} must be between 0 and 1 (accuracy below the base's)")
        if isinstance(self.band, bool) or not isinstance(self.band, (int, float)) or not 0 <= self.band <= 100:
            raise ValueError(f"final.band={self.band!r} must be between 0 and 100 (accuracy points below the base)")
        if isinstance(self.judge_share, bool) or not isinstance(self.judge_share, (int, float)) \
                or not 0 <= self.judge_share < 1:
            shown = f"{self.judge_share:g}" if isinstance(self.judge_share, float) else repr(self.judge_share)
            raise ValueError(f"final.judge_share={shown} must be in [0, 1) (the share of the validation "
                             "rows held out for the band; 0: none)")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"final.time_budget={self.time_budget:g} must be > 0 (seconds) or null (no limit)")
        for key, value in (("final.ppl_slack", self.ppl_slack), ("final.ppl_band", self.ppl_band)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{key}={value!r} must be >= 0 (a fraction of the base's perplexity)")


def make_sampler(settings: SearchSettings) -> Any:
    if settings.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=settings.seed, population_size=settings.population_size)
    if settings.sampler == "tpe":
        multivariate = len(settings.objectives) == 1
        return optuna.samplers.TPESampler(seed=settings.seed, multivariate=multivariate, n_startup_trials=5)
    return optuna.samplers.RandomSampler(seed=settings.seed)


def chosen_space(cfg: Mapping[str, Any]) -> Any:
    if "space" not in cfg or cfg["space"] is None:
        raise ValueError(f"no search space chosen; add +space=NAME with NAME one of: {', '.join(available_spaces())}")
    return SearchSpace.from_cfg(cfg["space"])
