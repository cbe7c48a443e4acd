"""llama.cpp's own quantizer (nas.deploy.gguf_quant) and the importance matrix (nas.deploy.imatrix) on tiny Llamas.

The K-quant tests use a Llama whose widths are multiples of 256 (hidden 256, FFN 512), so every matrix holds
whole 256-value K-quant blocks and llama.cpp keeps the asked type instead of falling back. Tolerance of q6_k
against f32: 5% of the largest logit (the random model's logits are small and flat: measured 3.2-3.5%, q8_0
1.2-1.4%), the argmax kept at 90% of positions or more (measured 96-98%).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tiny
from nas.deploy.gguf import write_gguf
from nas.deploy.gguf_quant import QUANT_TYPES, check_precision, file_tensors, llama_quantize
from nas.deploy.imatrix import check_split, diagonal, input_moments, matmul_modules
from nas.deploy.llamacpp import all_logits, llama_cpp_reason, load_gguf

pytestmark = pytest.mark.usefixtures("one_thread")
needs_llama_cpp = pytest.mark.skipif(llama_cpp_reason() is not None, reason=str(llama_cpp_reason()))

Q6_TOL = 5e-2
# The GGML types a preset may give a weight matrix of the 256-aligned tiny Llama (its own type, the higher-bit
# types its mixture gives some tensors, and Q8_0 / Q6_K for the tied output layer).
PRESET_TYPES = {
    "q8_0": {"Q8_0"},
    "q6_k": {"Q6_K"},
    "q5_k_m": {"Q5_K", "Q6_K"},
    "q5_0": {"Q5_0", "Q5_1", "Q6_K"},
    "q4_k_m": {"Q4_K", "Q5_K", "Q6_K"},
    "iq4_nl": {"IQ4_NL", "Q5_K", "Q6_K"},
    "q4_0": {"Q4_0", "Q4_1", "Q6_K"},
}
MAIN_TYPE = {"q8_0": "Q8_0", "q6_k": "Q6_K", "q5_k_m": "Q5_K", "q5_0": "Q5_0", "q4_k_m": "Q4_K", "iq4_nl": "IQ4_NL",
             "q4_0": "Q4_0"}


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A random Llama with 256-aligned widths, its f32 GGUF and an importance matrix on random token blocks."""
    root = tmp_path_factory.mktemp("gguf_quant")
    model = tiny.llama(vocab=512, hidden=256, ffn=512, layers=2, positions=128)
    ids = torch.randint(3, 512, (6, 48), generator=torch.Generator().manual_seed(0))
    f32 = root / "m.f32.gguf"
    if llama_cpp_reason() is None:
        write_gguf(model, None, f32, kind="f32")
    return {"root": root, "model": model, "ids": ids, "f32": f32, "imatrix": diagonal(input_moments(model, ids))}


def logits(path, ids):
    llm = load_gguf(path, logits_all=True, n_ctx=128)
    try:
        return all_logits(llm, ids)
    finally:
        llm.close()


@needs_llama_cpp
@pytest.mark.parametrize("kind", list(QUANT_TYPES))
def test_each_type_loads_in_llama_cpp_with_the_asked_tensor_types(wide, kind):
    out = wide["root"] / f"m.{kind}.gguf"
    done = llama_quantize(wide["f32"], out, kind, imatrix=wide["imatrix"])
    tensors = file_tensors(out)
    matrices = {name: t for name, (t, shape) in tensors.items() if len(shape) == 2}
    assert set(matrices.values()) <= PRESET_TYPES[kind], matrices
    assert list(matrices.values()).count(MAIN_TYPE[kind]) >= len(matrices) // 2  # the preset's own type dominates
    assert done["types"] == {t: list(matrices.values()).count(t) for t in set(matrices.values())}
    assert all(t == "F32" for name, (t, shape) in tensors.items() if len(shape) == 1)  # norms stay f32
    ids = wide["ids"][0].tolist()
    ours = logits(out, ids)
    assert ours.shape == (len(ids), 512) and np.isfinite(ours).all()


