"""Closed-form healing of decoder cuts (Llama family), from calibration text, before any training.

A cut decoder misses what its removed heads, key/value groups, FFN neurons and layers wrote into the
residual stream. Healing refits, layer by layer, the two matrices that write into it (the attention
output projection o_proj and the FFN output projection down_proj) so that the cut model's residual
stream follows the unpruned model's on calibration tokens from the training split:

- `bias` (FLAP's compensation, An et al. 2024): each output projection keeps its weights and gets the
  bias that matches the unpruned stream on average (for a cut alone: W[:, removed] @ mean(input of the
  removed channels); here it also absorbs the drift that earlier cuts left in the stream).
- `lsq`: a ridge least-squares refit of each output projection's kept columns and its bias, pulled
  towards the current weights (`ridge`, relative to the mean diagonal of the inputs' covariance).

Layer by layer, in order: the cut model's own stream x enters kept layer j (base layer b); its attention
output projection is fitted to the unpruned stream after base layer b's attention, and its FFN output
projection to the unpruned stream entering the next kept layer, so a kept layer followed by removed
layers also absorbs, linearly, what those layers added. The next layer then sees the corrected stream.
Layers whose attention is replaced by one linear map of the normed stream (`attn: linear`, llama.cpp's
deci "linear attention") get that map fitted the same way (no bias: llama.cpp's linear attention has
none); layers without attention (`attn: none`) leave it all to their FFN.

Every fit is one pass of the cut model over the calibration blocks; the unpruned model's streams
(`Calibration`) are computed once per base and reused by every cut. Biases are written into GGUF files
(`attn_output.bias`, `ffn_down.bias`: llama.cpp's llama and deci graphs load them); a family whose llama.cpp
graph has no such biases (Family.output_biases: Qwen3, SmolLM3) is refitted without them (`bias` then changes
nothing).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nas.models.decoder import attention_kind, backbone, causal_inputs, is_tied
from nas.models.registry import base_shape, family_for
from nas.models.slicing import kept_units

log = logging.getLogger(__name__)

METHODS = ("none", "bias", "lsq")
SCOPES = ("cut", "all")


@dataclass(frozen=True)
class HealSettings:
    method: str = "lsq"
    blocks: int = 48  # calibration blocks of the training split (max_length tokens each)
    # towards the current weights, relative to the mean input variance. Measured on SmolLM2 (4 layers dropped /
    # FFN 1536 -> 1152, validation perplexity; base 45.9): 32 blocks ridge 0.2 51.1 / 57.5, 0.5 50.6 / 56.7, 1.0
    # 50.6 / 56.5; 96 blocks ridge 0.2 49.9 / 54.0, 0.5 49.8 / 53.9, 1.0 50.0 / 54.0. More text helps; it costs
    # time: a 4-layer cut heals in 17 s on 32 blocks, 28 s on 64, 40 s on 96.
    ridge: float = 0.5
    scope: str = "all"  # all: every kept layer's projections follow the unpruned stream | cut: only cut layers
    batch_size: int = 16  # blocks per forward
    # none: every token alike (the fits' grams are then the inputs' second moments, reused for GPTQ) | rms: each
    # token's error relative to its stream's scale (what the next RMSNorm reads; measured no better: 52.7 vs 52.7
    # validation perplexity for 4 layers dropped, 75.0 vs 75.5 for 8, 59.3 vs 59.1 for FFN 1152)
    weighting: str = "none"

    def validate(self) -> HealSettings:
        if self.method not in METHODS:
            raise ValueError(f"prune.heal={self.method!r} is not known; allowed: {', '.join(METHODS)}, auto")
        if self.scope not in SCOPES:
            raise ValueError(f"prune.heal_scope={self.scope!r} is not known; allowed: {', '.join(SCOPES)}")
        for name in ("blocks", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"prune.heal_{name}={value!r} must be an integer >= 1")
        if isinstance(self.ridge, bool) or not isinstance(self.ridge, (int, float)) or not self.ridge >= 0:
            raise ValueError(f"prune.ridge={self.ridge!r} must be a number >= 0")
        return self

    @property
    def active(self) -> bool:
        return self.method != "none"


def heal_settings(prune: Any) -> HealSettings:
    """From the config's `prune:` node: heal (auto | none | bias | lsq; auto is lsq), heal_blocks, heal_ridge."""
    prune = dict(prune or {})
    method = str(prune.get("heal", "auto"))
    settings = HealSettings(method="lsq" if method == "auto" else method, blocks=prune.get("heal_blocks", 48),
                            ridge=prune.get("heal_ridge", 0.5))
    return settings.validate()


