"""Decoder LMs in the runtime their users run (issue 24): SmolLM2-135M on the embedded plays, every model
written as GGUF and measured in llama.cpp, beside the fine-tuned base written the same way.

    NAS_CACHE_DIR=... .venv/bin/python experiments/decoder_lm/llamacpp_bench.py --run RUN_DIR

RUN_DIR is the README's decoder command's run folder (`+space=decoder model=smollm2 data=shakespeare`):
its final-stage winner is "the searched model". Beside it, with the same cut-and-train recipe (the trial's
train.max_steps, then the final stage's final.max_steps, the same top-k distillation from the fine-tuned
base):

- ShortGPT: the lowest block-influence layers removed, nothing else, at the winner's parameter count;
- a uniform FFN cut at the winner's parameter count;
- the base quantized alone: Q8_0 and Q4_0 (what llama.cpp users do instead of pruning).

Also measured: what more final steps buy (the winner trained on, validation every --eval-every steps) and
top-k KL against full-vocabulary KL (the same shape, --kl-steps steps each: validation perplexity and
seconds per step).

Every model's figures: test perplexity in torch fp32 and in llama.cpp at Q8_0 (128-token blocks of the 4
test plays), and decode tokens per second in llama.cpp at Q8_0 (16 greedy tokens after each of 8 real
validation prompts of 112 tokens, batch 1), timed in 5 rounds alternating with the Q8_0 base in one
process, at 1 and at 2 threads; the speedup is the median of the per-round ratios. Writes
results_llamacpp.json and results_llamacpp.md beside this file.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from nas.config import compose  # noqa: E402
from nas.cut.prune import count_parameters, prune_model  # noqa: E402
from nas.cut.recovery import RecoverySettings  # noqa: E402
from nas.deploy.gguf import write_gguf  # noqa: E402
from nas.deploy.llamacpp import file_perplexity, load_gguf, paired_speedup  # noqa: E402
from nas.models.decoder import decoder_params  # noqa: E402
from nas.quality.finetune import TrainSettings  # noqa: E402
from nas.spec import SubnetSpec  # noqa: E402
from nas.study.prepare import prepare  # noqa: E402
from nas.study.runs import load_run, rebuild_trial_model  # noqa: E402
from nas.study.settings import final_train_settings  # noqa: E402
from nas.study.trial import Evaluator  # noqa: E402


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True, help="the README decoder command's run folder")
    parser.add_argument("--extra-steps", type=int, default=200, help="final steps added to the winner (0: none)")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--kl-steps", type=int, default=30, help="steps of the top-k vs full KL comparison (0: none)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--members", type=lambda t: [int(x) for x in t.split(",") if x], default=[],
                        help="other front trials to train with the final recipe, e.g. 1,3")
    parser.add_argument("--out", default=str(HERE / "results_llamacpp"))
    args = parser.parse_args()

    run_dir = Path(args.run).resolve()
    run_cfg, study = load_run(run_dir)
    cfg = compose(["model=smollm2", "data=shakespeare", "+space=decoder"])
    container = OmegaConf.to_container(cfg, resolve=True)
    prep = prepare(cfg)
    shape, vocab = prep.shape, int(prep.base.config.vocab_size)
    trial_s = TrainSettings.from_cfg(container["train"])
    final_s = final_train_settings(container)
    ev = Evaluator(prep=prep, timer=None, train=trial_s, recovery=RecoverySettings.from_cfg({"recovery": "none"}),
                   lm=True)
    results: dict = {"base": dict(prep.base_info), "settings": {
        "trial_steps": trial_s.max_steps, "final_steps": final_s.max_steps, "batch": trial_s.batch_size,
        "block": int(cfg.max_length), "distill_topk": trial_s.distill_topk, "final_lr": final_s.lr}}
    results["base"].pop("curve", None)

    def test_ppl(model, spec) -> float:
        return ev.quality_of(model, spec, "test")[1]

    def val_ppl(model, spec) -> float:
        return ev.quality_of(model, spec, "validation")[1]

    # ---- the searched models: the README run's final-stage winner, and other front members (--members)
    # trained from their trial weights with the final stage's own recipe, as a larger search.final_k would
    number = int(study.user_attrs["final_winner"])
    models = {}

    def searched_model(n: int, label: str):
        trial = study.trials[n]
        s = SubnetSpec.from_dict(trial.user_attrs["spec"])
        model = rebuild_trial_model(run_cfg, run_dir, n, s, 0, None).eval()
        info = {"trial": n, "shape": trial.user_attrs["shape"], "trial_val_ppl": trial.user_attrs["val_perplexity"],
                "trial_speedup": trial.user_attrs["speedup"]}
        if str(n) in (study.user_attrs.get("final") or {}):
            info.update(minutes=study.user_attrs["final"][str(n)]["seconds"] / 60,
                        val_ppl=study.user_attrs["final"][str(n)]["val_perplexity"])
        else:
            t0 = time.perf_counter()
            ev.fit(model, s, final_s, progress=f"{label} final steps")
            info.update(minutes=(time.perf_counter() - t0) / 60, val_ppl=val_ppl(model, s))
        say(f"{label}: trial {n} {s.describe()}: val ppl {info['val_ppl']:.2f} ({info['minutes']:.1f} min)")
        models[label] = (model.eval(), s, info)
        return model, s

    searched_model(number, "searched (winner)")
    for n in args.members:
        searched_model(n, f"searched (trial {n})")
    fastest = number  # the baselines match the winner's parameter count; extra steps go to the winner
    spec = SubnetSpec.from_dict(study.trials[fastest].user_attrs["spec"])
    target = decoder_params(spec, vocab=vocab, head_size=shape.head_size, tied=True)
    say(f"baselines at the parameter count of trial {fastest} ({spec.describe()}, {target / 1e6:.1f}M)")

    # ---- baselines at that parameter count, cut from the fine-tuned base and trained like a trial + final member
    full = SubnetSpec.full(shape)

    def depth(n: int) -> SubnetSpec:
        return SubnetSpec(**{**full.__dict__, "layers": prep.scores.top_layers(n), "heads": (shape.num_heads,) * n,
                             "kv_heads": (shape.num_kv_heads,) * n, "ffn": (shape.ffn_size,) * n})

    n = min(range(1, shape.num_layers + 1), key=lambda n: abs(decoder_params(
        depth(n), vocab=vocab, head_size=shape.head_size, tied=True) - target))
    shortgpt = depth(n)
    ffn = min(range(32, shape.ffn_size + 1, 32), key=lambda f: abs(decoder_params(
        SubnetSpec(**{**full.__dict__, "ffn": (f,) * shape.num_layers}), vocab=vocab, head_size=shape.head_size,
        tied=True) - target))
    uniform_ffn = SubnetSpec(**{**full.__dict__, "ffn": (ffn,) * shape.num_layers})
    for name, s in (("ShortGPT", shortgpt), ("uniform FFN", uniform_ffn)):
        t0 = time.perf_counter()
        model = prune_model(prep.base, s, prep.scores)
        pruned = val_ppl(model, s)
        ev.fit(model, s, trial_s, progress=f"{name} trial steps")
        ev.fit(model, s, final_s, progress=f"{name} final steps")
        minutes = (time.perf_counter() - t0) / 60
        v = val_ppl(model, s)
        say(f"{name}: {s.describe()}, {count_parameters(model) / 1e6:.1f}M, val ppl pruned {pruned:.1f} -> {v:.2f} "
            f"({minutes:.1f} min)")
        models[name] = (model.eval(), s, {"shape": s.describe(), "minutes": minutes, "val_ppl_pruned": pruned,
                                          "val_ppl": v})

    # ---- top-k vs full-vocabulary KL, from the same cut
    if args.kl_steps:
        kl = {}
        # top-64 first computes the base's top-k logits of every block it meets; run again, it finds them
        # cached (as every trial after the first does in a search); full KL runs the base at every step
        for label, k in (("top-64, first pass", trial_s.distill_topk or 64), ("full vocabulary", 0),
                         ("top-64, cached", trial_s.distill_topk or 64)):
            model = prune_model(prep.base, spec, prep.scores)
            settings = replace(trial_s, max_steps=args.kl_steps, distill_topk=k)
            out = ev.fit(model, spec, settings, progress=f"KL {label}")
            kl[label] = {"val_ppl": val_ppl(model, spec), "seconds": out["seconds"],
                         "s_per_step": out["seconds"] / args.kl_steps}
            say(f"KL {label}: val ppl {kl[label]['val_ppl']:.2f} after {args.kl_steps} steps, "
                f"{kl[label]['s_per_step']:.2f} s/step")
        results["kl"] = kl

    # ---- what more final steps buy (the fastest searched member, on from its final weights)
    if args.extra_steps:
        label = "searched (winner)"
        model = copy.deepcopy(models[label][0])
        curve = [{"steps": trial_s.max_steps + final_s.max_steps, "val_ppl": val_ppl(model, spec)}]
        t0 = time.perf_counter()
        for done in range(0, args.extra_steps, args.eval_every):
            chunk = replace(final_s, max_steps=args.eval_every, warmup_ratio=0.0, seed=final_s.seed + done)
            ev.fit(model, spec, chunk, progress=f"extra steps {done}-{done + args.eval_every}")
            curve.append({"steps": curve[0]["steps"] + done + args.eval_every, "val_ppl": val_ppl(model, spec),
                          "minutes": (time.perf_counter() - t0) / 60})
            say(f"{label} + {done + args.eval_every} steps: val ppl {curve[-1]['val_ppl']:.2f}")
        results["extra_steps"] = {"model": label, "curve": curve}
        models[f"{label}, +{args.extra_steps} steps"] = (
            model.eval(), spec, {"shape": spec.describe(), "val_ppl": curve[-1]["val_ppl"],
                                 "minutes": models[label][2]["minutes"] + curve[-1]["minutes"], "steps": curve[-1]["steps"]})

    # ---- llama.cpp: every model at Q8_0 (and the base at Q4_0) against the base at Q8_0, 1 and 2 threads
    val = prep.tokenized("validation", int(cfg.max_length))["input_ids"]
    prompts = [val[i][:112].tolist() for i in range(8)]
    test_blocks = [row.tolist() for row in prep.tokenized("test", int(cfg.max_length))["input_ids"]]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {}
        for kind in ("q8_0", "q4_0"):
            files[f"base {kind}"] = write_gguf(prep.base, prep.tokenizer, tmp / f"base.{kind}.gguf", kind=kind,
                                               source_gguf=prep.source_gguf)["path"]
        for name, (model, s, _) in models.items():
            files[name] = write_gguf(model, prep.tokenizer, tmp / f"{name.replace(' ', '_')}.q8_0.gguf", kind="q8_0",
                                     source_gguf=prep.source_gguf)["path"]
        for name, path in files.items():
            row = {"test_ppl_llamacpp": file_perplexity(path, test_blocks, threads=2)}
            if name != "base q8_0":
                for threads in (1, 2):
                    base = load_gguf(files["base q8_0"], n_ctx=160, threads=threads)
                    cand = load_gguf(path, n_ctx=160, threads=threads)
                    try:
                        m = paired_speedup(base, cand, prompts, mode="decode", new_tokens=16, rounds=args.rounds)
                    finally:
                        base.close()
                        cand.close()
                    row[f"threads_{threads}"] = m
                    say(f"{name}: {threads} thread(s) {m['tokens_per_s']:.1f} tok/s vs base q8_0 "
                        f"{m['base_tokens_per_s']:.1f} -> {m['speedup']:.2f}x [{m['p10']:.2f}-{m['p90']:.2f}]")
            rows[name] = row
    for name, (model, s, info) in models.items():
        rows[name].update(info, test_ppl_torch=test_ppl(model, s), params=count_parameters(model))
    rows["base q8_0"].update(test_ppl_torch=prep.base_info["test_perplexity"], params=count_parameters(prep.base),
                             shape=SubnetSpec.full(shape).describe())
    rows["base q4_0"].update(test_ppl_torch=prep.base_info["test_perplexity"], params=count_parameters(prep.base),
                             shape=SubnetSpec.full(shape).describe())
    results["models"] = rows
    Path(args.out + ".json").write_text(json.dumps(results, indent=2, default=float))
    write_md(Path(args.out + ".md"), results)
    say(f"wrote {args.out}.json / .md")


def write_md(path: Path, results: dict) -> None:
    base = results["base"]
    ref = base["test_perplexity"]
    lines = ["| model | shape | params | test ppl torch | test ppl llama.cpp | vs fine-tuned base | decode 1 thread "
             "tok/s (speedup) | decode 2 threads tok/s (speedup) | minutes |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        t1, t2 = r.get("threads_1"), r.get("threads_2")

        def cell(m, base_side=False):
            if m is None:
                return "(reference)"
            return f"{m['tokens_per_s']:.1f} ({m['speedup']:.2f}x [{m['p10']:.2f}-{m['p90']:.2f}])"

        if t1 is None:
            c1 = c2 = "reference"
        else:
            c1, c2 = cell(t1), cell(t2)
        minutes = r.get("minutes")
        lines.append(f"| {name} | {r.get('shape', '')} | {r['params'] / 1e6:.1f}M | {r['test_ppl_torch']:.2f} | "
                     f"{r['test_ppl_llamacpp']:.2f} | {100 * (r['test_ppl_llamacpp'] / results['models']['base q8_0']['test_ppl_llamacpp'] - 1):+.1f}% | "
                     f"{c1} | {c2} | {'' if minutes is None else f'{minutes:.1f}'} |")
    extra = (results.get("extra_steps") or {}).get("curve") or []
    kl = results.get("kl") or {}
    text = ["# llama.cpp results (experiments/decoder_lm/llamacpp_bench.py)", "",
            f"Fine-tuned base: test perplexity {ref:.2f} in torch (pretrained: validation "
            f"{base.get('pretrained_validation_perplexity', float('nan')):.2f}, fine-tuned {base['validation_perplexity']:.2f}; "
            f"{base.get('tokens_trained', 0)} training tokens).", "", *lines, ""]
    if extra:
        text += [f"What more final steps buy ({results['extra_steps']['model']}, validation perplexity):", "",
                 "| steps | val ppl |", "|---|---|", *[f"| {p['steps']} | {p['val_ppl']:.2f} |" for p in extra], ""]
    if kl:
        text += ["Top-k vs full KL (same cut, same steps):", "", "| KL | val ppl | s/step |", "|---|---|---|",
                 *[f"| {k} | {v['val_ppl']:.2f} | {v['s_per_step']:.2f} |" for k, v in kl.items()], ""]
    _ = statistics  # medians come from nas.deploy.llamacpp.paired_speedup
    path.write_text("\n".join(text))


if __name__ == "__main__":
    main()
