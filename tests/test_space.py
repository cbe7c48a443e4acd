"""Search spaces: every shipped space composes and resolves on any base (MiniLM exactly as the
absolute spaces it replaced, BERT-base, a 5-layer BERT, RoBERTa, DistilBERT), fractions and
context quantiles resolve deterministically to sizes the base can hold, sampled specs are always
valid, the suggested parameters form a fixed space, sampling is reproducible, bad spaces are rejected."""

from __future__ import annotations

import warnings

import numpy as np
import optuna
import pytest
import torch

import tiny
from nas.config import CONF_DIR, compose
from nas.cut.importance import ImportanceScores, naive_scores
from nas.models.registry import base_shape
from nas.spec import BaseShape, SubnetSpec
from nas.study.space import (
    AXES,
    SPACES_DIR,
    Axis,
    QuantileAxis,
    RelativeAxis,
    SearchSpace,
    Units,
    available_spaces,
    context_cap,
)

MINILM = BaseShape(num_layers=6, num_heads=12, head_size=32, hidden_size=384, ffn_size=1536, max_positions=512)
BERT_BASE = BaseShape(num_layers=12, num_heads=12, head_size=64, hidden_size=768, ffn_size=3072, max_positions=512)
# The 5-layer BERT of the issue: 4 heads of size 64, hidden 256; an FFN that is no multiple of align.
BERT5 = BaseShape(num_layers=5, num_heads=4, head_size=64, hidden_size=256, ffn_size=1000, max_positions=128)
MAX_LENGTH = 128  # conf/config.yaml
SPACES = ("depth", "width", "length", "dual", "triple")

# The shipped spaces as they were written before they became relative (MiniLM's absolute sizes).
# The relative files must resolve on MiniLM to exactly these: the main command samples what it did.
TODAY = {
    "depth": (1, {"layers": {"low": 1, "high": 6, "step": 1}}),
    "width": (1, {"heads": {"low": 2, "high": 12, "step": 2}, "ffn": {"low": 192, "high": 1536, "step": 192}}),
    "length": (32, {"hidden": {"low": 128, "high": 384, "step": 32}, "context": {"choices": [32, 48, 64, 128]}}),
    "dual": (1, {"layers": {"low": 2, "high": 6, "step": 1}, "heads": {"low": 2, "high": 12, "step": 2},
                 "ffn": {"low": 192, "high": 1536, "step": 192}}),
    "triple": (32, {"layers": {"low": 1, "high": 6, "step": 1}, "heads": {"low": 2, "high": 12, "step": 2},
                    "ffn": {"low": 128, "high": 1536, "step": 128}, "hidden": {"low": 128, "high": 384, "step": 64},
                    "context": {"choices": [32, 64, 128]}}),
}
# What the same files offer on BERT-base (12 layers, 12 heads, FFN 3072, hidden 768) at max_length 128.
ON_BERT_BASE = {
    "depth": {"layers": list(range(2, 13))},
    "width": {"heads": [2, 4, 6, 8, 10, 12], "ffn": list(range(384, 3073, 384))},
    "length": {"hidden": list(range(256, 769, 64)), "context": [32, 48, 64, 128]},
    "dual": {"layers": list(range(4, 13)), "heads": [2, 4, 6, 8, 10, 12], "ffn": list(range(384, 3073, 384))},
    "triple": {"layers": list(range(2, 13)), "heads": [2, 4, 6, 8, 10, 12], "ffn": list(range(256, 3073, 256)),
               "hidden": [256, 384, 512, 640, 768], "context": [32, 64, 128]},
}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def load_space(name: str) -> SearchSpace:
    cfg = compose([f"+space={name}"])
    return SearchSpace.from_cfg(cfg.space)


@pytest.fixture(scope="module")
def spaces() -> dict[str, SearchSpace]:
    return {name: load_space(name) for name in available_spaces()}


@pytest.fixture(scope="module")
def on_minilm(spaces) -> dict[str, SearchSpace]:
    return {name: tiny.classifier_axes(space).resolve(MINILM, max_length=MAX_LENGTH) for name, space in spaces.items()}


