"""Search spaces as data (search_spaces/*.yaml), resolved against the base model, turned into
trial.suggest_* by one function.

Each axis (layers, heads, ffn, hidden, context) is given in one of three forms:
- absolute sizes: a range `{low: 1, high: 6, step: 1}` or `{choices: [32, 64, 128]}` (or a plain list);
- fractions of the base: the same with fractions, written with a decimal point or as a/b
  (`{low: 1/6, high: 1.0, step: 1/6}`, `{choices: [0.5, 1.0]}`); context fractions are of the
  context cap, min(max_length, the model's positions): the longest input the run tokenizes;
- context only, fractions of the task: `{quantiles: [0.5, 0.9, 1.0]}` of the training texts'
  token lengths (capped like the context).
Axes left out stay at the base model's size.

`SearchSpace.from_cfg` parses and checks the file alone (no model needed). `resolve(base, ...)`
turns every axis into absolute sizes the base can hold, at start-up, before any training:
whole layers; heads within 1..base heads (in multiples of `Units.head_multiple`, the hook for
key/value groups); FFN and hidden snapped to multiples of `align` (hidden also of
`Units.hidden_multiple`), the base's own size always allowed. Absolute sizes above the base are
refused in one line naming the axis, the value and the base's range. Only a resolved space
samples; its suggested parameters are the sizes themselves (what reports and the dashboard
show) and always have the same names and count (per-layer choices are made for every base
layer, used for the kept ones), so NSGA-II, which needs a fixed space, works.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from nas.cost.latency import GGUF_PRECISIONS, is_gguf_precision
from nas.cut.vocab import cached_ranking, tokenizer_spec
from nas.data.tasks import load_task, token_lengths
from nas.deploy.quantize import PRECISIONS
from nas.models.loading import load_tokenizer
from nas.spec import BaseShape, SubnetSpec
from nas.util import resolve_cache_dir

AXES = ("layers", "heads", "ffn", "hidden", "context", "groups", "attn_none", "attn_linear", "vocab")
# Decoders only (llama.cpp's deci per-layer blocks, nas.models.decoder): how many kept layers lose their attention
# (`attn_none`) or have it replaced by one linear map of the normed stream (`attn_linear`, fitted by nas.cut.heal);
# the layers are those whose attention changes the stream least on calibration text (never the first kept layer).
ATTENTION_AXES = ("attn_none", "attn_linear")
# On a decoder with grouped-query attention (nas.models.decoder) `heads` counts query heads per key/value
# group (its sizes are of the base's group size) and `groups` counts whole key/value groups; an
# encoder has no groups: there `heads` counts heads and a `groups` axis is dropped at resolve.
# Causal language models: the vocabulary kept (nas.cut.vocab), as coverage shares of the training text's tokens
# (`vocab: {coverage: [full, 1.0, 0.999]}`; `full` keeps every id) or as sizes / fractions of the base's ids.
SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"


def available_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


# ---------------------------------------------------------------------------- the three axis forms


@dataclass(frozen=True)
class Axis:
    """Absolute sizes: a range {low, high, step} or a list of choices (the form every resolved axis has)."""

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

    def describe(self) -> str:
        if self.choices is not None:
            return "[" + ", ".join(map(str, self.choices)) + "]"
        if self.low == self.high:
            return str(self.low)
        return f"{self.low}..{self.high}" + (f" by {self.step}" if self.step != 1 else "")


@dataclass(frozen=True)
class RelativeAxis:
    """Fractions of the base's size: a range {low, high, step} (no step: every size the base can
    hold in between) or a list of choices."""

    name: str
    low: Fraction | None = None
    high: Fraction | None = None
    step: Fraction | None = None
    choices: tuple[Fraction, ...] | None = None


@dataclass(frozen=True)
class QuantileAxis:
    """Context lengths at quantiles of the task's token lengths."""

    name: str
    quantiles: tuple[float, ...]


@dataclass(frozen=True)
class CoverageAxis:
    """Vocabulary sizes at coverage shares of the training text's tokens (None: the whole vocabulary)."""

    name: str
    shares: tuple[float | None, ...]


AnyAxis = Axis | RelativeAxis | QuantileAxis | CoverageAxis


