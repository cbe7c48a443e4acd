"""The member rules at equal final-stage time, replayed on recorded training curves (curves.py).

Every member of the final stage trains with the same recipe, whose learning-rate schedule is fixed by the
planned length: a member stopped at step s, by a rung, a budget or early stopping, is exactly the prefix
of its recorded run. So each rule's final stage is replayed exactly from the curves (validation and test
accuracy every 100 steps, with the seconds each step and each validation took) at any time budget:

    halving   the `candidates` fastest front members within `slack` of the base's validation accuracy,
              rungs of 100, 100, 200... steps keeping the more accurate half (nas.study.final.survivors),
              until final_k are left; those share the remaining time and stop after `patience`
              validations without gain
    halving-projected  the same, each rung ranking by the accuracy the curve so far projects at the planned
              length (nas.study.final.projected_accuracy; these curves have a point every 100 steps, so the
              first rung has one point and ranks as halving does)
    halving-pareto  the same with the rung keeping whole Pareto layers of (accuracy, latency) instead
    fastest   the final_k fastest within the slack, sharing the time
    accuracy  the front's most accurate members at spread ranks (the rule before this one)

The winner is what the stage would export: the fastest member within 1.0 validation point of the base
(choose on validation), reported with its test accuracy at its best validation checkpoint and its
measured speedups as deployed (experiments/headline/results_deployed.json: int8 onnxruntime against
the base in torch fp32, in onnxruntime fp32 and quantized alike). Writes rules.md / rules.json.

    python experiments/final_stage/simulate.py [--curves curves_recipe.json] [--budgets 240 420 600]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from nas.study.final import projected_accuracy, survivors  # noqa: E402  the rung rule the stage itself uses


def prefix(entry: dict, steps: int, *, patience: int = 3) -> dict:
    """The member after at most `steps` steps, stopped early after `patience` validations without gain:
    its steps, seconds, and the best-validation checkpoint's validation and test accuracy."""
    best, bad, used = None, 0, 0
    for point in entry["curve"]:
        if point["step"] > steps:
            break
        used = point["step"]
        if best is None or point["validation"] > best["validation"]:
            best, bad = point, 0
        else:
            bad += 1
            if patience and bad >= patience:
                break
    seconds = next((p["seconds"] for p in entry["curve"] if p["step"] == used), 0.0)
    return {"steps": used, "seconds": seconds, **({"val": best["validation"], "test": best["test"]} if best else
                                                  {"val": float("nan"), "test": float("nan")})}


def steps_in(entry: dict, seconds: float) -> int:
    """The validated steps a member reaches in `seconds` of its own training (validations included)."""
    reached = 0
    for point in entry["curve"]:
        if point["seconds"] <= seconds:
            reached = point["step"]
    return reached


def pareto_survivors(acc: dict, cost: dict, keep: int) -> list:
    """The alternative rung rule, for comparison: whole Pareto layers of (accuracy, cost), then the most
    accurate of the layer that splits (the fastest candidate always goes on)."""
    left, out = sorted(acc), []
    while left and len(out) < keep:
        layer = [n for n in left if not any(acc[m] >= acc[n] and cost[m] <= cost[n] and (acc[m] > acc[n] or cost[m] < cost[n])
                                            for m in left)]
        layer.sort(key=lambda n: (-acc[n], cost[n]))
        out += layer[: keep - len(out)]
        left = [n for n in left if n not in layer]
    return out


