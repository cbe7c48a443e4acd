"""Physical pruning: keep-everything is exact, shapes and parameter counts follow the spec in
closed form, the kept structures are the top-scored ones, and removing heads / neurons is
exactly the same as zeroing their contributions in the unpruned model."""

from __future__ import annotations

import copy

import pytest
import torch

from nas.cut.importance import ImportanceScores, naive_scores
from nas.cut.prune import count_parameters, prune_model
from nas.models.encoder import arch_for
from nas.models.registry import base_shape
from nas.models.slicing import keep_top
from nas.spec import BaseShape, SpecError, SubnetSpec

pytestmark = pytest.mark.usefixtures("one_thread")

V, D, H, A, F, P, C = 99, 32, 4, 8, 37, 512, 3  # tiny sizes: vocab, hidden, heads, head size, ffn, positions, labels
BERT_TYPES = 16  # token type vocabulary of the tiny BERT

# Specs on a 4-layer tiny base: each axis alone (non-uniform where per-layer) and all five together.
AXIS_SPECS = {
    "depth": SubnetSpec(layers=(0, 2, 3), heads=(4, 4, 4), ffn=(37, 37, 37), hidden=32, context=512),
    "heads": SubnetSpec(layers=(0, 1, 2, 3), heads=(1, 4, 2, 3), ffn=(37,) * 4, hidden=32, context=512),
    "ffn": SubnetSpec(layers=(0, 1, 2, 3), heads=(4,) * 4, ffn=(37, 1, 20, 8), hidden=32, context=512),
    "hidden": SubnetSpec(layers=(0, 1, 2, 3), heads=(4,) * 4, ffn=(37,) * 4, hidden=20, context=512),
    "context": SubnetSpec(layers=(0, 1, 2, 3), heads=(4,) * 4, ffn=(37,) * 4, hidden=32, context=16),
    "all": SubnetSpec(layers=(1, 3), heads=(3, 1), ffn=(5, 30), hidden=24, context=16),
}


# ---- closed-form parameter counts ------------------------------------------------------------


def encoder_params(spec: SubnetSpec, a: int) -> int:
    d = spec.hidden
    total = 0
    for h, f in zip(spec.heads, spec.ffn, strict=True):
        total += 3 * (d * h * a + h * a)  # Q, K, V
        total += h * a * d + d  # attention output
        total += 2 * d  # attention LayerNorm
        total += d * f + f  # FFN in
        total += f * d + d  # FFN out
        total += 2 * d  # FFN LayerNorm
    return total


def bert_params(spec: SubnetSpec, *, vocab: int, types: int, labels: int, a: int) -> int:
    d = spec.hidden
    embeddings = vocab * d + spec.context * d + types * d + 2 * d
    pooler = d * d + d
    classifier = d * labels + labels
    return embeddings + encoder_params(spec, a) + pooler + classifier


def roberta_params(spec: SubnetSpec, *, vocab: int, types: int, labels: int, a: int) -> int:
    d = spec.hidden
    embeddings = vocab * d + (spec.context + 2) * d + types * d + 2 * d  # positions start at pad_token_id + 1 = 2
    head = (d * d + d) + (d * labels + labels)  # classifier.dense + classifier.out_proj, no pooler
    return embeddings + encoder_params(spec, a) + head


def distilbert_params(spec: SubnetSpec, *, vocab: int, labels: int, a: int) -> int:
    d = spec.hidden
    embeddings = vocab * d + spec.context * d + 2 * d  # no token types
    head = (d * d + d) + (d * labels + labels)  # pre_classifier + classifier
    return embeddings + encoder_params(spec, a) + head


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def top_sorted(scores: torch.Tensor, k: int) -> list[int]:
    """Reference top-k (scores here have no ties), in original order."""
    return sorted(torch.argsort(scores, descending=True)[:k].tolist())


def head_cols(heads: list[int], a: int) -> list[int]:
    return [h * a + i for h in heads for i in range(a)]


