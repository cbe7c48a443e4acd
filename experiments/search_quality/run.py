"""Benchmark: search quality against baselines at an equal trial budget, several seeds.

Variants (each `python -m nas.search` with the same budget):
  default     NSGA-II, importance scores, distillation, space triple
  random      random sampling instead of NSGA-II
  tpe         multi-objective TPE instead of NSGA-II
  naive       keep-first-k instead of importance scores
  no_distill  plain cross-entropy fine-tuning (train.distill_weight=0)
  depth / width / length / dual   single- or two-axis spaces instead of triple
Score: hypervolume of the validation front in (accuracy, latency / base latency), both
measured in the run's own process, reference point (accuracy 0.5, relative latency 1.0):
the area of the (accuracy above 0.5) x (latency saved) region the front dominates. Higher is
better; the unpruned base alone scores 0. Second score (hv_near): the same area counting only
accuracy within 3 points of the base's, the part of the front a user would deploy from,
divided by the band's height (0: nothing faster in the band; 1: free at the base's accuracy).

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
TRIALS_DIR = HERE / "trials"  # every run's trials.csv
ROOT = HERE.parent.parent
VARIANTS = {
    "default": ["+space=triple"],
    "random": ["+space=triple", "search.sampler=random"],
    "tpe": ["+space=triple", "search.sampler=tpe"],
    "naive": ["+space=triple", "importance.method=naive"],
    "no_distill": ["+space=triple", "train.distill_weight=0"],
    "depth": ["+space=depth"],
    "width": ["+space=width"],
    "length": ["+space=length"],
    "dual": ["+space=dual"],
}
REF_ACC, REF_COST = 0.5, 1.0
NEAR_BASE = 0.03  # second score: reference accuracy 3 points under the base's validation accuracy


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
    TRIALS_DIR.mkdir(exist_ok=True)
    trials_df.to_csv(trials_file(variant, seed, trials, steps), index=False)  # kept for paired comparisons
    base = front[front["is_base"]].iloc[0]
    members = front[~front["is_base"]]
    done = trained(trials_df).sort_values("number")
    pts = [(float(r["val_accuracy"]), 1.0 / float(r["speedup"])) for _, r in done.iterrows()]
    near = done[done["val_accuracy"] >= base["val_accuracy"] - NEAR_BASE]
    return {
        "variant": variant, "seed": seed, "trials": trials, "steps": steps,
        "hypervolume": hypervolume(pts), "front_size": len(members),
        "best_val_acc": float(done["val_accuracy"].max()),
        "max_speedup_within_3pt_val": float(near["speedup"].max()) if len(near) else 0.0,
        "base_val_acc": float(base["val_accuracy"]),
        # every finished trial as accuracy:relative latency, in trial order, so other scores can be computed later
        "points": ";".join(f"{a:.5f}:{c:.5f}" for a, c in pts),
    }


def trained(trials_df):
    """The completed trials that trained a shape: a repeat adds no point and spends no budget."""
    done = trials_df[trials_df["state"] == "COMPLETE"]
    return done[done["repeat_of"].isna()] if "repeat_of" in done else done


def trials_file(variant: str, seed: int, trials: int, steps: int) -> Path:
    return TRIALS_DIR / f"{variant}_seed{seed}_{trials}x{steps}.csv"


def paired(variant_a: str, variant_b: str, runs) -> list[str]:
    """Same seed, same shape trained both ways (NSGA-II's first generation is the same seeded random draw):
    the effect of the one setting that differs, free of the shape. One markdown line per budget."""
    import pandas as pd

    lines = []
    for (trials, steps), group in runs.groupby(["trials", "steps"]):
        diffs = []
        for seed in sorted(set(group["seed"])):
            files = [trials_file(v, seed, trials, steps) for v in (variant_a, variant_b)]
            if not all(f.is_file() for f in files):
                continue
            a, b = (trained(pd.read_csv(f)) for f in files)
            both = a.merge(b, on=["number", "shape"], suffixes=("_a", "_b"))
            diffs += (both["val_accuracy_a"] - both["val_accuracy_b"]).tolist()
        if diffs:
            d = pd.Series(diffs)
            lines.append(f"- {trials} trials x {steps} steps: {len(d)} shapes trained both ways; val accuracy "
                         f"{variant_a} - {variant_b}: median {d.median():+.4f}, mean {d.mean():+.4f}, "
                         f"{variant_a} higher on {(d > 0).sum()}, lower on {(d < 0).sum()}, equal on {(d == 0).sum()}")
    return lines


def parse_points(text: str) -> list[tuple[float, float]]:
    return [(float(a), float(c)) for a, c in (item.split(":") for item in text.split(";"))]


def near_base_hypervolume(row) -> float:
    """Hypervolume counting only accuracy within NEAR_BASE of the base: the region a user would deploy from."""
    if not isinstance(row.get("points"), str):
        return float("nan")
    # divided by the band's height: 0 = nothing faster within the band, 1 = free at the base's accuracy
    return hypervolume(parse_points(row["points"]), ref_acc=float(row["base_val_acc"]) - NEAR_BASE) / NEAR_BASE


def markdown(frame) -> str:
    cols = [frame.index.name or "", *frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in frame.astype(object).iterrows():  # object: counts stay integers
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join([str(idx), *cells]) + " |")
    return "\n".join(lines)


def plot(runs) -> None:
    """hypervolume.png: each run's score per variant and budget; anytime.png: mean hypervolume after k trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    budgets = sorted(runs.groupby(["trials", "steps"]).groups)
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.5 * len(budgets), 3.8), squeeze=False)
    for ax, (trials, steps) in zip(axes[0], budgets):
        group = runs[(runs["trials"] == trials) & (runs["steps"] == steps)]
        order = group.groupby("variant")["hypervolume"].mean().sort_values(ascending=False).index.tolist()
        for i, variant in enumerate(order):
            values = group[group["variant"] == variant]["hypervolume"].to_numpy()
            ax.scatter(np.full(len(values), i), values, color="tab:blue", alpha=0.6)
            ax.hlines(values.mean(), i - 0.3, i + 0.3, color="black")
        ax.set_xticks(range(len(order)), order, rotation=40, ha="right")
        ax.set_title(f"{trials} trials x {steps} steps")
        ax.set_ylabel("hypervolume (higher is better)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(HERE / "hypervolume.png", dpi=120)
    plt.close(fig)

    curves = runs[runs["points"].notna()] if "points" in runs else runs.iloc[0:0]
    longest = int(curves["trials"].max()) if not curves.empty else 0
    if longest < 12:
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for variant, group in curves[curves["trials"] == longest].groupby("variant"):
        # the hypervolume after each trial, in trial order
        rows = [np.array([hypervolume(pts[: k + 1]) for k in range(len(pts))])
                for pts in map(parse_points, group["points"])]
        width = min(len(r) for r in rows)
        mean = np.mean([r[:width] for r in rows], axis=0)
        ax.plot(np.arange(1, width + 1), mean, label=f"{variant} ({len(rows)} seeds)")
    ax.set_xlabel("completed trials")
    ax.set_ylabel("hypervolume so far (mean over seeds)")
    ax.set_title(f"{longest}-trial runs, {int(curves[curves['trials'] == longest]['steps'].iloc[0])} steps each")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "anytime.png", dpi=120)
    plt.close(fig)


