"""Benchmark (a) of the supernet issue: proxy fidelity. For N shapes spread over the `triple` space,
each estimator's accuracy next to the accuracy the same shape reaches after final training, and
Kendall's tau between them.

    python experiments/supernet/run.py --shapes 20                         # the benchmark (long: N final trainings)
    python experiments/supernet/run.py --shapes 3 --final-steps 20 \\
        --supernet-steps 20 --finetune-steps 10 --tag smoke                 # a few minutes: checks the pipeline
    python experiments/supernet/run.py --report-only                        # results.md from fidelity*.csv

Estimators, all from the same cached base and importance scores (nas.study.prepare.prepare):
- none: the base pruned to the shape (prune_model), no training (recovery of issue #11 not applied here);
- finetune: the per-trial recipe (train: block; distilled from the base) from the pruned base;
- supernet: the shape sliced out of the supernet (nas.quality.supernet.cached_supernet, `supernet:` recipe).
"Final" is the final recipe (final.max_steps at final.lr, distilled from the base) started from
the pruned base, the same start for every shape, so the target does not favour one estimator.
Shapes: the largest and smallest of the space, then shapes drawn by the space's own sampler (seeded).

Benchmarks (b) (equal wall-clock budget, 3 seeds, hypervolume of the final-trained test fronts per
estimator) and (c) (NSGA-II vs random under `supernet`) run the real search once `search.estimator`
exists (the lead wires it into nas/search.py):
    python -m nas.search +space=triple search.estimator=supernet search.n_trials=300 search.seed=S ...
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE.parent))
from bench import kendall_tau  # noqa: E402  (the benchmarks' shared helpers, experiments/bench.py)
# "none" is the base pruned to the shape; "none+rescale" adds the training-free recovery, which is
# what search.estimator=none scores (prune.recovery=auto resolves to rescale there)
ESTIMATORS = ("none", "none+rescale", "finetune", "supernet")


def measure(args: argparse.Namespace) -> Path:
    import torch

    from nas.config import compose
    from nas.study.prepare import prepare
    from nas.cut.prune import prune_model
    from nas.study.space import SearchSpace
    from nas.quality.supernet import SupernetSettings, cached_supernet, evaluate_slice, sandwich
    from nas.quality.finetune import TrainSettings, finetune
    from nas.quality.metrics import accuracy

    torch.set_num_threads(args.threads)
    cfg = compose(["+space=triple", f"cache_dir={args.cache_dir}", f"supernet.steps={args.supernet_steps}"])
    prep = prepare(cfg)
    space = SearchSpace.from_cfg(cfg.space).resolve(prep.shape, max_length=int(cfg.max_length))
    eval_bs = int(cfg.train.eval_batch_size)

    def val_acc(model, context):
        return accuracy(model, prep.loader("validation", context, batch_size=eval_bs, shuffle=False))

    from nas.study.trial import Evaluator
    from nas.cut.recovery import RecoverySettings

    def supernet() -> tuple:
        t0 = time.perf_counter()
        net, info = cached_supernet(prep, space, SupernetSettings.from_cfg(cfg.supernet))
        print(f"supernet: {args.supernet_steps} steps, {'cached' if info.get('cached') else f'{time.perf_counter() - t0:.0f}s'}",
              flush=True)
        return net, (info.get("train_seconds", 0.0) if not info.get("cached") else 0.0)

    # --supernet-first: this process trains (or loads) the supernet before its shapes; otherwise after
    # them, so a second process started beside it measures its shapes while the first trains it.
    net, supernet_s = supernet() if args.supernet_first else (None, 0.0)
    specs = sandwich(space, prep.shape, prep.scores, n_random=max(0, args.shapes - 2), rng=random.Random(args.seed))
    specs = list(dict.fromkeys(specs))  # repeats drawn by the sampler count once
    lo, hi = (int(x) if x else None for x in args.take.split(":")) if args.take else (None, None)
    specs = specs[lo:hi]
    trial = TrainSettings.from_cfg(cfg.train, max_steps=args.finetune_steps)
    final = TrainSettings.from_cfg(cfg.train, max_steps=args.final_steps, lr=float(cfg.final.lr))
    rescaler = Evaluator(prep=prep, timer=None, train=trial, estimator="none",
                         recovery=RecoverySettings.from_cfg(cfg.prune).resolved("none"))
    out = HERE / f"fidelity_{args.tag}.csv"
    rows = []

    def save() -> None:  # rewritten after every shape: a killed run keeps what it measured
        with out.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    for spec in specs:
        row = {"shape": spec.describe(), "spec": json.dumps(spec.to_dict())}
        t = time.perf_counter()
        row["none"] = val_acc(prune_model(prep.base, spec, prep.scores), spec.context)
        row["none_s"] = time.perf_counter() - t
        t = time.perf_counter()
        model, _ = rescaler.candidate(spec)
        row["none+rescale"] = val_acc(model, spec.context)
        row["none+rescale_s"] = time.perf_counter() - t
        if net is not None:
            t = time.perf_counter()
            _, m = evaluate_slice(net, spec, prep, batch_size=eval_bs)
            row["supernet"], row["supernet_s"] = m["val_accuracy"], time.perf_counter() - t
        else:
            row["supernet"], row["supernet_s"] = None, None
        for name, settings in (("finetune", trial), ("final", final)):
            t = time.perf_counter()
            model = prune_model(prep.base, spec, prep.scores)
            loader = prep.loader("train", spec.context, batch_size=settings.batch_size, shuffle=True, seed=settings.seed)
            finetune(model, loader, settings, teacher=prep.base if settings.distill_weight > 0 else None)
            row[name] = val_acc(model, spec.context)
            row[f"{name}_s"] = time.perf_counter() - t
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "spec"}, flush=True)
        save()
    if net is None:  # the slices, once this process's shapes are done (the supernet trained meanwhile)
        net, supernet_s = supernet()
        for row, spec in zip(rows, specs):
            t = time.perf_counter()
            _, m = evaluate_slice(net, spec, prep, batch_size=eval_bs)
            row["supernet"], row["supernet_s"] = m["val_accuracy"], time.perf_counter() - t
            print(row["shape"], "supernet", round(row["supernet"], 4), flush=True)
        save()
    meta = {"supernet_steps": args.supernet_steps, "supernet_train_s": supernet_s, "finetune_steps": args.finetune_steps,
            "final_steps": args.final_steps, "threads": args.threads, "seed": args.seed}
    (HERE / f"fidelity_{args.tag}.json").write_text(json.dumps(meta, indent=1))
    return out


def fill_slices(args: argparse.Namespace) -> None:
    """--fill-slices: evaluate the cached supernet's slices for the rows of fidelity_<tag>.csv that lack
    them (a part stopped before its slice pass); nothing else is recomputed."""
    import torch

    from nas.config import compose
    from nas.study.prepare import prepare
    from nas.study.space import SearchSpace
    from nas.spec import SubnetSpec
    from nas.quality.supernet import SupernetSettings, cached_supernet, evaluate_slice

    torch.set_num_threads(args.threads)
    path = HERE / f"fidelity_{args.tag}.csv"
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    cfg = compose(["+space=triple", f"cache_dir={args.cache_dir}", f"supernet.steps={args.supernet_steps}"])
    prep = prepare(cfg)
    space = SearchSpace.from_cfg(cfg.space).resolve(prep.shape, max_length=int(cfg.max_length))
    net, _ = cached_supernet(prep, space, SupernetSettings.from_cfg(cfg.supernet))
    for row in rows:
        if row.get("supernet") in (None, ""):
            t = time.perf_counter()
            _, m = evaluate_slice(net, SubnetSpec.from_dict(json.loads(row["spec"])), prep,
                                  batch_size=int(cfg.train.eval_batch_size))
            row["supernet"], row["supernet_s"] = m["val_accuracy"], time.perf_counter() - t
            print(row["shape"], "supernet", round(m["val_accuracy"], 4), flush=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def report() -> None:
    lines = ["# Proxy fidelity: Kendall's tau with the final-trained accuracy", "",
             "| run | shapes | " + " | ".join(f"tau {e}" for e in ESTIMATORS) + " | " +
             " | ".join(f"s per shape {e}" for e in ESTIMATORS) + " |",
             "|---|---|" + "---|" * (2 * len(ESTIMATORS))]
    runs: dict[str, list[Path]] = {}
    for path in sorted(HERE.glob("fidelity_*.csv")):  # the parts of one run (tag_p0, tag_p1, ...) merge
        runs.setdefault(re.sub(r"_p\d+$", "", path.stem), []).append(path)
    for name, paths in runs.items():
        rows = []
        for path in paths:
            with path.open() as fh:
                rows += list(csv.DictReader(fh))
        if len(rows) < 2:
            continue
        meta_path = paths[0].with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        final = [float(r["final"]) for r in rows]

        def values(e: str) -> list[float] | None:
            got = [r.get(e) for r in rows]
            return [float(v) for v in got] if all(v not in (None, "") for v in got) else None

        # a probe without final training has no target to rank against
        taus = [kendall_tau(values(e), final) if meta.get("final_steps", 1) > 0 and values(e) else float("nan")
                for e in ESTIMATORS]
        secs = [sum(values(f"{e}_s")) / len(rows) if values(f"{e}_s") else float("nan") for e in ESTIMATORS]
        lines.append(f"| {name} | {len(rows)} | " + " | ".join("-" if t != t else f"{t:.3f}" for t in taus)
                     + " | " + " | ".join("-" if s != s else f"{s:.1f}" for s in secs) + " |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(runs)


def plot(runs: dict[str, list[Path]]) -> None:
    """fidelity.png: each estimator's accuracy against the final-trained accuracy, per shape, for the
    largest run with a final target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best: list[dict] = []
    for paths in runs.values():
        rows = [r for path in paths for r in csv.DictReader(path.open())]
        if len(rows) > len(best) and all(r.get("supernet") not in (None, "") for r in rows) \
                and all(float(r["final_s"] or 0) > 0 for r in rows):
            best = rows
    if not best:
        return
    final = [float(r["final"]) for r in best]
    fig, ax = plt.subplots(figsize=(6, 5))
    for e, marker in zip(ESTIMATORS, "ovs^"):
        if all(r.get(e) not in (None, "") for r in best):
            xs = [float(r[e]) for r in best]
            ax.scatter(xs, final, marker=marker, label=f"{e} (tau {kendall_tau(xs, final):.2f})", alpha=0.8)
    lo = min(final + [float(r["none"]) for r in best]) - 0.01
    ax.plot([lo, 0.87], [lo, 0.87], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("estimator's validation accuracy")
    ax.set_ylabel(f"validation accuracy after the final recipe ({len(best)} shapes)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "fidelity.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", type=int, default=20)
    ap.add_argument("--supernet-steps", type=int, default=300)
    ap.add_argument("--finetune-steps", type=int, default=60)
    ap.add_argument("--final-steps", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="default")
    ap.add_argument("--cache-dir", default=str(ROOT / ".cache" / "nas"))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--fill-slices", action="store_true", help="only the missing supernet slices of --tag's csv")
    ap.add_argument("--take", default="", help="a slice of the shape list, e.g. 0:6 (to split a run over processes)")
    ap.add_argument("--supernet-first", action="store_true", help="train / load the supernet before the shapes")
    args = ap.parse_args()
    if args.fill_slices:
        fill_slices(args)
    elif not args.report_only:
        measure(args)
    report()


if __name__ == "__main__":
    main()