def hand_scores(shape: BaseShape, seed: int = 7) -> ImportanceScores:
    """Distinct scores in a scrambled order per layer, so 'top k' is never 'first k'."""
    g = torch.Generator().manual_seed(seed)
    L = shape.num_layers

    def perm(n: int) -> torch.Tensor:
        return torch.randperm(n, generator=g).float() + 0.5

    return ImportanceScores(
        # layer scores that disagree with every spec's layer list: spec.layers must win
        layers=torch.arange(L, 0, -1).float(),
        heads=torch.stack([perm(shape.num_heads) for _ in range(L)]),
        ffn=torch.stack([perm(shape.ffn_size) for _ in range(L)]),
        hidden=perm(shape.hidden_size),
        method="hand",
    )


@pytest.fixture(scope="module")
def bert4(tiny_bert):
    return tiny_bert(layers=4)


@pytest.fixture(scope="module")
def minilm_batch(minilm_tokenizer):
    sentences = [
        "a gripping, beautifully acted film that never lets go",
        "dull.",
        "the plot is thin but the performances carry it through to a satisfying end",
    ]
    return dict(minilm_tokenizer(sentences, padding=True, return_tensors="pt"))


# ---- 1. keep-everything reproduces the original exactly ------------------------------------------


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_full_spec_reproduces_tiny_model(family, tiny_bert, tiny_roberta, tiny_distilbert, padded_batch):
    base = {"bert": tiny_bert, "roberta": tiny_roberta, "distilbert": tiny_distilbert}[family]()
    pad = base.config.pad_token_id
    batch = padded_batch(pad_id=pad)
    shape = base_shape(base.config)
    pruned = prune_model(base, SubnetSpec.full(shape))
    assert pruned is not base
    assert_same_state(snapshot(pruned), snapshot(base))
    assert n_params(pruned) == n_params(base)
    torch.testing.assert_close(logits(pruned, batch), logits(base, batch), atol=1e-5, rtol=0)
    one = {k: v[:1] for k, v in batch.items()}
    torch.testing.assert_close(logits(pruned, one), logits(base, one), atol=1e-5, rtol=0)
    assert base_shape(pruned.config) == shape


def test_full_spec_reproduces_minilm(minilm, minilm_batch):
    assert (minilm_batch["attention_mask"] == 0).any()
    shape = base_shape(minilm.config)
    assert shape == BaseShape(
        num_layers=6, num_heads=12, head_size=32, hidden_size=384, ffn_size=1536, max_positions=512
    )
    pruned = prune_model(minilm, SubnetSpec.full(shape))
    assert n_params(pruned) == n_params(minilm)
    torch.testing.assert_close(logits(pruned, minilm_batch), logits(minilm, minilm_batch), atol=1e-5, rtol=0)


# ---- 2. shapes and closed-form parameter counts ----------------------------------------------------


def test_formula_matches_unpruned_models(bert4, tiny_roberta, tiny_distilbert, minilm):
    """The formulas themselves are right: they count the unpruned models exactly."""
    full4 = SubnetSpec.full(base_shape(bert4.config))
    assert n_params(bert4) == bert_params(full4, vocab=V, types=BERT_TYPES, labels=C, a=A)
    rob = tiny_roberta()
    rob_full = SubnetSpec.full(base_shape(rob.config))
    assert n_params(rob) == roberta_params(rob_full, vocab=V, types=1, labels=C, a=A)
    dis = tiny_distilbert()
    dis_full = SubnetSpec.full(base_shape(dis.config))
    assert n_params(dis) == distilbert_params(dis_full, vocab=V, labels=C, a=A)
    full = SubnetSpec.full(base_shape(minilm.config))
    assert n_params(minilm) == bert_params(full, vocab=30522, types=2, labels=2, a=32)
    assert count_parameters(minilm) == n_params(minilm)


