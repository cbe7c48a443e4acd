"""The final stage's plan (nas.study.final_plan): made from scripted step costs, it never runs past the budget
whichever candidates survive, gives up candidates before rung length and rung length before the members' length,
and names the budget the members would need."""

from __future__ import annotations

import itertools
import math

import pytest

from nas.study.final_plan import EVALUATION_VALIDATIONS, RUNG_POINTS, FinalPlan, StepCost, plan_final

PLANNED = 793  # the recipe's length on the embedded task (2.5 epochs of 32)
NEVER = 10 ** 6  # eval_every: no regular validation, so each rung validates RUNG_POINTS times and a member once


def machine(slowdown: float, validation: float = 0.0) -> dict[int, StepCost]:
    """Four candidates, fastest to infer first (the deeper ones cost more a step), on a machine `slowdown` times
    slower than one whose steps cost 0.2-0.45 s; each has done the 5 timed steps."""
    return {n: StepCost(step=s * slowdown, validation=validation * slowdown, done=5)
            for n, s in zip((11, 7, 3, 9), (0.20, 0.25, 0.35, 0.45))}


def plan(costs: dict[int, StepCost], budget: float | None, *, members: int = 2, spent: float = 0.0,
         eval_every: int = NEVER, planned: int = PLANNED) -> FinalPlan:
    return plan_final(costs, budget=budget, members=members, halving=True, rung_steps=200, planned_steps=planned,
                      eval_every=eval_every, spent=spent)


def worst_seconds(p: FinalPlan, costs: dict[int, StepCost]) -> float:
    """The plan's seconds for the worst survivors, counted here step by step over every possible choice of
    survivors (validations: RUNG_POINTS per candidate a rung, one per member at its end; eval_every=NEVER)."""
    worst = 0.0
    kept_after = list(p.alive[1:]) + [p.members]

    def walk(alive: tuple[int, ...], rung: int, at: dict[int, int], seconds: float) -> None:
        nonlocal worst
        if rung == len(p.rungs):
            for chosen in itertools.combinations(alive, p.members):
                tail = sum((p.member_steps - at[n]) * costs[n].step + (p.member_steps > at[n]) * costs[n].validation
                           for n in chosen)
                worst = max(worst, seconds + tail)
            return
        until = p.rungs[rung]
        spent = sum((until - at[n]) * costs[n].step + RUNG_POINTS * costs[n].validation for n in alive)
        for kept in itertools.combinations(alive, kept_after[rung]):
            walk(kept, rung + 1, {n: until for n in kept}, seconds + spent)

    walk(p.candidates, 0, {n: costs[n].done for n in p.candidates}, 0.0)
    evaluation = p.members * EVALUATION_VALIDATIONS * max(c.validation for c in costs.values())
    return worst + evaluation


@pytest.mark.parametrize("slowdown", [1.0, 1.6, 2.5, 4.0, 8.0])
@pytest.mark.parametrize("validation", [0.0, 1.5])
def test_the_plan_never_runs_past_the_budget_whichever_candidates_survive(slowdown, validation):
    """Fast and slow machines, one budget (960 s, 60 of them spent before the plan): the plan's worst case, counted
    independently over every choice of survivors, stays within it; the plan's own estimate is that worst case."""
    costs = machine(slowdown, validation)
    p = plan(costs, 960, spent=60)
    counted = worst_seconds(p, costs)
    assert counted == pytest.approx(p.seconds)
    assert p.spent + counted <= 960 + 1e-9
    assert p.fits()


def test_a_slow_machine_keeps_fewer_candidates_before_it_shortens_the_members():
    """From a fast machine to ever slower ones under one budget: the candidates go first (4, then 3, then 2 with no
    halving), the rung shortens only once a single spare candidate is left, and the members' length drops last."""
    plans = [plan(machine(slowdown), 900) for slowdown in (1.0, 1.1, 1.25, 1.5, 1.8, 2.0, 3.0, 5.0)]
    fast, slow, slowest = plans[0], plans[-3], plans[-1]
    assert (len(fast.candidates), fast.rungs, fast.member_steps) == (4, (200,), PLANNED)
    assert len(slow.candidates) < 4 and slow.member_steps == PLANNED  # fewer candidates, members at full length
    assert (len(plans[3].candidates), plans[3].rungs) == (3, (200,))  # one candidate fewer, the rung as it was
    assert (len(plans[4].candidates), plans[4].rungs) == (3, (100,))  # then a shorter rung
    assert (len(slowest.candidates), slowest.rungs) == (2, ()) and slowest.member_steps < PLANNED
    for before, after in zip(plans, plans[1:]):  # slower: never more candidates, never longer members
        assert len(after.candidates) <= len(before.candidates) and after.member_steps <= before.member_steps
    for p in plans:
        if p.member_steps < PLANNED:  # members are shortened only when nothing else is left to give up
            assert len(p.candidates) == p.members and not p.rungs
        if p.rungs and p.rungs[0] < 200:  # a rung is shortened only when one spare candidate is left
            assert len(p.candidates) == p.members + 1
        assert p.candidates == tuple(machine(1.0))[:len(p.candidates)]  # the first chosen are kept


