"""The config's types, composing it outside `@hydra.main` (benchmarks, tests, notebooks, and the
commands' own checks before Hydra runs them), and Hydra's composition errors said in one line.

Every fixed node of conf/config.yaml has a structured config here (registered in Hydra's ConfigStore
as schema/NODE, listed first in the defaults): Hydra refuses an unknown key or a value of the wrong
type before any code runs. The values live in the YAML files; ranges, choices and combinations are
checked by each stage's own settings class (one-line ValueErrors naming the allowed values)."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional  # noqa: UP035  (OmegaConf reads these annotations)

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import MISSING
from omegaconf.errors import OmegaConfBaseException

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# Types only: every value comes from the YAML files (MISSING here), so a default is written once.
# ruff: noqa: UP045 (Optional[...] below: OmegaConf reads the annotations)


@dataclass
class ModelSchema:
    name_or_path: Optional[str] = MISSING
    attn_implementation: str = MISSING


@dataclass
class BaseSchema:
    max_epochs: int = MISSING
    max_steps: Optional[int] = MISSING
    eval_every: int = MISSING
    patience: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING


@dataclass
class ImportanceSchema:
    method: str = MISSING
    max_batches: int = MISSING
    batch_size: int = MISSING


@dataclass
class PruneSchema:
    recovery: str = MISSING
    calibration: int = MISSING
    calibration_batch_size: int = MISSING
    ridge: float = MISSING
    heal: str = MISSING
    heal_blocks: int = MISSING
    heal_ridge: float = MISSING


@dataclass
class SupernetSchema:
    steps: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    random_subnets: int = MISSING
    distill: str = MISSING
    distill_weight: float = MISSING
    temperature: float = MISSING
    weight_decay: float = MISSING
    warmup_ratio: float = MISSING
    random_contexts: bool = MISSING
    checkpoint_every: int = MISSING
    seed: int = MISSING
    threads: int = MISSING


@dataclass
class LatencySchema:
    inputs: str = MISSING
    runtime: str = MISSING
    batch_size: int = MISSING
    seq_len: Optional[int] = MISSING
    threads: int = MISSING
    sample_size: int = MISSING
    rounds: int = MISSING
    warmup: int = MISSING
    chunk: int = MISSING
    seed: int = MISSING
    split: str = MISSING
    generation: str = MISSING
    new_tokens: int = MISSING
    precision: str = MISSING
    quantization: str = MISSING
    activations: str = MISSING
    per_channel: bool = MISSING
    keep_fp32: List[str] = MISSING
    calibration: int = MISSING
    model: str = MISSING
    imatrix: Optional[str] = MISSING
    rounding: str = MISSING


@dataclass
class FinalSchema:
    rule: str = MISSING
    candidates: int = MISSING
    slack: float = MISSING
    rung_steps: int = MISSING
    band: float = MISSING
    judge_share: float = MISSING
    time_budget: Optional[float] = MISSING
    max_epochs: float = MISSING
    max_steps: Optional[int] = MISSING
    eval_every: int = MISSING
    patience: int = MISSING
    start: str = MISSING
    layers: str = MISSING
    checkpoint: str = MISSING
    lr: float = MISSING
    distill: Optional[str] = MISSING
    onnx: bool = MISSING
    transfer: str = MISSING
    transfer_path: Optional[str] = MISSING
    transfer_column: str = MISSING
    transfer_split: str = MISSING
    transfer_size: int = MISSING
    transfer_share: float = MISSING
    ppl_slack: float = MISSING
    ppl_band: float = MISSING
    gguf: List[str] = MISSING


@dataclass
class TrainSchema:
    max_steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    warmup_ratio: float = MISSING
    distill_weight: float = MISSING
    temperature: float = MISSING
    distill: str = MISSING
    hidden_weight: float = MISSING
    distill_topk: int = MISSING
    precision: str = MISSING
    lm_positions: str = MISSING
    freeze_embeddings: bool = MISSING
    eval_batch_size: int = MISSING
    seed: int = MISSING
    threads: int = MISSING


@dataclass
class SearchSchema:
    n_trials: int = MISSING
    time_budget: Optional[float] = MISSING
    seed: int = MISSING
    sampler: str = MISSING
    population_size: int = MISSING
    storage: Optional[str] = MISSING
    study_name: str = MISSING
    objectives: List[str] = MISSING
    estimator: str = MISSING
    final_k: int = MISSING
    max_latency_ms: Optional[float] = MISSING
    max_consecutive_failures: int = MISSING
    heartbeat_interval: int = MISSING
    grace_period: int = MISSING
    stale_timeout: int = MISSING


@dataclass
class ExitsSchema:
    layers: Any = MISSING  # auto | all | none | a list of base layer indices
    rule: str = MISSING
    threshold: Optional[float] = MISSING
    patience: Optional[int] = MISSING
    tolerance: float = MISSING
    margin: float = MISSING
    head_lr: float = MISSING
    sample_size: int = MISSING


SCHEMAS = {"model": ModelSchema, "base": BaseSchema, "importance": ImportanceSchema, "prune": PruneSchema,
           "supernet": SupernetSchema, "latency": LatencySchema, "final": FinalSchema, "train": TrainSchema,
           "search": SearchSchema, "exits": ExitsSchema}
for _node, _schema in SCHEMAS.items():
    ConfigStore.instance().store(group="schema", name=_node, node=_schema, package=_node)


def compose(overrides: Sequence[str] = (), *, config_name: str = "config") -> Any:
    """The same config `python -m nas.search` would see with these overrides (no run dir)."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def compose_or_refuse(overrides: Sequence[str], *, config_name: str) -> Any:
    """compose(), with a bad override refused as a one-line ValueError naming it and the reason
    (Hydra's own message for a wrong type or an unknown key spans several lines)."""
    try:
        return compose(overrides, config_name=config_name)
    except (HydraException, OmegaConfBaseException) as e:
        message = one_line(e, overrides)
        node = message.partition(".")[0]
        if "is not a setting" in message and node in SCHEMAS:
            message += f"; allowed: {', '.join(f'{node}.{k}' for k in SCHEMAS[node].__dataclass_fields__)}"
        raise ValueError(message) from None


def refuse_bad_overrides(argv: Sequence[str], *, config_name: str = "config") -> None:
    """For a command line: a wrong key or type is one line on stderr and exit code 2, before Hydra
    (whose own message spans several lines) or any work starts. Sweeps and Hydra's flags (-m, --help,
    --cfg, ...) are left to Hydra."""
    overrides = list(argv[1:])
    if any(arg.startswith("-") for arg in overrides):
        return
    try:
        compose_or_refuse(overrides, config_name=config_name)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def one_line(error: BaseException, overrides: Sequence[str]) -> str:
    """`key=value: reason` from a Hydra / OmegaConf composition error."""
    reason = str(error.__cause__ or error).strip().splitlines()[0]
    text = str(error) + " " + str(error.__cause__ or "")
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", text):
            shown = value if re.fullmatch(r"-?[\d.eE+-]+|true|false|null", value) else repr(value)
            if "not in" in reason:
                return f"{key}={shown} is not a setting ({reason})"
            return f"{key}={shown}: {reason}"
    return reason
