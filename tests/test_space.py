"""Search spaces: every shipped space composes and fits MiniLM, sampled specs are always valid,
the suggested parameters form a fixed space, sampling is reproducible, bad spaces are rejected."""

from __future__ import annotations

import warnings

import optuna
import pytest
import torch

from nas.config import compose
from nas.importance import ImportanceScores, naive_scores
from nas.space import AXES, SearchSpace, available_spaces
from nas.spec import BaseShape, SubnetSpec

MINILM = BaseShape(num_layers=6, num_heads=12, head_size=32, hidden_size=384, ffn_size=1536, max_positions=512)
SPACES = ("depth", "width", "length", "dual", "triple")
TOPS = {"layers": 6, "heads": 12, "ffn": 1536, "hidden": 384, "context": 512}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def load_space(name: str) -> SearchSpace:
    cfg = compose([f"+space={name}"])
    return SearchSpace.from_cfg(cfg.space)


@pytest.fixture(scope="module")
def spaces() -> dict[str, SearchSpace]:
    return {name: load_space(name) for name in available_spaces()}


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


# ---- the shipped spaces ----------------------------------------------------------------------


def test_the_five_spaces_exist():
    assert set(SPACES) <= set(available_spaces())


@pytest.mark.parametrize("name", SPACES)
def test_space_composes_parses_and_fits_minilm(name):
    cfg = compose([f"+space={name}"])
    space = SearchSpace.from_cfg(cfg.space)
    assert space.name == name
    assert space.axes, name
    assert set(space.axes) <= set(AXES)
    assert space.validate(MINILM) is space
    for axis, spec in space.axes.items():
        values = spec.values
        assert values, (name, axis)
        assert all(1 <= v <= TOPS[axis] for v in values), (name, axis, values)
        if spec.choices is None:
            assert values[0] == spec.low and values[-1] == spec.high


def test_default_config_has_no_space():
    """`space` is not in the defaults list, so `+space=NAME` is how a space is chosen."""
    cfg = compose([])
    assert "space" not in cfg


# ---- sampled specs are valid -----------------------------------------------------------------


def check_spec(space: SearchSpace, spec: SubnetSpec, scores: ImportanceScores, shape: BaseShape) -> None:
    assert isinstance(spec, SubnetSpec)
    spec.validate(shape)
    tops = {"layers": shape.num_layers, "heads": shape.num_heads, "ffn": shape.ffn_size,
            "hidden": shape.hidden_size, "context": shape.max_positions}
    n = len(spec.layers)
    if "layers" in space.axes:
        assert n in space.axes["layers"].values
    else:
        assert n == shape.num_layers
    assert spec.layers == expected_layers(scores, n)
    assert len(spec.heads) == len(spec.ffn) == n
    for axis, values in (("heads", spec.heads), ("ffn", spec.ffn), ("hidden", (spec.hidden,)),
                         ("context", (spec.context,))):
        top = tops[axis]
        if axis not in space.axes:
            assert set(values) == {top}, (axis, values)
            continue
        choices = space.axes[axis].values
        for v in values:
            assert 1 <= v <= top
            if axis in ("ffn", "hidden") and space.align > 1:
                assert v == top or v % space.align == 0, (axis, v, space.align)
                # snapping moves a choice by at most half an alignment step (or up to `align`)
                assert min(abs(v - c) for c in choices) <= space.align, (axis, v, choices)
            else:
                assert v in choices, (axis, v, choices)
        if not space.per_layer:
            assert len(set(values)) == 1, (axis, values)


@pytest.mark.parametrize("name", SPACES)
@pytest.mark.parametrize("score_kind", ["naive", "random"])
def test_sampled_specs_are_valid(spaces, name, score_kind):
    space = spaces[name]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for i in range(200):
        scores = naive_scores(MINILM) if score_kind == "naive" else random_scores(MINILM, seed=i)
        trial = study.ask()
        spec = space.suggest(trial, MINILM, scores)
        check_spec(space, spec, scores, MINILM)
        study.tell(trial, 0.0)
        seen.add(spec)
    assert len(seen) > 1  # the sampler really explores


def test_naive_scores_keep_the_first_layers(spaces):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        spec = spaces["depth"].suggest(study.ask(), MINILM, naive_scores(MINILM))
        assert spec.layers == tuple(range(len(spec.layers)))


def test_per_layer_space_samples_valid_varied_specs():
    space = SearchSpace.from_cfg({"name": "pl", "per_layer": True, "align": 32, "axes": {
        "layers": {"low": 2, "high": 6}, "heads": {"low": 2, "high": 12, "step": 2},
        "ffn": {"low": 100, "high": 1500, "step": 100}, "hidden": {"choices": [100, 200, 384]}}})
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
        varied |= len(set(spec.heads)) > 1
        study.tell(trial, 0.0)
    assert varied


def test_unaligned_choices_snap_to_multiples_of_align():
    space = SearchSpace.from_cfg({"name": "snap", "align": 32, "axes": {
        "ffn": {"choices": [1, 50, 100, 1535, 1536]}, "hidden": {"choices": [10, 383, 384]}}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    got_ffn, got_hidden = set(), set()
    for _ in range(100):
        spec = space.suggest(study.ask(), MINILM, naive_scores(MINILM))
        got_ffn.add(spec.ffn[0])
        got_hidden.add(spec.hidden)
    # 1 -> 32 (never 0), 50 -> 64, 100 -> 96, 1535 -> 1536 (the base top), 1536 stays
    assert got_ffn == {32, 64, 96, 1536}
    assert got_hidden == {32, 384}


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
def test_suggested_parameters_are_fixed(spaces, name):
    sigs = param_signature(spaces[name], 60)
    assert len(set(sigs)) == 1, name
    names = {k for k, _ in sigs[0]}
    assert names == set(spaces[name].axes), names


@pytest.mark.parametrize("name", ["width", "dual", "triple"])
def test_per_layer_parameters_are_fixed(spaces, name):
    """Per-layer choices are made for every base layer, whatever the number of layers kept."""
    base = spaces[name]
    space = SearchSpace(name=base.name, axes=base.axes, per_layer=True, align=base.align)
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
    sigs = param_signature(space, 60)
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
def test_same_seed_same_shapes(spaces, make):
    space = spaces["triple"]
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
    ],
)
def test_invalid_space_is_rejected(axes, words):
    with pytest.raises(ValueError) as err:
        SearchSpace.from_cfg({"name": "bad", "axes": axes})
    msg = str(err.value)
    assert "bad" in msg
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
    with pytest.raises(ValueError) as err:
        space.validate(MINILM)
    msg = str(err.value)
    assert axis in msg and value in msg and f"1..{TOPS[axis]}" in msg, msg


def test_shipped_space_too_big_for_a_smaller_base(spaces):
    small = BaseShape(num_layers=4, num_heads=12, head_size=32, hidden_size=384, ffn_size=1536, max_positions=512)
    with pytest.raises(ValueError, match="layers choice 5"):
        spaces["depth"].validate(small)


def test_list_shorthand_for_choices():
    """An axis given as a plain list means its choices (also when it comes from Hydra/OmegaConf)."""
    from omegaconf import OmegaConf

    raw = {"name": "short", "axes": {"context": [32, 64]}}
    assert SearchSpace.from_cfg(raw).axes["context"].values == (32, 64)
    assert SearchSpace.from_cfg(OmegaConf.create(raw)).axes["context"].values == (32, 64)
