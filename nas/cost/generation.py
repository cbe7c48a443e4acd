"""Generation latency of causal LMs: prefill, per-token decode with the KV cache, or both.

A plug-in of nas.cost.latency's paired timing (`latency.generation`): each side of a round runs the
same real prompts (the task's own texts, truncated at the model's context less the tokens it
will generate) at batch 1, and the time that counts is

- ``prefill``: one forward over the prompt (what nas.cost.latency times for every model);
- ``decode``: the per-token time of ``latency.new_tokens`` greedy steps, each feeding one token
  with the KV cache filled by the prompt's prefill (the prefill itself is not counted);
- ``generate``: prefill plus ``new_tokens`` decode steps: the time to answer.

``auto`` is decode for a language-modelling task and prefill (a forward) for classification.
The per-input figure of ``decode`` is milliseconds per generated token.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

MODES = ("auto", "prefill", "decode", "generate")


def check(settings: Any) -> None:
    mode, n = settings.generation, settings.new_tokens
    if mode not in MODES:
        raise ValueError(f"latency.generation={mode!r} is not known; allowed: {', '.join(MODES)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"latency.new_tokens={n!r} must be an integer >= 1")


def resolve_mode(mode: str, *, lm: bool, settings: Any = None) -> str:
    """`auto` -> decode for an LM task, prefill otherwise; decode / generate refused where they cannot run."""
    if mode == "auto":
        return "decode" if lm else "prefill"
    if mode in ("decode", "generate"):
        if not lm:
            raise ValueError(f"latency.generation={mode} needs a language-modelling task (data=text / shakespeare); "
                             "a classifier runs one forward: use prefill or auto")
        if settings is not None and settings.runtime not in ("torch", "llamacpp"):
            raise ValueError(f"latency.generation={mode} is timed in torch or llama.cpp (KV cache); set "
                             "latency.runtime=llamacpp, torch, or latency.generation=prefill")
        if settings is not None and settings.batch_size != 1:
            raise ValueError(f"latency.generation={mode} is timed at batch 1; set latency.batch_size=1")
    return mode


def prompt_cap(cap: int, mode: str, new_tokens: int) -> int:
    """Prompt tokens a model of context `cap` receives: room is left for the tokens it generates."""
    return cap if mode == "prefill" else max(1, cap - new_tokens)


def generation_pass(model: Any, batches: Sequence[Mapping[str, Any]], *, mode: str, new_tokens: int) -> Any:
    """A nas.cost.latency Pass: run(start, stop) -> seconds of the counted part over batches start..stop-1."""

    device = next(model.parameters()).device
    feeds = [{k: torch.from_numpy(v).to(device) for k, v in b.items()} for b in batches]
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    @torch.inference_mode()
    def run(start: int, stop: int) -> float:
        total = 0.0
        for feed in feeds[start:stop]:
            sync()
            t0 = time.perf_counter()
            out = model(**feed, use_cache=True)
            sync()
            prefill = time.perf_counter() - t0
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)  # (1, 1)
            t0 = time.perf_counter()
            for _ in range(new_tokens):
                out = model(input_ids=token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            sync()
            decode = time.perf_counter() - t0
            total += decode / new_tokens if mode == "decode" else prefill + decode
        return total

    return run
