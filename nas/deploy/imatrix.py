"""Calibration statistics for llama.cpp's quantizer, computed in torch: each weight matrix's input second
moment E[x x^T] on calibration tokens (what GPTQ rounds under, nas.deploy.gptq) and its diagonal, the
importance matrix (the mean of x^2 per input column: what llama.cpp's `llama-imatrix` collects, without a
second runtime), keyed by the GGUF tensor name of every matrix llama.cpp multiplies by. The tied output layer
is `token_embd.weight` (llama.cpp multiplies by that tensor); an untied one is `output.weight`.

Calibration text comes from the task's training split only (`IMATRIX_SPLITS`): a matrix fitted on
validation or test text would tune the rounding to the text the model is judged on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.data.text import lm_blocks
from nas.models.decoder import backbone, is_tied

log = logging.getLogger(__name__)

IMATRIX_SPLITS = ("train",)


def calibration_ids(task: Any, tokenizer: Any, *, blocks: int, max_length: int, seed: int = 0,
                    split: str = "train") -> torch.Tensor:
    """`blocks` token blocks of `max_length` drawn (seeded) from the task's training text: what healing fits and
    importance matrices and GPTQ's second moments are computed on (validation and test are refused)."""
    check_split(split)
    ids = lm_blocks(task, split, tokenizer, block=max_length)["input_ids"]
    order = torch.randperm(ids.shape[0], generator=torch.Generator().manual_seed(int(seed)))
    return ids[order[:blocks]]


def check_split(split: str) -> str:
    if split not in IMATRIX_SPLITS:
        raise ValueError(f"an importance matrix is computed from the training text only; split={split!r} is not "
                         f"allowed (allowed: {', '.join(IMATRIX_SPLITS)}): validation and test judge the model")
    return split


def input_sites(model: nn.Module) -> list[tuple[tuple[str, ...], nn.Module]]:
    """(GGUF names of the matrices that read one input, the torch module whose input it is) for every matrix of a
    Llama model llama.cpp multiplies by: q, k and v read one normed stream, gate and up another. A layer without
    attention (nas.models.decoder's variants) has no attn_* entries; a linear one only attn_output."""
    body = backbone(model)
    out: list[tuple[tuple[str, ...], nn.Module]] = []
    for i, layer in enumerate(body.layers):
        att, mlp = layer.self_attn, layer.mlp
        if isinstance(getattr(att, "q_proj", None), nn.Linear):
            out.append(((f"blk.{i}.attn_q.weight", f"blk.{i}.attn_k.weight", f"blk.{i}.attn_v.weight"), att.q_proj))
        if isinstance(getattr(att, "o_proj", None), nn.Linear):
            out.append(((f"blk.{i}.attn_output.weight",), att.o_proj))
        out += [((f"blk.{i}.ffn_gate.weight", f"blk.{i}.ffn_up.weight"), mlp.gate_proj),
                ((f"blk.{i}.ffn_down.weight",), mlp.down_proj)]
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear):
        out.append((("token_embd.weight" if is_tied(model) else "output.weight",), head))
    return out


def matmul_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(GGUF tensor name, the module whose input that tensor multiplies), one entry per matrix (input_sites flat)."""
    return [(name, module) for names, module in input_sites(model) for name in names]


@contextlib.contextmanager
def recording_moments(model: nn.Module) -> Iterator[Callable[[], dict[str, torch.Tensor]]]:
    """While open, every forward of `model` adds its matrices' inputs to running second moments; the yielded
    function returns them as input_moments does ({GGUF name: E[x x^T]}, one tensor per shared input)."""
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    sites = input_sites(model)

    def record(key: int):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[key] = sums.get(key, 0) + (x.T @ x).double()  # float32 products, float64 sums
            counts[key] = counts.get(key, 0) + x.shape[0]
        return hook

    def moments() -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for k, (names, _) in enumerate(sites):
            if k in sums:
                out.update(dict.fromkeys(names, (sums[k] / counts[k]).float()))
        return out

    hooks = [module.register_forward_pre_hook(record(k)) for k, (_, module) in enumerate(sites)]
    try:
        yield moments
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def input_moments(model: nn.Module, blocks: Sequence[Sequence[int]] | torch.Tensor, *,
                  batch_size: int = 8) -> dict[str, torch.Tensor]:
    """{GGUF tensor name: E[x x^T] over the tokens of `blocks`} for every matrix llama.cpp multiplies by: the
    second moment of its inputs (what GPTQ rounds under, nas.deploy.gptq; its diagonal is the importance
    matrix). Matrices that read the same input share one tensor object."""
    ids = torch.as_tensor(np.asarray(blocks if not torch.is_tensor(blocks) else blocks.cpu()), dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        with recording_moments(model) as moments:
            for start in range(0, ids.shape[0], batch_size):
                model(input_ids=ids[start:start + batch_size])
    finally:
        model.train(was_training)
    return moments()


def moments_of(ids: torch.Tensor | Callable[[nn.Module], torch.Tensor]) -> Callable[[nn.Module], dict[str, torch.Tensor]]:
    """model -> input_moments(model, ids), computed once per model object (a timer writes the base at several types).
    `ids` may be a function of the model: the calibration text in its own token ids (a cut vocabulary's)."""
    memo: dict[int, tuple[nn.Module, dict[str, torch.Tensor]]] = {}

    def moments(model: nn.Module) -> dict[str, torch.Tensor]:
        if id(model) not in memo:
            rows = ids(model) if callable(ids) else ids
            memo[id(model)] = (model, input_moments(model, rows))  # the model is held: its id stays its own
        return memo[id(model)][1]

    return moments


def diagonal(moments: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The importance matrix (mean x^2 per input column) of input second moments."""
    return {name: m.diagonal().numpy().copy() for name, m in moments.items()}
