"""Language modelling on plain text (nas.data.text, nas.quality.lm) and the search end to end on a tiny
random GQA Llama: splits by file / paragraph block, token blocks, perplexity, the distillation
loss, and a 2-trial search whose quality objective is validation perplexity."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

import tiny
from nas.config import compose
from nas.deploy.llamacpp import llama_cpp_reason
from nas.models.decoder import decoder_params
from nas.models.registry import base_shape
from nas.spec import SubnetSpec
from nas.study.lm_final import lm_quality, lm_speedup

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = [f"w{i}" for i in range(60)]
V = len(WORDS) + 3  # + <pad> <unk> </s>


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def write_docs(folder: Path, n: int = 10, seed: int = 0) -> None:
    """Documents of a tiny language: each word is mostly followed by the next one (learnable)."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n):
        paras = []
        for _ in range(6):
            start = int(torch.randint(0, len(WORDS), (1,), generator=g))
            paras.append(" ".join(WORDS[(start + k) % len(WORDS)] for k in range(40)))
        (folder / f"doc{d:02d}.txt").write_text("\n\n".join(paras) + "\n")


@pytest.fixture(scope="module")
def lm_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_lm")
    model_dir = root / "model"
    make_tokenizer().save_pretrained(model_dir)
    tiny.llama(vocab=V, layers=3, positions=64, bos=2, random_norms=False).save_pretrained(model_dir)
    write_docs(root / "texts")
    return {"root": root, "model": model_dir, "texts": root / "texts", "cache": root / "cache"}


def test_folder_splits_by_file_and_is_seeded(lm_env):
    from nas.data.text import load_text_task

    task = load_text_task({"kind": "text", "path": str(lm_env["texts"])})
    assert task.is_lm and task.num_labels == 0
    sizes = task.sizes()
    assert sizes == {"train": 8, "validation": 1, "test": 1}
    docs = [set(getattr(task, s)["text"]) for s in ("train", "validation", "test")]
    assert not (docs[0] & docs[1] or docs[0] & docs[2] or docs[1] & docs[2])  # no file in two splits
    again = load_text_task({"kind": "text", "path": str(lm_env["texts"])})
    assert again.validation["text"] == task.validation["text"] and again.fingerprint == task.fingerprint
    other = load_text_task({"kind": "text", "path": str(lm_env["texts"]), "seed": 1})
    assert other.fingerprint != task.fingerprint


def test_single_file_splits_by_paragraph_blocks(lm_env):
    from nas.data.text import load_text_task

    path = lm_env["texts"] / "doc00.txt"
    task = load_text_task({"kind": "text", "path": str(path), "block_chars": 100})
    assert sum(task.sizes().values()) == 6  # six paragraphs of ~220 characters: one block each
    whole = "\n\n".join(sorted(t for s in ("train", "validation", "test") for t in getattr(task, s)["text"]))
    assert sorted(whole.split("\n\n")) == sorted(path.read_text().strip().split("\n\n"))


def test_text_settings_are_checked(lm_env, tmp_path):
    from nas.data.text import load_text_task

    with pytest.raises(ValueError, match="data.path='/nope' does not exist"):
        load_text_task({"kind": "text", "path": "/nope"})
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(ValueError, match="is not a .txt file"):
        load_text_task({"kind": "text", "path": str(tmp_path / "a.csv")})
    with pytest.raises(ValueError, match="data.unit='words' is not known; allowed: auto, file, paragraph"):
        load_text_task({"kind": "text", "path": str(lm_env["texts"]), "unit": "words"})
    (tmp_path / "one.txt").write_text("just one paragraph")
    with pytest.raises(ValueError, match="gives 1 paragraph unit"):
        load_text_task({"kind": "text", "path": str(tmp_path / "one.txt")})


