"""Decoder LMs (nas.models.decoder) on a tiny random Llama with grouped-query attention: keep-everything
is exact, parameter counts follow the spec in closed form, a removed key/value group takes its
query heads and nothing else with it, the KV cache of a pruned model agrees with a no-cache forward."""

from __future__ import annotations

import pytest
import torch

import tiny
from nas.cut.importance import naive_scores
from nas.cut.prune import count_parameters, prune_model
from nas.models.decoder import decoder_base_shape, decoder_params, select_heads
from nas.models.registry import base_shape
from nas.spec import BaseShape, SpecError, SubnetSpec

pytestmark = pytest.mark.usefixtures("one_thread")

V, D, H, KV, A, F, P, L = 99, 64, 4, 2, 16, 48, 128, 4  # vocab, hidden, query heads, kv heads, head dim, ffn, positions, layers


def tiny_llama(*, tied: bool = True, labels: int | None = None, seed: int = 0, layers: int = L):
    return tiny.llama(tied=tied, labels=labels, seed=seed, layers=layers)


def ids(batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, V, (batch, length), generator=torch.Generator().manual_seed(seed))


SHAPE = BaseShape(num_layers=L, num_heads=H, head_size=A, hidden_size=D, ffn_size=F, max_positions=P, num_kv_heads=KV, vocab_size=V)
FULL = SubnetSpec.full(SHAPE)
AXIS_SPECS = {
    "depth": SubnetSpec(layers=(0, 2, 3), heads=(4,) * 3, kv_heads=(2,) * 3, ffn=(F,) * 3, hidden=D, context=P),
    "query_heads": SubnetSpec(layers=(0, 1, 2, 3), heads=(2, 4, 2, 4), kv_heads=(2,) * 4, ffn=(F,) * 4, hidden=D,
                              context=P),
    "kv_groups": SubnetSpec(layers=(0, 1, 2, 3), heads=(2, 4, 2, 2), kv_heads=(1, 2, 1, 1), ffn=(F,) * 4, hidden=D,
                            context=P),
    "ffn": SubnetSpec(layers=(0, 1, 2, 3), heads=(4,) * 4, kv_heads=(2,) * 4, ffn=(F, 1, 20, 7), hidden=D, context=P),
    "hidden": SubnetSpec(layers=(0, 1, 2, 3), heads=(4,) * 4, kv_heads=(2,) * 4, ffn=(F,) * 4, hidden=40, context=P),
    "context": SubnetSpec(layers=(0, 1, 2, 3), heads=(4,) * 4, kv_heads=(2,) * 4, ffn=(F,) * 4, hidden=D, context=16),
    "all": SubnetSpec(layers=(1, 3), heads=(1, 2), kv_heads=(1, 2), ffn=(5, 30), hidden=24, context=16),
}


def test_base_shape_reads_groups():
    model = tiny_llama()
    assert decoder_base_shape(model.config) == SHAPE == base_shape(model.config)
    assert SHAPE.group_size == 2
    assert FULL.kv_heads == (2,) * L and FULL.describe() == "L4 H4/G2 F48 D64 C128"


@pytest.mark.parametrize("labels", [None, 3])
def test_keep_everything_is_exact(labels):
    base = tiny_llama(labels=labels)
    x = ids()
    for scores in (None, tiny.random_scores(SHAPE)):
        pruned = prune_model(base, FULL, scores)
        with torch.no_grad():
            torch.testing.assert_close(pruned(input_ids=x).logits, base(input_ids=x).logits, atol=1e-5, rtol=0)
        assert count_parameters(pruned) == count_parameters(base)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("axis", sorted(AXIS_SPECS))