def check_layer_shapes(model: torch.nn.Module, spec: SubnetSpec, a: int) -> None:
    arch = arch_for(model)
    layers = arch.layers(model)
    assert len(layers) == len(spec.layers)
    d = spec.hidden
    for layer, h, f in zip(layers, spec.heads, spec.ffn, strict=True):
        parts = arch.layer_parts(layer)
        for lin in (parts.q, parts.k, parts.v):
            assert tuple(lin.weight.shape) == (h * a, d)
            assert tuple(lin.bias.shape) == (h * a,)
            assert (lin.out_features, lin.in_features) == (h * a, d)
        assert tuple(parts.o.weight.shape) == (d, h * a)
        assert tuple(parts.o.bias.shape) == (d,)
        assert (parts.o.out_features, parts.o.in_features) == (d, h * a)
        assert tuple(parts.ffn_in.weight.shape) == (f, d)
        assert tuple(parts.ffn_in.bias.shape) == (f,)
        assert tuple(parts.ffn_out.weight.shape) == (d, f)
        assert tuple(parts.ffn_out.bias.shape) == (d,)
        for norm in (parts.attn_norm, parts.ffn_norm):
            assert tuple(norm.weight.shape) == (d,)
            assert tuple(norm.bias.shape) == (d,)
            assert tuple(norm.normalized_shape) == (d,)
        assert getattr(parts.attention, arch.heads_attr) == h
        assert parts.attention.attention_head_size == a
    emb = arch.embeddings(model)
    assert tuple(emb.norm.weight.shape) == (d,)
    assert emb.word.weight.shape[1] == d and emb.word.embedding_dim == d
    assert emb.position.weight.shape[1] == d


def check_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor], labels: int) -> None:
    for b in ({k: v[:1] for k, v in batch.items()}, batch):
        out = logits(model, b)
        assert out.shape == (b["input_ids"].shape[0], labels)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("axis", list(AXIS_SPECS))
def test_bert_axis_shapes_and_param_count(axis, bert4, padded_batch):
    spec = AXIS_SPECS[axis]
    pruned = prune_model(bert4, spec)
    assert n_params(pruned) == bert_params(spec, vocab=V, types=BERT_TYPES, labels=C, a=A)
    check_layer_shapes(pruned, spec, A)
    emb = pruned.bert.embeddings
    assert tuple(emb.word_embeddings.weight.shape) == (V, spec.hidden)
    assert tuple(emb.position_embeddings.weight.shape) == (spec.context, spec.hidden)
    assert tuple(emb.token_type_embeddings.weight.shape) == (BERT_TYPES, spec.hidden)
    assert emb.position_ids.shape[-1] == spec.context
    assert tuple(pruned.bert.pooler.dense.weight.shape) == (spec.hidden, spec.hidden)
    assert tuple(pruned.classifier.weight.shape) == (C, spec.hidden)
    cfg = pruned.config
    assert cfg.num_hidden_layers == len(spec.layers)
    assert cfg.hidden_size == spec.hidden
    assert cfg.max_position_embeddings == spec.context
    assert cfg.nas_heads == list(spec.heads) and cfg.nas_ffn == list(spec.ffn)
    assert SubnetSpec.from_dict(cfg.nas_spec) == spec
    check_forward(pruned, padded_batch(pad_id=0), C)


@pytest.mark.parametrize("axis", ["all", "context", "hidden"])
def test_roberta_axis_shapes_and_param_count(axis, tiny_roberta, padded_batch):
    base = tiny_roberta(layers=4)
    spec = AXIS_SPECS[axis]
    pruned = prune_model(base, spec)
    assert n_params(pruned) == roberta_params(spec, vocab=V, types=1, labels=C, a=A)
    check_layer_shapes(pruned, spec, A)
    assert tuple(pruned.roberta.embeddings.position_embeddings.weight.shape) == (spec.context + 2, spec.hidden)
    assert pruned.config.max_position_embeddings == spec.context + 2
    assert base_shape(pruned.config).max_positions == spec.context
    assert tuple(pruned.classifier.dense.weight.shape) == (spec.hidden, spec.hidden)
    assert tuple(pruned.classifier.out_proj.weight.shape) == (C, spec.hidden)
    # the longest input that fits: context real tokens (positions 2 .. context+1)
    batch = padded_batch(pad_id=1, length=spec.context)
    check_forward(pruned, batch, C)


def test_distilbert_all_axes_shapes_and_param_count(tiny_distilbert, padded_batch):
    base = tiny_distilbert(layers=4)
    spec = AXIS_SPECS["all"]
    pruned = prune_model(base, spec)
    assert n_params(pruned) == distilbert_params(spec, vocab=V, labels=C, a=A)
    check_layer_shapes(pruned, spec, A)
    assert pruned.config.n_layers == 2 and pruned.config.dim == spec.hidden
    check_forward(pruned, padded_batch(pad_id=0), C)


