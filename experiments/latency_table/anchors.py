"""Why the latency table's anchors were off (issue 38), measured in one process so that every variant meets the same
measurements: the table built as before (each model timed back to back, beside its small no-layer twin, in
absolute milliseconds) and fitted as before (scale and overhead on the anchors' and the base's milliseconds), the
same table fitted on the anchors' speedups, and the table as now (nas.cost.table.build_table: each model in
alternating rounds with the base, kept as a ratio to it; nas.cost.table.calibrate: fitted on speedups). Each is
calibrated on the same anchor measurements and scored on the same held-out shapes.

    python experiments/latency_table/anchors.py [--reps 9] [--rounds 9] [--shapes 12] [--tag T] [hydra overrides]

It also times each anchor three ways in alternating rounds, to show the cause: `alone` (back to back), `twin` (beside
the small no-layer stem: what the old table's timings saw) and `paired` (beside the base: what the search measures).
Timing does not depend on the weights' values: a barely trained base (`base.max_steps=1 importance.max_batches=1`)
times as the fine-tuned one does. Writes anchors_<tag>.json and .md here. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent))
from bench import kendall_tau  # noqa: E402  (the benchmarks' shared helpers, experiments/bench.py)


def back_to_back_table(base: Any, grid: Any, settings: Any, *, reps: int, k: int = 2) -> Any:
    """The table as nas.cost.table built it before issue 38: stems timed alone, each layer model in turns with its
    small no-layer twin, medians of absolute milliseconds."""
    from nas.cost.latency import num_threads, runtime_pass
    from nas.cost.table import SMALL_VOCAB, LatencyTable, _feeds, _layer_model, _stem_model
    from nas.models.registry import base_shape

    shape = base_shape(base.config)
    h0, f0 = max(grid.heads), max(grid.ffn)
    n = len(grid.widths)
    stem, attention, ffn = {}, {}, {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="old_table_") as tmp, num_threads(settings.threads):
        counter = [0]

        def session(model: Any, vocab: int) -> Callable[[int, int], float]:
            counter[0] += 1
            return runtime_pass(model, _feeds(settings.batch_size, grid.widths, vocab), runtime=settings.runtime,
                                precision=settings.precision, threads=settings.threads, workdir=Path(tmp),
                                name=f"m{counter[0]}", cap=max(grid.widths), quant=settings.quant, fast_export=True)

        def medians(runs: Sequence[Callable[[int, int], float]]) -> list[list[float]]:
            times = [[[] for _ in range(n)] for _ in runs]
            for run in runs:
                for i in range(n):
                    run(i, i + 1)
            for _ in range(reps):
                for i in range(n):
                    for j, run in enumerate(runs):
                        times[j][i].append(run(i, i + 1) * 1000.0)
            return [[statistics.median(t) for t in series] for series in times]

        vocab = int(base.config.vocab_size)
        for d in grid.hidden:
            stem[d] = medians([session(_stem_model(base, d, small_vocab=False), min(vocab, 1000))])[0]
            small = session(_stem_model(base, d, small_vocab=True), SMALL_VOCAB)
            kk = min(k, shape.num_layers)

            def line(points: Sequence[tuple[int, int]]) -> list[list[float]]:
                out = []
                for h, f in points:
                    model_ms, stem_ms = medians([session(_layer_model(base, d, h, f, kk), SMALL_VOCAB), small])
                    out.append([max(0.0, (m - s) / kk) for m, s in zip(model_ms, stem_ms)])
                return out

            attention[d] = dict(zip(grid.heads, line([(h, f0) for h in grid.heads])))
            ffn[d] = dict(zip(grid.ffn, line([(h0, f) for f in grid.ffn])))
    return LatencyTable(widths=grid.widths, stem=stem, attention=attention, ffn=ffn, h0=h0, f0=f0,
                        info={"seconds": round(time.perf_counter() - t0, 1), "timed": "back to back"})


def fit_on_milliseconds(table: Any, timer: Any, specs: Sequence[Any], measured: Sequence[dict]) -> dict[str, Any]:
    """The calibration as nas.cost.table fitted it before issue 38: least squares of scale and overhead on the
    anchors' and the base's milliseconds (each anchor's rounds taken at another moment)."""
    import numpy as np

    from nas.models.registry import base_shape
    from nas.spec import SubnetSpec

    full = SubnetSpec.full(base_shape(timer.base.config))
    points = []
    for spec, m in zip(specs, measured):
        batches = timer.sample.batches(timer.caps(spec.context)[0])
        points.append((table.table_sum(spec, batches), len(batches) / len(timer.sample), m["latency_ms"]))
        base_batches = timer.sample.batches(timer.base_cap)
        points.append((table.table_sum(full, base_batches), len(base_batches) / len(timer.sample),
                       m["base_latency_ms"]))
    x = np.array([[p[0], p[1]] for p in points])
    y = np.array([p[2] for p in points])
    (scale, shift), *_ = np.linalg.lstsq(x / y[:, None], np.ones_like(y), rcond=None)
    table.scale, table.overhead = float(scale), float(shift / scale) if scale else 0.0
    errors = x @ np.array([scale, shift]) / y - 1.0
    # as the speedups the search reads: the base's prediction over each anchor's
    speedups = [table.predict(full, timer.sample.batches(timer.base_cap))
                / table.predict(spec, timer.sample.batches(timer.caps(spec.context)[0])) for spec in specs]
    return {"scale": table.scale, "overhead_ms": table.overhead, "fitted": "milliseconds",
            "max_ms_error": float(np.max(np.abs(errors))),
            "anchor_errors": [round(float(p / float(m["speedup"]) - 1.0), 4) for p, m in zip(speedups, measured)],
            "max_anchor_error": max(abs(p / float(m["speedup"]) - 1.0) for p, m in zip(speedups, measured))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=9, help="the tables' timing repetitions")
    ap.add_argument("--rounds", type=int, default=9, help="paired rounds per anchor and held-out shape")
    ap.add_argument("--shapes", type=int, default=12, help="held-out shapes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tag", default="avx2")
    args, overrides = ap.parse_known_args()

    from omegaconf import OmegaConf

    from nas.config import compose
    from nas.cost.latency import LatencySettings, PairedTimer, interleaved_rounds, num_threads, runtime_pass
    from nas.cost.table import (Grid, _stem_model, anchor_specs, build_table, calibrate, measure_anchors,
                                sample_widths)
    from nas.models.registry import family_for
    from nas.spec import SubnetSpec
    from nas.study.prepare import prepare
    from nas.study.settings import chosen_space
    from nas.util import cpu_features, describe_cpu, quiet_libraries

    quiet_libraries()
    cfg = compose(["+space=triple", *overrides])
    c = OmegaConf.to_container(cfg, resolve=True)
    prep = prepare(cfg)
    space = chosen_space(c).resolve(prep.shape, max_length=c["max_length"])
    settings = LatencySettings.from_cfg({**c["latency"], "runtime": "onnxruntime", "precision": "int8",
                                         "model": "measured", "rounds": args.rounds})
    timer = PairedTimer.for_prepared(prep, settings, max_length=c["max_length"])
    contexts = list(space.axes["context"].values)
    grid = Grid.for_space(space, prep.shape, sample_widths(timer, contexts))
    machine = cpu_features()
    print(f"machine: {describe_cpu(machine)}; {settings.describe()}", flush=True)

    built = {}
    for name, build in (("back to back", lambda: back_to_back_table(prep.base, grid, settings, reps=args.reps)),
                        ("beside the base", lambda: build_table(prep.base, grid, settings, reps=args.reps))):
        t0 = time.perf_counter()
        built[name] = build()
        print(f"table timed {name}: built in {time.perf_counter() - t0:.0f}s", flush=True)

    specs = anchor_specs(grid, prep.shape, contexts)
    measured = measure_anchors(timer, specs)
    tables = {"before: back to back, fitted on ms": replace(built["back to back"]),
              "back to back, fitted on speedups": replace(built["back to back"]),
              "now: beside the base, fitted on speedups": replace(built["beside the base"])}
    fits = {}
    for name, table in tables.items():
        fits[name] = (fit_on_milliseconds(table, timer, specs, measured) if name.endswith("on ms") else
                      calibrate(table, timer, specs, measured=measured))
        fit = fits[name]
        print(f"{name}: scale {fit['scale']:.3f}, overhead {fit['overhead_ms']:.3f} ms, largest anchor speedup error "
              f"{fit['max_anchor_error']:.1%} (anchors {', '.join(f'{e:+.1%}' for e in fit['anchor_errors'])})",
              flush=True)
    print("the base beside each anchor (ms): " + ", ".join(f"{m['base_latency_ms']:.2f}" for m in measured), flush=True)

    rng = random.Random(args.seed)
    held_out: list[SubnetSpec] = []
    while len(held_out) < args.shapes:
        n = rng.choice(list(space.axes["layers"].values))
        spec = SubnetSpec(layers=tuple(range(n)), heads=(rng.choice(space.axes["heads"].values),) * n,
                          ffn=(rng.choice(space.axes["ffn"].values),) * n,
                          hidden=rng.choice(space.axes["hidden"].values),
                          context=rng.choice(contexts))
        if spec not in specs and spec not in held_out:
            held_out.append(spec)
    family = family_for(prep.base)
    full = SubnetSpec.full(prep.shape)
    base_batches = timer.sample.batches(timer.base_cap)
    shapes = []
    for spec in held_out:
        m = timer.measure(family.prune(prep.base, spec, prep.scores), context=spec.context, name="heldout",
                          fast_export=True)
        batches = timer.sample.batches(timer.caps(spec.context)[0])
        row = {"shape": spec.describe(), "measured_speedup": m["speedup"], "p10": m["speedup_p10"],
               "p90": m["speedup_p90"]}
        for name, table in tables.items():
            predicted = table.predict(full, base_batches) / table.predict(spec, batches)
            row[name] = {"predicted_speedup": predicted, "error": predicted / m["speedup"] - 1.0}
        shapes.append(row)
        print(f"{row['shape']:28s} measured {m['speedup']:6.2f}x ({m['speedup_p10']:.2f}-{m['speedup_p90']:.2f}) "
              + "  ".join(f"{row[name]['predicted_speedup']:6.2f}x {row[name]['error']:+.1%}" for name in tables),
              flush=True)

    # the cause: one anchor's time back to back, beside the small twin, beside the base
    modes = []
    with num_threads(settings.threads), tempfile.TemporaryDirectory(prefix="anchors_") as tmp:
        base_pass = timer.base_pass()
        for i, spec in enumerate([*specs, full]):
            model = prep.base if spec == full else family.prune(prep.base, spec, None)
            cap = timer.caps(spec.context)[0]
            batches = timer.sample.batches(cap)
            cand = timer._make_pass(model, cap, name=f"a{i}", fast_export=True)
            twin = runtime_pass(_stem_model(prep.base, spec.hidden, small_vocab=True),
                                [{k: v % 128 for k, v in b.items()} for b in batches], runtime="onnxruntime",
                                precision="int8", threads=settings.threads, workdir=Path(tmp), name=f"twin{i}",
                                cap=cap, quant=settings.quant, fast_export=True)
            n = dict(n_batches=len(batches), n_inputs=len(timer.sample), rounds=1, warmup=2)
            paired, alone, twinned = [], [], []
            for _ in range(args.rounds):  # the three modes in turn, each round
                paired.append(interleaved_rounds({"base": base_pass, "m": cand}, **n)["m"][0])
                alone.append(interleaved_rounds({"m": cand}, **n)["m"][0])
                twinned.append(interleaved_rounds({"twin": twin, "m": cand}, **n)["m"][0])
            row = {"shape": spec.describe(), "alone_ms": statistics.median(alone),
                   "twin_ms": statistics.median(twinned), "paired_ms": statistics.median(paired)}
            row["paired_minus_alone_ms"] = row["paired_ms"] - row["alone_ms"]
            modes.append(row)
            print(f"{row['shape']:28s} alone {row['alone_ms']:6.3f}  beside its twin {row['twin_ms']:6.3f}  beside "
                  f"the base {row['paired_ms']:6.3f} ms per input (+{row['paired_minus_alone_ms']:.3f})", flush=True)
    timer.close()

    summary: dict[str, Any] = {"machine": machine, "latency_definition": settings.describe(), "overrides": overrides,
                               "reps": args.reps, "rounds": args.rounds, "date": time.strftime("%Y-%m-%d"),
                               "grid": {"hidden": list(grid.hidden), "heads": list(grid.heads),
                                        "ffn": list(grid.ffn), "widths": list(grid.widths)},
                               "base_ms_beside_each_anchor": [m["base_latency_ms"] for m in measured],
                               "tables": {}, "held_out": shapes, "modes": modes}
    for name, table in tables.items():
        errors = [abs(r[name]["error"]) for r in shapes]
        summary["tables"][name] = {"calibration": fits[name], "build_seconds": table.info.get("seconds"),
                                   "rank_agreement_kendall_tau": kendall_tau(
                                       [r[name]["predicted_speedup"] for r in shapes],
                                       [r["measured_speedup"] for r in shapes]),
                                   "held_out_median_abs_error": statistics.median(errors),
                                   "held_out_max_abs_error": max(errors),
                                   "held_out_within_10pct": sum(e <= 0.10 for e in errors)}
    (HERE / f"anchors_{args.tag}.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    lines = ["# Latency table anchors: timed back to back vs beside the base, fitted on ms vs on speedups", "",
             f"Machine: {describe_cpu(machine)}. Timing: {settings.describe()}; tables at {args.reps} reps, anchors "
             f"and held-out shapes measured once ({args.rounds} paired rounds) and fitted by both tables."
             + (f" Overrides: {' '.join(overrides)}." if overrides else ""), "",
             f"The base's own latency beside each anchor: "
             f"{', '.join(f'{m:.2f}' for m in summary['base_ms_beside_each_anchor'])} ms (the machine's drift).", "",
             "| table | scale | overhead ms | largest anchor speedup error | held-out median / max error | within 10% "
             "| Kendall tau |", "|---|---|---|---|---|---|---|"]
    for name, t in summary["tables"].items():
        f = t["calibration"]
        lines.append(f"| {name} | {f['scale']:.3f} | {f['overhead_ms']:.3f} | {f['max_anchor_error']:.1%} | "
                     f"{t['held_out_median_abs_error']:.1%} / {t['held_out_max_abs_error']:.1%} | "
                     f"{t['held_out_within_10pct']}/{len(shapes)} | {t['rank_agreement_kendall_tau']:.3f} |")
    lines += ["", "Each anchor alone, beside its small twin (what the old table saw), beside the base (what the search "
              "measures), ms per input:", "", "| shape | alone | beside its twin | beside the base |",
              "|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['alone_ms']:.3f} | {r['twin_ms']:.3f} | {r['paired_ms']:.3f} |" for r in modes]
    (HERE / f"anchors_{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