def run_rule(rule: str, curves: dict, budget: float, *, base_val: float, k: int = 2, candidates: int = 6,
             slack: float = 0.15, rung: int = 100) -> dict:
    members = {n: e for n, e in curves.items() if not n.startswith("_")}
    cost = {n: e["latency_ratio"] for n, e in members.items()}
    within = sorted([n for n, e in members.items() if e["trial_val"] >= base_val - slack], key=lambda n: cost[n])
    if rule == "accuracy":
        ranked = sorted(members, key=lambda n: -members[n]["trial_val"])
        chosen = [ranked[(i * len(ranked)) // min(k, len(ranked))] for i in range(min(k, len(ranked)))]
    elif rule == "fastest":
        chosen = within[:k]
    else:
        chosen = within[:candidates]
    spent, steps_done, history = 0.0, {n: 0 for n in chosen}, []
    alive = list(chosen)
    if rule.startswith("halving"):
        keep_rule = pareto_survivors if rule == "halving-pareto" else survivors
        r = 0
        while len(alive) > k and spent < budget:
            until = rung * 2 ** r
            acc = {}
            for n in alive:
                before = prefix(members[n], steps_done[n], patience=0)["seconds"] if steps_done[n] else 0.0
                after = prefix(members[n], until, patience=0)
                spent += after["seconds"] - before
                steps_done[n] = after["steps"]
                acc[n] = after["val"]
                if rule == "halving-projected":  # where the curve so far projects at the planned length
                    seen = [p for p in members[n]["curve"] if p["step"] <= until]
                    acc[n] = projected_accuracy(seen, members[n]["planned"])
            keep = keep_rule(acc, cost, max(k, math.ceil(len(alive) / 2)))
            history.append({"steps": until, "val": acc, "kept": keep})
            alive, r = keep, r + 1
    result = {}
    left = max(0.0, budget - spent)
    for i, n in enumerate(alive):
        share = left / (len(alive) - i)
        start = prefix(members[n], steps_done[n], patience=0)["seconds"] if steps_done[n] else 0.0
        reach = steps_in(members[n], start + share)
        end = prefix(members[n], max(reach, steps_done[n]))
        left -= max(0.0, end["seconds"] - start)
        spent += max(0.0, end["seconds"] - start)
        result[n] = end
    band_ok = [n for n in result if result[n]["val"] >= base_val - 0.01]
    winner = min(band_ok, key=lambda n: cost[n]) if band_ok else max(result, key=lambda n: result[n]["val"])
    return {"rule": rule, "budget_s": budget, "chosen": chosen, "rungs": history, "members": result,
            "winner": winner, "spent_s": round(spent, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--curves", default="curves_recipe.json")
    p.add_argument("--budgets", type=float, nargs="+", default=[240, 420, 600, 900])
    args = p.parse_args()
    curves = json.loads((HERE / args.curves).read_text())
    meta = curves["_meta"]
    deployed = {r["model"].removeprefix("trial_"): r for r in
                json.loads((ROOT / "experiments/headline/results_deployed.json").read_text())["rows"]}
    base_val, base_test = meta["base_val"], meta["base_test"]
    rows, lines = [], []
    lines.append(f"Replayed from {args.curves} ({meta['recipe']}); base validation {base_val:.4f}, test {base_test:.4f}. "
                 "Speedups: measured as deployed (int8 onnxruntime, real inputs, batch 1, 1 thread) over (a) the base "
                 "in torch fp32, (b) in onnxruntime fp32, (c) quantized alike, from experiments/headline.\n")
    lines.append("| budget | rule | members trained (steps) | winner | winner val | winner test (diff) | "
                 "speedup (a) / (b) / (c) |")
    lines.append("|---|---|---|---|---|---|---|")
    for budget in args.budgets:
        for rule in ("halving", "halving-projected", "halving-pareto", "fastest", "accuracy"):
            out = run_rule(rule, curves, budget, base_val=base_val)
            w = out["winner"]
            m = out["members"][w]
            d = deployed.get(w, {})
            trained = ", ".join(f"{curves[n]['shape']} ({out['members'][n]['steps'] if n in out['members'] else 'out'})"
                                for n in out["chosen"])
            sp = (f"{d['speedup_over_torch_fp32_base']:.2f}x / {d['speedup_over_runtime_fp32_base']:.2f}x / "
                  f"{d['speedup_over_quantized_base']:.2f}x") if d else "n/a"
            lines.append(f"| {budget / 60:.0f} min | {rule} | {trained} | {curves[w]['shape']} | {m['val']:.4f} | "
                         f"{m['test']:.4f} ({100 * (m['test'] - base_test):+.2f}) | {sp} |")
            rows.append({**out, "winner_shape": curves[w]["shape"], "winner_test": m["test"], "winner_val": m["val"],
                         "winner_speedups": {k: d.get(k) for k in ("speedup_over_torch_fp32_base",
                                                                   "speedup_over_runtime_fp32_base",
                                                                   "speedup_over_quantized_base")}})
    lines.append("\nEach shape trained alone to its planned length (the curves), best validation checkpoint:\n")
    lines.append("| trial | shape | trial val (60 steps) | step 400: val / test | best: step, val / test | s/step |")
    lines.append("|---|---|---|---|---|---|")
    for n, e in sorted(((n, e) for n, e in curves.items() if not n.startswith("_")), key=lambda x: x[1]["latency_ratio"]):
        at400 = prefix(e, 400, patience=0)
        best = prefix(e, e["steps"], patience=0)
        step_best = max(e["curve"], key=lambda c: c["validation"])["step"]
        lines.append(f"| {n} | {e['shape']} | {e['trial_val']:.4f} | {at400['val']:.4f} / {at400['test']:.4f} | "
                     f"{step_best}, {best['val']:.4f} / {best['test']:.4f} ({100 * (best['test'] - base_test):+.2f}) | "
                     f"{e['train_seconds_per_step']:.3f} |")
    (HERE / "rules.md").write_text("\n".join(lines) + "\n")
    (HERE / "rules.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
