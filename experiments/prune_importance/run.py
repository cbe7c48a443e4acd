"""Benchmark: importance-scored pruning vs the naive keep-first-k baseline, no re-training.

Fine-tunes the base once (cached), prunes it to a fixed shape (default 4 layers, 8 heads,
FFN 768, hidden 320) with each criterion, and prints validation accuracy before any further
fine-tuning, per axis alone and all axes together. Results go to results.json / results.md
beside this file.

    python experiments/prune_importance/run.py [hydra overrides, e.g. base.max_steps=300]
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> None:
    import torch

    from nas.config import compose
    from nas.cut.importance import naive_scores
    from nas.study.prepare import prepare
    from nas.cut.prune import count_parameters, prune_model
    from nas.spec import SubnetSpec
    from nas.quality.metrics import accuracy

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    cfg = compose(argv)
    t0 = time.perf_counter()
    prep = prepare(cfg)
    shape = prep.shape
    n_layers, heads, ffn, hidden = 4, 8, 768, 320
    context = min(shape.max_positions, int(cfg.max_length))
    val = prep.loader("validation", context, batch_size=128, shuffle=False)
    base_acc = accuracy(prep.base, val)
    criteria = {"importance": prep.scores, "naive": naive_scores(shape)}
    full = SubnetSpec.full(shape)

    def spec_for(axis: str, scores) -> SubnetSpec:
        layers = scores.top_layers(n_layers) if axis in ("depth", "all") else full.layers
        n = len(layers)
        return SubnetSpec(
            layers=layers,
            heads=(heads if axis in ("heads", "all") else shape.num_heads,) * n,
            ffn=(ffn if axis in ("ffn", "all") else shape.ffn_size,) * n,
            hidden=hidden if axis in ("hidden", "all") else shape.hidden_size,
            context=shape.max_positions,
        )

    rows = []
    for axis in ("depth", "heads", "ffn", "hidden", "all"):
        row = {"axis": axis}
        for name, scores in criteria.items():
            spec = spec_for(axis, scores)
            model = prune_model(prep.base, spec, scores)
            row[f"{name}_spec"] = spec.describe() + f" layers={list(spec.layers)}"
            row[f"{name}_val_acc"] = round(accuracy(model, val), 4)
            row["params_m"] = round(count_parameters(model) / 1e6, 2)
        row["delta"] = round(row["importance_val_acc"] - row["naive_val_acc"], 4)
        rows.append(row)
        print(f"{axis:7s} importance {row['importance_val_acc']:.4f}  naive {row['naive_val_acc']:.4f}  "
              f"delta {row['delta']:+.4f}  ({row['importance_spec']} | naive {row['naive_spec']})", flush=True)

    result = {
        "base_validation_accuracy": round(base_acc, 4),
        "base_test_accuracy": round(prep.base_info["test_accuracy"], 4),
        "base_params_m": round(count_parameters(prep.base) / 1e6, 2),
        "base_finetune_steps": int(cfg.base.max_steps),
        "validation_size": len(prep.task.validation),
        "target_shape": {"layers": n_layers, "heads": heads, "ffn": ffn, "hidden": hidden},
        "rows": rows,
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "overrides": argv,
    }
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "| axis pruned | importance val acc | naive val acc | delta | params (M) |",
        "|---|---|---|---|---|",
    ] + [
        f"| {r['axis']} | {r['importance_val_acc']:.4f} | {r['naive_val_acc']:.4f} | {r['delta']:+.4f} | {r['params_m']} |"
        for r in rows
    ]
    (HERE / "results.md").write_text(
        f"Unpruned fine-tuned base: validation accuracy {base_acc:.4f} "
        f"({result['base_params_m']} M params, {result['validation_size']} validation reviews).\n\n"
        + "\n".join(lines) + "\n"
    )
    print(f"base validation accuracy {base_acc:.4f}; wrote {HERE / 'results.json'}")


if __name__ == "__main__":
    main(sys.argv[1:])
