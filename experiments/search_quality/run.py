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

    python experiments/search_quality/run.py --retime
re-times every shape the recorded runs trained under the project's latency definition (real
inputs, paired with the base; nas.cost.latency) and re-scores each run with those latencies:
latency depends on a shape, not on its trained weights, so no run has to be trained again.
The runs before it were timed on random ids padded to the context, the base once per run;
those scores stay in the tables as the labelled "fixed-length (old rule)" columns.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from nas.study.report import hypervolume

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
        "hypervolume": hypervolume(pts, REF_ACC, REF_COST), "front_size": len(members),
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
    return hypervolume(parse_points(row["points"]), float(row["base_val_acc"]) - NEAR_BASE, REF_COST) / NEAR_BASE


SHAPE_KEY = ["n_layers", "heads", "ffn", "hidden", "context"]
RETIMED = HERE / "retimed_shapes.csv"  # shape -> real-input speedup, paired with the base


def retime_shapes(files: list[Path], *, sample: int, rounds: int):
    """Every trained shape in these trials files, timed against the base (cached in RETIMED)."""
    import pandas as pd

    sys.path.insert(0, str(HERE.parent))
    import bench

    shapes = pd.concat([trained(pd.read_csv(f))[SHAPE_KEY] for f in files]).drop_duplicates()
    known = pd.read_csv(RETIMED) if RETIMED.is_file() else pd.DataFrame(columns=[*SHAPE_KEY, "speedup_real"])
    todo = shapes.merge(known[SHAPE_KEY], on=SHAPE_KEY, how="left", indicator=True)
    todo = todo[todo["_merge"] == "left_only"].drop(columns="_merge")
    if len(todo):
        base, task, tokenizer = bench.parts()
        timer = bench.timer(base, task, tokenizer, max_length=128, sample_size=sample, rounds=rounds)
        rows = []
        for i, (_, r) in enumerate(todo.iterrows()):
            spec = bench.spec_from_row(base, r)
            m = timer.measure(bench.pruned(base, spec), context=spec.context)
            rows.append({**{k: r[k] for k in SHAPE_KEY}, "speedup_real": m["speedup"], "speedup_p10": m["speedup_p10"],
                         "speedup_p90": m["speedup_p90"], "mean_tokens": m["mean_tokens"],
                         "definition": timer.settings.describe()})
            print(f"{i + 1}/{len(todo)} {spec.describe():26s} {m['speedup']:.2f}x", flush=True)
            if len(rows) % 20 == 0 or i == len(todo) - 1:
                known = pd.concat([known, pd.DataFrame(rows)], ignore_index=True)
                rows = []
                known.to_csv(RETIMED, index=False)
    return known


def rescore(runs, retimed):
    """Each run's scores with real-input latencies (the same trials, accuracies and trial order)."""
    import pandas as pd

    speed = {tuple(r[k] for k in SHAPE_KEY): r["speedup_real"] for _, r in retimed.iterrows()}
    out = []
    for _, row in runs.iterrows():
        f = trials_file(row["variant"], int(row["seed"]), int(row["trials"]), int(row["steps"]))
        new = {"hypervolume_real": float("nan"), "speedup_3pt_real": float("nan"), "points_real": None}
        if f.is_file():
            done = trained(pd.read_csv(f)).sort_values("number")
            real = [speed[tuple(r[k] for k in SHAPE_KEY)] for _, r in done.iterrows()]
            pts = [(float(a), 1.0 / s) for a, s in zip(done["val_accuracy"], real)]
            near = [s for a, s in zip(done["val_accuracy"], real) if a >= row["base_val_acc"] - NEAR_BASE]
            new = {"hypervolume_real": hypervolume(pts, REF_ACC, REF_COST), "speedup_3pt_real": max(near) if near else 0.0,
                   "points_real": ";".join(f"{a:.5f}:{c:.5f}" for a, c in pts)}
        out.append(new)
    return runs.assign(**pd.DataFrame(out, index=runs.index))


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
        rows = [np.array([hypervolume(pts[: k + 1], REF_ACC, REF_COST) for k in range(len(pts))])
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
    parser.add_argument("--retime", action="store_true",
                        help="re-time every recorded shape on real inputs, paired with the base; then report")
    parser.add_argument("--retime-sample", type=int, default=16)
    parser.add_argument("--retime-rounds", type=int, default=3)
    args = parser.parse_args()
    out = HERE / "runs.csv"
    runs = pd.read_csv(out) if out.is_file() else pd.DataFrame()
    if args.retime:
        files = sorted(TRIALS_DIR.glob("*.csv"))
        retime_shapes(files, sample=args.retime_sample, rounds=args.retime_rounds)
    for variant in [] if args.report_only or args.retime else args.variants:
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
    real = RETIMED.is_file()
    if real:
        runs = rescore(runs, pd.read_csv(RETIMED))
        runs = runs.assign(hv_near_real=runs.apply(
            lambda r: near_base_hypervolume({"points": r["points_real"], "base_val_acc": r["base_val_acc"]}), axis=1))
        runs.drop(columns=["hv_near"]).to_csv(HERE / "runs_real.csv", index=False)
        sections[0] += ("\nLatency: real inputs (a length-stratified sample of validation reviews, batch 1, 1 thread, "
                        "torch eager), each shape timed in alternating rounds with the base (retimed_shapes.csv). "
                        "Columns marked old: the same runs scored with the rule they were recorded under (random ids "
                        "padded to the context, the base timed once per run).\n")
    for (trials, steps), group in runs.groupby(["trials", "steps"]):
        aggs = dict(runs=("seed", "count"))
        if real:
            aggs.update(hv_mean=("hypervolume_real", "mean"), hv_std=("hypervolume_real", "std"),
                        hv_near_mean=("hv_near_real", "mean"), speedup_3pt=("speedup_3pt_real", "mean"),
                        hv_old=("hypervolume", "mean"), speedup_3pt_old=("max_speedup_within_3pt_val", "mean"))
        else:
            aggs.update(hv_mean=("hypervolume", "mean"), hv_std=("hypervolume", "std"),
                        hv_near_mean=("hv_near", "mean"), hv_near_std=("hv_near", "std"),
                        speedup_3pt=("max_speedup_within_3pt_val", "mean"))
        aggs["best_val_acc"] = ("best_val_acc", "mean")
        summary = group.groupby("variant").agg(**aggs).sort_values("hv_mean", ascending=False)
        sections.append(f"## {trials} trials x {steps} steps per run\n\n" + markdown(summary) + "\n")
        print(f"{trials} trials x {steps} steps\n{summary}")
    lines = paired("default", "no_distill", runs)
    if lines:
        sections.append("## Distillation on the same shapes\n\n" + "\n".join(lines) + "\n")
        print("\n".join(lines))
    (HERE / "results.md").write_text("\n".join(sections))
    if real:  # the plots show the real-input scores
        runs = runs.assign(hypervolume=runs["hypervolume_real"], points=runs["points_real"])
    plot(runs)


if __name__ == "__main__":
    main()
