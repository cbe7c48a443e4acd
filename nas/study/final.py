"""After the trials: the final stage, and the front's test evaluation.

`final_stage` chooses front members by final.rule (nas.study.settings.FinalSettings), trains them to
convergence with the final recipe (nas.quality.distill: epochs, validation early stopping, best
checkpoint), measures each on validation and test and as deployed, and names the winner: the fastest
member within final.band points of the base on the judge rows (validation rows no selection read). With
the halving rule, several fast candidates are trained briefly first and only the half whose validation
curves project highest at their planned length (projected_accuracy) goes on, rung after rung. The whole
stage keeps to final.time_budget: before rung 0 it times a few training steps of each candidate and plans the
stage from them (nas.study.final_plan: fewer candidates, then shorter rungs, before members shorter than planned).
It is resumable: members done are not trained again, candidates eliminated stay out, and survivors of a finished
rung resume from the weights saved at its end.

A language-modelling study's final stage is nas.study.lm_final.lm_final_stage.

`evaluate_front_on_test` scores every front member's trial weights on the test split. Both record
their results as study attributes (a finished trial's own attributes are frozen); the reports merge
them in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import pandas as pd

from nas.quality.metrics import evaluate
from nas.spec import SubnetSpec
from nas.study.final_plan import (EVALUATION_VALIDATIONS, PROBE_STEPS, RUNG_POINTS, FinalPlan, StepCost, member_seconds,
                                  paced_length, plan_final, rung_stops)
from nas.study.report import (DEPLOYED_KEYS, EXITS_ATTR, WINNER_ATTR, WINNER_EXITS_ATTR, choose_final, cost_column,
                              measured_members, pareto_frame)
from nas.study.lm_final import lm_final_stage
from nas.study.exits import EXIT_EVALUATION_VALIDATIONS, exits_for, record_member_exits, start_member_exits
from nas.study.weights import RunWeights, load_weights

PLAN_ATTR = "final_plan"  # the halving's candidates, rungs and survivors' progress (study attribute)


# ---------------------------------------------------------------------------- training a member


def train_member(run: Any, deadline: float | None, *, pace_steps: int,
                 planned_pace: float | None = None) -> dict[str, Any] | None:
    """Train a member to its planned length by `deadline` (time.perf_counter; None: none): up to a validation point
    (a multiple of `pace_steps`, final.eval_every, at least half of that many steps ahead), then, where the pace it
    showed (validations included) would not reach the planned length in time, its length fitted to the time left
    (nas.study.final_plan.paced_length), then the rest. Returns what was fitted (with `planned_pace`, the seconds a
    step the plan read, for the record), or None where nothing was."""
    if deadline is None or run.step >= run.total:
        run.advance(deadline=deadline)
        return None
    step0, seconds0 = run.step, run.seconds
    # to a validation point at least half of pace_steps ahead (a member resumed after a rung reads as many steps)
    run.advance(until=((step0 + pace_steps // 2) // pace_steps + 1) * pace_steps, deadline=deadline)
    fitted = None
    done = run.step - step0
    if 2 * done >= pace_steps and not run.converged and run.step < run.total:
        pace = (run.seconds - seconds0) / done
        total = paced_length(run.step, run.total, pace=pace, seconds_left=deadline - time.perf_counter())
        if total < run.total:
            fitted = {"pace": round(pace, 4), "planned_pace": None if planned_pace is None else round(planned_pace, 4),
                      "was": run.total, "total": total, "at": run.step}
            run.set_total(total)
    run.advance(deadline=deadline)
    return fitted


# ---------------------------------------------------------------------------- choosing members


def eligible(front: pd.DataFrame, *, base_quality: float, slack: float, cost: str,
             quality: str = "val_accuracy") -> pd.DataFrame:
    """Front members whose trial accuracy is within `slack` of the base's, fastest first."""
    members = measured_members(front, quality=quality, cost=cost)
    return members[members[quality] >= base_quality - slack].sort_values([cost, quality], ascending=[True, False])


