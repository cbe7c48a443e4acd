"""Benchmark: where a trial's time goes, and trials per hour with 1 and 2 workers.

1. Splits each completed trial of a run folder's study into pruning, fine-tuning,
   evaluation, latency measurement and framework overhead (trial duration minus the rest).
2. Runs the main search (cached base) with 1 worker, then with 2 workers sharing one SQLite
   study, and reports trials per hour from the study's own timestamps (first trial start to
   last trial end), so process start-up and the base phase are excluded.

    python experiments/time_split/run.py --run-dir PATH_OF_A_FINISHED_SEARCH [--trials 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PHASES = ("prune", "latency", "finetune", "eval")


def load(storage: str, name: str = "nas"):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=name, storage=storage)


def split(study) -> dict:
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    total = sum(t.duration.total_seconds() for t in done)
    out = {"trials": len(done), "median_trial_s": statistics.median(t.duration.total_seconds() for t in done)}
    for phase in PHASES:
        out[f"{phase}_s"] = sum(t.user_attrs.get(f"seconds_{phase}", 0.0) for t in done)
    out["overhead_s"] = total - sum(out[f"{p}_s"] for p in PHASES)
    out["total_s"] = total
    return out


def throughput(study) -> float:
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    start = min(t.datetime_start for t in done)
    end = max(t.datetime_complete for t in done)
    return 3600 * len(done) / (end - start).total_seconds()


def workers(n: int, trials: int, threads: int = 0) -> float:
    import os

    folder = Path(tempfile.mkdtemp(prefix=f"workers{n}_"))
    storage = f"sqlite:///{folder / 'study.db'}"
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    procs = [subprocess.Popen([sys.executable, "-m", "nas.search", "+space=triple", f"search.n_trials={trials}",
                               f"search.storage={storage}", "search.study_name=nas", f"hydra.run.dir={folder / f'w{i}'}",
                               f"train.threads={threads}"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(n)]
    for p in procs:
        if p.wait():
            raise SystemExit(f"worker exited {p.returncode}")
    return throughput(load(storage))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    parts = split(load(f"sqlite:///{Path(args.run_dir).resolve() / 'study.db'}"))
    old = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").is_file() else {}
    result = {**old, "split": parts}
    # measured once each; delete results.json to measure again
    runs = {"trials_per_hour_1_worker": (1, 0), "trials_per_hour_2_workers": (2, 0),
            "trials_per_hour_2_workers_1_thread_each": (2, 1)}
    for key, (n, threads) in runs.items():
        if key not in result:
            result[key] = workers(n, args.trials, threads)
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    total = parts["total_s"]
    lines = ["| phase | seconds | share |", "|---|---|---|"] + [
        f"| {p} | {parts[f'{p}_s']:.1f} | {100 * parts[f'{p}_s'] / total:.1f}% |" for p in (*PHASES, "overhead")
    ]
    text = (f"{parts['trials']} trials, median {parts['median_trial_s']:.1f} s a trial.\n\n" + "\n".join(lines)
            + f"\n\ntrials per hour: 1 worker {result['trials_per_hour_1_worker']:.0f}, "
              f"2 workers {result['trials_per_hour_2_workers']:.0f} (torch default threads each), "
              f"2 workers with 1 thread each {result['trials_per_hour_2_workers_1_thread_each']:.0f}\n")
    (HERE / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
