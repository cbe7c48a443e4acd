"""GPTQ rounding onto llama.cpp's grids (nas.deploy.gptq): llama.cpp's quantizer keeps the values, and the
layer's output on its calibration inputs moves less than with block-by-block rounding."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

import tiny
from nas.deploy.gguf import gguf_tensors, write_gguf
from nas.deploy.gptq import GRIDS, gptq, round_matrices
from nas.deploy.imatrix import input_moments
from nas.deploy.llamacpp import llama_cpp_reason

pytestmark = pytest.mark.usefixtures("one_thread")
needs_llama_cpp = pytest.mark.skipif(llama_cpp_reason() is not None, reason=str(llama_cpp_reason()))


def plain_rounding(weight: torch.Tensor, grid) -> torch.Tensor:
    """Each 32-value block on its own, its largest value on the grid's end (llama.cpp's reference rounding)."""
    w = weight.reshape(weight.shape[0], -1, 32)
    top = w.gather(-1, w.abs().argmax(-1, keepdim=True))
    d = grid.scale(top)
    values = torch.tensor(grid.values, dtype=torch.float32)
    idx = ((w / d)[..., None] - values).abs().argmin(-1)  # the nearest grid value
    return (values[idx] * d).reshape(weight.shape)


@pytest.mark.parametrize("kind", list(GRIDS))
def test_gptq_lowers_the_output_error_on_its_inputs(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=g) @ torch.randn(64, 64, generator=g)  # correlated inputs
    w = torch.randn(48, 64, generator=g) * 0.05
    h = x.T @ x / len(x)
    grid = GRIDS[kind]
    rounded, plain = gptq(w, h, grid), plain_rounding(w, grid)
    err = {name: float(((x @ (q - w).T) ** 2).mean()) for name, q in (("gptq", rounded), ("plain", plain))}
    assert err["gptq"] < err["plain"], err
    # on the grid: every value is the block's scale times a grid value, the block's largest on the grid's end
    blocks = rounded.reshape(48, -1, 32)
    top = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
    ratio = blocks / grid.scale(top)
    assert torch.allclose(ratio, ratio.round(), atol=1e-3) or kind == "iq4_nl"
    on_grid = (ratio[..., None] - torch.tensor(grid.values, dtype=torch.float32)).abs().min(-1).values
    assert float(on_grid.max()) < 1e-3


def test_batched_gptq_equals_one_matrix_at_a_time():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 16, 64, generator=g)
    x = torch.randn(3, 200, 64, generator=g)
    h = x.transpose(1, 2) @ x / 200
    batched = gptq(w, h, GRIDS["q4_0"])
    for i in range(3):
        assert torch.allclose(batched[i], gptq(w[i], h[i], GRIDS["q4_0"]), atol=1e-6)


def test_round_matrices_reuses_a_rounding_only_for_the_same_weights_hessian_and_type(monkeypatch):
    """The base written at two head types, or with its vocabulary cut, holds the same body matrices under the same
    moments: their rounding is reused (keyed by content, not by object). Any change to a weight, the Hessian or the
    type rounds again; what a caller gets is its own copy."""
    import nas.deploy.gptq as gptq_module

    calls = []
    real = gptq_module.gptq
    monkeypatch.setattr(gptq_module, "gptq", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(gptq_module, "_ROUNDED", {})
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 64, generator=g)
    h = x.T @ x / 300
    w = torch.randn(24, 64, generator=g) * 0.05

    def run(weight, hessian, kind="q4_0"):
        return round_matrices({"a": weight.clone()}, {"a": hessian.clone()}, {"a": kind})["a"]

    first = run(w, h)
    assert len(calls) == 1
    first.zero_()  # the caller's copy: the remembered rounding is untouched
    again = run(w, h)
    assert len(calls) == 1 and torch.equal(again, gptq(w, h, GRIDS["q4_0"]))
    changed = w.clone()
    changed[3, 7] += 0.01
    assert not torch.equal(run(changed, h), again) and len(calls) == 2
    run(w, h * 1.5)
    run(w, h, "iq4_nl")
    assert len(calls) == 4


@needs_llama_cpp
@pytest.mark.parametrize("kind", ["q4_0", "iq4_nl", "q5_0"])
def test_llama_cpp_keeps_gptq_values_exactly(tmp_path, kind):
    """Written at f32 after GPTQ and quantized by llama.cpp (pure, the head at q8_0): the file's dequantized matrices
    are exactly the values GPTQ chose."""
    model = tiny.llama(vocab=256, hidden=128, ffn=256, layers=2, positions=64)
    ids = torch.randint(3, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    moments = input_moments(model, ids)
    path = tmp_path / f"m.{kind}.gguf"
    info = write_gguf(model, None, path, kind=kind, moments=moments, direct=False)
    assert info["rounding"] == "gptq" and info["writer"] == "llama.cpp's quantizer"
    expected = round_matrices(dict(gguf_tensors(model)), moments,
                              {n: kind for n, w in gguf_tensors(model) if w.dim() == 2 and n != "token_embd.weight"})
    reader = gguf.GGUFReader(str(path))
    checked = 0
    for t in reader.tensors:
        if t.name in expected:
            got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(expected[t.name].shape)
            assert t.tensor_type.name == kind.upper()
            assert np.array_equal(got, expected[t.name].numpy()), t.name
            checked += 1
    assert checked == 2 * 7


@needs_llama_cpp
@pytest.mark.parametrize("kind", ["q4_0", "iq4_nl", "q5_0", "iq4_nl_head_iq4_nl", "q4_0_head_q5_0"])
def test_blocks_written_directly_are_the_bytes_llama_cpp_writes(tmp_path, kind):
    """GPTQ's values encoded as llama.cpp's blocks (and the q8_0 head by its rounding) without the quantizer: every
    tensor's type, shape and bytes equal the quantizer's file of the same model, and llama.cpp computes the same
    logits from both (exactly: the same bytes)."""
    from nas.deploy.llamacpp import all_logits, load_gguf

    model = tiny.llama(vocab=256, hidden=128, ffn=256, layers=2, positions=64)
    ids = torch.randint(3, 256, (8, 32), generator=torch.Generator().manual_seed(1))
    moments = input_moments(model, ids)
    files = {}
    for direct in (True, False):
        files[direct] = tmp_path / f"{direct}.{kind}.gguf"
        info = write_gguf(model, None, files[direct], kind=kind, moments=moments, direct=direct)
        assert info["writer"] == ("blocks written directly" if direct else "llama.cpp's quantizer")
    ours, theirs = ({t.name: t for t in gguf.GGUFReader(str(files[d])).tensors} for d in (True, False))
    assert set(ours) == set(theirs)
    for name, t in theirs.items():
        assert (ours[name].tensor_type, list(ours[name].shape)) == (t.tensor_type, list(t.shape)), name
        assert np.array_equal(np.asarray(ours[name].data), np.asarray(t.data)), name
    head = kind.split("_head_")[1] if "_head_" in kind else "q8_0"
    assert ours["token_embd.weight"].tensor_type.name == head.upper()
    logits = []
    for direct in (True, False):
        llm = load_gguf(files[direct], n_ctx=64, logits_all=True)
        try:
            logits.append(all_logits(llm, ids[0].tolist()))
        finally:
            llm.close()
    assert np.array_equal(logits[0], logits[1])


def test_a_value_off_the_grid_is_not_encoded():
    """encode_rounded refuses what GPTQ did not produce: the file then goes to llama.cpp's quantizer."""
    from nas.deploy.gptq import encode_rounded

    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    rounded = plain_rounding(w, GRIDS["iq4_nl"])
    assert encode_rounded(rounded, "iq4_nl") is not None and encode_rounded(rounded, "iq4_nl").shape == (4, 2 * 18)
    rounded[1, 5] += 1e-3
    assert encode_rounded(rounded, "iq4_nl") is None
    with pytest.raises(ValueError, match="q8_0"):
        encode_rounded(rounded, "q8_0")
