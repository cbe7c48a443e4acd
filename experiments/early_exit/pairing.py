"""How the pairing moves the exits' figures: one finished run's final member, with and without its exits, and the
base, all in onnxruntime int8 (each exported and quantized as the final stage does, input_ids only), timed on the
same test reviews (nas.cost.latency.InputSample: stratified by length, each model given them at its own token cap),
batch 1, 1 thread, in one process, three ways:

- with the base: the base, the member and its exits taking turns on every input (the order flips each round), as
  nas.study.exits.measure_exits times them;
- without the base: the member and its exits alone, taking turns on every input;
- with the base, each side over the whole sample in turn (the order flips each round): each model runs as it is
  served, one input after another, its weights warm.

A fourth side, `exits_numpy`, is the same runner with the rule's check as it was before b6a8d32 (the softmax in
numpy): what that change alone moved.

    python experiments/early_exit/pairing.py RUN_DIR [--sample 200] [--rounds 5] [--repeats 2] [--out FILE]

Per way: each side's mean ms per input (each input's median over the rounds), the exits over the member and both
over the base. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))


def numpy_top_probability(logits: np.ndarray) -> tuple[float, int]:
    """The runner's check before b6a8d32: the softmax of one row in numpy, float64."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    e = np.exp(x - x.max())
    p = e / e.sum()
    label = int(p.argmax())
    return float(p[label]), label


def timings(sides: dict, n: int, *, rounds: int, blocks: bool) -> dict[str, float]:
    """Each side's mean ms per input (each input's median over `rounds`); `sides`: name -> a call on input i. Taking
    turns on every input (nas.cost.exits.paired_inputs, as measure_exits times), or each side over the sample in
    turn (`blocks`; the order flips each round); 10 untimed inputs of each side first."""
    from nas.cost.exits import paired_inputs

    if not blocks:
        ms = paired_inputs(sides, n, rounds=rounds, warmup=10)
    else:
        names = list(sides)
        for name in names:
            for i in range(min(10, n)):
                sides[name](i)
        ms = {name: np.zeros((rounds, n)) for name in names}
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                for i in range(n):
                    t0 = time.perf_counter()
                    sides[name](i)
                    ms[name][r, i] = (time.perf_counter() - t0) * 1000.0
    return {name: float(np.median(v, axis=0).mean()) for name, v in ms.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--sample", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    from nas.cost.latency import InputSample, latency_lengths, latency_settings
    from nas.deploy.exit_runner import ExitRunner
    from nas.deploy.exits import export_segments
    from nas.quality.exits import ExitRule
    from nas.spec import SubnetSpec
    from nas.study.exits import heads_path, load_heads
    from nas.study.prepare import prepare
    from nas.study.runs import load_run, rebuild_trial_model
    from nas.util import cpu_features, quiet_libraries

    quiet_libraries()
    run_dir = Path(args.run_dir).resolve()
    cfg, study = load_run(run_dir)
    labels = tuple(study.user_attrs.get("label_names") or ())
    variants = study.user_attrs.get("final_exits") or {}
    number, variant = next(iter(sorted(variants.items(), key=lambda kv: int(kv[0]))))
    spec = SubnetSpec.from_dict(study.user_attrs["final"][number]["spec"])
    model = rebuild_trial_model(cfg, run_dir, int(number), spec, len(labels) or 2, labels or None).eval()
    heads = load_heads(variant["heads"], heads_path(run_dir, int(number)))
    rule = ExitRule.from_dict(variant["rule"])
    prep = prepare(cfg)
    # a length-stratified sample of the test reviews, each at the member's cap and at the base's (the same texts)
    settings = replace(latency_settings(cfg, {}).resolved(lm=False), inputs="real", split="test", batch_size=1,
                       sample_size=args.sample)
    member_cap, base_cap = latency_lengths(None, context=spec.context, max_length=int(cfg.get("max_length", 128)),
                                           max_positions=int(prep.shape.max_positions))
    sample = InputSample.from_task(prep.task, prep.tokenizer, settings, cap=base_cap)
    member_ids = [b["input_ids"] for b in sample.batches(member_cap)]
    base_ids = [b["input_ids"] for b in sample.batches(base_cap)]
    with tempfile.TemporaryDirectory(prefix="pairing_") as tmp:
        tmp = Path(tmp)
        export_segments(model, heads.subset(rule.exits), rule, tmp / "exits", precision="int8")
        export_segments(model, None, None, tmp / "member", precision="int8")
        export_segments(prep.base.eval(), None, None, tmp / "base", precision="int8")
        runners = {name: ExitRunner(tmp / name) for name in ("base", "member", "exits")}
        runners["exits_numpy"] = ExitRunner(tmp / "exits")
        rule_numpy = runners["exits_numpy"].rule
        if rule_numpy.kind != "confidence":
            raise SystemExit(f"{rule.describe()}: the numpy side is written for the confidence rule")
        rule_numpy.fires = lambda logits: numpy_top_probability(logits)[0] > float(rule_numpy.threshold)
        def side(name):
            runner, xs = runners[name], base_ids if name == "base" else member_ids
            return lambda i: runner(xs[i])

        sides3 = {name: side(name) for name in ("base", "member", "exits", "exits_numpy")}
        sides2 = {name: side(name) for name in ("member", "exits", "exits_numpy")}
        result = {"run_dir": str(run_dir), "member": spec.describe(), "rule": rule.describe(),
                  "machine": cpu_features(), "sample": len(member_ids), "rounds": args.rounds,
                  "definition": "real test reviews (length-stratified), batch 1, 1 thread, onnxruntime int8 "
                                "(dynamic, per-channel), each input's median over the rounds", "ways": []}
        for repeat in range(args.repeats):
            for way, sides, blocks in (("with the base, turns on every input", sides3, False),
                                       ("without the base, turns on every input", sides2, False),
                                       ("with the base, each over the sample in turn", sides3, True)):
                ms = timings(sides, len(member_ids), rounds=args.rounds, blocks=blocks)
                row = {"way": way, "repeat": repeat, "ms": {k: round(v, 4) for k, v in ms.items()},
                       "exits_over_member": round(ms["member"] / ms["exits"], 3),
                       "exits_numpy_over_member": round(ms["member"] / ms["exits_numpy"], 3)}
                if "base" in ms:
                    row.update(member_over_base=round(ms["base"] / ms["member"], 3),
                               exits_over_base=round(ms["base"] / ms["exits"], 3))
                print(json.dumps(row), flush=True)
                result["ways"].append(row)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
