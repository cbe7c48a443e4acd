"""A latency model: per-layer timings measured once on this machine, summed per candidate.

As HAT and nn-Meter do, a model's latency is predicted from a lookup table instead of timing it:

    latency(input of width w) = stem(D, w) + sum over kept layers of layer(D, h_i, f_i, w)

- `stem(D, w)`: the model with no transformer layer (embeddings, pooler, classifier) at hidden D.
- `layer(D, h, f, w)`: one layer with h heads and FFN width f at hidden D, timed as
  (k layers - no layer) / k on small-vocabulary copies.
  Attention and FFN run one after the other, so a layer is split into an attention line (every h
  at f0) and an FFN line (every f at h0): layer(h, f) = layer(h, f0) + layer(h0, f) - layer(h0, f0).
  Values between measured points are interpolated linearly (h, f, D, w).
- w: the padded width of each forward of the timing sample, batch as in latency.batch_size.

Every model of the table is timed as a candidate is measured (nas.cost.latency.PairedTimer.measure): in
alternating rounds with the base, at the same width, and kept as its ratio to the base in the same rounds
(the median over rounds) times the base's median at that width over the whole build. Timed back to back
instead (each model beside its small no-layer twin), the table missed what a forward pays right after another
model's: on an AVX2-only EPYC (512 KB of L2 a core) a 1-layer D128 cut ran 0.20 ms back to back and 0.33 ms
right after the base, a 3-layer D256 cut 1.40 and 1.67 ms (experiments/latency_table/after_the_base.py), a cost
the anchors' fit of one scale and one overhead could not place; and its absolute milliseconds, taken minutes apart
on a machine whose speed drifts, disagreed with each other. Anchors were off by up to 28.5% there (experiments/latency_table). For the same reason
the calibration (`calibrate`) fits the anchors' speedups, ratios taken in the same rounds, not their milliseconds.

Every model is exported, quantized and run exactly as a candidate is (nas.cost.latency.runtime_pass,
the fast exporter), so the table holds this runtime and precision. It is cached under
cache_dir/latency_table, keyed by this machine (CPU, cores, library versions), the settings that
change a timing, the base's family and dimensions, and the grid: another machine builds its own.
Prediction is a sum: microseconds per candidate. Its fidelity against measured paired speedups on
held-out shapes: experiments/latency_table.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.cost.latency import LatencySettings, num_threads, runtime_pass
from nas.models.registry import base_shape, family_for
from nas.spec import SubnetSpec
from nas.util import cache_key

TABLE_VERSION = 3  # 2: each model timed in alternating rounds with the base, as ratios to it; 3: fitted on speedups
SMALL_VOCAB = 128  # the layer models' vocabulary: the stem's gather cost cancels in the difference
# Sizes timed per axis at most (the rest interpolated): MiniLM's triple space then times 3 hidden sizes x
# (6 head counts + 7 FFN widths) instead of 5 x (6 + 12): 45 models instead of 100 (experiments/latency_table).
GRID_POINTS = {"hidden": 3, "heads": 6, "ffn": 7}


def machine_fingerprint() -> dict[str, Any]:
    """What a timing depends on besides the model: the CPU, its cores, the libraries."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import onnxruntime  # heavy: only where a table is built or read

    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def _interp(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    """Linear interpolation, extrapolated from the two nearest points outside the range."""
    if len(xs) == 1:
        return float(ys[0])
    i = int(np.clip(np.searchsorted(xs, x), 1, len(xs) - 1))
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


@dataclass
class LatencyTable:
    """Milliseconds per forward of a batch of latency.batch_size inputs at each width."""

    widths: tuple[int, ...]
    stem: dict[int, list[float]]  # hidden -> ms at each width
    attention: dict[int, dict[int, list[float]]]  # hidden -> heads -> layer ms at (heads, f0)
    ffn: dict[int, dict[int, list[float]]]  # hidden -> ffn -> layer ms at (h0, ffn)
    h0: int
    f0: int
    # measured ms per input ~= scale x (table sum + overhead per forward), fitted on anchor models timed
    # the measured way (paired with the base). The table's own models are timed that way too, so the fit
    # stays near scale 1, overhead 0: it corrects what is left. Speedups depend on overhead only.
    scale: float = 1.0
    overhead: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    # -- prediction ----------------------------------------------------------------------
    def _at_width(self, series: Sequence[float], width: int) -> float:
        return _interp(width, self.widths, series)

    def _over(self, table: Mapping[int, Any], key: int, value: Callable[[Any], float]) -> float:
        keys = sorted(table)
        return _interp(key, keys, [value(table[k]) for k in keys])

    def layer_ms(self, hidden: int, heads: int, ffn: int, width: int) -> float:
        def at(d_rows: Mapping[int, list[float]], key: int) -> float:
            return self._over(d_rows, key, lambda s: self._at_width(s, width))

        def one(d: int) -> float:  # never below 0: far from the lines' crossing, noise could make it so
            return max(0.0, at(self.attention[d], heads) + at(self.ffn[d], ffn) - at(self.ffn[d], self.f0))

        return _interp(hidden, sorted(self.attention), [one(d) for d in sorted(self.attention)])

    def stem_ms(self, hidden: int, width: int) -> float:
        return self._over(self.stem, hidden, lambda s: self._at_width(s, width))

    def forward_ms(self, spec: SubnetSpec, width: int) -> float:
        """One forward at this padded width: the table sum (entries memoised: a prediction is a few lookups)."""
        memo = self.__dict__.setdefault("_memo", {})

        def get(key: tuple[int, ...], compute: Callable[[], float]) -> float:
            if key not in memo:
                memo[key] = compute()
            return memo[key]

        total = get((spec.hidden, width), lambda: self.stem_ms(spec.hidden, width))
        for h, f in zip(spec.heads, spec.ffn):
            total += get((spec.hidden, h, f, width), lambda h=h, f=f: self.layer_ms(spec.hidden, h, f, width))
        return total

    def table_sum(self, spec: SubnetSpec, batches: Sequence[Mapping[str, Any]]) -> float:
        """The table's ms per input over the timing sample's batches (at the spec's cap), uncorrected."""
        n = sum(int(b["input_ids"].shape[0]) for b in batches)
        return sum(self.forward_ms(spec, int(b["input_ids"].shape[1])) for b in batches) / n

    def predict(self, spec: SubnetSpec, batches: Sequence[Mapping[str, Any]]) -> float:
        """Predicted ms per input: scale x (table sum + overhead per forward)."""
        per_input = len(batches) / sum(int(b["input_ids"].shape[0]) for b in batches)
        return self.scale * (self.table_sum(spec, batches) + self.overhead * per_input)

    def predict_model(self, model: Any, batches: Sequence[Mapping[str, Any]]) -> float:
        return self.predict(spec_of(model), batches)

    # -- storage ----------------------------------------------------------------------------
    def to_json(self) -> str:
        data = asdict(self)
        data.pop("_memo", None)
        for name in ("stem", "attention", "ffn"):
            data[name] = json.loads(json.dumps(data[name]))  # int keys become strings
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> LatencyTable:
        data = json.loads(text)

        def ints(d: Any) -> Any:
            return {int(k): ints(v) for k, v in d.items()} if isinstance(d, dict) else d

        return cls(widths=tuple(data["widths"]), stem=ints(data["stem"]), attention=ints(data["attention"]),
                   ffn=ints(data["ffn"]), h0=int(data["h0"]), f0=int(data["f0"]), scale=float(data["scale"]),
                   overhead=float(data["overhead"]), info=data.get("info", {}))


def spec_of(model: Any) -> SubnetSpec:
    """The shape a (pruned) model has, read from its modules: heads and FFN width per layer."""
    config = model.config
    shape = base_shape(config)
    heads = getattr(config, "nas_heads", None) or [shape.num_heads] * shape.num_layers
    ffn = getattr(config, "nas_ffn", None) or [shape.ffn_size] * shape.num_layers
    return SubnetSpec(layers=tuple(range(shape.num_layers)), heads=tuple(heads), ffn=tuple(ffn),
                      hidden=shape.hidden_size, context=shape.max_positions)


# ---------------------------------------------------------------------------- building


@dataclass(frozen=True)
class Grid:
    """The sizes the table holds: the search space's values (and the base's)."""

    hidden: tuple[int, ...]
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    widths: tuple[int, ...]

    @classmethod
    def for_space(cls, space: Any, shape: Any, widths: Sequence[int], *, points: Mapping[str, int] | None = None
                  ) -> Grid:
        """The space's sizes, each axis thinned to at most `points[axis]` evenly spread sizes (the ends
        kept): between them the table interpolates linearly, as a matrix product's cost grows (measured
        in experiments/latency_table). Default: GRID_POINTS."""
        points = {**GRID_POINTS, **(points or {})}

        def values(axis: str, top: int) -> tuple[int, ...]:
            found = space.axes.get(axis) if space is not None else None
            every = sorted({*(found.values if found is not None else ()), top})
            n = max(2, points.get(axis) or len(every))
            if len(every) <= n:
                return tuple(every)
            return tuple(sorted({every[round(i * (len(every) - 1) / (n - 1))] for i in range(n)}))

        return cls(hidden=values("hidden", shape.hidden_size), heads=values("heads", shape.num_heads),
                   ffn=values("ffn", shape.ffn_size), widths=tuple(sorted(set(int(w) for w in widths))))


def sample_widths(timer: Any, contexts: Sequence[int]) -> list[int]:
    """Every padded width the timing sample has at the base's cap and at each context of the space."""
    caps = {timer.base_cap, *(timer.caps(c)[0] for c in contexts)}
    return sorted({int(b["input_ids"].shape[1]) for cap in caps for b in timer.sample.batches(cap)})


def _stem_model(base: Any, hidden: int, *, small_vocab: bool) -> Any:
    shape = base_shape(base.config)
    family = family_for(base)
    model = family.prune(base, SubnetSpec(layers=(0,), heads=(shape.num_heads,), ffn=(shape.ffn_size,),
                                          hidden=hidden, context=shape.max_positions))
    family.drop_layers(model)
    if small_vocab:
        model.resize_token_embeddings(SMALL_VOCAB)
    return model


def _layer_model(base: Any, hidden: int, heads: int, ffn: int, k: int) -> Any:
    shape = base_shape(base.config)
    k = min(k, shape.num_layers)
    model = family_for(base).prune(base, SubnetSpec(layers=tuple(range(k)), heads=(heads,) * k, ffn=(ffn,) * k,
                                                    hidden=hidden, context=shape.max_positions))
    model.resize_token_embeddings(SMALL_VOCAB)
    return model


def _feeds(batch: int, widths: Sequence[int], vocab: int) -> list[dict[str, np.ndarray]]:
    out = []
    for w in widths:
        ids = (np.arange(batch * w, dtype=np.int64).reshape(batch, w) % (vocab - 2)) + 1
        out.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return out


def _timed(run: Callable[[int, int], float], i: int) -> float:
    return run(i, i + 1) * 1000.0


def paired_ratios(base: Callable[[int, int], float], model: Callable[[int, int], float], *, widths: int, reps: int,
                  base_ms: list[list[float]] | None = None) -> list[float]:
    """`model`'s time at each width as a ratio to `base`'s in the same rounds: `reps` rounds over the widths, the two
    taking turns on every forward (the one that goes first flips each round, as nas.cost.latency.paired_rounds does),
    after one untimed forward each; the median of the per-round ratios. The base's times are added to `base_ms`."""
    for i in range(widths):
        base(i, i + 1)
        model(i, i + 1)
    ratios: list[list[float]] = [[] for _ in range(widths)]
    for r in range(reps):
        for i in range(widths):
            if r % 2 == 0:
                b = _timed(base, i)
                m = _timed(model, i)
            else:
                m = _timed(model, i)
                b = _timed(base, i)
            ratios[i].append(m / b)
            if base_ms is not None:
                base_ms[i].append(b)
    return [statistics.median(x) for x in ratios]


def build_table(base: Any, grid: Grid, settings: LatencySettings, *, reps: int = 9, k: int = 2,
                calibration: Sequence[Mapping[str, Any]] | None = None,
                say: Callable[[str], None] = lambda s: None) -> LatencyTable:
    """Time the stems and the two layer lines at every hidden size of the grid, each model in alternating rounds
    with the base (see the module doc)."""
    shape = base_shape(base.config)
    h0, f0 = max(grid.heads), max(grid.ffn)  # the lines cross at the base's own layer
    batch = settings.batch_size
    t_start = time.perf_counter()
    n = len(grid.widths)
    with tempfile.TemporaryDirectory(prefix="nas_table_") as tmp, num_threads(settings.threads):
        workdir = Path(tmp)
        counter = [0]

        def session(model: Any, vocab: int) -> Callable[[int, int], float]:
            counter[0] += 1
            feeds = _feeds(batch, grid.widths, vocab)
            return runtime_pass(model, feeds, runtime=settings.runtime, precision=settings.precision,
                                threads=settings.threads, workdir=workdir, name=f"m{counter[0]}",
                                cap=max(grid.widths), quant=settings.quant, calibration=calibration,
                                fast_export=True)

        vocab = int(base.config.vocab_size)
        base_run = session(base, min(vocab, 1000))  # every model below is timed right after it, as candidates are
        base_ms: list[list[float]] = [[] for _ in range(n)]

        def ratios(run: Callable[[int, int], float]) -> list[float]:
            return paired_ratios(base_run, run, widths=n, reps=reps, base_ms=base_ms)

        stem_ratio: dict[int, list[float]] = {}
        attention_ratio: dict[int, dict[int, list[float]]] = {}
        ffn_ratio: dict[int, dict[int, list[float]]] = {}
        for d in grid.hidden:
            stem_ratio[d] = ratios(session(_stem_model(base, d, small_vocab=False), min(vocab, 1000)))
            small = ratios(session(_stem_model(base, d, small_vocab=True), SMALL_VOCAB))
            kk = min(k, shape.num_layers)

            def line(points: Sequence[tuple[int, int]]) -> list[list[float]]:
                out = []
                for h, f in points:
                    model = ratios(session(_layer_model(base, d, h, f, kk), SMALL_VOCAB))
                    out.append([max(0.0, (m - s) / kk) for m, s in zip(model, small)])
                return out

            attention_ratio[d] = dict(zip(grid.heads, line([(h, f0) for h in grid.heads])))
            ffn_ratio[d] = dict(zip(grid.ffn, line([(h0, f) for f in grid.ffn])))
            say(f"latency table: hidden {d} done ({time.perf_counter() - t_start:.0f}s)")
    # ratios to the base -> milliseconds: the base's median at each width over the whole build
    reference = [statistics.median(b) for b in base_ms]

    def ms(series: Sequence[float]) -> list[float]:
        return [r * b for r, b in zip(series, reference)]

    stem = {d: ms(v) for d, v in stem_ratio.items()}
    attention = {d: {h: ms(v) for h, v in line.items()} for d, line in attention_ratio.items()}
    ffn = {d: {f: ms(v) for f, v in line.items()} for d, line in ffn_ratio.items()}
    return LatencyTable(widths=grid.widths, stem=stem, attention=attention, ffn=ffn, h0=h0, f0=f0,
                        info={"seconds": round(time.perf_counter() - t_start, 1), "models": counter[0],
                              "reps": reps, "k": k, "timed": "paired with the base",
                              "base_ms": [round(b, 4) for b in reference]})


def anchor_specs(grid: Grid, shape: Any, contexts: Sequence[int]) -> list[SubnetSpec]:
    """Shapes spread over the latency range, timed the measured way to fit scale and overhead."""
    n = shape.num_layers
    top = max(contexts) if contexts else shape.max_positions
    low = min(contexts) if contexts else top

    def spec(layers: int, heads: int, ffn: int, hidden: int, context: int) -> SubnetSpec:
        return SubnetSpec(layers=tuple(range(layers)), heads=(heads,) * layers, ffn=(ffn,) * layers, hidden=hidden,
                          context=context)

    mid = lambda values: values[len(values) // 2]  # noqa: E731
    specs = [spec(1, min(grid.heads), min(grid.ffn), min(grid.hidden), low),
             spec(1, max(grid.heads), mid(grid.ffn), max(grid.hidden), top),
             spec(max(1, n // 2), mid(grid.heads), mid(grid.ffn), mid(grid.hidden), top),
             spec(max(1, n // 2), max(grid.heads), max(grid.ffn), max(grid.hidden), top),
             spec(n, mid(grid.heads), min(grid.ffn), max(grid.hidden), top)]
    return list(dict.fromkeys(specs))


def measure_anchors(timer: Any, specs: Sequence[SubnetSpec], *, scores: Any = None) -> list[dict[str, Any]]:
    """Each anchor shape cut from the base and measured in paired rounds by `timer` (PairedTimer.measure)."""
    base = timer.base
    return [timer.measure(family_for(base).prune(base, spec, scores), context=spec.context, name="anchor",
                          fast_export=True) for spec in specs]


def calibrate(table: LatencyTable, timer: Any, specs: Sequence[SubnetSpec], *, scores: Any = None,
              measured: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Fit table.overhead (per forward) so that the table's speedups match the anchors' speedups measured in paired
    rounds with the base by `timer` (nas.cost.latency.PairedTimer), then table.scale so that the base's predicted
    latency is its median measured one. `measured`: those measurements already taken (measure_anchors), e.g. to fit
    two tables on the same ones.

    The fit reads ratios taken in the same rounds, as the search uses the table (latency_ratio): a machine whose
    speed drifts between one anchor's rounds and the next (other work, frequency) moves their milliseconds, not
    their ratios. Fitted on milliseconds, the base's own latency beside each anchor differed by up to 2x on a busy
    2-core EPYC, and the fit's error landed on the anchors. The scale changes no speedup: it only puts predictions in
    this machine's milliseconds (search.max_latency_ms)."""
    full = SubnetSpec.full(base_shape(timer.base.config))
    if measured is None:
        measured = measure_anchors(timer, specs, scores=scores)

    def forwards(batches: Sequence[Mapping[str, Any]]) -> float:  # forwards per input
        return len(batches) / sum(int(b["input_ids"].shape[0]) for b in batches)

    base_batches = timer.sample.batches(timer.base_cap)
    s_b, p_b = table.table_sum(full, base_batches), forwards(base_batches)
    s = np.array([table.table_sum(spec, timer.sample.batches(timer.caps(spec.context)[0])) for spec in specs])
    p = np.array([forwards(timer.sample.batches(timer.caps(spec.context)[0])) for spec in specs])
    r = np.array([1.0 / float(m["speedup"]) for m in measured])  # candidate / base, measured
    # r = (s + o p) / (s_b + o p_b)  <=>  s - r s_b = o (r p_b - p): linear in o; residuals relative to the
    # candidate's measured time (r s_b), so small anchors count as much as large ones
    a, b, w = r * p_b - p, s - r * s_b, 1.0 / (r * s_b) ** 2
    overhead = float(np.sum(w * a * b) / np.sum(w * a * a)) if np.sum(w * a * a) > 0 else 0.0
    overhead = max(overhead, min(0.0, -0.5 * float(np.min(s / p))))  # never a negative latency
    predicted = (s_b + overhead * p_b) / (s + overhead * p)  # speedups
    errors = predicted * r - 1.0  # predicted / measured speedup - 1
    base_ms = float(np.median([float(m["base_latency_ms"]) for m in measured]))
    table.overhead = overhead
    table.scale = base_ms / (s_b + overhead * p_b)
    return {"anchors": [spec.describe() for spec in specs], "scale": table.scale, "overhead_ms": table.overhead,
            "max_anchor_error": float(np.max(np.abs(errors))), "fitted": "speedups (ratios to the base)",
            "anchor_errors": [round(float(e), 4) for e in errors],
            "measured_speedups": [round(float(m["speedup"]), 4) for m in measured],
            "base_ms_range": [round(float(min(m["base_latency_ms"] for m in measured)), 4),
                              round(float(max(m["base_latency_ms"] for m in measured)), 4)]}


def table_key(base: Any, grid: Grid, settings: LatencySettings, *, reps: int, k: int) -> str:
    shape = base_shape(base.config)
    timing = {name: getattr(settings, name) for name in ("runtime", "precision", "threads", "batch_size")}
    if settings.precision == "int8":
        timing["quant"] = asdict(settings.quant)
    return cache_key(**{"version": TABLE_VERSION, "machine": machine_fingerprint(), "timing": timing,
                      "model_type": base.config.model_type, "shape": asdict(shape),
                      "vocab": int(base.config.vocab_size), "grid": asdict(grid), "reps": reps, "k": k})


def cached_table(timer: Any, grid: Grid, *, cache_dir: str | Path | None, contexts: Sequence[int] = (), scores: Any = None,
                 reps: int = 9, k: int = 2, say: Callable[[str], None] = lambda s: None) -> LatencyTable:
    """The table for this machine, settings, base and grid: read from the cache, or built, calibrated
    on anchor shapes timed by `timer` (nas.cost.latency.PairedTimer) and cached."""
    base, settings = timer.base, timer.settings
    calibration = timer.calibration.batches(timer.base_cap) if timer.calibration is not None else None
    key = table_key(base, grid, settings, reps=reps, k=k) + f"-{cache_key(**{'sample': timer.record()})[:8]}"
    path = Path(cache_dir) / "latency_table" / f"{key}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        table = LatencyTable.from_json(path.read_text())
        table.info = {**table.info, "cached": True, "key": key}
        return table
    say(f"latency table: calibrating {len(grid.hidden)} hidden sizes x ({len(grid.heads)} head counts + "
        f"{len(grid.ffn)} FFN widths) at {len(grid.widths)} widths on this machine (once; cached)")
    table = build_table(base, grid, replace(settings, model="measured"), reps=reps, k=k, calibration=calibration,
                        say=say)
    t0 = time.perf_counter()
    fit = calibrate(table, timer, anchor_specs(grid, base_shape(base.config), contexts), scores=scores)
    say(f"latency table: scale {fit['scale']:.3f}, overhead {fit['overhead_ms']:.3f} ms per forward from "
        f"{len(fit['anchors'])} anchor shapes timed in pairs with the base (largest anchor speedup error "
        f"{fit['max_anchor_error']:.1%}; {time.perf_counter() - t0:.0f}s)")
    table.info = {**table.info, "machine": machine_fingerprint(), "key": key, "calibration": fit}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(table.to_json())
        tmp.replace(path)
    table.info["cached"] = False
    return table
