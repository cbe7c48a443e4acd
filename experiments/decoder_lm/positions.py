"""A small model's LM step is not its vocabulary's (issue 30): a 4-layer, 128-wide Llama with a 30,522-token vocabulary
(the shape of a user's own tiny Llama that planned 400 final steps at 6-7 s each) trained on the embedded plays at
the default batch (32 blocks of 128 tokens), the loss on every position against train.lm_positions=auto (the
vocabulary head on a share of the positions, nas.quality.lm.positions_fraction). Both from the same random weights,
the same blocks, the same steps; step time and validation perplexity, then the same comparison at equal minutes.

    .venv/bin/python experiments/decoder_lm/positions.py   # ~6 min; writes positions.json beside this file
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import torch  # noqa: E402

from nas.config import compose  # noqa: E402
from nas.data.tasks import load_task  # noqa: E402
from nas.data.text import lm_blocks, lm_loader  # noqa: E402
from nas.models.loading import load_tokenizer  # noqa: E402
from nas.quality.lm import finetune_lm, positions_fraction  # noqa: E402


def main() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(2)
    task = load_task(compose(["data=shakespeare"])["data"])
    tokenizer = load_tokenizer(None)  # the embedded MiniLM's: 30,522 tokens
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=512, max_position_embeddings=128,
                      tie_word_embeddings=True)
    start = LlamaForCausalLM(cfg)
    train = lm_loader(lm_blocks(task, "train", tokenizer, block=128), batch_size=32, shuffle=True, seed=0)
    val = lm_loader(lm_blocks(task, "validation", tokenizer, block=128), batch_size=32, shuffle=False)
    auto = positions_fraction(start, "auto")
    out = {"shape": "L4 hidden 128 FFN 512 vocab 30522 (tied)", "params": sum(p.numel() for p in start.parameters()),
           "auto_share": auto, "batch": "32 x 128", "runs": {}}
    for label, share, steps in (("every position", 1.0, 40), ("auto", auto, 40)):
        model = copy.deepcopy(start)
        t0 = time.perf_counter()
        r = finetune_lm(model, train, val, steps=steps, lr=1e-3, weight_decay=0.0, warmup_ratio=0.1, eval_every=20,
                        patience=0, what=label, precision="fp32", positions=share)
        out["runs"][label] = {"share": share, "steps": steps, "seconds": time.perf_counter() - t0,
                              "train_seconds": r["train_seconds"], "curve": r["curve"],
                              "s_per_step": (r["curve"][-1]["seconds"] - 0) / steps}
        print(label, json.dumps(out["runs"][label]), flush=True)
    (HERE / "positions.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
