"""The newer model families searched end to end by the README's commands, on tiny-but-real shapes.

No checkpoint of ModernBERT, DeBERTa-v3 or Qwen3 ships offline in a package, so each base is built from its
transformers config with random (seeded) weights and saved as a plain HF folder with a real tokenizer: accuracy
and perplexity figures are meaningless here; the shapes, the front's latencies and the speedups over the base
quantized alike are what the benchmark shows.

    .venv/bin/python experiments/families/run.py [modernbert deberta qwen3]

For each family: the folder (under $NAS_CACHE_DIR/families, default .cache/nas/families; never committed), then
`python -m nas.search +space=triple model=hf model.name_or_path=FOLDER data=rotten_tomatoes` (classifiers) or
`+space=decoder ... data=shakespeare` (language models) with the small budget below, its log, pareto.csv and
best.yaml copied to experiments/families/<family>/, and results.json / results.md beside this file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# Small budgets: minutes per family on a shared 2-core machine.
CLASSIFIER = ["+space=triple", "data=rotten_tomatoes", "search.n_trials=6", "search.population_size=4",
              "base.max_steps=150", "base.eval_every=50", "train.max_steps=40", "importance.max_batches=4",
              "latency.model=measured", "search.final_k=1", "final.candidates=2", "final.rung_steps=40",
              "final.max_steps=80", "final.eval_every=40", "final.time_budget=120"]
DECODER = ["+space=decoder", "data=shakespeare", "search.n_trials=5", "search.population_size=4",
           "base.max_steps=20", "base.eval_every=10", "base.batch_size=4", "importance.batch_size=4",
           "importance.max_batches=4", "prune.heal_blocks=16", "train.batch_size=4", "train.eval_batch_size=4",
           "search.final_k=1", "final.max_steps=0", "final.time_budget=60"]


def build(family: str, folder: Path) -> dict[str, Any]:
    """A random-weight base of `family` saved at `folder` with a real tokenizer; returns its shape."""
    import torch
    from transformers import AutoTokenizer

    from nas.models.loading import embedded_model_path

    torch.manual_seed(0)
    if family == "modernbert":
        from transformers import ModernBertConfig, ModernBertForSequenceClassification

        # MiniLM's WordPiece tokenizer: ModernBERT's own is not available offline
        tok = AutoTokenizer.from_pretrained(embedded_model_path())
        cfg = ModernBertConfig(vocab_size=len(tok), hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                               intermediate_size=576, max_position_embeddings=512, local_attention=128,
                               global_attn_every_n_layers=3, pad_token_id=tok.pad_token_id,
                               cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                               bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, num_labels=2)
        model = ModernBertForSequenceClassification(cfg)
    elif family == "deberta":
        from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

        tok = AutoTokenizer.from_pretrained(embedded_model_path())  # DeBERTa-v3's SentencePiece is not offline
        # DeBERTa-v3-xsmall's shape with 6 of its 12 layers, and its 128,100-token embedding table
        cfg = DebertaV2Config(vocab_size=128100, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                              intermediate_size=1536, max_position_embeddings=512, relative_attention=True,
                              position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
                              pos_att_type=["p2c", "c2p"], position_biased_input=False, max_relative_positions=-1,
                              type_vocab_size=0, pad_token_id=tok.pad_token_id, num_labels=2)
        model = DebertaV2ForSequenceClassification(cfg)
    elif family == "qwen3":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        from nas.models.gguf import smollm2_gguf
        from nas.models.loading import resolve_model_source

        tok = AutoTokenizer.from_pretrained(resolve_model_source(str(smollm2_gguf())))  # a byte-level BPE
        # Qwen3-0.6B's proportions at a tenth of its width: head_dim 64 != hidden / heads
        cfg = Qwen3Config(vocab_size=len(tok), hidden_size=256, num_hidden_layers=8, num_attention_heads=8,
                          num_key_value_heads=4, head_dim=64, intermediate_size=768, max_position_embeddings=512,
                          tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id)
        model = Qwen3ForCausalLM(cfg)
    else:
        raise ValueError(f"family {family!r} is not benchmarked here; allowed: modernbert, deberta, qwen3")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return {"model_type": cfg.model_type, "params": sum(p.numel() for p in model.parameters())}


def folder_params(folder: Path) -> int:
    """Parameters in a saved folder's safetensors files (a tied matrix is stored once)."""
    import math

    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