@dataclass(frozen=True)
class Units:
    """What the base family can hold besides 1..base size. Encoders (BERT, RoBERTa, DistilBERT)
    keep any number of heads and any hidden size (the head size is kept apart from the hidden
    size). A decoder whose query heads share key/value groups sets `head_multiple` so that heads
    are kept per whole group; a family that derives head size from hidden / heads would set
    `hidden_multiple` to the head size."""

    head_multiple: int = 1
    hidden_multiple: int = 1

    def __post_init__(self) -> None:
        for name in ("head_multiple", "hidden_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"Units.{name}={getattr(self, name)} must be >= 1")


def check_precision_axis(space: Any, *, lm: bool, runtime: str) -> None:
    """A space's precision axis fits the run's runtime: int8 / fp32 in onnxruntime for a classifier, GGUF types
    in llama.cpp for a language model. One-line ValueError otherwise."""
    gguf = [p for p in space.precisions if is_gguf_precision(p)]
    if lm:
        if runtime != "llamacpp" or len(gguf) != len(space.precisions):
            raise ValueError(f"space {space.name}: precision={list(space.precisions)}: a language model's precision "
                             "axis holds GGUF types and needs latency.runtime=llamacpp (allowed types: "
                             f"{', '.join(GGUF_PRECISIONS)})")
    elif runtime != "onnxruntime" or gguf:
        raise ValueError(f"space {space.name}: precision={list(space.precisions)} needs latency.runtime=onnxruntime "
                         "and fp32 / int8 (a classifier; int8 has no path in torch here)")


def context_cap(shape: BaseShape, max_length: int | None) -> int:
    """The longest input a run tokenizes: relative and quantile context choices are bounded by it."""
    return shape.max_positions if max_length is None else max(1, min(int(max_length), shape.max_positions))


# ---------------------------------------------------------------------------- the space


@dataclass(frozen=True)
class SearchSpace:
    name: str
    axes: Mapping[str, AnyAxis]
    per_layer: bool = False
    align: int = 1
    base: BaseShape | None = None  # set by resolve(): the base whose sizes the (absolute) axes hold
    # The precision axis (`precision: [fp32, int8]` in the space file): each trial runs at the precision
    # it draws, in latency.runtime (onnxruntime); empty: every trial at latency.precision.
    precisions: tuple[str, ...] = ()

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
        precisions = cfg.get("precision") or ()
        if isinstance(precisions, str) or not all(p in PRECISIONS or is_gguf_precision(p) for p in precisions):
            raise ValueError(f"space {name}: precision={list(precisions) if not isinstance(precisions, str) else precisions!r} "
                             f"must be a list of {', '.join(PRECISIONS)} (onnxruntime), or of GGUF types for llama.cpp: "
                             f"{', '.join(GGUF_PRECISIONS)} (a head type of its own: <type>_head_<head>)")
        return cls(name=name, axes=axes, per_layer=bool(cfg.get("per_layer", False)), align=align,
                   precisions=tuple(dict.fromkeys(precisions)))

    @property
    def needs_vocabulary(self) -> bool:
        """True when resolving needs the vocabulary's ranking on the training text (coverage shares)."""
        return isinstance(self.axes.get("vocab"), CoverageAxis)

    @property
    def needs_lengths(self) -> bool:
        """True when resolving needs the task's token lengths (context quantiles)."""
        return any(isinstance(a, QuantileAxis) for a in self.axes.values())

    def validate(self, shape: BaseShape) -> SearchSpace:
        """Raise ValueError naming the first absolute choice outside the base model's range.
        (Fractions and quantiles cannot ask for more than the base has.)"""
        tops = _tops(shape)
        for axis, spec in self.axes.items():
            if axis == "groups" and shape.num_kv_heads is None:
                continue
            if axis in ATTENTION_AXES and shape.num_kv_heads is None:
                raise ValueError(f"space {self.name}: axis {axis} is for decoders (llama.cpp's per-layer blocks); "
                                 "an encoder keeps attention in every layer")
            if axis == "vocab" and shape.vocab_size is None:
                raise ValueError(f"space {self.name}: axis vocab (vocabulary pruning) is for causal language models; "
                                 "an encoder classifier keeps its vocabulary")
            if isinstance(spec, Axis):
                for value in spec.values:
                    if not (0 if axis in ATTENTION_AXES else 1) <= value <= tops[axis]:
                        raise ValueError(
                            f"space {self.name}: {axis} choice {value} is outside the base model's range 1..{tops[axis]}"
                        )
        return self

    def resolve(
        self,
        shape: BaseShape,
        *,
        max_length: int | None = None,
        lengths: Sequence[int] | None = None,
        units: Units | None = None,
        vocabulary: Any = None,
    ) -> SearchSpace:
        """The same space in absolute sizes this base can hold (deterministic: same inputs, same sizes).

        `max_length` caps the context (the run's tokenisation cap); `lengths` are the task's token
        lengths, needed only by context quantiles; `units` are the family's constraints; `vocabulary` (a
        nas.cut.vocab.VocabRanking of the training text), needed only by vocabulary coverage shares.
        """
        self.validate(shape)
        units = units or Units()
        cap = context_cap(shape, max_length)
        tops = {**_tops(shape), "context": cap}
        steps = {
            "layers": 1,
            "heads": units.head_multiple,
            "ffn": self.align,
            "hidden": math.lcm(self.align, units.hidden_multiple),
            "context": 1,
            "groups": 1,
            "vocab": 1,
            **dict.fromkeys(ATTENTION_AXES, 1),
        }
        if tops["heads"] % units.head_multiple:
            raise ValueError(
                f"Units.head_multiple={units.head_multiple} does not divide the base's {tops['heads']} heads"
            )
        axes: dict[str, Axis] = {}
        for axis, spec in self.axes.items():
            if axis == "groups" and shape.num_kv_heads is None:
                continue  # an encoder: every head is its own group; the heads axis decides
            top, unit = tops[axis], steps[axis]
            if axis in ATTENTION_AXES and isinstance(spec, RelativeAxis):  # counts of layers: 0 allowed
                axes[axis] = _resolve_count(spec, top)
            elif isinstance(spec, Axis):
                axes[axis] = _resolve_absolute(spec, unit, top)
            elif isinstance(spec, RelativeAxis):
                axes[axis] = _resolve_relative(spec, unit, top)
            elif isinstance(spec, CoverageAxis):
                axes[axis] = _resolve_coverage(self.name, spec, vocabulary, top)
            else:
                axes[axis] = _resolve_quantiles(self.name, spec, lengths, cap)
        return replace(self, axes=axes, base=shape)

    def choices(self) -> dict[str, list[int]]:
        """Every size each axis offers, e.g. {'layers': [1, ..., 6], ...} (a resolved space only)."""
        self._require_resolved()
        out: dict[str, list] = {axis: list(spec.values) for axis, spec in self.axes.items()}  # type: ignore[union-attr]
        if self.precisions:
            out["precision"] = list(self.precisions)
        return out

    def describe(self) -> str:
        """One line, e.g. 'layers 1..6 | heads 2..12 by 2 | context [32, 64, 128]' (a resolved space only)."""
        self._require_resolved()
        return " | ".join([f"{axis} {spec.describe()}" for axis, spec in self.axes.items()]  # type: ignore[union-attr]
                          + ([f"precision [{', '.join(self.precisions)}]"] if self.precisions else []))

    def suggest_precision(self, trial: Any) -> str | None:
        """The precision this trial runs at (the precision axis), or None without one."""
        return str(trial.suggest_categorical("precision", list(self.precisions))) if self.precisions else None

    def _require_resolved(self) -> None:
        if self.base is None:
            raise ValueError(f"space {self.name}: resolve it against the base model first (SearchSpace.resolve)")

    def suggest(self, trial: Any, shape: BaseShape, scores: Any, attention: Any = None) -> SubnetSpec:
        """Sample one SubnetSpec. `scores` (ImportanceScores) picks which layers to keep; `attention` (per base layer,
        how much its attention changes the stream: nas.cut.heal.Calibration.influence) which lose their attention
        first (the attention axes)."""
        self._require_resolved()
        if shape != self.base:
            raise ValueError(f"space {self.name} was resolved for {self.base}, not for {shape}; resolve it again")
        axes: Mapping[str, Axis] = self.axes  # type: ignore[assignment]
        n_layers = axes["layers"].suggest(trial, "layers") if "layers" in axes else shape.num_layers
        layers = scores.top_layers(n_layers) if scores is not None else tuple(range(n_layers))

        def per_layer(axis: str, top: int) -> tuple[int, ...]:
            if axis not in axes:
                return (top,) * len(layers)
            if self.per_layer:
                chosen = [axes[axis].suggest(trial, f"{axis}_{i}") for i in range(shape.num_layers)]
                return tuple(chosen[i] for i in layers)
            return (axes[axis].suggest(trial, axis),) * len(layers)

        heads = per_layer("heads", _tops(shape)["heads"])
        kv_heads = None
        if shape.num_kv_heads is not None:  # heads were per group: whole groups x query heads per group
            kv_heads = per_layer("groups", shape.num_kv_heads)
            heads = tuple(q * g for q, g in zip(heads, kv_heads, strict=True))
        ffn = per_layer("ffn", shape.ffn_size)
        hidden = axes["hidden"].suggest(trial, "hidden") if "hidden" in axes else shape.hidden_size
        context = axes["context"].suggest(trial, "context") if "context" in axes else shape.max_positions
        vocab = axes["vocab"].suggest(trial, "vocab") if "vocab" in axes else None
        if vocab is not None and shape.vocab_size is not None and vocab >= shape.vocab_size:
            vocab = None  # the whole vocabulary
        attn = None
        if any(a in axes for a in ATTENTION_AXES):
            counts = {a: axes[a].suggest(trial, a) if a in axes else 0 for a in ATTENTION_AXES}
            attn = attention_variants(layers, counts["attn_none"], counts["attn_linear"], attention)
            heads = tuple(h if a == "full" else 0 for h, a in zip(heads, attn, strict=True))
            kv_heads = tuple(g if a == "full" else 0 for g, a in zip(kv_heads, attn, strict=True))
        return SubnetSpec(layers=layers, heads=heads, ffn=ffn, hidden=hidden, context=context,
                          kv_heads=kv_heads, attn=attn if attn and set(attn) != {"full"} else None,
                          vocab=vocab).validate(shape)


def attention_variants(layers: Sequence[int], n_none: int, n_linear: int, influence: Any) -> tuple[str, ...]:
    """Per kept layer: full, none or linear. The kept layers whose attention changes the stream least (`influence`
    per base layer; None: the last layers first) lose theirs: the least `n_none`, then the next `n_linear` get a
    linear map. The first kept layer keeps its attention (llama.cpp reads the head size there); counts beyond the
    other layers are cut to fit."""
    order = sorted(layers[1:], key=lambda b: (float(influence[b]), -b) if influence is not None else (-b, 0))
    none = set(order[:n_none])
    linear = set(order[n_none:n_none + n_linear])
    return tuple("none" if b in none else "linear" if b in linear else "full" for b in layers)


def task_token_lengths(cfg: Any, *, cap: int) -> Any:
    """The token lengths of the task's training texts as the base's tokenizer counts them, at most
    `cap`: what context quantiles resolve against (loads the data and the tokenizer, no model)."""

    task = load_task(cfg["data"])
    return token_lengths(task.train["text"], load_tokenizer(cfg["model"]["name_or_path"]), cap=cap)


def task_vocabulary(cfg: Any) -> Any:
    """The vocabulary's ranking on the task's training text (nas.cut.vocab, cached), for the vocab axis: loads the
    data and the tokenizer, no model. A tokenizer that is not byte-level BPE is refused in one line."""
    tokenizer = load_tokenizer(cfg["model"]["name_or_path"])
    tokenizer_spec(tokenizer)  # the reason, in one line, for a tokenizer vocabulary pruning cannot rewrite
    return cached_ranking(tokenizer, load_task(cfg["data"]), cache_dir=resolve_cache_dir(cfg))


# ---------------------------------------------------------------------------- resolution


def _tops(shape: BaseShape) -> dict[str, int]:
    """The largest size of each axis: heads per key/value group and whole groups on a GQA decoder."""
    grouped = shape.num_kv_heads is not None
    return {"layers": shape.num_layers, "heads": shape.group_size if grouped else shape.num_heads,
            "ffn": shape.ffn_size, "hidden": shape.hidden_size, "context": shape.max_positions,
            "groups": shape.num_kv_heads or shape.num_heads, "vocab": shape.vocab_size or 0,
            **dict.fromkeys(ATTENTION_AXES, shape.num_layers - 1)}


def _snap(x: Fraction | int, unit: int, top: int) -> int:
    """The nearest size the base can hold: a multiple of `unit` in unit..top (halves round up), or top itself."""
    if x >= top:
        return top
    return min(top, max(unit, math.floor(Fraction(x) / unit + Fraction(1, 2)) * unit))


def _as_axis(name: str, values: Sequence[int], *, as_range: bool) -> Axis:
    """A range when the sizes are evenly spaced and the file gave a range (same Optuna distribution
    as an absolute range), choices otherwise."""
    values = list(dict.fromkeys(values))  # drop repeats, keep order
    if as_range:
        values = sorted(values)
        gaps = {b - a for a, b in zip(values, values[1:])}
        if len(gaps) <= 1:
            return Axis(name=name, low=values[0], high=values[-1], step=gaps.pop() if gaps else 1)
    return Axis(name=name, choices=tuple(values))


def _resolve_absolute(spec: Axis, unit: int, top: int) -> Axis:
    if unit == 1:
        return spec  # already sizes the base holds (validate checked the range)
    snapped = [_snap(v, unit, top) for v in spec.values]
    if snapped == list(spec.values):
        return spec
    return _as_axis(spec.name, snapped, as_range=spec.choices is None)


def _resolve_relative(spec: RelativeAxis, unit: int, top: int) -> Axis:
    if spec.choices is not None:
        return _as_axis(spec.name, [_snap(f * top, unit, top) for f in spec.choices], as_range=False)
    assert spec.low is not None and spec.high is not None
    lo, hi = _snap(spec.low * top, unit, top), _snap(spec.high * top, unit, top)
    if spec.step is None:  # every size the base can hold between the two ends
        values = [v for v in range(lo, hi + 1) if v % unit == 0 or v == top]
        return _as_axis(spec.name, values or [lo], as_range=True)
    n = round((spec.high - spec.low) / spec.step)
    fractions = [spec.low + k * spec.step for k in range(n)] + [spec.high]
    return _as_axis(spec.name, [_snap(f * top, unit, top) for f in fractions], as_range=True)


def _resolve_count(spec: RelativeAxis, top: int) -> Axis:
    """A count of layers (0..top) as fractions of the base's layers: rounded, 0 kept."""
    if spec.choices is not None:
        return _as_axis(spec.name, [min(top, round(f * top)) for f in spec.choices], as_range=False)
    assert spec.low is not None and spec.high is not None
    return Axis(name=spec.name, low=min(top, round(spec.low * top)), high=min(top, round(spec.high * top)))


def _resolve_coverage(space: str, spec: CoverageAxis, vocabulary: Any, top: int) -> Axis:
    if vocabulary is None:
        raise ValueError(f"space {space}: vocab coverage shares need the vocabulary's ranking on the training text "
                         "(a causal language model with a byte-level BPE tokenizer, on a language-modelling task)")
    sizes = [top if share is None else min(top, vocabulary.size_for(share)) for share in spec.shares]
    return _as_axis(spec.name, sizes, as_range=False)


def _resolve_quantiles(space: str, spec: QuantileAxis, lengths: Sequence[int] | None, cap: int) -> Axis:
    if lengths is None or len(lengths) == 0:
        raise ValueError(f"space {space}: context quantiles need the task's token lengths; none were given")
    arr = np.asarray(lengths, dtype=np.int64)
    # inverted_cdf: the shortest length that at least a share q of the inputs fit in (a real length).
    values = [int(np.quantile(arr, q, method="inverted_cdf")) for q in spec.quantiles]
    return _as_axis(spec.name, [min(cap, max(1, v)) for v in values], as_range=False)


# ---------------------------------------------------------------------------- parsing


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (float, str)) and not isinstance(value, bool)


