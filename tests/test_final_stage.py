"""Accuracy at speed: the base's early stopping keeps its best checkpoint, hidden-state distillation
is exact where nothing was cut, the search's final stage trains exactly the K chosen front members
(resumably), and best.yaml / nas.export use their weights."""

from __future__ import annotations

import logging
import math
import re
import sys

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from nas.cut.prune import prune_model
from nas.models.registry import base_shape
from nas.models.slicing import kept_units
from nas.quality.finetune import HiddenMap, hidden_loss
from nas.spec import SubnetSpec
from tiny import make_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- hidden-state distillation -----------------------------------------------------------------


def hidden_states(model, batch):
    with torch.no_grad():
        return model(**batch, output_hidden_states=True).hidden_states


def test_hidden_loss_of_the_unpruned_model_against_itself_is_zero(tiny_bert, padded_batch):
    base = tiny_bert(layers=3)
    batch = padded_batch(pad_id=0)
    shape = base_shape(base.config)
    full = SubnetSpec.full(shape)
    same = prune_model(base, full, None)
    hmap = HiddenMap(layers=full.layers, channels=kept_units(shape, full, None).hidden)
    loss = hidden_loss(hidden_states(same, batch), hidden_states(base, batch), hmap, batch["attention_mask"])
    assert float(loss) == 0.0


def test_hidden_loss_pairs_kept_layers_with_their_teacher_layers(tiny_bert, padded_batch):
    """Layers (0, 2) of 3 and 20 of 32 channels: student layer 2 is compared with teacher layer 3 at
    the kept channels, over real tokens only."""
    base = tiny_bert(layers=3)
    batch = padded_batch(pad_id=0)
    shape = base_shape(base.config)
    spec = SubnetSpec.uniform(layers=(0, 2), heads=4, ffn=37, hidden=20, context=512).validate(shape)
    student = prune_model(base, spec, None)
    hmap = HiddenMap(layers=spec.layers, channels=kept_units(shape, spec, None).hidden)
    assert hmap.pairs() == [(0, 0), (1, 1), (2, 3)]
    s, t = hidden_states(student, batch), hidden_states(base, batch)
    mask = batch["attention_mask"].bool()
    by_hand = sum(((s[i] - t[j][..., :20]) ** 2).mean(-1)[mask].mean() for i, j in hmap.pairs()) / 3
    torch.testing.assert_close(hidden_loss(s, t, hmap, batch["attention_mask"]), by_hand)
    assert float(by_hand) > 0


# ---- the base: early stopping keeps the best checkpoint -------------------------------------------


def test_monitor_restores_the_best_validation_checkpoint(tiny_env):
    from nas.data.tasks import load_task, make_loader, tokenize
    from nas.models.loading import load_base_model, load_tokenizer
    from nas.quality.finetune import Monitor, TrainSettings, finetune
    from nas.quality.metrics import accuracy

    task = load_task({"kind": "file", "path": str(tiny_env["csv"])})
    tok = load_tokenizer(str(tiny_env["model"]))
    model = load_base_model(str(tiny_env["model"]), num_labels=2)
    train = make_loader(tokenize(task.train, tok, max_length=32), tok, batch_size=8, shuffle=True)
    val = make_loader(tokenize(task.validation, tok, max_length=32), tok, batch_size=64, shuffle=False)
    monitor = Monitor(val, every=2, patience=2)
    finetune(model, train, TrainSettings(max_steps=30, batch_size=8, lr=5e-3, distill_weight=0.0), monitor=monitor)
    assert monitor.curve and monitor.curve[0]["step"] == 2
    best = max(p["validation"] for p in monitor.curve)
    assert monitor.best_accuracy == best
    assert accuracy(model, val) == pytest.approx(best)  # the weights it ends with are the best checkpoint's
    if monitor.stopped_early:  # the last `patience` validations did not beat the best
        assert all(p["validation"] <= best for p in monitor.curve[-2:])
        assert monitor.curve[-1]["step"] < 30