def random_scores(shape: BaseShape, seed: int) -> ImportanceScores:
    g = torch.Generator().manual_seed(seed)
    return ImportanceScores(
        layers=torch.rand(shape.num_layers, generator=g),
        heads=torch.rand(shape.num_layers, shape.num_heads, generator=g),
        ffn=torch.rand(shape.num_layers, shape.ffn_size, generator=g),
        hidden=torch.rand(shape.hidden_size, generator=g),
        method="random",
    )


def expected_layers(scores: ImportanceScores, n: int) -> tuple[int, ...]:
    order = sorted(range(scores.layers.numel()), key=lambda i: (-float(scores.layers[i]), i))
    return tuple(sorted(order[:n]))


def tops(shape: BaseShape) -> dict[str, int]:
    return {"layers": shape.num_layers, "heads": shape.num_heads, "ffn": shape.ffn_size,
            "hidden": shape.hidden_size, "context": shape.max_positions}


# ---- the shipped spaces ----------------------------------------------------------------------


def test_the_five_spaces_exist():
    assert set(SPACES) <= set(available_spaces())


def test_hydra_group_is_the_spaces_folder():
    """conf/space (what `+space=NAME` composes) is a link to search_spaces/ (what the code lists): one source."""
    assert (CONF_DIR / "space").resolve() == SPACES_DIR.resolve()
    assert sorted(p.stem for p in (CONF_DIR / "space").glob("*.yaml")) == available_spaces()


def test_default_config_has_no_space():
    """`space` is not in the defaults list, so `+space=NAME` is how a space is chosen."""
    cfg = compose([])
    assert "space" not in cfg


@pytest.mark.parametrize("name", SPACES)
def test_shipped_space_is_relative(spaces, name):
    space = spaces[name]
    assert space.name == name and space.axes and set(space.axes) <= set(AXES)
    assert all(isinstance(a, RelativeAxis) for a in space.axes.values()), space.axes
    assert space.base is None


@pytest.mark.parametrize("name", SPACES)
def test_shipped_space_resolves_on_minilm_to_todays_sizes(on_minilm, name):
    """No silent change of the main command: the same Optuna distributions as the absolute files."""
    align, axes = TODAY[name]
    today = SearchSpace.from_cfg({"name": name, "align": align, "axes": axes})
    resolved = on_minilm[name]
    assert resolved.align == align
    assert dict(resolved.axes) == dict(today.axes)
    assert all(type(a) is Axis for a in resolved.axes.values())
    assert resolved.base == MINILM


@pytest.mark.parametrize("name", SPACES)
def test_shipped_space_includes_the_base_size(on_minilm, name):
    base = {**tops(MINILM), "context": MAX_LENGTH}
    for axis, values in on_minilm[name].choices().items():
        assert max(values) == base[axis], (name, axis, values)


@pytest.mark.parametrize("name", SPACES)
def test_shipped_space_on_bert_base(spaces, name):
    resolved = spaces[name].resolve(BERT_BASE, max_length=MAX_LENGTH)
    assert resolved.choices() == ON_BERT_BASE[name]


@pytest.mark.parametrize("name", SPACES)
def test_same_shapes_as_the_absolute_space(on_minilm, name):
    """NSGA-II with a fixed seed proposes the very shapes the absolute space proposed."""
    align, axes = TODAY[name]
    today = SearchSpace.from_cfg({"name": name, "align": align, "axes": axes}).resolve(MINILM, max_length=MAX_LENGTH)
    assert sampled_specs(on_minilm[name], nsga2(0)) == sampled_specs(today, nsga2(0))


def test_resolution_is_deterministic(spaces):
    for shape in (MINILM, BERT_BASE, BERT5):
        for name in SPACES:
            a = spaces[name].resolve(shape, max_length=32)
            b = load_space(name).resolve(shape, max_length=32)
            assert a == b and a.choices() == b.choices()


# ---- fractions -------------------------------------------------------------------------------


def relative(axes: dict, *, align: int = 1, per_layer: bool = False) -> SearchSpace:
    return SearchSpace.from_cfg({"name": "rel", "align": align, "per_layer": per_layer, "axes": axes})


