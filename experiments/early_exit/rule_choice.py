"""How the exit rule is chosen, checked on a finished run: every final member's exits as served (onnxruntime int8
segments, one input at a time), each exit's logits read once on the selection rows (validation minus the judge
rows, where the run chose its rules) and on the test rows; then the rule search_rule picks with the accuracy floor
read as is (the run's choice) and with the floor read `z` paired standard errors below the selection accuracy
(the rule must stay within exits.tolerance even after its own noise on these rows: a rule whose predictions
disagree with full depth on many rows is less sure to hold elsewhere). Per rule chosen: selection, judge (the
held-out half of validation, where a margin is to be read) and test accuracy against the member at full depth,
and the mean layers run (the rule's cost on the test rows).

    python experiments/early_exit/rule_choice.py RUN_DIR [--z 0 1 1.645 2]    # ~2 min; writes rule_choice.json
    python experiments/early_exit/rule_choice.py --summarize A.json B.json ... --out rule_choice_seeds.md
                                                                               # one table over several runs' files

The margin is read on the judge rows (no choice of the run saw them): the smallest margin whose rules hold there on
every member; the test rows are reported, never chosen on.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", nargs="?")
    ap.add_argument("--z", type=float, nargs="+", default=[0.0, 1.0, 1.645, 2.0])
    ap.add_argument("--out", default=str(HERE / "rule_choice.json"))
    ap.add_argument("--summarize", nargs="+", help="rule_choice JSON files to render as one table (--out: .md)")
    args = ap.parse_args()
    if args.summarize:
        text = summarize([json.loads(Path(f).read_text()) for f in args.summarize])
        Path(args.out).write_text(text)
        print(text)
        return
    if not args.run_dir:
        ap.error("give RUN_DIR, or --summarize FILES")
    from nas.deploy.exit_runner import ExitRunner
    from nas.deploy.exits import export_segments
    from nas.quality.exits import ExitRule, ExitSettings, exit_taken, search_rule
    from nas.spec import SubnetSpec
    from nas.study.exits import heads_path, load_heads, rows_of
    from nas.study.prepare import prepare
    from nas.study.runs import load_run, rebuild_trial_model
    from nas.util import cpu_features, quiet_libraries

    quiet_libraries()
    run_dir = Path(args.run_dir).resolve()
    cfg, study = load_run(run_dir)
    prep = prepare(cfg)
    exits = study.user_attrs.get("final_exits") or {}
    labels_names = tuple(study.user_attrs.get("label_names") or ())
    settings = ExitSettings()
    result = {"run_dir": str(run_dir), "machine": cpu_features(), "tolerance_points": settings.tolerance,
              "members": {}}
    for n, variant in sorted(exits.items(), key=lambda kv: int(kv[0])):
        final = study.user_attrs["final"][n]
        spec = SubnetSpec.from_dict(final["spec"])
        model = rebuild_trial_model(cfg, run_dir, int(n), spec, len(labels_names) or 2, labels_names or None).eval()
        heads = load_heads(variant["heads"], heads_path(run_dir, int(n)))
        candidates = tuple(heads.positions)
        logits, ys = {}, {}
        with tempfile.TemporaryDirectory(prefix="rule_choice_") as tmp:
            export_segments(model, heads, ExitRule("confidence", candidates, threshold=1.0), Path(tmp),
                            precision="int8", base_layers=spec.layers)
            runner = ExitRunner(Path(tmp), threads=1)
            for split in ("validation", "judge", "test"):
                ids, y = rows_of(prep.loader(split, spec.context, batch_size=64, shuffle=False))
                logits[split] = np.stack([np.concatenate(runner.all_logits(x), axis=0) for x in ids])
                ys[split] = y
        depth = np.array([*candidates, len(spec.layers)], dtype=np.float64)  # layers run to reach each exit
        costs = np.broadcast_to(depth, logits["validation"].shape[:2]).copy()
        k = len(candidates)
        rows = {}
        for z in args.z:
            choice = search_rule(logits["validation"], ys["validation"], costs, candidates,
                                 replace(settings, margin=z))
            row = {"rule": choice.rule.describe(), "selection_accuracy": choice.accuracy,
                   "selection_full": choice.full_accuracy}
            for split in ("validation", "judge", "test"):
                correct = logits[split].argmax(-1) == ys[split][:, None]
                taken = exit_taken(logits[split], candidates, choice.rule)
                acc = float(correct[np.arange(len(taken)), taken].mean())
                row[f"{split}_points_vs_full"] = round(100 * (acc - float(correct[:, k].mean())), 2)
                row[f"{split}_mean_layers"] = float(depth[taken].mean())
            row["test_layer_ratio"] = round(len(spec.layers) / row["test_mean_layers"], 3)
            rows[str(z)] = row
            print(f"trial {n} {spec.describe()} z={z}: {row}", flush=True)
        result["members"][n] = {"shape": spec.describe(), "run_rule": variant["exits_rule"], "by_z": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


def summarize(results: list[dict]) -> str:
    """Markdown: per member and margin, the rule's change against full depth on the selection, judge and test rows
    and its layer ratio on test; per margin, the worst judge change (where the margin is read) and the test range."""
    zs = sorted({z for r in results for m in r["members"].values() for z in m["by_z"]}, key=float)
    lines = ["Exit rules chosen at each margin (exits.margin, paired standard errors), replayed on finished runs by "
             "`experiments/early_exit/rule_choice.py`: accuracy change in points against the same member at full "
             "depth (onnxruntime int8 segments, one input at a time) on the selection rows (where the rule is chosen), "
             "the judge rows (held out: where the margin is read) and the test rows (reported only); layer ratio: the "
             "member's layers / the mean layers run on test (not time).", "",
             "| run | member | margin | rule | selection | judge | test | layer ratio |", "|---|---|---|---|---|---|---|---|"]
    worst: dict[str, list[float]] = {z: [] for z in zs}
    tests: dict[str, list[float]] = {z: [] for z in zs}
    for result in results:
        run = Path(result["run_dir"]).name
        for n, m in result["members"].items():
            for z in zs:
                row = m["by_z"].get(z)
                if row is None:
                    continue
                judge = row.get("judge_points_vs_full")
                if judge is not None:
                    worst[z].append(judge)
                tests[z].append(row["test_points_vs_full"])
                lines.append(f"| {run} | {n} {m['shape']} | {float(z):g} | {row['rule']} | "
                             f"{row['validation_points_vs_full']:+.2f} | "
                             + ("n/a" if judge is None else f"{judge:+.2f}")
                             + f" | {row['test_points_vs_full']:+.2f} | {row['test_layer_ratio']:.2f}x |")
    lines += ["", "| margin | worst judge change | test changes (min..max) | members |", "|---|---|---|---|"]
    for z in zs:
        if tests[z]:
            lines.append(f"| {float(z):g} | " + (f"{min(worst[z]):+.2f}" if worst[z] else "n/a")
                         + f" | {min(tests[z]):+.2f}..{max(tests[z]):+.2f} | {len(tests[z])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
