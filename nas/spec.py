"""SubnetSpec: one pruned shape of a base model, as plain data.

A spec names the base layers it keeps (indices, in order), the number of attention heads and
FFN neurons kept in each of those layers, the hidden (embedding) size kept everywhere, and
the context length (positions kept). Which heads / neurons / channels are kept is decided
by importance scores at pruning time; the spec only fixes how many.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SpecError(ValueError):
    """A SubnetSpec that does not fit its base model."""


@dataclass(frozen=True)
class BaseShape:
    """The dimensions of an unpruned base model that bound every spec."""

    num_layers: int
    num_heads: int
    head_size: int
    hidden_size: int
    ffn_size: int
    max_positions: int

    @classmethod
    def from_config(cls, config: Any) -> BaseShape:
        from nas.arch import arch_for_config

        return arch_for_config(config).base_shape(config)


@dataclass(frozen=True)
class SubnetSpec:
    """One shape: layers kept, heads and FFN width per kept layer, hidden size, context."""

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    hidden: int
    context: int

    def __post_init__(self) -> None:
        # Normalise lists (YAML, JSON) to tuples so specs hash and compare by value.
        for name in ("layers", "heads", "ffn"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise SpecError(f"SubnetSpec.{name}={value!r} must be a list of integers")
            object.__setattr__(self, name, tuple(_as_int(f"{name}[{i}]", v) for i, v in enumerate(value)))
        for name in ("hidden", "context"):
            object.__setattr__(self, name, _as_int(name, getattr(self, name)))

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def full(cls, base: BaseShape) -> SubnetSpec:
        """The keep-everything spec of a base model."""
        return cls(
            layers=tuple(range(base.num_layers)),
            heads=(base.num_heads,) * base.num_layers,
            ffn=(base.ffn_size,) * base.num_layers,
            hidden=base.hidden_size,
            context=base.max_positions,
        )

    @classmethod
    def uniform(
        cls, *, layers: Sequence[int], heads: int, ffn: int, hidden: int, context: int
    ) -> SubnetSpec:
        n = len(layers)
        return cls(layers=tuple(layers), heads=(heads,) * n, ffn=(ffn,) * n, hidden=hidden, context=context)

    # ---- checks ---------------------------------------------------------------------------
    def validate(self, base: BaseShape) -> SubnetSpec:
        """Raise SpecError naming the first field outside the base model's range."""
        n = base.num_layers
        if not self.layers:
            raise SpecError(f"SubnetSpec.layers is empty; keep between 1 and {n} layer indices in 0..{n - 1}")
        if len(self.layers) > n:
            raise SpecError(f"SubnetSpec.layers has {len(self.layers)} entries; the base has {n} layers (allowed 1..{n})")
        for i, layer in enumerate(self.layers):
            if not 0 <= layer < n:
                raise SpecError(f"SubnetSpec.layers[{i}]={layer} is out of range; allowed layer indices are 0..{n - 1}")
        if len(set(self.layers)) != len(self.layers) or list(self.layers) != sorted(self.layers):
            raise SpecError(f"SubnetSpec.layers={list(self.layers)} must be strictly increasing base layer indices")
        for name, values, top in (("heads", self.heads, base.num_heads), ("ffn", self.ffn, base.ffn_size)):
            if len(values) != len(self.layers):
                raise SpecError(
                    f"SubnetSpec.{name} has {len(values)} entries; it needs one per kept layer ({len(self.layers)})"
                )
            for i, v in enumerate(values):
                if not 1 <= v <= top:
                    raise SpecError(f"SubnetSpec.{name}[{i}]={v} is out of range; allowed 1..{top}")
        if not 1 <= self.hidden <= base.hidden_size:
            raise SpecError(f"SubnetSpec.hidden={self.hidden} is out of range; allowed 1..{base.hidden_size}")
        if not 1 <= self.context <= base.max_positions:
            raise SpecError(f"SubnetSpec.context={self.context} is out of range; allowed 1..{base.max_positions}")
        return self

    def is_full(self, base: BaseShape) -> bool:
        return self == SubnetSpec.full(base)

    # ---- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubnetSpec:
        if not isinstance(data, Mapping):
            raise SpecError(f"SubnetSpec data must be a mapping of fields, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        unknown = sorted(set(data) - fields)
        missing = sorted(fields - set(data))
        if unknown or missing:
            raise SpecError(
                f"SubnetSpec fields: unknown {unknown} / missing {missing}; expected exactly {sorted(fields)}"
            )
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in data.items()})

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_yaml(cls, text: str) -> SubnetSpec:
        import yaml

        data = yaml.safe_load(text)
        if not isinstance(data, Mapping):
            raise SpecError(f"SubnetSpec YAML must be a mapping, got {type(data).__name__}")
        return cls.from_dict(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> SubnetSpec:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.write_text(self.to_json() if path.suffix == ".json" else self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> SubnetSpec:
        path = Path(path)
        text = path.read_text()
        return cls.from_json(text) if path.suffix == ".json" else cls.from_yaml(text)

    def describe(self) -> str:
        """A short human-readable shape, e.g. 'L4 H8 F768 D320 C128'."""

        def span(values: tuple[int, ...]) -> str:
            lo, hi = min(values), max(values)
            return str(lo) if lo == hi else f"{lo}-{hi}"

        return f"L{len(self.layers)} H{span(self.heads)} F{span(self.ffn)} D{self.hidden} C{self.context}"


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        hasattr(value, "__index__") and not isinstance(value, float)
    ):
        raise SpecError(f"SubnetSpec.{name}={value!r} must be an integer")
    return int(value)