def test_param_count_closed_form(axis, tied):
    spec = AXIS_SPECS[axis]
    base = tiny_llama(tied=tied)
    pruned = prune_model(base, spec, tiny.random_scores(SHAPE))
    assert count_parameters(pruned) == decoder_params(spec, vocab=V, head_size=A, tied=tied)
    assert count_parameters(base) == decoder_params(FULL, vocab=V, head_size=A, tied=tied)
    if tied:
        assert pruned.lm_head.weight is pruned.model.embed_tokens.weight
    # the config follows the weights; the pruned model runs and keeps its vocabulary
    assert pruned.config.num_hidden_layers == len(spec.layers) and pruned.config.hidden_size == spec.hidden
    assert pruned.config.max_position_embeddings == spec.context
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == list(range(len(spec.layers)))
    with torch.no_grad():
        assert pruned(input_ids=ids(length=10)).logits.shape == (2, 10, V)


def test_param_count_sequence_classification():
    spec = AXIS_SPECS["all"]
    pruned = prune_model(tiny_llama(labels=3), spec, tiny.random_scores(SHAPE))
    assert count_parameters(pruned) == decoder_params(spec, vocab=V, head_size=A, tied=False, labels=3)


def _zero_heads(model, layer: int, heads: list[int]):
    with torch.no_grad():
        for h in heads:
            model.model.layers[layer].self_attn.o_proj.weight[:, h * A:(h + 1) * A] = 0


def test_removing_a_kv_group_removes_its_query_heads_only():
    base = tiny_llama()
    x = ids()
    # layer 1 keeps group 1 only (scores favour it); the other layers keep everything
    scores = tiny.random_scores(SHAPE)
    scores.heads[1] = torch.tensor([0.1, 0.2, 5.0, 4.0])
    spec = SubnetSpec(layers=(0, 1, 2, 3), heads=(4, 2, 4, 4), kv_heads=(2, 1, 2, 2), ffn=(F,) * 4, hidden=D, context=P)
    pruned = prune_model(base, spec, scores)
    att, ref = pruned.model.layers[1].self_attn, base.model.layers[1].self_attn
    torch.testing.assert_close(att.k_proj.weight, ref.k_proj.weight[A:2 * A])  # kv head 1 kept
    torch.testing.assert_close(att.v_proj.weight, ref.v_proj.weight[A:2 * A])
    torch.testing.assert_close(att.q_proj.weight, ref.q_proj.weight[2 * A:4 * A])  # its query heads 2, 3
    assert att.num_key_value_groups == 2
    # same outputs as the base with query heads 0 and 1 of layer 1 silenced: nothing else changed
    zeroed = prune_model(base, FULL)
    _zero_heads(zeroed, 1, [0, 1])
    with torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=x).logits, zeroed(input_ids=x).logits, atol=1e-5, rtol=0)


def test_query_heads_per_group_keep_the_grouping():
    base = tiny_llama()
    x = ids()
    scores = tiny.random_scores(SHAPE)
    scores.heads[2] = torch.tensor([0.1, 0.9, 0.8, 0.2])  # keep head 1 of group 0, head 2 of group 1
    spec = SubnetSpec(layers=(0, 1, 2, 3), heads=(4, 4, 2, 4), kv_heads=(2,) * 4, ffn=(F,) * 4, hidden=D, context=P)
    pruned = prune_model(base, spec, scores)
    assert pruned.model.layers[2].self_attn.num_key_value_groups == 1
    zeroed = prune_model(base, FULL)
    _zero_heads(zeroed, 2, [0, 3])
    with torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=x).logits, zeroed(input_ids=x).logits, atol=1e-5, rtol=0)


def test_select_heads_orders_groups():
    kv, q = select_heads(torch.tensor([1.0, 2, 9, 8, 0, 0.5]), kv_heads=2, heads=2,
                         shape=BaseShape(num_layers=1, num_heads=6, head_size=4, hidden_size=8, ffn_size=4,
                                         max_positions=8, num_kv_heads=3))
    assert kv.tolist() == [0, 1] and q.tolist() == [1, 2]  # group 2 (0.5) dropped; the best head of each group
    kv, q = select_heads(None, kv_heads=1, heads=2, shape=SHAPE)
    assert kv.tolist() == [0] and q.tolist() == [0, 1]