def test_blocks_join_documents_with_eos(lm_env):
    from nas.data.text import lm_blocks, load_text_task

    task = load_text_task({"kind": "text", "path": str(lm_env["texts"]), "max_eval_tokens": 64})
    tok = make_tokenizer()
    blocks = lm_blocks(task, "train", tok, block=16)
    stream = []
    for text in task.train["text"]:
        stream += tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n = len(stream) // 16
    assert blocks["input_ids"].shape == (n, 16)
    assert blocks["input_ids"].flatten().tolist() == stream[: n * 16]
    assert lm_blocks(task, "validation", tok, block=16)["input_ids"].shape[0] == 4  # 64 tokens' worth


def test_perplexity_and_distillation_loss(lm_env):
    from transformers import AutoModelForCausalLM

    from nas.data.text import lm_blocks, lm_loader, load_text_task
    from nas.quality.lm import lm_loss
    from nas.quality.metrics import perplexity

    model = AutoModelForCausalLM.from_pretrained(lm_env["model"]).eval()
    task = load_text_task({"kind": "text", "path": str(lm_env["texts"])})
    blocks = lm_blocks(task, "validation", make_tokenizer(), block=32)
    ppl = perplexity(model, lm_loader(blocks, batch_size=4, shuffle=False))
    with torch.no_grad():  # HF's own loss: the mean next-token NLL over the same tokens
        out = model(input_ids=blocks["input_ids"], labels=blocks["labels"])
    assert ppl == pytest.approx(math.exp(float(out.loss)), rel=1e-4)
    batch = {k: v[:4] for k, v in blocks.items()}
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
        ce = lm_loss(logits, batch, teacher=None, distill_weight=0.0, temperature=2.0)
        kd_self = lm_loss(logits, batch, teacher=model, distill_weight=1.0, temperature=2.0)
    assert float(kd_self) == pytest.approx(0.0, abs=1e-5)  # the unpruned model against itself
    assert float(ce) > 0


def test_top_k_distillation_equals_full_kl_at_full_k_and_runs_the_teacher_once_per_block(lm_env):
    from transformers import AutoModelForCausalLM

    from nas.data.text import lm_blocks, load_text_task
    from nas.quality.lm import lm_loss, teacher_topk_logits

    teacher = AutoModelForCausalLM.from_pretrained(lm_env["model"]).eval()
    student = tiny.llama(vocab=V, layers=1, positions=64, bos=2, random_norms=False, seed=3)
    task = load_text_task({"kind": "text", "path": str(lm_env["texts"])})
    batch = {k: v[:4] for k, v in lm_blocks(task, "train", make_tokenizer(), block=32).items()}
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    cache: dict = {}
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"]).logits
        full = lm_loss(logits, batch, teacher=teacher, distill_weight=1.0, temperature=2.0)
        calls.clear()
        every = teacher_topk_logits(teacher, batch, V, cache, temperature=2.0)  # k = the vocabulary: the full KL
        assert float(lm_loss(logits, batch, teacher=None, distill_weight=1.0, temperature=2.0,
                             teacher_topk=every)) == pytest.approx(float(full), rel=1e-5)
        top8 = teacher_topk_logits(teacher, batch, 8, cache, temperature=2.0)
        assert top8[0].shape == (4, 32, 8) and len(calls) == 2  # one forward per k, over the 4 blocks
        again = teacher_topk_logits(teacher, batch, 8, cache, temperature=2.0)
        assert len(calls) == 2 and torch.equal(again[0], top8[0])  # cached: the teacher does not run again
        kd8 = lm_loss(logits, batch, teacher=None, distill_weight=1.0, temperature=2.0, teacher_topk=top8)
    # k + 1 outcomes (the top 8 and "the rest"): a lower bound of the full KL, not a copy of it
    assert 0 < float(kd8) <= float(full) + 1e-6 and float(kd8) != pytest.approx(float(full), rel=1e-3)


