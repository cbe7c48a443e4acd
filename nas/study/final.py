"""After the trials: the final stage, and the front's test evaluation.

`final_stage` trains the search.final_k chosen front members longer (final.*), from their trial
weights, and evaluates them on validation and test; it is resumable (members already done are
skipped). `evaluate_front_on_test` scores every front member's trial weights on the test split.
Both record their results as study attributes (a finished trial's own attributes are frozen);
the reports merge them in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from nas.quality.metrics import evaluate
from nas.spec import SubnetSpec
from nas.study.report import DEPLOYED_KEYS, choose_final, cost_column, pareto_frame, quality_column
from nas.study.weights import RunWeights


def final_stage(study: Any, *, weights: RunWeights, evaluator: Any, objectives: Any, final_k: int, recipe: Any,
                say: Callable[[str], None], clock: Callable[[str, float], None],
                write: Callable[[Any], Any]) -> None:
    """`evaluator` (nas.study.trial.Evaluator) trains with `recipe` (TrainSettings) and measures."""
    quality = quality_column(objectives)  # val_accuracy, or val_perplexity (LM)
    front = pareto_frame(study, None, cost=cost_column(objectives), quality=quality)
    chosen = choose_final(front, final_k, quality=quality)
    q = quality.removeprefix("val_")
    if not chosen:
        return
    done = {int(n) for n in (study.user_attrs.get("final") or {})}
    todo = [n for n in chosen if n not in done or not weights.final_path(n).is_file()]
    fs = recipe
    say(f"final stage: trials {', '.join(map(str, chosen))} trained {fs.max_steps} more steps "
        f"(lr {fs.lr:g}, distill {fs.distill}, weight {fs.distill_weight:g}); "
        f"{len(todo)} to train" + (f", {len(chosen) - len(todo)} done before" if len(todo) < len(chosen) else ""))
    for number in todo:
        trial = study.trials[number]
        if not weights.trial_path(number).is_file():
            say(f"final stage: trial {number}'s weights are not in this run folder (another worker's); skipped")
            continue
        spec = SubnetSpec.from_dict(trial.user_attrs["spec"])
        model = weights.load(trial)
        t0 = time.perf_counter()
        evaluator.fit(model, spec, fs)
        seconds = time.perf_counter() - t0
        clock("final training", seconds)
        t0 = time.perf_counter()
        result = {f"val_{q}": evaluator.quality_of(model, spec, "validation")[1],
                  f"test_{q}": evaluator.quality_of(model, spec, "test")[1], "steps": fs.max_steps,
                  "seconds": round(seconds, 1)}
        clock("evaluation", time.perf_counter() - t0)
        deployed = {}
        if q == "accuracy":  # as it will run (runtime and precision), timed against each baseline
            deployed = evaluator.deployed(model, spec, name=f"final_{number}", precision=trial.user_attrs.get("precision"))
            result.update({k: v for k, v in deployed.items() if k in DEPLOYED_KEYS})
        weights.save(model, weights.final_path(number))
        latest = dict(study.user_attrs.get("final") or {})  # other workers may have added theirs
        latest[str(number)] = result
        study.set_user_attr("final", latest)
        a = trial.user_attrs
        short = q[:3] if q == "accuracy" else "ppl"
        say(f"final    {number:3d} {a['shape']:28s} val {short} {a[f'val_{q}']:.4f} -> {result[f'val_{q}']:.4f}"
            f"  test {short} {result[f'test_{q}']:.4f}  speedup {a['speedup']:.2f}x  ({seconds:.0f}s)")
        if deployed:
            say(f"deployed {number:3d} {deployed['variant']}: val acc {deployed['val_accuracy_deployed']:.4f}  "
                f"test acc {deployed['test_accuracy_deployed']:.4f}  speedup "
                f"{deployed['speedup_over_quantized_base']:.2f}x over the base in the same runtime and precision, "
                f"{deployed['speedup_over_runtime_fp32_base']:.2f}x over it at fp32, "
                f"{deployed['speedup_over_torch_fp32_base']:.2f}x over it in torch fp32 (measured: "
                f"{deployed['definition']})")
        write(study)


def evaluate_front_on_test(study: Any, *, weights: RunWeights, prep: Any, lm: bool, batch_size: int,
                           clock: Callable[[str, float], None]) -> None:
    """Test accuracy (perplexity) of every front member that has its weights in this run folder."""
    t0 = time.perf_counter()
    attr = "test_perplexity" if lm else "test_accuracy"
    known = {int(k): v for k, v in (study.user_attrs.get(attr) or {}).items()}
    for trial in study.best_trials:
        if trial.number in known or not weights.trial_path(trial.number).is_file():
            continue
        model = weights.load(trial)
        loader = prep.loader("test", trial.user_attrs["context"], batch_size=batch_size, shuffle=False)
        known[trial.number] = evaluate(model, loader, lm=lm)[1]
        study.set_user_attr(attr, {str(k): v for k, v in sorted(known.items())})
    clock("evaluation", time.perf_counter() - t0)
