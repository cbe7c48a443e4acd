"""Benchmark: the base's validation and test accuracy against fine-tuning steps.

Fine-tunes the embedded MiniLM on the default task (Rotten Tomatoes, split by movie) once per
recipe length (`--epochs`, each a full linearly-decaying schedule, like base.max_epochs), with
validation and test accuracy every `--every` steps and no early stopping. Test accuracy is only
recorded here; nothing is chosen on it. Writes curve.csv, results.json, results.md and curve.png
beside this file.

    python experiments/base_convergence/run.py --epochs 1 2 4 --every 80
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import bench  # noqa: E402  (puts the repository on sys.path)


def main(argv: list[str]) -> None:
    import pandas as pd
    import torch

    from nas.data.tasks import load_task, make_loader, sorted_by_length, tokenize
    from nas.models.loading import load_base_model, load_tokenizer
    from nas.util import quiet_libraries
    from nas.quality.finetune import Monitor, TrainSettings, finetune

    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, nargs="+", default=[1, 2, 4])
    ap.add_argument("--every", type=int, default=80)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_libraries()
    task = load_task({"kind": "rotten_tomatoes"})
    tok = load_tokenizer(None)
    train = tokenize(task.train, tok, max_length=args.max_length)
    evals = {s: make_loader(sorted_by_length(tokenize(getattr(task, s), tok, max_length=args.max_length)), tok,
                            batch_size=128, shuffle=False) for s in ("validation", "test")}
    rows, runs = [], []
    for epochs in args.epochs:
        model = load_base_model(None, num_labels=task.num_labels, label_names=task.label_names, seed=0)
        loader = make_loader(train, tok, batch_size=args.batch_size, shuffle=True, seed=0, group_by_length=True)
        steps = int(round(epochs * len(loader)))
        settings = replace(TrainSettings(lr=args.lr, batch_size=args.batch_size, distill_weight=0.0, seed=0),
                           max_steps=steps)
        monitor = Monitor(evals["validation"], every=args.every, patience=0, extra={"test": evals["test"]})
        t0 = time.perf_counter()
        finetune(model, loader, settings, monitor=monitor)
        seconds = time.perf_counter() - t0
        best = max(monitor.curve, key=lambda p: p["validation"])
        runs.append({"epochs": epochs, "steps": steps, "seconds": round(seconds, 1), "best_step": best["step"],
                     "best_validation": best["validation"], "test_at_best": best["test"],
                     "last_validation": monitor.curve[-1]["validation"], "last_test": monitor.curve[-1]["test"]})
        print(json.dumps(runs[-1]), flush=True)
        rows += [{"epochs": epochs, **p} for p in monitor.curve]
        pd.DataFrame(rows).to_csv(HERE / "curve.csv", index=False)
    info = {"task": task.fingerprint, "train_rows": len(train), "steps_per_epoch": len(loader), "lr": args.lr,
            "batch_size": args.batch_size, "every": args.every, "threads": torch.get_num_threads(), "runs": runs}
    (HERE / "results.json").write_text(json.dumps(info, indent=2))
    lines = ["| epochs | steps | train s | best step | best val | test at best | last val | last test |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['epochs']:g} | {r['steps']} | {r['seconds']:.0f} | {r['best_step']} | {r['best_validation']:.4f} | "
              f"{r['test_at_best']:.4f} | {r['last_validation']:.4f} | {r['last_test']:.4f} |" for r in runs]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    df = pd.DataFrame(rows)
    for epochs, part in df.groupby("epochs"):
        ax.plot(part["step"], part["validation"], marker="o", ms=3, label=f"{epochs:g} epochs: validation")
        ax.plot(part["step"], part["test"], ls="--", label=f"{epochs:g} epochs: test")
    ax.set_xlabel("fine-tuning steps (batch 32)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(HERE / "curve.png", dpi=120)


if __name__ == "__main__":
    main(sys.argv[1:])