def search(family: str, folder: Path, run_dir: Path, log: Path) -> float:
    overrides = DECODER if family == "qwen3" else CLASSIFIER
    cmd = [sys.executable, "-m", "nas.search", *overrides, "model=hf", f"model.name_or_path={folder}",
           f"hydra.run.dir={run_dir}"]
    t0 = time.perf_counter()
    with log.open("w") as out:
        out.write("$ python -m nas.search " + " ".join(cmd[3:]) + "\n")
        out.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode:
        raise SystemExit(f"{family}: the search failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def summary(family: str, run_dir: Path, seconds: float | None, built: dict[str, Any]) -> dict[str, Any]:
    """The front (validation quality, latency and speedup over the base at the same runtime and precision) and the
    winner of the final stage (best.yaml) as deployed, from the run folder."""
    import pandas as pd
    import yaml

    front = pd.read_csv(run_dir / "pareto.csv")
    quality = next(c for c in ("val_accuracy", "val_byte_perplexity", "val_perplexity")
                   if c in front and front[c].notna().any())
    keep = [c for c in ("number", "shape", "precision", quality, "latency_ms", "base_latency_ms", "speedup", "params",
                        "is_base") if c in front.columns]
    rows = front[keep].astype(object).where(front[keep].notna(), None).to_dict(orient="records")
    best = yaml.safe_load((run_dir / "best.yaml").read_text()) if (run_dir / "best.yaml").is_file() else None
    winner = None
    if best is not None:
        metrics = best.get("metrics", {})
        winner = {"trial": best.get("trial"), "shape": best.get("shape"),
                  **{k: metrics.get(k) for k in (quality, "speedup", "latency_ms", "base_latency_ms", "params",
                                                 "final_speedup_over_quantized_base", "final_test_accuracy_deployed",
                                                 "final_test_byte_perplexity_deployed", "final_test_perplexity_deployed", "final_variant", "final_precision",
                                                 "final_definition") if metrics.get(k) is not None}}
    base = None if best is None else best.get("base")
    return {"family": family, **built, "seconds": None if seconds is None else round(seconds), "quality": quality,
            "base": base, "front": rows, "winner": winner}


def render(results: dict[str, Any]) -> str:
    """results.md: per family, the base, the front and the winner, with the runtime and precision they were timed in."""
    lines = ["# Newer families on random weights: fronts and winners", "",
             "Written by `experiments/families/run.py` from its runs (README.md beside this file says how). Random "
             "weights: accuracy and perplexity are meaningless here; the shapes and speedups are what the runs show.",
             ""]
    for family, r in results.items():
        quality = r["quality"]
        base = r.get("base") or {}
        lines += [f"## {family} ({r.get('model_type')}, {r.get('params') or '?'} parameters; "
                  f"search {r.get('seconds')} s)", "",
                  f"Base: {quality} {_fmt(base.get(quality))}, latency {_fmt(base.get('latency_ms'))}.", "",
                  f"| trial | shape | precision | {quality} | latency | base latency | speedup |",
                  "|---|---|---|---|---|---|---|"]
        for row in r["front"]:
            number = "base" if row.get("is_base") else (row.get("number") if row.get("number") is None
                                                         else int(row["number"]))
            lines.append(f"| {number} | {row.get('shape')} | {row.get('precision') or ''} | {_fmt(row.get(quality))} | "
                         f"{_fmt(row.get('latency_ms'))} | {_fmt(row.get('base_latency_ms'))} | "
                         f"{_fmt(row.get('speedup'))}x |")
        w = r.get("winner") or {}
        lines += ["", "Winner (final stage): " + (", ".join(f"{k} {_fmt(v)}" for k, v in w.items()) if w else "none"),
                  ""]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("families", nargs="*", default=["modernbert", "deberta", "qwen3"])
    parser.add_argument("--summary", action="store_true", help="only rebuild results.json from the kept run folders")
    args = parser.parse_args()
    cache = Path(os.environ.get("NAS_CACHE_DIR", ROOT / ".cache" / "nas")) / "families"
    results_path = HERE / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for family in args.families:
        folder = cache / family
        if not (folder / "config.json").is_file():
            built = build(family, folder)
        else:
            from transformers import AutoConfig

            built = {"model_type": AutoConfig.from_pretrained(folder).model_type, "params": folder_params(folder)}
        out = HERE / family
        out.mkdir(exist_ok=True)
        run_dir = cache / f"{family}_run"
        if args.summary:
            previous = results.get(family, {})
            results[family] = summary(family, run_dir, previous.get("seconds"), built)
            results_path.write_text(json.dumps(results, indent=2) + "\n")
            (HERE / "results.md").write_text(render(results))
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        seconds = search(family, folder, run_dir, out / "search.log")
        for name in ("pareto.csv", "best.yaml"):
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, out / name)
        results[family] = summary(family, run_dir, seconds, built)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        (HERE / "results.md").write_text(render(results))
        print(json.dumps(results[family]["winner"]), f"{seconds:.0f}s")


if __name__ == "__main__":
    main()