@pytest.mark.parametrize("raw, want", [
    ({"low": "1/3", "high": 1.0, "step": "1/12"}, list(range(128, 385, 32))),
    ({"low": 0.333, "high": 1.0, "step": 0.0833}, list(range(128, 385, 32))),  # rounded decimals: same sizes
    ({"low": 0.5, "high": 1}, list(range(192, 385, 32))),  # no step: every aligned size in between
    ({"choices": [0.25, "1/2", 1.0]}, [96, 192, 384]),
    ([0.1, 0.5, 0.99], [32, 192, 384]),  # snapped to align (never 0), 0.99 -> the base's own size
])
def test_fractions_of_the_hidden_size(raw, want):
    resolved = relative({"hidden": raw}, align=32).resolve(MINILM)
    assert resolved.choices() == {"hidden": want}


def test_unit_steps_per_axis():
    """No step: every whole layer, every head, every `align` multiple of FFN (and the base's own odd size)."""
    resolved = relative({"layers": {"low": 0.5, "high": 1.0}, "heads": {"low": 0.5, "high": 1.0},
                         "ffn": {"low": 0.9, "high": 1.0}}, align=32).resolve(BERT5)
    assert resolved.choices() == {"layers": [3, 4, 5], "heads": [2, 3, 4], "ffn": [896, 928, 960, 992, 1000]}


def test_halves_round_up_and_repeats_collapse():
    # 4 heads: 1/6 .. 1 by 1/6 -> 0.67, 1.33, 2, 2.67, 3.33, 4 -> 1, 1, 2, 3, 3, 4
    resolved = relative({"heads": {"low": "1/6", "high": 1.0, "step": "1/6"},
                         "layers": {"choices": [0.5, 0.1, 0.5, 1.0]}}).resolve(BERT5)
    assert resolved.axes["heads"] == Axis(name="heads", low=1, high=4, step=1)
    assert resolved.axes["layers"] == Axis(name="layers", choices=(3, 1, 5))  # 2.5 -> 3, 0.5 -> 1 (at least one)


def test_irregular_sizes_become_choices():
    """Evenly spaced fractions of an FFN of 1000 snap to uneven multiples of 32: offered as choices."""
    resolved = relative({"ffn": {"low": "1/12", "high": 1.0, "step": "1/12"}}, align=32).resolve(BERT5)
    assert resolved.axes["ffn"].choices == (96, 160, 256, 320, 416, 512, 576, 672, 736, 832, 928, 1000)


def test_context_fractions_are_of_the_context_cap():
    space = relative({"context": {"choices": ["1/4", "3/8", 0.5, 1.0]}})
    assert space.resolve(MINILM, max_length=128).choices() == {"context": [32, 48, 64, 128]}
    assert space.resolve(MINILM, max_length=64).choices() == {"context": [16, 24, 32, 64]}
    assert space.resolve(MINILM).choices() == {"context": [128, 192, 256, 512]}  # no cap: the positions
    assert space.resolve(BERT5, max_length=512).choices() == {"context": [32, 48, 64, 128]}  # positions cap it
    assert context_cap(BERT5, 32) == 32 and context_cap(BERT5, 1000) == 128


# ---- context quantiles -----------------------------------------------------------------------


def test_quantiles_resolve_from_the_lengths():
    space = SearchSpace.from_cfg({"name": "q", "axes": {"context": {"quantiles": [0.5, 0.9, 0.99, 1.0]}}})
    assert isinstance(space.axes["context"], QuantileAxis) and space.needs_lengths
    lengths = list(range(1, 101))  # 1..100 tokens
    assert space.resolve(MINILM, max_length=128, lengths=lengths).choices() == {"context": [50, 90, 99, 100]}
    # the cap bounds them; repeats collapse
    assert space.resolve(MINILM, max_length=64, lengths=lengths).choices() == {"context": [50, 64]}
    # the order of the texts does not matter
    shuffled = np.random.default_rng(0).permutation(lengths)
    assert space.resolve(MINILM, max_length=128, lengths=shuffled).choices() == {"context": [50, 90, 99, 100]}


def test_a_quantile_fits_that_share_of_the_inputs():
    lengths = np.random.default_rng(1).integers(5, 90, size=997)
    qs = [0.0, 0.25, 0.5, 0.9, 0.95, 1.0]
    space = SearchSpace.from_cfg({"name": "q", "axes": {"context": {"quantiles": qs}}})
    values = space.resolve(MINILM, max_length=128, lengths=lengths).axes["context"].choices
    assert len(values) == len(qs) and list(values) == sorted(values)
    assert values[0] == lengths.min() and values[-1] == lengths.max()
    for q, c in zip(qs, values):
        assert (lengths <= c).mean() >= q  # a share q of the inputs fits in c tokens...
        assert (lengths <= c - 1).mean() < q or q == 0  # ...and not in one token less


