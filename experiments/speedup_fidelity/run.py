"""Benchmark: does pruning turn FLOPs into time on a CPU, on the inputs a user serves?

For a grid of shapes along each axis alone and jointly, the pruned MiniLM is timed against
the unpruned one with nas.cost.latency's paired rounds (batch 1, 1 thread), in torch eager and in
onnxruntime, on two kinds of input:
  real : a length-stratified sample of the task's validation texts, each truncated at the
         model's context (what a user serving one text at a time sees);
  fixed: random ids padded to the full context (the rule papers use; the project's old rule).
Next to each speedup, the FLOPs cut on the same inputs (FLOPs per input, exact) and the
fidelity = measured speedup / FLOPs cut.

Two tasks:
  short: Rotten Tomatoes reviews (mean 26 tokens), max_length 128;
  long : IMDB reviews (mean ~315 tokens, 44% longer than 256), max_length 512: here the
         context axis should pay.
Writes results.csv, results.md and speedup.png beside this file.

    python experiments/speedup_fidelity/run.py [--sample 32] [--rounds 3] [--long-sample 12] [--long-rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import bench  # noqa: E402

TASKS = {
    "short": {"data": {"kind": "rotten_tomatoes"}, "max_length": 128},
    "long": {"data": {"kind": "imdb"}, "max_length": 512},
}


def grid(task: str, quick: bool) -> list[tuple[str, dict]]:
    if task == "long":
        axes = {"context": [256, 128, 64], "hidden": [256], "depth": [3]}
        joint = [{"depth": 4, "heads": 8, "ffn": 768, "hidden": 320, "context": 256}]
    else:
        axes = {"depth": [4, 2, 1], "heads": [8, 4, 2], "ffn": [768, 384, 128], "hidden": [320, 256, 128],
                "context": [64, 32]}
        joint = [{"depth": 4, "heads": 8, "ffn": 768, "hidden": 320},
                 {"depth": 4, "heads": 6, "ffn": 512, "hidden": 320, "context": 64},
                 {"depth": 2, "heads": 4, "ffn": 384, "hidden": 256, "context": 32}]
    if quick:
        axes = {k: v[:1] for k, v in axes.items()}
        joint = joint[:1]
    return [(axis, {axis: v}) for axis, values in axes.items() for v in values] + [("joint", j) for j in joint]


def sample_size(task: str, args) -> int:
    return args.long_sample if task == "long" else args.sample


def rounds(task: str, args) -> int:
    return args.long_rounds if task == "long" else args.rounds


def run_task(name: str, args) -> list[dict]:
    task_cfg = TASKS[name]
    base, task, tokenizer = bench.parts(task_cfg["data"])
    max_length = task_cfg["max_length"]
    rows = []
    shapes = [(axis, bench.uniform_spec(base, layers=c.get("depth"), heads=c.get("heads"), ffn=c.get("ffn"),
                                        hidden=c.get("hidden"), context=c.get("context")))
              for axis, c in grid(name, args.quick)]
    models = {spec.describe(): bench.pruned(base, spec) for _, spec in shapes}
    for inputs in ("real", "fixed"):
        for runtime in ("torch", "onnxruntime"):
            timer = bench.timer(base, task, tokenizer, max_length=max_length, inputs=inputs, runtime=runtime,
                                sample_size=sample_size(name, args), rounds=rounds(name, args))
            try:
                base_flops = timer.flops(base)
                for axis, spec in shapes:
                    model = models[spec.describe()]
                    m = timer.measure(model, context=spec.context)
                    ideal = base_flops / timer.flops(model, context=spec.context)
                    rows.append({
                        "task": name, "inputs": inputs, "runtime": runtime, "axis": axis, "shape": spec.describe(),
                        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                        "mean_tokens": m["mean_tokens"], "base_mean_tokens": timer.sample.mean_tokens(timer.base_cap),
                        "flops_cut": ideal, "speedup": m["speedup"], "speedup_p10": m["speedup_p10"],
                        "speedup_p90": m["speedup_p90"], "fidelity": m["speedup"] / ideal,
                        "latency_ms": m["latency_ms"], "base_latency_ms": m["base_latency_ms"],
                    })
                    r = rows[-1]
                    print(f"{name:5s} {inputs:5s} {runtime:11s} {axis:7s} {r['shape']:24s} FLOPs cut "
                          f"{ideal:6.2f}x speedup {r['speedup']:6.2f}x [{r['speedup_p10']:.2f}-{r['speedup_p90']:.2f}] "
                          f"fidelity {r['fidelity']:.2f} (base {r['base_latency_ms']:.1f} ms, "
                          f"{r['mean_tokens']:.0f} tokens)", flush=True)
            finally:
                timer.close()
    return rows


def table(frame, task: str) -> str:
    part = frame[frame["task"] == task]
    lines = ["| axis | shape | tokens real | real: FLOPs cut | real: torch | real: onnxruntime | fixed: FLOPs cut | "
             "fixed: torch | fixed: onnxruntime |", "|---|---|---|---|---|---|---|---|---|"]
    for shape, g in part.groupby("shape", sort=False):
        cell = {(r["inputs"], r["runtime"]): r for _, r in g.iterrows()}
        real, fixed = cell[("real", "torch")], cell[("fixed", "torch")]

        def fmt(r):
            return f"{r['speedup']:.2f}x ({r['fidelity']:.2f})"

        lines.append(f"| {real['axis']} | {shape} | {real['mean_tokens']:.0f} | {real['flops_cut']:.2f}x | {fmt(real)} | "
                     f"{fmt(cell[('real', 'onnxruntime')])} | {fixed['flops_cut']:.2f}x | {fmt(fixed)} | "
                     f"{fmt(cell[('fixed', 'onnxruntime')])} |")
    return "\n".join(lines)


def plot(frame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110, sharey=True)
    for ax, task in zip(axes, ("short", "long")):
        part = frame[frame["task"] == task]
        for (inputs, runtime), g in part.groupby(["inputs", "runtime"]):
            ax.scatter(g["flops_cut"], g["speedup"], marker="o" if inputs == "real" else "x",
                       label=f"{inputs} inputs, {runtime}")
        top = float(part[["flops_cut", "speedup"]].max().max()) * 1.1
        ax.plot([1, top], [1, top], "k--", lw=1, label="speedup = FLOPs cut")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{task} inputs ({'Rotten Tomatoes, max 128' if task == 'short' else 'IMDB, max 512'})")
        ax.set_xlabel("FLOPs cut on the same inputs (x)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("measured speedup, paired with the base (x)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "speedup.png")


def main() -> None:
    import pandas as pd

    parser = argparse.ArgumentParser()
    parser.add_argument("--sample", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--long-sample", type=int, default=12)
    parser.add_argument("--long-rounds", type=int, default=3)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = [row for task in args.tasks for row in run_task(task, args)]
    frame = pd.DataFrame(rows)
    frame.to_csv(HERE / "results.csv", index=False)
    sections = []
    for task in args.tasks:
        part = frame[(frame["task"] == task)]
        b = part.iloc[0]
        sections.append(
            f"## {task} inputs: {'Rotten Tomatoes, max_length 128' if task == 'short' else 'IMDB, max_length 512'}\n\n"
            f"Base per input: real ({b['base_mean_tokens']:.0f} tokens on average) torch "
            f"{part[(part.inputs == 'real') & (part.runtime == 'torch')]['base_latency_ms'].median():.1f} ms, "
            f"onnxruntime {part[(part.inputs == 'real') & (part.runtime == 'onnxruntime')]['base_latency_ms'].median():.1f} ms; "
            f"fixed ({TASKS[task]['max_length']} tokens) torch "
            f"{part[(part.inputs == 'fixed') & (part.runtime == 'torch')]['base_latency_ms'].median():.1f} ms, "
            f"onnxruntime {part[(part.inputs == 'fixed') & (part.runtime == 'onnxruntime')]['base_latency_ms'].median():.1f} ms "
            f"(medians of the base's paired rounds; sample {sample_size(task, args)}, {rounds(task, args)} rounds).\n\n"
            + table(frame, task))
    text = ("Speedup vs the unpruned MiniLM, paired rounds (batch 1, 1 thread), (speedup / FLOPs cut on the same "
            "inputs) in brackets.\n\n" + "\n\n".join(sections)
            + f"\n\nwall time {time.perf_counter() - t0:.0f} s\n")
    (HERE / "results.md").write_text(text)
    print(text)
    plot(frame)


if __name__ == "__main__":
    main()