def lm_cfg(env, *overrides: str):
    from omegaconf import OmegaConf, open_dict

    cfg = compose([
        "model=hf", f"model.name_or_path={env['model']}", "data=text", f"data.path={env['texts']}", "+space=triple",
        "search.n_trials=2", "train.max_steps=3", "train.batch_size=4", "train.eval_batch_size=8",
        f"cache_dir={env['cache']}", "max_length=32", "latency.warmup=1", "latency.sample_size=2",
        "importance.max_batches=2", "importance.batch_size=4", *overrides,
    ])
    with open_dict(cfg):
        cfg.space = OmegaConf.create({"name": "tiny", "axes": {
            "layers": {"low": 1, "high": 3}, "heads": {"low": 1, "high": 2}, "groups": {"low": 1, "high": 2},
            "ffn": {"choices": [16, 48]}, "hidden": {"choices": [32, 64]}, "context": {"choices": [16, 32]}}})
    return cfg


def test_search_end_to_end_on_perplexity(lm_env):
    import pandas as pd
    from transformers import AutoModelForCausalLM

    from nas.cut.prune import count_parameters
    from nas.study.search import run_search

    t0 = time.perf_counter()
    run_dir = lm_env["root"] / "run"
    study, search = run_search(lm_cfg(lm_env, "final.max_steps=3", "search.final_k=1"), run_dir)
    seconds = time.perf_counter() - t0
    assert search.settings.objectives == ("perplexity", "latency")  # the default [accuracy, ...] became perplexity
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    done = [t for t in study.trials if t.state.name == "COMPLETE" and "repeat_of" not in t.user_attrs]
    assert len(done) == 2
    base = AutoModelForCausalLM.from_pretrained(lm_env["model"])
    for t in done:  # the quality: perplexity per byte of the validation text (and per token of the base's tokenizer)
        assert t.values[0] == t.user_attrs["val_byte_perplexity"] > 1 and t.user_attrs["val_perplexity"] > 1
        spec = SubnetSpec.from_dict(t.user_attrs["spec"])
        text = search.prep.chunks("validation", spec.context)  # one total NLL over the same text, two denominators
        assert math.log(t.user_attrs["val_byte_perplexity"]) * text.bytes == pytest.approx(
            math.log(t.user_attrs["val_perplexity"]) * text.base_tokens, rel=1e-9)
        assert spec.kv_heads is not None
        # closed form, plus the biases closed-form healing gave each kept layer's o_proj / down_proj (hidden each)
        extra = t.user_attrs["params"] - decoder_params(spec, vocab=V, head_size=16, tied=True)
        assert extra % spec.hidden == 0 and 0 <= extra // spec.hidden <= 2 * len(spec.layers)
        assert t.user_attrs["heal_error_ratio"] < 1 or spec.is_full(search.prep.shape)
    assert count_parameters(base) == search.base_metrics["params"]
    assert search.base_metrics["val_byte_perplexity"] > 1 and search.base_metrics["test_byte_perplexity"] > 1
    front = pd.read_csv(run_dir / "pareto.csv")
    members = front[~front["is_base"].astype(bool)]
    assert members["test_byte_perplexity"].notna().all() and (run_dir / "best.yaml").is_file()
    # the final stage trains the front's fastest member within 4x the base's perplexity (else the lowest) on
    (number, result), = study.user_attrs["final"].items()
    base_ppl = search.base_metrics["val_byte_perplexity"]
    close = members[members["val_byte_perplexity"] <= 4 * base_ppl].sort_values("latency_ratio")
    expected = close if len(close) else members.sort_values("val_byte_perplexity")
    assert int(number) == int(expected.iloc[0]["number"])
    assert result["steps"] == 3 and result["val_byte_perplexity"] > 1 and result["test_byte_perplexity"] > 1
    # the winner: the fastest file within final.ppl_band of the base per byte, a member or the base alone
    band = (1 + search.final.ppl_band) * search.base_metrics.get("val_byte_perplexity_deployed", base_ppl)
    winner = study.user_attrs["final_winner"]
    candidates = {int(number): result, **{f"base {k}": r for k, r in study.user_attrs["quantization_alone"].items()}}
    within = {k: r for k, r in candidates.items() if lm_quality(r) <= band + 1e-12}
    if within:
        assert lm_speedup(candidates[winner]) == max(lm_speedup(r) for r in within.values())
    if llama_cpp_reason() is None:  # measured as deployed: its q8_0 GGUF in llama.cpp, beside the base's
        assert result["variant"] == "llamacpp_q8_0" and result["speedup_over_quantized_base"] > 0
        assert result["val_byte_perplexity_deployed"] == pytest.approx(result["val_byte_perplexity"], rel=0.05)
        assert search.base_metrics["val_byte_perplexity_deployed"] == pytest.approx(base_ppl, rel=0.05)
    assert (run_dir / "models" / f"final_{number}.safetensors").is_file()
    row = members[members["number"] == int(number)].iloc[0]
    assert row["final_val_perplexity"] == pytest.approx(result["val_perplexity"])
    assert row["final_test_perplexity"] == pytest.approx(result["test_perplexity"])
    import yaml

    best = yaml.safe_load((run_dir / "best.yaml").read_text())
    assert best["trial"] == int(number) and best["weights"] == f"models/final_{number}.safetensors"
    assert best["metrics"]["final_val_perplexity"] == pytest.approx(result["val_perplexity"])
    assert seconds < 120


