"""Benchmark: are speedups reproducible across runs, with a busy neighbour or without?

The same four shapes are timed in three separate processes, one after another:
  quiet-1, quiet-2: nothing else runs;
  busy: two CPU-bound processes (a pure-Python busy loop each, so both cores are taken) run
        from the start, through the base's timing, and are stopped half-way through the
        shapes: a load that changes during the run, as on a shared machine.
In each process every shape is measured by both rules, one right after the other:
  old rule (before real inputs): random ids padded to the model's context, batch 1, the base
           timed once at the start of the process, each model timed on its own;
  new rule (nas.cost.latency, the project's defaults): a length-stratified sample of 8 validation
           reviews, batch 1, each model timed in 3 rounds with the base, alternating on every input.
Pass: for every shape, the three runs' speedups lie within 10% of each other (max / min <= 1.10).
Writes results.json and results.md beside this file.

    python experiments/latency_stability/run.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import bench  # noqa: E402

SHAPES = {  # the table: (layers, heads, ffn, hidden, context)
    "L6 H12 F1536 D320 C64": (6, 12, 1536, 320, 64),
    "L6 H12 F1536 D384 C64": (6, 12, 1536, 384, 64),
    "L4 H6 F512 D320 C64": (4, 6, 512, 320, 64),
    "L6 H12 F640 D320 C128": (6, 12, 640, 320, 128),
}
MAX_LENGTH = 128
HOG = "import time\nend = time.time() + 900\nwhile time.time() < end:\n    pass\n"


def child(label: str, busy: bool) -> dict:
    base, task, tokenizer = bench.parts()
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(2)] if busy else []
    try:
        timer = bench.timer(base, task, tokenizer, max_length=MAX_LENGTH)  # the project's defaults
        base_old = bench.old_rule_ms(base, seq_len=MAX_LENGTH)
        rows = {}
        for i, (name, (layers, heads, ffn, hidden, context)) in enumerate(SHAPES.items()):
            if busy and i == len(SHAPES) // 2:
                for h in hogs:
                    h.kill()
            spec = bench.uniform_spec(base, layers=layers, heads=heads, ffn=ffn, hidden=hidden, context=context)
            model = bench.pruned(base, spec)
            old_ms = bench.old_rule_ms(model, seq_len=min(context, MAX_LENGTH))
            new = timer.measure(model, context=context)
            rows[name] = {"old_speedup": base_old / old_ms, "old_ms": old_ms, "new_speedup": new["speedup"],
                          "new_p10": new["speedup_p10"], "new_p90": new["speedup_p90"], "new_ms": new["latency_ms"],
                          "new_base_ms": new["base_latency_ms"], "busy_while_timed": busy and i < len(SHAPES) // 2}
            print(f"{label:8s} {name:24s} old {rows[name]['old_speedup']:.2f}x  new {new['speedup']:.2f}x "
                  f"[{new['speedup_p10']:.2f}-{new['speedup_p90']:.2f}] (base {new['base_latency_ms']:.1f} ms)",
                  flush=True)
        return {"label": label, "busy": busy, "old_base_ms": base_old, "mean_tokens": timer.sample.mean_tokens(64),
                "latency": timer.record(), "shapes": rows}
    finally:
        for h in hogs:
            h.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", default=None)
    parser.add_argument("--busy", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.child:
        Path(args.out).write_text(json.dumps(child(args.child, args.busy)))
        return
    t0 = time.perf_counter()
    runs = []
    for label, busy in (("quiet-1", False), ("quiet-2", False), ("busy", True)):
        out = HERE / f".{label}.json"
        cmd = [sys.executable, __file__, "--child", label, "--out", str(out)] + (["--busy"] if busy else [])
        subprocess.run(cmd, check=True)
        runs.append(json.loads(out.read_text()))
        out.unlink()
    result = {"runs": runs, "wall_time_s": time.perf_counter() - t0, "shapes": {}}
    lines = ["| shape | rule | quiet-1 | quiet-2 | busy | max / min | within 10% |", "|---|---|---|---|---|---|---|"]
    for name in SHAPES:
        for rule in ("old", "new"):
            values = [r["shapes"][name][f"{rule}_speedup"] for r in runs]
            spread = max(values) / min(values)
            result["shapes"].setdefault(name, {})[rule] = {"speedups": values, "max_over_min": spread,
                                                           "within_10pct": spread <= 1.10}
            lines.append(f"| {name} | {rule} | " + " | ".join(f"{v:.2f}x" for v in values)
                         + f" | {spread:.2f} | {'yes' if spread <= 1.10 else 'NO'} |")
    text = ("Speedups of the same shapes in three separate processes (batch 1, 1 thread, torch eager). old: random "
            "ids padded to the context, base timed once per process; new: the project's default (8 real "
            "validation reviews, stratified by length, 3 rounds with the base alternating on every input). busy: two "
            "CPU-bound processes ran from the start and were stopped before the third shape.\n\n"
            + "\n".join(lines)
            + f"\n\nold rule's base (once per process, 128 tokens): "
            + ", ".join(f"{r['label']} {r['old_base_ms']:.1f} ms" for r in runs)
            + f"\n\nwall time {result['wall_time_s']:.0f} s\n")
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (HERE / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