def test_base_recipe_length_and_refusals():
    from nas.quality.finetune import BaseRecipe

    assert BaseRecipe(max_epochs=2.5).steps(40) == 100
    assert BaseRecipe(max_steps=7, max_epochs=9).steps(40) == 7
    with pytest.raises(ValueError, match="base.eval_every=0 must be >= 1"):
        BaseRecipe.from_cfg({"eval_every": 0})
    with pytest.raises(ValueError, match="base.max_epochs=0.0 must be > 0"):
        BaseRecipe.from_cfg({"max_epochs": 0})


# ---- the final stage -----------------------------------------------------------------------------


FINAL = ["search.n_trials=5", "search.final_k=2", "final.candidates=4", "final.rung_steps=2", "final.eval_every=1",
         "final.max_steps=6", "final.patience=0", "final.slack=1.0", "train.max_steps=2", "search.sampler=random"]


class Calls(list):
    """Step counts of the Evaluator.fit calls (the trials' fine-tunes)."""


@pytest.fixture
def fits(monkeypatch) -> Calls:
    """The step count of every Evaluator.fit in this process (trial fine-tunes: 2)."""
    import nas.study.trial

    calls = Calls()
    real = nas.study.trial.Evaluator.fit

    def counting(self, model, spec, settings):
        calls.append(settings.max_steps)
        return real(self, model, spec, settings)

    monkeypatch.setattr(nas.study.trial.Evaluator, "fit", counting)
    return calls


class Members:
    """The final stage's DistillRuns: (trial's spec, start step) at each start, (id, until, steps after)
    at each advance and the function that called it (`callers`); `kill_at(n)`: the n-th advance dies like a killed
    run."""

    def __init__(self) -> None:
        self.started: list[tuple[dict, int]] = []
        self.advanced: list[tuple[int, int | None, int]] = []
        self.callers: list[str] = []
        self.kill: int | None = None

    def rungs(self) -> list[tuple[int, int | None, int]]:
        """The halving's advances (a member's own go through nas.study.final.train_member)."""
        return [a for a, c in zip(self.advanced, self.callers) if c != "train_member"]


@pytest.fixture
def members(monkeypatch) -> Members:
    import nas.quality.distill as distill

    seen = Members()
    real_init, real_advance = distill.DistillRun.__init__, distill.DistillRun.advance

    def init(self, model, data, recipe, **kw):
        real_init(self, model, data, recipe, **kw)
        seen.started.append((kw.get("start_step", 0), id(self)))

    def advance(self, until=None, **kw):
        if seen.kill is not None and len(seen.advanced) + 1 == seen.kill:
            raise KeyboardInterrupt("killed in the final stage")
        real_advance(self, until, **kw)
        seen.advanced.append((id(self), until, self.step))
        seen.callers.append(sys._getframe(1).f_code.co_name)

    monkeypatch.setattr(distill.DistillRun, "__init__", init)
    monkeypatch.setattr(distill.DistillRun, "advance", advance)
    return seen


@pytest.fixture
def four_candidates(monkeypatch):
    """On this tiny task every shape ties on accuracy and the front would hold one member: every trial
    that trained counts as on the front here (for the final stage, the reports and the export alike),
    and final.slack=1 makes each eligible, so the halving starts from the four fastest."""
    import optuna
    from optuna.trial import TrialState

    monkeypatch.setattr(optuna.study.Study, "best_trials", property(
        lambda self: [t for t in self.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                      if "repeat_of" not in t.user_attrs]))


