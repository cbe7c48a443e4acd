"""Search spaces as data (search_spaces/*.yaml), turned into trial.suggest_* by one function.

A space lists, per axis, either a range `{low, high, step}` or `{choices: [...]}`. Axes left
out stay at the base model's size. The parameters suggested always have the same names
and count for a given space (per-layer choices are made for every base layer, used for the
kept ones), so NSGA-II, which needs a fixed space, works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.spec import BaseShape, SubnetSpec

AXES = ("layers", "heads", "ffn", "hidden", "context")
SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


def available_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


@dataclass(frozen=True)
class Axis:
    name: str
    low: int | None = None
    high: int | None = None
    step: int = 1
    choices: tuple[int, ...] | None = None

    @property
    def values(self) -> tuple[int, ...]:
        if self.choices is not None:
            return self.choices
        assert self.low is not None and self.high is not None
        return tuple(range(self.low, self.high + 1, self.step))

    def suggest(self, trial: Any, param: str) -> int:
        if self.choices is not None:
            return int(trial.suggest_categorical(param, list(self.choices)))
        return int(trial.suggest_int(param, self.low, self.high, step=self.step))


@dataclass(frozen=True)
class SearchSpace:
    name: str
    axes: Mapping[str, Axis]
    per_layer: bool = False
    align: int = 1

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> SearchSpace:
        name = str(cfg.get("name", "?"))
        raw_axes = cfg.get("axes") or {}
        unknown = sorted(set(raw_axes) - set(AXES))
        if unknown:
            raise ValueError(f"space {name}: unknown axis {unknown[0]!r}; allowed axes: {', '.join(AXES)}")
        if not raw_axes:
            raise ValueError(f"space {name}: no axes; give at least one of {', '.join(AXES)}")
        align = int(cfg.get("align", 1) or 1)
        if align < 1:
            raise ValueError(f"space {name}: align={align} must be >= 1")
        axes = {axis: _parse_axis(name, axis, raw) for axis, raw in raw_axes.items()}
        return cls(name=name, axes=axes, per_layer=bool(cfg.get("per_layer", False)), align=align)

    def validate(self, shape: BaseShape) -> SearchSpace:
        """Raise ValueError naming the first choice outside the base model's range."""
        tops = {
            "layers": shape.num_layers,
            "heads": shape.num_heads,
            "ffn": shape.ffn_size,
            "hidden": shape.hidden_size,
            "context": shape.max_positions,
        }
        for axis, spec in self.axes.items():
            for value in spec.values:
                if not 1 <= value <= tops[axis]:
                    raise ValueError(
                        f"space {self.name}: {axis} choice {value} is outside the base model's range 1..{tops[axis]}"
                    )
        return self

    def _snap(self, axis: str, value: int, top: int) -> int:
        if axis in ("ffn", "hidden") and self.align > 1 and value != top:
            value = max(self.align, int(round(value / self.align)) * self.align)
        return min(value, top)

    def suggest(self, trial: Any, shape: BaseShape, scores: Any) -> SubnetSpec:
        """Sample one SubnetSpec. `scores` (ImportanceScores) picks which layers to keep."""
        n_layers = self.axes["layers"].suggest(trial, "layers") if "layers" in self.axes else shape.num_layers
        layers = scores.top_layers(n_layers) if scores is not None else tuple(range(n_layers))

        def per_layer(axis: str, top: int) -> tuple[int, ...]:
            if axis not in self.axes:
                return (top,) * len(layers)
            if self.per_layer:
                chosen = [self.axes[axis].suggest(trial, f"{axis}_{i}") for i in range(shape.num_layers)]
                return tuple(self._snap(axis, chosen[i], top) for i in layers)
            return (self._snap(axis, self.axes[axis].suggest(trial, axis), top),) * len(layers)

        heads = per_layer("heads", shape.num_heads)
        ffn = per_layer("ffn", shape.ffn_size)
        hidden = self._snap("hidden", self.axes["hidden"].suggest(trial, "hidden"), shape.hidden_size) if "hidden" in self.axes else shape.hidden_size
        context = self.axes["context"].suggest(trial, "context") if "context" in self.axes else shape.max_positions
        return SubnetSpec(layers=layers, heads=heads, ffn=ffn, hidden=hidden, context=context).validate(shape)


def _parse_axis(space: str, axis: str, raw: Any) -> Axis:
    if isinstance(raw, Sequence) and not isinstance(raw, (str, bytes)) or type(raw).__name__ == "ListConfig":
        raw = {"choices": list(raw)}
    if not isinstance(raw, Mapping):
        raise ValueError(f"space {space}: axis {axis}={raw!r} must be {{low, high, step}} or {{choices: [...]}}")
    if "choices" in raw:
        choices = tuple(int(v) for v in raw["choices"])
        if not choices:
            raise ValueError(f"space {space}: axis {axis} has an empty choices list")
        return Axis(name=axis, choices=choices)
    try:
        low, high, step = int(raw["low"]), int(raw["high"]), int(raw.get("step", 1))
    except KeyError as e:
        raise ValueError(f"space {space}: axis {axis} lacks {e.args[0]!r}; give low, high (and step) or choices") from None
    if step < 1 or low > high:
        raise ValueError(f"space {space}: axis {axis} range low={low} high={high} step={step} is empty")
    if (high - low) % step:
        raise ValueError(f"space {space}: axis {axis} high={high} is not low={low} plus a multiple of step={step}")
    return Axis(name=axis, low=low, high=high, step=step)
