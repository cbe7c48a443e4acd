"""The final recipe: a pruned classifier distilled from the fine-tuned base over its planned length (learning rate
decayed to zero there), ending with its last weights (or, stopped early, its best validation checkpoint).

Three pieces:

    FinalRecipe      final.*: its length (epochs or steps), validation cadence, patience, checkpoint, learning rate
    teacher_logits   the base's logits on a list of texts, computed once and cached on disk by base,
                     text set and tokenisation cap (the labelled training split, a transfer set)
    DistillRun       one model's training, advanced in slices: successive halving (nas.study.final)
                     trains every candidate a little, keeps the better half, and resumes those

A plain torch loop rather than Lightning: a member is paused between rungs and resumed with its
optimiser, schedule, data order and best checkpoint intact, in the same process.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from nas.data.tasks import LengthGroupedBatchSampler
from nas.quality.autocast import training_autocast
from nas.quality.finetune import HiddenMap, TrainSettings, freeze_token_embeddings, hidden_loss
from nas.quality.metrics import accuracy, model_inputs
from nas.quality.optim import adamw, trainable
from nas.util import cache_key

log = logging.getLogger(__name__)
STARTS = ("base", "trial")
LAYERS = ("auto", "bottom", "trial")
CHECKPOINTS = ("auto", "last", "best")


@dataclass(frozen=True)
class FinalRecipe:
    """How long one final member trains. `max_epochs` passes over the training split (or exactly
    `max_steps`), validated every `eval_every` steps; `patience` x `eval_every` steps without a better
    validation stop it. `checkpoint`: the weights it ends with: last (where the learning rate has decayed to zero),
    best (its best validation checkpoint) or auto (last when it ran its planned length, else best: a member stopped
    by patience or a deadline is mid-schedule). `train` holds the optimiser and loss
    settings (train.*, with final.lr). `start`: base (cut again from the fine-tuned base) or trial
    (continue from the trial's fine-tuned weights). `layers` (start=base): which base layers a depth cut
    keeps, bottom (drop from the top) or trial (the trial's own, by block influence); auto: bottom for
    encoder families, trial for decoders."""

    train: TrainSettings = field(default_factory=lambda: TrainSettings(lr=1e-4))
    max_epochs: float = 3.0
    max_steps: int | None = None
    eval_every: int = 100
    patience: int = 0
    start: str = "base"
    layers: str = "auto"
    checkpoint: str = "auto"

    def validate(self) -> None:
        if self.max_steps is None and not self.max_epochs > 0:
            raise ValueError(f"final.max_epochs={self.max_epochs} must be > 0 (or set final.max_steps)")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"final.max_steps={self.max_steps} must be >= 0 or null (null: final.max_epochs decides; "
                             "0: members are not trained, only measured as deployed)")
        if self.eval_every < 1:
            raise ValueError(f"final.eval_every={self.eval_every} must be >= 1 (steps)")
        if self.patience < 0:
            raise ValueError(f"final.patience={self.patience} must be >= 0 (0: never stop early)")
        if self.start not in STARTS:
            raise ValueError(f"final.start={self.start!r} is not known; allowed: {', '.join(STARTS)}")
        if self.layers not in LAYERS:
            raise ValueError(f"final.layers={self.layers!r} is not known; allowed: {', '.join(LAYERS)}")
        if self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"final.checkpoint={self.checkpoint!r} is not known; allowed: {', '.join(CHECKPOINTS)}")

    def member_spec(self, spec: Any, *, encoder: bool) -> Any:
        """The spec a member trains at: its trial's, with the bottom layers kept where final.layers says so
        (start=base only: trial weights belong to the trial's own layers)."""
        bottom = self.layers == "bottom" or (self.layers == "auto" and encoder)
        if self.start != "base" or not bottom:
            return spec
        return replace(spec, layers=tuple(range(len(spec.layers))))

    def steps(self, batches_per_epoch: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.max_epochs * batches_per_epoch))

    def describe(self, batches_per_epoch: int | None = None) -> str:
        length = (f"{self.max_steps} steps" if self.max_steps is not None else
                  f"up to {self.max_epochs:g} epochs" + (f" ({self.steps(batches_per_epoch)} steps)"
                                                          if batches_per_epoch else ""))
        t = self.train
        kept = {"auto": "the last weights at the planned length (else the best checkpoint)",
                "last": "the last weights", "best": "the best checkpoint"}[self.checkpoint]
        return (f"{length} of {t.batch_size}, validated every {self.eval_every} steps, patience {self.patience}, "
                f"{kept} kept; lr {t.lr:g} linear decay, distill {t.distill} (weight {t.distill_weight:g}, "
                f"T {t.temperature:g}), from the "
                + (f"fine-tuned base (layers: {self.layers})" if self.start == "base" else "trial weights"))


# ---------------------------------------------------------------------------- teacher logits


@torch.inference_mode()
def teacher_logits(teacher: nn.Module, texts: Sequence[str], tokenizer: Any, *, max_length: int,
                   batch_size: int = 128, precision: str = "fp32") -> torch.Tensor:
    """(len(texts), num_labels) float32 logits of `teacher` on each text truncated at max_length, in
    the texts' order (computed in length-sorted batches: little padding; the forwards under bf16 autocast with
    precision=bf16, as the members' own training forwards run)."""
    was_training = teacher.training
    teacher.eval()
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    order = sorted(range(len(texts)), key=lambda i: len(enc["input_ids"][i]))
    out = torch.empty((len(texts), int(teacher.config.num_labels)), dtype=torch.float32)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = tokenizer.pad({k: [enc[k][i] for i in rows] for k in keys}, return_tensors="pt")
        with training_autocast(precision):
            out[rows] = teacher(**model_inputs(batch)).logits.float()
    teacher.train(was_training)
    return out


def texts_digest(texts: Sequence[str]) -> str:
    """A text set's identity for caches: its texts in order."""
    import hashlib

    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:32]


def cached_teacher_logits(teacher: nn.Module, texts: Sequence[str], tokenizer: Any, *, max_length: int,
                          cache_dir: str | Path | None, base_key: str, name: str,
                          say: Callable[[str], None] = log.info, precision: str = "fp32") -> torch.Tensor:
    """teacher_logits, cached under cache_dir/teacher by the base's cache key, the texts and max_length:
    a transfer set of 20,000 texts is labelled once per base, not once per run."""
    key = cache_key(what="teacher_logits", base=base_key, texts=texts_digest(texts), n=len(texts),
                    max_length=int(max_length), **({"precision": precision} if precision != "fp32" else {}))
    path = Path(cache_dir) / "teacher" / f"{key}.pt" if cache_dir is not None else None
    if path is None:
        return teacher_logits(teacher, texts, tokenizer, max_length=max_length, precision=precision)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            logits = torch.load(path, weights_only=True)
            if logits.shape[0] == len(texts):
                return logits
        t0 = time.perf_counter()
        logits = teacher_logits(teacher, texts, tokenizer, max_length=max_length, precision=precision)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(logits, tmp)
        tmp.replace(path)
        (path.with_suffix(".json")).write_text(json.dumps({"name": name, "texts": len(texts), "max_length": max_length,
                                                            "seconds": round(time.perf_counter() - t0, 1)}))
        say(f"teacher logits: {len(texts)} {name} texts labelled by the base in {time.perf_counter() - t0:.0f}s (cached)")
        return logits


# ---------------------------------------------------------------------------- the training data


@dataclass
class DistillData:
    """The rows a final member trains on: the labelled training split and, optionally, teacher-labelled
    transfer texts (no label: distillation only). Each row carries its teacher logits."""

    input_ids: list[list[int]]
    labels: list[int]  # -100: a transfer text (no label)
    teacher: torch.Tensor | None  # (rows, num_labels); None: the teacher runs live (hidden distillation)
    transfer_share: float = 0.0
    labelled_rows: int = 0

    @classmethod
    def build(cls, tokenizer: Any, texts: Sequence[str], labels: Sequence[int], *, context: int,
              teacher: torch.Tensor | None, transfer_texts: Sequence[str] = (),
              transfer_teacher: torch.Tensor | None = None, transfer_share: float = 0.0) -> DistillData:
        enc = tokenizer(list(texts) + list(transfer_texts), truncation=True, max_length=int(context))["input_ids"]
        rows = list(labels) + [-100] * len(transfer_texts)
        logits = None
        if teacher is not None:
            logits = teacher if not transfer_texts else torch.cat([teacher, transfer_teacher])
        return cls(input_ids=enc, labels=rows, teacher=logits, transfer_share=transfer_share if transfer_texts else 0.0,
                   labelled_rows=len(texts))

    def batches_per_epoch(self, batch_size: int) -> int:
        """Steps of one pass over the labelled rows (transfer rows ride along)."""
        per_step = max(1, batch_size - self.transfer_rows_per_batch(batch_size))
        return math.ceil(self.labelled_rows / per_step)

    def transfer_rows_per_batch(self, batch_size: int) -> int:
        if not self.transfer_share or self.labelled_rows == len(self.labels):
            return 0
        return min(batch_size - 1, max(1, round(batch_size * self.transfer_share)))

    def batches(self, batch_size: int, *, seed: int) -> Any:
        """Endless seeded batches of row indices: length-grouped labelled rows, each batch topped up with
        transfer rows (their own seeded order) when there are any."""
        extra = self.transfer_rows_per_batch(batch_size)
        labelled = LengthGroupedBatchSampler([len(ids) for ids in self.input_ids[:self.labelled_rows]],
                                             batch_size=batch_size - extra, seed=seed)
        transfer = list(range(self.labelled_rows, len(self.labels)))
        generator = torch.Generator()
        generator.manual_seed(seed + 1)
        pool: list[int] = []
        while True:
            for batch in labelled:
                if extra:
                    while len(pool) < extra:
                        pool += [transfer[i] for i in torch.randperm(len(transfer), generator=generator).tolist()]
                    batch, pool = list(batch) + pool[:extra], pool[extra:]
                yield batch

    def collate(self, rows: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
        longest = max(len(self.input_ids[i]) for i in rows)
        ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for j, i in enumerate(rows):
            seq = self.input_ids[i]
            ids[j, :len(seq)] = torch.tensor(seq)
            mask[j, :len(seq)] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([self.labels[i] for i in rows])}
        if self.teacher is not None:
            batch["teacher"] = self.teacher[list(rows)]
        return batch


# ---------------------------------------------------------------------------- one member's training


def distill_loss(student: nn.Module, batch: Mapping[str, torch.Tensor], settings: TrainSettings, *,
                 teacher: nn.Module | None = None, hidden_map: HiddenMap | None = None,
                 precision: str = "fp32", exits: Any = None) -> torch.Tensor:
    """(1 - w) * cross-entropy on labelled rows + w * T^2 * KL(teacher || student) on every row, plus
    the hidden-state term when `hidden_map` is given (the teacher then runs live, for its hidden states).
    `precision`: fp32, or bf16 autocast for the forwards (nas.quality.autocast); the losses are fp32.
    `exits` (nas.quality.exits.ExitTraining): its early exits' losses are added (they read the hidden states)."""
    hidden = hidden_map is not None and teacher is not None
    with training_autocast(precision):
        out = student(**model_inputs(batch), output_hidden_states=hidden or exits is not None)
    logits = out.logits.float()
    labels = batch["labels"]
    loss = logits.new_zeros(())
    w = settings.distill_weight
    if (labels != -100).any():
        loss = loss + (1 - w) * nn.functional.cross_entropy(logits, labels, ignore_index=-100)
    target = batch.get("teacher")
    h = None
    if hidden or (target is None and teacher is not None):
        with torch.no_grad(), training_autocast(precision):
            t_out = teacher(**model_inputs(batch), output_hidden_states=hidden)
        target = t_out.logits.float()
        if hidden:
            h = hidden_loss(tuple(x.float() for x in out.hidden_states), tuple(x.float() for x in t_out.hidden_states),
                            hidden_map, batch.get("attention_mask"))
    if target is not None and w > 0:
        t = settings.temperature
        kd = nn.functional.kl_div(nn.functional.log_softmax(logits / t, dim=-1),
                                  nn.functional.log_softmax(target.float() / t, dim=-1), log_target=True,
                                  reduction="batchmean") * (t * t)
        loss = loss + w * kd
    if h is not None:
        loss = loss + settings.hidden_weight * h
    if exits is not None:
        loss = loss + exits.loss(out.hidden_states, batch.get("attention_mask"), labels, target)
    return loss


class DistillRun:
    """One member's final training: `advance(until=...)` trains up to a step count (or a deadline, or
    until patience runs out), validating every recipe.eval_every steps; the best validation weights
    are kept in memory and `finish()` ends with them or with the last (recipe.checkpoint). Paused and resumed at
    will in one process."""

    def __init__(self, model: nn.Module, data: DistillData, recipe: FinalRecipe, *, val_loader: Any, pad_id: int,
                 teacher: nn.Module | None = None, hidden_map: HiddenMap | None = None, start_step: int = 0,
                 exits: Any = None) -> None:
        self.model, self.data, self.recipe = model, data, recipe
        self.exits = exits  # nas.quality.exits.ExitTraining: heads attached to the model, trained with it
        self.settings = recipe.train
        self.val_loader, self.pad_id = val_loader, pad_id
        self.teacher = teacher if (data.teacher is None or hidden_map is not None) else None
        self.hidden_map = hidden_map
        self.precision = self.settings.resolved_precision  # fp32, or bf16 autocast where the CPU has it natively
        self.recipe_steps = recipe.steps(data.batches_per_epoch(self.settings.batch_size))
        self.total = self.recipe_steps  # the planned length: the recipe's, or a final plan's (set_total)
        self.step = start_step
        self.curve: list[dict[str, float]] = []
        self.best_accuracy = -1.0
        self.best_step = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.converged = False  # patience ran out, or the planned length is done
        self.kept_step: int | None = None  # the step whose weights finish() ended with
        self.seconds = 0.0
        self.losses: list[float] = []
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        torch.manual_seed(self.settings.seed)
        freeze_token_embeddings(model, self.settings)
        self.optimizer = adamw(model, lr=self.settings.lr, weight_decay=self.settings.weight_decay)
        if exits is not None:
            exits.regroup(self.optimizer)  # the heads at their own learning rate, before the schedule is made
        # a member resumed from saved weights continues its schedule where it was
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda step: self._lr_factor(step + start_step))
        self._batches = data.batches(self.settings.batch_size, seed=self.settings.seed + start_step)

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up, then linear decay to zero at the planned length (self.total, read at each step)."""
        warm = max(1, int(self.total * self.settings.warmup_ratio))
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (self.total - step) / max(1, self.total - warm))

    def set_total(self, total: int) -> None:
        """Plan the run at `total` steps instead of the recipe's (nas.study.final_plan: a budget too short for
        the recipe's length); the learning rate then decays to zero there. Only before the run is past it."""
        if isinstance(total, bool) or not isinstance(total, int) or total < self.step:
            raise ValueError(f"total={total!r} must be an integer >= the {self.step} steps done")
        self.total = total
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):  # the next step's lr
            group["lr"] = base * self._lr_factor(self.step)

    def time_steps(self, steps: int) -> tuple[float, float]:
        """(seconds per training step, seconds per validation) on this machine, at the precision the run trains
        in: one validation at the step the run is at (recorded in its curve, as any) and `steps` real steps of its
        training (the run goes on from there); their plain mean, the first (allocations) left out where there are
        more. Not scaled by the batches' sizes: much of a cut's step does not grow with them (its embedding table's
        gradient and optimiser update)."""
        t0 = time.perf_counter()
        if not any(p["step"] == self.step for p in self.curve):
            self.validate()
        validation = time.perf_counter() - t0
        if self.teacher is not None:
            self.teacher.eval()
        self.model.train()
        samples = []
        for _ in range(max(0, min(int(steps), self.total - self.step))):
            t = time.perf_counter()
            self._train_step()
            samples.append(time.perf_counter() - t)
        self.model.eval()
        self.seconds += time.perf_counter() - t0
        timed = samples[1:] or samples
        return (sum(timed) / len(timed) if timed else 0.0), validation

    def _train_step(self) -> None:
        """One optimiser step on the next batch."""
        rows = next(self._batches)
        batch = self.data.collate(rows, self.pad_id)
        loss = distill_loss(self.model, batch, self.settings, teacher=self.teacher, hidden_map=self.hidden_map,
                            precision=self.precision, exits=self.exits)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at final step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(trainable(self.model), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.losses.append(float(loss.detach()))

    def validate(self) -> float:
        acc = accuracy(self.model, self.val_loader)
        self.curve.append({"step": self.step, "validation": acc})
        if acc > self.best_accuracy:
            self.best_accuracy, self.best_step = acc, self.step
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        # patience counts steps (patience x eval_every without a better point), not validations: the extra
        # validations a halving rung takes to project a curve must not stop a member sooner
        elif self.recipe.patience and self.step - self.best_step >= self.recipe.patience * self.recipe.eval_every:
            self.converged = True
        return acc

    def advance(self, until: int | None = None, *, deadline: float | None = None) -> None:
        """Train to step `until` (default: the planned length), stopping early at a deadline
        (time.perf_counter) or when patience runs out; validation at every eval_every and at the stop."""
        until = self.total if until is None else min(int(until), self.total)
        if self.converged or self.step >= until:
            return
        t0 = time.perf_counter()
        if self.teacher is not None:
            self.teacher.eval()
        self.model.train()
        every = self.recipe.eval_every
        validated_at = -1
        while self.step < until and not (deadline is not None and time.perf_counter() >= deadline):
            self._train_step()
            if self.step % every == 0 or self.step == until:
                self.validate()
                validated_at = self.step
                self.model.train()
                if self.converged:
                    break
        if validated_at != self.step and (self.step or not self.curve):
            self.validate()
        if self.step >= self.total:
            self.converged = True
        self.model.eval()
        self.seconds += time.perf_counter() - t0

    def keeps_last(self) -> bool:
        """Whether finish() ends with the last weights (recipe.checkpoint; auto: when the planned length is done)."""
        if self.best_state is None or self.recipe.checkpoint == "last":
            return True
        return self.recipe.checkpoint == "auto" and self.step >= self.total

    def finish(self) -> nn.Module:
        """The model at the weights recipe.checkpoint keeps: the last, or the best validation checkpoint."""
        if self.keeps_last():
            self.kept_step = self.step
        else:
            self.model.load_state_dict(self.best_state)
            self.kept_step = self.best_step
        self.model.eval()
        return self.model

    def summary(self) -> dict[str, Any]:
        return {"steps": self.step, "best_step": self.best_step, "kept_step": self.kept_step,
                "planned_steps": self.total,
                "recipe_steps": self.recipe_steps,
                "best_val_accuracy": self.best_accuracy, "stopped_early": bool(self.converged and self.step < self.total),
                "train_seconds": round(self.seconds, 1), "curve": list(self.curve)}
