"""Training-free recovery after pruning (nas.cut.recovery): keep-everything is untouched, the closed-form
fits lower each pruned sub-layer's reconstruction error on its calibration inputs, and the errors
the fit reports are the errors the corrected model really has."""

from __future__ import annotations

import copy

import pytest
import torch

from nas.cut.importance import naive_scores
from nas.cut.prune import prune_model
from nas.cut.recovery import RecoverySettings, _accumulate, _teacher_pass, recover
from nas.models.registry import base_shape, family_for
from nas.spec import SubnetSpec

pytestmark = pytest.mark.usefixtures("one_thread")

CUT = SubnetSpec(layers=(0, 1, 2), heads=(2, 3, 1), ffn=(12, 20, 9), hidden=24, context=32)


def batches(n: int = 4, *, pad_id: int = 0, seed: int = 3) -> list[dict[str, torch.Tensor]]:
    from tiny import padded_batch

    return [padded_batch(pad_id=pad_id, batch=8, length=12, seed=seed + i) for i in range(n)]


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
@pytest.mark.parametrize("method", ["bias", "rescale", "both"])
def test_keep_everything_leaves_logits_equal(family, method, tiny_bert, tiny_roberta, tiny_distilbert):
    base = {"bert": tiny_bert, "roberta": tiny_roberta, "distilbert": tiny_distilbert}[family](layers=3)
    shape = base_shape(base.config)
    pad = base.config.pad_token_id
    model = prune_model(base, SubnetSpec.full(shape), None)
    report = recover(model, base, SubnetSpec.full(shape), None, batches(pad_id=pad), RecoverySettings(method=method))
    assert report.errors == []
    for b in batches(2, pad_id=pad, seed=11):
        torch.testing.assert_close(logits(model, b), logits(base, b), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["bias", "rescale", "both"])
def test_context_cut_alone_changes_nothing_on_short_inputs(method, tiny_bert):
    """Cutting only positions leaves every layer's output as it was on inputs within the context:
    the fits must find scales of 1 and no bias shift."""
    base = tiny_bert(layers=3)
    shape = base_shape(base.config)
    spec = SubnetSpec.uniform(layers=(0, 1, 2), heads=4, ffn=37, hidden=32, context=16).validate(shape)
    model = prune_model(base, spec, None)
    recover(model, base, spec, None, batches(), RecoverySettings(method=method, ridge=0.0))
    for b in batches(2, seed=11):
        torch.testing.assert_close(logits(model, b), logits(base, b), atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["bias", "rescale", "both"])
def test_every_sublayer_error_drops(method, tiny_bert):
    base = tiny_bert(layers=3)
    calib = batches()
    model = prune_model(base, CUT, None)
    report = recover(model, base, CUT, None, calib, RecoverySettings(method=method))
    assert len(report.errors) == 2 * len(CUT.layers)
    for e in report.errors:
        assert e["after"] < e["before"], e
    assert report.ratio() < 1.0


def sublayer_error(model, base, spec, calib, layer: int, sub: str) -> float:
    """The pruned sub-layer's squared error against the unpruned model's pre-norm sums, measured
    directly on the model as it is (nothing from the fit)."""
    from nas.models.slicing import kept_units

    family = family_for(base)
    kept = kept_units(base_shape(base.config), spec, None)
    teacher = [family.recovery_layers(base)[b] for b in spec.layers]
    targets, _ = _teacher_pass(base, teacher, calib, kept.hidden, torch.tensor([], dtype=torch.long), {})
    parts = family.recovery_layers(model)[layer]
    proj, norm = (parts.attention_out, parts.attention_sum) if sub == "attention" else (parts.ffn_out, parts.ffn_sum)
    fit = _accumulate(model, proj, norm, calib, targets[(layer, sub)], None)
    return fit.error(torch.ones(fit.gram.shape[0], dtype=torch.float64), torch.zeros_like(fit.rsum))


def test_rescaled_layer_error_is_what_the_fit_reports_and_below_unrescaled(tiny_bert):
    base = tiny_bert(layers=3)
    calib = batches()
    plain = prune_model(base, CUT, None)
    rescaled = copy.deepcopy(plain)
    report = recover(rescaled, base, CUT, None, calib, RecoverySettings(method="rescale"))
    first = report.errors[0]
    assert (first["layer"], first["sublayer"]) == (0, "attention")
    without = sublayer_error(plain, base, CUT, calib, 0, "attention")
    with_rescale = sublayer_error(rescaled, base, CUT, calib, 0, "attention")
    assert with_rescale == pytest.approx(first["after"], rel=1e-6)
    assert without == pytest.approx(first["before"], rel=1e-6)
    assert with_rescale < without


def test_scores_choose_what_is_corrected(tiny_bert):
    """With importance scores the kept units differ from keep-first-k; recovery follows them."""
    base = tiny_bert(layers=3)
    shape = base_shape(base.config)
    g = torch.Generator().manual_seed(0)
    scores = naive_scores(shape)
    scores = type(scores)(layers=scores.layers, heads=torch.rand(3, 4, generator=g), ffn=torch.rand(3, 37, generator=g),
                          hidden=torch.rand(32, generator=g), method="test")
    model = prune_model(base, CUT, scores)
    report = recover(model, base, CUT, scores, batches(), RecoverySettings(method="both"))
    assert all(e["after"] < e["before"] for e in report.errors)


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="prune.recovery='lsq' is not known; allowed: auto, none, bias, rescale, both"):
        RecoverySettings.from_cfg({"recovery": "lsq"})
    with pytest.raises(ValueError, match="prune.calibration=0 must be an integer >= 1"):
        RecoverySettings.from_cfg({"recovery": "both", "calibration": 0})
    with pytest.raises(ValueError, match="prune.calibraton is not a setting"):
        RecoverySettings.from_cfg({"calibraton": 5})


def test_auto_rescales_only_where_nothing_trains_afterwards():
    auto = RecoverySettings.from_cfg({})
    assert auto.method == "auto" and not auto.active
    assert auto.resolved("none").method == "rescale"
    assert auto.resolved("finetune").method == "none"
    assert auto.resolved("supernet").method == "none"
    assert RecoverySettings(method="both").resolved("finetune").method == "both"  # an explicit choice stays
