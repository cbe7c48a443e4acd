"""Benchmarks of issue 11 (accuracy at speed), on the cached fine-tuned base of the embedded default:

    recovery   a grid of shapes (each axis alone and jointly) x prune.recovery: validation / test
               accuracy right after pruning, and after the trial's fine-tune (train.* defaults)
    distill    the same shapes fine-tuned with train.distill=logits and =hidden, same seed: the paired
               same-shape difference

    python experiments/accuracy_at_speed/run.py recovery [--steps 60] [--methods none bias rescale both]
    python experiments/accuracy_at_speed/run.py distill [--steps 60] [--recovery none]

Extra arguments are Hydra overrides of the run config (e.g. base.max_epochs=2). Results go to
recovery.csv / distill.csv and results.md beside this file. Nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import bench  # noqa: E402,F401  (puts the repository on sys.path)

# (name, layers, heads, ffn, hidden) on the 6-layer / 12-head / 1536 / 384 MiniLM; context stays at 64
# (the reviews' p95 is 47 tokens, so it cuts almost nothing: the grid isolates the other axes).
GRID = [
    ("depth", 4, 12, 1536, 384),
    ("heads", 6, 6, 1536, 384),
    ("ffn", 6, 12, 512, 384),
    ("hidden", 6, 12, 1536, 256),
    ("joint-mild", 5, 8, 768, 384),
    ("joint", 4, 6, 512, 320),
    ("joint-hard", 3, 4, 256, 256),
]
CONTEXT = 64


def spec_for(prep, layers: int, heads: int, ffn: int, hidden: int):
    from nas.spec import SubnetSpec

    return SubnetSpec.uniform(layers=prep.scores.top_layers(layers), heads=heads, ffn=ffn, hidden=hidden,
                              context=CONTEXT).validate(prep.shape)


def evaluator(prep, cfg, method: str):
    from omegaconf import OmegaConf

    from nas.evaluate import Evaluator
    from nas.recovery import RecoverySettings
    from nas.train import TrainSettings

    container = OmegaConf.to_container(cfg, resolve=True)
    recovery = RecoverySettings.from_cfg({**(container.get("prune") or {}), "recovery": method})
    return Evaluator(prep=prep, timer=None, train=TrainSettings.from_cfg(container["train"]), recovery=recovery)


def accuracies(ev, model, spec) -> dict[str, float]:
    return {"val": ev.accuracy(model, spec, "validation"), "test": ev.accuracy(model, spec, "test")}


def run_recovery(prep, cfg, args) -> list[dict]:
    rows = []
    for name, *sizes in GRID:
        spec = spec_for(prep, *sizes)
        for method in args.methods:
            ev = evaluator(prep, cfg, method)
            model, info = ev.candidate(spec)
            pruned = accuracies(ev, model, spec)
            row = {"shape": name, "spec": spec.describe(), "method": method, "val_pruned": pruned["val"],
                   "test_pruned": pruned["test"], "error_ratio": info.get("recovery_error_ratio", 1.0),
                   "seconds_recovery": info.get("seconds_recovery", 0.0)}
            if method in args.finetune:
                settings = replace(ev.train, max_steps=args.steps)
                t0 = time.perf_counter()
                ev.fit(model, spec, settings)
                tuned = accuracies(ev, model, spec)
                row.update(val_tuned=tuned["val"], test_tuned=tuned["test"], seconds_finetune=time.perf_counter() - t0)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def run_distill(prep, cfg, args) -> list[dict]:
    rows = []
    for name, *sizes in GRID:
        spec = spec_for(prep, *sizes)
        for distill in ("logits", "hidden"):
            ev = evaluator(prep, cfg, args.recovery)
            model, _ = ev.candidate(spec)
            settings = replace(ev.train, max_steps=args.steps, distill=distill)
            t0 = time.perf_counter()
            ev.fit(model, spec, settings)
            acc = accuracies(ev, model, spec)
            row = {"shape": name, "spec": spec.describe(), "distill": distill, "recovery": args.recovery,
                   "steps": args.steps, "val": acc["val"], "test": acc["test"], "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str]) -> None:
    import pandas as pd
    import torch

    from nas.config import compose
    from nas.pipeline import prepare

    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["recovery", "distill"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--methods", nargs="+", default=["none", "bias", "rescale", "both"])
    ap.add_argument("--finetune", nargs="+", default=["none", "bias", "both"], help="methods also fine-tuned")
    ap.add_argument("--recovery", default="none", help="distill mode: prune.recovery of every model")
    args, overrides = ap.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    cfg = compose(overrides)
    prep = prepare(cfg)
    base = {"val": prep.base_info["validation_accuracy"], "test": prep.base_info["test_accuracy"],
            "steps": prep.base_info.get("steps"), "best_step": prep.base_info.get("best_step")}
    print("base", json.dumps(base), flush=True)
    rows = run_recovery(prep, cfg, args) if args.mode == "recovery" else run_distill(prep, cfg, args)
    frame = pd.DataFrame(rows)
    frame.to_csv(HERE / f"{args.mode}.csv", index=False)
    (HERE / f"{args.mode}_base.json").write_text(json.dumps({**base, "overrides": overrides, "steps": args.steps}, indent=2))
    print(frame.to_string())


if __name__ == "__main__":
    main(sys.argv[1:])
