"""Benchmark: search quality against baselines at an equal trial budget, several seeds.

Variants (each `python -m nas.search` with the same budget):
  default     NSGA-II, importance scores, distillation, space triple
  random      random sampling instead of NSGA-II
  naive       keep-first-k instead of importance scores
  no_distill  plain cross-entropy fine-tuning (train.distill_weight=0)
  depth / width / length / dual   single- or two-axis spaces instead of triple
Score: hypervolume of the validation front in (accuracy, latency / base latency), both
measured in the run's own process, reference point (accuracy 0.5, relative latency 1.0):
the area of the (accuracy above 0.5) x (latency saved) region the front dominates. Higher is
better; the unpruned base alone scores 0.

    python experiments/search_quality/run.py [--trials 8] [--steps 30] [--seeds 0 1 2] [--variants ...]
Runs already recorded in runs.csv are skipped, so the script can be resumed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VARIANTS = {
    "default": ["+space=triple"],
    "random": ["+space=triple", "search.sampler=random"],
    "naive": ["+space=triple", "importance.method=naive"],
    "no_distill": ["+space=triple", "train.distill_weight=0"],
    "depth": ["+space=depth"],
    "width": ["+space=width"],
    "length": ["+space=length"],
    "dual": ["+space=dual"],
}
REF_ACC, REF_COST = 0.5, 1.0


def hypervolume(points: list[tuple[float, float]], ref_acc: float = REF_ACC, ref_cost: float = REF_COST) -> float:
    """2-D hypervolume of (accuracy to maximise, cost to minimise) points w.r.t. (ref_acc, ref_cost)."""
    pts = sorted((c, a) for a, c in points if a > ref_acc and c < ref_cost)
    volume, best_acc = 0.0, ref_acc
    # sweep from the cheapest: a dearer point adds area only with the accuracy it gains
    for cost, acc in pts:
        if acc > best_acc:
            volume += (ref_cost - cost) * (acc - best_acc)
            best_acc = acc
    return volume


def run_one(variant: str, seed: int, trials: int, steps: int) -> dict:
    import pandas as pd

    run_dir = Path(tempfile.mkdtemp(prefix=f"q_{variant}_{seed}_")) / "run"
    cmd = [sys.executable, "-m", "nas.search", *VARIANTS[variant], f"search.seed={seed}", f"search.n_trials={trials}",
           f"train.max_steps={steps}", "search.population_size=4", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{variant} seed {seed} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    front = pd.read_csv(run_dir / "pareto.csv")
    trials_df = pd.read_csv(run_dir / "trials.csv")
    base = front[front["is_base"]].iloc[0]
    members = front[~front["is_base"]]
    done = trials_df[trials_df["state"] == "COMPLETE"]
    pts = [(float(r["val_accuracy"]), 1.0 / float(r["speedup"])) for _, r in done.iterrows()]
    return {
        "variant": variant, "seed": seed, "trials": trials, "steps": steps,
        "hypervolume": hypervolume(pts), "front_size": len(members),
        "best_val_acc": float(done["val_accuracy"].max()),
        "max_speedup_within_3pt_val": float(done[done["val_accuracy"] >= base["val_accuracy"] - 0.03]["speedup"].max())
        if (done["val_accuracy"] >= base["val_accuracy"] - 0.03).any() else 0.0,
        "base_val_acc": float(base["val_accuracy"]),
    }


def markdown(frame) -> str:
    cols = [frame.index.name or "", *frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in frame.iterrows():
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join([str(idx), *cells]) + " |")
    return "\n".join(lines)


def main() -> None:
    import pandas as pd

    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = parser.parse_args()
    out = HERE / "runs.csv"
    runs = pd.read_csv(out) if out.is_file() else pd.DataFrame()
    for variant in args.variants:
        for seed in args.seeds:
            if not runs.empty and ((runs["variant"] == variant) & (runs["seed"] == seed) & (runs["trials"] == args.trials)
                                   & (runs["steps"] == args.steps)).any():
                continue
            row = run_one(variant, seed, args.trials, args.steps)
            print(row, flush=True)
            runs = pd.concat([runs, pd.DataFrame([row])], ignore_index=True)
            runs.to_csv(out, index=False)
    summary = runs.groupby("variant").agg(
        runs=("seed", "count"), hv_mean=("hypervolume", "mean"), hv_std=("hypervolume", "std"),
        best_val_acc=("best_val_acc", "mean"), speedup_3pt=("max_speedup_within_3pt_val", "mean"),
    ).sort_values("hv_mean", ascending=False)
    (HERE / "results.md").write_text(
        f"Equal budget: {args.trials} trials x {args.steps} steps per run; hypervolume of (val accuracy, latency/base) "
        f"w.r.t. ({REF_ACC}, {REF_COST}); mean and std over seeds.\n\n" + markdown(summary) + "\n")
    print(summary)


if __name__ == "__main__":
    main()