def choose_members(front: pd.DataFrame, settings: Any, *, base_quality: float, cost: str,
                   quality: str = "val_accuracy") -> list[int]:
    """Trial numbers the final stage starts with, by settings.rule (halving: its candidates, the fastest first, the
    most accurate after its trial second, then by speed; fastest and accuracy: the members themselves). Too few
    members within the slack: the most accurate fill up."""
    k = settings.members
    if k <= 0:
        return []
    if settings.rule == "accuracy":
        return choose_final(front, k, quality=quality)
    want = settings.candidates if settings.rule == "halving" else k
    chosen = eligible(front, base_quality=base_quality, slack=settings.slack, cost=cost, quality=quality).head(want)
    fast = [int(n) for n in chosen["number"]]
    if settings.rule == "halving" and len(fast) > 2:
        # the order a plan keeps them in (nas.study.final_plan: a slow machine trains fewer): the fastest, then the
        # most accurate after its trial, then by speed, so that two members span the trade the winner rule reads
        accurate = int(chosen.sort_values([quality, cost], ascending=[False, True])["number"].iloc[0])
        fast = [fast[0]] + ([accurate] if accurate != fast[0] else []) + [n for n in fast[1:] if n != accurate]
    if len(fast) < min(k, want):
        fast += [n for n in choose_final(front, len(front), quality=quality) if n not in fast][: min(k, want) - len(fast)]
    return fast


def survivors(accuracy: Mapping[int, float], cost: Mapping[int, float], keep: int) -> list[int]:
    """The `keep` best candidates of a rung: the most accurate on validation (projected_accuracy: where each
    will end; a tie: the faster). The
    pool is already the fastest front members, so accuracy decides; by Pareto layers instead, the
    fastest candidate would always go on, however far below the band it is."""
    return sorted(accuracy, key=lambda n: (-accuracy[n], cost[n]))[:keep]


MAX_PROJECTED_GAIN = 0.05  # a projection adds at most this much accuracy to the best a candidate has shown