def test_halving_trains_exactly_its_budget_and_export_takes_the_winner(tiny_env, fits, members, four_candidates,
                                                                      tmp_path):
    """Four candidates, final_k=2: four members start, each timed for one step (validated at 0) for the plan, one
    rung to 2 steps each, the two projected best go on to the planned 6 steps, nobody else trains; best.yaml and
    nas.export take the winner's weights."""
    from omegaconf import OmegaConf

    from nas.export import main as export_main
    from nas.study.final import winner
    from nas.study.search import run_search

    run_dir = tmp_path / "run"
    cfg = make_cfg(tiny_env, *FINAL)
    study, search = run_search(cfg, run_dir)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # what the command line's Hydra writes
    plan = study.user_attrs["final_plan"]
    assert len(plan["candidates"]) == 4 and len(plan["rungs"]) == 1
    kept = plan["rungs"][0]["kept"]
    assert len(kept) == 2 and sorted(kept + [int(n) for n in plan["eliminated"]]) == sorted(plan["candidates"])
    assert len(members.started) == 4  # each candidate cut once
    rung = members.rungs()
    assert len(rung) == 4 and all(steps == 2 for _, _, steps in rung)
    assert [steps for _, until, steps in members.advanced if until is None] == [6, 6]  # the two survivors, once each
    final = study.user_attrs["final"]
    assert sorted(int(n) for n in final) == sorted(kept)
    assert all(r["steps"] == 6 and r["rule"] == "halving" for r in final.values())
    assert sorted(p.name for p in (run_dir / "models").glob("final_*")) == sorted(f"final_{n}.safetensors" for n in kept)
    assert not list((run_dir / "models").glob("rung_*"))  # survivors' rung weights are gone once they are done
    assert fits == [2] * len(fits)  # the trials' own fine-tunes only: the final stage does not use them

    champion = study.user_attrs["final_winner"]
    base = study.user_attrs["base"]
    assert "judge_accuracy" in base and all("judge_accuracy_deployed" in r for r in final.values())
    assert champion == winner(final, base_quality=base["judge_accuracy"], band=1.0)  # judged on the held-out rows
    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    assert best["trial"] == champion and best["weights"] == f"models/final_{champion}.safetensors"
    out = tmp_path / "export"
    assert export_main([f"run_dir={run_dir}", f"out={out}", "onnx=false", "latency.rounds=3",
                        "latency.sample_size=2", "latency.warmup=0"]) == 0
    exported = load_file(str(out / "model.safetensors"))
    weights = load_file(str(run_dir / best["weights"]))
    shared = [k for k in weights if k in exported]
    assert len(shared) >= len(weights) - 2  # tied / buffer names aside
    for k in shared:
        torch.testing.assert_close(exported[k], weights[k])
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["metrics"]["test_accuracy"] == pytest.approx(final[str(champion)]["test_accuracy"])


def test_a_run_killed_in_the_final_stage_resumes_it(tiny_env, fits, members, four_candidates, tmp_path):
    """Killed while the second survivor trains: run again, no trial is trained again, the halving is not
    repeated, the first survivor is not trained again, the second resumes from its rung weights."""
    from nas.study.search import run_search

    run_dir = tmp_path / "run"
    cfg = make_cfg(tiny_env, *FINAL)
    # each candidate's first step is timed for the plan (not an advance), then 4 rung advances (to step 2), the first
    # survivor's two (to its next validation point, where its pace is read, then to the end), then the second's:
    # killed
    members.kill = 7
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, run_dir)
    trial_fits = len(fits)
    assert [p.name for p in (run_dir / "models").glob("final_*.safetensors")] != []
    assert len(list((run_dir / "models").glob("rung_*.safetensors"))) == 1  # the unfinished survivor's
    members.kill, members.started, members.advanced, members.callers = None, [], [], []
    study, _ = run_search(cfg, run_dir)
    assert len(fits) == trial_fits  # no trial trained again
    assert [start for start, _ in members.started] == [2]  # one member, resumed after its rung
    assert [(until, steps) for _, until, steps in members.advanced] == [(3, 3), (None, 6)]
    assert len(study.user_attrs["final"]) == 2
    assert len(list((run_dir / "models").glob("final_*.safetensors"))) == 2


PLAN_LINE = re.compile(r"final plan: (\d+)(?: of (\d+))? candidates, (?:no halving|halving rungs (\d+) x (\d+) steps), "
                       r"(\d+) members x (\d+)(?: of the planned (\d+))? steps")


