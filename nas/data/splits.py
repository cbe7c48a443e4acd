"""What every task is: a TaskData with three splits, its data settings read from a plain mapping,
and the seeded assignment of rows (or groups) to splits. Shared by labelled tasks (nas.data.tasks)
and plain text (nas.data.text). Importing it is cheap: numpy and datasets load where used."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

if TYPE_CHECKING:
    import datasets
    import numpy as np


SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT = {"validation": 0.1, "test": 0.1}  # fractions of the rows (of the groups, when grouped)


@dataclass(frozen=True)
class TaskData:
    """A labelled text-classification task, split three ways."""

    train: datasets.Dataset  # columns: text (str), label (int) [+ extras, e.g. group]
    validation: datasets.Dataset
    test: datasets.Dataset
    label_names: tuple[str, ...]  # id -> name
    fingerprint: str  # stable hash of (source, settings, sizes) for cache keys
    # validation rows held out from everything that selects (early stopping, checkpoints, rungs, the front): only
    # the final stage's band reads them (hold_out_judge); None: not held out
    judge: datasets.Dataset | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLITS}


def hold_out_judge(task: TaskData, share: float, *, seed: int = 0) -> TaskData:
    """`task` with a seeded `share` of its validation rows moved to `judge`: the rows the winner's band is judged on,
    which no early stopping, checkpoint choice or rung has seen (those read `validation`, now the rest). Under 2
    validation rows, or share 0: `task` unchanged. The fingerprint changes with the split, so a base fine-tuned with
    early stopping on the whole validation split is not reused."""
    import hashlib

    import numpy as np

    n = len(task.validation)
    if share <= 0 or n < 2 or task.judge is not None:
        return task
    order = np.random.default_rng([int(seed), 4]).permutation(n)
    held = min(n - 1, max(1, round(n * float(share))))
    judge = task.validation.select(sorted(order[:held].tolist()))
    rest = task.validation.select(sorted(order[held:].tolist()))
    fingerprint = hashlib.sha256(f"{task.fingerprint}|judge {float(share):g} {int(seed)}".encode()).hexdigest()[:16]
    return dataclasses.replace(task, validation=rest, judge=judge, fingerprint=fingerprint)


def as_dict(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Plain dict from a Mapping or an OmegaConf DictConfig (missing ``???`` kept as the string)."""
    if type(cfg).__module__.startswith("omegaconf"):
        out = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    elif isinstance(cfg, Mapping):
        out = copy.deepcopy(dict(cfg))
    else:
        raise ValueError(f"data config must be a mapping, got {type(cfg).__name__}")
    if not isinstance(out, dict):
        raise ValueError(f"data config must be a mapping, got {type(out).__name__}")
    return out


def split_fractions(split: Any) -> dict[str, float]:
    if not isinstance(split, Mapping):
        raise ValueError(f"data.split={split!r} must be a mapping with keys validation, test")
    unknown = sorted(set(split) - {"validation", "test"})
    if unknown:
        raise ValueError(f"data.split has unknown key {unknown[0]!r}; allowed: validation, test")
    out = {}
    for key in ("validation", "test"):
        value = split.get(key, DEFAULT_SPLIT[key])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"data.split.{key}={value!r} must be a fraction in (0, 1)")
        out[key] = float(value)
    if out["validation"] + out["test"] >= 1:
        raise ValueError(
            f"data.split.validation + data.split.test = {out['validation'] + out['test']:g} "
            "must be < 1 (train needs the rest)"
        )
    return out


def assign_random(n: int, fractions: Mapping[str, float], *, seed: int) -> np.ndarray:
    """Split names for ``n`` rows: seeded permutation, first round(f*n) rows to each named split."""
    import numpy as np  # keeps `import nas.data` cheap

    order = np.random.default_rng(seed).permutation(n)
    out = np.full(n, "train", dtype=object)
    start = 0
    for name, frac in fractions.items():
        count = int(math.floor(frac * n + 0.5))
        out[order[start : start + count]] = name
        start += count
    return out
