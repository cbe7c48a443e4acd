"""The final stage's plan, made from what a training step costs on this machine.

Before rung 0 the final stage (nas.study.final) trains each candidate a few real steps and times them, and one
validation, at the precision it trains in (nas.quality.distill.DistillRun.time_steps). `plan_final` turns those
costs into the plan: which candidates train, to how many steps each rung trains them, and how many steps the
members that ship train, so that the members reach their planned length (or their early stop) within
final.time_budget. Where the budget is short it gives up, in this order:

1. candidates: the last of the chosen ones (nas.study.final.choose_members orders them: the fastest to infer, the
   most accurate after its trial, then by speed; so the slowest but the most accurate goes first), down to one more
   than the members;
2. rung length: SHORTER_RUNGS of final.rung_steps (a rung much shorter ranks by noise: experiments/final_stage);
3. halving: the members alone, no rung;
4. only then the members' length, all members alike: they train fewer steps with their learning-rate schedule
   fitted to that length (not cut short by the clock), and the plan says the budget they would need.

It is a pure function of the costs, the budget and the settings. Costs are worst cases: each rung's survivors and the
members are costed as the candidates that cost most, so no choice of survivors runs past the plan's estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

RUNG_POINTS = 4  # validations per rung: the points a candidate's curve is projected from (nas.study.final)
PROBE_STEPS = 9  # training steps timed per candidate before rung 0 (the first is not counted: allocations); they
#   are the first of its rung 0, so only a candidate the plan leaves out trains them for nothing
SHORTER_RUNGS = (0.75, 0.5)  # rung lengths tried, as shares of final.rung_steps, once the candidates are fewest
# A member's evaluation and deployment (validation and test accuracy, int8 export, its accuracy as served one input at
# a time on the validation, judge and test rows, its paired timing) costs about this many validations
EVALUATION_VALIDATIONS = 8.0


@dataclass(frozen=True)
class StepCost:
    """One candidate's cost on this machine: seconds per training step (a batch of the data's mean size) and per
    validation, and the steps it has trained already (the timed ones, or a resumed rung's)."""

    step: float
    validation: float
    done: int = 0

    def __post_init__(self) -> None:
        if not (self.step >= 0 and self.validation >= 0 and math.isfinite(self.step)
                and math.isfinite(self.validation)):
            raise ValueError(f"step cost {self.step!r} s / validation {self.validation!r} s must be finite and >= 0")
        if self.done < 0:
            raise ValueError(f"steps done {self.done!r} must be >= 0")


def rung_stops(start: int, until: int) -> list[int]:
    """The steps a rung advances a candidate to, from `start`: RUNG_POINTS evenly spread stops ending at `until`,
    each validated (the curve the rung projects from)."""
    return sorted({start + math.ceil((until - start) * i / RUNG_POINTS) for i in range(1, RUNG_POINTS + 1)})


def validations(start: int, until: int, every: int, stops: Sequence[int] = ()) -> int:
    """Validations a run takes from step `start` to `until`, advanced to each of `stops` in turn: one at every
    multiple of `every` and one at each stop (nas.quality.distill.DistillRun.advance)."""
    if until <= start:
        return 0
    first = (start // every + 1) * every
    points = set(range(first, until + 1, every)) | {s for s in stops if start < s <= until} | {until}
    return len(points)


def halving_rungs(candidates: int, members: int, rung_steps: int, member_steps: int) -> list[tuple[int, int]]:
    """(steps trained to, candidates) of each rung: rung_steps, doubled each rung (at most the members' length),
    the better half going on each time until `members` are left."""
    rungs, alive = [], candidates
    while alive > members and rung_steps > 0:
        rungs.append((min(rung_steps * 2 ** len(rungs), member_steps), alive))
        alive = max(members, math.ceil(alive / 2))
    return rungs


@dataclass(frozen=True)
class FinalPlan:
    """What the final stage will train, and what it expects that to take (seconds, worst case)."""

    candidates: tuple[int, ...]  # trial numbers that train, in the order chosen (fastest, most accurate, by speed)
    offered: int  # candidates chosen before the plan (final.candidates, or the fewer within the slack)
    rungs: tuple[int, ...]  # each rung trains its candidates to this many steps
    alive: tuple[int, ...]  # candidates in each rung
    members: int  # members that ship
    member_steps: int  # each member's length (its learning-rate schedule's)
    planned_steps: int  # the recipe's length (final.max_epochs or final.max_steps)
    rung_steps: int  # rung 0's length (0: no halving)
    train_seconds: float  # rungs and members
    member_seconds: float  # of which the members' part after the last rung
    evaluation_seconds: float  # the members' evaluation and deployment (an estimate)
    budget: float | None  # final.time_budget
    spent: float  # seconds of the stage before the plan (data, teacher logits, the timed steps)
    needed: float  # the budget members at their planned length need without halving (seconds, spent included)
    step_range: tuple[float, float] = (0.0, 0.0)  # seconds per step: cheapest and costliest candidate
    validation: float = 0.0  # seconds per validation, the costliest candidate
    precision: str = ""  # what the steps were timed at

    @property
    def seconds(self) -> float:
        """Expected seconds from the plan to the stage's end."""
        return self.train_seconds + self.evaluation_seconds

    @property
    def cut_short(self) -> bool:
        """Whether the members train fewer steps than their planned length."""
        return self.member_steps < self.planned_steps

    def fits(self) -> bool:
        return self.budget is None or self.spent + self.seconds <= self.budget

    def describe(self) -> str:
        """The plan in one line."""
        n = len(self.candidates)
        plural = "s" if self.offered != 1 else ""
        cands = f"{n} of {self.offered} candidates" if n < self.offered else f"{n} candidate{plural}"
        if self.rungs:
            rungs = ", ".join(f"{a} x {s}" for a, s in zip(self.alive, self.rungs))
            how = f"halving rungs {rungs} steps"
        else:
            how = "no halving"
        length = (f"{self.member_steps} of the planned {self.planned_steps} steps" if self.cut_short
                  else f"{self.member_steps} steps (the planned length)")
        budget = f" of {self.budget / 60:.1f}" if self.budget is not None else " (no budget)"
        lo, hi = self.step_range
        steps = f"{lo:.2f} s" if math.isclose(lo, hi, rel_tol=0.005) else f"{lo:.2f}-{hi:.2f} s"
        line = (f"final plan: {cands}, {how}, {self.members} member{'s' if self.members != 1 else ''} x {length}; "
                f"expected {(self.spent + self.seconds) / 60:.1f} min{budget} (spent {self.spent / 60:.1f}, training "
                f"{self.train_seconds / 60:.1f}, evaluation ~{self.evaluation_seconds / 60:.1f}; a step {steps}"
                + (f" in {self.precision}" if self.precision else "") + f", a validation {self.validation:.1f} s)")
        if self.cut_short:
            who = "the members reach their" if self.members > 1 else "the member reaches its"
            line += f"; the budget is short: {who} planned length with final.time_budget={math.ceil(self.needed)}"
        return line

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinalPlan:
        tuples = ("candidates", "rungs", "alive", "step_range")
        return cls(**{k: (tuple(v) if k in tuples else v) for k, v in data.items()})


def _phase(costs: Mapping[int, StepCost], start: Mapping[int, int], until: int, every: int, *,
           rung: bool) -> dict[int, float]:
    """Each candidate's seconds from its start to `until` (a rung: through its validated stops)."""
    out = {}
    for n, c in costs.items():
        begin = min(start[n], until)
        stops = rung_stops(begin, until) if rung else ()
        out[n] = (until - begin) * c.step + validations(begin, until, every, stops) * c.validation
    return out


def _worst(seconds: Mapping[int, float], count: int) -> float:
    return sum(sorted(seconds.values(), reverse=True)[:count])


def plan_final(costs: Mapping[int, StepCost], *, budget: float | None, members: int, halving: bool, rung_steps: int,
               planned_steps: int, eval_every: int, spent: float = 0.0, precision: str = "",
               evaluation_validations: float = EVALUATION_VALIDATIONS) -> FinalPlan:
    """The plan for candidates `costs` (trial number -> StepCost, in the order chosen: the fastest to infer, the most
    accurate after its trial, then by speed; nas.study.final.choose_members; fewer candidates keep the first) within
    `budget` seconds (final.time_budget; None: no limit) of which `spent` are gone, `members` of them to ship
    (search.final_k), halving or not (final.rule), rung 0 at `rung_steps` steps, members at `planned_steps`
    (the recipe's length), validated every `eval_every` steps; each member's evaluation and deployment is reserved as
    `evaluation_validations` validations (more where members ship with early exits too, nas.study.exits). See the
    module's text for the order of concessions."""
    if not costs:
        raise ValueError("plan_final needs at least one candidate's step cost")
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ValueError(f"members={members!r} must be an integer >= 1 (search.final_k)")
    if rung_steps < 1 or eval_every < 1 or planned_steps < 0:
        raise ValueError(f"rung_steps={rung_steps}, eval_every={eval_every} must be >= 1 and planned_steps="
                         f"{planned_steps} >= 0")
    if budget is not None and not budget > 0:
        raise ValueError(f"budget={budget!r} must be > 0 seconds or None")
    order = list(costs)
    k = min(members, len(order))
    available = None if budget is None else budget - spent
    evaluation = k * evaluation_validations * max(c.validation for c in costs.values())

    def build(count: int, rung: int, steps: int) -> FinalPlan:
        chosen = {n: costs[n] for n in order[:count]}
        rungs = halving_rungs(count, k, rung, steps)
        start = {n: c.done for n, c in chosen.items()}
        train = 0.0
        for until, alive in rungs:
            train += _worst(_phase(chosen, start, until, eval_every, rung=True), alive)
            start = {n: max(s, until) for n, s in start.items()}
        member = _worst(_phase(chosen, start, steps, eval_every, rung=False), k)
        steps_of = [c.step for c in chosen.values()]
        return FinalPlan(candidates=tuple(order[:count]), offered=len(order), rungs=tuple(u for u, _ in rungs),
                         alive=tuple(a for _, a in rungs), members=k, member_steps=steps, planned_steps=planned_steps,
                         rung_steps=rung if rungs else 0, train_seconds=train + member, member_seconds=member,
                         evaluation_seconds=evaluation, budget=budget, spent=spent, needed=0.0,
                         step_range=(min(steps_of), max(steps_of)),
                         validation=max(c.validation for c in chosen.values()), precision=precision)

    alone = build(k, 0, planned_steps)
    needed = spent + alone.seconds

    def done(plan: FinalPlan) -> FinalPlan:
        return FinalPlan.from_dict({**plan.to_dict(), "needed": needed})

    for count, rung in _options(len(order), k, rung_steps, halving):
        plan = build(count, rung, planned_steps)
        if available is None or plan.seconds <= available:
            return done(plan)
    # even alone at their planned length the members do not fit: the longest length they all reach
    low = max(c.done for n, c in costs.items() if n in order[:k])
    lo, hi = low, planned_steps  # build(k, 0, lo) is the least there is; find the largest fitting length
    if build(k, 0, lo).seconds > available:
        return done(build(k, 0, lo))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if build(k, 0, mid).seconds <= available:
            lo = mid
        else:
            hi = mid - 1
    return done(build(k, 0, lo))


def _options(offered: int, members: int, rung_steps: int, halving: bool) -> list[tuple[int, int]]:
    """(candidates, rung 0 steps) in the order the plan tries them; 0 steps: no halving."""
    if not halving or offered <= members:
        return [(min(offered, members), 0)]
    options = [(c, rung_steps) for c in range(offered, members, -1)]
    options += [(members + 1, max(1, round(rung_steps * share))) for share in SHORTER_RUNGS]
    return options + [(members, 0)]


def paced_length(step: int, total: int, *, pace: float, seconds_left: float) -> int:
    """A member's planned length fitted to the pace it has shown on this machine (`pace` seconds a step, validations
    included) with `seconds_left` to its deadline: `total` when that fits, else the steps that do (at least `step`),
    so that its learning rate decays to zero by the deadline instead of the clock stopping it mid-schedule (the
    timed steps before rung 0 are few: on a 2-core AVX2 EPYC they read 15-20% under the members' later pace)."""
    if pace <= 0 or step >= total:
        return total
    return max(step, min(total, step + math.floor(max(0.0, seconds_left) / pace)))


def member_seconds(cost: StepCost | Mapping[str, Any], *, start: int, steps: int, every: int) -> float:
    """One member's expected seconds from step `start` to `steps` (its share of the time left)."""
    c = cost if isinstance(cost, StepCost) else StepCost(**cost)
    return max(0, steps - start) * c.step + validations(start, steps, every) * c.validation
