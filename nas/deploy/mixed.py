"""GGUF files of mixed types, chosen by measured sensitivity (the idea of ModelOpt's AutoQuantize, for llama.cpp).

A 4-bit type costs each tensor group differently: a layer's attention (q, k, v, o), its FFN (gate, up, down), and
the head (the output layer; tied, also the token embedding). `measure_sensitivity` measures each group once per
base and text: every matrix at the high type (q8_0), then each group alone at the low type (GPTQ-rounded onto the
type's grid, exactly the values llama.cpp then stores: nas.deploy.gptq), scored in torch on the same validation
text; a group's cost is the bits per byte it adds. Groups ordered from the cheapest give a front of files between
all-high and all-low: `mix<n>_<low>` holds the n cheapest groups at the low type and the rest at q8_0 (written by
llama.cpp's quantizer with its per-tensor type overrides, nas.deploy.gguf_quant). Costs of groups are measured one
at a time: a file's cost is about their sum, and every file the search keeps is scored on its own anyway.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.deploy.gguf_quant import check_precision
from nas.deploy.gptq import BLOCK, round_matrices
from nas.models.decoder import backbone, is_tied

log = logging.getLogger(__name__)

HIGH = "q8_0"  # the type every group not at the low type keeps
HEAD_GROUP = "head"


def mix_name(n: int, low: str) -> str:
    return f"mix{int(n)}_{low}"


def group_of(tensor: str) -> str:
    """A GGUF matrix's group: `blk.<i>.attn`, `blk.<i>.ffn` or `head` (output layer and token embedding)."""
    m = re.match(r"^blk\.(\d+)\.(attn|ffn)_", tensor)
    return f"blk.{m.group(1)}.{m.group(2)}" if m else HEAD_GROUP


def matrices(model: nn.Module) -> dict[str, nn.Parameter]:
    """{GGUF name: parameter} of every weight matrix llama.cpp quantizes (HF layout; nas.deploy.gguf.gguf_tensors
    writes q and k with their rows reordered for llama.cpp's rotary pairs, which rounding row by row ignores)."""
    body = backbone(model)
    out: dict[str, nn.Parameter] = {"token_embd.weight": body.embed_tokens.weight}
    for i, layer in enumerate(body.layers):
        att, mlp = layer.self_attn, layer.mlp
        for short, module in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"), ("attn_output", "o_proj")):
            linear = getattr(att, module, None)
            if isinstance(linear, nn.Linear):
                out[f"blk.{i}.{short}.weight"] = linear.weight
        for short, module in (("ffn_gate", "gate_proj"), ("ffn_up", "up_proj"), ("ffn_down", "down_proj")):
            out[f"blk.{i}.{short}.weight"] = getattr(mlp, module).weight
    if not is_tied(model) and getattr(model, "lm_head", None) is not None:
        out["output.weight"] = model.lm_head.weight
    return out


