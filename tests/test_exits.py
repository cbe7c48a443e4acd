"""Early exits (issue 39): heads trained with a member, the exit rule, onnxruntime segments and their runner, and
exit variants in the final stage, the reports and the export.

Tolerances: the runner's segments compute exactly what the single graph computes (the same layers, each int8 MatMul
quantizing the same activations), so logits are held equal to 1e-5 (fp32) and 1e-4 (int8) absolute."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import tiny
from nas.deploy.exit_runner import ExitRule as RunnerRule
from nas.deploy.exit_runner import ExitRunner
from nas.deploy.exits import export_segments, segments
from nas.deploy.onnx import export_onnx, onnx_session
from nas.deploy.quantize import QuantSettings, quantize_onnx
from nas.quality.exits import (ExitHeads, ExitRule, ExitSettings, ExitTraining, exit_costs, exit_loss, exit_taken,
                               fit_segment_costs, probabilities, search_rule)

pytestmark = pytest.mark.usefixtures("one_thread")
ATOL = {"fp32": 1e-5, "int8": 1e-4}


def member(layers: int = 4, *, pruned: bool = True) -> torch.nn.Module:
    """A tiny random 2-label BERT, cut to per-layer shapes (heads and FFN differ, hidden 24 of 32) when `pruned`."""
    from nas.cut.prune import prune_model
    from nas.spec import SubnetSpec

    base = tiny.bert(layers=layers, labels=2)
    if not pruned:
        return base
    spec = SubnetSpec(layers=tuple(range(layers)), heads=(4, 2, 3, 1)[:layers], ffn=(37, 16, 8, 24)[:layers],
                      hidden=24, context=64)
    return prune_model(base, spec, None).eval()


def inputs(n: int, seed: int = 0) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, tiny.VOCAB, (1, int(torch.randint(2, 40, (1,), generator=g))), generator=g).numpy()
            for _ in range(n)]


def single_graph(model: torch.nn.Module, folder: Path, precision: str) -> object:
    path = folder / "model.onnx"
    export_onnx(model, path, max_seq=64, fast=True)
    if precision == "int8":
        path = quantize_onnx(path, folder / "model.int8.onnx", QuantSettings())
    return onnx_session(path, threads=1)


# ---- the runner against the single graph ---------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_threshold_one_or_no_exit_gives_the_single_graphs_logits(precision, tmp_path):
    """With a threshold of 1.0 (no input's top probability is over it) every input runs every segment, and the runner's
    logits are the member's single graph's; with exits off (one segment) too. A pruned member: per-layer shapes."""
    model = member()
    heads = ExitHeads([1, 2, 3], hidden=24, labels=2, seed=1)
    single = single_graph(model, tmp_path, precision)
    export_segments(model, heads, ExitRule("confidence", (1, 2, 3), threshold=1.0), tmp_path / "exits",
                    precision=precision)
    export_segments(model, None, None, tmp_path / "off", precision=precision)
    runners = [ExitRunner(tmp_path / "exits"), ExitRunner(tmp_path / "off")]
    assert [len(r.sessions) for r in runners] == [4, 1]
    for ids in inputs(12):
        want = single.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        for runner in runners:
            logits, depth = runner(ids)
            assert depth == 4 and runner.segments_run == len(runner.sessions)
            np.testing.assert_allclose(logits, want, atol=ATOL[precision], rtol=0)


def test_segments_in_torch_compute_the_models_own_logits(tiny_roberta):
    """Cut after every layer, the segments chained in torch give the model's logits (BERT pruned per layer, RoBERTa
    with its own head and positions counted from its padding id); a mask of ones adds nothing."""
    for model in (member(), tiny_roberta(layers=3).eval()):
        layers = len(model.base_model.encoder.layer)
        heads = ExitHeads(list(range(1, layers)), hidden=int(model.config.hidden_size), labels=model.config.num_labels)
        ids = torch.randint(5, tiny.VOCAB, (1, 9))
        with torch.no_grad():
            want = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            x = ids
            for part in segments(model, heads, list(range(1, layers))):
                out = part(x)
                x = out[0] if isinstance(out, tuple) else out
        torch.testing.assert_close(x, want, atol=1e-5, rtol=1e-5)


def test_threshold_zero_leaves_every_input_at_the_first_exit_and_runs_one_segment(tmp_path):
    """Threshold 0: every top probability is over it, so every input leaves after layer 1 having run one segment of
    six, and each exit's logits are what the runner that runs every segment reads there. Its time per input falls with
    it: timed in pairs with the same runner at threshold 1 (alternating on every input, 60 inputs, 5 rounds, each
    input's median), it is faster by a margin far inside the ~4-6x the segments count gives (a generous relation, not
    a tight time)."""
    from nas.cost.exits import pair_summary, paired_inputs

    model = member(layers=6, pruned=False)
    heads = ExitHeads([1, 2, 3, 4, 5], hidden=32, labels=2)
    export_segments(model, heads, ExitRule("confidence", (1, 2, 3, 4, 5), threshold=0.0), tmp_path, precision="int8")
    early, full = ExitRunner(tmp_path), ExitRunner(tmp_path, threshold=1.0)
    assert early.rule.threshold == 0.0 and full.rule.threshold == 1.0
    xs = inputs(60, seed=3)
    for ids in xs:
        logits, depth = early(ids)
        assert depth == 1 and early.segments_run == 1
        np.testing.assert_array_equal(logits, full.all_logits(ids)[0])
        assert full(ids)[1] == 6 and full.segments_run == 6
    ms = paired_inputs({"full": lambda i: full(xs[i]), "early": lambda i: early(xs[i])}, len(xs), rounds=5)
    assert pair_summary(ms["early"], ms["full"])["latency_ms"] > 0
    # each input's median over the rounds: a stall of the busy machine in one round moves nothing
    assert np.median(ms["full"], axis=0).sum() > 1.5 * np.median(ms["early"], axis=0).sum()


def test_the_runner_refuses_a_batch_and_bad_rules(tmp_path):
    model = member(layers=2, pruned=False)
    export_segments(model, ExitHeads([1], hidden=32, labels=2), ExitRule("patience", (1,), patience=1), tmp_path,
                    precision="fp32")
    with pytest.raises(ValueError, match="one input at a time"):
        ExitRunner(tmp_path)(np.ones((2, 5), dtype=np.int64))
    with pytest.raises(ValueError, match=r"threshold=1.5 must be in \[0, 1\]"):
        ExitRunner(tmp_path, threshold=1.5)
    with pytest.raises(ValueError, match="patience=0 must be an integer >= 1"):
        ExitRunner(tmp_path, patience=0)
    # an attention mask drops padded positions: the same logits as the real tokens alone
    runner = ExitRunner(tmp_path)
    ids = inputs(1, seed=5)[0]
    padded = np.concatenate([ids, np.zeros((1, 4), dtype=np.int64)], axis=1)
    mask = np.concatenate([np.ones_like(ids), np.zeros((1, 4), dtype=np.int64)], axis=1)
    np.testing.assert_array_equal(runner(padded, mask)[0], runner(ids)[0])


# ---- the rule -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", [ExitRule("confidence", (1, 2, 3), threshold=0.7),
                                  ExitRule("confidence", (2, 3), threshold=0.55),
                                  ExitRule("patience", (1, 2, 3), patience=1),
                                  ExitRule("patience", (1, 2, 3), patience=2),
                                  ExitRule("patience", (2, 3), patience=1)])
def test_the_search_decides_as_the_shipped_runner_does(rule):
    """exit_taken (vectorised, what the rule is chosen by) and the runner's rule (one input at a time, what ships) send
    every input to the same exit."""
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(400, 4, 3))
    taken = exit_taken(logits, (1, 2, 3), rule)
    runner = RunnerRule(rule.kind, threshold=rule.threshold, patience=rule.patience)
    for i in range(len(logits)):
        runner.reset()
        where = next((p - 1 for p in rule.exits if runner.fires(logits[i, p - 1])), 3)
        assert where == taken[i]
    assert len(set(taken.tolist())) > 1  # not a degenerate case


def test_the_runners_check_reads_the_searchs_probabilities():
    """The runner's top probability (plain Python, one row) is the search's softmax (numpy, vectorised) to float64
    rounding, and its label the first of the largest logits, as argmax takes it; float32 logits as the graphs give."""
    from nas.deploy.exit_runner import top_probability
    from nas.quality.exits import probabilities

    rng = np.random.default_rng(1)
    for labels in (2, 3, 7, 20):
        logits = rng.normal(scale=4.0, size=(200, labels)).astype(np.float32)
        p = probabilities(logits)
        for row, want in zip(logits, p):
            top, label = top_probability(row[None])
            assert label == int(want.argmax()) and top == pytest.approx(float(want.max()), rel=1e-12, abs=0)
    assert top_probability(np.array([[1.0, 1.0, 0.0]], dtype=np.float32))[1] == 0  # a tie: the first, as argmax


def test_the_timing_sample_has_the_pools_mix_of_exits_and_lengths():
    """exit_sample gives each exit depth its share of the pool (largest remainders: the counts differ from size x
    share by less than one), draws within a depth across its lengths, is seeded, and takes the whole pool when the
    sample is as large."""
    from nas.study.exits import exit_sample

    rng = np.random.default_rng(0)
    depths = rng.choice([1, 2, 3, 4], size=630, p=[0.49, 0.09, 0.14, 0.28])
    lengths = rng.integers(3, 64, size=630) + 20 * (depths == 4)  # deeper inputs run longer, as real ones do
    for size in (96, 200, 37):
        pick = exit_sample(depths, lengths, size, seed=1)
        assert len(pick) == len(set(pick)) == size
        for d in (1, 2, 3, 4):
            want = size * np.mean(depths == d)
            assert abs(np.sum(depths[pick] == d) - want) < 1
        # within the first exit: its short and its long inputs both drawn, spread as its own lengths are
        first = lengths[[i for i in pick if depths[i] == 1]]
        pool = lengths[depths == 1]
        assert abs(np.median(first) - np.median(pool)) <= 3 and first.min() <= np.quantile(pool, 0.1)
    assert exit_sample(depths, lengths, 96, seed=1) == exit_sample(depths, lengths, 96, seed=1)
    assert exit_sample(depths, lengths, 96, seed=1) != exit_sample(depths, lengths, 96, seed=2)
    assert exit_sample(depths[:50], lengths[:50], 96) == list(range(50))


def test_patience_is_pabees_the_prediction_unchanged_that_many_times():
    """Patience 1 lets an input go at the second exit that agrees with the one before; patience 2 needs three in a
    row."""
    one, other = [3.0, 0.0], [0.0, 3.0]
    logits = np.array([[one, one, one, other], [one, other, other, one], [one, other, one, one]])
    assert exit_taken(logits, (1, 2, 3), ExitRule("patience", (1, 2, 3), patience=1)).tolist() == [1, 2, 3]
    assert exit_taken(logits, (1, 2, 3), ExitRule("patience", (1, 2, 3), patience=2)).tolist() == [2, 3, 3]


def test_search_takes_the_cheapest_rule_within_the_tolerance():
    """Inputs the first exit gets right with confidence leave there; the chosen rule is never less accurate than full
    depth minus the tolerance, and no rule of those it compared is both cheaper and within it."""
    from nas.quality.exits import candidate_rules

    rng = np.random.default_rng(1)
    n = 500
    labels = rng.integers(0, 2, n)
    easy = rng.random(n) < 0.6
    logits = np.zeros((n, 3, 2))
    for j, sharp in enumerate((4.0, 3.0, 2.0)):
        right = np.where(easy | (j == 2), sharp, rng.normal(0, 0.3, n))  # hard inputs: only full depth is sure
        logits[np.arange(n), j, labels] = right
    costs = np.cumsum(np.full((n, 3), 1e-3), axis=1)
    settings = ExitSettings(tolerance=0.3, margin=0.0)
    choice = search_rule(logits, labels, costs, (1, 2), settings)
    assert choice.full_accuracy == 1.0 and choice.accuracy >= 1.0 - 0.003
    assert choice.cost < choice.full_cost * 0.75 and choice.shares[0] > 0.5
    correct = probabilities(logits).argmax(-1) == labels[:, None]
    for rule in candidate_rules((1, 2), settings, 2):
        taken = exit_taken(logits, (1, 2), rule)
        acc, cost = correct[np.arange(n), taken].mean(), costs[np.arange(n), taken].mean()
        assert not (acc >= choice.full_accuracy - 0.003 and cost < choice.cost - 1e-12)
    fixed = search_rule(logits, labels, costs, (1, 2), ExitSettings(threshold=0.9))
    assert fixed.tried == 1 and fixed.rule == ExitRule("confidence", (1, 2), threshold=0.9)


def test_a_margin_keeps_a_rule_whose_change_is_within_the_tolerance_only_by_chance():
    """Exit 1 is confident on every input, right on 90 of 100 where full depth is wrong on 10 others: the same
    accuracy, so margin 0 lets every input go at exit 1; its change has a paired standard error of about 4.5 points
    (20 of 100 rows disagree), so with margin 1 only exit 2 (right wherever full depth is) stays within 0.3 points."""
    n = 100
    labels = np.zeros(n, dtype=np.int64)
    logits = np.zeros((n, 3, 2))
    logits[:, :, 0] = 5.0  # every exit sure of label 0 (right)
    logits[:10, 0] = [-5.0, 5.0]  # exit 1 wrong on the first 10
    logits[10:20, 2] = [-5.0, 5.0]  # full depth wrong on the next 10, exit 2 with it
    logits[10:20, 1] = [-5.0, 5.0]
    costs = np.cumsum(np.full((n, 3), 1e-3), axis=1)
    loose = search_rule(logits, labels, costs, (1, 2), ExitSettings(tolerance=0.3, margin=0.0))
    assert loose.shares[0] == 1.0 and loose.accuracy == loose.full_accuracy == 0.9
    strict = search_rule(logits, labels, costs, (1, 2), ExitSettings(tolerance=0.3, margin=1.0))
    assert strict.shares[0] == 0.0 and strict.shares[1] == 1.0 and strict.accuracy == 0.9
    with pytest.raises(ValueError, match=r"exits.margin=-1 must be between 0 and 10"):
        ExitSettings.from_cfg({"margin": -1})


def test_segment_costs_are_fitted_per_token_and_add_up_by_exit():
    tokens = np.array([5, 10, 20, 40])
    seconds = np.stack([1e-4 + 1e-5 * tokens, 2e-4 + 0 * tokens], axis=1)
    fit = fit_segment_costs(tokens, seconds)
    np.testing.assert_allclose(fit, [[1e-4, 1e-5], [2e-4, 0.0]], atol=1e-12)
    np.testing.assert_allclose(exit_costs(fit, np.array([10])), [[2e-4, 4e-4]])


# ---- refusals, in one line, before any work ------------------------------------------------------------------


def test_bad_exit_settings_are_refused_in_one_line():
    bad = [({"threshold": 1.5}, r"exits.threshold=1.5 must be in \[0, 1\]"),
           ({"threshold": -0.1}, r"exits.threshold=-0.1 must be in \[0, 1\]"),
           ({"patience": 0}, "exits.patience=0 must be an integer >= 1"),
           ({"layers": "some"}, "exits.layers='some' is not known"),
           ({"rule": "entropy"}, "exits.rule='entropy' is not known"),
           ({"head_lr": 0}, "exits.head_lr=0 must be > 0"),
           ({"thresold": 0.9}, "exits.thresold is not a setting")]
    for cfg, message in bad:
        with pytest.raises(ValueError, match=message) as e:
            ExitSettings.from_cfg(cfg)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"threshold=2 must be in \[0, 1\]"):
        ExitRule("confidence", (1,), threshold=2).validate()


def test_an_exit_on_a_layer_the_member_does_not_keep_is_refused():
    settings = ExitSettings(layers=(1, 5))
    with pytest.raises(ValueError, match=r"base layer 5, which is not kept by the member; the member keeps base layers "
                                         r"\[0, 1, 2\]"):
        settings.positions((0, 1, 2))
    with pytest.raises(ValueError, match="base layer 2, which is the member's last layer"):
        ExitSettings(layers=(2,)).positions((0, 1, 2))
    assert settings.positions((0, 1, 2), strict=False) == (2,)  # a final stage's member: skipped
    assert ExitSettings(layers="all").positions((0, 2, 4, 5)) == (1, 2, 3)
    assert ExitSettings(layers="none").positions((0, 1)) == ()


@pytest.mark.parametrize("case, message", [
    (dict(lm=True), "early exits are for classifiers"),
    (dict(batch_size=4), "latency.batch_size=4 must be 1"),
    (dict(runtime="torch"), "latency.runtime=torch must be onnxruntime"),
    (dict(quantization="static"), "latency.quantization=static must be dynamic"),
])
def test_exits_where_they_cannot_run_are_refused_or_left_off(case, message):
    where = {"lm": False, "batch_size": 1, "runtime": "onnxruntime", "quantization": "dynamic", **case}
    with pytest.raises(ValueError, match=f"^exits.layers=all: .*{message}"):
        ExitSettings(layers="all").enabled(**where)
    assert ExitSettings(layers="auto").enabled(**where) is False  # auto: off, silently
    assert ExitSettings(layers="auto").enabled(lm=False, batch_size=1, runtime="onnxruntime", quantization="dynamic")
    with pytest.raises(ValueError, match="model_type='llama'"):
        ExitSettings(layers=(1,)).enabled(lm=False, batch_size=1, runtime="onnxruntime", quantization="dynamic",
                                         config=tiny.llama(labels=2).config)


def test_the_search_refuses_exits_it_cannot_run_before_any_work(tiny_env, tmp_path, monkeypatch):
    import nas.study.search as search

    monkeypatch.setattr(search, "prepare", lambda cfg: pytest.fail("prepared the base despite the bad setting"))
    for bad, message in ((["latency.runtime=onnxruntime", "latency.batch_size=2"], "latency.batch_size=2 must be 1"),
                         (["latency.runtime=torch"], "latency.runtime=torch must be onnxruntime")):
        cfg = tiny.make_cfg(tiny_env, *bad, "exits.layers=all", "latency.sample_size=4")
        with pytest.raises(ValueError, match=message):
            search.Search(cfg, tmp_path / "run").prepare()


def test_nas_train_refuses_an_exit_on_a_layer_the_shape_drops_before_any_work(tmp_path, monkeypatch):
    from rich.console import Console

    import nas.train
    from nas.config import compose

    arch = tmp_path / "config.yaml"
    arch.write_text(yaml.safe_dump({"arch": {"layers": [0, 1, 2], "heads": [12] * 3, "ffn": [1536] * 3,
                                             "hidden": 384, "context": 64}}))
    monkeypatch.setattr(nas.train, "prepare", lambda cfg: pytest.fail("prepared the base despite the bad setting"))
    overrides = ["exits.layers=[1,4]"]
    with pytest.raises(ValueError, match="base layer 4, which is not kept by the member"):
        nas.train.run_final(compose([f"+arch={arch}", *overrides]), arch, tmp_path / "out", overrides=overrides,
                            console=Console(quiet=True))


# ---- training ----------------------------------------------------------------------------------------------------


def test_heads_train_at_their_own_rate_and_leave_the_member_as_it_was_cut(padded_batch):
    """Attached, the heads are part of the member's state (checkpoints carry them), have their own optimiser groups at
    exits.head_lr, and add depth-weighted losses; detached, the member's state is the plain cut's again."""
    from nas.quality.optim import adamw

    model = member(layers=3, pruned=False)
    keys = set(model.state_dict())
    training = ExitTraining(ExitHeads([1, 2], hidden=32, labels=2), head_lr=1e-3, distill_weight=0.5,
                            temperature=2.0).attach(model)
    assert set(model.state_dict()) > keys
    optimizer = adamw(model, lr=1e-4, weight_decay=0.01)
    training.regroup(optimizer)
    heads = {id(p) for p in training.heads.parameters()}
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert not ids & heads or (ids <= heads and group["lr"] == 1e-3)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    batch = padded_batch(pad_id=0, batch=3, length=9)
    labels = torch.tensor([0, 1, 1])
    out = model(**batch, output_hidden_states=True)
    target = torch.randn(3, 2)
    loss = training.loss(out.hidden_states, batch["attention_mask"], labels, target)
    parts = []
    for p in (1, 2):  # by hand: (1 - w) CE + w T^2 KL, weighted by depth p / 3
        one = ExitHeads([p], hidden=32, labels=2)
        one.heads[str(p)] = training.heads.heads[str(p)]
        parts.append(exit_loss(one, out.hidden_states, batch["attention_mask"], labels, target, distill_weight=0.5,
                               temperature=2.0))
    torch.testing.assert_close(loss, parts[0] + parts[1])
    logits1 = training.heads(1, out.hidden_states[1], batch["attention_mask"])
    ce = torch.nn.functional.cross_entropy(logits1, labels)
    kl = torch.nn.functional.kl_div(torch.log_softmax(logits1 / 2, -1), torch.log_softmax(target / 2, -1),
                                    log_target=True, reduction="batchmean") * 4
    torch.testing.assert_close(parts[0], (0.5 * ce + 0.5 * kl) / 3)
    training.detach(model)
    assert set(model.state_dict()) == keys


# ---- in a run: the final stage, the reports, the export --------------------------------------------------------

EXIT_RUN = ["search.n_trials=4", "search.final_k=1", "final.candidates=2", "final.rung_steps=2", "final.eval_every=2",
            "final.max_steps=6", "final.patience=0", "final.slack=1.0", "final.transfer=none", "train.max_steps=2",
            "search.sampler=random", "latency.runtime=onnxruntime", "latency.precision=int8",
            "latency.model=measured", "latency.sample_size=4", "exits.layers=all", "exits.sample_size=6"]


@pytest.fixture(scope="module")
def exit_run(tmp_path_factory):
    """A finished tiny search on a 3-layer BERT whose final member trained with exits after its layers."""
    from omegaconf import OmegaConf

    from nas.study.search import run_search

    root = tmp_path_factory.mktemp("exit_run")
    env = tiny.task_folder(root / "env", rows=120, own=0.8, layers=3)
    space = {**tiny.TINY_SPACE, "axes": {**tiny.TINY_SPACE["axes"], "layers": {"low": 3, "high": 3}}}
    cfg = tiny.make_cfg(env, *EXIT_RUN, space=space)
    run_dir = root / "run"
    study, _ = run_search(cfg, run_dir)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return study, run_dir


def test_the_final_stage_trains_exits_and_shows_the_variant_as_a_member(exit_run):
    from nas.study.final import winner_variant
    from nas.study.report import cost_column, pareto_frame

    study, run_dir = exit_run
    final, exits = study.user_attrs["final"], study.user_attrs["final_exits"]
    assert set(exits) == set(final) and len(final) == 1
    (n, variant), = exits.items()
    assert (run_dir / "models" / f"final_{n}.exits.safetensors").is_file()
    rule = ExitRule.from_dict(variant["rule"])
    assert rule.exits and set(rule.exits) <= {1, 2} and variant["heads"]["positions"] == [1, 2]
    for key in ("val", "judge", "test"):
        assert 0 <= variant[f"{key}_accuracy_deployed"] <= 1
        assert sum(variant[f"{key}_exit_shares"].values()) == pytest.approx(1.0)
    assert variant["speedup_over_static"] > 0 and variant["speedup_over_quantized_base"] > 0
    assert variant["speedup_over_torch_fp32_base"] == pytest.approx(
        final[n]["speedup_over_torch_fp32_base"] * variant["speedup_over_static"])
    # the winner rule treats both alike
    base = study.user_attrs["base"]
    chosen = winner_variant(final, exits, base_quality=base["judge_accuracy"], band=1.0)
    assert chosen == (study.user_attrs["final_winner"], study.user_attrs["final_winner_exits"])
    # its own row: pareto.csv, the front the reports draw from
    front = pareto_frame(study, base, cost=cost_column(study.user_attrs["objectives"]))
    rows = front[front["state"] == "EXITS"]
    assert len(rows) == 1 and rows.iloc[0]["shape"].endswith("+exits") and rows.iloc[0]["number"] == int(n)
    assert rows.iloc[0]["final_test_accuracy_deployed"] == pytest.approx(variant["test_accuracy_deployed"])
    written = (run_dir / "pareto.csv").read_text()
    assert "+exits" in written and "EXITS" in written


def test_winner_variant_picks_an_exit_variant_that_is_faster_within_the_band():
    from nas.study.final import winner_variant

    final = {"3": {"judge_accuracy_deployed": 0.80, "speedup_over_torch_fp32_base": 5.0},
             "7": {"judge_accuracy_deployed": 0.70, "speedup_over_torch_fp32_base": 9.0}}
    exits = {"3": {"judge_accuracy_deployed": 0.795, "speedup_over_torch_fp32_base": 7.0},
             "7": {"judge_accuracy_deployed": 0.60, "speedup_over_torch_fp32_base": 12.0}}
    assert winner_variant(final, exits, base_quality=0.805, band=1.0) == (3, True)
    assert winner_variant(final, {}, base_quality=0.805, band=1.0) == (3, False)
    assert winner_variant(final, exits, base_quality=0.90, band=1.0) == (3, False)  # none within: the most accurate


def test_pick_chooses_an_exit_variant_and_the_export_ships_its_runner(exit_run, tmp_path):
    """pick=min_latency takes the variant where it is the fastest row; exits=true ships the winner's member with its
    exits: the segments, exits.json and exit_runner.py beside model.int8.onnx, the rule and threshold surviving export
    and reload; at threshold 1 the reloaded runner gives model.int8.onnx's logits."""
    from nas.export import choose, main as export_main
    from nas.study.report import cost_column, pareto_frame

    study, run_dir = exit_run
    (n, variant), = study.user_attrs["final_exits"].items()
    front = pareto_frame(study, study.user_attrs["base"], cost=cost_column(study.user_attrs["objectives"]))
    faster = variant["speedup_over_static"] > 1
    row = choose(front, pick="min_latency", cost="latency_ratio")
    assert isinstance(row.get("exits"), str) == faster
    assert isinstance(choose(front, pick="winner", winner=int(n), winner_exits=True).get("exits"), str)
    assert not isinstance(choose(front, pick="winner", winner=int(n), winner_exits=False).get("exits"), str)

    out = tmp_path / "export"
    assert export_main([f"run_dir={run_dir}", f"out={out}", "pick=trial", f"trial={n}", "exits=true",
                        "latency.rounds=3", "latency.sample_size=2", "latency.warmup=0"]) == 0
    manifest = json.loads((out / "exits.json").read_text())
    written = yaml.safe_load((out / "config.yaml").read_text())
    rule = {k: v for k, v in variant["rule"].items() if k != "exits"}
    assert manifest["rule"] == rule and written["exits"]["rule"] == rule
    assert manifest["exits"] == variant["rule"]["exits"] == written["exits"]["exits"]
    assert (out / "exit_runner.py").is_file() and (out / "model.int8.onnx").is_file()
    assert "## Run it with early exits" in (out / "README.md").read_text()
    reloaded = ExitRunner(out)
    assert reloaded.rule.kind == variant["rule"]["kind"]
    assert reloaded.rule.threshold == variant["rule"]["threshold"]
    assert reloaded.rule.patience == variant["rule"]["patience"]
    single = onnx_session(out / "model.int8.onnx", threads=1)
    full = ExitRunner(out, threshold=1.0)
    for ids in inputs(8, seed=7):
        want = single.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        np.testing.assert_allclose(full(ids)[0], want, atol=ATOL["int8"], rtol=0)
        logits = np.stack([np.concatenate(reloaded.all_logits(ids))])
        where = exit_taken(logits, tuple(manifest["exits"]), ExitRule.from_dict(variant["rule"]))[0]
        assert reloaded(ids)[1] == reloaded.exits[where]
    # exits=false ships the member alone, and removes an earlier export's segments
    assert export_main([f"run_dir={run_dir}", f"out={out}", "pick=trial", f"trial={n}", "exits=false", "onnx=false",
                        "latency.rounds=3", "latency.sample_size=2", "latency.warmup=0"]) == 0
    assert not (out / "exits.json").exists() and not list(out.glob("exit_*.onnx"))
