"""Fine-tuning with Lightning (optionally distilling from the unpruned model) and evaluation."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from nas.data.tasks import make_loader, sorted_by_length, tokenize
from nas.models.loading import attention_for, load_base_model, load_tokenizer, read_config
from nas.quality.autocast import resolve_precision, training_autocast
from nas.quality.lm import Progress, lm_train_loss, positions_fraction, student_vocab, teacher_topk_logits
from nas.quality.metrics import accuracy, model_inputs
from nas.quality.optim import adamw
from nas.util import cache_key

log = logging.getLogger(__name__)
BASE_VERSION = 3  # bump when the base fine-tune recipe changes: old cache entries are then ignored
# The TrainSettings fields the base's weights depend on. The rest (threads, evaluation batch size,
# distillation settings, the per-trial step count) only concern trials: changing them must not
# fine-tune the base again (6.6 minutes on the default task).
BASE_KEY_FIELDS = ("batch_size", "lr", "weight_decay", "warmup_ratio", "seed")


@dataclass(frozen=True)
class TrainSettings:
    max_steps: int = 60
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    distill_weight: float = 0.5
    temperature: float = 2.0
    eval_batch_size: int = 64
    seed: int = 0
    threads: int = 0  # 0: leave torch's default
    distill: str = "logits"  # logits: KL on the teacher's logits | hidden: also the kept layers' hidden states
    hidden_weight: float = 1.0  # weight of the hidden-state term (distill=hidden)
    distill_topk: int = 0  # causal LMs: KL over the teacher's top-k next tokens, cached (0: full vocabulary, online)
    precision: str = "fp32"  # auto | fp32 | bf16 (nas.quality.autocast): the training forwards run in it
    # causal LMs: the share of each block's predicted positions a step's loss is taken on (the vocabulary head runs
    # on those alone); auto: as much as keeps the head's cost under the layers' (nas.quality.lm.positions_fraction)
    lm_positions: Any = "auto"
    # pruned classifiers (trials, final members): the token embedding table stays as cut from the fine-tuned base
    # (a 3-layer student's step 1.7x faster, 0.5-1 points lower; experiments/final_stage); the base always trains it
    freeze_embeddings: bool = False

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any], **overrides: Any) -> TrainSettings:
        names = {f.name for f in fields(cls)}
        values = {k: cfg[k] for k in names if k in cfg}
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.max_steps < 0:
            raise ValueError(f"train.max_steps={self.max_steps} must be >= 0")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError(f"train.batch_size={self.batch_size} / eval_batch_size={self.eval_batch_size} must be >= 1")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"train.distill_weight={self.distill_weight} is out of range; allowed 0..1")
        if self.temperature <= 0:
            raise ValueError(f"train.temperature={self.temperature} must be > 0")
        if self.lr <= 0:
            raise ValueError(f"train.lr={self.lr} must be > 0")
        if self.distill not in DISTILL:
            raise ValueError(f"train.distill={self.distill!r} is not known; allowed: {', '.join(DISTILL)}")
        if not self.hidden_weight >= 0:
            raise ValueError(f"train.hidden_weight={self.hidden_weight} must be >= 0")
        if isinstance(self.distill_topk, bool) or not isinstance(self.distill_topk, int) or self.distill_topk < 0:
            raise ValueError(f"train.distill_topk={self.distill_topk!r} must be an integer >= 0 (0: full-vocabulary KL)")
        resolve_precision(self.precision)
        if not isinstance(self.freeze_embeddings, bool):
            raise ValueError(f"train.freeze_embeddings={self.freeze_embeddings!r} must be true or false")
        if self.lm_positions != "auto":
            try:
                share = float(self.lm_positions)
            except (TypeError, ValueError):
                share = -1.0
            if not 0 < share <= 1:
                raise ValueError(f"train.lm_positions={self.lm_positions!r} must be auto or a share in (0, 1]")

    @property
    def resolved_precision(self) -> str:
        """fp32 or bf16: `precision` as this machine runs it (auto: bf16 where the CPU has it natively)."""
        return resolve_precision(self.precision)


DISTILL = ("logits", "hidden")


def freeze_token_embeddings(model: nn.Module, settings: TrainSettings) -> None:
    """With settings.freeze_embeddings, a classifier's token embedding table is not trained (requires_grad off):
    no gradient, no optimiser state. A causal LM's table is its output head too (tied), so it always trains."""
    if not settings.freeze_embeddings or isinstance(getattr(model, "lm_head", None), nn.Module):
        return
    embeddings = model.get_input_embeddings()
    if embeddings is not None:
        embeddings.weight.requires_grad_(False)


