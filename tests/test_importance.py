"""Importance scores: shapes, determinism, what the criteria measure, and the on-disk cache."""

from __future__ import annotations

import copy

import pytest
import torch

import nas.cut.importance as importance
from nas.cut.importance import ImportanceScores, cached_scores, compute_scores, naive_scores
from nas.cut.prune import prune_model
from nas.models.encoder import arch_for
from nas.models.registry import base_shape
from nas.spec import BaseShape, SubnetSpec

pytestmark = pytest.mark.usefixtures("one_thread")

L, H, A, F, D, C = 4, 4, 8, 37, 32, 3  # tiny 4-layer base


@pytest.fixture(scope="module")
def base(tiny_bert):
    return tiny_bert(layers=4)


@pytest.fixture(scope="module")
def batches(padded_batch):
    out = []
    for seed in (1, 2):
        b = padded_batch(pad_id=0, batch=3, length=9, seed=seed)
        b["labels"] = torch.tensor([0, 2, 1]) if seed == 1 else torch.tensor([1, 1, 0])
        out.append(b)
    return out


@pytest.fixture(scope="module")
def scores(base, batches):
    return compute_scores(base, batches)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_scores_equal(a: ImportanceScores, b: ImportanceScores) -> None:
    for name in ("layers", "heads", "ffn", "hidden"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.method == b.method


# ---- 6. shapes, values, determinism ------------------------------------------------------------


def test_shapes_finite_nonnegative_and_informative(scores):
    want = {"layers": (L,), "heads": (L, H), "ffn": (L, F), "hidden": (D,)}
    for name, shape in want.items():
        t = getattr(scores, name)
        assert tuple(t.shape) == shape, name
        assert t.dtype == torch.float32, name
        assert torch.isfinite(t).all(), name
        assert (t >= 0).all(), name
        assert t.unique().numel() > 1, f"{name} scores are all equal: they cannot rank anything"
    assert scores.method == "fisher"
    scores.check_fits(BaseShape(num_layers=L, num_heads=H, head_size=A, hidden_size=D, ffn_size=F, max_positions=512))


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_other_families_score_and_silent_head_is_zero(family, tiny_roberta, tiny_distilbert, padded_batch):
    model = {"roberta": tiny_roberta, "distilbert": tiny_distilbert}[family](layers=4)
    batch = padded_batch(pad_id=model.config.pad_token_id)
    batch["labels"] = torch.tensor([2, 0, 1])
    parts = arch_for(model).layer_parts(arch_for(model).layers(model)[3])
    with torch.no_grad():
        parts.o.weight[:, 0:A] = 0.0  # layer 3, head 0
    s = compute_scores(model, [batch])
    s.check_fits(base_shape(model.config))
    for name in ("layers", "heads", "ffn", "hidden"):
        t = getattr(s, name)
        assert torch.isfinite(t).all() and (t >= 0).all() and t.unique().numel() > 1, name
    assert (s.heads == 0).nonzero().tolist() == [[3, 0]]


def test_deterministic(base, batches, scores):
    assert_scores_equal(compute_scores(base, batches), scores)


def test_model_left_as_it_was(base, batches):
    model = copy.deepcopy(base)
    model.train()
    before = snapshot(model)
    compute_scores(model, batches)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    for name, value in snapshot(model).items():
        assert torch.equal(value, before[name]), name
    for m in model.modules():  # every hook removed
        assert not m._forward_hooks and not m._forward_pre_hooks, type(m).__name__
    model.eval()
    compute_scores(model, batches)
    assert not model.training
    with torch.no_grad():
        torch.testing.assert_close(model(**batches[0]).logits, base(**batches[0]).logits, atol=0, rtol=0)


def test_max_batches_limits_the_data(base, batches):
    assert_scores_equal(compute_scores(base, batches, max_batches=1), compute_scores(base, batches[:1]))


def test_no_batches_is_an_error(base):
    with pytest.raises(ValueError, match="no batches"):
        compute_scores(base, [])


def test_hidden_and_layer_scores_ignore_padding(base, padded_batch):
    """Activation energy and block influence are averaged over real tokens only: the same examples
    padded into one batch or fed one by one without padding give the same scores."""
    padded = padded_batch(pad_id=0, batch=3, length=9, seed=5)
    padded["labels"] = torch.tensor([0, 1, 2])
    singles = []
    for i in range(3):
        n = int(padded["attention_mask"][i].sum())
        singles.append(
            {
                "input_ids": padded["input_ids"][i : i + 1, :n],
                "attention_mask": padded["attention_mask"][i : i + 1, :n],
                "labels": padded["labels"][i : i + 1],
            }
        )
    assert any(int(s["input_ids"].shape[1]) < 9 for s in singles)
    together = compute_scores(base, [padded])
    apart = compute_scores(base, singles)
    torch.testing.assert_close(together.hidden, apart.hidden, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(together.layers, apart.layers, rtol=1e-4, atol=1e-7)


def test_fisher_is_a_sum_over_examples(base, padded_batch):
    """Fisher = sum over examples of squared per-example mask gradients, so it must not depend on
    how the examples are grouped into batches (nor on padding)."""
    padded = padded_batch(pad_id=0, batch=3, length=9, seed=5)
    padded["labels"] = torch.tensor([0, 1, 2])
    singles = [{k: v[i : i + 1] for k, v in padded.items()} for i in range(3)]
    together = compute_scores(base, [padded])
    apart = compute_scores(base, singles)
    ratio = (apart.heads / together.heads).median().item()
    assert torch.allclose(together.heads, apart.heads, rtol=1e-3, atol=0), (
        f"head Fisher of one batch of 3 is {1 / ratio:.4f} x that of the same 3 examples fed one by one "
        "(expected 1; 1/9 means each per-example gradient was scaled by 1/batch_size)"
    )
    assert torch.allclose(together.ffn, apart.ffn, rtol=1e-3, atol=0)


def test_silent_units_score_zero(base, batches):
    """A head whose output-projection columns are zero (a neuron whose FFN-output column is zero)
    cannot change the loss: its Fisher score is exactly 0, and only its score is."""
    model = copy.deepcopy(base)
    parts = arch_for(model).layer_parts(arch_for(model).layers(model)[1])
    with torch.no_grad():
        parts.o.weight[:, 2 * A : 3 * A] = 0.0  # layer 1, head 2
        parts.ffn_out.weight[:, 17] = 0.0  # layer 1, neuron 17
    s = compute_scores(model, batches)
    assert (s.heads == 0).nonzero().tolist() == [[1, 2]]
    assert (s.ffn == 0).nonzero().tolist() == [[1, 17]]


def finite_difference(model, batch, scale_columns, eps=1e-5):
    """d loss / d m where the unit's contribution is multiplied by m (at m = 1), central difference."""
    losses = []
    for m in (1 + eps, 1 - eps):
        probe = copy.deepcopy(model)
        scale_columns(probe, m)
        with torch.no_grad():
            losses.append(probe(**batch).loss.item())
    return (losses[0] - losses[1]) / (2 * eps)


def test_fisher_matches_finite_difference(base, batches):
    """With one example, the head / neuron score is (d loss / d mask)^2, checked in float64."""
    model = copy.deepcopy(base).double()
    batch = {k: v[:1] for k, v in batches[0].items()}
    s = compute_scores(model, [batch])
    layer, head, neuron = 2, 1, 30

    def scale_head(m, factor):
        o = arch_for(m).layer_parts(arch_for(m).layers(m)[layer]).o
        with torch.no_grad():
            o.weight[:, head * A : (head + 1) * A] *= factor

    def scale_neuron(m, factor):
        out = arch_for(m).layer_parts(arch_for(m).layers(m)[layer]).ffn_out
        with torch.no_grad():
            out.weight[:, neuron] *= factor

    g_head = finite_difference(model, batch, scale_head)
    g_neuron = finite_difference(model, batch, scale_neuron)
    assert g_head != 0 and g_neuron != 0
    assert s.heads[layer, head].item() == pytest.approx(g_head**2, rel=1e-4)
    assert s.ffn[layer, neuron].item() == pytest.approx(g_neuron**2, rel=1e-4)


def test_layer_influence_is_zero_for_an_identity_layer(base, batches, scores):
    """Block influence 1 - cos(in, out): a layer that passes its input through scores ~0."""
    model = copy.deepcopy(base)
    parts = arch_for(model).layer_parts(arch_for(model).layers(model)[2])
    # With both residual branches silenced the layer computes LayerNorm(LayerNorm(x)). Its input x comes
    # out of the previous layer's LayerNorm with identity affine (weight 1, bias 0, as at init), so it is
    # already normalised and the layer returns x itself: cos(in, out) = 1.
    assert torch.equal(base.bert.encoder.layer[1].output.LayerNorm.weight, torch.ones(D))
    with torch.no_grad():
        for lin in (parts.o, parts.ffn_out):
            lin.weight.zero_()
            lin.bias.zero_()
        for norm in (parts.attn_norm, parts.ffn_norm):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
    s = compute_scores(model, batches)
    assert abs(s.layers[2].item()) < 1e-6
    assert s.layers[[0, 1, 3]].min() > 100 * abs(s.layers[2])
    # layers before the changed one see the same inputs and outputs
    assert torch.equal(s.layers[:2], scores.layers[:2])


# ---- naive scores ---------------------------------------------------------------------------------


def test_naive_scores_rank_first_k_highest():
    shape = BaseShape(num_layers=3, num_heads=4, head_size=8, hidden_size=10, ffn_size=6, max_positions=64)
    s = naive_scores(shape)
    s.check_fits(shape)
    assert s.method == "naive"
    assert s.top_layers(2) == (0, 1)
    for row in s.heads:
        assert torch.all(row[:-1] > row[1:])
    for row in s.ffn:
        assert torch.all(row[:-1] > row[1:])
    assert torch.all(s.hidden[:-1] > s.hidden[1:])


def test_scores_save_load_round_trip(tmp_path, scores):
    path = tmp_path / "deep" / "scores.pt"
    scores.save(path)
    assert path.is_file() and not path.with_suffix(".pt.tmp").exists()
    assert_scores_equal(ImportanceScores.load(path), scores)


def test_fisher_scores_prune_to_a_working_model(base, batches, scores, padded_batch):
    spec = SubnetSpec(layers=(0, 3), heads=(2, 3), ffn=(10, 20), hidden=24, context=16)
    pruned = prune_model(base, spec, scores)
    with torch.no_grad():
        out = pruned(**padded_batch(pad_id=0)).logits
    assert out.shape == (3, C) and torch.isfinite(out).all()


# ---- cache -------------------------------------------------------------------------------------------


def test_cached_scores_write_then_read_without_recomputing(tmp_path, base, batches, scores, monkeypatch):
    calls = []

    def batches_fn():
        calls.append(1)
        return iter(batches)

    key = {"model": "tiny-bert", "task": "unit"}
    first = cached_scores(base, batches_fn, method="fisher", cache_dir=tmp_path, key_parts=key)
    assert_scores_equal(first, scores)
    files = list((tmp_path / "importance").glob("*.pt"))
    assert len(files) == 1
    assert calls == [1]

    def boom(*args, **kwargs):
        raise AssertionError("compute_scores called although the scores are cached")

    monkeypatch.setattr(importance, "compute_scores", boom)
    second = cached_scores(base, batches_fn, method="fisher", cache_dir=tmp_path, key_parts=dict(key))
    assert_scores_equal(second, first)
    assert calls == [1]  # the data was not even touched

    # a different key (other task, other batch budget) is a different cache entry: it recomputes
    with pytest.raises(AssertionError, match="compute_scores called"):
        cached_scores(base, batches_fn, method="fisher", cache_dir=tmp_path, key_parts={**key, "task": "other"})
    with pytest.raises(AssertionError, match="compute_scores called"):
        cached_scores(base, batches_fn, method="fisher", cache_dir=tmp_path, key_parts=key, max_batches=1)


def test_cached_scores_without_cache_dir_computes_every_time(tmp_path, base, batches, scores, monkeypatch):
    calls = []
    real = importance.compute_scores

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(importance, "compute_scores", counting)
    for _ in range(2):
        assert_scores_equal(cached_scores(base, lambda: batches, method="fisher", cache_dir=None, key_parts={}), scores)
    assert len(calls) == 2


def test_cached_scores_rejects_a_stale_file_of_another_shape(tmp_path, base, batches):
    key = {"model": "tiny"}
    cached_scores(base, lambda: batches, method="fisher", cache_dir=tmp_path, key_parts=key)
    (path,) = (tmp_path / "importance").glob("*.pt")
    two_layers = BaseShape(num_layers=2, num_heads=4, head_size=8, hidden_size=32, ffn_size=37, max_positions=512)
    other = naive_scores(two_layers)
    other.save(path)
    with pytest.raises(ValueError, match=r"'layers' have shape \(2,\); the base model needs \(4,\)"):
        cached_scores(base, lambda: batches, method="fisher", cache_dir=tmp_path, key_parts=key)


def test_naive_method_needs_no_data(tmp_path, base):
    def no_data():
        raise AssertionError("naive scores must not read data")

    s = cached_scores(base, no_data, method="naive", cache_dir=tmp_path, key_parts={})
    assert_scores_equal(s, naive_scores(base_shape(base.config)))
    assert not (tmp_path / "importance").exists()


def test_unknown_method_is_rejected(tmp_path, base):
    with pytest.raises(ValueError, match=r"importance\.method='bogus' is not known; allowed: fisher, naive"):
        cached_scores(base, lambda: [], method="bogus", cache_dir=tmp_path, key_parts={})


# ---- the real MiniLM ------------------------------------------------------------------------------------


def test_minilm_scores(minilm, minilm_tokenizer):
    sentences = ["an absolute delight from start to finish", "tedious, overlong and badly written."]
    batch = dict(minilm_tokenizer(sentences, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0])
    assert (batch["attention_mask"] == 0).any()
    before = {k: v.clone() for k, v in list(minilm.state_dict().items())[:5]}
    s = compute_scores(minilm, [batch])
    assert tuple(s.layers.shape) == (6,)
    assert tuple(s.heads.shape) == (6, 12)
    assert tuple(s.ffn.shape) == (6, 1536)
    assert tuple(s.hidden.shape) == (384,)
    for name in ("layers", "heads", "ffn", "hidden"):
        t = getattr(s, name)
        assert torch.isfinite(t).all() and (t >= 0).all() and t.unique().numel() > 1, name
    s.check_fits(base_shape(minilm.config))
    for k, v in before.items():
        assert torch.equal(minilm.state_dict()[k], v)
    assert_scores_equal(compute_scores(minilm, [batch]), s)

