"""The headline from the main command itself, over seeds (issue 31): `python -m nas.search +space=triple` run once
per search.seed (the sampler's: which shapes the trials draw), on one fine-tuned base and one latency table (both
cached after the first run), then its final stage's members re-measured as deployed by deployed.py.

    python experiments/headline/seeds.py [--seeds 0 1 2] [--root DIR] [extra hydra overrides]   # ~15-20 min a seed

Per seed, results.json holds: the winner (the run's own final_winner), its test accuracy in onnxruntime int8 as
served (one review at a time) against the fp32 base with a paired bootstrap 90% interval of the change, its speedups
over (a) the base in torch fp32, (b) in onnxruntime fp32, (c) quantized alike (int8, paired rounds on real reviews,
batch 1, 1 thread), and the run's wall time. `speedup_at_1pt_over_quantized_base` / `_3pt_` are the worst seed's:
for each seed, the largest speedup over (c) of a final member within 1.0 (3.0) test points of the fp32 base, as
served; the figure is the smallest of the seeds' (null when a seed has none); `machine`: the CPU and its features
(AVX2, AVX-512, VNNI, bf16, AMX: nas.util.cpu_features), as each run recorded them; `ships_with_exits`: the winner
is a member's early-exit variant, and its figures here are the member's without exits (experiments/early_exit/run.py
re-measures exits as served). A run folder that already holds best.yaml is not run again (only re-measured). Results
go to results.json / results.md here, or under --out. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def run_seed(seed: int, root: Path, overrides: list[str]) -> dict:
    run_dir = root / f"seed{seed}"
    wall = None
    if not (run_dir / "best.yaml").is_file():
        cmd = [sys.executable, "-m", "nas.search", "+space=triple", f"search.seed={seed}", f"hydra.run.dir={run_dir}",
               *overrides]
        print(" ".join(cmd[1:]), flush=True)
        t0 = time.perf_counter()
        with open(root / f"seed{seed}.log", "w") as log:
            subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
        wall = time.perf_counter() - t0
        (run_dir / "wall_time_s").write_text(f"{wall:.1f}\n")
    elif (run_dir / "wall_time_s").is_file():
        wall = float((run_dir / "wall_time_s").read_text())
    subprocess.run([sys.executable, str(HERE / "deployed.py"), str(run_dir), "--final-only", "--out", str(run_dir)],
                   cwd=ROOT, check=True)
    deployed = json.loads((run_dir / "results_deployed.json").read_text())
    sys.path.insert(0, str(ROOT))
    from nas.study.runs import load_run

    _, study = load_run(run_dir)
    winner = study.user_attrs.get("final_winner")
    # a winner that ships with its early exits: deployed.py re-measures members without them (the figures below are
    # the member's static graph); experiments/early_exit/run.py re-measures the exits as served
    with_exits = bool(study.user_attrs.get("final_winner_exits"))
    row = next((r for r in deployed["rows"] if r["model"] == f"trial_{winner}"), None)
    return {
        "seed": seed, "run_dir": str(run_dir), "wall_time_s": wall,
        "winner": None if row is None else {
            "trial": winner, "shape": row["shape"], "ships_with_exits": with_exits,
            "test_accuracy_int8_as_served": row["test_accuracy_deployed"],
            "test_change_points": row["diff_points"], "test_change_points_90ci": row["diff_points_90ci"],
            "speedup_over_torch_fp32_base": row["speedup_over_torch_fp32_base"],
            "speedup_over_runtime_fp32_base": row["speedup_over_runtime_fp32_base"],
            "speedup_over_quantized_base": row["speedup_over_quantized_base"]},
        "base_test_accuracy_fp32": deployed["base_test_accuracy_fp32"],
        **{k: deployed[k] for k in deployed if k.startswith(("speedup_at_", "chosen_at_"))},
        "latency_definition": deployed["latency_definition"],
        "machine": study.user_attrs.get("machine"),  # the CPU and its features the run printed first
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--root", default=str(ROOT / "outputs" / "headline_seeds"))
    ap.add_argument("--out", default=str(HERE), help="folder for results.json / results.md")
    args, overrides = ap.parse_known_args()
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    seeds = [run_seed(s, root, overrides) for s in args.seeds]
    sys.path.insert(0, str(ROOT))
    from nas.util import cpu_features, describe_cpu

    machine = next((s["machine"] for s in seeds if s.get("machine")), None) or cpu_features()
    summary: dict = {"command": "python -m nas.search +space=triple search.seed=S " + " ".join(overrides),
                     "date": time.strftime("%Y-%m-%d"), "machine": machine, "seeds": seeds,
                     "baselines": {"a": "the unpruned base in torch fp32", "b": "the base in onnxruntime fp32",
                                   "c": "the base in onnxruntime int8, quantized the same way (quantization alone)"}}
    for pts in (1, 3):
        for over in ("quantized_base", "runtime_fp32_base", "torch_fp32_base"):
            key = f"speedup_at_{pts}pt_over_{over}"
            values = [s[key] for s in seeds]
            summary[key] = None if any(v is None for v in values) else min(values)  # the worst seed's
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"Machine: {describe_cpu(machine)}; training precision {machine.get('training_precision', 'n/a')}.", "",
             "| seed | winner | int8 test as served (change, 90% CI) | over (c) | over (b) | over (a) | wall |",
             "|---|---|---|---|---|---|---|"]
    for s in seeds:
        w = s["winner"] or {}
        lo, hi = w.get("test_change_points_90ci", (float("nan"), float("nan")))
        shape = f"{w.get('shape')} (ships with exits; this row: without them)" if w.get("ships_with_exits") \
            else w.get("shape")
        lines.append(f"| {s['seed']} | {shape} | {w.get('test_accuracy_int8_as_served', float('nan')):.4f} "
                     f"({w.get('test_change_points', float('nan')):+.2f}, {lo:+.2f}..{hi:+.2f}) | "
                     f"{w.get('speedup_over_quantized_base', float('nan')):.2f}x | "
                     f"{w.get('speedup_over_runtime_fp32_base', float('nan')):.2f}x | "
                     f"{w.get('speedup_over_torch_fp32_base', float('nan')):.2f}x | "
                     + (f"{s['wall_time_s'] / 60:.1f} min |" if s["wall_time_s"] else "n/a |"))
    for pts in (1, 3):
        v = summary[f"speedup_at_{pts}pt_over_quantized_base"]
        lines.append(f"\nWorst seed within {pts}.0 test point of the fp32 base: "
                     + (f"{v:.2f}x over (c)" if v is not None else "a seed has no final member within it"))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