def round_q8_0(weight: torch.Tensor) -> torch.Tensor:
    """llama.cpp's q8_0: per block of 32 values of a row, scale d = max|x| / 127 (stored as fp16), x -> round(x / d)."""
    rows, cols = weight.shape
    if cols % BLOCK:
        return weight.detach().clone()  # llama.cpp keeps such a matrix at f16: close enough to its values
    w = weight.detach().float().reshape(rows, cols // BLOCK, BLOCK)
    d = (w.abs().amax(-1, keepdim=True) / 127).half().float()
    q = torch.where(d > 0, torch.round(w / d.clamp_min(1e-30)).clamp(-127, 127) * d, torch.zeros_like(w))
    return q.reshape(rows, cols).to(weight.dtype)


def for_layers(order: Sequence[str], layers: Sequence[int] | None) -> list[str]:
    """The base's group order for a model that keeps base layers `layers` (renumbered 0..): dropped layers' groups
    leave, kept ones take their new numbers; None: the base itself."""
    if layers is None:
        return list(order)
    position = {int(b): i for i, b in enumerate(layers)}
    out = []
    for group in order:
        m = re.match(r"^blk\.(\d+)\.(attn|ffn)$", group)
        if m is None:
            out.append(group)
        elif int(m.group(1)) in position:
            out.append(f"blk.{position[int(m.group(1))]}.{m.group(2)}")
    return out


def mixed_types(names: Sequence[str], order: Sequence[str], n: int, low: str) -> dict[str, str]:
    """{matrix: type} of file mix<n>_<low>: the groups order[:n] (the cheapest first) at `low`, the rest at q8_0."""
    present = {group_of(name) for name in names}
    order = [g for g in order if g in present]  # a layer without attention has no attention group
    n = min(int(n), len(order))  # mix<n> on a model with fewer groups: every group at the low type
    cheap = set(order[:n])
    return {name: (low if group_of(name) in cheap else HIGH) for name in names}


@dataclass(frozen=True)
class Sensitivity:
    """Bits per byte each tensor group adds at `low` (the others at q8_0), measured on `tokens` base tokens of text."""

    low: str
    costs: dict[str, float]  # group -> added bits per byte
    reference_bits_per_byte: float  # every matrix at q8_0
    tokens: int
    seconds: float

    @property
    def order(self) -> list[str]:
        """Groups from the cheapest to the dearest."""
        return sorted(self.costs, key=lambda g: (self.costs[g], g))

    def predicted(self, n: int) -> float:
        """Bits per byte of mix<n>_<low>: the reference plus the n cheapest groups' costs."""
        return self.reference_bits_per_byte + sum(self.costs[g] for g in self.order[:n])


def measure_sensitivity(model: nn.Module, nll: Callable[[nn.Module], float], moments: Mapping[str, torch.Tensor],
                        *, low: str, bytes_: int, tokens: int = 0,
                        say: Callable[[str], None] = log.info) -> Sensitivity:
    """Each tensor group's cost at `low` (GPTQ under `moments`, nas.deploy.imatrix) against q8_0 everywhere, in bits
    per byte: `nll(model)` is the model's total NLL (nats) over `bytes_` bytes of text. The model is restored."""
    check_precision(mix_name(0, low), allowed_bodies=())
    t0 = time.perf_counter()
    params = matrices(model)
    original = {n: p.detach().clone() for n, p in params.items()}
    high = {n: round_q8_0(p) for n, p in params.items()}
    lowered = round_matrices(dict(original), moments, {n: low for n in params}, only=(low,))
    lowered = {n: lowered.get(n, high[n]) for n in params}  # a matrix GPTQ cannot round (odd width) stays as it is
    groups: dict[str, list[str]] = {}
    for n in params:
        groups.setdefault(group_of(n), []).append(n)

    def put(values: Mapping[str, torch.Tensor], names: Sequence[str]) -> None:
        with torch.no_grad():
            for n in names:
                params[n].copy_(values[n])

    try:
        put(high, list(params))
        reference = nll(model)
        costs = {}
        for i, (group, names) in enumerate(sorted(groups.items())):
            put(lowered, names)
            costs[group] = (nll(model) - reference) / bytes_ / math.log(2)
            put(high, names)
            if (i + 1) % 10 == 0:
                say(f"sensitivity at {low}: {i + 1}/{len(groups)} groups ({time.perf_counter() - t0:.0f}s)")
    finally:
        put(original, list(params))
    return Sensitivity(low=low, costs=costs, reference_bits_per_byte=reference / bytes_ / math.log(2), tokens=tokens,
                       seconds=round(time.perf_counter() - t0, 1))


def cached_sensitivity(path: Path | None, measure: Callable[[], Sensitivity]) -> tuple[Sensitivity, bool]:
    """The sensitivity at `path` (JSON) if it is there, else measured and written there; (it, cached?)."""
    if path is not None and path.is_file():
        return Sensitivity(**json.loads(path.read_text())), True
    result = measure()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(result), indent=1))
        tmp.replace(path)
    return result, False


def front_sizes(groups: int, points: int = 6) -> list[int]:
    """n for a front of `points` files from all-q8_0 (0) to all-low (`groups`), evenly spaced."""
    return sorted({round(i * groups / (points - 1)) for i in range(points)})


def describe(sensitivity: Sensitivity, top: int = 5) -> str:
    order = sensitivity.order
    dear = ", ".join(f"{g} {sensitivity.costs[g] * 1000:.1f}" for g in order[::-1][:top])
    cheap = ", ".join(f"{g} {sensitivity.costs[g] * 1000:.2f}" for g in order[:top])
    return (f"{len(order)} groups at {sensitivity.low} vs q8_0, milli-bits per byte: dearest {dear}; cheapest {cheap} "
            f"({sensitivity.tokens} tokens, {sensitivity.seconds:.0f}s)")


def as_json(sensitivity: Sensitivity) -> dict[str, Any]:
    return asdict(sensitivity)
