"""Headline benchmark: what the search buys on the embedded default with an extended budget.

Runs `python -m nas.search +space=triple` (by default: the main command's own budget, 16 trials
of 60 steps, and its final stage), then, among the final-trained Pareto members (chosen on
validation, reported on the held-out test split; without a final stage, every front member):
- the largest speedup (the search's own figure: real inputs, paired with the base, torch)
  whose test accuracy is within 1.0 point of the fine-tuned unpruned base, and within 3.0;
- the smallest parameter count within 1.0 point;
each chosen model then timed again against the base with a larger sample, in torch and in
onnxruntime, on real inputs (the figures) and on fixed-length ids (labelled, for comparison). Writes results.json, README.md's table source (results.md)
and pareto.png beside this file.

    python experiments/headline/run.py [--trials 16] [--steps 60] [extra hydra overrides]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--summarize-only", action="store_true", help="re-time and report an existing --run-dir")
    args, overrides = parser.parse_known_args()
    if args.summarize_only:
        log = (HERE / "search.log").read_text()
        wall = float(log.rsplit("search wall time ", 1)[1].split()[0]) if "search wall time " in log else float("nan")
        summarize(Path(args.run_dir) / "run", n_trials=args.trials, steps=args.steps, wall_time_s=wall)
        return
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="headline_")) / "run"
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "nas.search", "+space=triple", f"search.n_trials={args.trials}",
           f"train.max_steps={args.steps}", f"hydra.run.dir={run_dir}", *overrides]
    print(" ".join(cmd[1:]), flush=True)
    with open(HERE / "search.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"search failed ({proc.returncode}); see {HERE / 'search.log'}")
    search_s = time.perf_counter() - t0
    with open(HERE / "search.log", "a") as log:
        log.write(f"search wall time {search_s:.0f} s\n")
    summarize(run_dir, n_trials=args.trials, steps=args.steps, wall_time_s=search_s)


def summarize(run_dir: Path, *, n_trials: int, steps: int, wall_time_s: float, sample: int = 32,
              rounds: int = 5) -> None:
    import pandas as pd

    sys.path.insert(0, str(HERE.parent))
    import bench

    from nas.study.runs import load_run, rebuild_trial_model
    from nas.spec import SubnetSpec

    front = pd.read_csv(run_dir / "pareto.csv")
    base = front[front["is_base"]].iloc[0]
    # Models the final stage trained (search.final_k) are judged on their final test accuracy, and
    # only they compete; without a final stage, the front's trial accuracies.
    final = "final_test_accuracy" in front and front["final_test_accuracy"].notna().any()
    acc = "final_test_accuracy" if final else "test_accuracy"
    members = front[~front["is_base"]].dropna(subset=[acc])
    base_test = float(base["test_accuracy"])

    def best_within(points: float, key: str, largest: bool):
        ok = members[members[acc] >= base_test - points / 100]
        if ok.empty:
            return None
        return ok.sort_values(key, ascending=not largest).iloc[0]

    # chosen on the search's own figures (real inputs, paired with the base, torch) ...
    at1 = best_within(1.0, "speedup", True)
    at3 = best_within(3.0, "speedup", True)
    small1 = best_within(1.0, "params", False)

    # ... and each chosen model timed again, in this process, with a larger sample, in both
    # runtimes, on real inputs (the figure) and on fixed-length ids (labelled, for comparison)
    cfg, study = load_run(run_dir)
    max_length = int(cfg.max_length)
    label_names = tuple(study.user_attrs.get("label_names", ()))
    base_model, task, tokenizer = bench.parts()
    timers = {(inputs, runtime): bench.timer(base_model, task, tokenizer, max_length=max_length, inputs=inputs,
                                             runtime=runtime, sample_size=sample, rounds=rounds)
              for inputs in ("real", "fixed") for runtime in ("torch", "onnxruntime")}
    described: dict[int, dict] = {}

    def describe(row) -> dict | None:
        """Time a chosen model once, however many budgets pick it."""
        if row is None:
            return None
        number = int(row["number"])
        if number in described:
            return described[number]
        trial = study.trials[number]
        spec = SubnetSpec.from_dict(trial.user_attrs["spec"])
        model = rebuild_trial_model(cfg, run_dir, number, spec, len(label_names) or 2, label_names or None)
        d = {
            "trial": number, "shape": spec.describe(), "spec": spec.to_dict(),
            "val_accuracy": float(row["final_val_accuracy"] if final else row["val_accuracy"]),
            "test_accuracy": float(row[acc]), "trial_val_accuracy": float(row["val_accuracy"]),
            "trial_test_accuracy": float(row["test_accuracy"]), "final_trained": bool(final),
            "speedup_search": float(row["speedup"]),
            "params": int(row["params"]), "params_ratio": float(row["params"]) / float(base["params"]),
        }
        for (inputs, runtime), timer in timers.items():
            m = timer.measure(model, context=spec.context)
            suffix = f"_{runtime}" if inputs == "real" else f"_{runtime}_fixed"
            d.update({f"speedup{suffix}": m["speedup"], f"speedup_p10{suffix}": m["speedup_p10"],
                      f"speedup_p90{suffix}": m["speedup_p90"], f"latency_ms{suffix}": m["latency_ms"],
                      f"base_latency_ms{suffix}": m["base_latency_ms"]})
            if inputs == "real":
                d["mean_tokens"] = m["mean_tokens"]
        described[number] = d
        print(f"trial {number} {spec.describe()}: torch {d['speedup_torch']:.2f}x, onnxruntime "
              f"{d['speedup_onnxruntime']:.2f}x (fixed-length: {d['speedup_torch_fixed']:.2f}x / "
              f"{d['speedup_onnxruntime_fixed']:.2f}x)", flush=True)
        return d

    chosen = {"at_1pt": describe(at1), "at_3pt": describe(at3), "smallest_at_1pt": describe(small1)}
    real_torch = timers[("real", "torch")]

    def pick(key: str, field: str):
        return chosen[key][field] if chosen[key] else None

    result = {
        "latency_inputs": "real",
        "latency_runtime": "torch and onnxruntime (speedup_at_* is torch; *_onnxruntime beside it)",
        "latency_sample_size": sample,
        "latency_rounds": rounds,
        "latency_batch_size": 1,
        "latency_threads": 1,
        "mean_tokens": real_torch.sample.mean_tokens(real_torch.base_cap),
        "base_test_accuracy": base_test,
        "base_val_accuracy": float(base["val_accuracy"]),
        "base_latency_ms_torch": statistics.median(timers[("real", "torch")].base_rounds or [float("nan")]),
        "base_latency_ms_onnxruntime": statistics.median(timers[("real", "onnxruntime")].base_rounds or [float("nan")]),
        "base_params": int(base["params"]),
        "speedup_at_1pt": pick("at_1pt", "speedup_torch"),
        "speedup_at_3pt": pick("at_3pt", "speedup_torch"),
        "speedup_at_1pt_onnxruntime": pick("at_1pt", "speedup_onnxruntime"),
        "speedup_at_3pt_onnxruntime": pick("at_3pt", "speedup_onnxruntime"),
        "speedup_at_1pt_fixed_length": pick("at_1pt", "speedup_torch_fixed"),
        "speedup_at_3pt_fixed_length": pick("at_3pt", "speedup_torch_fixed"),
        "params_ratio_at_1pt": pick("smallest_at_1pt", "params_ratio"),
        "accuracy": "final-trained (search.final_k)" if final else "trial",
        "final_trained": int(len(members)) if final else 0,
        "n_trials": n_trials,
        "steps_per_trial": steps,
        "wall_time_s": wall_time_s,
        "pareto_size": int(len(members)),
        "chosen": chosen,
    }
    for timer in timers.values():
        timer.close()
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.copyfile(run_dir / "pareto.png", HERE / "pareto.png")
    shutil.copyfile(run_dir / "pareto.csv", HERE / "pareto.csv")
    lines = ["| budget | trial | shape | test acc | real: torch | real: onnxruntime | fixed-length: torch | "
             "fixed-length: onnxruntime | params |", "|---|---|---|---|---|---|---|---|---|"]
    for name, c in chosen.items():
        if c is None:
            lines.append(f"| {name} | none | | | | | | | |")
            continue
        lines.append(f"| {name} | {c['trial']} | {c['shape']} | {c['test_accuracy']:.4f} | "
                     f"{c['speedup_torch']:.2f}x [{c['speedup_p10_torch']:.2f}-{c['speedup_p90_torch']:.2f}] | "
                     f"{c['speedup_onnxruntime']:.2f}x | {c['speedup_torch_fixed']:.2f}x | "
                     f"{c['speedup_onnxruntime_fixed']:.2f}x | {c['params'] / 1e6:.1f}M ({c['params_ratio']:.2f}) |")
    text = (f"Base test accuracy {base_test:.4f}; {n_trials} trials of {steps} steps; search wall time "
            f"{wall_time_s / 60:.1f} min. Speedups: per input vs the unpruned base timed beside it in alternating "
            f"rounds (batch 1, 1 thread); real = a length-stratified sample of {sample} validation reviews "
            f"(mean {result['mean_tokens']:.1f} tokens for the base), each truncated at the model's context, "
            f"{rounds} rounds, p10-p90 of the rounds in brackets; fixed-length = random ids padded to the context "
            f"(the old rule, for comparison). Base per input on real inputs: torch "
            f"{result['base_latency_ms_torch']:.1f} ms, onnxruntime {result['base_latency_ms_onnxruntime']:.1f} ms.\n\n"
            + "\n".join(lines) + "\n")
    (HERE / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
