"""A language-modelling study's final stage (`lm_final_stage`): the fastest front members within
final.ppl_slack of the base's perplexity, trained a fixed final.max_steps with the trials' trainer
(nas.quality.finetune) or measured untrained, then each measured as deployed (llama.cpp, GGUF); the winner
is the fastest file within final.ppl_band of the base's perplexity per byte, whatever made it: a member, or
the base alone (quantized, its vocabulary cut: the study's `quantization_alone` rows, nas.study.search).

Perplexity here is per byte of the evaluation text (nas.quality.metrics): a cut vocabulary tokenizes the same
text into other tokens, so per-token figures of different files do not compare."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from nas.quality.metrics import SCORE_NAMES
from nas.spec import SubnetSpec
from nas.study.report import WINNER_ATTR, cost_column, measured_members, pareto_frame, quality_column
from nas.study.settings import QUANT_ALONE_ATTR
from nas.study.weights import RunWeights

ALONE_PREFIX = "base "  # a winner that is the base alone: "base <precision>[ V<vocab>]" (a quantization_alone key)


def lm_members(front: pd.DataFrame, k: int, *, base_ppl: float, slack: float, cost: str,
               quality: str = "val_byte_perplexity") -> list[int]:
    """A language model's final members: the `k` fastest front members whose trial validation perplexity is
    at most (1 + slack) times the base's; too few such members: the lowest perplexities fill up."""
    members = measured_members(front, quality=quality, cost=cost)
    close = members[members[quality] <= base_ppl * (1 + slack)].sort_values([cost, quality])
    chosen = [int(n) for n in close["number"]][:k]
    for n in members.sort_values([quality, cost])["number"]:
        if len(chosen) >= k:
            break
        if int(n) not in chosen:
            chosen.append(int(n))
    return chosen


def lm_speedup(result: Mapping[str, Any]) -> float | None:
    """A final member's decode speedup over the run's reference: the base at latency.precision (reference_base when
    the member runs at another GGUF type, else quantized_base, the same thing)."""
    for key in ("speedup_over_reference_base", "speedup_over_quantized_base", "speedup"):
        if result.get(key) is not None:
            return float(result[key])
    return None


def lm_quality(result: Mapping[str, Any]) -> float | None:
    """A file's validation perplexity per byte as deployed (a final member's, or a quantization_alone row's)."""
    for key in ("val_byte_perplexity_deployed", "val_byte_perplexity"):
        if result.get(key) is not None:
            return float(result[key])
    return None


def lm_winner(final: Mapping[str, Mapping[str, Any]], *, base_ppl: float, band: float,
              alone: Mapping[str, Mapping[str, Any]] | None = None) -> int | str | None:
    """The fastest file (decode speedup over the base at the reference type) whose validation perplexity per byte as
    deployed is within `band` (a fraction) of the base's as deployed: among the final members (their trial numbers)
    and the base alone at each type and vocabulary (`alone`: the quantization_alone rows; their key, prefixed
    ALONE_PREFIX); none within: the lowest perplexity among the members (or, without members, the rows)."""
    members = [(int(n), lm_quality(r), lm_speedup(r)) for n, r in final.items()]
    rows = [(f"{ALONE_PREFIX}{key}", lm_quality(r), lm_speedup(r)) for key, r in (alone or {}).items()]
    members = [(n, float(q), float(s or 0.0)) for n, q, s in members if q is not None]
    rows = [(n, float(q), float(s or 0.0)) for n, q, s in rows if q is not None]
    within = [r for r in members + rows if r[1] <= base_ppl * (1 + band) + 1e-12]
    if within:  # the fastest; a tie goes to the lower perplexity, then to a member
        return max(within, key=lambda r: (r[2], -r[1], isinstance(r[0], int)))[0]
    pool = members or rows
    if not pool:
        return None
    return min(pool, key=lambda r: (r[1], -r[2]))[0]


def r_precision(result: Mapping[str, Any]) -> str:
    return str(result.get("precision") or "")


