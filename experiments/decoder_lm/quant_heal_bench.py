"""Language models against llama.cpp's own quantization (issue 30): SmolLM2-135M on the embedded plays, the base
fine-tuned on them as the reference, every model written to GGUF and measured in llama.cpp.

    NAS_CACHE_DIR=... .venv/bin/python experiments/decoder_lm/quant_heal_bench.py --run RUN_DIR   # ~45 min

RUN_DIR is the README's decoder command's run folder (`+space=decoder model=smollm2 data=shakespeare`).

1. Quantization alone: the fine-tuned base at each GGUF type, written by llama.cpp's quantizer with plain
   rounding, with the importance matrix, and after GPTQ rounding onto the type's grid (nas.deploy.gptq), with the
   head at its preset type or set (`<type>_head_<head>`).
2. Healing: cuts of the base healed in closed form (nas.cut.heal: FLAP's bias compensation, the least-squares
   refit) against the cut as it is and against training it for the same minutes, and for 60 steps.
3. The search: every front member of RUN_DIR and the final stage's winner, rebuilt from their weights, written at
   their searched type and re-measured here.

Every figure: test perplexity scored by llama.cpp on the model's own file (32 blocks of 128 tokens of the 4 test
plays); decode speedup over the base at q8_0: 16 greedy tokens after each of 8 real validation prompts (112
tokens), batch 1, 1 thread, the two models alternating prompt by prompt in one process (nas.cost.latency's
paired rounds with llama.cpp passes), the median of `--rounds` per-round ratios [p10-p90]. Calibration text
(healing, importance matrices, GPTQ): prune.heal_blocks blocks of the training plays only. Writes
results_quant_heal.json / .md beside this file (issue 30; per-token perplexity, before vocabulary cuts), with `decode_speedup_within_10pct_over_q8_0_base` (the search) and
`decode_speedup_within_10pct_quantization_alone` (the best the base reaches by type alone).
"""

from __future__ import annotations

import argparse
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
from nas.cut.heal import heal, heal_settings  # noqa: E402
from nas.cut.prune import count_parameters, prune_model  # noqa: E402
from nas.cut.recovery import RecoverySettings  # noqa: E402
from nas.deploy.llamacpp import file_perplexity  # noqa: E402
from nas.spec import SubnetSpec  # noqa: E402
from nas.study.prepare import prepare  # noqa: E402
from nas.study.runs import load_run, rebuild_trial_model  # noqa: E402
from nas.study.settings import final_train_settings  # noqa: E402
from nas.study.trial import Evaluator  # noqa: E402