def test_quantiles_without_lengths_are_refused():
    space = SearchSpace.from_cfg({"name": "q", "axes": {"context": {"quantiles": [0.5]}}})
    with pytest.raises(ValueError, match="space q: context quantiles need the task's token lengths"):
        space.resolve(MINILM)


def test_shipped_spaces_need_no_lengths(spaces):
    assert not any(spaces[name].needs_lengths for name in SPACES)


# ---- family constraints (the hook for key/value groups) ---------------------------------------


def test_head_multiple_keeps_whole_groups():
    decoder = BaseShape(num_layers=30, num_heads=9, head_size=64, hidden_size=576, ffn_size=1536, max_positions=8192)
    triple = load_space("triple")
    assert triple.resolve(decoder, max_length=128).choices()["heads"] == [2, 3, 5, 6, 8, 9]
    grouped = triple.resolve(decoder, max_length=128, units=Units(head_multiple=3))
    assert grouped.choices()["heads"] == [3, 6, 9]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(30):
        spec = grouped.suggest(study.ask(), decoder, random_scores(decoder, seed=i))
        assert all(h % 3 == 0 for h in spec.heads)
    with pytest.raises(ValueError, match="head_multiple=2 does not divide the base's 9 heads"):
        triple.resolve(decoder, units=Units(head_multiple=2))


def test_hidden_multiple_combines_with_align():
    space = relative({"hidden": {"low": "1/3", "high": 1.0, "step": "1/12"}}, align=32)
    assert space.resolve(MINILM, units=Units(hidden_multiple=64)).choices() == {"hidden": [128, 192, 256, 320, 384]}


# ---- sampled specs are valid -----------------------------------------------------------------


def check_spec(space: SearchSpace, spec: SubnetSpec, scores: ImportanceScores, shape: BaseShape) -> None:
    assert isinstance(spec, SubnetSpec)
    spec.validate(shape)
    top = tops(shape)
    n = len(spec.layers)
    if "layers" in space.axes:
        assert n in space.axes["layers"].values
    else:
        assert n == shape.num_layers
    assert spec.layers == expected_layers(scores, n)
    assert len(spec.heads) == len(spec.ffn) == n
    for axis, values in (("heads", spec.heads), ("ffn", spec.ffn), ("hidden", (spec.hidden,)),
                         ("context", (spec.context,))):
        if axis not in space.axes:
            assert set(values) == {top[axis]}, (axis, values)
            continue
        choices = space.axes[axis].values
        for v in values:
            assert 1 <= v <= top[axis] and v in choices, (axis, v, choices)
            if axis in ("ffn", "hidden"):
                assert v == top[axis] or v % space.align == 0, (axis, v, space.align)
        if not space.per_layer:
            assert len(set(values)) == 1, (axis, values)


def sample_and_check(space: SearchSpace, shape: BaseShape, n: int, *, naive: bool = False) -> set[SubnetSpec]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for i in range(n):
        scores = naive_scores(shape) if naive else random_scores(shape, seed=i)
        trial = study.ask()
        spec = space.suggest(trial, shape, scores)
        check_spec(space, spec, scores, shape)
        # the parameters are the sizes themselves (what the dashboard shows)
        for axis in set(space.axes) & set(trial.params):
            assert trial.params[axis] in space.axes[axis].values
        study.tell(trial, 0.0)
        seen.add(spec)
    return seen


@pytest.mark.parametrize("name", SPACES)
@pytest.mark.parametrize("score_kind", ["naive", "random"])
def test_sampled_specs_are_valid(on_minilm, name, score_kind):
    seen = sample_and_check(on_minilm[name], MINILM, 200, naive=score_kind == "naive")
    assert len(seen) > 1  # the sampler really explores


@pytest.mark.parametrize("name", SPACES)
def test_sampled_specs_are_valid_on_bert_base_and_bert5(spaces, name):
    for shape in (BERT_BASE, BERT5):
        assert len(sample_and_check(spaces[name].resolve(shape, max_length=32), shape, 60)) > 1