def lm_final_stage(study: Any, *, weights: RunWeights, evaluator: Any, objectives: Any, settings: Any, recipe: Any,
                   say: Callable[[str], None], clock: Callable[[str, float], None], write: Callable[[Any], Any]) -> None:
    """A language model's final stage: the final_k fastest front members within settings.ppl_slack of the base's
    validation perplexity (as deployed), each trained from its (healed) trial weights by evaluator.fit_lm within
    an equal share of what is left of final.time_budget (best validation checkpoint: no worse than it came), then
    measured as deployed at its own GGUF type (evaluator.deployed: its file's perplexity in llama.cpp, its decode
    speedup over the base at the reference type and over the base quantized alike). The winner: the fastest
    within settings.ppl_band of the base's deployed validation perplexity."""
    quality = quality_column(objectives)  # val_byte_perplexity
    cost = cost_column(objectives)
    front = pareto_frame(study, None, cost=cost, quality=quality)
    base = study.user_attrs.get("base", {})
    base_ppl = float(base[quality])
    # untrained members are measured as they are: one outside the band cannot win, so the band is their slack
    slack = settings.ppl_slack if recipe.max_steps > 0 else min(settings.ppl_slack, settings.ppl_band)
    chosen = lm_members(front, settings.members, base_ppl=base_ppl, slack=slack, cost=cost, quality=quality)
    # how they were chosen (the base's perplexity the slack was read against), for the reports and a resumed run
    study.set_user_attr("final_members", {"base_ppl": base_ppl, "slack": slack, "chosen": chosen})
    if not chosen:
        return
    started = time.perf_counter()
    deadline = None if settings.time_budget is None else started + float(settings.time_budget)
    done = {int(n) for n in (study.user_attrs.get("final") or {})}
    todo = [n for n in chosen if n not in done or not weights.final_path(n).is_file()]
    fs = recipe
    shapes = ", ".join(f"{n} ({study.trials[n].user_attrs.get('shape')} {study.trials[n].user_attrs.get('precision') or ''}, "
                       f"{study.trials[n].user_attrs.get('speedup', 0):.2f}x, "
                       f"val ppl/byte {study.trials[n].user_attrs.get(quality, float('nan')):.4f})" for n in chosen)
    cap = base_ppl * (1 + slack)
    close = sum(study.trials[n].user_attrs.get(quality, math.inf) <= cap for n in chosen)
    within = f"{1 + slack:g}x the base's perplexity per byte ({base_ppl:.4f})" + (
        "" if slack == settings.ppl_slack else " (final.ppl_band: untrained members are measured as they are)")
    how = (f"the fastest front members within {within}" if close == len(chosen) else
           f"{close} front member(s) within {within}, the lowest perplexities fill up")
    budget = "" if settings.time_budget is None else f" within final.time_budget={settings.time_budget:g}s"
    training = (f"each up to {fs.max_steps} more steps{budget} (lr {fs.lr:g}, distill weight {fs.distill_weight:g}, "
                f"top-{fs.distill_topk or 'all'} KL, {fs.resolved_precision})" if fs.max_steps > 0 else
                "not trained (final.max_steps=0): measured as deployed")
    say(f"final stage: {how}: {shapes}; {training}"
        + (f"; {len(chosen) - len(todo)} done before" if len(todo) < len(chosen) else ""))
    base_deployed_ppl = float(base.get("val_byte_perplexity_deployed") or base_ppl)
    for i, number in enumerate(todo):
        trial = study.trials[number]
        if not weights.trial_path(number).is_file():
            say(f"final stage: trial {number}'s weights are not in this run folder (another worker's); skipped")
            continue
        spec = SubnetSpec.from_dict(trial.user_attrs["spec"])
        precision = trial.user_attrs.get("precision")
        model = weights.load(trial)
        t0 = time.perf_counter()
        # an equal share of what is left: a member that stops early leaves its time to the next ones
        share = None if deadline is None else t0 + max(0.0, deadline - t0) / (len(todo) - i)
        if fs.max_steps > 0:
            trained = evaluator.fit_lm(model, spec, fs, progress=f"final member {number}", deadline=share,
                                       eval_every=settings.recipe.eval_every, patience=settings.recipe.patience)
        else:  # final.max_steps=0: the healed trial as it is, measured as deployed
            trained = {"steps": 0, "best_step": 0, "stopped": "final.max_steps=0", "precision": "none"}
        seconds = time.perf_counter() - t0
        clock("final training", seconds)
        t0 = time.perf_counter()
        result = {**evaluator.text_metrics(model, spec, "validation", "val"),  # in torch fp32, per byte and per token
                  **evaluator.text_metrics(model, spec, "test", "test"), "steps": trained["steps"],
                  "best_step": trained["best_step"], "stopped": trained["stopped"], "precision": precision,
                  "train_precision": trained["precision"], "seconds": round(seconds, 1)}
        clock("evaluation", time.perf_counter() - t0)
        baselines, reused = evaluator.lm_baselines(precision), {}
        if fs.max_steps <= 0 and "reference_base" in baselines:
            # untrained, the member's file is the trial's: its paired rounds against the reference base stand
            a = trial.user_attrs
            reused = {f"speedup_over_reference_base{k}": a.get(f"speedup{k}") for k in ("", "_p10", "_p90")}
            baselines = tuple(b for b in baselines if b != "reference_base")
        # untrained, the member's file is its trial's, byte for byte: where this process wrote it (kept while the trial
        # is on the front), it is timed as it is, and the trial's llama.cpp scores of it (validation and test) are the
        # member's as deployed; a resumed run (another process) writes and scores it again
        reuse = fs.max_steps <= 0 and evaluator.in_llamacpp and \
            evaluator.timer.gguf_path(f"trial_{number}", precision).is_file()
        keys = [f"{split}_{name}" for split in ("val", "test") for name in SCORE_NAMES]
        scored = {f"{k}_deployed": trial.user_attrs[k] for k in keys} if reuse and all(
            k in trial.user_attrs for k in keys) else {}
        result.update(evaluator.deployed(model, spec, name=f"trial_{number}" if reuse else f"final_{number}",
                                         precision=precision, baselines=baselines, reuse=reuse, scored=scored))
        result.update({k: v for k, v in reused.items() if v is not None})
        result["file_from_trial"] = reuse
        weights.save(model, weights.final_path(number))
        latest = dict(study.user_attrs.get("final") or {})  # other workers may have added theirs
        latest[str(number)] = result
        study.set_user_attr("final", latest)
        a = trial.user_attrs
        deployed = ""
        if "val_byte_perplexity_deployed" in result:
            whose = ", the trial's file" if reuse else ""
            deployed = (f"; as deployed ({result.get('variant')}{whose}): val ppl/byte "
                        f"{result['val_byte_perplexity_deployed']:.4f}, test ppl/byte "
                        f"{result['test_byte_perplexity_deployed']:.4f} (test ppl per base token "
                        f"{result['test_perplexity_deployed']:.2f}), decode {lm_speedup(result):.2f}x over the "
                        f"base at {evaluator.timer.settings.precision}")
        say(f"final    {number:3d} {a['shape']:28s} val ppl/byte: trial {a[quality]:.4f}, in torch fp32 "
            f"{result['val_byte_perplexity']:.4f} (best of {trained['steps']} steps at step {trained['best_step']}, "
            f"{trained['stopped']}; {seconds:.0f}s){deployed}")
        write(study)
    final = {str(n): r for n, r in (study.user_attrs.get("final") or {}).items() if int(n) in chosen}
    alone = {k: r for k, r in (study.user_attrs.get(QUANT_ALONE_ATTR) or {}).items()}
    best = lm_winner(final, base_ppl=base_deployed_ppl, band=settings.ppl_band, alone=alone)
    if best is not None:
        study.set_user_attr(WINNER_ATTR, best)
        if isinstance(best, str):
            r, what = alone[best[len(ALONE_PREFIX):]], f"the base alone at {best[len(ALONE_PREFIX):]}"
        else:
            r, what = final[str(best)], f"trial {best} ({study.trials[best].user_attrs.get('shape')} {r_precision(final[str(best)])})"
        ppl = lm_quality(r)
        within = ppl <= base_deployed_ppl * (1 + settings.ppl_band) + 1e-12
        say(f"final stage winner: {what}, "
            + (f"the fastest file within {100 * settings.ppl_band:g}% of the base's perplexity per byte" if within else
               f"no member is within {100 * settings.ppl_band:g}% of the base's perplexity per byte: the lowest")
            + f": val ppl/byte {ppl:.4f} (base {base_deployed_ppl:.4f}), decode {lm_speedup(r) or 1.0:.2f}x over the "
            f"base at {evaluator.timer.settings.precision}; test ppl/byte "
            f"{r.get('test_byte_perplexity_deployed', r.get('test_byte_perplexity', float('nan'))):.4f}")
    say(f"final stage: {(time.perf_counter() - started) / 60:.1f} min")
    write(study)