def test_ffn_and_layer_removal_equal_zeroing():
    base = tiny_llama()
    x = ids()
    spec = SubnetSpec(layers=(0, 1, 3), heads=(4,) * 3, kv_heads=(2,) * 3, ffn=(F, 10, F), hidden=D, context=P)
    pruned = prune_model(base, spec, naive_scores(SHAPE))
    zeroed = prune_model(base, FULL)
    with torch.no_grad():
        zeroed.model.layers[1].mlp.down_proj.weight[:, 10:] = 0  # naive keeps the first 10 neurons
    zeroed.model.layers = torch.nn.ModuleList([zeroed.model.layers[i] for i in (0, 1, 3)])
    with torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=x).logits, zeroed(input_ids=x).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("axis", ["depth", "kv_groups", "all"])
def test_generate_with_kv_cache_matches_no_cache_forward(axis):
    pruned = prune_model(tiny_llama(), AXIS_SPECS[axis], tiny.random_scores(SHAPE))
    prompt = ids(batch=1, length=6)
    with torch.no_grad():
        out = pruned.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0,
                              output_logits=True, return_dict_in_generate=True)
        seq = prompt
        for step in range(8):  # no cache: the whole sequence each step
            logits = pruned(input_ids=seq, use_cache=False).logits[:, -1]
            torch.testing.assert_close(out.logits[step], logits, atol=1e-5, rtol=0)
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.sequences, seq)


def test_bad_group_specs_are_refused():
    with pytest.raises(SpecError, match=r"kv_heads\[0\]=3 is out of range; allowed 1..2"):
        SubnetSpec(layers=(0,), heads=(3,), kv_heads=(3,), ffn=(F,), hidden=D, context=P).validate(SHAPE)
    with pytest.raises(SpecError, match=r"heads\[0\]=3 with kv_heads\[0\]=2"):
        SubnetSpec(layers=(0,), heads=(3,), kv_heads=(2,), ffn=(F,), hidden=D, context=P).validate(SHAPE)
    with pytest.raises(SpecError, match="kv_heads=None needs one entry per kept layer"):
        SubnetSpec(layers=(0,), heads=(2,), ffn=(F,), hidden=D, context=P).validate(SHAPE)
    encoder = BaseShape(num_layers=1, num_heads=4, head_size=8, hidden_size=32, ffn_size=37, max_positions=64)
    with pytest.raises(SpecError, match="this base has none"):
        SubnetSpec(layers=(0,), heads=(2,), kv_heads=(1,), ffn=(37,), hidden=32, context=64).validate(encoder)


def test_spec_round_trip_keeps_groups_and_encoder_dicts_unchanged():
    spec = AXIS_SPECS["all"]
    assert SubnetSpec.from_json(spec.to_json()) == spec
    encoder = SubnetSpec(layers=(0,), heads=(2,), ffn=(3,), hidden=8, context=8)
    assert "kv_heads" not in encoder.to_dict() and SubnetSpec.from_dict(encoder.to_dict()) == encoder


def test_decoder_importance_scores():
    from nas.cut.importance import compute_scores

    model = tiny_llama()
    x = ids(batch=4, length=16)
    batches = [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x}]
    scores = compute_scores(model, batches)
    scores.check_fits(SHAPE)
    for name in ("layers", "heads", "ffn", "hidden"):
        values = getattr(scores, name)
        assert torch.isfinite(values).all() and (values >= 0).all() and values.sum() > 0, name
    # a head whose output projection is zero has no influence on the loss: Fisher exactly 0
    _zero_heads(model, 0, [3])
    assert compute_scores(model, batches).heads[0, 3] == 0