def test_minilm_all_axes_shapes_and_param_count(minilm, minilm_batch):
    spec = SubnetSpec(layers=(0, 2, 5), heads=(12, 6, 3), ffn=(1536, 700, 100), hidden=256, context=128)
    pruned = prune_model(minilm, spec)
    assert n_params(pruned) == bert_params(spec, vocab=30522, types=2, labels=2, a=32)
    check_layer_shapes(pruned, spec, 32)
    check_forward(pruned, minilm_batch, 2)


def test_eager_and_sdpa_agree_after_pruning(bert4, padded_batch):
    """Head counts are set on the attention module, so both attention kernels see the pruned shape."""
    batch = padded_batch(pad_id=0)
    spec = AXIS_SPECS["all"]
    sdpa = prune_model(bert4, spec)
    eager = copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    torch.testing.assert_close(logits(eager, batch), logits(sdpa, batch), atol=1e-5, rtol=0)


def test_context_longer_than_kept_positions_fails(bert4, padded_batch):
    pruned = prune_model(bert4, AXIS_SPECS["context"])
    too_long = padded_batch(pad_id=0, length=17)
    with pytest.raises((IndexError, RuntimeError)):
        logits(pruned, too_long)


# ---- 3. the kept structures are the top-scored ones --------------------------------------------------


def test_heads_and_ffn_follow_scores_per_base_layer(bert4):
    shape = base_shape(bert4.config)
    scores = hand_scores(shape)
    spec = SubnetSpec(layers=(1, 3), heads=(2, 1), ffn=(5, 30), hidden=32, context=512)
    pruned = prune_model(bert4, spec, scores)
    base_layers = arch_for(bert4).layers(bert4)
    not_first_k = []
    for new, b in enumerate(spec.layers):
        got = arch_for(pruned).layer_parts(arch_for(pruned).layers(pruned)[new])
        ref = arch_for(bert4).layer_parts(base_layers[b])
        heads = top_sorted(scores.heads[b], spec.heads[new])  # scores of the *base* layer b
        not_first_k.append(heads != list(range(spec.heads[new])))
        rows = head_cols(heads, A)
        for g, r in ((got.q, ref.q), (got.k, ref.k), (got.v, ref.v)):
            assert torch.equal(g.weight, r.weight[rows])
            assert torch.equal(g.bias, r.bias[rows])
        assert torch.equal(got.o.weight, ref.o.weight[:, rows])
        assert torch.equal(got.o.bias, ref.o.bias)
        neurons = top_sorted(scores.ffn[b], spec.ffn[new])
        assert torch.equal(got.ffn_in.weight, ref.ffn_in.weight[neurons])
        assert torch.equal(got.ffn_in.bias, ref.ffn_in.bias[neurons])
        assert torch.equal(got.ffn_out.weight, ref.ffn_out.weight[:, neurons])
        assert torch.equal(got.ffn_out.bias, ref.ffn_out.bias)
        not_first_k.append(neurons != list(range(spec.ffn[new])))
    assert all(not_first_k)  # the scores really pick something other than the naive choice


def test_head_rows_kept_in_original_order(bert4):
    shape = base_shape(bert4.config)
    s = naive_scores(shape)
    # layer 0: head 3 scores highest, then head 0: keep [0, 3] in that (original) order
    heads = s.heads.clone()
    heads[0] = torch.tensor([5.0, 1.0, 2.0, 9.0])
    scores = ImportanceScores(layers=s.layers, heads=heads, ffn=s.ffn, hidden=s.hidden, method="hand")
    spec = SubnetSpec(layers=(0, 1, 2, 3), heads=(2, 4, 4, 4), ffn=(37,) * 4, hidden=32, context=512)
    pruned = prune_model(bert4, spec, scores)
    q = pruned.bert.encoder.layer[0].attention.self.query.weight
    base_q = bert4.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(q[:A], base_q[0:A])
    assert torch.equal(q[A:], base_q[3 * A : 4 * A])