@pytest.mark.parametrize("budget", [150, 70])
def test_the_printed_plan_is_what_the_stage_then_does(tiny_env, members, four_candidates, monkeypatch, caplog, tmp_path,
                                                      budget):
    """Scripted step costs (10 s a step, the fourth candidate 40 s): 150 s fit a rung of three candidates, not four;
    70 s not even the two members at their planned 6 steps, so both train fewer, alike. Whatever the line says, the
    stage does: the candidates it trains, the rung, the members' length (their schedule's too)."""
    import nas.quality.distill as distill
    from nas.study.search import run_search

    scripted = iter([10.0, 10.0, 10.0, 40.0])
    real = distill.DistillRun.time_steps

    def timed(self, steps):
        real(self, steps)  # the real steps (the run goes on from them), a scripted cost
        return next(scripted), 0.0

    monkeypatch.setattr(distill.DistillRun, "time_steps", timed)
    caplog.set_level(logging.INFO, logger="nas")
    study, _ = run_search(make_cfg(tiny_env, *FINAL, f"final.time_budget={budget}"), tmp_path / "run")
    said = [r.getMessage() for r in caplog.records]
    # once the data is read and checked (its line first), before any work: the CPU and its features, also in the study
    machine = [i for i, m in enumerate(said) if m.startswith("machine: ")]
    assert len(machine) == 1 and said[0].startswith("data ") and "AVX2 " in said[machine[0]] and "VNNI " in said[machine[0]]
    assert not any(m.startswith(("base ", "final plan:")) for m in said[:machine[0]])
    assert {"avx2", "avx512", "vnni", "bf16", "training_precision"} <= set(study.user_attrs["machine"])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("final plan:")]
    assert len(lines) == 1
    said = PLAN_LINE.match(lines[0])
    assert said, lines[0]
    count, offered, rung_alive, rung_steps, k, steps, planned = said.groups()
    plan = study.user_attrs["final_plan"]
    trained = [n for n in plan["candidates"] if not plan["eliminated"].get(str(n), {}).get("planned_out")]
    assert len(trained) == int(count) and len(plan["candidates"]) == int(offered or count) == 4
    assert len(members.started) == 4  # every candidate timed; the planned-out ones train no further
    rung = members.rungs()
    if rung_steps is None:
        assert rung == [] and plan["rungs"] == []
    else:
        assert len({run for run, _, _ in rung}) == int(rung_alive)
        assert {until for _, until, _ in rung} == {int(rung_steps)}
        assert [r["steps"] for r in plan["rungs"]] == [int(rung_steps)]
    final = study.user_attrs["final"]
    assert len(final) == int(k) == 2
    assert all(r["steps"] == r["planned_steps"] == int(steps) and r["recipe_steps"] == 6 for r in final.values())
    if budget == 150:
        assert (count, offered, rung_alive, steps, planned) == ("3", "4", "3", "6", None)
    else:
        assert (count, rung_steps) == ("2", None) and planned == "6" and int(steps) < 6
        assert f"final.time_budget={math.ceil(plan['schedule']['needed'])}" in lines[0]


def test_choose_final_spreads_over_the_front_from_the_most_accurate():

    from nas.study.report import choose_final

    front = pd.DataFrame({"number": range(9), "val_accuracy": [0.70 + 0.01 * i for i in range(9)], "is_base": False})
    front = pd.concat([front, pd.DataFrame([{"number": None, "val_accuracy": 0.99, "is_base": True}])])
    assert choose_final(front, 3) == [8, 5, 2]  # ranks 0, 3, 6 by accuracy; the base is never chosen
    assert choose_final(front, 1) == [8]
    assert sorted(choose_final(front, 20)) == list(range(9))
    assert choose_final(front, 0) == []


