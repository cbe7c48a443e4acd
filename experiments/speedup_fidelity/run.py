"""Benchmark: does pruning turn FLOPs into time on a CPU?

For a grid of shapes along each axis alone and jointly, measures the median latency of the
pruned MiniLM in torch eager and in onnxruntime (1 thread, after warm-up) at batch 1 and
batch 32, next to the FLOPs reduction, all side by side in one process. Writes results.csv,
results.md and speedup.png beside this file. Weights do not matter for latency, so the base
is the pretrained model with a fresh head.

    python experiments/speedup_fidelity/run.py [--runs 20] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEQ = 128


def grid(quick: bool) -> list[tuple[str, dict]]:
    shapes = [("base", {})]
    axes = {
        "depth": [4, 2, 1],
        "heads": [8, 4, 2],
        "ffn": [768, 384, 128],
        "hidden": [320, 256, 128],
        "context": [64, 32],
    }
    if quick:
        axes = {k: v[:1] for k, v in axes.items()}
    for axis, values in axes.items():
        shapes += [(axis, {axis: v}) for v in values]
    shapes += [
        ("joint", {"depth": 4, "heads": 8, "ffn": 768, "hidden": 320}),
        ("joint", {"depth": 4, "heads": 6, "ffn": 512, "hidden": 320, "context": 64}),
        ("joint", {"depth": 2, "heads": 4, "ffn": 384, "hidden": 256, "context": 32}),
    ]
    return shapes


def main() -> None:
    import pandas as pd
    import torch

    from nas.export import export_onnx, onnx_latency
    from nas.latency import count_flops, measure_latency
    from nas.models import load_base_model
    from nas.pipeline import quiet_libraries
    from nas.prune import count_parameters, prune_model
    from nas.spec import BaseShape, SubnetSpec

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--big-batch", type=int, default=32)
    args = parser.parse_args()
    quiet_libraries()
    torch.manual_seed(0)
    base = load_base_model(None, num_labels=2)
    shape = BaseShape.from_config(base.config)
    rows = []
    tmp = Path(tempfile.mkdtemp())
    t_start = time.perf_counter()
    for axis, change in grid(args.quick):
        n = change.get("depth", shape.num_layers)
        spec = SubnetSpec.uniform(
            layers=tuple(range(n)), heads=change.get("heads", shape.num_heads), ffn=change.get("ffn", shape.ffn_size),
            hidden=change.get("hidden", shape.hidden_size), context=change.get("context", SEQ),
        )
        model = prune_model(base, spec)
        seq = min(spec.context, SEQ)
        onnx_path = tmp / f"m{len(rows)}.onnx"
        export_onnx(model, onnx_path, max_seq=seq)
        row = {"axis": axis, "shape": spec.describe(), "params_m": count_parameters(model) / 1e6, "seq": seq}
        for batch in (1, args.big_batch):
            row[f"flops_b{batch}"] = count_flops(model, batch_size=batch, seq_len=seq)
            row[f"torch_ms_b{batch}"] = measure_latency(model, batch_size=batch, seq_len=seq, threads=1, warmup=3,
                                                        runs=args.runs)["latency_ms"]
            row[f"ort_ms_b{batch}"] = onnx_latency(onnx_path, batch_size=batch, seq_len=seq,
                                                   vocab=int(model.config.vocab_size), threads=1, warmup=3, runs=args.runs)
        rows.append(row)
        print(f"{axis:8s} {spec.describe():24s} " + " ".join(
            f"b{b}: torch {row[f'torch_ms_b{b}']:.2f} ms ort {row[f'ort_ms_b{b}']:.2f} ms" for b in (1, args.big_batch)),
            flush=True)
    frame = pd.DataFrame(rows)
    base_row = frame.iloc[0]
    for b in (1, args.big_batch):
        frame[f"ideal_b{b}"] = base_row[f"flops_b{b}"] / frame[f"flops_b{b}"]
        for rt in ("torch", "ort"):
            frame[f"{rt}_speedup_b{b}"] = base_row[f"{rt}_ms_b{b}"] / frame[f"{rt}_ms_b{b}"]
            frame[f"{rt}_fidelity_b{b}"] = frame[f"{rt}_speedup_b{b}"] / frame[f"ideal_b{b}"]
    frame.to_csv(HERE / "results.csv", index=False)
    B = args.big_batch
    lines = [
        f"| axis | shape | params M | FLOPs cut b1 | torch b1 | ort b1 | FLOPs cut b{B} | torch b{B} | ort b{B} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in frame.iterrows():
        lines.append(
            f"| {r['axis']} | {r['shape']} | {r['params_m']:.1f} | {r['ideal_b1']:.2f}x | {r['torch_speedup_b1']:.2f}x "
            f"({r['torch_fidelity_b1']:.2f}) | {r['ort_speedup_b1']:.2f}x ({r['ort_fidelity_b1']:.2f}) | "
            f"{r[f'ideal_b{B}']:.2f}x | {r[f'torch_speedup_b{B}']:.2f}x ({r[f'torch_fidelity_b{B}']:.2f}) | "
            f"{r[f'ort_speedup_b{B}']:.2f}x ({r[f'ort_fidelity_b{B}']:.2f}) |"
        )
    text = (f"Base at batch 1 x seq {SEQ}: torch {base_row['torch_ms_b1']:.2f} ms, onnxruntime {base_row['ort_ms_b1']:.2f} ms; "
            f"batch {B}: torch {base_row[f'torch_ms_b{B}']:.1f} ms, onnxruntime {base_row[f'ort_ms_b{B}']:.1f} ms "
            f"(medians of {args.runs} runs, 1 thread). Measured speedup, (measured / FLOPs-ideal) in brackets.\n\n"
            + "\n".join(lines) + f"\n\nwall time {time.perf_counter() - t_start:.0f} s\n")
    (HERE / "results.md").write_text(text)
    print(text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110, sharey=True)
    for ax, b in zip(axes, (1, B)):
        for rt, marker in (("torch", "o"), ("ort", "s")):
            for axis, part in frame.iloc[1:].groupby("axis"):
                ax.scatter(part[f"ideal_b{b}"], part[f"{rt}_speedup_b{b}"], marker=marker, label=f"{rt} {axis}")
        top = float(frame[[f"ideal_b{b}", f"torch_speedup_b{b}", f"ort_speedup_b{b}"]].max().max()) * 1.1
        ax.plot([1, top], [1, top], "k--", lw=1, label="ideal (= FLOPs cut)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"batch {b}")
        ax.set_xlabel("FLOPs reduction (x)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("measured speedup (x)")
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(HERE / "speedup.png")


if __name__ == "__main__":
    main()
