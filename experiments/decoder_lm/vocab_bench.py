"""What each part buys a language model in llama.cpp (issue 37): quantization, the vocabulary the task's text uses,
mixed types chosen by measured sensitivity, and the searched cuts. SmolLM2-135M on the embedded plays, the base
fine-tuned on them (the decoder command's, cached) as the reference at q8_0; every model written to GGUF by
llama.cpp's quantizer (GPTQ rounding under the training text's input moments) and measured in llama.cpp.

    NAS_CACHE_DIR=... .venv/bin/python experiments/decoder_lm/vocab_bench.py --run RUN_DIR   # ~40 min

RUN_DIR is the README decoder command's run folder (`make decoder`); without it the search rows are left out.

Rows:
1. quantization alone: the base at each type, the head's type included;
2. the vocabulary alone and with each type: the base cut to the ids covering 100%, 99.9% and 99% of the training
   text's tokens (byte, special and chat-template tokens always kept; nas.cut.vocab);
3. mixed types: each layer's attention and FFN and the head measured at iq4_nl against q8_0 (bits per byte on
   1,024 validation tokens, nas.deploy.mixed), then files with the n cheapest groups at iq4_nl, on the base with its
   vocabulary cut to coverage 1.0;
4. the search: every front member of RUN_DIR, the final stage's winner marked, re-measured here.

Every figure: test text scored by llama.cpp on the model's own file with the file's own tokenizer (the first 4,096
tokens' worth of the 4 test plays, pieces of 128 base tokens each after EOS): perplexity per byte (exp of total NLL
over UTF-8 bytes, the band's measure), bits per byte, and perplexity per token of the base's tokenizer (the same NLL
over the base's token count: the per-token figure the base's own tokenization gives); decode speedup over the base
at q8_0: 16 greedy tokens after each of 8 real validation prompts (each model reads them with its own tokenizer),
batch 1, 1 thread, the two models alternating prompt by prompt in one process, the median of `--rounds` per-round
ratios [p10-p90]. The machine's CPU features are recorded. Writes results_llamacpp.json / .md beside this file.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from nas.config import compose  # noqa: E402
from nas.cost.latency import LatencySettings, PairedTimer  # noqa: E402
from nas.cut.heal import heal_settings  # noqa: E402
from nas.cut.prune import count_parameters, cut_vocabulary  # noqa: E402
from nas.cut.recovery import RecoverySettings  # noqa: E402
from nas.deploy.mixed import describe, front_sizes, mix_name  # noqa: E402
from nas.spec import SubnetSpec  # noqa: E402
from nas.study.lm_final import ALONE_PREFIX  # noqa: E402
from nas.study.prepare import prepare  # noqa: E402
from nas.study.runs import load_run, rebuild_trial_model  # noqa: E402
from nas.study.settings import final_train_settings  # noqa: E402
from nas.study.trial import Evaluator  # noqa: E402
from nas.util import cpu_features, describe_cpu  # noqa: E402

QUANT_ROWS = ["q8_0", "q4_0", "iq4_nl", "q4_0_head_q4_0", "iq4_nl_head_iq4_nl"]
VOCAB_COVERAGE = [1.0, 0.999, 0.99]
VOCAB_TYPES = ["q8_0", "iq4_nl", "iq4_nl_head_iq4_nl"]
MIX_LOW = "iq4_nl"
BAND = 0.10  # the band: perplexity per byte within 10% of the base's at q8_0


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default=None, help="the README decoder command's run folder (part 4)")
    parser.add_argument("--run-minutes", type=float, default=None, help="that command's wall time, recorded")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parts", default="1,2,3,4")
    parser.add_argument("--out", default=str(HERE / "results_llamacpp"))
    parser.add_argument("--types", default=",".join(QUANT_ROWS), help="part 1's types, comma-separated")
    parser.add_argument("--coverage", default=",".join(map(str, VOCAB_COVERAGE)), help="part 2's coverage shares")
    parser.add_argument("--vocab-types", default=",".join(VOCAB_TYPES), help="part 2's types")
    parser.add_argument("--mix-files", type=int, default=6, help="part 3: how many mixed files along the order")
    parser.add_argument("--winner-only", action="store_true", help="part 4: re-measure the run's winner only")
    args = parser.parse_args()
    quant_rows = [t for t in args.types.split(",") if t]
    coverages = [float(c) for c in args.coverage.split(",") if c]
    vocab_types = [t for t in args.vocab_types.split(",") if t]
    parts = {int(p) for p in args.parts.split(",")}
    started = time.perf_counter()

    cfg = compose(["model=smollm2", "data=shakespeare", "+space=decoder"])
    container = OmegaConf.to_container(cfg, resolve=True)
    prep = prepare(cfg)
    ranking = prep.scores.vocab
    ev = Evaluator(prep=prep, timer=None, train=final_train_settings(container),
                   recovery=RecoverySettings.from_cfg({"recovery": "none"}), lm=True,
                   heal_settings=heal_settings(container.get("prune")))
    settings = LatencySettings(runtime="llamacpp", precision="q8_0", rounds=args.rounds, sample_size=8, warmup=1,
                               threads=1).resolved(lm=True)
    timer = PairedTimer.for_prepared(prep, settings, max_length=int(cfg.max_length))
    timer.moments = ev.moments
    ev.timer = timer
    full = SubnetSpec.full(prep.shape)
    path = Path(args.out + ".json")
    results: dict = json.loads(path.read_text()) if path.is_file() else {}
    results.update(machine=cpu_features(), timing=timer.settings.describe(),
                   base={k: v for k, v in prep.base_info.items() if k != "curve"}, band=BAND)
    say(f"machine: {describe_cpu(results['machine'])}; timing: {results['timing']}")

    def scored(path_: Path) -> dict:
        return ev.gguf_text_metrics(path_, full, "test", "test")

    def measure(model, name: str, precision: str) -> dict:
        t0 = time.perf_counter()
        m = timer.measure(model, context=full.context, name=name, precision=precision)
        gguf = timer.gguf_path(name, precision)
        row = {**scored(gguf), "mb": gguf.stat().st_size / 1e6, "precision": precision,
               "vocab": int(model.config.vocab_size), "params": count_parameters(model),
               **{k: m[k] for k in ("speedup", "speedup_p10", "speedup_p90", "latency_ms", "base_latency_ms")}}
        gguf.unlink(missing_ok=True)
        row["vs_base"] = row["test_byte_perplexity"] / results["reference"]["test_byte_perplexity"] - 1
        row["vs_base_per_token"] = row["test_perplexity"] / results["reference"]["test_perplexity"] - 1
        row["seconds"] = round(time.perf_counter() - t0, 1)
        return row

    def line(label: str, r: dict) -> str:
        return (f"{label}: test ppl/byte {r['test_byte_perplexity']:.4f} ({100 * r['vs_base']:+.2f}%; per base token "
                f"{r['test_perplexity']:.2f}, {100 * r['vs_base_per_token']:+.1f}%), {r['test_bits_per_byte']:.4f} "
                f"bits/byte, decode {r['speedup']:.2f}x [{r['speedup_p10']:.2f}-{r['speedup_p90']:.2f}], "
                f"{r['mb']:.0f} MB, vocab {r['vocab']:,} ({r['seconds']:.0f}s)")

    def trimmed(coverage: float):
        n = ranking.size_for(coverage)
        model = cut_vocabulary(copy.deepcopy(prep.base), replace(full, vocab=n), prep.scores)
        model.nas_moments = ev.moments(prep.base)  # its layers read the same text: the base's moments stand
        return model, n

    try:
        timer.base_latency_ms()
        results["reference"] = {**scored(timer.gguf_path("base")), "precision": "q8_0",
                                "vocab": int(prep.base.config.vocab_size)}
        ref = results["reference"]
        say(f"reference: the base at q8_0: test ppl/byte {ref['test_byte_perplexity']:.4f}, {ref['test_bits_per_byte']:.4f} "
            f"bits/byte, per token {ref['test_perplexity']:.2f}")
        if 1 in parts:
            rows = {}
            for precision in quant_rows:
                rows[precision] = measure(prep.base, "alone", precision)
                say(line(f"quantization alone {precision}", rows[precision]))
            results["quantization_alone"] = rows
        if 2 in parts:
            rows = {}
            for coverage in coverages:
                model, n = trimmed(coverage)
                for precision in vocab_types:
                    key = f"{precision} V{n}"
                    rows[key] = {**measure(model, f"vocab_{n}", precision), "coverage": coverage,
                                 "train_coverage": ranking.coverage_of(n)}
                    say(line(f"vocabulary {coverage} ({n} ids) at {precision}", rows[key]))
                del model
            results["vocabulary"] = rows
        if 3 in parts:
            t0 = time.perf_counter()
            sensitivity = ev.sensitivity(MIX_LOW, say=say)
            say(f"sensitivity: {describe(sensitivity)}")
            timer.mix_order = sensitivity.order
            model, n = trimmed(1.0)
            rows = {}
            for k in front_sizes(len(sensitivity.order), args.mix_files):
                precision = mix_name(k, MIX_LOW)
                rows[precision] = {**measure(model, f"mix_{n}", precision), "groups_low": k,
                                   "predicted_bits_per_byte_delta": sensitivity.predicted(k)
                                   - sensitivity.reference_bits_per_byte}
                say(line(f"mixed {precision} on vocabulary {n}", rows[precision]))
            results["mixed"] = {"sensitivity": {"low": MIX_LOW, "costs": sensitivity.costs, "order": sensitivity.order,
                                                "tokens": sensitivity.tokens, "seconds": sensitivity.seconds},
                                "vocab": n, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
        if 4 in parts and args.run:
            results["search"] = search_part(Path(args.run).resolve(), measure, line, winner_only=args.winner_only)
            results["search"]["minutes"] = args.run_minutes
    finally:
        timer.close()
    summarize(results, ranking)
    results["minutes"] = round((time.perf_counter() - started) / 60, 1)
    path.write_text(json.dumps(results, indent=2, default=str))
    write_md(Path(args.out + ".md"), results)
    say(f"wrote {path} ({results['minutes']} min)")


def search_part(run_dir: Path, measure, line, winner_only: bool = False) -> dict:
    run_cfg, study = load_run(run_dir)
    winner = study.user_attrs.get("final_winner")
    models = {}
    for trial in study.best_trials:
        n = trial.number
        if "repeat_of" in trial.user_attrs or (winner_only and n != winner):
            continue
        spec = SubnetSpec.from_dict(trial.user_attrs["spec"])
        precision = trial.user_attrs.get("precision") or "q8_0"
        model = rebuild_trial_model(run_cfg, run_dir, n, spec, 0, None).eval()
        row = measure(model, f"trial_{n}", precision)
        row.update(shape=spec.describe(), trial_val_byte_perplexity=trial.user_attrs.get("val_byte_perplexity"),
                   trial_speedup=trial.user_attrs.get("speedup"), winner=n == winner)
        models[str(n)] = row
        say(line(f"searched trial {n} {spec.describe()} {precision}{' (winner)' if n == winner else ''}", row))
    return {"run": str(run_dir), "winner": winner, "models": models, "final": study.user_attrs.get("final") or {},
            "run_alone": study.user_attrs.get("quantization_alone") or {},
            "trials": [{"number": t.number, "state": t.state.name, **{k: t.user_attrs.get(k) for k in (
                "shape", "precision", "val_byte_perplexity", "val_perplexity", "speedup")}} for t in study.trials]}


def best_within(rows: dict, key: str = "vs_base") -> dict | None:
    within = [r for r in rows.values() if r[key] <= BAND]
    return max(within, key=lambda r: r["speedup"]) if within else None


def summarize(results: dict, ranking) -> None:
    alone = best_within(results.get("quantization_alone") or {})
    if alone:
        results["decode_speedup_within_10pct_quantization_alone"] = alone["speedup"]
        results["quantization_alone_best"] = alone["precision"]
    alone_token = best_within(results.get("quantization_alone") or {}, "vs_base_per_token")
    if alone_token:
        results["decode_speedup_within_10pct_per_token_quantization_alone"] = alone_token["speedup"]
    search = results.get("search") or {}
    models = search.get("models") or {}
    winner = search.get("winner")
    if isinstance(winner, str) and winner.startswith(ALONE_PREFIX):  # the base alone won: re-measured in part 1 / 2
        key = winner.removeprefix(ALONE_PREFIX)
        row = (results.get("quantization_alone") or {}).get(key) or (results.get("vocabulary") or {}).get(key)
    else:
        row = models.get(str(winner))
    if row is not None:
        results["winner"] = {"key": winner, **row}
        results["vocab_kept"] = row["vocab"]
        if row["vs_base"] <= BAND:
            results["decode_speedup_within_10pct_over_q8_0_base"] = row["speedup"]
    every = {**(results.get("quantization_alone") or {}), **(results.get("vocabulary") or {}),
             **((results.get("mixed") or {}).get("rows") or {}), **{f"trial {k}": r for k, r in models.items()}}
    best = best_within(every)
    if best:
        results["fastest_within_10pct_any_row"] = {"speedup": best["speedup"], "precision": best["precision"],
                                                   "vocab": best["vocab"], "shape": best.get("shape", "base")}
    best_token = best_within(every, "vs_base_per_token")
    if best_token:
        results["fastest_within_10pct_per_token_any_row"] = {"speedup": best_token["speedup"],
                                                             "precision": best_token["precision"],
                                                             "vocab": best_token["vocab"],
                                                             "shape": best_token.get("shape", "base")}
    results["vocabulary_sizes"] = {str(c): ranking.size_for(c) for c in (1.0, 0.9999, 0.999, 0.99, 0.95)}


def fmt(r: dict) -> str:
    return (f"{r['test_byte_perplexity']:.4f} | {100 * r['vs_base']:+.2f}% | {r['test_bits_per_byte']:.4f} | "
            f"{r['test_perplexity']:.2f} ({100 * r['vs_base_per_token']:+.1f}%) | {r['speedup']:.2f}x "
            f"[{r['speedup_p10']:.2f}-{r['speedup_p90']:.2f}] | {r['mb']:.0f} | {r['vocab']:,} |")


def milli(sens: dict, groups: list) -> str:
    return ", ".join(f"{g} {1000 * sens['costs'][g]:.2f}" for g in groups)


def write_md(path: Path, results: dict) -> None:
    ref = results["reference"]
    head = ("| test ppl/byte | vs base | bits/byte | ppl per base token | decode vs q8_0 base | MB | vocabulary |")
    rule = "|---|---|---|---|---|---|---|"
    text = ["# What each part buys SmolLM2 in llama.cpp: quantization, vocabulary, mixed types, cuts (vocab_bench.py)", "",
            f"Machine: {describe_cpu(results['machine'])}. Reference: the fine-tuned base at q8_0, test perplexity per "
            f"byte {ref['test_byte_perplexity']:.4f} ({ref['test_bits_per_byte']:.4f} bits per byte; per token of its "
            f"tokenizer {ref['test_perplexity']:.2f}), scored by llama.cpp on its file. Timing: {results['timing']}; "
            "speedup over the base at q8_0, median of the rounds [p10-p90]. The band: perplexity per byte within 10% "
            "of the reference; for this text (about 3.5 bytes per token) that is about +40% per token, so the same "
            "rows are also read within 10% per token.", ""]
    for title, key, label in (("1. Quantization alone (the fine-tuned base)", "quantization_alone", "type"),
                              ("2. The vocabulary the training text uses, alone and with each type", "vocabulary",
                               "type, ids kept")):
        rows = results.get(key) or {}
        if rows:
            text += [f"## {title}", "", f"| {label} " + head, "|---" + rule]
            text += [f"| {name} | " + fmt(r) for name, r in rows.items()]
            text.append("")
    mixed = results.get("mixed")
    if mixed:
        sens = mixed["sensitivity"]
        order = sens["order"]
        text += [f"## 3. Mixed types by measured sensitivity (on the base with {mixed['vocab']:,} ids)", "",
                 f"Each group alone at {sens['low']} (the rest at q8_0), bits per byte added on {sens['tokens']} "
                 f"validation tokens (measured in torch on the values llama.cpp stores; {sens['seconds']:.0f} s): "
                 f"cheapest {milli(sens, order[:4])}; dearest {milli(sens, order[::-1][:4])} (milli-bits per byte).", "",
                 "| file (n cheapest groups at the low type) | predicted bits/byte added " + head, "|---|---" + rule]
        text += [f"| {name} | {r['predicted_bits_per_byte_delta']:+.4f} | " + fmt(r) for name, r in mixed["rows"].items()]
        text.append("")
    search = results.get("search")
    if search:
        text += ["## 4. The search (the decoder command's front, re-measured)", "",
                 f"Run `{search['run']}`" + (f", {search['minutes']} min" if search.get("minutes") else "")
                 + f"; the final stage's winner: {search['winner']}.", "",
                 "| trial | shape | type " + head, "|---|---|---" + rule]
        text += [f"| {n}{' (winner)' if r.get('winner') else ''} | {r['shape']} | {r['precision']} | " + fmt(r)
                 for n, r in search["models"].items()]
        text.append("")
    text += ["## Summary", ""]
    for key in ("decode_speedup_within_10pct_over_q8_0_base", "decode_speedup_within_10pct_quantization_alone",
                "decode_speedup_within_10pct_per_token_quantization_alone", "vocab_kept", "fastest_within_10pct_any_row",
                "fastest_within_10pct_per_token_any_row", "vocabulary_sizes", "minutes"):
        if key in results:
            text.append(f"- `{key}`: {results[key]}")
    text.append("")
    path.write_text("\n".join(text))


if __name__ == "__main__":
    main()
