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

import yaml


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
    # Decoders with grouped-query attention (nas.models.decoder): key/value heads, each shared by
    # num_heads // num_kv_heads query heads. None for encoders (every head has its own K/V).
    num_kv_heads: int | None = None

    @property
    def group_size(self) -> int:
        """Query heads per key/value group (1 for encoders)."""
        return 1 if self.num_kv_heads is None else self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class SubnetSpec:
    """One shape: layers kept, heads and FFN width per kept layer, hidden size, context."""

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    hidden: int
    context: int
    # Key/value groups kept per layer, for a base with grouped-query attention (heads[i] query
    # heads = kv_heads[i] groups x heads[i] // kv_heads[i] query heads each); None for encoders.
    kv_heads: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        # Normalise lists (YAML, JSON) to tuples so specs hash and compare by value.
        for name in ("layers", "heads", "ffn", "kv_heads"):
            value = getattr(self, name)
            if name == "kv_heads" and value is None:
                continue
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
            kv_heads=None if base.num_kv_heads is None else (base.num_kv_heads,) * base.num_layers,
        )

    @classmethod
    def uniform(
        cls, *, layers: Sequence[int], heads: int, ffn: int, hidden: int, context: int, kv_heads: int | None = None
    ) -> SubnetSpec:
        n = len(layers)
        return cls(layers=tuple(layers), heads=(heads,) * n, ffn=(ffn,) * n, hidden=hidden, context=context,
                   kv_heads=None if kv_heads is None else (kv_heads,) * n)

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
        self._validate_groups(base)
        if not 1 <= self.hidden <= base.hidden_size:
            raise SpecError(f"SubnetSpec.hidden={self.hidden} is out of range; allowed 1..{base.hidden_size}")
        if not 1 <= self.context <= base.max_positions:
            raise SpecError(f"SubnetSpec.context={self.context} is out of range; allowed 1..{base.max_positions}")
        return self

    def _validate_groups(self, base: BaseShape) -> None:
        """Grouped-query attention: whole key/value groups, the same number of query heads in each."""
        if base.num_kv_heads is None:
            if self.kv_heads is not None:
                raise SpecError(f"SubnetSpec.kv_heads={list(self.kv_heads)} is for models with grouped-query "
                                "attention; this base has none: leave kv_heads out")
            return
        if self.kv_heads is None or len(self.kv_heads) != len(self.layers):
            raise SpecError(f"SubnetSpec.kv_heads={self.kv_heads and list(self.kv_heads)} needs one entry per kept "
                            f"layer ({len(self.layers)}): the key/value groups kept, 1..{base.num_kv_heads}")
        for i, (h, g) in enumerate(zip(self.heads, self.kv_heads, strict=True)):
            if not 1 <= g <= base.num_kv_heads:
                raise SpecError(f"SubnetSpec.kv_heads[{i}]={g} is out of range; allowed 1..{base.num_kv_heads}")
            if h % g or not 1 <= h // g <= base.group_size:
                raise SpecError(f"SubnetSpec.heads[{i}]={h} with kv_heads[{i}]={g}: query heads must be kv_heads x "
                                f"1..{base.group_size} (the same number in each key/value group)")

    def is_full(self, base: BaseShape) -> bool:
        return self == SubnetSpec.full(base)

    # ---- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        if out["kv_heads"] is None:  # encoders: the same dict as before the field existed
            del out["kv_heads"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubnetSpec:
        if not isinstance(data, Mapping):
            raise SpecError(f"SubnetSpec data must be a mapping of fields, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        unknown = sorted(set(data) - fields)
        missing = sorted(fields - set(data) - {"kv_heads"})
        if unknown or missing:
            raise SpecError(
                f"SubnetSpec fields: unknown {unknown} / missing {missing}; expected exactly "
                f"{sorted(fields - {'kv_heads'})} (plus kv_heads for a model with grouped-query attention)"
            )
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in data.items()})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_yaml(cls, text: str) -> SubnetSpec:
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

        groups = "" if self.kv_heads is None else f"/G{span(self.kv_heads)}"
        return f"L{len(self.layers)} H{span(self.heads)}{groups} F{span(self.ffn)} D{self.hidden} C{self.context}"


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        hasattr(value, "__index__") and not isinstance(value, float)
    ):
        raise SpecError(f"SubnetSpec.{name}={value!r} must be an integer")
    return int(value)
