"""Training curves of the final recipe on the embedded default: each shape of a real search's front
(the main command's run, its study.db) distilled from the fine-tuned base with the final recipe
(nas.quality.distill.DistillRun; the layers final.layers keeps), validation AND test accuracy recorded every `eval_every` steps, with
the seconds spent. No early stopping here (patience 0): the whole planned length is recorded, so a
member stopped at step s (by a rule, a rung or a budget) is exactly this run's prefix (the learning-rate
schedule is fixed by the planned length), and the member rules can be compared at equal final-stage
time from these curves (simulate.py). Test accuracy never chooses anything.

    NAS_CACHE_DIR=/work/cache python experiments/final_stage/curves.py --study RUN/study.db \
        --trials 2 12 16 15 8 4 11 1 [--tag NAME] [--distill hidden] [--max-train-samples N] [--transfer imdb]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--study", required=True)
    p.add_argument("--trials", type=int, nargs="+", required=True)
    p.add_argument("--tag", default="recipe")
    p.add_argument("--overrides", nargs="*", default=[], help="hydra overrides (final.*, train.*, data.*)")
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
    cfg = compose(["+space=triple", "final.patience=0", *args.overrides])
    container = OmegaConf.to_container(cfg, resolve=True)
    recipe = final_recipe(container)
    transfer = TransferSettings.from_cfg(container["final"])
    t0 = time.perf_counter()
    prep = prepare(cfg)
    prep_s = time.perf_counter() - t0
    recovery = RecoverySettings.from_cfg(container.get("prune")).resolved("finetune")
    ev = Evaluator(prep=prep, timer=None, train=final_train_settings(container), recovery=recovery)
    study = optuna.load_study(study_name="nas", storage=f"sqlite:///{Path(args.study).resolve()}")
    out_path = HERE / f"curves_{args.tag}.json"
    out = json.loads(out_path.read_text()) if out_path.is_file() else {}
    out["_meta"] = {"recipe": recipe.describe(), "transfer": transfer.describe(), "overrides": args.overrides,
                    "study": str(args.study), "base_val": prep.base_info["validation_accuracy"],
                    "base_test": prep.base_info["test_accuracy"], "threads": 2,
                    "train_rows": len(prep.task.train), "prepare_s": round(prep_s, 1)}
    for number in args.trials:
        if str(number) in out:
            continue
        trial = study.trials[number]
        spec = recipe.member_spec(SubnetSpec.from_dict(trial.user_attrs["spec"]), encoder=ev.family.recovery)
        t_data = time.perf_counter()
        data = ev.distill_data(spec.context, transfer, say=print)
        data_s = time.perf_counter() - t_data
        model, _ = ev.candidate(spec)
        test_loader = prep.loader("test", spec.context, batch_size=128, shuffle=False)
        run = ev.distill_run(model, spec, recipe, data)
        eval_s = [0.0]
        real_validate = run.validate

        def validate(run=run, real=real_validate):
            t = time.perf_counter()
            acc = real()
            run.curve[-1]["test"] = accuracy(run.model, test_loader)
            run.curve[-1]["seconds"] = round(run.seconds + time.perf_counter() - run_t0[0], 2)
            eval_s[0] += time.perf_counter() - t
            return acc

        run.validate = validate
        run_t0 = [time.perf_counter()]
        run.advance()
        total = time.perf_counter() - run_t0[0]
        a = trial.user_attrs
        out[str(number)] = {"shape": a["shape"], "layers": list(spec.layers), "trial_val": a["val_accuracy"], "latency_ratio": a["latency_ratio"],
                            "steps": run.step, "planned": run.total, "seconds": round(total, 1),
                            "eval_seconds": round(eval_s[0], 1), "data_seconds": round(data_s, 1),
                            "train_seconds_per_step": round((total - eval_s[0]) / max(1, run.step), 4),
                            "curve": run.curve}
        best = max(run.curve, key=lambda c: c["validation"])
        print(f"{number} {a['shape']}: best val {best['validation']:.4f} at {best['step']} (test {best['test']:.4f}); "
              f"step 400 val {next((c['validation'] for c in run.curve if c['step'] == 400), float('nan')):.4f}; "
              f"{total:.0f}s ({out[str(number)]['train_seconds_per_step']:.3f} s/step)", flush=True)
        out_path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
