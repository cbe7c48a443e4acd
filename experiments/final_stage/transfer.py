"""Transfer sets, measured: one shape distilled with the final recipe for a fixed number of steps (equal
compute in every condition), with and without teacher-labelled unlabelled texts mixed into each batch,
with all labelled training reviews and with 1,000 of them (the base is then fine-tuned on those 1,000
too: the teacher a user with 1,000 labels has). Test accuracy at the best validation checkpoint, with a
paired bootstrap 90% interval of its difference to the base trained on all labels; minutes spent,
teacher labelling included (cached afterwards).

    NAS_CACHE_DIR=/work/cache python experiments/final_stage/transfer.py --study RUN/study.db --trial 8 \
        [--layers 0,2,4] [--steps 800] [--labels all 1000] [--sources none imdb augment]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))


def correct(model, loader):
    import torch

    from nas.quality.metrics import model_inputs

    out = []
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            out += (model(**model_inputs(batch)).logits.argmax(-1) == batch["labels"]).tolist()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--study", required=True)
    p.add_argument("--trial", type=int, required=True)
    p.add_argument("--layers", default=None)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--labels", nargs="+", default=["all", "1000"])
    p.add_argument("--sources", nargs="+", default=["none", "imdb", "augment"])
    p.add_argument("--size", type=int, default=10000)
    args = p.parse_args()

    import numpy as np
    import optuna
    import torch
    from omegaconf import OmegaConf

    from experiments.bench import paired_bootstrap
    from nas.config import compose
    from nas.cut.recovery import RecoverySettings
    from nas.data.transfer import TransferSettings
    from nas.spec import SubnetSpec
    from nas.study.prepare import prepare
    from nas.study.settings import final_recipe, final_train_settings
    from nas.study.trial import Evaluator

    torch.set_num_threads(2)
    study = optuna.load_study(study_name="nas", storage=f"sqlite:///{Path(args.study).resolve()}")
    spec = SubnetSpec.from_dict(study.trials[args.trial].user_attrs["spec"])
    if args.layers:
        spec = replace(spec, layers=tuple(int(x) for x in args.layers.split(",")))
    out_path = HERE / "transfer.json"
    out = json.loads(out_path.read_text()) if out_path.is_file() else {}
    reference = None
    for labels in args.labels:
        data_over = [] if labels == "all" else [f"data.max_train_samples={labels}"]
        for source in args.sources:
            key = f"{spec.describe()}|{labels}|{source}|{args.steps}"
            cfg = compose(["+space=triple", f"final.max_steps={args.steps}", f"final.transfer={source}",
                           f"final.transfer_size={args.size}", *data_over])
            container = OmegaConf.to_container(cfg, resolve=True)
            t0 = time.perf_counter()
            prep = prepare(cfg)
            prep_s = time.perf_counter() - t0
            test = prep.loader("test", spec.context, batch_size=128, shuffle=False)
            base_test = prep.loader("test", 10**6, batch_size=128, shuffle=False)
            if labels == "all" and reference is None:
                reference = correct(prep.base, base_test)
            if key in out:
                continue
            recipe = final_recipe(container)
            ev = Evaluator(prep=prep, timer=None, train=final_train_settings(container),
                           recovery=RecoverySettings.from_cfg(container.get("prune")).resolved("finetune"))
            t1 = time.perf_counter()
            data = ev.distill_data(spec.context, TransferSettings.from_cfg(container["final"]), say=print)
            data_s = time.perf_counter() - t1
            model, _ = ev.candidate(spec)
            run = ev.distill_run(model, spec, recipe, data)
            run.advance()
            run.finish()
            hits = correct(model, test)
            lo, hi = paired_bootstrap(np.array(hits), np.array(reference)) if reference else (None, None)
            out[key] = {"shape": spec.describe(), "labels": labels, "source": source, "steps": run.step,
                        "best_step": run.best_step, "val": run.best_accuracy, "test": float(np.mean(hits)),
                        "diff_points": 100 * (float(np.mean(hits)) - float(np.mean(reference))) if reference else None,
                        "diff_90ci": [lo, hi], "base_val": prep.base_info["validation_accuracy"],
                        "base_test": prep.base_info["test_accuracy"], "train_rows": len(prep.task.train),
                        "transfer_rows": len(data.labels) - data.labelled_rows,
                        "minutes": round((time.perf_counter() - t0) / 60, 2), "prepare_s": round(prep_s, 1),
                        "teacher_and_data_s": round(data_s, 1), "train_s": round(run.seconds, 1)}
            r = out[key]
            print(f"{labels:>4} labels, transfer {source:7s}: val {r['val']:.4f}, test {r['test']:.4f} "
                  f"({r['diff_points']:+.2f}, 90% CI {lo:+.2f}..{hi:+.2f}) base of this run {r['base_test']:.4f}; "
                  f"{r['minutes']:.1f} min", flush=True)
            out_path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