@dataclass
class Calibration:
    """The unpruned model's residual stream on calibration blocks: `streams[i]` enters base layer i
    (`streams[L]` leaves the last one) and `mids[i]` is base layer i's stream after its attention; each
    (tokens, hidden), float32."""

    ids: torch.Tensor  # (blocks, tokens)
    streams: list[torch.Tensor]
    mids: list[torch.Tensor]
    seconds: float = 0.0

    @classmethod
    @torch.no_grad()
    def of(cls, base: nn.Module, ids: torch.Tensor, *, batch_size: int = 16) -> Calibration:
        t0 = time.perf_counter()
        body = backbone(base)
        n_layers = len(body.layers)
        streams: list[list[torch.Tensor]] = [[] for _ in range(n_layers + 1)]
        mids: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        hooks = [layer.post_attention_layernorm.register_forward_pre_hook(
            lambda m, args, i=i: mids[i].append(args[0].detach().reshape(-1, args[0].shape[-1]).float()))
            for i, layer in enumerate(body.layers)]
        was_training = base.training
        base.eval()
        try:
            for start in range(0, ids.shape[0], batch_size):
                # the whole model, head included: hooks a caller holds (input moments for the quantizer) see it all
                out = base(input_ids=ids[start:start + batch_size], output_hidden_states=True)
                hidden = out.hidden_states  # (layers + 1) x (b, t, d); the last has the final norm applied
                for i in range(n_layers):
                    streams[i].append(hidden[i].reshape(-1, hidden[i].shape[-1]).float())
                streams[n_layers].append(_last_stream(body, hidden, mids, n_layers))
        finally:
            for h in hooks:
                h.remove()
            base.train(was_training)
        return cls(ids=ids, streams=[torch.cat(s) for s in streams], mids=[torch.cat(m) for m in mids],
                   seconds=time.perf_counter() - t0)

    def influence(self) -> dict[str, torch.Tensor]:
        """Per base layer, 1 - cos(in, out) over calibration tokens (ShortGPT's block influence) of the whole
        layer (`layer`) and of its attention alone (`attention`: stream before vs after the attention)."""
        def one_minus_cos(a: torch.Tensor, b: torch.Tensor) -> float:
            return float(1 - nn.functional.cosine_similarity(a, b, dim=-1).mean())
        n = len(self.mids)
        return {"layer": torch.tensor([one_minus_cos(self.streams[i], self.streams[i + 1]) for i in range(n)]),
                "attention": torch.tensor([one_minus_cos(self.streams[i], self.mids[i]) for i in range(n)])}


def _last_stream(body: nn.Module, hidden: Sequence[torch.Tensor], mids: list[list[torch.Tensor]], n: int) -> torch.Tensor:
    """The stream leaving the last layer, before the final norm (HF's last hidden state has the norm applied):
    its FFN recomputed from the stream after its attention (`forward` directly: the recording hook stays out)."""
    layer = body.layers[n - 1]
    mid = mids[n - 1][-1].reshape(hidden[n - 1].shape)
    return (mid + layer.mlp(layer.post_attention_layernorm.forward(mid))).reshape(-1, mid.shape[-1]).float()  # no hooks


@dataclass
class LinearFit:
    """Sufficient statistics of min_W,c sum_t |W z_t + c - r_t|^2 + lam |W - W0|^2, accumulated over tokens."""

    zz: torch.Tensor  # (k, k)
    rz: torch.Tensor  # (D, k)
    z: torch.Tensor  # (k,)
    r: torch.Tensor  # (D,)
    n: float = 0.0  # total token weight

    @classmethod
    def empty(cls, k: int, d: int) -> LinearFit:
        z = dict(dtype=torch.float64)
        return cls(torch.zeros(k, k, **z), torch.zeros(d, k, **z), torch.zeros(k, **z), torch.zeros(d, **z))

    def add(self, z: torch.Tensor, r: torch.Tensor, weight: torch.Tensor) -> None:
        """Tokens z (n, k) with targets r (n, D), each token weighted by `weight` (n,)."""
        z32, r32, w = z.float(), r.float(), weight.float()[:, None]
        zw = z32 * w
        self.zz += (zw.T @ z32).double()  # float32 products, float64 sums
        self.rz += (r32.T @ zw).double()
        self.z += zw.sum(0).double()
        self.r += (r32 * w).sum(0).double()
        self.n += float(w.sum())

    def solve(self, w0: torch.Tensor, *, method: str, ridge: float, intercept: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, c): `bias` keeps W0 and fits c; `lsq` fits both (c = 0 without an intercept)."""
        w0 = w0.double()
        zbar, rbar = self.z / self.n, self.r / self.n
        if method == "bias":
            return w0, rbar - w0 @ zbar
        zz, rz = self.zz, self.rz
        if intercept:  # centre: the bias absorbs the means
            zz = zz - self.n * torch.outer(zbar, zbar)
            rz = rz - self.n * torch.outer(rbar, zbar)
        lam = ridge * float(zz.diagonal().mean().clamp_min(1e-12))
        eye = torch.eye(zz.shape[0], dtype=torch.float64)
        w = torch.linalg.solve(zz + lam * eye, (rz + lam * w0).T).T  # (D, k)
        c = rbar - w @ zbar if intercept else torch.zeros_like(rbar)
        return w, c


@dataclass
class HealReport:
    """Squared error of the cut model's stream against the unpruned one, per fitted projection, before and
    after its fit (on the calibration tokens), and the seconds it took."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    # The healed model's input second moments E[x x^T] on the calibration tokens, per GGUF tensor name
    # (nas.deploy.imatrix.input_moments' form), read off the same pass: what GPTQ rounds under, and (their
    # diagonal) the importance matrix llama.cpp's quantizer weighs by. Matrices reading one input share a tensor.
    moments: dict[str, torch.Tensor] = field(default_factory=dict)

    def ratio(self) -> float:
        before = sum(e["before"] for e in self.errors)
        return sum(e["after"] for e in self.errors) / before if before > 0 else 1.0


