"""Headline benchmark: what the search buys on the embedded default with an extended budget.

Runs `python -m nas.search +space=triple` with 40 trials and a longer per-trial fine-tune,
then, among Pareto members (chosen on validation, reported on the held-out test split):
- the largest measured latency speedup (batch 1, 1 thread, the model's context length)
  whose test accuracy is within 1.0 point of the fine-tuned unpruned base, and within 3.0;
- the smallest parameter count within 1.0 point;
and the same speedups with onnxruntime as the runtime (each model and the base exported to
ONNX and timed side by side). Writes results.json, README.md's table source (results.md)
and pareto.png beside this file.

    python experiments/headline/run.py [--trials 40] [--steps 100] [extra hydra overrides]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--run-dir", default=None)
    args, overrides = parser.parse_known_args()
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="headline_")) / "run"
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "nas.search", "+space=triple", f"search.n_trials={args.trials}",
           f"train.max_steps={args.steps}", "search.population_size=10", f"hydra.run.dir={run_dir}", *overrides]
    print(" ".join(cmd[1:]), flush=True)
    with open(HERE / "search.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"search failed ({proc.returncode}); see {HERE / 'search.log'}")
    search_s = time.perf_counter() - t0
    summarize(run_dir, n_trials=args.trials, steps=args.steps, wall_time_s=search_s)


def summarize(run_dir: Path, *, n_trials: int, steps: int, wall_time_s: float) -> None:
    import pandas as pd

    from nas.export import export_onnx, load_run, onnx_latency, rebuild_trial_model
    from nas.models import load_base_model
    from nas.pipeline import quiet_libraries
    from nas.spec import SubnetSpec

    quiet_libraries()
    front = pd.read_csv(run_dir / "pareto.csv")
    base = front[front["is_base"]].iloc[0]
    members = front[~front["is_base"]].dropna(subset=["test_accuracy"])
    base_test = float(base["test_accuracy"])

    def best_within(points: float, key: str, largest: bool):
        ok = members[members["test_accuracy"] >= base_test - points / 100]
        if ok.empty:
            return None
        return ok.sort_values(key, ascending=not largest).iloc[0]

    at1 = best_within(1.0, "speedup", True)
    at3 = best_within(3.0, "speedup", True)
    small1 = best_within(1.0, "params", False)

    # onnxruntime: the chosen models and the base, exported and timed side by side
    cfg, study = load_run(run_dir)
    max_length = int(cfg.max_length)
    label_names = tuple(study.user_attrs.get("label_names", ()))
    tmp = Path(tempfile.mkdtemp())
    base_model = load_base_model(cfg.model.name_or_path, num_labels=len(label_names) or 2)
    export_onnx(base_model, tmp / "base.onnx", max_seq=max_length)
    vocab = int(base_model.config.vocab_size)
    ort_base = onnx_latency(tmp / "base.onnx", batch_size=1, seq_len=max_length, vocab=vocab, runs=30)

    described: dict[int, dict] = {}

    def describe(row) -> dict | None:
        """Export and time a chosen model once, however many budgets pick it."""
        if row is None:
            return None
        number = int(row["number"])
        if number in described:
            return described[number]
        trial = study.trials[number]
        spec = SubnetSpec.from_dict(trial.user_attrs["spec"])
        model = rebuild_trial_model(cfg, run_dir, number, spec, len(label_names) or 2, label_names or None)
        path = tmp / f"trial_{number}.onnx"
        export_onnx(model, path, max_seq=spec.context)
        ort = onnx_latency(path, batch_size=1, seq_len=min(spec.context, max_length), vocab=vocab, runs=30)
        described[number] = {
            "trial": number, "shape": spec.describe(), "spec": spec.to_dict(),
            "val_accuracy": float(row["val_accuracy"]), "test_accuracy": float(row["test_accuracy"]),
            "speedup_torch": float(row["speedup"]), "latency_ms_torch": float(row["latency_ms"]),
            "speedup_onnxruntime": ort_base / ort, "latency_ms_onnxruntime": ort,
            "params": int(row["params"]), "params_ratio": float(row["params"]) / float(base["params"]),
        }
        return described[number]

    chosen = {"at_1pt": describe(at1), "at_3pt": describe(at3), "smallest_at_1pt": describe(small1)}
    result = {
        "base_test_accuracy": base_test,
        "base_val_accuracy": float(base["val_accuracy"]),
        "base_latency_ms_torch": float(base["latency_ms"]),
        "base_latency_ms_onnxruntime": ort_base,
        "base_params": int(base["params"]),
        "speedup_at_1pt": chosen["at_1pt"]["speedup_torch"] if chosen["at_1pt"] else None,
        "speedup_at_3pt": chosen["at_3pt"]["speedup_torch"] if chosen["at_3pt"] else None,
        "speedup_at_1pt_onnxruntime": chosen["at_1pt"]["speedup_onnxruntime"] if chosen["at_1pt"] else None,
        "speedup_at_3pt_onnxruntime": chosen["at_3pt"]["speedup_onnxruntime"] if chosen["at_3pt"] else None,
        "params_ratio_at_1pt": chosen["smallest_at_1pt"]["params_ratio"] if chosen["smallest_at_1pt"] else None,
        "n_trials": n_trials,
        "steps_per_trial": steps,
        "wall_time_s": wall_time_s,
        "pareto_size": int(len(members)),
        "chosen": chosen,
    }
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.copyfile(run_dir / "pareto.png", HERE / "pareto.png")
    shutil.copyfile(run_dir / "pareto.csv", HERE / "pareto.csv")
    lines = ["| budget | trial | shape | test acc | speedup torch | speedup onnxruntime | params |", "|---|---|---|---|---|---|---|"]
    for name, c in chosen.items():
        if c is None:
            lines.append(f"| {name} | none | | | | | |")
            continue
        lines.append(f"| {name} | {c['trial']} | {c['shape']} | {c['test_accuracy']:.4f} | {c['speedup_torch']:.2f}x | "
                     f"{c['speedup_onnxruntime']:.2f}x | {c['params'] / 1e6:.1f}M ({c['params_ratio']:.2f}) |")
    text = (f"Base test accuracy {base_test:.4f}; {n_trials} trials of {steps} steps; search wall time "
            f"{wall_time_s / 60:.1f} min.\n\n" + "\n".join(lines) + "\n")
    (HERE / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