def test_the_member_rules_choose_from_the_front():

    from nas.study.final import choose_members, eligible, survivors, winner
    from nas.study.settings import FinalSettings

    front = pd.DataFrame({"number": [1, 2, 3, 4, 5], "val_accuracy": [0.70, 0.76, 0.80, 0.83, 0.85],
                          "latency_ratio": [0.1, 0.2, 0.3, 0.5, 0.8], "is_base": False})
    assert list(eligible(front, base_quality=0.86, slack=0.1, cost="latency_ratio")["number"]) == [2, 3, 4, 5]

    def rule(name, k=2, candidates=3):
        s = FinalSettings(recipe=None, members=k, rule=name, candidates=candidates, slack=0.1)
        return choose_members(front, s, base_quality=0.86, cost="latency_ratio")

    # the fastest three within 10 points (trial 1 is too far below), ordered the fastest, the most accurate after its
    # trial, then by speed: a plan that trains two keeps both ends of the trade
    assert rule("halving") == [2, 4, 3]
    assert rule("halving", candidates=4) == [2, 5, 3, 4]
    from nas.study.final_plan import StepCost, plan_final
    slow = {n: StepCost(step=0.2, validation=1.0) for n in rule("halving")}
    plan = plan_final(slow, budget=360, members=2, halving=True, rung_steps=200, planned_steps=793, eval_every=100)
    # no halving fits, the members at their whole length do: the fastest and the most accurate
    assert (plan.rungs, plan.candidates, plan.member_steps) == ((), (2, 4), 793)
    assert rule("fastest") == [2, 3]
    assert rule("accuracy") == [5, 3]  # ranks 0 and 2 of 5 by accuracy
    assert rule("halving", k=0) == []
    # a rung keeps whole Pareto layers of (accuracy, cost), then the most accurate of the layer that splits
    acc = {1: 0.80, 2: 0.78, 3: 0.81, 4: 0.70}
    cost = {1: 0.3, 2: 0.2, 3: 0.5, 4: 0.4}  # 4 is dominated by 1
    assert survivors(acc, cost, 2) == [3, 1]
    assert survivors(acc, cost, 3) == [3, 1, 2]
    assert survivors(acc, cost, 4) == [3, 1, 2, 4]
    # a rung ranks where each curve is heading: a deep cut still climbing steeply goes on, a mild cut that has
    # plateaued higher for now goes out
    from nas.study.final import projected_accuracy
    late = [{"step": s, "validation": a} for s, a in ((25, 0.62), (50, 0.68), (75, 0.72), (100, 0.75))]
    flat = [{"step": s, "validation": 0.79} for s in (25, 50, 75, 100)]
    projected = {1: projected_accuracy(late, 800), 2: projected_accuracy(flat, 800)}
    assert projected[2] == pytest.approx(0.79) and projected[1] > projected[2]
    assert survivors(projected, {1: 0.2, 2: 0.3}, 1) == [1]
    assert survivors({1: 0.75, 2: 0.79}, {1: 0.2, 2: 0.3}, 1) == [2]  # by the best seen, it would have gone out
    assert projected_accuracy(late, 800) <= 0.75 + 0.05  # never more than MAX_PROJECTED_GAIN above the best seen
    falling = [{"step": s, "validation": a} for s, a in ((25, 0.80), (50, 0.78), (75, 0.77), (100, 0.76))]
    assert projected_accuracy(falling, 800) == 0.80  # a curve projects no loss below its best
    assert projected_accuracy(late[:1], 800) == 0.62  # one point: the best seen
    # the winner: the fastest within the band, as deployed; none within: the most accurate
    final = {"2": {"val_accuracy": 0.84, "val_accuracy_deployed": 0.851, "speedup_over_torch_fp32_base": 9.0},
             "3": {"val_accuracy": 0.86, "val_accuracy_deployed": 0.857, "speedup_over_torch_fp32_base": 6.0},
             "4": {"val_accuracy": 0.80, "val_accuracy_deployed": 0.80, "speedup_over_torch_fp32_base": 12.0}}
    assert winner(final, base_quality=0.86, band=1.0) == 2
    assert winner(final, base_quality=0.86, band=0.5) == 3
    assert winner(final, base_quality=0.90, band=1.0) == 3
    # judged on the held-out rows where a member has them: validation (what its checkpoint was chosen on) flatters 2
    final["2"]["judge_accuracy_deployed"], final["3"]["judge_accuracy_deployed"] = 0.835, 0.846
    assert winner(final, base_quality=0.85, band=1.0) == 3


# ---- recovery and the zero-cost estimator in the search -----------------------------------------------


def test_search_with_recovery_and_no_training(tiny_env, fits, tmp_path):
    from nas.study.search import run_search

    study, _ = run_search(make_cfg(tiny_env, "search.estimator=none", "prune.recovery=both", "search.n_trials=3",
                                   "search.sampler=random"), tmp_path / "run")
    assert fits == []  # estimator none: nothing is fine-tuned
    done = [t for t in study.trials if t.state.name == "COMPLETE" and "repeat_of" not in t.user_attrs]
    assert done
    for t in done:
        assert 0.0 <= t.user_attrs["val_accuracy"] <= 1.0
        assert t.user_attrs["recovery_error_ratio"] <= 1.0 + 1e-9
