"""The default run's front in both runtimes, and what its latency timing cost.

Reads pareto.csv and trials.csv beside this file (copied there by run.sh) and times every
front member's shape against the unpruned base in one process, alternating rounds, in torch
eager and in onnxruntime, on real inputs (a length-stratified sample of validation reviews,
each truncated at the model's context: the project's definition) and on fixed-length ids
(random ids padded to the context: the old rule, labelled). Weights do not change speed, so
the pretrained MiniLM is pruned to each shape (keep-first-k). Writes front_runtimes.md/.csv.

    python experiments/search_triple/front_runtimes.py [--sample 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import bench  # noqa: E402


def main() -> None:
    import pandas as pd

    parser = argparse.ArgumentParser()
    parser.add_argument("--sample", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    front = pd.read_csv(HERE / "pareto.csv")
    members = front[~front["is_base"].astype(bool)]
    base, task, tokenizer = bench.parts()
    rows = {int(r["number"]): {"trial": int(r["number"]), "shape": r["shape"], "val_accuracy": r["val_accuracy"],
                               "test_accuracy": r["test_accuracy"], "speedup_search": r["speedup"]}
            for _, r in members.iterrows()}
    for inputs in ("real", "fixed"):
        for runtime in ("torch", "onnxruntime"):
            timer = bench.timer(base, task, tokenizer, max_length=128, inputs=inputs, runtime=runtime,
                                sample_size=args.sample, rounds=args.rounds)
            try:
                for _, r in members.iterrows():
                    spec = bench.spec_from_row(base, r)
                    m = timer.measure(bench.pruned(base, spec), context=spec.context)
                    key = f"{runtime}_{inputs}"
                    rows[int(r["number"])].update({key: m["speedup"], f"{key}_p10": m["speedup_p10"],
                                                   f"{key}_p90": m["speedup_p90"], f"{key}_ms": m["latency_ms"],
                                                   f"{key}_base_ms": m["base_latency_ms"]})
                    print(f"{inputs:5s} {runtime:11s} {spec.describe():26s} {m['speedup']:.2f}x", flush=True)
            finally:
                timer.close()
    frame = pd.DataFrame(rows.values())
    frame.to_csv(HERE / "front_runtimes.csv", index=False)
    trials = pd.read_csv(HERE / "trials.csv")
    done = trials[(trials["state"] == "COMPLETE") & trials["repeat_of"].isna()] if "repeat_of" in trials else trials
    share = done["seconds_latency"].sum() / done["duration_s"].sum()
    lines = ["| trial | shape | val acc | test acc | search (torch, real) | torch real | onnxruntime real | "
             "torch fixed-length | onnxruntime fixed-length |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        lines.append(f"| {r['trial']} | {r['shape']} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | "
                     f"{r['speedup_search']:.2f}x | {r['torch_real']:.2f}x [{r['torch_real_p10']:.2f}-"
                     f"{r['torch_real_p90']:.2f}] | {r['onnxruntime_real']:.2f}x [{r['onnxruntime_real_p10']:.2f}-"
                     f"{r['onnxruntime_real_p90']:.2f}] | {r['torch_fixed']:.2f}x | {r['onnxruntime_fixed']:.2f}x |")
    text = (f"Front of the default run, each member's speedup vs the unpruned base (per input, paired rounds, "
            f"batch 1, 1 thread; sample {args.sample}, {args.rounds} rounds; p10-p90 of the rounds in brackets). "
            f"Base per input on real inputs: torch {frame['torch_real_base_ms'].median():.1f} ms, onnxruntime "
            f"{frame['onnxruntime_real_base_ms'].median():.1f} ms; fixed-length (128 tokens): torch "
            f"{frame['torch_fixed_base_ms'].median():.1f} ms, onnxruntime {frame['onnxruntime_fixed_base_ms'].median():.1f} ms."
            f"\n\n" + "\n".join(lines)
            + f"\n\nLatency timing in the search itself (sample 8, 3 rounds + FLOPs): "
              f"{done['seconds_latency'].sum():.1f} s of {done['duration_s'].sum():.0f} s of trial time "
              f"({100 * share:.1f}%), median {done['seconds_latency'].median():.2f} s a trial.\n")
    (HERE / "front_runtimes.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