def test_all_axes_follow_scores(bert4):
    shape = base_shape(bert4.config)
    scores = hand_scores(shape)
    spec = AXIS_SPECS["all"]
    pruned = prune_model(bert4, spec, scores)
    hid = top_sorted(scores.hidden, spec.hidden)
    assert hid != list(range(spec.hidden))
    arch = arch_for(bert4)
    # kept layers are exactly spec.layers (not the layers the layer scores favour)
    assert scores.top_layers(2) == (0, 1) != spec.layers
    for new, b in enumerate(spec.layers):
        got = arch.layer_parts(arch.layers(pruned)[new])
        ref = arch.layer_parts(arch.layers(bert4)[b])
        rows = head_cols(top_sorted(scores.heads[b], spec.heads[new]), A)
        neurons = top_sorted(scores.ffn[b], spec.ffn[new])
        assert torch.equal(got.q.weight, ref.q.weight[rows][:, hid])
        assert torch.equal(got.k.weight, ref.k.weight[rows][:, hid])
        assert torch.equal(got.v.weight, ref.v.weight[rows][:, hid])
        assert torch.equal(got.o.weight, ref.o.weight[hid][:, rows])
        assert torch.equal(got.o.bias, ref.o.bias[hid])
        assert torch.equal(got.ffn_in.weight, ref.ffn_in.weight[neurons][:, hid])
        assert torch.equal(got.ffn_out.weight, ref.ffn_out.weight[hid][:, neurons])
        assert torch.equal(got.ffn_out.bias, ref.ffn_out.bias[hid])
        for g, r in ((got.attn_norm, ref.attn_norm), (got.ffn_norm, ref.ffn_norm)):
            assert torch.equal(g.weight, r.weight[hid]) and torch.equal(g.bias, r.bias[hid])
    emb, base_emb = pruned.bert.embeddings, bert4.bert.embeddings
    assert torch.equal(emb.word_embeddings.weight, base_emb.word_embeddings.weight[:, hid])
    assert torch.equal(emb.position_embeddings.weight, base_emb.position_embeddings.weight[: spec.context, hid])
    assert torch.equal(emb.token_type_embeddings.weight, base_emb.token_type_embeddings.weight[:, hid])
    assert torch.equal(emb.LayerNorm.weight, base_emb.LayerNorm.weight[hid])
    assert torch.equal(emb.LayerNorm.bias, base_emb.LayerNorm.bias[hid])
    assert torch.equal(pruned.bert.pooler.dense.weight, bert4.bert.pooler.dense.weight[hid][:, hid])
    assert torch.equal(pruned.bert.pooler.dense.bias, bert4.bert.pooler.dense.bias[hid])
    assert torch.equal(pruned.classifier.weight, bert4.classifier.weight[:, hid])
    assert torch.equal(pruned.classifier.bias, bert4.classifier.bias)


def test_roberta_head_follows_hidden_scores(tiny_roberta):
    base = tiny_roberta(layers=4)
    scores = hand_scores(base_shape(base.config))
    spec = AXIS_SPECS["all"]
    pruned = prune_model(base, spec, scores)
    hid = top_sorted(scores.hidden, spec.hidden)
    assert torch.equal(pruned.classifier.dense.weight, base.classifier.dense.weight[hid][:, hid])
    assert torch.equal(pruned.classifier.dense.bias, base.classifier.dense.bias[hid])
    assert torch.equal(pruned.classifier.out_proj.weight, base.classifier.out_proj.weight[:, hid])
    pos = base.roberta.embeddings.position_embeddings.weight
    assert torch.equal(pruned.roberta.embeddings.position_embeddings.weight, pos[: spec.context + 2, hid])


def test_naive_scores_keep_first_k(bert4):
    shape = base_shape(bert4.config)
    spec = AXIS_SPECS["all"]
    with_naive = prune_model(bert4, spec, naive_scores(shape))
    with_none = prune_model(bert4, spec, None)
    assert_same_state(snapshot(with_naive), snapshot(with_none))
    d, hid = spec.hidden, list(range(spec.hidden))
    for new, b in enumerate(spec.layers):
        got = with_none.bert.encoder.layer[new]
        ref = bert4.bert.encoder.layer[b]
        h, f = spec.heads[new] * A, spec.ffn[new]
        assert torch.equal(got.attention.self.query.weight, ref.attention.self.query.weight[:h, :d])
        assert torch.equal(got.attention.output.dense.weight, ref.attention.output.dense.weight[:d, :h])
        assert torch.equal(got.intermediate.dense.weight, ref.intermediate.dense.weight[:f, hid])
        assert torch.equal(got.output.dense.weight, ref.output.dense.weight[:d, :f])
    assert torch.equal(with_none.classifier.weight, bert4.classifier.weight[:, :d])


