"""Which layers a deep cut should keep when it is then trained to convergence: the same shape (a real
trial's heads, FFN, hidden size and context) with its layers chosen by the importance scores (what the
search keeps) or by fixed rules (bottom, spread, top), each distilled with the final recipe; validation
and test accuracy at the best validation checkpoint.

    NAS_CACHE_DIR=/work/cache python experiments/final_stage/layers.py --study RUN/study.db --trial 8 \
        --layers 0,1,2 0,2,4 3,4,5
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--study", required=True)
    p.add_argument("--trial", type=int, required=True)
    p.add_argument("--layers", nargs="+", required=True)
    p.add_argument("--overrides", nargs="*", default=[])
    args = p.parse_args()

    import optuna
    import torch
    from omegaconf import OmegaConf

    from nas.config import compose
    from nas.cut.recovery import RecoverySettings
    from nas.data.transfer import TransferSettings
    from nas.quality.metrics import accuracy
    from nas.spec import SubnetSpec
    from nas.study.prepare import prepare
    from nas.study.settings import final_recipe, final_train_settings
    from nas.study.trial import Evaluator

    torch.set_num_threads(2)
    cfg = compose(["+space=triple", *args.overrides])
    container = OmegaConf.to_container(cfg, resolve=True)
    recipe = final_recipe(container)
    prep = prepare(cfg)
    ev = Evaluator(prep=prep, timer=None, train=final_train_settings(container),
                   recovery=RecoverySettings.from_cfg(container.get("prune")).resolved("finetune"))
    study = optuna.load_study(study_name="nas", storage=f"sqlite:///{Path(args.study).resolve()}")
    spec0 = SubnetSpec.from_dict(study.trials[args.trial].user_attrs["spec"])
    out_path = HERE / "layers.json"
    out = json.loads(out_path.read_text()) if out_path.is_file() else {}
    out["_meta"] = {"recipe": recipe.describe(), "base_val": prep.base_info["validation_accuracy"],
                    "base_test": prep.base_info["test_accuracy"], "trial": args.trial, "shape": spec0.describe()}
    data = ev.distill_data(spec0.context, TransferSettings(), say=print)
    test = prep.loader("test", spec0.context, batch_size=128, shuffle=False)
    for text in args.layers:
        layers = tuple(int(x) for x in text.split(","))
        key = f"{args.trial}:{text}"
        if key in out:
            continue
        spec = replace(spec0, layers=layers)
        model, _ = ev.candidate(spec)
        run = ev.distill_run(model, spec, recipe, data)
        t0 = time.perf_counter()
        run.advance()
        run.finish()
        out[key] = {"layers": list(layers), "steps": run.step, "best_step": run.best_step,
                    "val": run.best_accuracy, "test": accuracy(model, test), "seconds": round(time.perf_counter() - t0, 1),
                    "curve": run.curve}
        print(f"layers {text}: val {run.best_accuracy:.4f} (step {run.best_step}), test {out[key]['test']:.4f}, "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
        out_path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
