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

    from nas.study.trial import Evaluator
    from nas.cut.recovery import RecoverySettings
    from nas.quality.finetune import TrainSettings

    container = OmegaConf.to_container(cfg, resolve=True)
    recovery = RecoverySettings.from_cfg({**(container.get("prune") or {}), "recovery": method})
    return Evaluator(prep=prep, timer=None, train=TrainSettings.from_cfg(container["train"]), recovery=recovery)


def accuracies(ev, model, spec) -> dict[str, float]:
    return {"val": ev.accuracy(model, spec, "validation"), "test": ev.accuracy(model, spec, "test")}


def done_rows(mode: str) -> list[dict]:
    """Rows a killed run already wrote (recovery.jsonl / distill.jsonl): not measured again."""
    path = HERE / f"{mode}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def keep(mode: str, row: dict) -> None:
    with open(HERE / f"{mode}.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def run_recovery(prep, cfg, args) -> list[dict]:
    rows = done_rows("recovery")
    seen = {(r["shape"], r["method"]) for r in rows}
    for name, *sizes in GRID:
        spec = spec_for(prep, *sizes)
        for method in args.methods:
            if (name, method) in seen:
                continue
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
            keep("recovery", row)
    return rows


def run_distill(prep, cfg, args) -> list[dict]:
    rows = done_rows("distill")
    seen = {(r["shape"], r["distill"]) for r in rows}
    for name, *sizes in GRID:
        spec = spec_for(prep, *sizes)
        for distill in ("logits", "hidden"):
            if (name, distill) in seen:
                continue
            ev = evaluator(prep, cfg, args.recovery)
            model, _ = ev.candidate(spec)
            settings = replace(ev.train, max_steps=args.steps, distill=distill)
            t0 = time.perf_counter()
            ev.fit(model, spec, settings)
            acc = accuracies(ev, model, spec)
            row = {"shape": name, "spec": spec.describe(), "distill": distill, "recovery": args.recovery,
                   "steps": args.steps, "val": acc["val"], "test": acc["test"], "seconds": time.perf_counter() - t0}
            rows.append(row)
            keep("distill", row)
    return rows


def report() -> str:
    """results.md from the recorded rows: the recovery grid and the paired distillation comparison."""
    import pandas as pd

    out = []
    base = json.loads((HERE / "recovery_base.json").read_text()) if (HERE / "recovery_base.json").is_file() else None
    rec = pd.DataFrame(done_rows("recovery"))
    if not rec.empty:
        if base:
            out.append(f"Base: validation {base['val']:.4f}, test {base['test']:.4f}.\n")
        out.append("## Recovery grid (validation / test accuracy; `tuned` = after the trial's 60-step fine-tune)\n")
        out.append("| shape | spec | method | error ratio | val pruned | test pruned | val tuned | test tuned | recovery s |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for _, r in rec.iterrows():
            tuned = (f"{r['val_tuned']:.4f} | {r['test_tuned']:.4f}" if "val_tuned" in r and r["val_tuned"] == r["val_tuned"]
                     else " | ")
            out.append(f"| {r['shape']} | {r['spec']} | {r['method']} | {r['error_ratio']:.3f} | {r['val_pruned']:.4f} | "
                       f"{r['test_pruned']:.4f} | {tuned} | {r['seconds_recovery']:.0f} |")
        none = rec[rec["method"] == "none"].set_index("shape")
        for method in [m for m in rec["method"].unique() if m != "none"]:
            other = rec[rec["method"] == method].set_index("shape")
            d = (other["val_pruned"] - none["val_pruned"]).dropna() * 100
            line = f"\n- `{method}` vs `none`, right after pruning: validation {d.mean():+.2f} points on average " \
                   f"({(d > 0).sum()} of {len(d)} shapes better)"
            if "val_tuned" in other and other["val_tuned"].notna().any():
                dv = (other["val_tuned"] - none["val_tuned"]).dropna() * 100
                dt = (other["test_tuned"] - none["test_tuned"]).dropna() * 100
                line += f"; after the fine-tune: validation {dv.mean():+.2f} ({(dv > 0).sum()} of {len(dv)} better), " \
                        f"test {dt.mean():+.2f} ({(dt > 0).sum()} of {len(dt)} better)"
            out.append(line)
    dis = pd.DataFrame(done_rows("distill"))
    if not dis.empty:
        out.append("\n## Distillation: logits vs logits + hidden states, same shape, same seed, 60 steps\n")
        out.append("| shape | spec | val logits | val hidden | test logits | test hidden | s logits | s hidden |")
        out.append("|---|---|---|---|---|---|---|---|")
        wide = dis.pivot_table(index=["shape", "spec"], columns="distill", values=["val", "test", "seconds"])
        for (shape, spec), r in wide.iterrows():
            out.append(f"| {shape} | {spec} | {r[('val', 'logits')]:.4f} | {r[('val', 'hidden')]:.4f} | "
                       f"{r[('test', 'logits')]:.4f} | {r[('test', 'hidden')]:.4f} | {r[('seconds', 'logits')]:.0f} | "
                       f"{r[('seconds', 'hidden')]:.0f} |")
        dv = (wide[("val", "hidden")] - wide[("val", "logits")]).dropna() * 100
        dt = (wide[("test", "hidden")] - wide[("test", "logits")]).dropna() * 100
        out.append(f"\nhidden - logits, paired by shape: validation median {dv.median():+.2f} points, mean {dv.mean():+.2f} "
                   f"({(dv > 0).sum()} of {len(dv)} better); test median {dt.median():+.2f}, mean {dt.mean():+.2f} "
                   f"({(dt > 0).sum()} of {len(dt)} better)")
    text = "\n".join(out) + "\n"
    (HERE / "results.md").write_text(text)
    return text


def main(argv: list[str]) -> None:
    import pandas as pd
    import torch

    from nas.config import compose
    from nas.study.prepare import prepare

    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["recovery", "distill", "report"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--methods", nargs="+", default=["none", "bias", "rescale", "both"])
    ap.add_argument("--finetune", nargs="+", default=["none", "bias", "both"], help="methods also fine-tuned")
    ap.add_argument("--recovery", default="none", help="distill mode: prune.recovery of every model")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (two runs side by side: 1 each)")
    args, overrides = ap.parse_known_args(argv)
    if args.mode == "report":
        print(report())
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    cfg = compose(overrides)
    prep = prepare(cfg)
    base = {"val": prep.base_info["validation_accuracy"], "test": prep.base_info["test_accuracy"],
            "steps": prep.base_info.get("steps"), "best_step": prep.base_info.get("best_step")}
    print("base", json.dumps(base), flush=True)
    rows = run_recovery(prep, cfg, args) if args.mode == "recovery" else run_distill(prep, cfg, args)
    pd.DataFrame(rows).to_csv(HERE / f"{args.mode}.csv", index=False)
    (HERE / f"{args.mode}_base.json").write_text(json.dumps({**base, "overrides": overrides, "steps": args.steps}, indent=2))
    print(report())


if __name__ == "__main__":
    main(sys.argv[1:])
