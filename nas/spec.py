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


# What a decoder layer's attention is (SubnetSpec.attn): full attention with its kept heads; one linear map of
# the normed stream (llama.cpp deci's "linear attention"); or none (the layer is its FFN alone).
ATTENTION = ("full", "linear", "none")


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
    # Token ids of a causal language model's vocabulary (SubnetSpec.vocab cuts it); None where it is not cut.
    vocab_size: int | None = None

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
    # Per kept layer of a decoder, its attention (ATTENTION); None: full attention everywhere. A layer whose
    # attention is linear or none has heads[i] = kv_heads[i] = 0.
    attn: tuple[str, ...] | None = None
    # A causal language model's vocabulary: the token ids kept (the most used by the training text first,
    # nas.cut.vocab); None: the whole vocabulary.
    vocab: int | None = None

    def __post_init__(self) -> None:
        # Normalise lists (YAML, JSON) to tuples so specs hash and compare by value.
        if self.attn is not None:
            if isinstance(self.attn, (str, bytes)) or not isinstance(self.attn, Sequence):
                raise SpecError(f"SubnetSpec.attn={self.attn!r} must be a list of {', '.join(ATTENTION)}")
            object.__setattr__(self, "attn", tuple(str(a) for a in self.attn))
        for name in ("layers", "heads", "ffn", "kv_heads"):
            value = getattr(self, name)
            if name == "kv_heads" and value is None:
                continue
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise SpecError(f"SubnetSpec.{name}={value!r} must be a list of integers")
            object.__setattr__(self, name, tuple(_as_int(f"{name}[{i}]", v) for i, v in enumerate(value)))
        for name in ("hidden", "context"):
            object.__setattr__(self, name, _as_int(name, getattr(self, name)))
        if self.vocab is not None:
            object.__setattr__(self, "vocab", _as_int("vocab", self.vocab))

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
                if name == "heads" and self.attention(i) != "full":
                    continue
                if name == "ffn" and v == 0 and self.kv_heads is not None:
                    raise SpecError(f"SubnetSpec.ffn[{i}]=0: a layer without its FFN is not built right by llama.cpp "
                                    "(its deci graph then skips the layer's residual add, attention included); keep "
                                    "an FFN of 1..{top} or drop the layer".replace("{top}", str(top)))
                if not 1 <= v <= top:
                    raise SpecError(f"SubnetSpec.{name}[{i}]={v} is out of range; allowed 1..{top}")
        self._validate_attention()
        self._validate_groups(base)
        if not 1 <= self.hidden <= base.hidden_size:
            raise SpecError(f"SubnetSpec.hidden={self.hidden} is out of range; allowed 1..{base.hidden_size}")
        if not 1 <= self.context <= base.max_positions:
            raise SpecError(f"SubnetSpec.context={self.context} is out of range; allowed 1..{base.max_positions}")
        if self.vocab is not None:
            if base.vocab_size is None:
                raise SpecError(f"SubnetSpec.vocab={self.vocab}: vocabulary pruning is for causal language models "
                                "(byte-level BPE); this base is an encoder classifier: leave vocab out")
            if not 1 <= self.vocab <= base.vocab_size:
                raise SpecError(f"SubnetSpec.vocab={self.vocab} is out of range; allowed 1..{base.vocab_size}")
        return self

    def attention(self, i: int) -> str:
        """Kept layer i's attention: full, linear or none."""
        return "full" if self.attn is None else self.attn[i]

    def _validate_attention(self) -> None:
        if self.attn is None:
            return
        if self.kv_heads is None:
            raise SpecError("SubnetSpec.attn is for decoders (grouped-query attention); an encoder keeps attention in "
                            "every layer: leave attn out")
        if len(self.attn) != len(self.layers):
            raise SpecError(f"SubnetSpec.attn has {len(self.attn)} entries; it needs one per kept layer ({len(self.layers)})")
        for i, kind in enumerate(self.attn):
            if kind not in ATTENTION:
                raise SpecError(f"SubnetSpec.attn[{i}]={kind!r} is not known; allowed: {', '.join(ATTENTION)}")
            if kind != "full" and (self.heads[i] or self.kv_heads[i]):
                raise SpecError(f"SubnetSpec.attn[{i}]={kind} keeps no heads: heads[{i}] and kv_heads[{i}] must be 0 "
                                f"(got {self.heads[i]} / {self.kv_heads[i]})")
        if self.attn[0] != "full":
            raise SpecError(f"SubnetSpec.attn[0]={self.attn[0]}: the first kept layer keeps its attention (llama.cpp "
                            "reads the head size from layer 0, and the KV cache counts positions there)")

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
            if self.attention(i) != "full":
                continue
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
        for key in ("kv_heads", "attn", "vocab"):  # encoders / full attention / whole vocabulary: the dict as before
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubnetSpec:
        if not isinstance(data, Mapping):
            raise SpecError(f"SubnetSpec data must be a mapping of fields, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        unknown = sorted(set(data) - fields)
        missing = sorted(fields - set(data) - {"kv_heads", "attn", "vocab"})
        if unknown or missing:
            raise SpecError(
                f"SubnetSpec fields: unknown {unknown} / missing {missing}; expected exactly "
                f"{sorted(fields - {'kv_heads', 'attn', 'vocab'})} (plus kv_heads for a model with grouped-query "
                "attention, attn for per-layer attention variants, vocab for a cut vocabulary)"
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
            values = values or (0,)
            lo, hi = min(values), max(values)
            return str(lo) if lo == hi else f"{lo}-{hi}"

        full = [i for i in range(len(self.layers)) if self.attention(i) == "full"]
        heads = tuple(self.heads[i] for i in full)
        groups = "" if self.kv_heads is None else f"/G{span(tuple(self.kv_heads[i] for i in full))}"
        variants = "".join(f" A{kind[:3]}{self.attn.count(kind)}" for kind in ATTENTION[1:]
                           if self.attn is not None and kind in self.attn)
        vocab = "" if self.vocab is None else f" V{self.vocab}"
        return (f"L{len(self.layers)} H{span(heads)}{groups} F{span(self.ffn)} D{self.hidden} C{self.context}{variants}"
                f"{vocab}")


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        hasattr(value, "__index__") and not isinstance(value, float)
    ):
        raise SpecError(f"SubnetSpec.{name}={value!r} must be an integer")
    return int(value)