def test_spaces_sample_valid_grouped_specs():
    import optuna

    from nas.study.space import SearchSpace, available_spaces

    from nas.cut.vocab import VocabRanking

    smollm2 = BaseShape(num_layers=30, num_heads=9, head_size=64, hidden_size=576, ffn_size=1536,
                        max_positions=8192, num_kv_heads=3, vocab_size=V)
    ranking = VocabRanking(order=tuple(range(V)), counts=(0,) * 10 + (3,) * 60 + (0,) * (V - 70), forced=10)
    encoder = BaseShape(num_layers=6, num_heads=12, head_size=32, hidden_size=384, ffn_size=1536, max_positions=512)
    import yaml

    from nas.study.space import SPACES_DIR

    triple = SearchSpace.from_cfg(yaml.safe_load((SPACES_DIR / "triple.yaml").read_text()))
    choices = triple.resolve(smollm2, max_length=128).choices()
    assert choices["heads"] == [1, 2, 3] and choices["groups"] == [1, 2, 3]  # query heads per group, groups
    assert "groups" not in triple.resolve(encoder, max_length=128).choices()  # encoders: heads decide
    for name in available_spaces():
        space = SearchSpace.from_cfg(yaml.safe_load((SPACES_DIR / f"{name}.yaml").read_text()))
        for shape in (smollm2, SHAPE):
            resolved = space.resolve(shape, max_length=64, vocabulary=ranking)
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
            for i in range(10):
                spec = resolved.suggest(study.ask(), shape, tiny.random_scores(shape, seed=i))
                spec.validate(shape)
                assert spec.vocab is None or 10 <= spec.vocab <= 70  # the decoder space's coverage shares
                assert all(h % g == 0 and h // g <= shape.group_size for h, g in zip(spec.heads, spec.kv_heads))


# ---- export: HF folder in a fresh process, ONNX ----------------------------------------------------

RELOAD = r"""
import sys, json, torch
from transformers import AutoModelForCausalLM
folder, remote = sys.argv[1], sys.argv[2] == "1"
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote).eval()
ids = torch.tensor(json.loads(sys.argv[3]))
with torch.no_grad():
    logits = model(input_ids=ids).logits
    gen = model.generate(ids[:1], max_new_tokens=5, do_sample=False, pad_token_id=0)
print(json.dumps({"logits": logits.tolist(), "gen": gen.tolist(), "class": type(model).__name__}))
"""


@pytest.mark.parametrize("name", ["uniform", "per_layer"])
def test_hf_folder_reloads_in_a_fresh_process_and_onnx(name, tmp_path):
    import json
    import subprocess
    import sys

    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from nas.deploy.bundle import export_all

    spec = {"uniform": SubnetSpec.uniform(layers=(0, 2), heads=2, kv_heads=1, ffn=24, hidden=40, context=32),
            "per_layer": AXIS_SPECS["all"]}[name]
    pruned = prune_model(tiny_llama(), spec, tiny.random_scores(SHAPE))
    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(V - 3)}}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                  pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    export_all(pruned, tok, spec, tmp_path, metrics={"val_perplexity": 10.0}, source={"model": "tiny"}, onnx=True)
    remote = name == "per_layer"
    assert (tmp_path / "modeling_nas_llama.py").is_file() == remote
    assert "AutoModelForCausalLM" in (tmp_path / "README.md").read_text()
    x = ids(length=9)
    run = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path), "1" if remote else "0", json.dumps(x.tolist())],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        want = pruned(input_ids=x).logits
        gen = pruned.generate(x[:1], max_new_tokens=5, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(torch.tensor(got["logits"]), want, atol=1e-4, rtol=0)
    assert got["gen"] == gen.tolist()
    assert got["class"] == ("NasLlamaForCausalLM" if remote else "LlamaForCausalLM")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"input_ids": x.numpy(), "attention_mask": np.ones_like(x.numpy())})[0]
    np.testing.assert_allclose(onnx_logits, want.numpy(), atol=1e-4, rtol=0)
