"""SmolLM2-135M on held-out Shakespeare: depth-only vs width-only pruning at equal parameter count
(Minitron's comparison: depth faster, width more accurate), right after pruning (no fine-tune) and
after a short distillation fine-tune; perplexity on held-out plays, decode speedup paired with the
base (real prompts, batch 1, 1 thread, torch eager, KV cache, 16 new tokens per prompt).

    .venv/bin/python experiments/decoder_lm/run.py [--steps 10]

Writes results.json / results.md beside this file. The search front of the README command
(outputs/smollm2_readme/pareto.csv) is the other half of the benchmark.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60, help="distillation fine-tune steps per shape")
    parser.add_argument("--drop", type=int, default=10, help="layers the depth-only shape removes")
    args = parser.parse_args()

    from nas.config import compose
    from nas.models.decoder import decoder_params
    from nas.cost.latency import LatencySettings, PairedTimer
    from nas.quality.metrics import evaluate
    from nas.study.prepare import prepare
    from nas.cut.prune import count_parameters, prune_model
    from nas.spec import SubnetSpec
    from nas.quality.finetune import TrainSettings, finetune

    cfg = compose(["model=smollm2", "data=shakespeare"])
    prep = prepare(cfg)
    shape = prep.shape
    base_rows = base_perplexity(prep)
    full = SubnetSpec.full(shape)
    n = shape.num_layers - args.drop
    depth = SubnetSpec(layers=prep.scores.top_layers(n), heads=(shape.num_heads,) * n, kv_heads=(shape.num_kv_heads,) * n,
                       ffn=(shape.ffn_size,) * n, hidden=shape.hidden_size, context=shape.max_positions)
    target = decoder_params(depth, vocab=prep.base.config.vocab_size, head_size=shape.head_size, tied=True)

    def width(f: int) -> SubnetSpec:
        return SubnetSpec(**{**full.__dict__, "ffn": (f,) * shape.num_layers})

    # the FFN width (multiple of 32) whose parameter count is closest to the depth-only shape's
    f = min(range(32, shape.ffn_size + 1, 32), key=lambda f: abs(decoder_params(
        width(f), vocab=prep.base.config.vocab_size, head_size=shape.head_size, tied=True) - target))
    def narrow(h: int) -> SubnetSpec:
        return SubnetSpec(**{**full.__dict__, "hidden": h})

    # the hidden width (multiple of 32) closest to it too: Minitron's width axis includes the embedding channels
    h = min(range(64, shape.hidden_size + 1, 32), key=lambda h: abs(decoder_params(
        narrow(h), vocab=prep.base.config.vocab_size, head_size=shape.head_size, tied=True) - target))
    specs = {"depth-only": depth, "width-only (FFN)": width(f), "width-only (hidden)": narrow(h)}
    timer = PairedTimer.for_prepared(prep, LatencySettings(), max_length=int(cfg.max_length))
    settings = TrainSettings.from_cfg(cfg.train, max_steps=args.steps)
    rows = []
    ev = int(settings.eval_batch_size)
    for name, spec in specs.items():
        model = prune_model(prep.base, spec, prep.scores)
        row = {"shape": name, "spec": spec.describe(), "params": count_parameters(model)}
        row["ppl_pruned"] = evaluate(model, prep.loader("validation", 128, batch_size=ev, shuffle=False), lm=True)[1]
        t0 = time.perf_counter()
        finetune(model, prep.loader("train", 128, batch_size=settings.batch_size, shuffle=True), settings,
                 teacher=prep.base)
        row["finetune_s"] = time.perf_counter() - t0
        row["ppl_finetuned"] = evaluate(model, prep.loader("validation", 128, batch_size=ev, shuffle=False), lm=True)[1]
        row["test_ppl_finetuned"] = evaluate(model, prep.loader("test", 128, batch_size=ev, shuffle=False), lm=True)[1]
        row.update({k: v for k, v in timer.measure(model, context=128).items() if k.startswith(("speedup", "latency"))})
        rows.append(row)
        print(row, flush=True)
    out = {"base": {"params": count_parameters(prep.base), **prep.base_info}, "base_perplexity": base_rows, "rows": rows,
           "latency": timer.settings.describe(), "steps": args.steps}
    (HERE / "results.json").write_text(json.dumps(out, indent=2))
    lines = ["Base perplexity by text and block length (the same tokens scored as blocks of 128 or 512):", "",
             "| text | tokens | block | perplexity |", "|---|---|---|---|"]
    lines += [f"| {r['text']} | {r['tokens']} | {r['block']} | {r['perplexity']:.1f} |" for r in base_rows]
    lines += ["", f"Depth-only vs width-only at equal parameter count, {args.steps} distillation steps each:", ""]
    lines += ["| shape | spec | params | val ppl pruned | val ppl after fine-tune | test ppl | decode speedup [p10-p90] |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['spec']} | {r['params'] / 1e6:.1f}M | {r['ppl_pruned']:.1f} | "
                     f"{r['ppl_finetuned']:.1f} | {r['test_ppl_finetuned']:.1f} | {r['speedup']:.2f}x "
                     f"[{r['speedup_p10']:.2f}-{r['speedup_p90']:.2f}] |")
    (HERE / "results.md").write_text("\n".join(lines) + f"\n\nlatency: {out['latency']}\n")


def base_perplexity(prep) -> list[dict]:
    """The unpruned LM's perplexity on the task's validation tokens and on Hamlet (the play of DESIGN's
    8x512 check), each scored as blocks of 128 and of 512 tokens over the same 4096 tokens."""
    import torch

    from nas.quality.metrics import perplexity
    from nas.data.text import _markdown_to_text, lm_blocks, lm_loader, shakespeare_folder

    hamlet = _markdown_to_text(next(shakespeare_folder().rglob("hamlet.md")).read_text())
    hamlet_ids = prep.tokenizer(hamlet, add_special_tokens=False)["input_ids"][:4096]
    rows = []
    for block in (128, 512):
        val = lm_blocks(prep.task, "validation", prep.tokenizer, block=block)
        ids = torch.tensor(hamlet_ids[: len(hamlet_ids) // block * block]).view(-1, block)
        ham = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
        for text, blocks in (("validation split (4 plays)", val), ("Hamlet (first 4096 tokens)", ham)):
            ppl = perplexity(prep.base, lm_loader(blocks, batch_size=4, shuffle=False))
            rows.append({"text": text, "block": block, "tokens": int(blocks["input_ids"].numel()), "perplexity": ppl})
            print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()