def test_a_short_budget_says_what_the_members_need():
    """Members that cannot reach their planned length: the plan says so in its line, with the budget they need;
    planned again with that budget, they reach it."""
    costs = machine(3.0, validation=1.0)
    short = plan(costs, 600, spent=30, eval_every=100)
    assert short.cut_short and short.member_steps < PLANNED
    line = short.describe()
    needed = math.ceil(short.needed)
    assert f"2 members x {short.member_steps} of the planned {PLANNED} steps" in line
    assert f"final.time_budget={needed}" in line
    enough = plan(costs, needed, spent=30, eval_every=100)
    assert enough.member_steps == PLANNED and not enough.cut_short and enough.fits()
    assert short.spent + short.seconds <= 600 + 1e-9
    # the members train as long as the budget allows: one step more (and its validation) fits a budget only that
    # much larger
    step, validation = max(c.step for c in costs.values()), max(c.validation for c in costs.values())
    assert plan(costs, 600 + 2 * (step + validation) + 1e-6, spent=30, eval_every=100).member_steps > short.member_steps


def test_no_budget_plans_everything_and_the_line_reads_as_the_plan():
    p = plan(machine(1.0, validation=1.0), None, eval_every=100)
    assert (len(p.candidates), p.rungs, p.alive, p.member_steps) == (4, (200,), (4,), PLANNED)
    line = p.describe()
    assert line.startswith("final plan: 4 candidates, halving rungs 4 x 200 steps, 2 members x 793 steps (the "
                           "planned length); expected ")
    assert "(no budget)" in line and "a step 0.20-0.45 s" in line
    assert FinalPlan.from_dict(p.to_dict()) == p  # the study attribute round-trips


def test_more_candidates_halve_over_doubling_rungs():
    """Eight candidates, two members: rungs of 8 x 200, 4 x 400 steps, then 2 members; each rung's cost is its
    new steps only (a survivor goes on from where it was)."""
    costs = {n: StepCost(step=1.0, validation=0.0, done=0) for n in range(8)}
    p = plan(costs, None, planned=1000)
    assert (p.rungs, p.alive) == ((200, 400), (8, 4))
    assert p.train_seconds == pytest.approx(8 * 200 + 4 * 200 + 2 * 600)


def test_bad_inputs_are_refused_in_one_line():
    with pytest.raises(ValueError, match="at least one candidate"):
        plan({}, 100)
    with pytest.raises(ValueError, match="members=0 must be an integer >= 1"):
        plan(machine(1.0), 100, members=0)
    with pytest.raises(ValueError, match="budget=0 must be > 0"):
        plan(machine(1.0), 0)
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        StepCost(step=float("nan"), validation=0.0)


# ---------------------------------------------------------------------------- a member's length fitted to its pace


def test_a_member_slower_than_its_timed_steps_is_fitted_to_its_deadline():
    """paced_length keeps the planned length where the pace reaches it in time, else the steps that do (never fewer
    than done); train_member reads the pace over the steps to the next validation point and refits the length once,
    so the learning rate reaches zero by the deadline instead of the clock cutting the member mid-schedule."""
    import time

    from nas.study.final import train_member
    from nas.study.final_plan import paced_length

    assert paced_length(100, 793, pace=0.2, seconds_left=200.0) == 793  # 693 steps need 138.6 s
    assert paced_length(100, 793, pace=0.2, seconds_left=100.0) == 600
    assert paced_length(100, 793, pace=0.2, seconds_left=-5.0) == 100
    assert paced_length(793, 793, pace=0.2, seconds_left=0.0) == 793

    class Run:
        """A member whose steps take `pace` seconds of its own clock (none of the real one)."""

        def __init__(self, pace: float, step: int = 9, total: int = 793) -> None:
            self.pace, self.step, self.total, self.seconds, self.converged, self.stops = pace, step, total, 0.0, False, []

        def advance(self, until=None, *, deadline=None):
            until = self.total if until is None else min(until, self.total)
            self.seconds += self.pace * max(0, until - self.step)
            self.step = max(self.step, until)
            self.stops.append(self.step)

        def set_total(self, total):
            assert total >= self.step
            self.total = total

    deadline = time.perf_counter() + 100.0
    slow = Run(pace=0.2)
    fitted = train_member(slow, deadline, pace_steps=100, planned_pace=0.17)
    assert slow.stops[0] == 100 and fitted["at"] == 100 and fitted["pace"] == pytest.approx(0.2)
    assert 580 <= fitted["total"] <= 600 and slow.total == fitted["total"] and slow.step == slow.total
    assert (fitted["was"], fitted["planned_pace"]) == (793, 0.17)
    fast = Run(pace=0.05)
    assert train_member(fast, deadline, pace_steps=100) is None and fast.step == fast.total == 793
    resumed = Run(pace=0.2, step=360)  # past a rung: its pace is read over the 140 steps to 500 (40 are too few)
    fitted = train_member(resumed, deadline, pace_steps=100)
    assert resumed.stops == [500, 793] and fitted is None  # 293 more steps at 0.2 s fit in the 100 s left
    unbounded = Run(pace=1.0)
    assert train_member(unbounded, None, pace_steps=100) is None and unbounded.stops == [793]