def projected_accuracy(curve: Sequence[Mapping[str, float]], total: int) -> float:
    """A candidate's validation accuracy projected to its planned length `total` from the curve so far
    ({step, validation} points), so that a rung compares candidates where they will end, not where they are: a deep
    cut that is still climbing steeply ranks above a mild one that has plateaued, though it is behind now.

    The points after step 0 are fitted by least squares with a - b / sqrt(step) (learning curves of fine-tuning
    flatten like a power of the step), b >= 0 (a curve projects no loss), then evaluated at `total`. The projection
    lies between the best accuracy seen and that plus MAX_PROJECTED_GAIN (a few noisy points do not project a
    jump); under two points it is the best seen."""
    points = [(float(p["step"]), float(p["validation"])) for p in curve if p["step"] > 0]
    best = max((float(p["validation"]) for p in curve), default=float("nan"))
    if len({s for s, _ in points}) < 2:
        return best
    xs = [s ** -0.5 for s, _ in points]
    ys = [a for _, a in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    b = max(0.0, -slope)  # accuracy = a - b * x: rises as x = step^-0.5 falls
    a = my + b * mx
    projected = a - b * float(max(total, max(s for s, _ in points))) ** -0.5
    return min(max(projected, best), best + MAX_PROJECTED_GAIN)


def within_band(accuracy: float, *, base_quality: float, band: float) -> bool:
    """Whether `accuracy` is at most `band` points below the base's."""
    return accuracy >= base_quality - band / 100 - 1e-12


def band_accuracy(result: Mapping[str, Any]) -> float | None:
    """The accuracy a final member is judged on for the band: on the judge rows as deployed where they are held
    out (no early stopping, checkpoint or rung read them), else on validation (as deployed where measured)."""
    for key in ("judge_accuracy_deployed", "val_accuracy_deployed", "val_accuracy"):
        if result.get(key) is not None:
            return float(result[key])
    return None


def winner(final: Mapping[str, Mapping[str, Any]], *, base_quality: float, band: float) -> int | None:
    """The fastest final member within `band` points of the base's accuracy (`base_quality`: on the judge rows
    where held out), each member as deployed (band_accuracy; its measured speedup where it has one); none within:
    the most accurate."""
    rows = []
    for n, r in final.items():
        acc = band_accuracy(r)
        speed = r.get("speedup_over_torch_fp32_base", r.get("speedup"))
        if acc is not None:
            rows.append((int(n), float(acc), float(speed) if speed is not None else 0.0))
    if not rows:
        return None
    within = [r for r in rows if within_band(r[1], base_quality=base_quality, band=band)]
    if within:
        return max(within, key=lambda r: (r[2], r[1]))[0]
    return max(rows, key=lambda r: (r[1], r[2]))[0]


def winner_variant(final: Mapping[str, Mapping[str, Any]], exits: Mapping[str, Mapping[str, Any]], *,
                   base_quality: float, band: float) -> tuple[int, bool] | None:
    """winner() over the final members and their early-exit variants (nas.study.exits) alike: (trial number, whether
    with its exits). The same rule, each variant a candidate of its own (keyed 2n and 2n + 1 for winner())."""
    keyed = {2 * int(n): r for n, r in final.items()}
    keyed.update({2 * int(n) + 1: r for n, r in exits.items() if str(n) in final})
    best = winner(keyed, base_quality=base_quality, band=band)
    return None if best is None else (best // 2, bool(best % 2))


# ---------------------------------------------------------------------------- the stage


def final_stage(study: Any, *, weights: RunWeights, evaluator: Any, objectives: Any, settings: Any,
                say: Callable[[str], None], clock: Callable[[str, float], None], write: Callable[[Any], Any],
                lm_recipe: Any = None) -> None:
    """`evaluator` (nas.study.trial.Evaluator) cuts, trains and measures; `settings`: FinalSettings.
    `lm_recipe` (TrainSettings): a language model's fixed-length final training."""
    if settings.members <= 0:
        return
    if evaluator.lm:
        return lm_final_stage(study, weights=weights, evaluator=evaluator, objectives=objectives, settings=settings,
                              recipe=lm_recipe, say=say, clock=clock, write=write)
    FinalStage(study, weights=weights, evaluator=evaluator, objectives=objectives, settings=settings, say=say,
               clock=clock, write=write).run()


class FinalStage:
    """One classification study's final stage (see the module's text)."""

    def __init__(self, study: Any, *, weights: RunWeights, evaluator: Any, objectives: Any, settings: Any,
                 say: Callable[[str], None], clock: Callable[[str, float], None], write: Callable[[Any], Any]) -> None:
        self.study, self.weights, self.evaluator, self.settings = study, weights, evaluator, settings
        self.say, self.clock, self.write = say, clock, write
        self.cost = cost_column(objectives)
        base = study.user_attrs.get("base", {})
        self.base_quality = float(base.get("val_accuracy") or evaluator.prep.base_info["validation_accuracy"])
        # the band's reference: the base on the judge rows where they are held out (members are judged there too)
        self.band_reference = float(base.get("judge_accuracy") or self.base_quality)
        self.data: dict[int, Any] = {}  # DistillData per context
        self.minutes: dict[str, float] = {}
        self.started = time.perf_counter()
        budget = settings.time_budget
        self.deadline = None if budget is None else self.started + float(budget)
        self.exits = exits_for(getattr(settings, "exits", None), evaluator)  # early exits trained with each member

    # -- what is known -------------------------------------------------------------------------
    def done(self) -> dict[int, Any]:
        return {int(n): r for n, r in (self.study.user_attrs.get("final") or {}).items()
                if self.weights.final_path(int(n)).is_file()}

    def plan(self, front: pd.DataFrame) -> dict[str, Any]:
        plan = dict(self.study.user_attrs.get(PLAN_ATTR) or {})
        if plan.get("candidates"):
            if plan.get("rule") != self.settings.rule:
                self.say(f"final stage: resuming the earlier stage's plan (rule {plan.get('rule')}), not "
                         f"final.rule={self.settings.rule}")
            return plan
        chosen = choose_members(front, self.settings, base_quality=self.base_quality, cost=self.cost)
        plan = {"rule": self.settings.rule, "candidates": chosen, "rungs": [], "eliminated": {}, "progress": {},
                "members": self.settings.members}
        self.study.set_user_attr(PLAN_ATTR, plan)
        return plan

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.perf_counter()

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> None:
        front = pareto_frame(self.study, None, cost=self.cost, quality="val_accuracy")
        plan = self.plan(front)
        if not plan["candidates"]:
            return
        trials = {n: self.study.trials[n] for n in plan["candidates"]}
        costs = {n: float(t.user_attrs.get(self.cost, t.user_attrs.get("latency_ratio", 1.0))) for n, t in trials.items()}
        done = self.done()
        s, recipe = self.settings, self.settings.recipe
        alive = [n for n in plan["candidates"] if str(n) not in plan["eliminated"]]
        shapes = ", ".join(f"{n} ({trials[n].user_attrs.get('shape')}, {1 / costs[n]:.2f}x)" for n in alive)
        self.say(f"final stage: rule {plan['rule']}, {len(alive)} candidates: {shapes}; recipe: {recipe.describe()}; "
                 f"transfer set: {s.transfer.describe()}; budget "
                 + (f"{s.time_budget:.0f}s" if s.time_budget else "none")
                 + (f"; {len(done)} members done before" if done else ""))
        runs: dict[int, Any] = {}
        if "schedule" not in plan and any(n not in done for n in alive):
            todo = [n for n in alive if n not in done]
            alive = self._plan(plan, todo, runs, trials) + [n for n in alive if n in done]
        schedule = FinalPlan.from_dict(plan["schedule"]) if plan.get("schedule") else None
        if plan["rule"] == "halving" and schedule is not None:
            alive = self._halving(plan, alive, runs, costs, trials, done, schedule)
        todo = [n for n in alive if n not in done]
        for i, n in enumerate(todo):
            run = runs.pop(n, None) or self._start(n, trials[n], plan)
            t0 = time.perf_counter()
            left = self.left()
            if left is None or left > 0:
                deadline = self._member_deadline(plan, run, todo[i:], runs, left)
                cost = (plan.get("costs") or {}).get(str(n))
                every = s.recipe.eval_every
                planned = None if cost is None else member_seconds(cost, start=0, steps=every, every=every) / every
                fitted = train_member(run, deadline, pace_steps=every, planned_pace=planned)
                if fitted is not None:
                    plan.setdefault("fitted", {})[str(n)] = fitted
                    read = "" if fitted["planned_pace"] is None else f" (the plan read {fitted['planned_pace']:.3f})"
                    self.say(f"final    {n:3d}: {fitted['pace']:.3f} s a step here{read}: its length {fitted['was']} "
                             f"-> {fitted['total']} steps, the learning rate fitted to end by its deadline")
            self._add(f"member {n}", time.perf_counter() - t0)
            self._finish(n, trials[n], run, plan)
        final = {str(n): r for n, r in (self.study.user_attrs.get("final") or {}).items()}
        exits = {str(n): r for n, r in (self.study.user_attrs.get(EXITS_ATTR) or {}).items()}
        chosen = winner_variant(final, exits, base_quality=self.band_reference, band=s.band)
        best, with_exits = chosen if chosen is not None else (None, False)
        if best is not None:
            self.study.set_user_attr(WINNER_ATTR, best)
            self.study.set_user_attr(WINNER_EXITS_ATTR, with_exits)
            r = (exits if with_exits else final)[str(best)]
            acc = band_accuracy(r)
            rows = "judge rows" if self.study.user_attrs.get("base", {}).get("judge_accuracy") is not None else "validation"
            why = (f"the fastest member within {s.band:g} points of the base on the {rows}" if
                   within_band(acc, base_quality=self.band_reference, band=s.band) else
                   f"no member is within {s.band:g} points of the base on the {rows}: the most accurate")
            self.say(f"final stage winner: trial {best} ({self.study.trials[best].user_attrs.get('shape')}"
                     + (f" with early exits: {r['exits_rule']}" if with_exits else "") + f"), {why}: "
                     f"{acc:.4f} as deployed (base {self.band_reference:.4f} in fp32), test acc "
                     f"{r.get('test_accuracy_deployed', r['test_accuracy']):.4f}")
        spent = ", ".join(f"{k} {v / 60:.1f} min" for k, v in self.minutes.items())
        took = time.perf_counter() - self.started
        plan["took_seconds"] = round(took, 1)
        self.study.set_user_attr(PLAN_ATTR, plan)
        self.say(f"final stage: {took / 60:.1f} min"
                 + (f" of {s.time_budget / 60:.1f}" if s.time_budget else "")
                 + (f" (planned {(schedule.spent + schedule.seconds) / 60:.1f}; " if schedule else " (") + f"{spent})")
        self.write(self.study)

    def _halving(self, plan: dict[str, Any], alive: list[int], runs: dict[int, Any], costs: Mapping[int, float],
                 trials: Mapping[int, Any], done: Mapping[int, Any], schedule: FinalPlan) -> list[int]:
        """The plan's rungs until search.final_k candidates are left (or the budget is spent); returns them."""
        k = schedule.members
        # a rung may not eat into the members' planned time: its deadline leaves them theirs
        deadline = None if self.deadline is None else (self.deadline - schedule.member_seconds
                                                       - schedule.evaluation_seconds)
        while len(alive) > k and not any(n in done for n in alive) and len(plan["rungs"]) < len(schedule.rungs):
            left = self.left()
            if left is not None and left <= 0:
                self.say("final stage: the time budget is spent during halving; the most accurate candidates go on")
                keep = survivors({n: runs[n].best_accuracy if n in runs else -1.0 for n in alive}, costs, k)
                self._eliminate(plan, alive, keep, runs, rung=len(plan["rungs"]))
                return keep
            rung = len(plan["rungs"])
            until = schedule.rungs[rung]
            t0 = time.perf_counter()
            for n in alive:
                run = runs.get(n) or self._start(n, trials[n], plan)
                runs[n] = run
                # validated up to RUNG_POINTS times on the way: the curve it is projected from
                for stop in rung_stops(run.step, until):
                    run.advance(until=stop, deadline=deadline)
            self._add(f"halving rung {rung}", time.perf_counter() - t0)
            accuracy = {n: runs[n].best_accuracy for n in alive}
            projected = {n: projected_accuracy(runs[n].curve, runs[n].total) for n in alive}
            keep = survivors(projected, costs, max(k, math.ceil(len(alive) / 2)))
            self.say(f"final rung {rung}: {len(alive)} candidates at {until} steps, best val acc -> projected to their "
                     "planned length: " + ", ".join(
                         f"{n} {accuracy[n]:.4f} -> {projected[n]:.4f} ({1 / costs[n]:.2f}x){'' if n in keep else ' out'}"
                         for n in alive) + f" [{time.perf_counter() - t0:.0f}s]")
            plan["rungs"].append({"steps": until, "val_accuracy": {str(n): accuracy[n] for n in alive},
                                  "projected": {str(n): projected[n] for n in alive},
                                  "kept": keep, "seconds": round(time.perf_counter() - t0, 1)})
            self._eliminate(plan, alive, keep, runs, rung=rung)
            alive = keep
        return alive

    def _eliminate(self, plan: dict[str, Any], alive: Sequence[int], keep: Sequence[int], runs: dict[int, Any],
                   *, rung: int) -> None:
        for n in alive:
            if n not in keep:
                plan["eliminated"][str(n)] = {"rung": rung, "val_accuracy": runs[n].best_accuracy if n in runs else None}
                runs.pop(n, None)
                self.weights.rung_path(n).unlink(missing_ok=True)
        for n in keep:  # a run killed later resumes these from here, not from the base
            if n in runs:
                self.weights.save(runs[n].model, self.weights.rung_path(n))
                plan["progress"][str(n)] = runs[n].step
        self.study.set_user_attr(PLAN_ATTR, plan)

    def _start(self, number: int, trial: Any, plan: Mapping[str, Any]) -> Any:
        """A candidate's DistillRun: cut from the base (final.start=base) or its trial weights, or resumed
        from the weights saved at the end of its last rung."""

        ev, recipe = self.evaluator, self.settings.recipe
        spec = self._spec(trial)
        start_step = int(plan.get("progress", {}).get(str(number), 0))
        if recipe.start == "trial" and self.weights.trial_path(number).is_file():
            model = self.weights.load(trial)
        else:
            model, _ = ev.candidate(spec)
        # exit heads ride along (before a rung's weights load: its file carries them)
        exits = start_member_exits(model, spec, self.exits, labels=int(model.config.num_labels), train=recipe.train)
        if start_step and self.weights.rung_path(number).is_file():
            load_weights(model, self.weights.rung_path(number))
        else:
            start_step = 0
        run = ev.distill_run(model, spec, recipe, self._data(spec.context), start_step=start_step, exits=exits)
        if plan.get("schedule") and run.total != plan["schedule"]["member_steps"]:
            run.set_total(plan["schedule"]["member_steps"])  # the plan's length (a budget too short for the recipe's)
        return run

    def _plan(self, plan: dict[str, Any], alive: list[int], runs: dict[int, Any],
              trials: Mapping[int, Any]) -> list[int]:
        """Time a few training steps of each candidate (and one validation), plan the stage from them
        (nas.study.final_plan.plan_final), say the plan in one line and keep it; returns the candidates that train."""
        s = self.settings
        halving = plan["rule"] == "halving"
        probe = min(PROBE_STEPS, max(1, s.rung_steps // RUNG_POINTS)) if halving else PROBE_STEPS
        costs, planned = {}, 0
        for n in alive:
            run = runs.get(n) or self._start(n, trials[n], plan)  # the teacher's logits first, once (their own line)
            runs[n] = run
            planned = max(planned, run.total)
            t0 = time.perf_counter()
            if run.total > run.step:
                step, validation = run.time_steps(probe)
            else:
                step, validation = 0.0, 0.0  # nothing to train (final.max_steps=0)
            self._add("timing steps", time.perf_counter() - t0)
            costs[n] = StepCost(step=step, validation=validation, done=run.step)
        schedule = plan_final(costs, budget=s.time_budget, members=s.members, halving=halving, rung_steps=s.rung_steps,
                              planned_steps=planned, eval_every=s.recipe.eval_every,
                              spent=time.perf_counter() - self.started,
                              precision=next(iter(runs.values())).precision if runs else "",
                              evaluation_validations=EVALUATION_VALIDATIONS
                              + (EXIT_EVALUATION_VALIDATIONS if self.exits is not None else 0.0))
        self.say(schedule.describe())
        for n in alive:
            if n not in schedule.candidates:  # planned out: never trained past its timed steps
                plan["eliminated"][str(n)] = {"rung": None, "planned_out": True,
                                              "val_accuracy": runs[n].best_accuracy}
                runs.pop(n)
            elif runs[n].total != schedule.member_steps:
                runs[n].set_total(schedule.member_steps)
        plan["schedule"] = schedule.to_dict()
        plan["costs"] = {str(n): asdict(c) for n, c in costs.items()}
        self.study.set_user_attr(PLAN_ATTR, plan)
        return [n for n in alive if n in schedule.candidates]

    def _member_deadline(self, plan: Mapping[str, Any], run: Any, todo: Sequence[int], runs: Mapping[int, Any],
                         left: float | None) -> float | None:
        """When member todo[0] must stop: its planned share of the time left (after the members' evaluation), in
        proportion to what each member still to train is planned to take; the plan's estimates let each end on time."""
        if left is None:
            return None
        if not plan.get("schedule"):
            return time.perf_counter() + max(0.0, left) / len(todo)
        s = FinalPlan.from_dict(plan["schedule"])
        costs = plan.get("costs", {})
        every = self.settings.recipe.eval_every

        def need(n: int) -> float:
            if str(n) not in costs:
                return 1.0
            step = run.step if n == todo[0] else (runs[n].step if n in runs else int(plan["progress"].get(str(n), 0)))
            return member_seconds(costs[str(n)], start=step, steps=s.member_steps, every=every)

        shares = [need(n) for n in todo]
        evaluation = s.evaluation_seconds / max(1, s.members) * len(todo)
        training = max(0.0, left - evaluation)
        return time.perf_counter() + training * (shares[0] / sum(shares) if sum(shares) > 0 else 1 / len(todo))

    def _spec(self, trial: Any) -> Any:
        """The spec a member trains at: its trial's, its layers by final.layers."""
        return self.settings.recipe.member_spec(SubnetSpec.from_dict(trial.user_attrs["spec"]),
                                                encoder=self.evaluator.family.recovery)

    def _data(self, context: int) -> Any:
        if context not in self.data:
            t0 = time.perf_counter()
            self.data[context] = self.evaluator.distill_data(context, self.settings.transfer, say=self.say)
            self._add("teacher logits and data", time.perf_counter() - t0)
        return self.data[context]

    def _finish(self, number: int, trial: Any, run: Any, plan: Mapping[str, Any]) -> None:
        ev = self.evaluator
        spec = self._spec(trial)
        model = run.finish()
        heads = run.exits.detach(model) if getattr(run, "exits", None) is not None else None  # saved apart
        self.clock("final training", run.seconds)
        t0 = time.perf_counter()
        result = {"val_accuracy": ev.accuracy(model, spec, "validation"), "test_accuracy": ev.accuracy(model, spec, "test"),
                  **run.summary(), "seconds": round(run.seconds, 1), "rule": plan["rule"], "spec": spec.to_dict()}
        self.clock("evaluation", time.perf_counter() - t0)
        deployed = ev.deployed(model, spec, name=f"final_{number}", precision=trial.user_attrs.get("precision"))
        result.update({k: v for k, v in deployed.items() if k in DEPLOYED_KEYS})
        self._add("evaluation and deployment", time.perf_counter() - t0)
        self.weights.save(model, self.weights.final_path(number))
        self.weights.rung_path(number).unlink(missing_ok=True)
        latest = dict(self.study.user_attrs.get("final") or {})  # other workers may have added theirs
        latest[str(number)] = result
        self.study.set_user_attr("final", latest)
        a = trial.user_attrs
        why = ("converged" if result["stopped_early"] else "time budget" if run.step < run.total else
               "planned length" if run.total >= run.recipe_steps else
               f"the plan's length; the recipe's {run.recipe_steps}")
        self.say(f"final    {number:3d} {a['shape']:28s} val acc {a['val_accuracy']:.4f} -> {result['val_accuracy']:.4f}"
                 f"  test acc {result['test_accuracy']:.4f}  {run.step} steps ({why}; weights of step {run.kept_step}, "
                 f"best validation at {run.best_step})"
                 f"  speedup {a['speedup']:.2f}x  ({run.seconds:.0f}s)")
        if deployed:
            judge = deployed.get("judge_accuracy_deployed")
            self.say(f"deployed {number:3d} {deployed['variant']}: val acc {deployed['val_accuracy_deployed']:.4f}  "
                     + (f"judge acc {judge:.4f}  " if judge is not None else "") + f"test acc {deployed['test_accuracy_deployed']:.4f}  speedup "
                     f"{deployed['speedup_over_quantized_base']:.2f}x over the base in the same runtime and precision, "
                     f"{deployed['speedup_over_runtime_fp32_base']:.2f}x over it at fp32, "
                     f"{deployed['speedup_over_torch_fp32_base']:.2f}x over it in torch fp32 (measured: "
                     f"{deployed['definition']})")
        if heads is not None and deployed:  # the same member with its exits, a variant of its own
            t1 = time.perf_counter()
            record_member_exits(self.study, run_dir=self.weights.run_dir, evaluator=ev, settings=self.exits,
                                number=number, model=model, heads=heads, spec=spec, static=result,
                                precision=trial.user_attrs.get("precision"), say=self.say, clock=self.clock)
            self._add("exits", time.perf_counter() - t1)
        self.write(self.study)

    def _add(self, what: str, seconds: float) -> None:
        self.minutes[what] = self.minutes.get(what, 0.0) + seconds


def evaluate_front_on_test(study: Any, *, weights: RunWeights, prep: Any, lm: bool, batch_size: int,
                           clock: Callable[[str, float], None]) -> None:
    """Test accuracy (perplexity) of every front member that has its weights in this run folder."""
    t0 = time.perf_counter()
    attr = "test_perplexity" if lm else "test_accuracy"
    known = {int(k): v for k, v in (study.user_attrs.get(attr) or {}).items()}
    for trial in study.best_trials:
        if trial.number in known or attr in trial.user_attrs or not weights.trial_path(trial.number).is_file():
            continue  # a language model scored in llama.cpp has its test perplexity as deployed already
        model = weights.load(trial)
        loader = prep.loader("test", trial.user_attrs["context"], batch_size=batch_size, shuffle=False)
        known[trial.number] = evaluate(model, loader, lm=lm)[1]
        study.set_user_attr(attr, {str(k): v for k, v in sorted(known.items())})
    clock("evaluation", time.perf_counter() - t0)