@needs_llama_cpp
def test_q6_k_logits_stay_close_to_f32(wide):
    out = wide["root"] / "close.q6_k.gguf"
    llama_quantize(wide["f32"], out, "q6_k")
    ids = wide["ids"][1].tolist()
    ref, q6 = logits(wide["f32"], ids), logits(out, ids)
    assert np.abs(q6 - ref).max() <= Q6_TOL * np.abs(ref).max()
    assert (q6.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
    assert np.abs(q6 - ref).max() > 0  # it is quantized, not a copy


@needs_llama_cpp
def test_the_head_type_is_settable(wide):
    out = wide["root"] / "head.q8_0.gguf"
    llama_quantize(wide["f32"], out, "q8_0", head="q4_0")
    tensors = file_tensors(out)
    assert tensors["token_embd.weight"][0] == "Q4_0"  # tied: the output layer is the token embedding
    assert tensors["blk.0.ffn_down.weight"][0] == "Q8_0"
    # through write_gguf, as a precision name
    info = write_gguf(wide["model"], None, wide["root"] / "named.gguf", kind="q8_0_head_iq4_nl")
    assert file_tensors(info["path"])["token_embd.weight"][0] == "IQ4_NL" and info["type"] == "q8_0_head_iq4_nl"


def test_importance_matrix_names_are_the_files_tensors(wide):
    names = set(wide["imatrix"])
    matrices = {name for name, _ in matmul_modules(wide["model"])}
    assert names == matrices and "token_embd.weight" in names  # tied: llama.cpp multiplies by the embedding
    assert len(names) == 2 * 7 + 1
    for name, module in matmul_modules(wide["model"]):
        assert wide["imatrix"][name].shape == (module.in_features,)
        assert (wide["imatrix"][name] > 0).all()
    # q, k and v read the same normed stream: the same column means
    assert np.allclose(wide["imatrix"]["blk.0.attn_q.weight"], wide["imatrix"]["blk.0.attn_v.weight"])
    # the definition: mean of x^2 over every token, per input column (here for the FFN's down projection)
    box = {}

    def grab(module, args):
        box["x"] = args[0].reshape(-1, args[0].shape[-1]).double()

    hook = wide["model"].model.layers[1].mlp.down_proj.register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            wide["model"](input_ids=wide["ids"])
    finally:
        hook.remove()
    assert np.allclose(wide["imatrix"]["blk.1.ffn_down.weight"], (box["x"] ** 2).mean(0).numpy(), rtol=1e-5)


@needs_llama_cpp
def test_an_imatrix_name_that_matches_no_tensor_is_refused(wide):
    bad = dict(wide["imatrix"])
    bad["blk.7.ffn_down.weight"] = bad.pop("blk.1.ffn_down.weight")
    out = wide["root"] / "bad.q4_0.gguf"
    with pytest.raises(ValueError, match="'blk.7.ffn_down.weight' matches no tensor of the GGUF file") as e:
        llama_quantize(wide["f32"], out, "q4_0", imatrix=bad)
    assert "\n" not in str(e.value) and not out.exists()
    short = dict(wide["imatrix"], **{"blk.0.ffn_up.weight": np.ones(7, dtype=np.float32)})
    with pytest.raises(ValueError, match="'blk.0.ffn_up.weight' has \\(7,\\) values; the tensor .* needs one per input"):
        llama_quantize(wide["f32"], out, "q4_0", imatrix=short)


@needs_llama_cpp
def test_the_importance_matrix_lowers_q4_0_error_on_its_text(wide):
    """Weighted rounding: llama.cpp's q4_0 with the importance matrix is closer to f32 than plain rounding,
    on the blocks the matrix was computed on (it tunes the rounding to what the layers read)."""
    plain, weighted = wide["root"] / "plain.q4_0.gguf", wide["root"] / "weighted.q4_0.gguf"
    llama_quantize(wide["f32"], plain, "q4_0")
    llama_quantize(wide["f32"], weighted, "q4_0", imatrix=wide["imatrix"])
    errors = {}
    for name, path in (("plain", plain), ("weighted", weighted)):
        errors[name] = sum(float(np.square(logits(path, ids.tolist()) - logits(wide["f32"], ids.tolist())).mean())
                           for ids in wide["ids"][:3])
    assert errors["weighted"] < errors["plain"]


def test_refusals_before_any_work():
    with pytest.raises(ValueError, match="GGUF type 'q3_k' is not known; allowed: f32, f16, q8_0"):
        check_precision("q3_k", allowed_bodies=("f32", "f16", *QUANT_TYPES))
    with pytest.raises(ValueError, match="GGUF head type 'q2_k' .* is not known"):
        check_precision("q4_0_head_q2_k", allowed_bodies=tuple(QUANT_TYPES))
    with pytest.raises(ValueError, match="a head type goes with a quantized type"):
        check_precision("f16_head_q4_0", allowed_bodies=("f16", *QUANT_TYPES))
    for split in ("validation", "test"):
        with pytest.raises(ValueError, match=f"training text only; split='{split}' is not allowed"):
            check_split(split)
    from nas.cost.latency import LatencySettings

    with pytest.raises(ValueError, match="split='validation' is not allowed"):
        LatencySettings(imatrix="validation").validate()