def test_lm_task_refusals(lm_env):
    from nas.study.search import Search, run_search

    with pytest.raises(ValueError, match="'perplexity', a language-modelling objective; this task is classification"):
        Search(compose(["+space=triple", "search.objectives=[perplexity,latency]"]), lm_env["root"] / "r1")
    cfg = lm_cfg(lm_env)
    cfg.model.name_or_path = None  # the embedded MiniLM: an encoder
    with pytest.raises(ValueError, match="needs a decoder LM; model_type='bert'"):
        run_search(cfg, lm_env["root"] / "r2")


def test_generation_latency_is_paired_and_refuses_what_it_cannot_time(lm_env):
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from nas.cost.latency import LatencySettings, PairedTimer
    from nas.cut.prune import prune_model
    from nas.data.text import load_text_task

    base = AutoModelForCausalLM.from_pretrained(lm_env["model"]).eval()
    task = load_text_task({"kind": "text", "path": str(lm_env["texts"])})
    shape = base_shape(base.config)
    prep = SimpleNamespace(base=base, task=task, tokenizer=make_tokenizer(), shape=shape)
    settings = LatencySettings(sample_size=2, warmup=1, new_tokens=4)
    timer = PairedTimer.for_prepared(prep, settings, max_length=32)
    assert timer.settings.generation == "decode"  # auto on a language-modelling task
    assert "decode of 4 tokens with the KV cache" in timer.settings.describe()
    assert timer.settings.unit == "ms per token"  # what the printed base latency is per, not "per input"
    assert LatencySettings(generation="generate", new_tokens=4).unit == "ms per prompt + 4 tokens"
    assert LatencySettings().unit == "ms per input"
    assert timer.caps(32) == (28, 28)  # the prompt leaves room for the generated tokens
    small = prune_model(base, SubnetSpec(layers=(0,), heads=(2,), kv_heads=(1,), ffn=(16,), hidden=32, context=32))
    m = timer.measure(small, context=32)
    assert m["speedup"] > 0 and m["latency_ms"] > 0 and len(timer.base_rounds) == settings.rounds
    with pytest.raises(ValueError, match="latency.generation=decode needs a language-modelling task"):
        PairedTimer.for_prepared(SimpleNamespace(**{**vars(prep), "task": SimpleNamespace()}),
                                 LatencySettings(generation="decode"), max_length=32)
    with pytest.raises(ValueError, match="set latency.runtime=llamacpp, torch"):
        PairedTimer.for_prepared(prep, LatencySettings(generation="generate", runtime="onnxruntime"), max_length=32)
    with pytest.raises(ValueError, match="latency.generation='beam' is not known; allowed: auto, prefill, decode"):
        LatencySettings(generation="beam").validate()