# (type, rounding): llamacpp = llama.cpp's own rounding (weighted by the importance matrix unless "plain")
QUANT_ROWS = [("q8_0", "llamacpp"), ("q6_k", "llamacpp"), ("q5_0", "llamacpp"), ("q5_0", "gptq"), ("q4_k_m", "llamacpp"),
              ("iq4_nl", "plain"), ("iq4_nl", "llamacpp"), ("iq4_nl", "gptq"), ("q4_0", "plain"), ("q4_0", "llamacpp"),
              ("q4_0", "gptq"), ("q8_0_head_q4_0", "llamacpp"), ("q4_0_head_q4_0", "gptq"),
              ("iq4_nl_head_iq4_nl", "gptq")]


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default=None, help="the README decoder command's run folder (part 3)")
    parser.add_argument("--run-minutes", type=float, default=None,
                        help="the search command's wall time (its log's `time`), recorded beside the front")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--recover-log", default=None,
                        help="this script's own log of an earlier run whose later part failed: its parts 1 and 2 are "
                             "read back from the lines it printed (run the missing parts with --parts)")
    parser.add_argument("--parts", default="1,2,3")
    parser.add_argument("--out", default=str(HERE / "results_quant_heal"))
    args = parser.parse_args()
    parts = {int(p) for p in args.parts.split(",")}

    cfg = compose(["model=smollm2", "data=shakespeare", "+space=decoder"])
    container = OmegaConf.to_container(cfg, resolve=True)
    prep = prepare(cfg)
    healing = heal_settings(container.get("prune"))
    ev = Evaluator(prep=prep, timer=None, train=final_train_settings(container),
                   recovery=RecoverySettings.from_cfg({"recovery": "none"}), lm=True, heal_settings=healing)
    settings = LatencySettings(runtime="llamacpp", precision="q8_0", rounds=args.rounds, sample_size=8, warmup=1,
                               threads=1).resolved(lm=True)
    timer = PairedTimer.for_prepared(prep, settings, max_length=int(cfg.max_length))
    settings = timer.settings  # as the timer resolved it (decode, on a language-modelling task)
    timer.moments = ev.moments
    ev.timer = timer
    context = int(prep.shape.max_positions)
    test_blocks = [row.tolist() for row in prep.tokenized("test", int(cfg.max_length))["input_ids"]]
    results: dict = {"base": {k: v for k, v in prep.base_info.items() if k != "curve"},
                     "timing": timer.settings.describe(), "calibration_blocks": healing.blocks}
    path = Path(args.out + ".json")
    if path.is_file():  # parts run separately add to one file
        results = {**json.loads(path.read_text()), **results}
    if args.recover_log:
        results.update(recover_log(Path(args.recover_log)))

    def measure(model, name: str, precision: str) -> dict:
        m = timer.measure(model, context=context, name=name, precision=precision)
        gguf = timer.gguf_path(name, precision)
        row = {"test_ppl": file_perplexity(gguf, test_blocks, threads=2), "mb": gguf.stat().st_size / 1e6,
               **{k: m[k] for k in ("speedup", "speedup_p10", "speedup_p90", "latency_ms", "base_latency_ms")}}
        gguf.unlink(missing_ok=True)
        return row

    try:
        timer.base_latency_ms()
        base_ppl = file_perplexity(timer.gguf_path("base"), test_blocks, threads=2)
        results["base_q8_0_test_ppl"] = base_ppl
        say(f"base q8_0: test perplexity {base_ppl:.2f} in llama.cpp (torch fp32 {prep.base_info['test_perplexity']:.2f})")
        if 1 in parts:
            alone = {}
            for precision, rounding in QUANT_ROWS:
                timer.settings = replace(settings, rounding="llamacpp" if rounding == "plain" else rounding,
                                         imatrix=None if rounding == "plain" else "train")
                t0 = time.perf_counter()
                row = measure(prep.base, "alone", precision)
                row.update(precision=precision, rounding=rounding, seconds=round(time.perf_counter() - t0, 1),
                           vs_base=row["test_ppl"] / base_ppl - 1)
                alone[f"{precision} {rounding}"] = row
                say(f"quantization alone {precision} ({rounding}): test ppl {row['test_ppl']:.2f} "
                    f"({100 * row['vs_base']:+.1f}%), decode {row['speedup']:.2f}x [{row['speedup_p10']:.2f}-"
                    f"{row['speedup_p90']:.2f}], {row['mb']:.0f} MB")
            timer.settings = settings
            results["quantization_alone"] = alone
        if 2 in parts:
            results["healing"] = healing_part(prep, ev, say)
        if "healing" in results:
            results["healing"]["base_val_ppl"] = prep.base_info["validation_perplexity"]
        if 3 in parts and args.run:
            results["search"] = search_part(Path(args.run).resolve(), prep, measure, base_ppl, say)
            results["search"]["minutes"] = args.run_minutes
    finally:
        timer.close()
    within = [r for r in (results.get("quantization_alone") or {}).values() if r["test_ppl"] <= 1.1 * base_ppl]
    if within:
        results["decode_speedup_within_10pct_quantization_alone"] = max(r["speedup"] for r in within)
    searched = [r for r in (results.get("search") or {}).get("models", {}).values() if r["test_ppl"] <= 1.1 * base_ppl]
    if searched:
        results["decode_speedup_within_10pct_over_q8_0_base"] = max(r["speedup"] for r in searched)
    path.write_text(json.dumps(results, indent=2, default=float))
    write_md(Path(args.out + ".md"), results)
    say(f"wrote {path} and .md")


def recover_log(path: Path) -> dict:
    """Parts 1 and 2 as an earlier run of this script printed them (say()'s lines), for a run whose part 3 failed.
    A quantization-alone row's seconds are the time between its line and the one before."""
    import re
    from datetime import datetime

    num = r"([-+]?[0-9.]+)"
    alone, cuts, curves, out = {}, {}, {}, {}
    last = None
    for line in path.read_text().splitlines():
        stamp = re.match(r"\[(\d\d:\d\d:\d\d)\] (.*)", line)
        if not stamp:
            continue
        when, text = datetime.strptime(stamp[1], "%H:%M:%S"), stamp[2]
        m = re.match(rf"quantization alone (\S+) \((\S+)\): test ppl {num} \({num}%\), decode {num}x \[{num}-{num}\], "
                     rf"{num} MB", text)
        if m:
            alone[f"{m[1]} {m[2]}"] = {"precision": m[1], "rounding": m[2], "test_ppl": float(m[3]),
                                      "vs_base": float(m[4]) / 100, "speedup": float(m[5]), "speedup_p10": float(m[6]),
                                      "speedup_p90": float(m[7]), "mb": float(m[8]),
                                      "seconds": (when - last).total_seconds() if last else None}
        m = re.match(rf"healing (.+) \((.+)\): val ppl as cut {num}, bias {num}, least squares {num} \({num}s\)", text)
        if m:
            cuts[m[1]] = {"shape": m[2], "none": {"val_ppl": float(m[3])}, "bias": {"val_ppl": float(m[4])},
                          "lsq": {"val_ppl": float(m[5]), "seconds": float(m[6])}}
        m = re.match(r"(.+), (healed|as cut), trained: (.*)", text)
        if m:
            curves[m[2]] = [{"step": int(a), "validation": float(b), "seconds": float(c)}
                            for a, b, c in re.findall(rf"(\d+): {num} \({num}s\)", m[3])]
            out["cut"] = m[1]
        last = when
    recovered: dict = {"quantization_alone": alone} if alone else {}
    if cuts:
        name = out.get("cut", next(iter(cuts)))
        recovered["healing"] = {"cuts": cuts, "recovered_from": path.name, "training": {
            "cut": name, "shape": cuts[name]["shape"], "curves": curves, "heal_seconds": cuts[name]["lsq"]["seconds"]}}
    return recovered


