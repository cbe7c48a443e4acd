"""Fidelity of the latency table (nas.cost.table) on held-out shapes: predicted speedups against
speedups measured the project's way (paired rounds with the base, real inputs).

    python experiments/latency_table/run.py [--precision int8] [--shapes 24] [--rounds 9] [hydra overrides]

Builds (or reads from the cache) the table for the triple space on the fine-tuned MiniLM of the
default task in onnxruntime at this precision (the grid thinned as the search thins it, `--full-grid`:
every size), then draws held-out shapes from the whole space (seeded, none of them an anchor of the
table's calibration), measures each in paired rounds with the base (the same
runtime and precision; `--rounds` rounds, more than a trial's 3 to tame noise) and compares.
Writes results_<precision>.json and results_<precision>.md here (`--tag`: results_<precision>_<tag>.*), with the
machine's CPU features (nas.util.cpu_features): the table is this machine's. Hydra overrides after the options compose
into the config (e.g. `base.max_steps=1 importance.max_batches=1`: a barely trained base times as the fine-tuned one,
the quick way to a table on a new machine). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent))
from bench import kendall_tau  # noqa: E402  (the benchmarks' shared helpers, experiments/bench.py)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--shapes", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--full-grid", action="store_true", help="time every size of the space (no interpolation)")
    ap.add_argument("--tag", default=None, help="results_<precision>_<tag>.*: keep other results beside")
    args, overrides = ap.parse_known_args()

    from omegaconf import OmegaConf

    from nas.config import compose
    from nas.cost.latency import LatencySettings, PairedTimer
    from nas.cost.table import Grid, anchor_specs, cached_table, sample_widths
    from nas.cut.prune import prune_model
    from nas.spec import SubnetSpec
    from nas.study.prepare import prepare
    from nas.study.settings import chosen_space
    from nas.util import cpu_features, describe_cpu, quiet_libraries, resolve_cache_dir

    quiet_libraries()
    cfg = compose(["+space=triple", *overrides])
    c = OmegaConf.to_container(cfg, resolve=True)
    prep = prepare(cfg)  # the fine-tuned base (cached)
    space = chosen_space(c).resolve(prep.shape, max_length=c["max_length"])
    settings = LatencySettings.from_cfg({**c["latency"], "runtime": "onnxruntime", "precision": args.precision,
                                         "model": "table"})
    timer = PairedTimer.for_prepared(prep, settings, max_length=c["max_length"])
    contexts = list(space.axes["context"].values)
    grid = Grid.for_space(space, prep.shape, sample_widths(timer, contexts),
                          points={"hidden": 0, "heads": 0, "ffn": 0} if args.full_grid else None)
    t0 = time.perf_counter()
    table = cached_table(timer, grid, cache_dir=resolve_cache_dir(c), contexts=contexts,
                         scores=prep.scores, say=print)
    build_s = time.perf_counter() - t0
    timer.table = table
    anchors = set(anchor_specs(grid, prep.shape, contexts))

    rng = random.Random(args.seed)
    layers = list(space.axes["layers"].values)
    specs: list[SubnetSpec] = []
    while len(specs) < args.shapes:
        n = rng.choice(layers)
        spec = SubnetSpec(layers=tuple(range(n)), heads=(rng.choice(space.axes["heads"].values),) * n,
                          ffn=(rng.choice(space.axes["ffn"].values),) * n, hidden=rng.choice(space.axes["hidden"].values),
                          context=rng.choice(contexts))
        if spec not in anchors and spec not in specs:
            specs.append(spec)

    measured_timer = replace(timer, settings=replace(timer.settings, model="measured", rounds=args.rounds), table=None,
                             base_rounds=[], _passes={}, _tmp=None)
    rows = []
    for spec in specs:
        model = prune_model(prep.base, spec, prep.scores)
        t = time.perf_counter()
        predicted = timer.measure(model, context=spec.context)
        predict_s = time.perf_counter() - t
        measured = measured_timer.measure(model, context=spec.context, name="heldout")
        row = {"shape": spec.describe(), "predicted_speedup": round(predicted["speedup"], 3),
               "measured_speedup": round(measured["speedup"], 3),
               "measured_p10": round(measured["speedup_p10"], 3), "measured_p90": round(measured["speedup_p90"], 3),
               "error": round(predicted["speedup"] / measured["speedup"] - 1.0, 4),
               "predicted_ms": round(predicted["latency_ms"], 4), "measured_ms": round(measured["latency_ms"], 4),
               "predict_seconds": round(predict_s, 5)}
        rows.append(row)
        print(f"{row['shape']:28s} predicted {row['predicted_speedup']:6.2f}x  measured {row['measured_speedup']:6.2f}x "
              f"(p10-p90 {row['measured_p10']:.2f}-{row['measured_p90']:.2f})  error {row['error']:+.1%}", flush=True)
    measured_timer.close()
    timer.close()

    errors = [abs(r["error"]) for r in rows]
    tau = kendall_tau([r["predicted_speedup"] for r in rows], [r["measured_speedup"] for r in rows])
    machine = cpu_features()
    summary = {
        "precision": args.precision, "runtime": "onnxruntime", "shapes": len(rows), "machine": machine,
        "overrides": overrides,
        "latency_definition": timer.settings.describe(), "reference_rounds": args.rounds,
        "within_10pct": sum(e <= 0.10 for e in errors), "median_abs_error": round(statistics.median(errors), 4),
        "max_abs_error": round(max(errors), 4), "kendall_tau": round(tau, 4),
        "predict_seconds_median": statistics.median(r["predict_seconds"] for r in rows),
        "table_seconds": round(build_s, 1), "table": table.info, "rows": rows,
    }
    tag = args.precision + ("_full_grid" if args.full_grid else "") + (f"_{args.tag}" if args.tag else "")
    summary["grid"] = {"hidden": list(grid.hidden), "heads": list(grid.heads), "ffn": list(grid.ffn)}
    (HERE / f"results_{tag}.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"# Latency table fidelity: onnxruntime {args.precision}", "",
             f"Grid timed: hidden {list(grid.hidden)}, heads {list(grid.heads)}, FFN {list(grid.ffn)} "
             "(other sizes interpolated).", "",
             f"Machine: {describe_cpu(machine)}." + (f" Overrides: {' '.join(overrides)}." if overrides else ""), "",
             f"Held-out shapes: {len(rows)} (seed {args.seed}); reference: paired rounds with the base, "
             f"{args.rounds} rounds; {timer.settings.describe()}.", "",
             f"- within 10%: {summary['within_10pct']}/{len(rows)}; median |error| {summary['median_abs_error']:.1%}, "
             f"max {summary['max_abs_error']:.1%}",
             f"- Kendall tau (predicted vs measured speedup): {summary['kendall_tau']:.3f}",
             f"- prediction: {summary['predict_seconds_median'] * 1000:.2f} ms per shape (median); "
             f"table: {summary['table_seconds']:.0f}s ({'cached' if table.info.get('cached') else 'built'} here)", "",
             "| shape | predicted | measured (p10-p90) | error |", "|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['predicted_speedup']:.2f}x | {r['measured_speedup']:.2f}x "
              f"({r['measured_p10']:.2f}-{r['measured_p90']:.2f}) | {r['error']:+.1%} |" for r in rows]
    (HERE / f"results_{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8]))


if __name__ == "__main__":
    main()