def test_final_training_of_an_lm_shape(lm_env, tmp_path):
    """`nas.train +arch=...` on a language-modelling shape: fine-tuned, perplexity, exported folder that loads."""
    import yaml
    from omegaconf import OmegaConf
    from rich.console import Console
    from transformers import AutoModelForCausalLM

    from nas.train import run_final

    cfg = lm_cfg(lm_env, "final.max_steps=2", "final.onnx=false")
    spec = SubnetSpec.uniform(layers=(0, 2), heads=2, kv_heads=1, ffn=16, hidden=32, context=32)
    arch = tmp_path / "config.yaml"
    arch.write_text(yaml.safe_dump({"arch": spec.to_dict(), "config": OmegaConf.to_container(cfg, resolve=True)}))
    out = tmp_path / "model"
    metrics = run_final(cfg, arch, out, overrides=[], console=Console(quiet=True))
    assert metrics["val_perplexity"] > 1 and metrics["test_perplexity"] > 1 and metrics["base_val_perplexity"] > 1
    assert "speedup_torch" in metrics and "onnxruntime" not in str(metrics.get("latency_definition"))
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.num_hidden_layers == 2 and model.config.num_key_value_heads == 1


def test_smollm2_budget_applies_and_the_command_line_wins():
    """model=smollm2 brings conf/budget/smollm2.yaml (short fine-tunes, a final stage that measures its members untrained and a 60-step base fine-tune sized
    for a 135M model on 2 cores); any key on the command line overrides it; other models keep theirs."""
    cfg = compose(["model=smollm2", "data=shakespeare"])
    assert (cfg.train.batch_size, cfg.final.max_steps, cfg.final.time_budget, cfg.search.n_trials) == (4, 0, 60, 5)
    assert (cfg.base.max_steps, cfg.base.batch_size, cfg.base.eval_every) == (60, 4, 20)  # the fine-tuned LM base
    assert compose(["model=smollm2", "final.max_steps=7", "train.max_steps=3"]).final.max_steps == 7
    plain = compose([])
    assert plain.final.max_steps is None and plain.train.max_steps != 10  # a classifier's final stage: epochs


@pytest.mark.skipif(llama_cpp_reason() is not None, reason=str(llama_cpp_reason()))
def test_llamacpp_runtime_times_gguf_decode_paired_with_the_base_and_names_three_baselines(lm_env):
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from nas.cost.latency import LatencySettings, PairedTimer
    from nas.cut.prune import prune_model
    from nas.data.text import load_text_task

    base = AutoModelForCausalLM.from_pretrained(lm_env["model"]).eval()
    task = load_text_task({"kind": "text", "path": str(lm_env["texts"])})
    prep = SimpleNamespace(base=base, task=task, tokenizer=make_tokenizer(), shape=base_shape(base.config))
    settings = LatencySettings(sample_size=2, warmup=1, new_tokens=4, runtime="auto", precision="auto").resolved(lm=True)
    assert (settings.runtime, settings.precision) == ("llamacpp", "q8_0")  # what an LM is deployed in
    assert "llamacpp GGUF q8_0" in settings.describe()
    timer = PairedTimer.for_prepared(prep, settings, max_length=32)
    try:
        small = prune_model(base, SubnetSpec(layers=(0,), heads=(2,), kv_heads=(1,), ffn=(16,), hidden=32, context=32))
        m = timer.measure(small, context=32)
        assert m["speedup"] > 0 and len(timer.base_rounds) == settings.rounds
        assert timer.gguf_path("base").is_file() and timer.gguf_path("candidate").is_file()
        out = timer.measure_baselines(small, context=32)
        assert out["variant"] == "llamacpp_q8_0"
        for baseline in ("torch_fp32_base", "runtime_fp32_base", "quantized_base"):
            assert out[f"speedup_over_{baseline}"] > 0
        assert timer.gguf_path("base", "fp32").is_file()  # the base in llama.cpp at f32 was timed too
    finally:
        timer.close()
    with pytest.raises(ValueError, match="latency.precision=int8 has no GGUF type; llama.cpp runs: fp32, f16, q8_0"):
        LatencySettings(runtime="llamacpp", precision="int8").validate()
    with pytest.raises(ValueError, match="latency.precision=q8_0 is a GGUF type: it needs latency.runtime=llamacpp"):
        LatencySettings(runtime="onnxruntime", precision="q8_0").validate()
    with pytest.raises(ValueError, match="latency.runtime=llamacpp runs causal language models"):
        LatencySettings(runtime="llamacpp", precision="q8_0").resolved(lm=False)


