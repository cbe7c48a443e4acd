"""Accuracy at speed: the base's early stopping keeps its best checkpoint, hidden-state distillation
is exact where nothing was cut, the search's final stage trains exactly the K chosen front members
(resumably), and best.yaml / nas.export use their weights."""

from __future__ import annotations

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


FINAL = ["search.n_trials=4", "search.final_k=2", "final.max_steps=3", "train.max_steps=2", "search.sampler=random"]


class Calls(list):
    """Step counts of the Evaluator.fit calls; `fail(n)` makes the n-th call die like a killed run."""

    fail_at: int | None = None

    def fail(self, n: int | None) -> None:
        self.fail_at = n


@pytest.fixture
def fits(monkeypatch) -> Calls:
    """The step count of every Evaluator.fit in this process (trial fine-tunes: 2, final: 3)."""
    import nas.study.trial

    calls = Calls()
    real = nas.study.trial.Evaluator.fit

    def counting(self, model, spec, settings):
        calls.append(settings.max_steps)
        if calls.fail_at == len(calls):
            raise KeyboardInterrupt("killed in the final stage")
        return real(self, model, spec, settings)

    monkeypatch.setattr(nas.study.trial.Evaluator, "fit", counting)
    return calls


def test_final_stage_trains_exactly_k_and_export_uses_their_weights(tiny_env, fits, tmp_path, monkeypatch):
    """4 trials, K=2: exactly 2 final trainings, of the chosen members; best.yaml and nas.export take
    their weights and accuracies."""
    from omegaconf import OmegaConf

    import nas.study.final
    import nas.study.search
    from nas.export import main as export_main
    from nas.study.search import run_search
    from nas.study.weights import RunWeights

    # On this tiny task every shape ties on accuracy and the front has one member: let the chooser
    # see every completed trial as eligible (all keep their weights), so K, not the front, limits it.
    real_choose = nas.study.final.choose_final
    seen: list[list[int]] = []

    def choose_all(front, k, quality="val_accuracy"):
        """Every completed trial eligible; the front's own members rank first (so best.yaml's knee,
        taken among final-trained front members, is one of them whichever shapes the latency noise
        puts on the front)."""
        on_front = {int(n) for n in front["number"].dropna()}
        numbers = sorted(t.number for t in searches[0].study.trials if t.state.name == "COMPLETE")
        acc = [0.9 if n in on_front else 0.5 + 0.01 * n for n in numbers]
        seen.append(real_choose(pd.DataFrame({"number": numbers, "val_accuracy": acc, "is_base": False}), k, quality=quality))
        return seen[-1]

    searches: list = []
    real_init = nas.study.search.Search.__init__
    monkeypatch.setattr(nas.study.search.Search, "__init__", lambda self, *a, **kw: (searches.append(self), real_init(self, *a, **kw))[1])
    monkeypatch.setattr(nas.study.final, "choose_final", choose_all)
    monkeypatch.setattr(RunWeights, "drop_dominated", lambda self, study: None)
    run_dir = tmp_path / "run"
    cfg = make_cfg(tiny_env, *FINAL, "train.distill=hidden")
    study, search = run_search(cfg, run_dir)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # what the command line's Hydra writes
    chosen = seen[-1]
    assert len(chosen) == 2
    assert fits.count(3) == 2  # one final training per chosen member, nothing else
    final = study.user_attrs["final"]
    assert sorted(int(n) for n in final) == sorted(chosen)
    assert sorted(p.name for p in (run_dir / "models").glob("final_*")) == sorted(f"final_{n}.safetensors" for n in chosen)
    for n, result in final.items():
        assert 0.0 <= result["val_accuracy"] <= 1.0 and 0.0 <= result["test_accuracy"] <= 1.0
        assert result["steps"] == 3
    from nas.study.report import trials_frame

    rows = trials_frame(study)
    trained = rows[rows["final_val_accuracy"].notna()]
    assert sorted(int(n) for n in trained["number"]) == sorted(chosen)
    assert (pd.read_csv(run_dir / "pareto.csv")["final_val_accuracy"].notna()).any()

    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    assert best["trial"] in chosen and best["weights"] == f"models/final_{best['trial']}.safetensors"
    assert best["metrics"]["final_val_accuracy"] == pytest.approx(final[str(best["trial"])]["val_accuracy"])

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
    assert written["metrics"]["test_accuracy"] == pytest.approx(final[str(best["trial"])]["test_accuracy"])


def test_choose_final_spreads_over_the_front_from_the_most_accurate():
    import pandas as pd

    from nas.study.report import choose_final

    front = pd.DataFrame({"number": range(9), "val_accuracy": [0.70 + 0.01 * i for i in range(9)], "is_base": False})
    front = pd.concat([front, pd.DataFrame([{"number": None, "val_accuracy": 0.99, "is_base": True}])])
    assert choose_final(front, 3) == [8, 5, 2]  # ranks 0, 3, 6 by accuracy; the base is never chosen
    assert choose_final(front, 1) == [8]
    assert sorted(choose_final(front, 20)) == list(range(9))
    assert choose_final(front, 0) == []


def test_a_run_killed_in_the_final_stage_resumes_it(tiny_env, fits, tmp_path, monkeypatch):
    """Two members chosen; the run dies in the second one's training. Run again: the trials are not
    trained again, the first member is not trained again, the second is."""
    import nas.study.final
    from nas.study.search import run_search
    from nas.study.weights import RunWeights

    # On this tiny task every shape ties on accuracy, so the front has one member: choose the first two
    # completed trials instead, and keep their weights.
    monkeypatch.setattr(nas.study.final, "choose_final", lambda front, k, **_: [0, 1][:k])
    monkeypatch.setattr(RunWeights, "drop_dominated", lambda self, study: None)
    run_dir = tmp_path / "run"
    cfg = make_cfg(tiny_env, *FINAL)
    fits.fail(6)  # 4 trial fine-tunes (2 steps each), then the first final (3 steps), then the second: killed
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, run_dir)
    assert fits[:4] == [2, 2, 2, 2] and fits[4:] == [3, 3]
    assert [p.name for p in (run_dir / "models").glob("final_*.safetensors")] == ["final_0.safetensors"]
    fits.clear()
    fits.fail(None)
    study, _ = run_search(cfg, run_dir)
    assert fits == [3]  # no trial trained again; only the member not yet finished
    assert sorted(study.user_attrs["final"]) == ["0", "1"]
    assert sorted(p.name for p in (run_dir / "models").glob("final_*.safetensors")) == ["final_0.safetensors",
                                                                                      "final_1.safetensors"]


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