def _set(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    linear.weight.data = weight.to(linear.weight.dtype).contiguous()
    if bias is None:
        return
    if linear.bias is None:
        linear.bias = nn.Parameter(bias.to(linear.weight.dtype))
    else:
        linear.bias.data = bias.to(linear.bias.dtype)


def _error(fit: LinearFit, w: torch.Tensor, c: torch.Tensor, zz: torch.Tensor, rr: float) -> float:
    """sum_t |W z + c - r|^2 from the moments (zz uncentred)."""
    return float((w @ zz * w).sum() + 2 * (c @ (w @ fit.z)) + fit.n * c @ c - 2 * (w * fit.rz).sum() - 2 * c @ fit.r + rr)


@torch.no_grad()
def heal(model: nn.Module, base: nn.Module, spec: Any, scores: Any, calibration: Calibration,
         settings: HealSettings) -> HealReport:
    """Refit `model` (the base cut to `spec`, keeping the units `scores` rank highest) in place; see the module."""
    report = HealReport()
    if not settings.active:
        return report
    t0 = time.perf_counter()
    shape = base_shape(base.config)
    kept = kept_units(shape, spec, scores)
    hidden = kept.hidden
    body = backbone(model)
    n_base = len(backbone(base).layers)
    biases = family_for(base).output_biases  # its llama.cpp graph loads attn_output / ffn_down biases
    was_training = model.training
    model.eval()
    ids = calibration.ids
    chunks = [(s, min(s + settings.batch_size, ids.shape[0])) for s in range(0, ids.shape[0], settings.batch_size)]
    tokens = ids.shape[1]
    def seen(names: tuple[str, ...], rows: list[torch.Tensor], fit: LinearFit | None = None) -> None:
        """The input second moment of the matrices `names`: a fit's own (unweighted) gram, or computed here."""
        if fit is not None and settings.weighting == "none":
            moment = (fit.zz / fit.n).float()
        else:
            flat = [r.reshape(-1, r.shape[-1]).float() for r in rows]
            moment = (sum((x.T @ x).double() for x in flat) / sum(x.shape[0] for x in flat)).float()
        report.moments.update(dict.fromkeys(names, moment))

    # the pass runs in fp32: bf16 autocast took 4 dropped layers from 50.1 to 52.3 validation perplexity for 20% less time
    try:
        stream = [body.embed_tokens(ids[a:b]) for a, b in chunks]  # (b, t, D') per chunk
        extras = [causal_inputs(body, s) for s in stream]
        for j, layer in enumerate(body.layers):
            b = spec.layers[j]
            nxt = spec.layers[j + 1] if j + 1 < len(spec.layers) else n_base
            kind = attention_kind(layer)
            cut = _is_cut(spec, j, shape, nxt != b + 1) or kind != "full"
            refit = settings.scope == "all" or cut
            # ---- attention
            if kind == "none":
                mids = stream
            else:
                att = layer.self_attn
                proj = att.o_proj
                normed = [layer.input_layernorm(s) for s in stream]
                if kind == "linear":
                    zs = [n.reshape(-1, n.shape[-1]) for n in normed]
                else:
                    zs = [_projection_input(att, n, mask, pe) for n, (mask, pe) in zip(normed, extras, strict=True)]
                    seen(tuple(f"blk.{j}.{t}.weight" for t in ("attn_q", "attn_k", "attn_v")), normed)  # one input
                fit = None
                if refit:
                    # a linear replacement has no weights to keep: it is always fitted (without a bias)
                    how = settings if kind != "linear" else HealSettings(**{**settings.__dict__, "method": "lsq"})
                    fit = _fit(report, proj, zs, [s.reshape(-1, s.shape[-1]) for s in stream],
                               calibration.mids[b][:, hidden], chunks, tokens, how,
                               intercept=biases and kind != "linear", where=(j, "attention"))
                mids = [s + proj(z).reshape(s.shape) for s, z in zip(stream, zs, strict=True)]
                seen((f"blk.{j}.attn_output.weight",), zs, fit)
            # ---- FFN
            mlp = layer.mlp
            normed = [layer.post_attention_layernorm(m) for m in mids]
            us = [_down_input(mlp, n) for n in normed]
            seen((f"blk.{j}.ffn_gate.weight", f"blk.{j}.ffn_up.weight"), normed)  # gate and up read one input
            target = calibration.streams[nxt][:, hidden]
            fit = None
            if refit:
                fit = _fit(report, mlp.down_proj, us, [m.reshape(-1, m.shape[-1]) for m in mids], target, chunks,
                           tokens, settings, intercept=biases, where=(j, "ffn"))
            stream = [m + mlp.down_proj(u).reshape(m.shape) for m, u in zip(mids, us, strict=True)]
            seen((f"blk.{j}.ffn_down.weight",), us, fit)
        head = getattr(model, "lm_head", None)
        if isinstance(head, nn.Linear):
            seen(("token_embd.weight" if is_tied(model) else "output.weight",), [body.norm(s) for s in stream])
    finally:
        model.train(was_training)
    report.seconds = time.perf_counter() - t0
    log.debug("heal %s: stream error x%.3f in %.1fs", settings.method, report.ratio(), report.seconds)
    return report


def _is_cut(spec: Any, j: int, shape: Any, gap_after: bool) -> bool:
    full_heads = spec.heads[j] == shape.num_heads and (spec.kv_heads is None or spec.kv_heads[j] == shape.num_kv_heads)
    return gap_after or not full_heads or spec.ffn[j] != shape.ffn_size or spec.hidden != shape.hidden_size


def _fit(report: HealReport, proj: nn.Linear, inputs: list[torch.Tensor], streams: list[torch.Tensor],
         target: torch.Tensor, chunks: list[tuple[int, int]], tokens: int, settings: HealSettings, *,
         intercept: bool, where: tuple[int, str]) -> LinearFit:
    """Fit `proj` so that stream + proj(input) follows `target` (rows of all chunks in order); returns the fit's
    statistics (its gram is the input's second moment when tokens are not weighted)."""
    w0 = proj.weight.detach().double()
    b0 = proj.bias.detach().double() if proj.bias is not None else torch.zeros(w0.shape[0], dtype=torch.float64)
    fit = LinearFit.empty(w0.shape[1], w0.shape[0])
    rr = 0.0
    for z, s, (a, b) in zip(inputs, streams, chunks, strict=True):
        goal = target[a * tokens:b * tokens]
        r = goal - s  # what the projection should write
        # the next layer reads the stream through an RMSNorm: an error counts relative to its token's scale
        weight = 1.0 / goal.pow(2).mean(-1).clamp_min(1e-6) if settings.weighting == "rms" else torch.ones(len(r))
        fit.add(z.reshape(-1, z.shape[-1]), r, weight)
        rr += float((r.double() ** 2 * weight.double()[:, None]).sum())
    w, c = fit.solve(w0, method=settings.method, ridge=settings.ridge, intercept=intercept)
    before = _error(fit, w0, b0, fit.zz, rr)
    after = _error(fit, w, c, fit.zz, rr)
    if after < before:  # never make the fit worse than the weights it started from
        _set(proj, w, c if intercept else None)
        report.errors.append({"layer": where[0], "sublayer": where[1], "before": before, "after": after})
    return fit


def _projection_input(att: nn.Module, normed: torch.Tensor, mask: Any, pe: Any) -> torch.Tensor:
    """The attention's heads, concatenated: what o_proj multiplies (captured by running the attention)."""
    box: dict[str, torch.Tensor] = {}

    def grab(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        box["z"] = args[0]

    hook = att.o_proj.register_forward_pre_hook(grab)
    try:
        att(hidden_states=normed, attention_mask=mask, position_embeddings=pe)
    finally:
        hook.remove()
    return box["z"].reshape(-1, box["z"].shape[-1])


def _down_input(mlp: nn.Module, normed: torch.Tensor) -> torch.Tensor:
    u = mlp.act_fn(mlp.gate_proj(normed)) * mlp.up_proj(normed)
    return u.reshape(-1, u.shape[-1])