@pytest.mark.skipif(llama_cpp_reason() is not None, reason=str(llama_cpp_reason()))
def test_gguf_precision_axis_quantization_alone_and_a_final_stage_on_the_clock(lm_env):
    """A language model's space with a GGUF precision axis: each trial is written at the type it draws and scored by
    llama.cpp on that file; the base at every offered type is measured beside the front (quantization alone); the
    final stage stops on final.time_budget and keeps its best checkpoint."""
    import pandas as pd
    from omegaconf import open_dict

    from nas.study.search import run_search

    cfg = lm_cfg(lm_env, "search.final_k=1", "final.max_steps=500", "final.time_budget=2", "final.ppl_slack=100")
    with open_dict(cfg):
        cfg.space.precision = ["q8_0", "q4_0"]
    run_dir = lm_env["root"] / "run_precision"
    study, search = run_search(cfg, run_dir)
    done = [t for t in study.trials if t.state.name == "COMPLETE" and "repeat_of" not in t.user_attrs]
    assert done and all(t.user_attrs["precision"] in ("q8_0", "q4_0") for t in done)
    assert all(t.user_attrs["val_perplexity"] > 1 and t.user_attrs["speedup"] > 0 for t in done)
    alone = study.user_attrs["quantization_alone"]
    assert set(alone) == {"q8_0", "q4_0"} and alone["q8_0"]["speedup"] == 1.0
    assert alone["q4_0"]["val_perplexity"] > 1 and alone["q4_0"]["test_perplexity"] > 1 and alone["q4_0"]["speedup"] > 0
    assert search.base_metrics["val_perplexity"] == pytest.approx(alone["q8_0"]["val_perplexity"])  # both in llama.cpp
    front = pd.read_csv(run_dir / "pareto.csv")
    row = front[front["state"] == "QUANT_ALONE"].iloc[0]
    assert row["precision"] == "q4_0" and row["val_perplexity"] == pytest.approx(alone["q4_0"]["val_perplexity"])
    (number, result), = study.user_attrs["final"].items()
    assert result["stopped"] == "time budget" and result["steps"] < 500  # the clock, not the planned length
    assert result["precision"] == study.trials[int(number)].user_attrs["precision"]
    assert result["val_perplexity"] <= study.trials[int(number)].user_attrs["val_perplexity"] * 1.5


