"""Error-compensating rounding onto llama.cpp's own grids (GPTQ, Frantar et al. 2023), before its quantizer.

llama.cpp's quantizer rounds each block of 32 weights of a row on its own (weighted by the importance matrix
where given). GPTQ rounds a matrix column by column and pushes each column's rounding error onto the columns not
yet rounded, through the inverse of the layer inputs' second moment H = E[x x^T] (from calibration text), so
the layer's output on those inputs moves as little as it can. Done here in torch, onto exactly the values
llama.cpp's block types can hold, the weights come out already on its grid; its quantizer then keeps them as
they are (verified by reading the written file back: tests/test_gptq.py).

Grids (`GRIDS`): for a block of 32 values of a row with scale d (stored as fp16), q8_0 holds d * {-127..127},
q5_0 d * {-16..15}, q4_0 d * {-8..7}, iq4_nl d * {-127, -104, ..., 89, 113} (its non-linear table). llama.cpp
sets a block's scale from the value of largest magnitude, which it maps to the grid's end (q4_0: max / -8, so
that value becomes -8; iq4_nl searches its scales starting there). Here each block's scale is fixed when GPTQ
reaches the block, from its current values, the same way, and that value is rounded to the grid's end: then
the block's largest value is d times the grid's end exactly, and llama.cpp recovers d and every index.

K-quants and the min-offset types (q4_1, q5_1) are left to llama.cpp's own rounding.

Once rounded, the quantizer has nothing left to choose: `encode_rounded` stores the values as llama.cpp's blocks
directly (nas.deploy.gguf writes such files without it, ~25 s less per SmolLM2 file). Where llama.cpp's quantizer
would move a value (its float32 scale search, weighted by an importance matrix spanning ~10^7, can settle on another
scale in a block holding a massive-activation column), the direct file keeps GPTQ's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

BLOCK = 32


@dataclass(frozen=True)
class Grid:
    """A llama.cpp block type's values (in units of the block scale) and where a block's largest value goes."""

    name: str
    values: tuple[int, ...]
    extreme: int  # the grid value llama.cpp maps a block's signed largest value to (q8_0: +-127 by its sign)
    symmetric: bool = False  # q8_0: the scale is amax / 127 (positive), the extreme keeps its sign

    def scale(self, extreme_value: torch.Tensor) -> torch.Tensor:
        """Per-row block scale (fp16-exact) from each row's signed largest value in the block."""
        d = extreme_value.abs() / abs(self.extreme) if self.symmetric else extreme_value / self.extreme
        return d.to(torch.float16).to(torch.float32)

    def points(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the grid's values, the midpoints between neighbours), float32: a value's nearest grid index is
        torch.bucketize(value, midpoints)."""
        values = torch.tensor(self.values, dtype=torch.float32)
        return values, (values[1:] + values[:-1]) / 2

    def index_of_extreme(self, extreme_value: torch.Tensor) -> torch.Tensor:
        values = torch.tensor(self.values)
        if not self.symmetric:
            return torch.full_like(extreme_value, self.values.index(self.extreme), dtype=torch.long)
        target = torch.where(extreme_value >= 0, torch.tensor(abs(self.extreme)), torch.tensor(-abs(self.extreme)))
        return torch.searchsorted(values, target)


GRIDS = {
    "q8_0": Grid("q8_0", tuple(range(-127, 128)), 127, symmetric=True),
    "q5_0": Grid("q5_0", tuple(range(-16, 16)), -16),
    "q4_0": Grid("q4_0", tuple(range(-8, 8)), -8),
    "iq4_nl": Grid("iq4_nl", (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113), -127),
}


@torch.no_grad()
def gptq(weight: torch.Tensor, hessian: torch.Tensor, grid: Grid, *, damp: float = 0.01) -> torch.Tensor:
    """`weight` (out, in) rounded onto `grid` in 32-column blocks of each row, GPTQ-style under the inputs' second
    moment `hessian` (in, in); returns the rounded weights (float32, on llama.cpp's grid). Batched: `weight`
    (B, out, in) with `hessian` (B, in, in) rounds B independent matrices at once."""
    single = weight.dim() == 2
    w = (weight[None] if single else weight).detach().float().clone()
    h = (hessian[None] if single else hessian).detach().float().clone()
    batch, rows, cols = w.shape
    if cols % BLOCK:
        raise ValueError(f"gptq: {cols} columns are not whole {BLOCK}-value blocks")
    diag = h.diagonal(dim1=1, dim2=2)  # (B, in), a view
    dead = diag <= 0
    diag.masked_fill_(dead, 1.0)
    w.masked_fill_(dead[:, None, :], 0.0)
    diag.add_(damp * diag.mean(-1, keepdim=True))
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)  # (B, in, in)
    values, mids = grid.points()
    out = torch.zeros_like(w)
    for i1 in range(0, cols, BLOCK):
        i2 = i1 + BLOCK
        block = w[:, :, i1:i2].clone()  # (B, rows, 32)
        ub = u[:, i1:i2, i1:i2]  # (B, 32, 32)
        where = block.abs().argmax(-1)  # (B, rows): the block's largest value per row, as it stands now
        top = block.gather(-1, where[..., None])[..., 0]
        d = grid.scale(top)
        inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / torch.where(d == 0, torch.ones_like(d), d))
        forced = grid.index_of_extreme(top)
        errors = torch.empty_like(block)
        for j in range(BLOCK):
            col = block[:, :, j]  # (B, rows)
            idx = torch.bucketize(col * inv, mids)
            idx = torch.where(where == j, forced, idx)  # the largest value lands on the grid's end
            q = values[idx] * d  # d == 0: an all-zero block stays zero
            out[:, :, i1 + j] = q
            err = (col - q) / ub[:, j, j][:, None]
            block[:, :, j:] -= err[..., None] * ub[:, j, j:][:, None, :]
            errors[:, :, j] = err
        if i2 < cols:
            w[:, :, i2:] -= errors @ u[:, i1:i2, i2:]
    return out[0] if single else out


# The types GPTQ runs for by default: q8_0's own rounding error is already negligible (SmolLM2 test perplexity
# 46.67 with llama.cpp's rounding, 46.58 with GPTQ) and its 255-value grid makes GPTQ twice as slow.
GPTQ_TYPES = ("q5_0", "q4_0", "iq4_nl")


def round_matrices(weights: Mapping[str, torch.Tensor], hessians: Mapping[str, torch.Tensor],
                   types: Mapping[str, str], *, damp: float = 0.01,
                   only: tuple[str, ...] = GPTQ_TYPES) -> dict[str, torch.Tensor]:
    """GPTQ for every tensor whose target type has a grid here and whose Hessian is known: {name: rounded}.
    Matrices that read the same input (one Hessian object) and go to the same type are rounded as one (their rows
    stacked: rows are rounded independently under a shared Hessian)."""
    t0 = time.perf_counter()
    groups: dict[tuple[int, str], list[str]] = {}
    for name, weight in weights.items():
        kind = types.get(name, "")
        if kind in GRIDS and kind in only and name in hessians and weight.dim() == 2 and weight.shape[1] % BLOCK == 0:
            groups.setdefault((id(hessians[name]), kind), []).append(name)
    # each group is one matrix (rows stacked); groups of the same shape and type go through gptq as one batch
    shapes: dict[tuple[int, int, str], list[list[str]]] = {}
    for (_, kind), names in groups.items():
        rows = sum(weights[n].shape[0] for n in names)
        shapes.setdefault((rows, weights[names[0]].shape[1], kind), []).append(names)
    out = {}
    hits = 0
    for (_, _, kind), members in shapes.items():
        stacked = torch.stack([torch.cat([weights[n].detach().float() for n in names]) for names in members])
        hessian = torch.stack([hessians[names[0]].detach().float() for names in members])
        key = (kind, float(damp), _digest(stacked), _digest(hessian))
        rounded = _ROUNDED.get(key)
        if rounded is None:
            rounded = gptq(stacked, hessian, GRIDS[kind], damp=damp)
            _remember(key, rounded.clone())
        else:  # a copy: the caller owns what it gets
            rounded, hits = rounded.clone(), hits + 1
        for names, matrix in zip(members, rounded, strict=True):
            for n, part in zip(names, matrix.split([weights[n].shape[0] for n in names]), strict=True):
                out[n] = part
    log.debug("gptq: %d matrices in %.1fs (%d of %d batches remembered)", len(out), time.perf_counter() - t0, hits,
              len(shapes))
    return out


# GPTQ's result is a function of the weights, their Hessian, the grid and the damping alone: a run that writes the
# same matrices again (the base alone at several head types or with its vocabulary cut: the same 30 layers under the
# same calibration moments) reuses the rounding instead of repeating ~20 s of it. Keyed by content, bounded in bytes.
_ROUNDED: dict[tuple[str, float, str, str], torch.Tensor] = {}
_ROUNDED_MAX_BYTES = 2 << 30


def _digest(t: torch.Tensor) -> str:
    import hashlib

    a = t.detach().contiguous().cpu().numpy()
    h = hashlib.blake2b(digest_size=16)
    h.update(str((a.dtype, a.shape)).encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _remember(key: tuple[str, float, str, str], rounded: torch.Tensor) -> None:
    _ROUNDED[key] = rounded
    while len(_ROUNDED) > 1 and sum(t.numel() * t.element_size() for t in _ROUNDED.values()) > _ROUNDED_MAX_BYTES:
        del _ROUNDED[next(iter(_ROUNDED))]  # the oldest first


# ---------------------------------------------------------------------------- GPTQ's values as llama.cpp's blocks

# The 4/5-bit block types GPTQ rounds onto: bytes per 32-value block (an fp16 scale, q5_0's 32 high bits, 16 bytes of
# low nibbles). A block's index j and j + 16 share byte j of the nibbles (low, high), as llama.cpp packs them.
BLOCK_BYTES = {"q4_0": 18, "q5_0": 22, "iq4_nl": 18}
# An all-zero block's scale as llama.cpp stores it: q4_0 / q5_0 divide +0 by their negative grid end (-0); iq4_nl
# returns early with +0.
ZERO_SCALE = {"q4_0": -0.0, "q5_0": -0.0, "iq4_nl": 0.0}


@torch.no_grad()
def encode_rounded(values: torch.Tensor, kind: str) -> np.ndarray | None:
    """A matrix GPTQ rounded onto `kind`'s grid (`gptq`'s output, (rows, cols)) as llama.cpp's own blocks of that type:
    uint8 (rows, cols / 32 * BLOCK_BYTES[kind]), the bytes llama.cpp's quantizer writes for it (it would search each
    block's scale and land on GPTQ's: the block's largest value is the grid's end times the fp16 scale). Each block's
    scale is read back from that value and every value's index from the scale; None when any value is not exactly
    its index times its block's scale (not on the grid: the caller leaves the file to llama.cpp's quantizer)."""
    if kind not in BLOCK_BYTES:
        raise ValueError(f"GPTQ values are encoded as {', '.join(BLOCK_BYTES)} blocks; got {kind!r}")
    grid = GRIDS[kind]
    w = values.detach().float()
    rows, cols = w.shape
    if cols % BLOCK:
        return None
    blocks = w.reshape(rows, cols // BLOCK, BLOCK)
    top = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))[..., 0]
    d = (top / grid.extreme).to(torch.float16)
    d = torch.where(d == 0, torch.full_like(d, ZERO_SCALE[kind]), d)  # an all-zero block's, as llama.cpp writes it
    d32 = d.float()[..., None]
    grid_values, mids = grid.points()
    zero = d32 == 0
    idx = torch.bucketize(torch.where(zero, torch.zeros_like(blocks), blocks / torch.where(zero, 1.0, d32)), mids)
    if not torch.equal(grid_values[idx] * d32, blocks):  # GPTQ computed each value as exactly this product
        return None
    q = idx.to(torch.uint8).numpy()  # (rows, blocks, 32), each < 32
    scale = d.numpy().view(np.uint8).reshape(rows, -1, 2)
    low = (q[..., :16] & 0x0F) | ((q[..., 16:] & 0x0F) << 4)
    parts = [scale, low]
    if kind == "q5_0":  # bit j of the block's little-endian uint32: the 5th bit of value j
        high = np.packbits(q >> 4, axis=-1, bitorder="little")  # (rows, blocks, 4)
        parts = [scale, high, low]
    return np.concatenate(parts, axis=-1).reshape(rows, -1)
