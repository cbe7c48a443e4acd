"""Early exits: classification heads after some of a member's layers, trained with it, and the rule that decides
where an input leaves.

    ExitSettings   exits.*: which layers carry an exit, the rule, the heads' learning rate, the tolerance
    ExitHeads      one fresh LayerNorm + Linear per exit, on the masked mean of that layer's token states
    ExitTraining   the heads riding along a member's own final training (nas.quality.distill.DistillRun): the
                   member's loss plus, for every exit, cross-entropy and distillation from the base's logits,
                   weighted by depth; heads at exits.head_lr, the backbone at the member's learning rate
    ExitRule       where an input leaves: `confidence` (the first exit whose top probability is over a threshold)
                   or `patience` (PABEE: the first exit at which the prediction has stayed the same `patience`
                   times in a row, i.e. patience + 1 exits agree); an input no exit lets go runs every layer
    search_rule    the rule, its threshold or patience, and which exits it uses (the exits from some layer on),
                   chosen from per-input logits of every exit (one pass) and per-input costs (measured segment
                   times): the fastest on average within exits.tolerance points of the member at full depth

Measured (DESIGN.md, "Early exit"): exits on a frozen backbone never beat the majority class after layers 1-3, and
heads on [CLS] stayed there too; heads on the mean of the tokens trained jointly with the member did not. The rule's
semantics here are the same as the shipped runner's (nas.deploy.exit_runner, numpy only): the tests hold them equal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.models.exits import exit_reason

LAYER_CHOICES = ("auto", "all", "none")
RULE_CHOICES = ("search", "confidence", "patience")
RULE_KINDS = ("confidence", "patience")
HEADS_ATTR = "nas_exit_heads"  # the heads' attribute on a member while it trains (its state_dict carries them)


@dataclass(frozen=True)
class ExitSettings:
    """exits.*. `layers`: auto (after every kept layer but the last, where exits can run: an encoder classifier in
    onnxruntime at batch 1; otherwise none), all (the same, refused where they cannot run), none, or base layer
    indices (as SubnetSpec.layers counts them) whose output carries an exit. `rule`: search (confidence and patience
    both tried), confidence or patience; `threshold` / `patience` fix that rule's parameter (then nothing is searched:
    every exit is used). `tolerance`: points of accuracy the rule may give up against the member at full depth on
    the selection rows; `margin`: how many paired standard errors of the rule's accuracy change on those rows must
    fit within `tolerance` too (0: the change as measured). `head_lr`: the heads' learning rate (the backbone keeps
    the member's). `sample_size`: inputs the exits are timed on (per input, paired with the member without exits and
    the base), drawn from the judge rows (else validation) with their mix of exits taken and lengths."""

    layers: Any = "auto"
    rule: str = "search"
    threshold: float | None = None
    patience: int | None = None
    tolerance: float = 0.3
    margin: float = 1.645
    head_lr: float = 1e-3
    sample_size: int = 96

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | None) -> ExitSettings:
        raw = dict(cfg or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"exits.{unknown[0]} is not a setting; allowed: {', '.join(sorted(known))}")
        layers = raw.get("layers", "auto")
        if layers is None:
            raw["layers"] = "none"
        elif isinstance(layers, (list, tuple)):
            raw["layers"] = tuple(layers)
        return cls(**raw).validate()

    def validate(self) -> ExitSettings:
        layers = self.layers
        if isinstance(layers, tuple):
            if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers) \
                    or len(set(layers)) != len(layers):
                raise ValueError(f"exits.layers={list(layers)} must be distinct base layer indices >= 0, or one of: "
                                 f"{', '.join(LAYER_CHOICES)}")
        elif layers not in LAYER_CHOICES:
            raise ValueError(f"exits.layers={layers!r} is not known; allowed: {', '.join(LAYER_CHOICES)}, or a list "
                             "of base layer indices")
        if self.rule not in RULE_CHOICES:
            raise ValueError(f"exits.rule={self.rule!r} is not known; allowed: {', '.join(RULE_CHOICES)}")
        if self.threshold is not None:
            check_threshold(self.threshold, "exits.threshold")
            if self.rule == "patience":
                raise ValueError(f"exits.threshold={self.threshold:g} goes with exits.rule=confidence (or search), "
                                 "not patience")
        if self.patience is not None:
            check_patience(self.patience, "exits.patience")
            if self.rule == "confidence":
                raise ValueError(f"exits.patience={self.patience} goes with exits.rule=patience (or search), "
                                 "not confidence")
        if self.threshold is not None and self.patience is not None:
            raise ValueError("exits.threshold and exits.patience fix two rules; set one (or exits.rule=search)")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) \
                or not 0 <= self.tolerance <= 100:
            raise ValueError(f"exits.tolerance={self.tolerance!r} must be between 0 and 100 (accuracy points)")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or not 0 <= self.margin <= 10:
            raise ValueError(f"exits.margin={self.margin!r} must be between 0 and 10 (standard errors)")
        if isinstance(self.head_lr, bool) or not isinstance(self.head_lr, (int, float)) or not self.head_lr > 0:
            raise ValueError(f"exits.head_lr={self.head_lr!r} must be > 0")
        if isinstance(self.sample_size, bool) or not isinstance(self.sample_size, int) or self.sample_size < 1:
            raise ValueError(f"exits.sample_size={self.sample_size!r} must be an integer >= 1 (inputs)")
        return self

    @property
    def fixed(self) -> bool:
        """The rule is set (exits.threshold or exits.patience): nothing is searched."""
        return self.threshold is not None or self.patience is not None

    def enabled(self, *, lm: bool, batch_size: int, runtime: str, quantization: str,
                keep_fp32: Sequence[str] = (), config: Any = None) -> bool:
        """Whether members carry exits in this run. exits.layers=auto is off where exits cannot run; all or a list
        is refused there, in one line, before any work."""
        if self.layers == "none":
            return False
        reasons = []
        if lm:
            reasons.append("early exits are for classifiers; a language model's would be self-speculative decoding "
                           "(DESIGN.md: it does not pay on a CPU at this size)")
        if config is not None and exit_reason(config):
            reasons.append(exit_reason(config))
        if batch_size != 1:
            reasons.append(f"an exit is taken per input: latency.batch_size={batch_size} must be 1")
        if runtime != "onnxruntime":
            reasons.append(f"exits are deployed as onnxruntime segments: latency.runtime={runtime} must be onnxruntime")
        if quantization != "dynamic":
            reasons.append(f"exit segments are quantized dynamically: latency.quantization={quantization} must be "
                           "dynamic")
        if keep_fp32:
            reasons.append(f"latency.keep_fp32={list(keep_fp32)} is not applied to exit segments: leave it empty")
        if not reasons:
            return True
        if self.layers == "auto":
            return False
        shown = self.layers if isinstance(self.layers, str) else list(self.layers)
        raise ValueError(f"exits.layers={shown}: {reasons[0]}")

    def positions(self, layers: Sequence[int], *, strict: bool = True) -> tuple[int, ...]:
        """Where a member keeping base layers `layers` carries exits: positions (layers run, 1 = after its first
        layer), never after its last (its own head reads that). A listed layer the member does not keep (or its
        last) is refused with `strict`, else skipped (a final stage's members differ in depth)."""
        kept = list(layers)
        if not isinstance(self.layers, tuple):
            return tuple(range(1, len(kept))) if self.layers in ("auto", "all") else ()
        out = []
        for layer in self.layers:
            if layer not in kept or layer == kept[-1]:
                if strict:
                    why = ("is the member's last layer (its own head reads it)" if layer in kept else
                           "is not kept by the member")
                    raise ValueError(f"exits.layers has base layer {layer}, which {why}; the member keeps base layers "
                                     f"{kept}: an exit may follow any of {kept[:-1] or 'none'}")
                continue
            out.append(kept.index(layer) + 1)
        return tuple(sorted(out))


def check_threshold(value: Any, name: str = "threshold") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name}={value!r} must be in [0, 1] (a top probability; 0: every input leaves at the first "
                         "exit, 1: none leaves early)")
    return float(value)