MIXED = ("an axis with any fraction (0.5, 1/3) is relative to the base: write all its values as fractions, "
         "or all as whole sizes")


def _fraction(space: str, axis: str, key: str, value: Any, *, quantile: bool = False) -> Fraction:
    """0.25, 1.0, '1/12' (or 1, 0 where the rest of the axis is fractional) as an exact Fraction."""
    try:
        f = Fraction(str(value).strip()) if not isinstance(value, bool) else None
    except (ValueError, ZeroDivisionError):
        f = None
    if f is None or not (0 <= f <= 1 if quantile else 0 < f <= 1):
        bounds, hint = ("[0, 1]", "a quantile of the task's token lengths") if quantile else ("(0, 1]", MIXED)
        raise ValueError(f"space {space}: axis {axis} {key}={value!r} is not a fraction in {bounds}; {hint}")
    return f


def _parse_axis(space: str, axis: str, raw: Any) -> AnyAxis:
    if isinstance(raw, Sequence) and not isinstance(raw, (str, bytes)) or type(raw).__name__ == "ListConfig":
        raw = {"choices": list(raw)}
    if not isinstance(raw, Mapping):
        raise ValueError(f"space {space}: axis {axis}={raw!r} must be {{low, high, step}} or {{choices: [...]}}")
    if "coverage" in raw:
        if axis != "vocab":
            raise ValueError(f"space {space}: axis {axis} cannot take coverage shares; only vocab resolves against "
                             "the training text's tokens")
        shares = tuple(_coverage(space, c) for c in raw["coverage"] or ())
        if not shares:
            raise ValueError(f"space {space}: axis vocab has an empty coverage list")
        return CoverageAxis(name=axis, shares=shares)
    if "quantiles" in raw:
        if axis != "context":
            raise ValueError(
                f"space {space}: axis {axis} cannot take quantiles; only context resolves against the task's lengths"
            )
        qs = tuple(float(_fraction(space, axis, "quantiles", q, quantile=True)) for q in raw["quantiles"] or ())
        if not qs:
            raise ValueError(f"space {space}: axis {axis} has an empty quantiles list")
        return QuantileAxis(name=axis, quantiles=qs)
    if "choices" in raw:
        values = list(raw["choices"] or ())
        if not values:
            raise ValueError(f"space {space}: axis {axis} has an empty choices list")
        if any(_is_fraction(v) for v in values):
            return RelativeAxis(name=axis, choices=tuple(_fraction(space, axis, "choices", v) for v in values))
        return Axis(name=axis, choices=tuple(int(v) for v in values))
    for key in ("low", "high"):
        if key not in raw:
            raise ValueError(f"space {space}: axis {axis} lacks {key!r}; give low, high (and step) or choices")
    if any(_is_fraction(raw.get(k)) for k in ("low", "high", "step")):
        return _parse_relative_range(space, axis, raw)
    low, high, step = int(raw["low"]), int(raw["high"]), int(raw.get("step", 1))
    if step < 1 or low > high:
        raise ValueError(f"space {space}: axis {axis} range low={low} high={high} step={step} is empty")
    if (high - low) % step:
        raise ValueError(f"space {space}: axis {axis} high={high} is not low={low} plus a multiple of step={step}")
    return Axis(name=axis, low=low, high=high, step=step)