def bert5_model():
    return tiny.bert(layers=5, hidden=256, ffn=1000, positions=128, labels=3, types=2)


@pytest.mark.parametrize("family", ["bert5", "roberta", "distilbert"])
def test_shipped_spaces_fit_other_models(family, tiny_roberta, tiny_distilbert, padded_batch, one_thread):
    """On a 5-layer BERT (4 heads of 64, hidden 256), a tiny RoBERTa and a tiny DistilBERT every shipped
    space resolves and samples valid specs, and the model really prunes to them and runs."""
    from nas.cut.prune import count_parameters, prune_model

    model = {"bert5": bert5_model, "roberta": tiny_roberta, "distilbert": tiny_distilbert}[family]()
    shape = base_shape(model.config)
    if family == "bert5":
        assert shape == BERT5
    pad_id = model.config.pad_token_id
    scores = random_scores(shape, seed=7)
    base_params = count_parameters(model)
    for name in SPACES:
        space = load_space(name).resolve(shape, max_length=32)
        assert space.base == shape
        base = {**tops(shape), "context": 32}
        for axis, values in space.choices().items():
            assert max(values) == base[axis] and min(values) >= 1, (family, name, axis, values)
        specs = sorted(sample_and_check(space, shape, 40), key=lambda s: s.describe())
        for spec in (specs[0], specs[len(specs) // 2], specs[-1]):
            pruned = prune_model(model, spec, scores)
            batch = padded_batch(pad_id=pad_id, length=min(9, spec.context))
            with torch.no_grad():
                logits = pruned(**batch).logits
            assert logits.shape == (3, 3) and torch.isfinite(logits).all()
            assert count_parameters(pruned) <= base_params


def test_an_unresolved_space_does_not_sample(spaces, on_minilm):
    study = optuna.create_study()
    with pytest.raises(ValueError, match="space triple: resolve it against the base model first"):
        spaces["triple"].suggest(study.ask(), MINILM, None)
    with pytest.raises(ValueError, match="space triple was resolved for .*resolve it again"):
        on_minilm["triple"].suggest(study.ask(), BERT_BASE, None)


def test_naive_scores_keep_the_first_layers(on_minilm):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        spec = on_minilm["depth"].suggest(study.ask(), MINILM, naive_scores(MINILM))
        assert spec.layers == tuple(range(len(spec.layers)))


def test_per_layer_space_samples_valid_varied_specs():
    space = SearchSpace.from_cfg({"name": "pl", "per_layer": True, "align": 32, "axes": {
        "layers": {"low": 2, "high": 6}, "heads": {"low": 2, "high": 12, "step": 2},
        "ffn": {"low": 100, "high": 1500, "step": 100}, "hidden": {"choices": [100, 200, 384]}}}).resolve(MINILM)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    varied = False
    for i in range(200):
        scores = random_scores(MINILM, seed=i)
        trial = study.ask()
        spec = space.suggest(trial, MINILM, scores)
        check_spec(space, spec, scores, MINILM)
        # the per-layer choice of base layer i is the one used for kept layer i
        for pos, layer in enumerate(spec.layers):
            assert spec.heads[pos] == trial.params[f"heads_{layer}"]
            assert spec.ffn[pos] == trial.params[f"ffn_{layer}"]
        varied |= len(set(spec.heads)) > 1
        study.tell(trial, 0.0)
    assert varied


def test_unaligned_absolute_sizes_snap_to_multiples_of_align():
    space = SearchSpace.from_cfg({"name": "snap", "align": 32, "axes": {
        "ffn": {"choices": [1, 50, 100, 1535, 1536]}, "hidden": {"choices": [10, 383, 384]},
        "heads": {"choices": [3, 5]}}})
    resolved = space.resolve(MINILM)
    # 1 -> 32 (never 0), 50 -> 64, 100 -> 96, 1535 -> 1536 (the base top), 1536 stays once; heads are not aligned
    assert resolved.choices() == {"ffn": [32, 64, 96, 1536], "hidden": [32, 384], "heads": [3, 5]}
    # an unaligned absolute range stays a range when its snapped sizes are evenly spaced
    ranged = SearchSpace.from_cfg({"name": "r", "align": 32, "axes": {"ffn": {"low": 250, "high": 1530, "step": 256}}})
    assert ranged.resolve(MINILM).axes["ffn"] == Axis(name="ffn", low=256, high=1536, step=256)


# ---- a fixed space (NSGA-II needs one) ----------------------------------------------------------


def param_signature(space: SearchSpace, n: int, seed: int = 0) -> list[tuple]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    sigs = []
    for i in range(n):
        trial = study.ask()
        space.suggest(trial, MINILM, random_scores(MINILM, seed=i))
        sigs.append(tuple(sorted((k, repr(d)) for k, d in trial.distributions.items())))
        study.tell(trial, 0.0)
    return sigs


@pytest.mark.parametrize("name", SPACES)
def test_suggested_parameters_are_fixed(on_minilm, name):
    sigs = param_signature(on_minilm[name], 60)
    assert len(set(sigs)) == 1, name
    names = {k for k, _ in sigs[0]}
    assert names == set(on_minilm[name].axes), names


@pytest.mark.parametrize("name", ["width", "dual", "triple"])
def test_per_layer_parameters_are_fixed(on_minilm, name):
    """Per-layer choices are made for every base layer, whatever the number of layers kept."""
    base = on_minilm[name]
    space = SearchSpace(name=base.name, axes=base.axes, per_layer=True, align=base.align, base=base.base)
    sigs = param_signature(space, 60)
    assert len(set(sigs)) == 1, name
    names = {k for k, _ in sigs[0]}
    want = {a for a in base.axes if a not in ("heads", "ffn")}
    for axis in ("heads", "ffn"):
        if axis in base.axes:
            want |= {f"{axis}_{i}" for i in range(MINILM.num_layers)}
    assert names == want


def test_per_layer_from_dict_is_fixed():
    space = SearchSpace.from_cfg({"name": "pl", "per_layer": True, "axes": {
        "layers": {"low": 1, "high": 6}, "heads": {"low": 1, "high": 12}, "ffn": {"choices": [256, 768, 1536]}}})
    assert space.per_layer
    sigs = param_signature(space.resolve(MINILM), 60)
    assert len(set(sigs)) == 1
    assert len(sigs[0]) == 1 + 2 * MINILM.num_layers


# ---- reproducibility ---------------------------------------------------------------------------


def dummy_objective(spec: SubnetSpec) -> tuple[float, float]:
    size = sum(h * 32 * 4 + f * 2 for h, f in zip(spec.heads, spec.ffn)) * spec.hidden / 384
    return (size ** 0.5 + spec.context / 100.0, float(size + spec.context))


def sampled_specs(space: SearchSpace, sampler: optuna.samplers.BaseSampler, n: int = 10) -> list[SubnetSpec]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    specs = []
    scores = random_scores(MINILM, seed=3)
    for _ in range(n):
        trial = study.ask()
        spec = space.suggest(trial, MINILM, scores)
        study.tell(trial, list(dummy_objective(spec)))
        specs.append(spec)
    return specs


def nsga2(seed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=4)  # 10 trials: 2+ generations


def tpe(seed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)


@pytest.mark.parametrize("make", [nsga2, tpe], ids=["nsga2", "tpe"])
def test_same_seed_same_shapes(on_minilm, make):
    space = on_minilm["triple"]
    a = sampled_specs(space, make(0))
    b = sampled_specs(space, make(0))
    assert a == b
    c = sampled_specs(space, make(1))
    assert a != c


# ---- invalid spaces ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "axes, words",
    [
        ({"depth": {"low": 1, "high": 2}}, ["unknown axis", "depth"]),
        ({"heads": {"choices": []}}, ["heads", "empty"]),
        ({"ffn": {"low": 512, "high": 256, "step": 128}}, ["ffn", "low=512", "high=256"]),
        ({"layers": {"low": 1, "high": 6, "step": 2}}, ["layers", "high=6", "step=2"]),
        ({"heads": {"low": 2, "high": 8, "step": 0}}, ["heads", "step=0"]),
        ({"hidden": {"high": 384}}, ["hidden", "low"]),
        ({}, ["no axes"]),
        # fractions
        ({"layers": {"low": 2, "high": 1.0}}, ["layers", "low=2", "not a fraction in (0, 1]", "all as whole sizes"]),
        ({"hidden": {"low": 0.5, "high": 1.5}}, ["hidden", "high=1.5", "not a fraction"]),
        ({"hidden": {"low": 0.0, "high": 1.0}}, ["hidden", "low=0.0", "not a fraction"]),
        ({"ffn": {"low": "a/b", "high": 1.0}}, ["ffn", "low='a/b'", "not a fraction"]),
        ({"ffn": {"low": "1/0", "high": 1.0}}, ["ffn", "low='1/0'", "not a fraction"]),
        ({"ffn": {"choices": [0.5, 256]}}, ["ffn", "choices=256", "not a fraction"]),
        ({"heads": {"low": 0.75, "high": 0.25}}, ["heads", "low=0.75", "high=0.25", "empty"]),
        ({"hidden": {"low": 0.25, "high": 1.0, "step": 0.3}}, ["hidden", "high=1.0", "step=0.3", "a/b"]),
        # quantiles
        ({"hidden": {"quantiles": [0.5]}}, ["hidden", "cannot take quantiles"]),
        ({"context": {"quantiles": []}}, ["context", "empty quantiles"]),
        ({"context": {"quantiles": [0.5, 1.2]}}, ["context", "quantiles=1.2", "[0, 1]"]),
    ],
)
def test_invalid_space_is_rejected(axes, words):
    with pytest.raises(ValueError) as err:
        SearchSpace.from_cfg({"name": "bad", "axes": axes})
    msg = str(err.value)
    assert msg.startswith("space bad: ") and "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_bad_align_is_rejected():
    with pytest.raises(ValueError, match="align=-32"):
        SearchSpace.from_cfg({"name": "bad", "align": -32, "axes": {"ffn": {"low": 64, "high": 128}}})


@pytest.mark.parametrize(
    "axis, raw, value",
    [
        ("layers", {"low": 1, "high": 8}, "choice 7"),  # the first value past the base
        ("heads", {"choices": [4, 16]}, "16"),
        ("ffn", {"low": 0, "high": 1536, "step": 512}, "0"),
        ("hidden", {"choices": [128, 512]}, "512"),
        ("context", {"choices": [128, 1024]}, "1024"),
    ],
)
def test_choice_outside_base_range_is_rejected(axis, raw, value):
    space = SearchSpace.from_cfg({"name": "big", "axes": {axis: raw}})
    for check in (space.validate, space.resolve):
        with pytest.raises(ValueError) as err:
            check(MINILM)
        msg = str(err.value)
        assert axis in msg and value in msg and f"1..{tops(MINILM)[axis]}" in msg, msg


@pytest.mark.parametrize("axis, raw, bad", [
    ("layers", {"low": 1, "high": 6}, 6),
    ("heads", {"choices": [2, 8]}, 8),
    ("ffn", {"choices": [512, 1024]}, 1024),
    ("hidden", {"low": 128, "high": 384, "step": 128}, 384),
    ("context", {"choices": [64, 256]}, 256),
])
def test_absolute_sizes_above_the_5_layer_bert_are_refused_in_one_line(axis, raw, bad):
    space = SearchSpace.from_cfg({"name": "big", "align": 32, "axes": {axis: raw}})
    with pytest.raises(ValueError) as err:
        space.resolve(BERT5, max_length=32)
    assert str(err.value) == f"space big: {axis} choice {bad} is outside the base model's range 1..{tops(BERT5)[axis]}"


def test_list_shorthand_for_choices():
    """An axis given as a plain list means its choices (also when it comes from Hydra/OmegaConf)."""
    from omegaconf import OmegaConf

    raw = {"name": "short", "axes": {"context": [32, 64]}}
    assert SearchSpace.from_cfg(raw).axes["context"].values == (32, 64)
    assert SearchSpace.from_cfg(OmegaConf.create(raw)).axes["context"].values == (32, 64)
    rel = {"name": "short", "axes": {"context": ["1/4", 0.5]}}
    assert SearchSpace.from_cfg(OmegaConf.create(rel)).resolve(MINILM, max_length=128).choices() == {"context": [32, 64]}


def test_describe_names_every_axis(on_minilm):
    assert on_minilm["triple"].describe() == (
        "layers 1..6 | heads 2..12 by 2 | ffn 128..1536 by 128 | hidden 128..384 by 64 | context [32, 64, 128]"
    )