def main() -> None:
    import pandas as pd

    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--report-only", action="store_true", help="rewrite results.md and the plots from runs.csv")
    args = parser.parse_args()
    out = HERE / "runs.csv"
    runs = pd.read_csv(out) if out.is_file() else pd.DataFrame()
    for variant in [] if args.report_only else args.variants:
        for seed in args.seeds:
            if not runs.empty and ((runs["variant"] == variant) & (runs["seed"] == seed) & (runs["trials"] == args.trials)
                                   & (runs["steps"] == args.steps)).any():
                continue
            row = run_one(variant, seed, args.trials, args.steps)
            print(row, flush=True)
            runs = pd.concat([runs, pd.DataFrame([row])], ignore_index=True)
            runs.to_csv(out, index=False)
    # one table per budget: hypervolumes are comparable only at an equal trial budget
    sections = [f"hv: hypervolume of (val accuracy, latency/base) w.r.t. ({REF_ACC}, {REF_COST}); hv_near: the same with "
                f"the reference accuracy {NEAR_BASE} under the base's, divided by {NEAR_BASE} (0: nothing faster within that band, "
                f"1: free at the base's accuracy); speedup_3pt: largest speedup within {NEAR_BASE} "
                "of the base's val accuracy (0 when none); mean and std over seeds; NSGA-II population 4.\n"]
    if "points" in runs:
        runs = runs.assign(hv_near=runs.apply(near_base_hypervolume, axis=1))
    else:
        runs = runs.assign(hv_near=float("nan"))
    for (trials, steps), group in runs.groupby(["trials", "steps"]):
        summary = group.groupby("variant").agg(
            runs=("seed", "count"), hv_mean=("hypervolume", "mean"), hv_std=("hypervolume", "std"),
            hv_near_mean=("hv_near", "mean"), hv_near_std=("hv_near", "std"),
            best_val_acc=("best_val_acc", "mean"), speedup_3pt=("max_speedup_within_3pt_val", "mean"),
        ).sort_values("hv_mean", ascending=False)
        sections.append(f"## {trials} trials x {steps} steps per run\n\n" + markdown(summary) + "\n")
        print(f"{trials} trials x {steps} steps\n{summary}")
    lines = paired("default", "no_distill", runs)
    if lines:
        sections.append("## Distillation on the same shapes\n\n" + "\n".join(lines) + "\n")
        print("\n".join(lines))
    (HERE / "results.md").write_text("\n".join(sections))
    plot(runs)


if __name__ == "__main__":
    main()