def _coverage(space: str, value: Any) -> float | None:
    """A vocabulary coverage share in (0, 1], or None for `full` (the whole vocabulary)."""
    if isinstance(value, str) and value.strip() == "full":
        return None
    try:
        share = float(Fraction(str(value).strip())) if not isinstance(value, bool) else None
    except (ValueError, ZeroDivisionError):
        share = None
    if share is None or not 0 < share <= 1:
        raise ValueError(f"space {space}: axis vocab coverage {value!r} is not a share in (0, 1] of the training "
                         "text's tokens (e.g. 1.0, 0.9999, 0.999) or `full` (the whole vocabulary)")
    return share


def _parse_relative_range(space: str, axis: str, raw: Mapping[str, Any]) -> RelativeAxis:
    low, high = (_fraction(space, axis, k, raw[k]) for k in ("low", "high"))
    step = None if raw.get("step") is None else _fraction(space, axis, "step", raw["step"])
    if low > high:
        raise ValueError(f"space {space}: axis {axis} range low={raw['low']} high={raw['high']} is empty")
    if step is not None:
        n = round((high - low) / step)
        # Decimals such as 0.333 / 0.0833 land within a hundredth of a step: close enough.
        if abs(low + n * step - high) > step / 100:
            raise ValueError(
                f"space {space}: axis {axis} high={raw['high']} is not low={raw['low']} plus a multiple of "
                f"step={raw['step']}; write exact fractions as a/b, e.g. 1/12"
            )
    return RelativeAxis(name=axis, low=low, high=high, step=step)
