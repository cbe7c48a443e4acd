"""Benchmarks (b) and (c) of the supernet issue: estimators, and samplers, at the SAME wall-clock budget.

Each cell is one real search (`python -m nas.search +space=triple`) with
    search.time_budget=T     no trial starts after T seconds of the run (preparation and, for
                             `supernet`, its training included), search.n_trials a cap far above it
    search.final_k=K         then the same final stage for every estimator (final.*)
    supernet.seed=SEED       each seed trains its own supernet inside its budget (a cached one would
                             be free to the second seed and flatter the estimator)
T defaults to the trial phase of the default run (16 trials x 60 steps on the cached base: ~540 s,
experiments/headline). The base and importance scores are cached and shared by every cell.

Score of a cell: its final-trained members on the test split, against the base's test accuracy, with
the speedup its search measured (real validation inputs, batch 1, 1 thread, torch, paired with the base):
    hv        hypervolume of (test accuracy, latency / base latency), reference (0.5, 1.0)
    at_1pt    best speedup within 1.0 test point of the base (none: 1.0, the base itself)
    at_3pt    the same within 3.0 points
With final_k=1 the front is one trained member; K=3 spreads three over the trade-off (3x the final cost).

    python experiments/supernet/equal_time.py                                     # (b): 3 estimators x seeds 1-3
    python experiments/supernet/equal_time.py --cells supernet:random             # (c) beside supernet:nsga2
    python experiments/supernet/equal_time.py --report-only
Cells already in runs.csv are skipped: the script resumes. Nothing else may run on the machine meanwhile
(every trial times latency).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RUNS = HERE / "runs.csv"  # --runs changes it (e.g. for a smoke run)
FIELDS = ["estimator", "sampler", "seed", "time_budget", "final_k", "wall_s", "trials", "hv", "at_1pt", "at_1pt_shape",
          "at_3pt", "at_3pt_shape", "base_test", "finals", "distinct", "search_hv", "n_trials"]


def score(run_dir: Path) -> dict:
    import pandas as pd

    from nas.study.report import hypervolume

    front = pd.read_csv(run_dir / "pareto.csv")
    trials = pd.read_csv(run_dir / "trials.csv")
    base_test = float(front[front["is_base"]].iloc[0]["test_accuracy"])
    finals = front[~front["is_base"]].dropna(subset=["final_test_accuracy"])
    points = [(float(r["final_test_accuracy"]), float(r["latency_ratio"])) for _, r in finals.iterrows()]
    done = trials[(trials["state"] == "COMPLETE") & trials["repeat_of"].isna() & ~trials["infeasible"].astype(bool)]
    out: dict = {"base_test": base_test, "hv": hypervolume(points),
                 "trials": int((trials["state"] == "COMPLETE").sum()), "distinct": len(done),
                 # what the sampler optimised: every distinct shape's (validation accuracy, latency ratio)
                 "search_hv": hypervolume([(float(a), float(c)) for a, c in zip(done["val_accuracy"],
                                                                                 done["latency_ratio"])]),
                 "finals": "; ".join(f"{r['shape']} test {r['final_test_accuracy']:.4f} {r['speedup']:.2f}x"
                                     for _, r in finals.iterrows())}
    for points_, key in ((1.0, "at_1pt"), (3.0, "at_3pt")):
        ok = finals[finals["final_test_accuracy"] >= base_test - points_ / 100]
        best = ok.sort_values("speedup", ascending=False).iloc[0] if not ok.empty else None
        out[key] = float(best["speedup"]) if best is not None else 1.0
        out[f"{key}_shape"] = str(best["shape"]) if best is not None else "base"
    return out


def done_cells() -> set[tuple[str, str, int]]:
    if not RUNS.is_file():
        return set()
    with RUNS.open() as fh:
        return {(r["estimator"], r["sampler"], int(r["seed"])) for r in csv.DictReader(fh)}


def matched_trials(estimator: str, seed: int, args: argparse.Namespace) -> int:
    """The trial count the NSGA-II cell of this estimator and seed reached within its time budget."""
    ref = Path(args.out) / f"{estimator}_nsga2_{seed}" / "trials.csv"
    if not ref.is_file():
        raise SystemExit(f"--match-trials needs the {estimator}:nsga2 cell of seed {seed} first ({ref} is missing)")
    with ref.open() as fh:
        return sum(1 for _ in csv.DictReader(fh))


def run_cell(estimator: str, sampler: str, seed: int, args: argparse.Namespace) -> dict:
    run_dir = Path(args.out) / f"{estimator}_{sampler}_{seed}"
    n_trials = matched_trials(estimator, seed, args) if args.match_trials else None
    budget = ["search.n_trials=2000", f"search.time_budget={args.time_budget}"] if n_trials is None else \
        [f"search.n_trials={n_trials}", "search.time_budget=null"]
    cmd = [sys.executable, "-m", "nas.search", "+space=triple", f"search.estimator={estimator}",
           f"search.sampler={sampler}", f"search.seed={seed}", f"supernet.seed={seed}", *budget,
           f"search.final_k={args.final_k}", f"hydra.run.dir={run_dir}", *args.overrides]
    print(" ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{run_dir.name} failed ({proc.returncode}); see {run_dir.parent / (run_dir.name + '.log')}")
    row = {"estimator": estimator, "sampler": sampler, "seed": seed, "n_trials": n_trials,
           "time_budget": args.time_budget if n_trials is None else None, "final_k": args.final_k,
           "wall_s": round(time.perf_counter() - t0), **score(run_dir)}
    new = not RUNS.is_file()
    with RUNS.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k) for k in FIELDS})
    print({k: row[k] for k in ("estimator", "sampler", "seed", "trials", "hv", "at_1pt", "at_3pt", "wall_s")}, flush=True)
    return row


def report(out: Path) -> None:
    import pandas as pd

    if not RUNS.is_file():
        print("no runs yet")
        return
    runs = pd.read_csv(RUNS)
    for col in ("distinct", "search_hv", "n_trials"):
        if col not in runs:
            runs[col] = float("nan")
    for i, r in runs.iterrows():  # rows written before a column existed: score their run folder again
        run_dir = out / f"{r['estimator']}_{r['sampler']}_{int(r['seed'])}"
        if pd.isna(r["search_hv"]) and (run_dir / "trials.csv").is_file():
            fresh = score(run_dir)
            runs.loc[i, ["distinct", "search_hv"]] = [fresh["distinct"], fresh["search_hv"]]
    runs[FIELDS].to_csv(RUNS, index=False)
    lines = ["| estimator | sampler | budget | seeds | trials (distinct), mean | search-front hypervolume mean "
             "[min-max] | final test hypervolume mean [min-max] | best speedup within 1 pt (per seed) | "
             "within 3 pts (per seed) | wall s (mean) |", "|---|---|---|---|---|---|---|---|---|---|"]
    runs["budget"] = [f"{t:.0f} s" if pd.notna(t) else "nsga2's trials" for t in runs["time_budget"]]
    for (est, sampler, budget), g in runs.groupby(["estimator", "sampler", "budget"], sort=False):
        lines.append(f"| {est} | {sampler} | {budget} | {', '.join(str(int(s)) for s in g['seed'])} | "
                     f"{g['trials'].mean():.0f} ({g['distinct'].mean():.0f}) | {g['search_hv'].mean():.4f} "
                     f"[{g['search_hv'].min():.4f}-{g['search_hv'].max():.4f}] | {g['hv'].mean():.4f} "
                     f"[{g['hv'].min():.4f}-{g['hv'].max():.4f}] | "
                     + ", ".join(f"{v:.2f}x" for v in g["at_1pt"]) + " | "
                     + ", ".join(f"{v:.2f}x" for v in g["at_3pt"]) + f" | {g['wall_s'].mean():.0f} |")
    RUNS.with_name("equal_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    global RUNS
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", nargs="+", default=["finetune:nsga2", "supernet:nsga2", "none:nsga2"],
                    help="estimator:sampler pairs")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])  # 0: the fidelity run cached its supernet
    ap.add_argument("--time-budget", type=float, default=540.0)
    ap.add_argument("--final-k", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "equal_time"))
    ap.add_argument("--match-trials", action="store_true",
                    help="(c): run each cell for the trial count its estimator's nsga2 cell reached at the same seed, "
                         "with no time budget (the sampler is what differs; that seed's supernet is cached by then)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--runs", default=str(RUNS), help="the results table (resumed from)")
    args, args.overrides = ap.parse_known_args()  # anything else: Hydra overrides for every cell
    RUNS = Path(args.runs)
    if not args.report_only:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        done = done_cells()
        for seed in args.seeds:  # seed-major: a stopped run has every estimator at the same seeds
            for cell in args.cells:
                estimator, sampler = cell.split(":")
                if (estimator, sampler, seed) not in done:
                    run_cell(estimator, sampler, seed, args)
    report(Path(args.out))


if __name__ == "__main__":
    main()