@dataclass(frozen=True)
class HiddenMap:
    """Where a pruned student's hidden states come from in its teacher: student layer i is teacher
    layer layers[i]; its channels are the teacher's `channels` (the kept hidden channels: the fixed
    projection from the teacher's width to the student's)."""

    layers: tuple[int, ...]
    channels: torch.Tensor

    def pairs(self) -> list[tuple[int, int]]:
        """(student, teacher) indices into output_hidden_states: 0 is the embeddings' output."""
        return [(0, 0)] + [(i + 1, b + 1) for i, b in enumerate(self.layers)]


def hidden_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], hidden_map: HiddenMap,
                mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error between each kept layer's hidden states and its teacher layer's (at the
    kept channels), over real tokens, averaged over the layer pairs."""
    channels = hidden_map.channels.to(student[0].device)
    total = student[0].new_zeros((), dtype=torch.float32)
    pairs = hidden_map.pairs()
    for si, ti in pairs:
        s = student[si].float()
        t = teacher[ti].float().index_select(-1, channels)
        err = (s - t).pow(2).mean(-1)  # (batch, seq)
        if mask is not None:
            m = mask.to(err.dtype)
            total = total + (err * m).sum() / m.sum().clamp_min(1)
        else:
            total = total + err.mean()
    return total / len(pairs)


@dataclass(frozen=True)
class BaseRecipe:
    """How long the unpruned base trains: `max_epochs` passes over the training split (or exactly
    `max_steps` when set), validated every `eval_every` steps; `patience` validations without
    improvement stop it; the best validation checkpoint is the base."""

    max_epochs: float = 2.0
    max_steps: int | None = None
    eval_every: int = 100
    patience: int = 3

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> BaseRecipe:
        steps = cfg.get("max_steps")
        recipe = cls(
            max_epochs=float(cfg.get("max_epochs", cls.max_epochs)),
            max_steps=None if steps is None else int(steps),
            eval_every=int(cfg.get("eval_every", cls.eval_every)),
            patience=int(cfg.get("patience", cls.patience)),
        )
        recipe.validate()
        return recipe

    def validate(self) -> None:
        if self.max_steps is None and not self.max_epochs > 0:
            raise ValueError(f"base.max_epochs={self.max_epochs} must be > 0 (or set base.max_steps)")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"base.max_steps={self.max_steps} must be >= 0 or null (null: base.max_epochs decides)")
        if self.eval_every < 1:
            raise ValueError(f"base.eval_every={self.eval_every} must be >= 1 (steps)")
        if self.patience < 0:
            raise ValueError(f"base.patience={self.patience} must be >= 0 (0: never stop early)")

    def steps(self, batches_per_epoch: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.max_epochs * batches_per_epoch))


@dataclass
class Monitor:
    """Validation during training: accuracy every `every` steps (and at the last step); the best
    weights are kept and restored at the end; `patience` evaluations without improvement stop it
    (0: never stop early). `extra` loaders are evaluated beside it and recorded only (benchmarks'
    curves): they never choose anything."""

    loader: Any
    every: int
    patience: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    best_accuracy: float = -1.0
    stopped_early: bool = False

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"eval_every={self.every} must be >= 1 (steps)")
        if self.patience < 0:
            raise ValueError(f"patience={self.patience} must be >= 0 (0: never stop early)")

    def callback(self, model: nn.Module, max_steps: int) -> Any:
        import lightning as L  # heavy (~6.6 s cold): only where training runs

        monitor = self

        class _Callback(L.Callback):
            best_state: dict[str, torch.Tensor] | None = None
            bad = 0

            def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
                step = trainer.global_step
                if step % monitor.every and step < max_steps:
                    return
                point = {"step": step, "validation": accuracy(model, monitor.loader)}
                for name, loader in monitor.extra.items():
                    point[name] = accuracy(model, loader)
                monitor.curve.append(point)
                log.info("step %d: validation accuracy %.4f", step, point["validation"])
                if point["validation"] > monitor.best_accuracy:
                    monitor.best_accuracy, monitor.best_step, self.bad = point["validation"], step, 0
                    self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    self.bad += 1
                    if monitor.patience and self.bad >= monitor.patience:
                        monitor.stopped_early = True
                        trainer.should_stop = True
                model.train()

            def on_train_end(self, trainer: Any, pl_module: Any) -> None:
                if self.best_state is not None:
                    model.load_state_dict(self.best_state)

        return _Callback()


def _lightning_module_class() -> type:
    import lightning as L  # heavy (~6.6 s cold): only where training runs

    class ClassifierModule(L.LightningModule):
        """Thin wrapper: the model is built and pruned elsewhere; this only trains it."""

        def __init__(self, model: nn.Module, settings: TrainSettings, teacher: nn.Module | None = None,
                     teacher_cache: dict[bytes, torch.Tensor] | None = None, hidden_map: HiddenMap | None = None) -> None:
            super().__init__()
            self.model = model
            self.settings = settings
            self.hidden_map = hidden_map
            # The teacher is not a submodule: it must not be trained, saved or counted.
            object.__setattr__(self, "teacher", teacher)
            self.teacher_cache = teacher_cache if teacher_cache is not None else {}
            self.losses: list[float] = []
            self.hidden_losses: list[float] = []
            self.positions = positions_fraction(model, settings.lm_positions)  # causal LMs (nas.quality.lm)
            self.draws = torch.Generator().manual_seed(settings.seed)
            self.precision = settings.resolved_precision  # fp32, or bf16 autocast where the CPU has it natively

        def on_fit_start(self) -> None:
            if self.teacher is not None:
                self.teacher.to(self.device).eval()

        def _teacher_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            # Teacher logits depend only on the (truncated) token sequence: cache them by its
            # bytes, so trials that see the same examples at the same context pay once.
            ids = batch["input_ids"].cpu()
            mask = batch.get("attention_mask")
            lengths = mask.sum(-1).tolist() if mask is not None else [ids.shape[1]] * ids.shape[0]
            keys = [ids[i, : int(n)].numpy().tobytes() for i, n in enumerate(lengths)]
            if all(k in self.teacher_cache for k in keys):
                return torch.stack([self.teacher_cache[k] for k in keys]).to(self.device)
            with torch.no_grad(), training_autocast(self.precision):
                logits = self.teacher(**model_inputs(batch)).logits.float()
            for k, row in zip(keys, logits.cpu()):
                self.teacher_cache[k] = row
            return logits

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            hidden = self.teacher is not None and self.hidden_map is not None
            w = self.settings.distill_weight
            if batch["labels"].dim() == 2:  # a causal LM (nas.quality.lm): next-token loss, KL on next-token distributions
                k = self.settings.distill_topk
                topk = teacher_topk_logits(self.teacher, batch, k, self.teacher_cache,
                                           temperature=self.settings.temperature, vocab=student_vocab(self.model)) \
                    if k and self.teacher is not None and w > 0 else None
                loss = lm_train_loss(self.model, batch, fraction=self.positions, generator=self.draws,
                                     teacher=None if topk is not None else self.teacher, distill_weight=w,
                                     temperature=self.settings.temperature, teacher_topk=topk)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
                self.losses.append(float(loss.detach()))
                return loss
            with training_autocast(self.precision):  # the forwards in bf16 where native; losses in fp32
                out = self.model(**model_inputs(batch), output_hidden_states=hidden)
                teacher_logits = None
                if hidden:  # one teacher forward gives both its hidden states and its logits
                    with torch.no_grad():
                        t_out = self.teacher(**model_inputs(batch), output_hidden_states=True)
                    teacher_logits = t_out.logits.float()
            loss = nn.functional.cross_entropy(out.logits.float(), batch["labels"])
            if hidden:
                h = hidden_loss(tuple(x.float() for x in out.hidden_states),
                                tuple(x.float() for x in t_out.hidden_states), self.hidden_map, batch.get("attention_mask"))
                self.hidden_losses.append(float(h.detach()))
            if self.teacher is not None and w > 0 and out.logits.dim() == 2:
                t = self.settings.temperature
                logits = teacher_logits if teacher_logits is not None else self._teacher_logits(batch)
                soft = nn.functional.log_softmax(logits / t, dim=-1)
                kd = nn.functional.kl_div(
                    nn.functional.log_softmax(out.logits.float() / t, dim=-1), soft, log_target=True,
                    reduction="batchmean",
                ) * (t * t)
                loss = (1 - w) * loss + w * kd
            if hidden:
                loss = loss + self.settings.hidden_weight * h
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
            self.losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self) -> Any:
            s = self.settings
            opt = adamw(self.model, lr=s.lr, weight_decay=s.weight_decay)
            total = max(1, s.max_steps)
            warm = max(1, int(total * s.warmup_ratio))

            def schedule(step: int) -> float:
                if step < warm:
                    return (step + 1) / warm
                return max(0.0, (total - step) / max(1, total - warm))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return ClassifierModule


def finetune(
    model: nn.Module,
    loader: Any,
    settings: TrainSettings,
    *,
    teacher: nn.Module | None = None,
    teacher_cache: dict[bytes, torch.Tensor] | None = None,
    accelerator: str = "auto",
    monitor: Monitor | None = None,
    hidden_map: HiddenMap | None = None,
    progress: str | None = None,
) -> dict[str, Any]:
    """Train `model` in place for settings.max_steps steps; returns {'losses': [...], 'seconds': s}.

    With a `monitor`, validation accuracy is followed during training and the best weights are
    what the model ends with (see Monitor). `progress`: a name; a line with the steps done, the rate
    and the time left is logged every 30 s (a long phase stays visible)."""
    import lightning as L  # heavy (~6.6 s cold): only where training runs

    start = time.perf_counter()
    if settings.max_steps == 0:
        model.eval()
        return {"losses": [], "seconds": 0.0}
    if settings.threads:
        torch.set_num_threads(settings.threads)
    L.seed_everything(settings.seed, workers=True, verbose=False)
    freeze_token_embeddings(model, settings)
    module = _lightning_module_class()(model, settings, teacher=teacher, teacher_cache=teacher_cache,
                                       hidden_map=hidden_map)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
    trainer = L.Trainer(
        max_steps=settings.max_steps,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        deterministic=False,
        callbacks=([monitor.callback(model, settings.max_steps)] if monitor is not None else [])
        + ([_progress_callback(Progress(progress, settings.max_steps), module)] if progress else []),
    )
    model.train()
    trainer.fit(module, train_dataloaders=loader)
    model.cpu().eval()
    if teacher is not None:
        teacher.cpu()
    return {"losses": module.losses, "hidden_losses": module.hidden_losses, "seconds": time.perf_counter() - start}


def _progress_callback(progress: Progress, module: Any) -> Any:
    import lightning as L  # heavy (~6.6 s cold): only where training runs

    class _Progress(L.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            recent = module.losses[-10:]
            progress.step(trainer.global_step, f"loss {sum(recent) / max(1, len(recent)):.3f}")

    return _Progress()


def base_cache_key(settings: TrainSettings, recipe: BaseRecipe, *, max_length: int,
                   key_parts: Mapping[str, Any]) -> str:
    """What the fine-tuned base depends on: model, data, tokenisation cap, recipe and the optimiser
    settings in BASE_KEY_FIELDS. Runs that differ only in trial settings share one cached base."""

    optimiser = {name: getattr(settings, name) for name in BASE_KEY_FIELDS}
    optimiser["precision"] = settings.resolved_precision  # a bf16-trained base is another model
    return cache_key(what="base", version=BASE_VERSION, settings=optimiser, recipe=asdict(recipe),
                     max_length=max_length, **dict(key_parts))


def finetune_base_cached(
    *,
    model_name: str | None,
    task: Any,
    settings: TrainSettings,
    max_length: int,
    cache_dir: str | Path | None,
    key_parts: Mapping[str, Any],
    recipe: BaseRecipe | None = None,
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The fine-tuned unpruned base (teacher and reference), trained once and cached on disk.

    `recipe` (default: BaseRecipe()) sets its length, with validation early stopping; the best
    validation checkpoint is kept. Returns (model, tokenizer, info) where info holds validation/test
    accuracy, the validation curve and timing.
    """
    from transformers import AutoModelForSequenceClassification  # heavy (~6 s cold): only where a model is loaded

    recipe = recipe or BaseRecipe()
    tokenizer = load_tokenizer(model_name)
    key = base_cache_key(settings, recipe, max_length=max_length, key_parts=key_parts)
    folder = Path(cache_dir) / "base" / key if cache_dir is not None else None
    lock = FileLock(str(folder) + ".lock") if folder is not None else None
    if folder is not None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    try:
        if folder is not None:  # leftovers of a worker killed mid-save: nobody else holds the lock

            for stale in folder.parent.glob(folder.name + ".tmp*"):
                shutil.rmtree(stale, ignore_errors=True)
        if folder is not None and (folder / "info.json").is_file():
            model = AutoModelForSequenceClassification.from_pretrained(
                folder, attn_implementation=attention_for(read_config(str(folder)))).eval()
            info = json.loads((folder / "info.json").read_text())
            info.update(cached=True, key=key)
            log.info("base model: cached fine-tune %s", folder)
            return model, tokenizer, info
        model = load_base_model(model_name, num_labels=task.num_labels, label_names=task.label_names, seed=settings.seed)
        train = tokenize(task.train, tokenizer, max_length=max_length)
        loader = make_loader(train, tokenizer, batch_size=settings.batch_size, shuffle=True, seed=settings.seed,
                             group_by_length=True)
        val = sorted_by_length(tokenize(task.validation, tokenizer, max_length=max_length))
        test = sorted_by_length(tokenize(task.test, tokenizer, max_length=max_length))
        val_loader = make_loader(val, tokenizer, batch_size=settings.eval_batch_size, shuffle=False)
        steps = recipe.steps(len(loader))
        settings = replace(settings, max_steps=steps, freeze_embeddings=False)  # the base trains its whole model
        monitor = Monitor(val_loader, every=recipe.eval_every, patience=recipe.patience) if steps else None
        log.info("base model: fine-tuning %s for up to %d steps (%.1f epochs; validation every %d steps, patience %d; "
                 "cached afterwards)", model_name or "the embedded model", steps, steps / max(1, len(loader)),
                 recipe.eval_every, recipe.patience)
        result = finetune(model, loader, settings, monitor=monitor)
        t0 = time.perf_counter()
        info = {
            # the restored best checkpoint's own validation: measured by the monitor, not again
            "validation_accuracy": monitor.best_accuracy if monitor and monitor.curve else accuracy(model, val_loader),
            "test_accuracy": accuracy(model, make_loader(test, tokenizer, batch_size=settings.eval_batch_size, shuffle=False)),
            "train_seconds": result["seconds"],
            "eval_seconds": time.perf_counter() - t0,
            "final_loss": float(sum(result["losses"][-10:]) / max(1, len(result["losses"][-10:]))) if result["losses"] else math.nan,
            "steps": len(result["losses"]),
            "max_steps": steps,
            "best_step": monitor.best_step if monitor else 0,
            "stopped_early": bool(monitor and monitor.stopped_early),
            "steps_per_epoch": len(loader),
            "curve": monitor.curve if monitor else [],
            "cached": False,
            "key": key,
        }
        if folder is not None:
            tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
            model.save_pretrained(tmp)
            (tmp / "info.json").write_text(json.dumps(info, indent=2))
            if folder.exists():  # a partial folder from a killed run: the lock says nobody owns it
                shutil.rmtree(folder)
            tmp.replace(folder)
        return model, tokenizer, info
    finally:
        if lock is not None:
            lock.release()