def healing_part(prep, ev, say) -> dict:
    """Cuts of the base: as cut, bias-compensated, least-squares healed (validation perplexity in torch fp32 and
    the seconds it took), and training against healing at equal minutes."""
    shape = prep.shape

    def spec(n=shape.num_layers, ffn=shape.ffn_size, groups=shape.num_kv_heads, none=0, linear=0) -> SubnetSpec:
        from nas.study.space import attention_variants

        layers = tuple(sorted(prep.scores.top_layers(n)))
        attn = attention_variants(layers, none, linear, ev.calibration().influence()["attention"])
        q = shape.group_size * groups
        return SubnetSpec(layers=layers, heads=tuple(q if a == "full" else 0 for a in attn),
                          kv_heads=tuple(groups if a == "full" else 0 for a in attn), ffn=(ffn,) * n,
                          hidden=shape.hidden_size, context=shape.max_positions,
                          attn=attn if set(attn) != {"full"} else None)

    cuts = {"4 layers dropped": spec(26), "2 layers dropped": spec(28), "FFN 1536 -> 1344": spec(ffn=1344),
            "FFN 1536 -> 1152": spec(ffn=1152), "one key/value group of 3": spec(groups=2),
            "4 attentions removed": spec(none=4), "4 attentions linear": spec(linear=4)}
    out = {"base_val_ppl": prep.base_info["validation_perplexity"], "cuts": {}}
    for name, s in cuts.items():
        row = {"shape": s.describe(), "params": None}
        for method in ("none", "bias", "lsq"):
            model = prune_model(prep.base, s, prep.scores)
            t0 = time.perf_counter()
            heal(model, prep.base, s, prep.scores, ev.calibration(), replace(ev.heal_settings, method=method))
            seconds = time.perf_counter() - t0
            row[method] = {"val_ppl": ev.quality_of(model, s, "validation")[1], "seconds": round(seconds, 1)}
            row["params"] = count_parameters(model)
        say(f"healing {name} ({s.describe()}): val ppl as cut {row['none']['val_ppl']:.2f}, bias "
            f"{row['bias']['val_ppl']:.2f}, least squares {row['lsq']['val_ppl']:.2f} ({row['lsq']['seconds']:.0f}s)")
        out["cuts"][name] = row
    # training at equal minutes, and 60 steps, from the cut as it is and from the healed cut
    name, s = "4 layers dropped", cuts["4 layers dropped"]
    fs = ev.train
    curves = {}
    for label, healed in (("healed", True), ("as cut", False)):
        model = prune_model(prep.base, s, prep.scores)
        if healed:
            heal(model, prep.base, s, prep.scores, ev.calibration(), ev.heal_settings)
        r = ev.fit_lm(model, s, replace(fs, max_steps=60), progress=f"{name}, {label}", eval_every=10, patience=0)
        curves[label] = r["curve"]
        say(f"{name}, {label}, trained: " + ", ".join(f"{c['step']}: {c['validation']:.2f} ({c['seconds']:.0f}s)"
                                                    for c in r["curve"]))
    out["training"] = {"cut": name, "shape": s.describe(), "curves": curves,
                       "heal_seconds": out["cuts"][name]["lsq"]["seconds"]}
    return out