@pytest.mark.skipif(llama_cpp_reason() is not None, reason=str(llama_cpp_reason()))
def test_a_final_stage_of_zero_steps_measures_its_members_untrained(lm_env):
    """final.max_steps=0 (the SmolLM2 budget's: training after healing does not pay there): the member is its healed
    trial as it is, measured as deployed; its file scores what the trial's scored, and the trial's paired rounds
    against the reference base (q8_0) stand for the same file: only the base quantized alike is timed again."""
    from omegaconf import open_dict

    from nas.study.search import run_search

    cfg = lm_cfg(lm_env, "search.final_k=1", "final.max_steps=0", "final.ppl_slack=100")
    with open_dict(cfg):
        cfg.space.precision = ["q4_0"]
    study, _ = run_search(cfg, lm_env["root"] / "run_zero")
    (number, result), = study.user_attrs["final"].items()
    assert result["steps"] == 0 and result["stopped"] == "final.max_steps=0"
    trial = study.trials[int(number)].user_attrs
    assert result["precision"] == trial["precision"] == "q4_0"
    assert result["val_perplexity_deployed"] == pytest.approx(trial["val_perplexity"], rel=0.02)
    # its file is the trial's (linked, not written again): the same bytes score the same
    assert result["file_from_trial"] is True
    for split in ("val", "test"):  # the trial's scores of that file are the member's as deployed
        for score in ("byte_perplexity", "perplexity", "bits_per_byte", "tokens"):
            assert result[f"{split}_{score}_deployed"] == trial[f"{split}_{score}"]
    assert result["speedup_over_reference_base"] == trial["speedup"]  # the trial's own paired rounds
    assert result["speedup_over_quantized_base"] > 0  # timed here, against the base at q4_0
    # untrained, a member outside final.ppl_band cannot win: the member is the fastest front trial within the band
    # of the base's perplexity the stage read (ppl_slack=100 notwithstanding), else the lowest perplexity
    how = study.user_attrs["final_members"]
    assert how["slack"] == 0.10 and how["chosen"] == [int(number)]
    front = [t for t in study.best_trials if "repeat_of" not in t.user_attrs]
    within = [t for t in front if t.user_attrs["val_byte_perplexity"] <= how["base_ppl"] * 1.1]
    # cost: the latency objective (latency / the base's, timed in pairs), not the trial's absolute milliseconds
    expected = (min(within, key=lambda t: (t.user_attrs["latency_ratio"], t.user_attrs["val_byte_perplexity"]))
                if within else
                min(front, key=lambda t: (t.user_attrs["val_byte_perplexity"], t.user_attrs["latency_ratio"])))
    assert int(number) == expected.number, [(t.number, t.user_attrs["val_byte_perplexity"],
                                             t.user_attrs["latency_ratio"]) for t in front]


def test_the_loss_on_a_share_of_the_positions_is_the_loss_of_those_positions():
    """lm_train_loss with every position equals lm_loss; with a share, it equals lm_loss taken on the drawn
    positions of the full logits (the head computed on those rows alone); auto keeps the head's cost under the
    layers': 1 where the layers hold more weights than the head, less for a big vocabulary on a small model."""
    from nas.quality.lm import lm_loss, lm_train_loss, positions_fraction

    model = tiny.llama(vocab=V, layers=2, positions=64).train(False)
    ids = torch.randint(3, V, (3, 20), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    teacher = tiny.llama(vocab=V, layers=2, positions=64, seed=1).eval()
    with torch.no_grad():
        full = lm_loss(model(input_ids=ids).logits, batch, teacher=teacher, distill_weight=0.5, temperature=2.0)
        assert torch.allclose(lm_train_loss(model, batch, fraction=1.0, teacher=teacher, distill_weight=0.5,
                                            temperature=2.0), full)
        g = torch.Generator().manual_seed(3)
        part = lm_train_loss(model, batch, fraction=0.3, generator=g, teacher=teacher, distill_weight=0.5,
                             temperature=2.0)
        keep = torch.rand((3, 19), generator=torch.Generator().manual_seed(3)) < 0.3  # the same draw
        logits = model(input_ids=ids).logits[:, :-1][keep]
        assert torch.allclose(part, lm_loss(logits, batch, teacher=teacher, distill_weight=0.5, temperature=2.0,
                                            keep=keep), atol=1e-6)
    assert positions_fraction(model, "auto") == 1.0 and positions_fraction(model, 0.25) == 0.25
    wide = tiny.llama(vocab=30522, hidden=64, ffn=48, layers=2, positions=64)
    assert 1 / 16 <= positions_fraction(wide, "auto") < 0.1  # 30,522 x 64 in the head, ~60k in the layers
