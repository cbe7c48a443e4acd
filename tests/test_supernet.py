"""The slimmable supernet on a tiny random BERT: slicing the untrained supernet at the full shape is
the base; every shape the spaces sample slices to a model with the closed-form parameter count whose
logits equal the elastic (training) forward's; one sandwich step moves exactly the units of the
shapes it trained; a training killed midway resumes from its checkpoint and ends where an
uninterrupted run ends; a second worker waits for the first and reads its result; settings are
checked at the boundary."""

from __future__ import annotations

import copy
import functools
import random
import threading
from types import SimpleNamespace

import pytest
import torch

import tiny
from nas.config import compose
from nas.cut.importance import ImportanceScores
from nas.cut.prune import prune_model
from nas.models.registry import base_shape
from nas.models.slicing import keep_top
from nas.quality.supernet import (
    StepBatches,
    Supernet,
    SupernetSettings,
    evaluate_slice,
    largest_spec,
    random_spec,
    sandwich,
    sandwich_losses,
    smallest_spec,
    train_supernet_cached,
)
from nas.spec import BaseShape, SubnetSpec
from nas.study.space import SearchSpace, available_spaces

VOCAB, TYPES, LABELS, HEAD = 99, 2, 2, 16
SHAPE = BaseShape(num_layers=3, num_heads=6, head_size=HEAD, hidden_size=96, ffn_size=74, max_positions=64)
MAX_LENGTH = 32
PER_LAYER_SPACE = {  # absolute sizes, per-layer heads / ffn
    "name": "tiny_per_layer", "per_layer": True, "align": 1,
    "axes": {"layers": {"low": 1, "high": 3}, "heads": {"low": 1, "high": 6}, "ffn": {"choices": [5, 20, 74]},
             "hidden": {"choices": [40, 96]}, "context": {"choices": [8, 16, 32]}},
}
CAPPED_SPACE = {  # its largest shape is smaller than the base on every width axis
    "name": "capped", "per_layer": False, "align": 1,
    "axes": {"layers": {"low": 1, "high": 2}, "heads": {"low": 2, "high": 4, "step": 2}, "ffn": {"choices": [10, 30]},
             "hidden": {"choices": [48, 64]}, "context": {"choices": [16, 32]}},
}

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_bert(seed: int = 0):
    return tiny.bert(layers=SHAPE.num_layers, hidden=SHAPE.hidden_size, heads=SHAPE.num_heads, ffn=SHAPE.ffn_size,
                     positions=SHAPE.max_positions, labels=LABELS, types=TYPES, seed=seed)


def random_scores(seed: int = 0) -> ImportanceScores:
    """Scores in no particular order, so every axis keeps scattered units (not the first k)."""
    g = torch.Generator().manual_seed(seed)
    return ImportanceScores(
        layers=torch.rand(SHAPE.num_layers, generator=g), heads=torch.rand(SHAPE.num_layers, SHAPE.num_heads, generator=g),
        ffn=torch.rand(SHAPE.num_layers, SHAPE.ffn_size, generator=g), hidden=torch.rand(SHAPE.hidden_size, generator=g),
        method="random",
    )


def bert_params(spec: SubnetSpec) -> int:
    """Closed-form parameter count of a pruned BertForSequenceClassification."""
    d, a = spec.hidden, HEAD
    total = VOCAB * d + spec.context * d + TYPES * d + 2 * d  # embeddings + LayerNorm
    for h, f in zip(spec.heads, spec.ffn, strict=True):
        total += 3 * (d * h * a + h * a) + (h * a * d + d) + 2 * d  # Q, K, V, output, LayerNorm
        total += (d * f + f) + (f * d + d) + 2 * d  # FFN in, out, LayerNorm
    return total + (d * d + d) + (d * LABELS + LABELS)  # pooler, classifier


def resolved(space_cfg) -> SearchSpace:
    """The space on this BERT; a decoder space's vocabulary axis (causal language models only) is left out."""
    return tiny.classifier_axes(SearchSpace.from_cfg(space_cfg)).resolve(SHAPE, max_length=MAX_LENGTH)


@functools.cache
def all_spaces() -> dict[str, SearchSpace]:
    shipped = {name: resolved(compose([f"+space={name}"]).space) for name in available_spaces()}
    return {**shipped, "tiny_per_layer": resolved(PER_LAYER_SPACE), "capped": resolved(CAPPED_SPACE)}


