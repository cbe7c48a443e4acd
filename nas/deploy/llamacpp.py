"""llama.cpp as a runtime (through llama-cpp-python): logits, greedy continuations, perplexity, and the
llama.cpp side of nas.cost.latency's paired timing (`LlamaCppPass`), on GGUF files written by nas.deploy.gguf.

Timing follows nas.cost.latency's rule: the candidate and the base are loaded in one process and run the
same real prompts, alternating prompt by prompt (nas.cost.latency.paired_rounds); the speedup is the
median of the per-round ratios. `decode` is the per-token time of `new_tokens` greedy steps after
the prompt's prefill (each step: one token through the model with the KV cache, then the argmax of
its logits); `prefill` is the time of the prompt's forward. Both go through llama-cpp-python's
`Llama.eval`, so they include its small per-call Python cost, alike on both sides.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def llama_cpp_reason() -> str | None:
    """Why llama-cpp-python cannot be used here, or None when it can."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as e:  # not installed, or its shared library failed to load
        return f"llama-cpp-python is not usable here ({type(e).__name__}: {e}); scripts/setup.sh builds it"
    return None


def llama_cpp_available() -> bool:
    return llama_cpp_reason() is None


@contextlib.contextmanager
def quiet_stderr(*fds: int):
    """llama.cpp's loader prints to fd 2 even with verbose=False on some paths, and its quantizer to fd 1 as well:
    keep the run's log readable (`fds`: the descriptors to silence, default 2)."""
    fds = fds or (2,)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(fd) for fd in fds]
    try:
        with open(os.devnull, "w") as null:
            for fd in fds:
                os.dup2(null.fileno(), fd)
            yield
    finally:
        for fd, copy in zip(fds, saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def load_gguf(path: str | Path, *, n_ctx: int = 512, threads: int = 1, vocab_only: bool = False,
              logits_all: bool = False, n_batch: int = 512, batch_threads: int | None = None) -> Any:
    """A llama_cpp.Llama on a GGUF file (CPU, `threads` for one-token steps; `batch_threads` for a batch of tokens,
    the prompt's prefill: `threads` unless given)."""
    reason = llama_cpp_reason()
    if reason:
        raise RuntimeError(reason)
    import llama_cpp

    with quiet_stderr():
        return llama_cpp.Llama(model_path=str(path), n_ctx=int(n_ctx), n_threads=int(threads),
                               n_threads_batch=int(batch_threads or threads), n_batch=int(n_batch),
                               logits_all=logits_all, vocab_only=vocab_only, verbose=False, n_gpu_layers=0)


def all_logits(llm: Any, ids: Sequence[int]) -> np.ndarray:
    """(len(ids), vocab) next-token logits at every position of one sequence (needs logits_all=True)."""
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def greedy(llm: Any, ids: Sequence[int], n: int) -> list[int]:
    """The `n` greedy tokens llama.cpp continues `ids` with."""
    llm.reset()
    llm.eval(list(ids))
    out: list[int] = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


def perplexity(llm: Any, blocks: Sequence[Sequence[int]]) -> float:
    """exp(mean next-token NLL) over token blocks, each scored on its own (needs logits_all=True)."""
    nll, count = 0.0, 0
    for block in blocks:
        block = list(block)
        logits = all_logits(llm, block)[:-1].astype(np.float64)  # position t predicts token t + 1
        top = logits.max(-1, keepdims=True)
        logz = np.log(np.exp(logits - top).sum(-1)) + top[:, 0]
        nll += float((logz - logits[np.arange(len(block) - 1), block[1:]]).sum())
        count += len(block) - 1
    return math.exp(nll / max(count, 1))


def time_prompts(llm: Any, prompts: Sequence[Sequence[int]], *, mode: str, new_tokens: int) -> float:
    """Seconds of the counted part, summed over the prompts: per generated token (decode), the prompt's
    forward (prefill), or both (generate) - nas.cost.generation's definition, in llama.cpp."""
    total = 0.0
    for prompt in prompts:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(list(prompt))
        prefill = time.perf_counter() - t0
        if mode == "prefill":
            total += prefill
            continue
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        decode = time.perf_counter() - t0
        total += decode / new_tokens if mode == "decode" else prefill + decode
    return total


class LlamaCppPass:
    """A nas.cost.latency Pass in llama.cpp: run(start, stop) -> seconds of the counted part over prompts
    start..stop-1 (decode: per generated token; prefill: the prompt's forward; generate: both), the
    same definition as nas.cost.generation's torch pass. Holds its model until close().

    In `decode` mode the prompt's prefill is not counted: it runs on every core (llama.cpp's batch threads) and
    only the one-token steps at `threads`, so a timed round costs a third less wall time (SmolLM2 at q8_0, a
    112-token prompt: 0.47 -> 0.28 s of prefill beside 0.22 s of counted decode) for the same counted part."""

    def __init__(self, path: str | Path, batches: Sequence[Any], *, mode: str, new_tokens: int, threads: int) -> None:
        self.prompts = []
        for b in batches:
            ids, mask = np.asarray(b["input_ids"]), np.asarray(b.get("attention_mask", np.ones_like(b["input_ids"])))
            if ids.shape[0] != 1:
                raise ValueError(f"llama.cpp is timed at batch 1; got a batch of {ids.shape[0]}")
            self.prompts.append(ids[0][mask[0].astype(bool)].tolist())
        self.mode, self.new_tokens = mode, new_tokens
        longest = max(len(p) for p in self.prompts)
        self.llm = load_gguf(path, n_ctx=longest + new_tokens + 8, threads=threads,
                             batch_threads=max(threads, os.cpu_count() or 1) if mode == "decode" else threads)

    def __call__(self, start: int, stop: int) -> float:
        return time_prompts(self.llm, self.prompts[start:stop], mode=self.mode, new_tokens=self.new_tokens)

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None


def text_nll(llm: Any, texts: Sequence[str], *, token_ids: Sequence[Sequence[int]] | None = None,
             anchor: int | None = None) -> tuple[float, int]:
    """(total next-token NLL in nats, tokens predicted) of `texts`, each tokenized by the file's own tokenizer
    (llama.cpp's) and scored after its EOS token (BOS where it has none): nas.quality.metrics.text_score's
    definition, in llama.cpp (needs logits_all=True). A file with a stand-in vocabulary (a timing file, which
    tokenizes nothing) is given the pieces' `token_ids` and the `anchor` id instead."""
    if anchor is None:
        anchor = int(llm.token_eos())
        if anchor < 0:
            anchor = int(llm.token_bos())
    nll, count = 0.0, 0
    for i, text in enumerate(texts):
        pieces = token_ids[i] if token_ids is not None else llm.tokenize(text.encode("utf-8"), add_bos=False,
                                                                          special=False)
        ids = [int(anchor), *pieces]
        logits = all_logits(llm, ids)[:-1].astype(np.float64)  # position t predicts token t + 1
        top = logits.max(-1, keepdims=True)
        logz = np.log(np.exp(logits - top).sum(-1)) + top[:, 0]
        nll += float((logz - logits[np.arange(len(ids) - 1), ids[1:]]).sum())
        count += len(ids) - 1
    return nll, count


def file_text_nll(path: str | Path, texts: Sequence[str], *, threads: int = 1, n_ctx: int = 0,
                  token_ids: Sequence[Sequence[int]] | None = None, anchor: int | None = None) -> tuple[float, int]:
    """text_nll of the GGUF file at `path`. `n_ctx` 0: room for the longest piece at one token per byte."""
    n_ctx = n_ctx or max(len(t.encode("utf-8")) for t in texts) + 8
    if token_ids is not None:
        n_ctx = max(n_ctx, max(len(r) for r in token_ids) + 8)
    llm = load_gguf(path, n_ctx=n_ctx, threads=threads, logits_all=True, n_batch=max(512, n_ctx))
    try:
        return text_nll(llm, texts, token_ids=token_ids, anchor=anchor)
    finally:
        llm.close()


def file_perplexity(path: str | Path, blocks: Sequence[Sequence[int]], *, threads: int = 1) -> float:
    """Perplexity of the GGUF file at `path` in llama.cpp over token blocks (each scored on its own)."""
    llm = load_gguf(path, n_ctx=max(len(b) for b in blocks), threads=threads, logits_all=True)
    try:
        return perplexity(llm, blocks)
    finally:
        llm.close()