def test_equal_scores_keep_first_k(bert4):
    """All-equal scores behave like naive: ties keep the lowest indices."""
    shape = base_shape(bert4.config)
    L = shape.num_layers
    flat = ImportanceScores(
        layers=torch.ones(L),
        heads=torch.ones(L, shape.num_heads),
        ffn=torch.ones(L, shape.ffn_size),
        hidden=torch.ones(shape.hidden_size),
        method="flat",
    )
    spec = AXIS_SPECS["all"]
    assert_same_state(snapshot(prune_model(bert4, spec, flat)), snapshot(prune_model(bert4, spec)))


def test_base_model_is_not_modified(bert4, padded_batch):
    batch = padded_batch(pad_id=0)
    before = snapshot(bert4)
    config_before = bert4.config.to_dict()
    out_before = logits(bert4, batch)
    scores = hand_scores(base_shape(bert4.config))
    pruned = prune_model(bert4, AXIS_SPECS["all"], scores)
    assert_same_state(snapshot(bert4), before)
    assert bert4.config.to_dict() == config_before
    assert len(bert4.bert.encoder.layer) == 4
    assert bert4.bert.encoder.layer[0].attention.self.num_attention_heads == H
    torch.testing.assert_close(logits(bert4, batch), out_before, atol=0, rtol=0)
    # the pruned model owns its weights: changing them leaves the base alone
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(1.0)
    assert_same_state(snapshot(bert4), before)


def test_full_spec_copy_does_not_share_weights(tiny_bert):
    base = tiny_bert()
    before = snapshot(base)
    pruned = prune_model(base, SubnetSpec.full(base_shape(base.config)))
    with torch.no_grad():
        for p in pruned.parameters():
            p.mul_(0.0)
    assert_same_state(snapshot(base), before)


def test_prune_rejects_bad_spec_and_mismatched_scores(bert4):
    shape = base_shape(bert4.config)
    with pytest.raises(SpecError, match=r"SubnetSpec\.heads\[0\]=5 is out of range; allowed 1\.\.4"):
        prune_model(bert4, SubnetSpec(layers=(0,), heads=(5,), ffn=(3,), hidden=32, context=16))
    good = naive_scores(shape)
    bad = ImportanceScores(layers=good.layers, heads=good.heads[:, :3], ffn=good.ffn, hidden=good.hidden, method="x")
    with pytest.raises(ValueError, match=r"'heads' have shape \(4, 3\); the base model needs \(4, 4\)"):
        prune_model(bert4, AXIS_SPECS["all"], bad)


# ---- 4. pruning == zeroing the removed contributions in the unpruned model ---------------------------


def zeroed_copy(base: torch.nn.Module, spec: SubnetSpec, scores: ImportanceScores, shape: BaseShape) -> torch.nn.Module:
    """A copy of `base` (all layers kept) whose dropped heads / neurons contribute nothing."""
    assert spec.layers == tuple(range(shape.num_layers)) and spec.hidden == shape.hidden_size
    masked = copy.deepcopy(base)
    arch = arch_for(masked)
    a = shape.head_size
    with torch.no_grad():
        for b, layer in enumerate(arch.layers(masked)):
            parts = arch.layer_parts(layer)
            kept_heads = keep_top(scores.heads[b], spec.heads[b]).tolist()
            dropped = [h for h in range(shape.num_heads) if h not in kept_heads]
            parts.o.weight[:, head_cols(dropped, a)] = 0.0
            kept_ffn = set(keep_top(scores.ffn[b], spec.ffn[b]).tolist())
            parts.ffn_out.weight[:, [j for j in range(shape.ffn_size) if j not in kept_ffn]] = 0.0
    return masked


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
@pytest.mark.parametrize("what", ["heads", "ffn", "both"])
def test_pruning_equals_zeroing(family, what, tiny_bert, tiny_roberta, tiny_distilbert, padded_batch):
    base = {"bert": tiny_bert, "roberta": tiny_roberta, "distilbert": tiny_distilbert}[family](layers=4)
    shape = base_shape(base.config)
    scores = hand_scores(shape, seed=11)
    heads = (1, 4, 2, 3) if what in ("heads", "both") else (4,) * 4
    ffn = (37, 1, 20, 8) if what in ("ffn", "both") else (37,) * 4
    spec = SubnetSpec(layers=(0, 1, 2, 3), heads=heads, ffn=ffn, hidden=32, context=shape.max_positions)
    batch = padded_batch(pad_id=base.config.pad_token_id)
    pruned = prune_model(base, spec, scores)
    masked = zeroed_copy(base, spec, scores, shape)
    want = logits(masked, batch)
    torch.testing.assert_close(logits(pruned, batch), want, atol=1e-5, rtol=0)
    # and the removal mattered: the unmasked base gives different logits
    assert not torch.allclose(logits(base, batch), want, atol=1e-4)