def batch(length: int = 16, n: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded random ids with token types and labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    for i in range(1, n):
        mask[i, length - 3 * i:] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask,
            "token_type_ids": (torch.arange(length) >= length // 2).long().expand(n, -1) * mask,
            "labels": torch.arange(n) % LABELS}


def cut(b: dict[str, torch.Tensor], context: int) -> dict[str, torch.Tensor]:
    return {k: (v[:, :context] if v.ndim == 2 else v) for k, v in b.items()}


def inputs(b):
    return {k: v for k, v in b.items() if k != "labels"}


# ---- slicing ----------------------------------------------------------------------------------------


def test_full_slice_of_the_untrained_supernet_is_the_base():
    base, scores = tiny_bert(), random_scores()
    net = Supernet(copy.deepcopy(base), scores)
    full = SubnetSpec.full(SHAPE)
    b = batch()
    with torch.no_grad():
        want = base(**inputs(b)).logits
        sliced = net.slice(full)
        assert sliced.config.num_hidden_layers == SHAPE.num_layers
        torch.testing.assert_close(sliced(**inputs(b)).logits, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(net.forward(full, b), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", [*available_spaces(), "tiny_per_layer", "capped"])
def test_every_sampled_shape_slices_to_the_closed_form_model_and_matches_the_elastic_forward(name):
    space = all_spaces()[name]
    base, scores = tiny_bert(), random_scores()
    net = Supernet(base, scores)
    rng = random.Random(0)
    specs = {largest_spec(space, SHAPE, scores), smallest_spec(space, SHAPE, scores),
             *(random_spec(space, SHAPE, scores, rng) for _ in range(12))}
    choices = space.choices()
    assert len(specs) >= 2
    b = batch()
    for spec in specs:
        spec.validate(SHAPE)
        # the shape is one the space offers, its layers the most important ones
        assert len(spec.layers) in choices.get("layers", [SHAPE.num_layers])
        assert spec.layers == tuple(int(i) for i in keep_top(scores.layers, len(spec.layers)))
        assert set(spec.heads) <= set(choices.get("heads", [SHAPE.num_heads]))
        assert spec.hidden in choices.get("hidden", [SHAPE.hidden_size])
        model = net.slice(spec)
        assert sum(p.numel() for p in model.parameters()) == bert_params(spec), spec.describe()
        assert model.config.hidden_size == spec.hidden and model.config.nas_heads == list(spec.heads)
        bb = cut(b, spec.context)
        with torch.no_grad():
            physical = model(**inputs(bb)).logits
            elastic = net.forward(spec, bb)
        torch.testing.assert_close(elastic, physical, atol=1e-5, rtol=0, msg=spec.describe())
        # the slice is prune_model of the supernet: the same weights a trial would get
        same = prune_model(net.model, spec, scores)
        for (n1, p1), (n2, p2) in zip(model.named_parameters(), same.named_parameters(), strict=True):
            assert n1 == n2 and torch.equal(p1, p2)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_elastic_forward_equals_the_physical_slice_in_every_family(family, tiny_bert, tiny_roberta, tiny_distilbert,
                                                                   padded_batch):
    base = {"bert": tiny_bert, "roberta": tiny_roberta, "distilbert": tiny_distilbert}[family](layers=3)
    shape = base_shape(base.config)
    g = torch.Generator().manual_seed(5)
    scores = ImportanceScores(
        layers=torch.rand(shape.num_layers, generator=g), heads=torch.rand(shape.num_layers, shape.num_heads, generator=g),
        ffn=torch.rand(shape.num_layers, shape.ffn_size, generator=g), hidden=torch.rand(shape.hidden_size, generator=g),
        method="random")
    net = Supernet(base, scores)
    b = padded_batch(pad_id=base.config.pad_token_id, length=9)
    rng = random.Random(family)
    specs = [SubnetSpec.full(shape)] + [
        SubnetSpec(layers=scores.top_layers(n), heads=tuple(rng.randint(1, shape.num_heads) for _ in range(n)),
                   ffn=tuple(rng.randint(1, shape.ffn_size) for _ in range(n)), hidden=rng.randint(4, shape.hidden_size),
                   context=rng.choice([9, 16, shape.max_positions]))
        for n in (1, 2, 3, 2)]
    with torch.no_grad():
        for spec in specs:
            torch.testing.assert_close(net.forward(spec, b), net.slice(spec)(**b).logits, atol=1e-5, rtol=0,
                                       msg=spec.describe())


def test_elastic_forward_is_differentiable_into_the_full_width_weights():
    base, scores = tiny_bert(), random_scores()
    net = Supernet(base, scores)
    spec = SubnetSpec.uniform(layers=scores.top_layers(2), heads=2, ffn=20, hidden=40, context=64)
    net.forward(spec, batch()).sum().backward()
    layer = max(set(range(SHAPE.num_layers)) - set(spec.layers))
    dropped = base.bert.encoder.layer[layer].intermediate.dense.weight
    assert dropped.grad is None  # a layer the shape drops gets no gradient
    kept = base.bert.encoder.layer[spec.layers[0]].intermediate.dense.weight.grad
    rows = keep_top(scores.ffn[spec.layers[0]], 20)
    cols = keep_top(scores.hidden, 40)
    outside = torch.ones_like(kept, dtype=torch.bool)
    outside[rows[:, None], cols[None, :]] = False
    assert kept[rows[:, None], cols[None, :]].abs().sum() > 0 and not kept[outside].any()


def test_a_batch_longer_than_the_context_is_refused():
    net = Supernet(tiny_bert(), random_scores())
    spec = SubnetSpec.uniform(layers=(0,), heads=1, ffn=5, hidden=40, context=8)
    with pytest.raises(ValueError, match="16 tokens does not fit the spec's context 8"):
        net.forward(spec, batch(16))


# ---- one sandwich step ------------------------------------------------------------------------------


def test_one_sandwich_step_updates_the_largest_and_the_smallest_shape_and_nothing_else():
    space = all_spaces()["capped"]
    base, scores = tiny_bert(), random_scores()
    net = Supernet(copy.deepcopy(base), scores)
    settings = SupernetSettings(weight_decay=0.0, random_subnets=0)
    specs = sandwich(space, SHAPE, scores, n_random=0, rng=random.Random(0))
    large, small = specs
    assert len(large.layers) == 2 and large.ffn[0] == 30 and large.hidden == 64 and large.heads[0] == 4
    assert len(small.layers) == 1 and small.ffn[0] == 10 and small.hidden == 48 and small.heads[0] == 2
    b = cut(batch(), 16)
    with torch.no_grad():
        before = {s: net.forward(s, b) for s in specs}
    opt = torch.optim.AdamW(net.model.parameters(), lr=1e-3, weight_decay=0.0)
    net.model.train()
    opt.zero_grad()
    losses = sandwich_losses(net, specs, b, settings)
    opt.step()
    net.model.eval()
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    with torch.no_grad():
        for s in specs:
            assert not torch.allclose(net.forward(s, b), before[s]), s.describe()

    # FFN rows of the first kept layer: the smallest's 10 moved, the largest's other 20 moved, the rest did not
    layer = small.layers[0]
    assert layer in large.layers
    w_new = net.model.bert.encoder.layer[layer].intermediate.dense.weight.detach()
    w_old = base.bert.encoder.layer[layer].intermediate.dense.weight.detach()
    moved = (w_new != w_old).any(dim=1)
    top10, top30 = set(keep_top(scores.ffn[layer], 10).tolist()), set(keep_top(scores.ffn[layer], 30).tolist())
    assert top10 <= top30
    assert all(moved[i] for i in top10) and all(moved[i] for i in top30 - top10)
    assert not any(moved[i] for i in set(range(SHAPE.ffn_size)) - top30)
    # hidden channels outside the largest shape's 64 never move; the layer no shape keeps never moves
    word_moved = (net.model.bert.embeddings.word_embeddings.weight != base.bert.embeddings.word_embeddings.weight).any(0)
    assert set(torch.nonzero(word_moved).flatten().tolist()) <= set(keep_top(scores.hidden, 64).tolist())
    dropped = (set(range(SHAPE.num_layers)) - set(large.layers)).pop()
    for p_new, p_old in zip(net.model.bert.encoder.layer[dropped].parameters(),
                            base.bert.encoder.layer[dropped].parameters(), strict=True):
        assert torch.equal(p_new, p_old)


def test_in_place_distillation_targets_the_largest_shape():
    """With distill_weight 1 the smallest's loss is its KL to the largest's logits: zero when both are the same shape."""
    base, scores = tiny_bert(), random_scores()
    net = Supernet(base, scores)
    full = SubnetSpec.full(SHAPE)
    losses = sandwich_losses(net, [full, full], batch(), SupernetSettings(distill_weight=1.0))
    assert losses[0] > 0.1 and losses[1] == pytest.approx(0.0, abs=1e-6)


# ---- training: checkpoints, resume, cache, lock -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    import datasets

    from nas.data.tasks import tokenize

    tokenizer = tiny.write_tokenizer(tmp_path_factory.mktemp("supernet_data"))
    texts, labels = tiny.review_texts(48, words=(4, 30))
    ds = datasets.Dataset.from_dict({"text": texts, "label": labels})
    tokenized = {}

    def at(context: int):
        if context not in tokenized:
            tokenized[context] = tokenize(ds, tokenizer, max_length=context)
        return tokenized[context]

    return SimpleNamespace(tokenizer=tokenizer, tokenized=at, dataset=ds)


def run_cached(tiny_data, cache_dir, settings, *, on_step=None, space_name="triple", base=None):
    space = all_spaces()[space_name]
    base, scores = base or tiny_bert(), random_scores()

    def batches():
        return StepBatches(tiny_data.tokenized, tiny_data.tokenizer, contexts=space.axes["context"].values,
                           batch_size=settings.batch_size, seed=settings.seed)

    return train_supernet_cached(base, scores, space, batches, settings, cache_dir=cache_dir, on_step=on_step)


RESUME = SupernetSettings(steps=5, batch_size=8, random_subnets=1, checkpoint_every=2, lr=1e-3, seed=3)


class Killed(RuntimeError):
    pass


def test_a_training_killed_midway_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_run(tiny_data, tmp_path):
    straight, info = run_cached(tiny_data, tmp_path / "a", RESUME)
    assert info["cached"] is False and info["resumed_from"] == 0 and len(info["history"]) == RESUME.steps
    assert len({h["context"] for h in info["history"]}) > 1  # random contexts

    def kill_at_3(step, record):
        if step == 3:
            raise Killed("killed at step 3")

    with pytest.raises(Killed):
        run_cached(tiny_data, tmp_path / "b", RESUME, on_step=kill_at_3)
    partial = list((tmp_path / "b" / "supernet").glob("*.partial"))
    assert len(partial) == 1 and (partial[0] / "checkpoint.pt").is_file()
    assert torch.load(partial[0] / "checkpoint.pt", weights_only=False)["step"] == 2
    assert not [p for p in (tmp_path / "b" / "supernet").iterdir() if p.is_dir() and p.suffix != ".partial"]

    seen = []
    resumed, rinfo = run_cached(tiny_data, tmp_path / "b", RESUME, on_step=lambda s, r: seen.append(s))
    assert seen == [3, 4, 5] and rinfo["resumed_from"] == 2
    assert [h["losses"] for h in rinfo["history"]] == [h["losses"] for h in info["history"]]
    for (n1, p1), (n2, p2) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert not list((tmp_path / "b" / "supernet").glob("*.partial"))  # removed once the result is saved

    # cached: read back, not trained again, the same weights
    again, ainfo = run_cached(tiny_data, tmp_path / "b", RESUME, on_step=lambda s, r: seen.append(-s))
    assert ainfo["cached"] is True and seen == [3, 4, 5]
    for p1, p2 in zip(straight.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(p1, p2)
    # how it runs (threads, checkpoints) is not part of the recipe: still the cached supernet
    _, tinfo = run_cached(tiny_data, tmp_path / "b", replace_settings(RESUME, threads=1, checkpoint_every=0),
                          on_step=lambda s, r: seen.append(-s))
    assert tinfo["cached"] is True and seen == [3, 4, 5]
    # what it computes is: another learning rate trains a supernet of its own
    _, linfo = run_cached(tiny_data, tmp_path / "b", replace_settings(RESUME, lr=2e-3, steps=1))
    assert linfo["cached"] is False
    assert len([p for p in (tmp_path / "b" / "supernet").iterdir() if p.is_dir()]) == 2


def test_a_second_worker_waits_for_the_first_instead_of_training(tiny_data, tmp_path):
    settings = replace_settings(RESUME, steps=4, checkpoint_every=0)
    started, results, steps = threading.Event(), {}, {"first": 0, "second": 0}
    # built here, not in the threads: torch's global seed is shared by threads (it is one process)
    bases = {"first": tiny_bert(), "second": tiny_bert()}

    def first_step(step, record):
        steps["first"] += 1
        started.set()
        threading.Event().wait(0.3)  # keep the lock a while

    def run(who, on_step):
        results[who] = run_cached(tiny_data, tmp_path, settings, on_step=on_step, base=bases[who])

    t1 = threading.Thread(target=run, args=("first", first_step))
    t1.start()
    assert started.wait(60)
    t2 = threading.Thread(target=run, args=("second", lambda s, r: steps.__setitem__("second", steps["second"] + 1)))
    t2.start()
    t1.join(120)
    t2.join(120)
    assert steps == {"first": 4, "second": 0}
    assert results["first"][1]["cached"] is False and results["second"][1]["cached"] is True
    for p1, p2 in zip(results["first"][0].model.state_dict().values(),
                      results["second"][0].model.state_dict().values(), strict=True):
        assert torch.equal(p1, p2)


def replace_settings(settings, **changes):
    from dataclasses import replace

    return replace(settings, **changes).validate()


# ---- a trial ------------------------------------------------------------------------------------------


def test_a_supernet_trial_is_the_accuracy_of_the_physical_slice(tiny_data):
    from nas.data.tasks import make_loader
    from nas.quality.metrics import accuracy

    base, scores = tiny_bert(), random_scores()
    net = Supernet(base, scores)

    def loader(split, context, *, batch_size, shuffle):
        assert split == "validation" and not shuffle
        return make_loader(tiny_data.tokenized(context), tiny_data.tokenizer, batch_size=batch_size, shuffle=False)

    prep = SimpleNamespace(loader=loader)
    spec = SubnetSpec.uniform(layers=scores.top_layers(2), heads=3, ffn=20, hidden=40, context=16)
    model, metrics = evaluate_slice(net, spec, prep, batch_size=16)
    assert sum(p.numel() for p in model.parameters()) == bert_params(spec)
    expected = accuracy(prune_model(base, spec, scores), loader("validation", 16, batch_size=7, shuffle=False))
    assert metrics["val_accuracy"] == pytest.approx(expected)
    assert metrics["seconds_slice"] >= 0 and metrics["seconds_eval"] > 0


# ---- settings --------------------------------------------------------------------------------------------


def test_settings_from_the_config_and_one_line_refusals():
    cfg = compose([])
    assert SupernetSettings.from_cfg(cfg.supernet) == SupernetSettings()
    assert SupernetSettings.from_cfg({"steps": 10, "lr": 1, "distill": "base"}) == SupernetSettings(
        steps=10, lr=1.0, distill="base")
    bad = {
        "stepz": "supernet.stepz is not a setting; allowed: steps, lr",
        "steps": -1,
        "distill": "teacher",
        "random_subnets": "2",
        "random_contexts": "yes",
        "distill_weight": 1.5,
        "batch_size": 0,
        "checkpoint_every": True,
    }
    for key, value in bad.items():
        with pytest.raises(ValueError, match=rf"supernet\.{key}") as err:
            SupernetSettings.from_cfg({key: value} if key != "stepz" else {"stepz": 1})
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="allowed: largest, base, none"):
        SupernetSettings.from_cfg({"distill": "teacher"})


# ---- the supernet estimator in the search -----------------------------------------------------------


def test_a_three_trial_supernet_search_runs_end_to_end(tiny_env, tmp_path, monkeypatch):
    """search.estimator=supernet: the supernet is trained once (cached), every trial is cut from it
    without fine-tuning, and its accuracy is the slice's."""
    import time

    import nas.study.trial
    from nas.study.search import run_search

    env = tiny_env
    fits: list[int] = []
    monkeypatch.setattr(nas.study.trial.Evaluator, "fit", lambda self, *a, **k: fits.append(1))
    t0 = time.perf_counter()
    cfg = tiny.make_cfg(env, "search.estimator=supernet", "supernet.steps=3", "supernet.checkpoint_every=0",
                   "search.n_trials=3", "search.sampler=random")
    study, search = run_search(cfg, tmp_path / "run")
    assert time.perf_counter() - t0 < 120
    assert fits == []  # no trial fine-tunes
    done = [t for t in study.trials if t.state.name == "COMPLETE" and "repeat_of" not in t.user_attrs]
    assert len(done) == 3
    from nas.quality.metrics import accuracy
    from nas.spec import SubnetSpec

    for t in done:
        spec = SubnetSpec.from_dict(t.user_attrs["spec"])
        sliced = search.supernet.slice(spec)
        loader = search.prep.loader("validation", spec.context, batch_size=64, shuffle=False)
        assert t.user_attrs["val_accuracy"] == pytest.approx(accuracy(sliced, loader))
    assert list((env["cache"] / "supernet").glob("*/")) != []  # cached for the next run and other workers
