"""Closed-form healing of decoder cuts (nas.cut.heal) on a tiny Llama trained on a tiny language.

The language: each word is mostly followed by the next one of a 60-word cycle, so a 4-layer Llama learns it in a
few dozen steps. Calibration blocks and held-out blocks are disjoint. Measured (held-out perplexity, base 3.06):
FFN 128 -> 64: 3.82 cut, 3.10 healed; a layer dropped: 3.25, 3.06; a key/value group or two attentions: no cost to
heal (3.05 either way).
"""

from __future__ import annotations

import pytest
import torch

import tiny
from nas.cut.heal import Calibration, HealSettings, LinearFit, heal, heal_settings
from nas.models.decoder import backbone, decoder_base_shape, prune_decoder
from nas.quality.lm import finetune_lm
from nas.quality.metrics import perplexity
from nas.spec import SubnetSpec

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 64


def language(n_blocks: int, length: int = 32, seed: int = 0) -> torch.Tensor:
    """Blocks of the tiny language: the next word is the current one + 1 (mod 60) 90% of the time."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n_blocks, length, dtype=torch.long)
    for b in range(n_blocks):
        word = int(torch.randint(0, 60, (1,), generator=g))
        for t in range(length):
            out[b, t] = word + 3
            jump = torch.rand(1, generator=g).item() < 0.1
            word = int(torch.randint(0, 60, (1,), generator=g)) if jump else (word + 1) % 60
    return out


def loader(ids: torch.Tensor, batch: int = 8):
    return [{"input_ids": ids[i:i + batch], "attention_mask": torch.ones_like(ids[i:i + batch]),
             "labels": ids[i:i + batch]} for i in range(0, len(ids), batch)]


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = tiny.llama(vocab=VOCAB, hidden=64, ffn=128, layers=4, positions=64)
    train, held = language(96, seed=1), language(16, seed=2)
    finetune_lm(model, loader(train), loader(held), steps=60, lr=3e-3, weight_decay=0.0, warmup_ratio=0.1,
                eval_every=60, patience=0, what="tiny")
    return {"model": model.eval(), "calibration": language(32, seed=3), "held": held}


def stream_error(model, base, spec, ids) -> float:
    """Squared error of the cut model's last hidden state against the unpruned one's, on `ids`."""
    with torch.no_grad():
        a = backbone(model)(input_ids=ids).last_hidden_state
        b = backbone(base)(input_ids=ids).last_hidden_state
    return float((a - b).pow(2).sum())


CUTS = {
    "ffn": SubnetSpec.uniform(layers=(0, 1, 2, 3), heads=4, kv_heads=2, ffn=64, hidden=64, context=64),
    "depth": SubnetSpec.uniform(layers=(0, 1, 3), heads=4, kv_heads=2, ffn=128, hidden=64, context=64),
    "group": SubnetSpec.uniform(layers=(0, 1, 2, 3), heads=2, kv_heads=1, ffn=128, hidden=64, context=64),
    "attention": SubnetSpec(layers=(0, 1, 2, 3), heads=(4, 0, 4, 0), kv_heads=(2, 0, 2, 0), ffn=(128,) * 4, hidden=64,
                            context=64, attn=("full", "linear", "full", "none")),
}


@pytest.mark.parametrize("cut", list(CUTS))
def test_healing_lowers_the_held_out_error_and_does_not_raise_perplexity(trained, cut):
    base, spec = trained["model"], CUTS[cut]
    plain = prune_decoder(base, spec).eval()
    healed = prune_decoder(base, spec).eval()
    report = heal(healed, base, spec, None, Calibration.of(base, trained["calibration"]), HealSettings(method="lsq"))
    assert report.errors and report.ratio() < 1  # on the calibration tokens
    held = trained["held"]
    assert stream_error(healed, base, spec, held) < stream_error(plain, base, spec, held)  # on tokens it never saw
    ppl = {name: perplexity(m, loader(held)) for name, m in (("base", base), ("plain", plain), ("healed", healed))}
    assert ppl["healed"] <= ppl["plain"] * 1.002, ppl  # never worse than the cut as it was (beyond 0.2% noise)
    if ppl["plain"] > 1.02 * ppl["base"]:  # a cut that costs something: healing wins back most of it
        assert (ppl["plain"] - ppl["healed"]) / (ppl["plain"] - ppl["base"]) >= 0.5, ppl


def test_healing_reads_off_the_input_moments_the_quantizer_uses(trained):
    from nas.deploy.imatrix import input_moments

    base, spec = trained["model"], CUTS["depth"]
    model = prune_decoder(base, spec).eval()
    ids = trained["calibration"]
    report = heal(model, base, spec, None, Calibration.of(base, ids), HealSettings(method="lsq"))
    direct = input_moments(model, ids)  # the healed model's own inputs, computed again
    assert set(report.moments) == set(direct)
    for name, moment in direct.items():
        assert torch.allclose(report.moments[name], moment, rtol=1e-3, atol=1e-5), name


def test_the_unpruned_model_is_left_as_it_is(trained):
    base = trained["model"]
    full = SubnetSpec.full(decoder_base_shape(base.config))
    model = prune_decoder(base, full).eval()
    heal(model, base, full, None, Calibration.of(base, trained["calibration"]), HealSettings(method="lsq"))
    ids = trained["held"][:2]
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-4)


def test_a_fit_is_the_least_squares_solution():
    """LinearFit without ridge solves min |W z + c - r|^2 exactly (checked against torch.linalg.lstsq)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 6, generator=g, dtype=torch.float64)
    r = z @ torch.randn(6, 3, generator=g, dtype=torch.float64) + 0.5 + 0.01 * torch.randn(400, 3, generator=g,
                                                                                             dtype=torch.float64)
    fit = LinearFit.empty(6, 3)
    fit.add(z[:250], r[:250], torch.ones(250))
    fit.add(z[250:], r[250:], torch.ones(150))
    w, c = fit.solve(torch.zeros(3, 6), method="lsq", ridge=0.0, intercept=True)
    ref = torch.linalg.lstsq(torch.cat([z, torch.ones(400, 1, dtype=torch.float64)], 1), r).solution
    assert torch.allclose(w.T, ref[:6], atol=1e-5) and torch.allclose(c, ref[6], atol=1e-5)


def test_settings_are_checked_in_one_line():
    assert heal_settings({}).method == "lsq" and heal_settings({"heal": "none"}).active is False
    with pytest.raises(ValueError, match="prune.heal='ridge' is not known; allowed: none, bias, lsq, auto") as e:
        heal_settings({"heal": "ridge"})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="prune.heal_blocks=0 must be an integer >= 1"):
        heal_settings({"heal_blocks": 0})