def test_pruning_equals_zeroing_minilm(minilm, minilm_batch):
    shape = base_shape(minilm.config)
    scores = hand_scores(shape, seed=3)
    L = shape.num_layers
    spec = SubnetSpec(
        layers=tuple(range(L)), heads=(12, 7, 3, 1, 9, 6), ffn=(1536, 1000, 400, 77, 1200, 512), hidden=384, context=512
    )
    pruned = prune_model(minilm, spec, scores)
    masked = zeroed_copy(minilm, spec, scores, shape)
    torch.testing.assert_close(logits(pruned, minilm_batch), logits(masked, minilm_batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_context_pruning_is_exact_for_short_inputs(family, tiny_bert, tiny_roberta, tiny_distilbert, padded_batch):
    """Dropping positions past the context changes nothing for inputs that fit in it."""
    base = {"bert": tiny_bert, "roberta": tiny_roberta, "distilbert": tiny_distilbert}[family]()
    spec = SubnetSpec.full(base_shape(base.config))
    spec = SubnetSpec(layers=spec.layers, heads=spec.heads, ffn=spec.ffn, hidden=spec.hidden, context=12)
    batch = padded_batch(pad_id=base.config.pad_token_id, length=12)
    pruned = prune_model(base, spec)
    torch.testing.assert_close(logits(pruned, batch), logits(base, batch), atol=1e-5, rtol=0)


def test_depth_pruning_equals_running_kept_layers(bert4, padded_batch):
    """Dropping layers == running the base with only the kept layers in its ModuleList."""
    batch = padded_batch(pad_id=0)
    spec = AXIS_SPECS["depth"]
    pruned = prune_model(bert4, spec)
    manual = copy.deepcopy(bert4)
    manual.bert.encoder.layer = torch.nn.ModuleList([manual.bert.encoder.layer[i] for i in spec.layers])
    manual.config.num_hidden_layers = len(spec.layers)
    torch.testing.assert_close(logits(pruned, batch), logits(manual, batch), atol=1e-5, rtol=0)


# ---- 7. keep_top -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scores, k, want",
    [
        ([1.0, 5.0, 3.0, 9.0], 3, [1, 2, 3]),  # sorted ascending, not by score
        ([9.0, 1.0, 5.0, 3.0], 2, [0, 2]),
        ([1.0, 1.0, 1.0, 1.0], 2, [0, 1]),  # all tied: first k
        ([0.0, 2.0, 2.0, 1.0, 2.0], 2, [1, 2]),  # tie among the top: lower indices win
        ([3.0, 1.0, 3.0, 1.0, 3.0], 2, [0, 2]),
        ([2.0, 1.0, 1.0, 1.0], 2, [0, 1]),  # tie for the last slot: lowest index
        ([-1.0, -5.0, -2.0], 1, [0]),
        ([4.0, 3.0, 2.0], 3, [0, 1, 2]),  # k == n keeps everything in order
    ],
)
def test_keep_top(scores, k, want):
    got = keep_top(torch.tensor(scores), k)
    assert got.dtype == torch.long
    assert got.tolist() == want


def test_keep_top_large_ties_are_stable():
    scores = torch.zeros(1000)
    scores[[999, 500, 3]] = 1.0
    assert keep_top(scores, 10).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 500, 999]


@pytest.mark.parametrize("k", [0, -1, 5, 100])
def test_keep_top_k_out_of_range(k):
    with pytest.raises(ValueError, match=rf"keep_top: k={k} is out of range; allowed 1\.\.4"):
        keep_top(torch.tensor([1.0, 2.0, 3.0, 4.0]), k)
