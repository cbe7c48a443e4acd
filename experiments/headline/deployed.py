"""The headline as deployed: a finished main-command run (`python -m nas.search +space=triple`) re-measured
in onnxruntime int8, each speedup over its named baseline, with paired bootstrap intervals.

    python experiments/headline/deployed.py RUN_DIR [--sample 32] [--rounds 5] [--resamples 2000]

For every front member (final-trained weights where the final stage trained it) and for the unpruned
base quantized alone (the int8-only row):
- test accuracy as deployed (its int8 ONNX session, one review at a time as served) and in fp32 (torch), per review;
- its speedup, timed in paired rounds with each baseline in turn on real validation reviews (batch 1,
  1 thread), over (a) the base in torch fp32, (b) the base in onnxruntime fp32, (c) the base in
  onnxruntime int8 quantized the same way (quantization alone);
- a paired bootstrap 90% interval of its test-accuracy difference to the fp32 base (same reviews resampled).
The largest speedup over (c) within 1.0 and 3.0 test points of the fp32 base goes to results_deployed.json
(speedup_at_1pt_over_quantized_base, speedup_at_3pt_over_quantized_base, with the (a) and (b) figures of
the same models) and results_deployed.md. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))


def correct(session_or_model, loader) -> np.ndarray:
    """Per-review correctness (1/0) of an onnxruntime session (as served: one review at a time, its real tokens;
    nas.deploy.onnx.session_correct) or a torch fp32 model (batched: padding is masked out exactly in fp32)."""
    import torch

    from nas.deploy.onnx import session_correct

    if hasattr(session_or_model, "run"):
        return session_correct(session_or_model, loader)
    out = []
    for batch in loader:
        with torch.inference_mode():
            logits = session_or_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out.append((logits.numpy().argmax(-1) == batch["labels"].numpy()).astype(np.int8))
    return np.concatenate(out)


def bootstrap(model: np.ndarray, base: np.ndarray, *, resamples: int, seed: int = 0) -> tuple[float, float]:
    """90% interval of mean(model) - mean(base) over paired resamples of the same reviews, in points."""
    from experiments.bench import paired_bootstrap

    return paired_bootstrap(model, base, resamples=resamples, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--sample", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--final-only", action="store_true", help="only the members the final stage trained")
    ap.add_argument("--out", default=str(HERE), help="folder for results_deployed.json / .md")
    args = ap.parse_args()

    import pandas as pd

    from nas.cost.latency import PairedTimer, latency_settings
    from nas.deploy.onnx import onnx_session
    from nas.spec import SubnetSpec
    from nas.study.prepare import prepare
    from nas.study.runs import load_run, rebuild_trial_model
    from nas.util import quiet_libraries

    quiet_libraries()
    run_dir = Path(args.run_dir).resolve()
    cfg, study = load_run(run_dir)
    prep = prepare(cfg)  # the cached fine-tuned base
    max_length = int(cfg.get("max_length", 128))
    settings = replace(latency_settings(cfg, {"sample_size": args.sample, "rounds": args.rounds}).resolved(lm=False),
                       model="measured")
    timer = PairedTimer.for_prepared(prep, settings, max_length=max_length)
    positions = int(prep.shape.max_positions)

    def test_loader(context: int):
        return prep.loader("test", context, batch_size=64, shuffle=False)

    base_fp32 = correct(prep.base.eval(), test_loader(positions))
    rows = []

    def row(name: str, shape: str, model, context: int, fp32_correct: np.ndarray) -> dict:
        m = timer.measure_baselines(model, context=context, name=name)
        deployed = correct(onnx_session(timer.deployed_path(name), threads=1), test_loader(context))
        lo, hi = bootstrap(deployed, base_fp32, resamples=args.resamples)
        r = {"model": name, "shape": shape, "test_accuracy_deployed": float(deployed.mean()),
             "test_accuracy_fp32": float(fp32_correct.mean()), "diff_points": float((deployed.mean() - base_fp32.mean()) * 100),
             "diff_points_90ci": [round(lo, 2), round(hi, 2)], "latency_ms": m["latency_ms"],
             **{k: v for k, v in m.items() if k.startswith("speedup_over_") or k.startswith("base_latency_ms_")}}
        print(f"{name:10s} {shape:28s} test int8 {r['test_accuracy_deployed']:.4f} (fp32 {r['test_accuracy_fp32']:.4f}; "
              f"diff {r['diff_points']:+.2f} pt, 90% CI {lo:+.2f}..{hi:+.2f})  speedup over (c) "
              f"{m['speedup_over_quantized_base']:.2f}x (b) {m['speedup_over_runtime_fp32_base']:.2f}x "
              f"(a) {m['speedup_over_torch_fp32_base']:.2f}x", flush=True)
        rows.append(r)
        return r

    row("base_int8", "base, quantized alone", prep.base, positions, base_fp32)
    front = pd.read_csv(run_dir / "pareto.csv")
    finals = front[~front["is_base"].fillna(False).astype(bool)]  # every member: final weights where trained
    if "exits" in finals:  # a member's row with early exits is the same model (exits: experiments/early_exit)
        finals = finals[finals["exits"].isna()]
    label_names = tuple(study.user_attrs.get("label_names") or ())
    if args.final_only:
        finals = finals[finals["final_val_accuracy"].notna()]
    for _, f in finals.iterrows():
        number = int(f["number"])
        spec = SubnetSpec.from_dict(study.trials[number].user_attrs["spec"])
        model = rebuild_trial_model(cfg, run_dir, number, spec, len(label_names) or 2, label_names or None).eval()
        row(f"trial_{number}", spec.describe(), model, spec.context, correct(model, test_loader(spec.context)))
    timer.close()

    base_acc = float(base_fp32.mean())
    summary = {"run_dir": str(run_dir), "latency_definition": replace(settings, model="measured").describe(),
               "baselines": {"a": "the unpruned base in torch fp32", "b": "the base in onnxruntime fp32",
                             "c": "the base in onnxruntime int8, quantized the same way (quantization alone)"},
               "base_test_accuracy_fp32": base_acc, "test_reviews": int(len(base_fp32)), "rows": rows}
    for pts in (1, 3):
        ok = [r for r in rows if r["model"] != "base_int8" and r["diff_points"] >= -pts]
        best = max(ok, key=lambda r: r["speedup_over_quantized_base"], default=None)
        summary[f"speedup_at_{pts}pt_over_quantized_base"] = best["speedup_over_quantized_base"] if best else None
        summary[f"speedup_at_{pts}pt_over_runtime_fp32_base"] = best["speedup_over_runtime_fp32_base"] if best else None
        summary[f"speedup_at_{pts}pt_over_torch_fp32_base"] = best["speedup_over_torch_fp32_base"] if best else None
        summary[f"chosen_at_{pts}pt"] = best["shape"] if best else None
    (Path(args.out) / "results_deployed.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = ["# Headline as deployed (onnxruntime int8)", "",
             f"Run: the main command's own run ({run_dir.name}); speed: {summary['latency_definition']}; test: "
             f"{summary['test_reviews']} reviews; base (fp32) test accuracy {base_acc:.4f}.", "",
             "| model | shape | test acc int8 (fp32) | diff to fp32 base, 90% CI | over (c) int8 base | over (b) ORT fp32 base | over (a) torch fp32 base |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["diff_points_90ci"]
        lines.append(f"| {r['model']} | {r['shape']} | {r['test_accuracy_deployed']:.4f} ({r['test_accuracy_fp32']:.4f}) | "
                     f"{r['diff_points']:+.2f} ({lo:+.2f}..{hi:+.2f}) | {r['speedup_over_quantized_base']:.2f}x | "
                     f"{r['speedup_over_runtime_fp32_base']:.2f}x | {r['speedup_over_torch_fp32_base']:.2f}x |")
    for pts in (1, 3):
        s = summary[f"speedup_at_{pts}pt_over_quantized_base"]
        lines.append("")
        lines.append(f"- within {pts}.0 test point of the fp32 base: " + (
            f"{s:.2f}x over (c), {summary[f'speedup_at_{pts}pt_over_runtime_fp32_base']:.2f}x over (b), "
            f"{summary[f'speedup_at_{pts}pt_over_torch_fp32_base']:.2f}x over (a) ({summary[f'chosen_at_{pts}pt']})"
            if s else "nothing"))
    (Path(args.out) / "results_deployed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
