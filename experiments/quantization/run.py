"""Which int8 is fastest here, and what it costs in accuracy: onnxruntime fp32 against dynamic int8,
static QDQ int8 (uint8 and int8 activations, calibrated on 64 training reviews) and dynamic int8
with the classifier kept in fp32, for the fine-tuned base and one pruned shape.

    python experiments/quantization/run.py [--sample 32] [--rounds 5]

All variants of a model are timed in one set of interleaved rounds (real validation reviews, batch 1,
1 thread); accuracy is each ONNX session's on the validation split. Writes results.json and
results.md here. Run it alone on the machine. The pruned shape is cut without training: its accuracy
column only shows that quantization does not move it, its speed is the point.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from omegaconf import OmegaConf

    from nas.config import compose
    from nas.cost.latency import InputSample, LatencySettings, interleaved_rounds, num_threads, onnx_pass
    from nas.cut.prune import prune_model
    from nas.deploy.onnx import export_onnx, onnx_session, session_accuracy
    from nas.deploy.quantize import QuantSettings, quantize_onnx
    from nas.spec import SubnetSpec
    from nas.study.prepare import prepare
    from nas.util import quiet_libraries

    quiet_libraries()
    cfg = compose([])
    c = OmegaConf.to_container(cfg, resolve=True)
    prep = prepare(cfg)
    settings = replace(LatencySettings.from_cfg({**c["latency"], "sample_size": args.sample, "rounds": args.rounds})
                       .resolved(lm=False), model="measured")
    sample = InputSample.from_task(prep.task, prep.tokenizer, settings, cap=128)
    calibration = InputSample.from_task(prep.task, prep.tokenizer, replace(settings, split="train", sample_size=64), cap=128)
    variants = {
        "fp32": None,
        "dynamic int8": QuantSettings(),
        "dynamic int8, classifier fp32": QuantSettings(keep_fp32=("classifier",)),
        "static int8 (uint8 act.)": QuantSettings(quantization="static"),
        "static int8 (int8 act.)": QuantSettings(quantization="static", activations="int8"),
    }
    models = {"base L6 H12 F1536 D384": (prep.base, 128)}
    spec = SubnetSpec(layers=(0, 1, 2), heads=(8,) * 3, ffn=(768,) * 3, hidden=384, context=128)
    models["pruned " + spec.describe()] = (prune_model(prep.base, spec, prep.scores), 128)
    results = {"definition": settings.describe(runtime=False), "models": {}}
    with tempfile.TemporaryDirectory() as tmp, num_threads(1):
        for label, (model, cap) in models.items():
            fp32 = Path(tmp) / f"{len(results['models'])}.onnx"
            export_onnx(model, fp32, max_seq=cap)
            paths = {}
            for name, quant in variants.items():
                paths[name] = fp32 if quant is None else quantize_onnx(
                    fp32, Path(tmp) / f"{len(results['models'])}_{len(paths)}.onnx", quant,
                    calibration=calibration.batches(cap))
            sessions = {name: onnx_session(p, threads=1) for name, p in paths.items()}
            ms = interleaved_rounds({n: onnx_pass(s, sample.batches(cap)) for n, s in sessions.items()},
                                    n_batches=len(sample.batches(cap)), n_inputs=len(sample), rounds=args.rounds)
            row = {}
            for name, session in sessions.items():
                ratios = sorted(f / m for f, m in zip(ms["fp32"], ms[name]))
                val = session_accuracy(session, prep.loader("validation", cap, batch_size=64, shuffle=False))
                row[name] = {"ms": statistics.median(ms[name]), "speedup_over_fp32": statistics.median(ratios),
                             "val_accuracy": val, "size_mb": paths[name].stat().st_size / 1e6}
                print(f"{label:34s} {name:30s} {row[name]['ms']:.2f} ms  {row[name]['speedup_over_fp32']:.2f}x over "
                      f"onnxruntime fp32  val {val:.4f}  {row[name]['size_mb']:.1f} MB", flush=True)
            results["models"][label] = row
    (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# int8 variants in onnxruntime", "", f"{results['definition']}, onnxruntime; each model's variants "
             "timed in one set of interleaved rounds; speedup over the same model in onnxruntime fp32.", "",
             "| model | variant | ms per input | speedup over fp32 | validation accuracy | file MB |", "|---|---|---|---|---|---|"]
    for label, row in results["models"].items():
        for name, r in row.items():
            lines.append(f"| {label} | {name} | {r['ms']:.2f} | {r['speedup_over_fp32']:.2f}x | {r['val_accuracy']:.4f} | "
                         f"{r['size_mb']:.1f} |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