def search_part(run_dir: Path, prep, measure, base_ppl: float, say) -> dict:
    run_cfg, study = load_run(run_dir)
    winner = study.user_attrs.get("final_winner")
    final = study.user_attrs.get("final") or {}
    models = {}
    for trial in study.best_trials:
        n = trial.number
        if "repeat_of" in trial.user_attrs:  # a repeated shape: not trained again, no weights of its own
            continue
        spec = SubnetSpec.from_dict(trial.user_attrs["spec"])
        precision = trial.user_attrs.get("precision") or "q8_0"
        model = rebuild_trial_model(run_cfg, run_dir, n, spec, 0, None).eval()
        row = measure(model, f"trial_{n}", precision)
        row.update(shape=spec.describe(), precision=precision, params=count_parameters(model),
                   trial_val_ppl=trial.user_attrs.get("val_perplexity"), trial_speedup=trial.user_attrs.get("speedup"),
                   final=str(n) in final, winner=n == winner, vs_base=row["test_ppl"] / base_ppl - 1)
        models[str(n)] = row
        say(f"searched trial {n} {spec.describe()} {precision}{' (winner)' if n == winner else ''}: test ppl "
            f"{row['test_ppl']:.2f} ({100 * row['vs_base']:+.1f}%), decode {row['speedup']:.2f}x "
            f"[{row['speedup_p10']:.2f}-{row['speedup_p90']:.2f}]")
    quant = study.user_attrs.get("quantization_alone") or {}
    return {"run": str(run_dir), "winner": winner, "models": models, "final": final, "run_quantization_alone": quant,
            "trials": [{"number": t.number, "state": t.state.name, **{k: t.user_attrs.get(k) for k in (
                "shape", "precision", "val_perplexity", "speedup", "speedup_p10", "speedup_p90", "seconds_heal")}}
                for t in study.trials]}


def write_md(path: Path, results: dict) -> None:
    base = results["base_q8_0_test_ppl"]
    text = ["# Language models against llama.cpp's own quantization (quant_heal_bench.py)", "",
            f"Reference: the fine-tuned base at q8_0, test perplexity {base:.2f} in llama.cpp "
            f"({results['base']['test_perplexity']:.2f} in torch fp32). Timing: {results['timing']}; speedup over the "
            "base at q8_0, median of the rounds [p10-p90].", ""]
    recovered = (results.get("healing") or {}).get("recovered_from")
    if recovered:
        text += [f"Parts 1 and 2 are read back from `{recovered}`, the lines their run printed (its part 3 stopped on a "
                 "repeated trial that keeps no weights; fixed, and part 3 run again with `--parts 3 --recover-log`).", ""]
    alone = results.get("quantization_alone") or {}
    if alone:
        text += ["## 1. Quantization alone (the fine-tuned base)", "",
                 "| type | rounding | test ppl | vs base | decode speedup | MB | seconds (write + measure) |",
                 "|---|---|---|---|---|---|---|"]
        text += [f"| {r['precision']} | {r['rounding']} | {r['test_ppl']:.2f} | {100 * r['vs_base']:+.1f}% | "
                 f"{r['speedup']:.2f}x [{r['speedup_p10']:.2f}-{r['speedup_p90']:.2f}] | {r['mb']:.0f} | {r['seconds']:.0f} |"
                 for r in alone.values()]
        text.append("")
    healing = results.get("healing")
    if healing:
        text += ["## 2. Healing cuts in closed form (validation perplexity, torch fp32; base "
                 f"{healing['base_val_ppl']:.2f})", "",
                 "| cut | shape | as cut | bias (FLAP) | least squares | heal seconds |", "|---|---|---|---|---|---|"]
        text += [f"| {name} | {r['shape']} | {r['none']['val_ppl']:.2f} | {r['bias']['val_ppl']:.2f} | "
                 f"{r['lsq']['val_ppl']:.2f} | {r['lsq']['seconds']:.0f} |" for name, r in healing["cuts"].items()]
        t = healing["training"]
        text += ["", f"Training against healing ({t['cut']}, {t['shape']}; healing took {t['heal_seconds']:.0f} s):", "",
                 "| start | " + " | ".join(f"step {c['step']}" for c in t["curves"]["healed"]) + " |",
                 "|---|" + "---|" * len(t["curves"]["healed"])]
        for label, curve in t["curves"].items():
            text.append(f"| {label} | " + " | ".join(f"{c['validation']:.2f} ({c['seconds']:.0f}s)" for c in curve) + " |")
        text.append("")
    search = results.get("search")
    if search:
        spent = f"; the command took {search['minutes']:.1f} min from a cold cache" if search.get("minutes") else ""
        text += [f"## 3. The search (re-measured{spent})", "", "| trial | shape | type | test ppl | vs base | decode speedup |",
                 "|---|---|---|---|---|---|"]
        text += [f"| {n}{' (winner)' if r['winner'] else ''} | {r['shape']} | {r['precision']} | {r['test_ppl']:.2f} | "
                 f"{100 * r['vs_base']:+.1f}% | {r['speedup']:.2f}x [{r['speedup_p10']:.2f}-{r['speedup_p90']:.2f}] |"
                 for n, r in search["models"].items()]
        text.append("")
    for key in ("decode_speedup_within_10pct_over_q8_0_base", "decode_speedup_within_10pct_quantization_alone"):
        if key in results:
            text.append(f"- `{key}`: {results[key]:.2f}x")
    path.write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
