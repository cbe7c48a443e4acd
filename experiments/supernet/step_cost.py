"""Micro-benchmark: what one sandwich step of the supernet costs on the embedded MiniLM, and that
the elastic (training) forward equals the physically sliced model on real reviews.

    python experiments/supernet/step_cost.py [--steps 4] [--threads 1] [--cache-dir .cache/nas]

Uses the cached fine-tuned base and importance scores (nas.study.prepare.prepare, the `triple` space).
Per step: the sandwich (largest, smallest, 2 random shapes of the space) forward + backward on one
batch of 32 at a context drawn from the space, then the same batch through the full model
alone (forward + backward), so the ratio says what elastic training costs per step compared with
plain fine-tuning of the base. Writes step_cost.json beside this file.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=str(ROOT / ".cache" / "nas"))
    args = ap.parse_args()

    import torch

    from nas.config import compose
    from nas.study.prepare import prepare
    from nas.study.space import SearchSpace
    from nas.quality.supernet import (StepBatches, Supernet, SupernetSettings, sandwich, sandwich_losses, step_rng,
                                      training_contexts)

    torch.set_num_threads(args.threads)
    cfg = compose(["+space=triple", f"cache_dir={args.cache_dir}"])
    prep = prepare(cfg)
    space = SearchSpace.from_cfg(cfg.space).resolve(prep.shape, max_length=int(cfg.max_length))
    settings = SupernetSettings()
    net = Supernet(prep.base, prep.scores)
    batches = StepBatches(lambda c: prep.tokenized("train", c), prep.tokenizer,
                          contexts=training_contexts(space, settings, int(cfg.max_length)),
                          batch_size=settings.batch_size, seed=0)

    # 1. elastic forward == physical slice, on real validation reviews, for 12 sampled shapes
    val = next(iter(prep.loader("validation", 128, batch_size=32, shuffle=False)))
    worst = 0.0
    rng = random.Random(0)
    checked = sandwich(space, prep.shape, prep.scores, n_random=10, rng=rng)
    with torch.no_grad():
        for spec in checked:
            b = {k: v[:, : spec.context] for k, v in val.items() if k != "labels"}
            diff = (net.forward(spec, b) - net.slice(spec)(**b).logits).abs().max().item()
            worst = max(worst, diff)

    # 2. step cost
    rows = []
    prep.base.train()
    for step in range(args.steps):
        rng = step_rng(0, step)
        context, batch = batches(step, rng)
        specs = sandwich(space, prep.shape, prep.scores, n_random=settings.random_subnets, rng=rng)
        specs = [s.__class__(**{**s.to_dict(), "context": prep.shape.max_positions}) for s in specs]
        per_shape = []
        t0 = time.perf_counter()
        for s in specs:  # one shape at a time, to see each one's cost
            t1 = time.perf_counter()
            sandwich_losses(net, [s], batch, SupernetSettings(distill="none"))
            per_shape.append(time.perf_counter() - t1)
        sandwich_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = prep.base(**{k: v for k, v in batch.items() if k != "labels"})
        torch.nn.functional.cross_entropy(out.logits, batch["labels"]).backward()
        full_s = time.perf_counter() - t0
        prep.base.zero_grad(set_to_none=True)
        rows.append({"step": step, "context": context, "tokens": int(batch["input_ids"].shape[1]),
                     "shapes": [s.describe() for s in specs], "per_shape_s": per_shape, "sandwich_s": sandwich_s,
                     "full_model_s": full_s})
        print(rows[-1], flush=True)
    prep.base.eval()
    result = {
        "threads": args.threads, "max_abs_logit_diff_elastic_vs_physical": worst, "shapes_checked": len(checked),
        "median_sandwich_s": statistics.median(r["sandwich_s"] for r in rows),
        "median_full_model_s": statistics.median(r["full_model_s"] for r in rows),
        "median_ratio": statistics.median(r["sandwich_s"] / r["full_model_s"] for r in rows),
        "steps": rows,
    }
    (HERE / "step_cost.json").write_text(json.dumps(result, indent=1))
    print({k: v for k, v in result.items() if k != "steps"})


if __name__ == "__main__":
    main()
