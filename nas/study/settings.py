"""The study's settings (search.*), its objectives, the sampler and the final stage's recipe."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from nas.quality.finetune import TrainSettings
from nas.quality.metrics import QUALITY
from nas.study.space import SearchSpace, available_spaces
from nas.study.trial import ESTIMATORS

SAMPLERS = ("nsga2", "tpe", "random")
OBJECTIVES = ("accuracy", "perplexity", "latency", "params", "flops", "size")
# The latency objective is the candidate's latency relative to the base, timed in pairs: a ratio
# stays comparable across workers, machines and a busier moment, where milliseconds do not.
OBJECTIVE_ATTR = {"accuracy": "val_accuracy", "perplexity": "val_perplexity", "latency": "latency_ratio", "params": "params", "flops": "flops",
                  "size": "size_mb"}
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

    final = dict(cfg.get("final") or {})
    overrides = {"max_steps": int(final.get("max_steps", 400)), "lr": float(final.get("lr", 1e-4))}
    if final.get("distill") is not None:
        overrides["distill"] = str(final["distill"])
    return TrainSettings.from_cfg(cfg.get("train") or {}, **overrides)


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
