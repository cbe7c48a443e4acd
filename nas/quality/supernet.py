"""A slimmable supernet: the fine-tuned base trained once more to work at every shape of a space.

A shape's units are the ones `prune_model` keeps: the top-k heads / FFN neurons / hidden
channels by the base's importance scores (`keep_top`, nested: the top k are inside the top k+1)
and the layers the space picks by importance. The supernet keeps the base's unit order and its
full size; it is trained on exactly those sub-networks, so a trial's model is simply

    prune_model(supernet.model, spec, scores)      # = Supernet.slice(spec)

the same physical path as a fine-tuned trial (latency, export and final training unchanged).

Training is a sliced forward, not masks: `Supernet.forward` prunes a weightless copy of the
model (on the meta device) to the spec with `prune_model`, and runs it with
`torch.func.functional_call` on weights gathered from the supernet by the same indices
(index_select, so gradients flow back into the full-width weights). The function trained is
the function sliced: same modules, same LayerNorm statistics over the kept channels, and a
small shape costs what the small model costs. Each step (the sandwich rule of slimmable
networks / BigNAS / DynaBERT) trains the largest shape, the smallest and `random_subnets`
shapes drawn by the space's own `suggest`, all on one batch at a context drawn from the space,
the largest learning from the labels and the others distilled in place from it (or all from
the base). Batches, shapes, contexts and dropout are functions of (seed, step), so a run killed
midway resumes from its last checkpoint and ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from nas.cut.prune import prune_model
from nas.data.tasks import MODEL_COLUMNS, LengthGroupedBatchSampler
from nas.models.encoder import arch_for
from nas.models.registry import base_shape
from nas.models.slicing import head_rows, kept_units
from nas.quality.metrics import accuracy
from nas.quality.optim import adamw
from nas.spec import BaseShape, SubnetSpec
from nas.util import cache_key, cfg_get

log = logging.getLogger(__name__)

SUPERNET_VERSION = 1  # bump when the recipe changes: old cache entries are then ignored
DISTILL_FROM = ("largest", "base", "none")
CHECKPOINT = "checkpoint.pt"


# ---------------------------------------------------------------------------- settings

# Settings that change how the training runs, not the recipe it follows (a resumed run ends where an
# uninterrupted one does; another thread count changes float rounding only): a search that changes
# only these reuses the cached supernet.
NOT_RECIPE = ("threads", "checkpoint_every")


@dataclass(frozen=True)
class SupernetSettings:
    """The elastic-training recipe (`supernet:` in conf/config.yaml)."""

    steps: int = 300  # optimizer steps; each trains 2 + random_subnets shapes on one batch
    lr: float = 1e-4
    batch_size: int = 32
    random_subnets: int = 2  # sandwich rule: largest + smallest + this many random shapes per step
    distill: str = "largest"  # largest: in-place from the largest shape | base: from the fine-tuned base | none
    distill_weight: float = 0.5  # share of the distillation loss for the distilled shapes (rest: labels)
    temperature: float = 2.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    random_contexts: bool = True  # each step's batch at a context drawn from the space (else the longest)
    checkpoint_every: int = 50  # steps between checkpoints (0: none); a killed run resumes from the last
    seed: int = 0
    threads: int = 0  # 0: leave torch's default

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | None) -> SupernetSettings:
        """Settings from a `supernet:` mapping; an unknown key or a bad value is one ValueError line."""
        cfg = dict(cfg or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(cfg) - set(known))
        if unknown:
            raise ValueError(f"supernet.{unknown[0]} is not a setting; allowed: {', '.join(known)}")
        values: dict[str, Any] = {}
        for name, value in cfg.items():
            kind = type(getattr(cls, name))
            if kind is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"supernet.{name}={value!r} must be true or false")
            elif kind is int:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"supernet.{name}={value!r} must be an integer")
            elif kind is float:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"supernet.{name}={value!r} must be a number")
                value = float(value)
            else:
                value = str(value)
            values[name] = value
        return cls(**values).validate()

    def validate(self) -> SupernetSettings:
        checks = [
            (self.steps >= 0, f"supernet.steps={self.steps} must be >= 0"),
            (self.lr > 0, f"supernet.lr={self.lr} must be > 0"),
            (self.batch_size >= 1, f"supernet.batch_size={self.batch_size} must be >= 1"),
            (self.random_subnets >= 0, f"supernet.random_subnets={self.random_subnets} must be >= 0"),
            (self.distill in DISTILL_FROM,
             f"supernet.distill={self.distill!r} is not known; allowed: {', '.join(DISTILL_FROM)}"),
            (0.0 <= self.distill_weight <= 1.0, f"supernet.distill_weight={self.distill_weight} is out of range; allowed 0..1"),
            (self.temperature > 0, f"supernet.temperature={self.temperature} must be > 0"),
            (self.weight_decay >= 0, f"supernet.weight_decay={self.weight_decay} must be >= 0"),
            (0.0 <= self.warmup_ratio < 1.0, f"supernet.warmup_ratio={self.warmup_ratio} is out of range; allowed 0..<1"),
            (self.checkpoint_every >= 0, f"supernet.checkpoint_every={self.checkpoint_every} must be >= 0 (0: none)"),
            (self.threads >= 0, f"supernet.threads={self.threads} must be >= 0 (0: torch's default)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self


# ---------------------------------------------------------------------------- the elastic network


class Supernet:
    """Full-width weights (a model the size of the base) and the scores that pick every shape's units."""

    def __init__(self, model: nn.Module, scores: Any, *, cache_size: int = 64) -> None:
        self.model = model
        self.scores = scores
        self.arch = arch_for(model)
        self.shape = base_shape(model.config)
        if scores is not None:
            scores.check_fits(self.shape)
        # A weightless twin: prune_model on it gives a shape's modules and config in milliseconds.
        self._meta = copy.deepcopy(model).to("meta")
        self._plans: OrderedDict[SubnetSpec, tuple[nn.Module, list[tuple[str, str, Any, Any]]]] = OrderedDict()
        self._cache_size = cache_size

    def slice(self, spec: SubnetSpec) -> nn.Module:
        """The physical model of `spec`: exactly what a trial evaluates, times and exports."""

        return prune_model(self.model, spec, self.scores)

    def forward(self, spec: SubnetSpec, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logits of shape `spec` on `batch`, differentiable w.r.t. the full-width weights.

        Equal to `self.slice(spec)(**batch).logits`; the batch must fit the spec's context.
        """
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        length = inputs["input_ids"].shape[1]
        if length > spec.context:
            raise ValueError(f"a batch of {length} tokens does not fit the spec's context {spec.context}")
        skeleton, plan = self._plan(spec)
        skeleton.train(self.model.training)
        own = dict(self.model.named_parameters())
        own.update(self.model.named_buffers())
        tensors = {name: _gather(own[src], rows, cols) for name, src, rows, cols in plan}
        return torch.func.functional_call(skeleton, tensors, args=(), kwargs=inputs, strict=True).logits

    __call__ = forward

    def _plan(self, spec: SubnetSpec) -> tuple[nn.Module, list[tuple[str, str, Any, Any]]]:
        if spec in self._plans:
            self._plans.move_to_end(spec)
            return self._plans[spec]

        skeleton = prune_model(self._meta, spec, self.scores)
        plan = slice_plan(self.model, spec, self.scores)
        want = dict(skeleton.named_parameters())
        want.update(skeleton.named_buffers())
        own = dict(self.model.named_parameters())
        own.update(self.model.named_buffers())
        if sorted(want) != sorted(name for name, *_ in plan):
            raise RuntimeError(f"supernet slice plan and prune_model disagree on the tensors of {spec.describe()}")
        for name, src, rows, cols in plan:  # every gathered shape must be the shape prune_model builds
            got = _gathered_shape(own[src].shape, rows, cols)
            if got != tuple(want[name].shape):
                raise RuntimeError(f"supernet slice of {name} is {got}; prune_model builds {tuple(want[name].shape)}")
        self._plans[spec] = (skeleton, plan)
        if len(self._plans) > self._cache_size:
            self._plans.popitem(last=False)
        return skeleton, plan


def slice_plan(model: nn.Module, spec: SubnetSpec, scores: Any) -> list[tuple[str, str, Any, Any]]:
    """For every tensor of the pruned model: (its name there, the supernet tensor it comes from,
    rows kept, columns kept); None keeps a whole dimension. The same selection as prune_model."""

    arch = arch_for(model)
    shape = base_shape(model.config)
    kept = kept_units(shape, spec, scores)

    def part(idx: torch.Tensor, total: int) -> torch.Tensor | None:
        return None if len(idx) == total else idx  # None: the whole dimension, no gather

    hidden = part(kept.hidden, shape.hidden_size)
    # per module: (rows, cols) of its weight; its bias (and a LayerNorm's both tensors) take the rows
    cut: dict[int, tuple[Any, Any]] = {}
    for base_layer, kept_heads, kept_ffn in zip(spec.layers, kept.heads, kept.ffn, strict=True):
        parts = arch.layer_parts(arch.layers(model)[base_layer])
        head_idx = part(kept_heads, shape.num_heads)
        rows = None if head_idx is None else head_rows(head_idx, shape.head_size)
        ffn_idx = part(kept_ffn, shape.ffn_size)
        for lin in (parts.q, parts.k, parts.v):
            cut[id(lin)] = (rows, hidden)
        cut[id(parts.o)] = (hidden, rows)
        cut[id(parts.ffn_in)] = (ffn_idx, hidden)
        cut[id(parts.ffn_out)] = (hidden, ffn_idx)
        for norm in (parts.attn_norm, parts.ffn_norm):
            cut[id(norm)] = (hidden, None)
    emb = arch.embeddings(model)
    positions = spec.context + arch.position_offset(model.config)
    keep_positions = None if positions == emb.position.num_embeddings else torch.arange(positions)
    cut[id(emb.word)] = (None, hidden)
    cut[id(emb.position)] = (keep_positions, hidden)
    if emb.token_type is not None:
        cut[id(emb.token_type)] = (None, hidden)
    cut[id(emb.norm)] = (hidden, None)
    for part in arch.head(model):
        cut[id(part.linear)] = (hidden if part.out_hidden else None, hidden if part.in_hidden else None)

    owner, attr = arch.layer_container(model)
    names = {id(m): n for n, m in model.named_modules()}
    prefix = f"{names[id(owner)]}.{attr}." if names[id(owner)] else f"{attr}."
    new_pos = {base: pos for pos, base in enumerate(spec.layers)}
    plan = []
    for mod_name, module in model.named_modules():
        tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        for t_name, tensor in tensors:
            src = f"{mod_name}.{t_name}" if mod_name else t_name
            dst = src
            if src.startswith(prefix):  # inside the layer list: renumbered, dropped layers skipped
                index, _, rest = src[len(prefix):].partition(".")
                if int(index) not in new_pos:
                    continue
                dst = f"{prefix}{new_pos[int(index)]}.{rest}"
            rows, cols = cut.get(id(module), (None, None))
            if t_name in ("position_ids", "token_type_ids"):  # id buffers (1, positions): keep the first positions
                rows, cols = None, keep_positions
            elif t_name != "weight" or tensor.ndim == 1:  # biases, LayerNorm tensors
                cols = None
            plan.append((dst, src, rows, cols))
    return plan


def _gather(tensor: torch.Tensor, rows: Any, cols: Any) -> torch.Tensor:
    if rows is not None:
        tensor = tensor.index_select(0, rows.to(tensor.device))
    if cols is not None:
        tensor = tensor.index_select(1, cols.to(tensor.device))
    return tensor


def _gathered_shape(shape: Sequence[int], rows: Any, cols: Any) -> tuple[int, ...]:
    out = list(shape)
    if rows is not None:
        out[0] = len(rows)
    if cols is not None:
        out[1] = len(cols)
    return tuple(out)


# ---------------------------------------------------------------------------- shapes per step


class _PickTrial:
    """Stands in for an Optuna trial in SearchSpace.suggest: every axis at its largest, its
    smallest, or drawn at random, so the shapes trained are exactly the shapes the space samples."""

    def __init__(self, mode: str, rng: random.Random | None = None) -> None:
        self.mode, self.rng = mode, rng

    def _pick(self, values: Sequence[int]) -> int:
        if self.mode == "largest":
            return max(values)
        if self.mode == "smallest":
            return min(values)
        return self.rng.choice(list(values))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1) -> int:
        return self._pick(range(low, high + 1, step))

    def suggest_categorical(self, name: str, choices: Sequence[int]) -> int:
        return self._pick(choices)


def largest_spec(space: Any, shape: BaseShape, scores: Any) -> SubnetSpec:
    return space.suggest(_PickTrial("largest"), shape, scores)


def smallest_spec(space: Any, shape: BaseShape, scores: Any) -> SubnetSpec:
    return space.suggest(_PickTrial("smallest"), shape, scores)


def random_spec(space: Any, shape: BaseShape, scores: Any, rng: random.Random) -> SubnetSpec:
    return space.suggest(_PickTrial("random", rng), shape, scores)


def sandwich(space: Any, shape: BaseShape, scores: Any, *, n_random: int, rng: random.Random) -> list[SubnetSpec]:
    """The shapes of one step: largest, smallest, then n_random drawn by the space's own sampler."""
    return [largest_spec(space, shape, scores), smallest_spec(space, shape, scores),
            *(random_spec(space, shape, scores, rng) for _ in range(n_random))]


def step_rng(seed: int, step: int) -> random.Random:
    return random.Random(f"supernet:{seed}:{step}")


# ---------------------------------------------------------------------------- data per step


class StepBatches:
    """Batch number `step` as a pure function of (seed, step): its context (drawn from `contexts`)
    and its rows (epochs of seeded length-grouped batches). A resumed run sees what an uninterrupted
    one would. `tokenized(context)` gives the training split tokenized at that context (same rows
    in the same order at every context)."""

    def __init__(self, tokenized: Callable[[int], Any], tokenizer: Any, *, contexts: Sequence[int],
                 batch_size: int, seed: int) -> None:
        from transformers import DataCollatorWithPadding  # heavy (~6 s cold): only where a model is loaded

        if not contexts:
            raise ValueError("StepBatches needs at least one context length")
        self.tokenized, self.contexts, self.batch_size, self.seed = tokenized, sorted(set(contexts)), batch_size, seed
        self.columns = MODEL_COLUMNS
        self.collate = DataCollatorWithPadding(tokenizer, padding="longest")
        self.lengths = [len(ids) for ids in tokenized(max(self.contexts))["input_ids"]]
        if len(self.lengths) < batch_size:
            raise ValueError(f"supernet.batch_size={batch_size} is larger than the training split ({len(self.lengths)} rows)")
        self._epoch: tuple[int, list[list[int]]] | None = None

    def rows(self, step: int) -> list[int]:
        per_epoch = len(self.lengths) // self.batch_size  # full batches only
        epoch, index = divmod(step, per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            sampler = LengthGroupedBatchSampler(self.lengths, batch_size=self.batch_size,
                                                seed=self.seed * 100_003 + epoch)
            self._epoch = (epoch, [b for b in sampler if len(b) == self.batch_size])
        return self._epoch[1][index]

    def __call__(self, step: int, rng: random.Random) -> tuple[int, dict[str, torch.Tensor]]:
        context = rng.choice(self.contexts)
        ds = self.tokenized(context)
        rows = ds.select(self.rows(step))
        items = [{k: row[k] for k in self.columns if k in row} for row in rows]
        return context, dict(self.collate(items))


# ---------------------------------------------------------------------------- one step


def sandwich_losses(net: Supernet, specs: Sequence[SubnetSpec], batch: Mapping[str, torch.Tensor],
                    settings: SupernetSettings, *, teacher: nn.Module | None = None) -> list[float]:
    """Forward and backward every shape of one step on one batch (gradients accumulate in the
    supernet's weights; the caller steps the optimizer). specs[0] is the largest: it learns from the
    labels (and from `teacher` with distill=base); the others are distilled from the largest's
    logits (distill=largest) or the teacher's (distill=base). Returns each shape's loss."""
    labels = batch["labels"]
    w, t = settings.distill_weight, settings.temperature
    target = None
    if settings.distill == "base":
        if teacher is None:
            raise ValueError("supernet.distill=base needs the fine-tuned base as teacher")
        with torch.no_grad():
            target = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    losses = []
    for i, spec in enumerate(specs):
        logits = net.forward(spec, batch).float()
        loss = nn.functional.cross_entropy(logits, labels)
        if target is not None and w > 0:
            kd = nn.functional.kl_div(nn.functional.log_softmax(logits / t, dim=-1),
                                      nn.functional.log_softmax(target / t, dim=-1), log_target=True,
                                      reduction="batchmean") * (t * t)
            loss = (1 - w) * loss + w * kd
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite supernet loss {loss.item()} for {spec.describe()}")
        loss.backward()
        losses.append(float(loss.detach()))
        if i == 0 and settings.distill == "largest":
            target = logits.detach()  # in-place distillation: the largest shape teaches the rest
    return losses


def _optimizer(model: nn.Module, settings: SupernetSettings) -> tuple[Any, Any]:
    opt = adamw(model, lr=settings.lr, weight_decay=settings.weight_decay)
    total = max(1, settings.steps)
    warm = max(1, int(total * settings.warmup_ratio))

    def schedule(step: int) -> float:
        return (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


# ---------------------------------------------------------------------------- training


def train_supernet(
    base: nn.Module,
    scores: Any,
    space: Any,
    batches: Callable[[int, random.Random], tuple[int, dict[str, torch.Tensor]]],
    settings: SupernetSettings,
    *,
    checkpoint_dir: str | Path | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> tuple[Supernet, dict[str, Any]]:
    """Elastic training of a copy of `base` over `space` (resolved) for settings.steps steps.

    `batches(step, rng)` -> (context, batch) (see StepBatches). With `checkpoint_dir`, a checkpoint is
    written every settings.checkpoint_every steps and a run finding one there continues from it.
    `on_step(step, record)` is called after every optimizer step (steps counted from 1).
    Returns (supernet, info) with per-step losses, seconds and the step it resumed from.
    """
    if space.base is None:
        raise ValueError(f"space {space.name}: resolve it against the base model first (SearchSpace.resolve)")
    shape = base_shape(base.config)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = copy.deepcopy(base).cpu()
    net = Supernet(model, scores)
    teacher = base.eval() if settings.distill == "base" else None
    opt, sched = _optimizer(model, settings)
    start, history = 0, []
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = int(state["step"]), list(state["history"])
        log.info("supernet: resuming from step %d of %d (%s)", start, settings.steps, ckpt)
    t_start = time.perf_counter()
    model.train()
    for step in range(start, settings.steps):
        t0 = time.perf_counter()
        rng = step_rng(settings.seed, step)
        torch.manual_seed(rng.randrange(2**63))  # dropout: a function of (seed, step) too
        context, batch = batches(step, rng)
        specs = [replace(s, context=shape.max_positions)  # the batch is already cut at `context`
                 for s in sandwich(space, shape, scores, n_random=settings.random_subnets, rng=rng)]
        opt.zero_grad(set_to_none=True)
        losses = sandwich_losses(net, specs, batch, settings, teacher=teacher)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        record = {"step": step + 1, "context": context, "losses": losses, "seconds": time.perf_counter() - t0,
                  "shapes": [s.describe() for s in specs]}
        history.append({k: record[k] for k in ("step", "context", "losses", "seconds")})
        done = step + 1
        if ckpt is not None and settings.checkpoint_every and done % settings.checkpoint_every == 0 and done < settings.steps:
            _save_checkpoint(ckpt, model, opt, sched, done, history)
        if on_step is not None:
            on_step(done, record)
    model.eval()
    info = {
        "steps": settings.steps,
        "resumed_from": start,
        "train_seconds": time.perf_counter() - t_start,
        "history": history,
        "final_loss_largest": _mean_last([h["losses"][0] for h in history]),
        "final_loss_smallest": _mean_last([h["losses"][1] for h in history if len(h["losses"]) > 1]),
    }
    return net, info


def _mean_last(values: Sequence[float], n: int = 10) -> float | None:
    tail = list(values)[-n:]
    return float(sum(tail) / len(tail)) if tail else None


def _save_checkpoint(path: Path, model: nn.Module, opt: Any, sched: Any, step: int, history: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "history": history}, tmp)
    tmp.replace(path)  # atomic: a kill leaves the previous checkpoint or this one, never half a file


# ---------------------------------------------------------------------------- cached once


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """A content hash of named tensors (a model's state dict, importance scores)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


def supernet_key(base: nn.Module, scores: Any, space: Any, settings: SupernetSettings, **extra: Any) -> str:
    """Cache key: the base's weights, the scores, the shapes the space offers and the recipe."""

    score_tensors = {} if scores is None else {k: v for k, v in scores.to_dict().items() if k != "method"}
    recipe = {k: v for k, v in asdict(settings).items() if k not in NOT_RECIPE}
    return cache_key(
        what="supernet", version=SUPERNET_VERSION, base=tensor_digest(base.state_dict()),
        scores=tensor_digest(score_tensors), space={"choices": space.choices(), "per_layer": space.per_layer},
        settings=recipe, **extra,
    )


def train_supernet_cached(
    base: nn.Module,
    scores: Any,
    space: Any,
    batches: Callable[[], Callable[[int, random.Random], tuple[int, dict[str, torch.Tensor]]]],
    settings: SupernetSettings,
    *,
    cache_dir: str | Path | None,
    key_parts: Mapping[str, Any] | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> tuple[Supernet, dict[str, Any]]:
    """The supernet of (base, scores, space, recipe), trained once and cached under `cache_dir`.

    Folder cache_dir/supernet/KEY (HF model + info.json), written whole (tmp folder, then rename);
    work in progress checkpoints into KEY.partial (kept across kills, resumed). Workers sharing the
    cache wait on KEY.lock: the first trains, the others read. `batches()` builds the batch
    function only when training is needed.
    """

    if cache_dir is None:
        return train_supernet(base, scores, space, batches(), settings, on_step=on_step)
    key = supernet_key(base, scores, space, settings, **dict(key_parts or {}))
    folder = Path(cache_dir) / "supernet" / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(key + ".partial")
    with FileLock(str(folder) + ".lock"):
        for stale in folder.parent.glob(key + ".tmp*"):  # a worker killed mid-save: nobody owns it
            shutil.rmtree(stale, ignore_errors=True)
        if (folder / "info.json").is_file():
            model = _load_model(folder)
            info = json.loads((folder / "info.json").read_text())
            info["cached"] = True
            log.info("supernet: cached %s", folder)
            return Supernet(model, scores), info
        log.info("supernet: elastic training for %d steps over space %s (cached afterwards)", settings.steps, space.name)
        net, info = train_supernet(base, scores, space, batches(), settings, checkpoint_dir=partial, on_step=on_step)
        info.update(cached=False, key=key, space=space.name, settings=asdict(settings))
        tmp = folder.with_name(key + f".tmp{os.getpid()}")
        net.model.save_pretrained(tmp)
        (tmp / "info.json").write_text(json.dumps(info, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.replace(folder)
        shutil.rmtree(partial, ignore_errors=True)
        return net, info


def _load_model(folder: Path) -> nn.Module:
    from transformers import AutoModelForSequenceClassification  # heavy (~6 s cold): only where a model is loaded

    return AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="sdpa").eval()


def training_contexts(space: Any, settings: SupernetSettings, cap: int) -> list[int]:
    """The contexts batches are cut at: the space's (at most the run's cap), or the cap alone."""
    if settings.random_contexts and "context" in space.axes:
        return sorted({min(cap, c) for c in space.axes["context"].values})
    return [cap]


def cached_supernet(prep: Any, space: Any, settings: SupernetSettings, *,
                    on_step: Callable[[int, dict[str, Any]], None] | None = None) -> tuple[Supernet, dict[str, Any]]:
    """The supernet for a prepared run (nas.study.prepare.prepare) and its resolved space."""

    max_length = int(cfg_get(prep.cfg, "max_length", 128))
    cap = min(max_length, prep.shape.max_positions)

    def batches() -> StepBatches:
        return StepBatches(lambda c: prep.tokenized("train", c), prep.tokenizer,
                           contexts=training_contexts(space, settings, cap), batch_size=settings.batch_size,
                           seed=settings.seed)

    return train_supernet_cached(prep.base, prep.scores, space, batches, settings, cache_dir=prep.cache_dir,
                                 key_parts={"task": prep.task.fingerprint, "max_length": max_length},
                                 on_step=on_step)


# ---------------------------------------------------------------------------- a trial


def evaluate_slice(net: Supernet, spec: SubnetSpec, prep: Any, *, batch_size: int = 128) -> tuple[nn.Module, dict[str, float]]:
    """A supernet trial's quality: cut `spec` from the supernet (prune_model) and measure validation
    accuracy at the spec's context. Returns (the physical model, {val_accuracy, seconds_slice, seconds_eval})."""

    t0 = time.perf_counter()
    model = net.slice(spec)
    t1 = time.perf_counter()
    acc = accuracy(model, prep.loader("validation", spec.context, batch_size=batch_size, shuffle=False))
    return model, {"val_accuracy": acc, "seconds_slice": t1 - t0, "seconds_eval": time.perf_counter() - t1}