def check_patience(value: Any, name: str = "patience") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1 (times in a row the prediction stays the same)")
    return value


# ---------------------------------------------------------------------------- heads and their training


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(batch, hidden): the mean of each row's real tokens (mask 1)."""
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, tokens, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class ExitHead(nn.Module):
    """LayerNorm + Linear on the masked mean of a layer's token states."""

    def __init__(self, hidden: int, labels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.linear = nn.Linear(hidden, labels)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(self.norm(masked_mean(hidden, mask)))


class ExitHeads(nn.Module):
    """The heads of one member, by position (layers run before the exit)."""

    def __init__(self, positions: Sequence[int], *, hidden: int, labels: int, seed: int = 0) -> None:
        super().__init__()
        if not positions or any(p < 1 for p in positions) or list(positions) != sorted(set(positions)):
            raise ValueError(f"exit positions {list(positions)} must be distinct, ascending and >= 1")
        self.positions = tuple(int(p) for p in positions)
        self.hidden, self.labels = int(hidden), int(labels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.heads = nn.ModuleDict({str(p): ExitHead(self.hidden, self.labels) for p in self.positions})

    def forward(self, position: int, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.heads[str(position)](hidden, mask)

    def describe(self) -> dict[str, Any]:
        """What rebuilds them (with their saved weights): positions, hidden size, labels."""
        return {"positions": list(self.positions), "hidden": self.hidden, "labels": self.labels}

    @classmethod
    def from_description(cls, info: Mapping[str, Any]) -> ExitHeads:
        return cls(info["positions"], hidden=int(info["hidden"]), labels=int(info["labels"]))

    def subset(self, positions: Sequence[int]) -> ExitHeads:
        """Only the heads at `positions` (their weights shared)."""
        missing = [p for p in positions if p not in self.positions]
        if missing:
            raise ValueError(f"exit positions {missing} have no head; heads at {list(self.positions)}")
        out = ExitHeads(positions, hidden=self.hidden, labels=self.labels)
        out.heads = nn.ModuleDict({str(p): self.heads[str(p)] for p in positions})
        return out


def exit_loss(heads: ExitHeads, hidden_states: Sequence[torch.Tensor], mask: torch.Tensor | None,
              labels: torch.Tensor, target: torch.Tensor | None, *, distill_weight: float,
              temperature: float) -> torch.Tensor:
    """Sum over the exits of (position / layers) x [(1 - w) cross-entropy on labelled rows + w T^2 KL(teacher ||
    exit)]: the member's own loss has weight 1, an exit after half its layers 1/2. `hidden_states`: the member's
    output_hidden_states (embeddings first, then one per layer)."""
    layers = len(hidden_states) - 1
    total = hidden_states[-1].new_zeros((), dtype=torch.float32)
    labelled = bool((labels != -100).any())
    w, t = float(distill_weight), float(temperature)
    for p in heads.positions:
        logits = heads(p, hidden_states[p].float(), mask)
        part = logits.new_zeros(())
        if labelled:
            part = part + (1 - w) * nn.functional.cross_entropy(logits, labels, ignore_index=-100)
        if target is not None and w > 0:
            part = part + w * t * t * nn.functional.kl_div(
                nn.functional.log_softmax(logits / t, dim=-1), nn.functional.log_softmax(target.float() / t, dim=-1),
                log_target=True, reduction="batchmean")
        total = total + (p / layers) * part
    return total


@dataclass
class ExitTraining:
    """A member's exit heads in its own final training. `attach` makes them part of the member while it trains (its
    checkpoints, rung files and best state carry them); `regroup` gives them their own learning rate in the member's
    optimiser; `loss` is added to the member's; `detach` takes them off before the member is saved or exported."""

    heads: ExitHeads
    head_lr: float
    distill_weight: float = 0.5
    temperature: float = 2.0

    def attach(self, model: nn.Module) -> ExitTraining:
        model.add_module(HEADS_ATTR, self.heads)
        return self

    def detach(self, model: nn.Module) -> ExitHeads:
        if HEADS_ATTR in model._modules:
            del model._modules[HEADS_ATTR]
        return self.heads.eval()

    def regroup(self, optimizer: torch.optim.Optimizer) -> None:
        """Move the heads' parameters out of the optimiser's groups into their own at head_lr (weight decay on the
        matrix as the member's first group has it). Before any step and before the schedule is made."""
        mine = {id(p) for p in self.heads.parameters()}
        decay = optimizer.param_groups[0].get("weight_decay", 0.0)
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in mine]
        params = [p for p in self.heads.parameters() if p.requires_grad]
        optimizer.add_param_group({"params": [p for p in params if p.ndim >= 2], "weight_decay": decay,
                                   "lr": self.head_lr})
        optimizer.add_param_group({"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0,
                                   "lr": self.head_lr})

    def loss(self, hidden_states: Sequence[torch.Tensor], mask: torch.Tensor | None, labels: torch.Tensor,
             target: torch.Tensor | None) -> torch.Tensor:
        return exit_loss(self.heads, hidden_states, mask, labels, target, distill_weight=self.distill_weight,
                         temperature=self.temperature)


@torch.inference_mode()
def exit_logits(model: nn.Module, heads: ExitHeads, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(batch, exits + 1, labels) in torch: each exit's logits, then the member's own (full depth)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    per_exit = [heads(p, out.hidden_states[p].float(), batch["attention_mask"]) for p in heads.positions]
    return torch.stack([*per_exit, out.logits.float()], dim=1)


# ---------------------------------------------------------------------------- the rule


@dataclass(frozen=True)
class ExitRule:
    """Where an input leaves: `kind` confidence (top probability > `threshold`) or patience (`patience` times in a
    row the same prediction); `exits`: the positions (layers run) that carry an exit, ascending."""

    kind: str
    exits: tuple[int, ...]
    threshold: float | None = None
    patience: int | None = None

    def validate(self, layers: int | None = None) -> ExitRule:
        if self.kind not in RULE_KINDS:
            raise ValueError(f"exit rule {self.kind!r} is not known; allowed: {', '.join(RULE_KINDS)}")
        if self.kind == "confidence":
            check_threshold(self.threshold)
        else:
            check_patience(self.patience)
        exits = list(self.exits)
        if exits != sorted(set(exits)) or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in exits):
            raise ValueError(f"exits {exits} must be distinct ascending positions >= 1 (layers run)")
        if layers is not None and exits and exits[-1] >= layers:
            raise ValueError(f"an exit after layer {exits[-1]} of a {layers}-layer member is its own head: exits go "
                             f"after layers 1..{layers - 1}")
        return self

    def describe(self) -> str:
        how = (f"top probability > {self.threshold:g}" if self.kind == "confidence" else
               f"patience {self.patience}")
        return f"{how}, exits after layers {', '.join(map(str, self.exits)) or 'none'}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exits": list(self.exits)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExitRule:
        return cls(kind=str(data["kind"]), exits=tuple(int(p) for p in data.get("exits") or ()),
                   threshold=None if data.get("threshold") is None else float(data["threshold"]),
                   patience=None if data.get("patience") is None else int(data["patience"])).validate()


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 (as the runner computes it)."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def exit_taken(logits: np.ndarray, candidates: Sequence[int], rule: ExitRule) -> np.ndarray:
    """Per input, the index (into `candidates` + the full depth, which is len(candidates)) where `rule` lets it go.
    `logits`: (inputs, len(candidates) + 1, labels), every candidate exit's logits then the member's own."""
    logits = np.asarray(logits)
    n, k = logits.shape[0], len(candidates)
    if logits.shape[1] != k + 1:
        raise ValueError(f"logits have {logits.shape[1]} exits; expected {k} candidates + the full depth")
    idx = [list(candidates).index(p) for p in rule.exits]
    out = np.full(n, k, dtype=np.int64)
    if not idx:
        return out
    probs = probabilities(logits[:, idx, :])  # (inputs, exits used, labels)
    if rule.kind == "confidence":
        fires = probs.max(axis=-1) > rule.threshold
    else:
        preds = probs.argmax(axis=-1)
        count = np.zeros(n, dtype=np.int64)
        fires = np.zeros(preds.shape, dtype=bool)
        for j in range(preds.shape[1]):
            if j:
                count = np.where(preds[:, j] == preds[:, j - 1], count + 1, 0)
            fires[:, j] = count >= rule.patience
    any_fire = fires.any(axis=1)
    first = fires.argmax(axis=1)
    out[any_fire] = np.asarray(idx)[first[any_fire]]
    return out


@dataclass(frozen=True)
class RuleChoice:
    """The chosen rule and what it reaches on the rows it was chosen on."""

    rule: ExitRule
    accuracy: float  # with the rule
    full_accuracy: float  # every input at full depth (the member without exits, as the same segments compute it)
    cost: float  # mean seconds per input (the cost model's)
    full_cost: float  # the same at full depth
    shares: tuple[float, ...]  # of inputs leaving at each candidate exit, then at full depth
    tried: int  # rules compared

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.to_dict(), "accuracy": self.accuracy, "full_accuracy": self.full_accuracy,
                "cost_ms": self.cost * 1000, "full_cost_ms": self.full_cost * 1000, "shares": list(self.shares),
                "tried": self.tried}


def threshold_grid(labels: int) -> list[float]:
    """Confidence thresholds tried: from 1/labels to 0.99 by 0.01, then 0.995 and 0.999."""
    low = math.floor(100 / max(2, labels)) / 100
    return [round(float(x), 3) for x in np.arange(low, 0.9901, 0.01)] + [0.995, 0.999]


def candidate_rules(candidates: Sequence[int], settings: ExitSettings, labels: int) -> list[ExitRule]:
    """The rules search_rule compares: fixed by exits.threshold / exits.patience (every exit), else for each set of
    exits from some layer on (an early exit that is often wrong can be left out), every threshold of threshold_grid
    and every patience that set allows."""
    cands = tuple(candidates)
    if settings.threshold is not None:
        return [ExitRule("confidence", cands, threshold=float(settings.threshold))]
    if settings.patience is not None:
        return [ExitRule("patience", cands, patience=int(settings.patience))]
    rules: list[ExitRule] = []
    for start in range(len(cands)):
        used = cands[start:]
        if settings.rule in ("search", "confidence"):
            rules += [ExitRule("confidence", used, threshold=t) for t in threshold_grid(labels)]
        if settings.rule in ("search", "patience"):
            rules += [ExitRule("patience", used, patience=k) for k in range(1, len(used) + 1)]
    return rules


def search_rule(logits: np.ndarray, labels: np.ndarray, costs: np.ndarray, candidates: Sequence[int],
                settings: ExitSettings) -> RuleChoice:
    """The rule with the lowest mean cost whose accuracy is at most exits.tolerance points below full depth's on
    these rows, after exits.margin paired standard errors of that change (ties: the more accurate); none within: the
    most accurate. `logits`: (inputs, candidates + 1, labels) from one pass through every exit; `costs`: (inputs,
    candidates + 1) seconds to reach each exit."""
    logits, labels, costs = np.asarray(logits), np.asarray(labels), np.asarray(costs, dtype=np.float64)
    n, k = len(labels), len(candidates)
    if n == 0:
        raise ValueError("no rows to choose an exit rule on")
    correct = probabilities(logits).argmax(axis=-1) == labels[:, None]  # (inputs, candidates + 1)
    full_acc, full_cost = float(correct[:, k].mean()), float(costs[:, k].mean())
    rows = np.arange(n)
    best = None
    tried = candidate_rules(candidates, settings, logits.shape[-1])
    floor = full_acc - settings.tolerance / 100 - 1e-12
    for rule in tried:
        taken = exit_taken(logits, candidates, rule)
        right = correct[rows, taken]
        acc = float(right.mean())
        cost = float(costs[rows, taken].mean())
        # the change's paired standard error on these rows (rows where the rule and full depth disagree make it)
        change = right.astype(np.float64) - correct[:, k]
        se = float(change.std(ddof=1)) / np.sqrt(n) if n > 1 else 0.0
        held = acc - settings.margin * se >= floor
        key = (not held, cost if held else -acc, -acc)
        if best is None or key < best[0]:
            best = (key, rule, acc, cost, taken)
    _, rule, acc, cost, taken = best
    shares = tuple(float(np.mean(taken == j)) for j in range(k + 1))
    return RuleChoice(rule=rule, accuracy=acc, full_accuracy=full_acc, cost=cost, full_cost=full_cost, shares=shares,
                      tried=len(tried))


def fit_segment_costs(tokens: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Per segment, (a, b) of seconds = a + b x tokens by least squares over the timed inputs (b >= 0; one length
    only: the mean). `seconds`: (inputs, segments)."""
    tokens = np.asarray(tokens, dtype=np.float64)
    seconds = np.asarray(seconds, dtype=np.float64)
    out = np.zeros((seconds.shape[1], 2))
    for j in range(seconds.shape[1]):
        y = seconds[:, j]
        if np.ptp(tokens) == 0:
            out[j] = (y.mean(), 0.0)
            continue
        b, a = np.polyfit(tokens, y, 1)
        if b < 0:
            a, b = y.mean(), 0.0
        out[j] = (a, b)
    return out


def exit_costs(fit: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """(inputs, segments): seconds to reach the end of each segment (cumulative), for inputs of these lengths."""
    per = fit[:, 0][None, :] + np.asarray(tokens, dtype=np.float64)[:, None] * fit[:, 1][None, :]
    return np.cumsum(np.maximum(per, 0.0), axis=1)
