"""Measured cost of a model: latency timed in pairs with the base, FLOPs per input, size.

One definition of latency and speedup for the whole project (search, export, final
training, benchmarks), owned by `PairedTimer`:

- inputs: `real` (default) times a fixed, seeded sample of the task's own texts (never the
  test split), each tokenized exactly as the model sees it, truncated at its context;
  `fixed` times random token ids padded to the full context (the old rule, for comparing
  with papers that pad to a fixed length).
- batch 1 runs one input per forward, no padding; batch B > 1 groups consecutive inputs of
  the sample and pads them to the longest of the group, as a server without bucketing would.
- a round runs the whole sample once on each side, alternating base and candidate on every
  input (base x1, candidate x1, base x2, candidate x2, ...; the side that goes first flips
  each round), in the same process, so a slower or busier machine moves both alike. Measured
  here: passes of the whole sample alternated as blocks (~150 ms apart) gave ratios 0.80-1.37
  for a shape doing identical work; alternating per input, 0.99-1.03. Per round, the ratio of
  the two sides' totals; the speedup is the median over rounds, with p10 / p90 beside it. The
  time per input is a side's total divided by the sample size. The cost of alternating: the
  base's forward evicts a small candidate's weights from cache, so small models read up to
  ~10% slower than they run alone (the figure errs low, never high); `chunk` > 1 alternates
  in groups of that many inputs (less of that bias, more noise).
- runtime: `torch` (eager), `onnxruntime` (the model exported to ONNX, timed with an
  InferenceSession at the same thread count) or `llamacpp` (a causal LM written as GGUF by
  nas.deploy.gguf, decoded by llama.cpp through llama-cpp-python, nas.deploy.llamacpp); precision:
  `fp32`, or `int8` (onnxruntime only: the exported model quantized by nas.deploy.quantize), or a
  GGUF type (`f16`, `q8_0`, `q4_0`; llama.cpp only). Speedups differ by runtime and precision: both
  are named with every figure, and so is the baseline (`BASELINES`): the base in torch fp32, in the
  same runtime at fp32, or in the same runtime and precision (what quantization alone gives).
- model: `measured` times every candidate as above; `table` predicts its latency from a lookup
  table of per-layer timings calibrated on this machine (nas.cost.table), in microseconds. Final
  members, exports and benchmarks are always measured.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from nas.cost.generation import check, generation_pass, prompt_cap, resolve_mode
from nas.cut.vocab import tokenizer_for
from nas.data.tasks import token_lengths
from nas.deploy.gguf import GGUF_TYPES, carried_tokenizer, write_gguf
from nas.deploy.gguf_quant import QUANT_TYPES, check_precision, split_precision
from nas.deploy.imatrix import check_split, diagonal
from nas.deploy.llamacpp import LlamaCppPass, llama_cpp_available, llama_cpp_reason
from nas.deploy.onnx import export_onnx, onnx_session
from nas.deploy.quantize import PRECISIONS, QuantSettings, quantize_onnx
from nas.models.registry import base_shape

INPUT_MODES = ("real", "fixed")
GGUF_PRECISIONS = tuple(t for t in GGUF_TYPES if t != "f32")
ALL_PRECISIONS = (*PRECISIONS, *GGUF_PRECISIONS)
RUNTIMES = ("torch", "onnxruntime", "llamacpp")
# what each runtime runs at: llama.cpp reads GGUF files (nas.deploy.gguf; fp32 is GGUF f32)
RUNTIME_PRECISIONS = {"torch": ("fp32",), "onnxruntime": PRECISIONS, "llamacpp": ("fp32", *GGUF_PRECISIONS)}


def is_gguf_precision(precision: str) -> bool:
    """A GGUF type llama.cpp runs (f16, a quantization type, or one with its own head type: iq4_nl_head_q5_0)."""
    try:
        check_precision(precision, allowed_bodies=GGUF_PRECISIONS)
    except ValueError:
        return False
    return True


def precision_known(runtime: str, precision: str) -> bool:
    return precision in RUNTIME_PRECISIONS[runtime] or (runtime == "llamacpp" and is_gguf_precision(precision))
LATENCY_MODELS = ("measured", "table")
ROUNDINGS = ("gptq", "llamacpp")  # how quantized GGUF weights are rounded (latency.rounding)
# The three baselines a speedup is taken over, by name (printed and stored beside every figure).
BASELINES = {
    "torch_fp32_base": "the unpruned base in torch fp32",
    "runtime_fp32_base": "the unpruned base in the same runtime at fp32",
    "quantized_base": "the unpruned base in the same runtime and precision (quantization alone)",
    "reference_base": "the unpruned base in the same runtime at the run's reference precision (latency.precision)",
}
SAMPLE_SPLITS = ("validation", "train")
MAX_POOL = 5000  # texts whose lengths are read to stratify the sample


@dataclass(frozen=True)
class LatencySettings:
    inputs: str = "real"  # real | fixed
    runtime: str = "torch"  # torch | onnxruntime | auto (onnxruntime for classifiers, torch for LMs)
    batch_size: int = 1
    seq_len: int | None = None  # fixed inputs only: None times each model at its own context (capped at max_length)
    threads: int = 1
    sample_size: int = 8  # inputs per pass, stratified by length
    rounds: int = 3  # paired (base, candidate) passes per measurement
    warmup: int = 2  # untimed forwards of each side first
    chunk: int = 1  # inputs (batches) run by one side before the other takes its turn
    seed: int = 0  # which texts the sample holds
    split: str = "validation"  # where the sample's texts come from (never the test split)
    generation: str = "auto"  # causal LMs (nas.cost.generation): prefill | decode | generate; auto: decode for LM tasks
    new_tokens: int = 16  # decode / generate: greedy tokens generated per prompt
    precision: str = "fp32"  # fp32 | int8 (onnxruntime; nas.deploy.quantize) | auto (int8 in onnxruntime, else fp32)
    quantization: str = "dynamic"  # int8: dynamic | static (QDQ, calibrated on training inputs)
    activations: str = "uint8"  # int8 activations: uint8 | int8 (static only)
    per_channel: bool = True  # int8 weights: a scale per output channel
    keep_fp32: tuple[str, ...] = ()  # module-path patterns kept in fp32 in an int8 model
    calibration: int = 64  # static int8: training inputs that fix the activation ranges
    model: str = "measured"  # measured | table (nas.cost.table: predicted from per-layer timings) | auto (table
    #   for classifiers, measured for LMs)
    imatrix: str | None = "train"  # llama.cpp: the quantizer's importance matrix from this split (train only) | None
    rounding: str = "gptq"  # llama.cpp: gptq (error-compensating rounding onto its grids first, nas.deploy.gptq) |
    #   llamacpp (its own block-by-block rounding, weighted by the importance matrix)

    def __post_init__(self) -> None:
        keep = self.keep_fp32
        if isinstance(keep, str):
            keep = (keep,)
        object.__setattr__(self, "keep_fp32", tuple(keep or ()))

    @property
    def quant(self) -> QuantSettings:
        return QuantSettings(quantization=self.quantization, activations=self.activations,
                             per_channel=self.per_channel, keep_fp32=self.keep_fp32, calibration=self.calibration)

    def resolved(self, *, lm: bool) -> LatencySettings:
        """`auto` runtime, precision and model made concrete: a classifier runs in onnxruntime int8 with
        the latency table; a language model decodes in llama.cpp at q8_0 (its GGUF, nas.deploy.gguf) when
        llama-cpp-python is installed, else in torch fp32; LMs are always measured."""
        runtime = self.runtime if self.runtime != "auto" else (
            ("llamacpp" if llama_cpp_available() else "torch") if lm else "onnxruntime")
        if runtime == "llamacpp" and not lm:
            raise ValueError("latency.runtime=llamacpp runs causal language models (data=text / shakespeare with a "
                             "decoder); a classifier runs in onnxruntime or torch")
        precision = self.precision if self.precision != "auto" else (
            "int8" if runtime == "onnxruntime" and not lm else "q8_0" if runtime == "llamacpp" else "fp32")
        model = self.model if self.model != "auto" else ("measured" if lm else "table")
        return replace(self, runtime=runtime, precision=precision, model=model).validate()

    @property
    def variant(self) -> str:
        """The runtime and precision as one name: torch, onnxruntime, onnxruntime_int8."""
        return variant_name(self.runtime, self.precision)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | None) -> LatencySettings:
        """From the `latency:` config block; an unknown key is refused (a typo would be silently ignored)."""
        raw = dict(cfg or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"latency.{unknown[0]} is not a setting; allowed: {', '.join(sorted(known))}")
        return cls(**raw).validate()

    def validate(self) -> LatencySettings:
        if self.inputs not in INPUT_MODES:
            raise ValueError(f"latency.inputs={self.inputs!r} is not known; allowed: {', '.join(INPUT_MODES)}")
        if self.runtime not in (*RUNTIMES, "auto"):
            raise ValueError(f"latency.runtime={self.runtime!r} is not known; allowed: {', '.join(RUNTIMES)}, auto")
        if self.precision not in (*ALL_PRECISIONS, "auto") and not is_gguf_precision(self.precision):
            raise ValueError(f"latency.precision={self.precision!r} is not known; allowed: {', '.join(ALL_PRECISIONS)}, "
                             "auto")
        if self.precision == "int8" and self.runtime == "torch":
            raise ValueError("latency.precision=int8 has no path in torch eager here; use latency.runtime=onnxruntime "
                             "(onnxruntime's int8 kernels) or latency.precision=fp32")
        if is_gguf_precision(self.precision) and self.runtime != "llamacpp":
            raise ValueError(f"latency.precision={self.precision} is a GGUF type: it needs latency.runtime=llamacpp")
        if self.runtime == "llamacpp" and self.precision != "auto" and not precision_known("llamacpp", self.precision):
            raise ValueError(f"latency.precision={self.precision} has no GGUF type; llama.cpp runs: "
                             f"{', '.join(RUNTIME_PRECISIONS['llamacpp'])} (q8_0 is its 8-bit type)")
        if self.runtime == "llamacpp" and self.batch_size != 1:
            raise ValueError(f"latency.batch_size={self.batch_size}: llama.cpp is timed at batch 1")
        if self.runtime == "llamacpp" and llama_cpp_reason():
            raise ValueError(f"latency.runtime=llamacpp: {llama_cpp_reason()}")
        if self.imatrix not in (None, "none"):
            check_split(str(self.imatrix))
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"latency.rounding={self.rounding!r} is not known; allowed: {', '.join(ROUNDINGS)}")
        if self.model not in (*LATENCY_MODELS, "auto"):
            raise ValueError(f"latency.model={self.model!r} is not known; allowed: {', '.join(LATENCY_MODELS)}, auto")
        self.quant.validate()
        if self.keep_fp32 and self.precision == "fp32":
            raise ValueError(f"latency.keep_fp32={list(self.keep_fp32)} applies to latency.precision=int8 only")
        if self.split not in SAMPLE_SPLITS:
            raise ValueError(f"latency.split={self.split!r} is not allowed; use one of: {', '.join(SAMPLE_SPLITS)} "
                             "(the test split stays unseen)")
        for name in ("batch_size", "threads", "sample_size", "rounds", "chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"latency.{name}={value!r} must be an integer >= 1")
        if self.rounds < 3:
            raise ValueError(f"latency.rounds={self.rounds} must be >= 3 (the speedup is a median of paired rounds)")
        if self.batch_size > self.sample_size:
            raise ValueError(f"latency.batch_size={self.batch_size} must be <= latency.sample_size={self.sample_size}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"latency.warmup={self.warmup!r} must be an integer >= 0")

        check(self)
        if self.seq_len is not None:
            if self.inputs != "fixed":
                raise ValueError(f"latency.seq_len={self.seq_len} applies to latency.inputs=fixed only "
                                 "(real inputs have their own lengths); set it to null")
            if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 1:
                raise ValueError(f"latency.seq_len={self.seq_len!r} must be an integer >= 1 or null")
        return self

    @property
    def unit(self) -> str:
        """What one latency figure is: a forward pass per input, or a decoded token, or a whole generation."""
        if self.generation == "decode":
            return "ms per token"
        if self.generation == "generate":
            return f"ms per prompt + {self.new_tokens} tokens"
        return "ms per input"

    def describe(self, *, runtime: bool = True) -> str:
        """How every figure was taken, printed beside it (`runtime`: with the runtime and precision)."""
        what = "real inputs" if self.inputs == "real" else "fixed-length random ids"
        if self.generation in ("decode", "generate"):
            what = (f"{self.generation} of {self.new_tokens} tokens with the KV cache after real prompts"
                    + ("" if self.generation == "generate" else f" ({self.unit}"
                       + ("; the uncounted prefill on every core" if self.runtime == "llamacpp" else "") + ")"))
        precision = self.quant.describe() if self.precision == "int8" else (
            f"GGUF {'f32' if self.precision == 'fp32' else self.precision}" if self.runtime == "llamacpp" else "fp32")
        how = "predicted by the latency table (nas.cost.table)" if self.model == "table" else f"{self.rounds} paired rounds"
        where = f"{self.runtime} {precision}, " if runtime else ""
        return (f"{what}, sample {self.sample_size}, batch {self.batch_size}, {self.threads} thread"
                f"{'s' if self.threads > 1 else ''}, {where}{how}")


def gguf_kind(precision: str) -> str:
    """A llama.cpp precision as its GGUF type (fp32 is f32)."""
    return "f32" if precision == "fp32" else precision


def gguf_variant(kind: str) -> str:
    """The llama.cpp variant name (variant_name) that times a GGUF type: llamacpp (f32), llamacpp_q8_0, ..."""
    return variant_name("llamacpp", "fp32" if kind == "f32" else kind)


def close_pass(run: Any) -> None:
    """Free what a Pass holds (llama.cpp's model and context); torch and onnxruntime passes hold nothing to free."""
    close = getattr(run, "close", None)
    if callable(close):
        close()


def variant_name(runtime: str, precision: str) -> str:
    return runtime if precision == "fp32" else f"{runtime}_{precision}"


def parse_variant(name: str) -> tuple[str, str]:
    """'onnxruntime_int8' -> ('onnxruntime', 'int8'); 'torch' -> ('torch', 'fp32'). Refuses unknown names."""
    runtime, _, precision = name.partition("_")
    precision = precision or "fp32"
    if runtime not in RUNTIMES or not precision_known(runtime, precision):
        allowed = [variant_name(r, p) for r in RUNTIMES for p in RUNTIME_PRECISIONS[r]]
        raise ValueError(f"runtime {name!r} is not known; allowed: {', '.join(allowed)}")
    return runtime, precision


def latency_lengths(seq_len: int | None, *, context: int, max_length: int, max_positions: int) -> tuple[int, int]:
    """(candidate's, base's) token cap: the candidate at its context, the base at max_length.

    With fixed inputs this is also the padded length; `seq_len` forces one length for both.
    """
    model_seq = min(seq_len or context, context, max_length)
    base_seq = min(seq_len or max_length, max_length, max_positions)
    return model_seq, base_seq


@contextmanager
def num_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------- the inputs


class InputSample:
    """The inputs every model is timed on: the task's own texts (real) or random ids (fixed).

    `batches(cap)` gives the exact arrays a model with token cap `cap` receives, memoised:
    a list of {input_ids, attention_mask} int64 arrays, one per forward.
    """

    def __init__(self, settings: LatencySettings, *, tokenizer: Any, texts: Sequence[str] | None = None,
                 vocab_size: int | None = None) -> None:
        if settings.inputs == "real":
            if not texts:
                raise ValueError(f"latency.inputs=real needs texts from the task's {settings.split} split; it has none")
            self.texts: tuple[str, ...] | None = tuple(texts)
        else:
            self.texts = None
        self.settings = settings
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size or len(tokenizer))
        self._cache: dict[int, list[dict[str, Any]]] = {}

    @classmethod
    def from_task(cls, task: Any, tokenizer: Any, settings: LatencySettings, *, cap: int,
                  vocab_size: int | None = None) -> InputSample:
        """`settings.sample_size` texts of the task's `settings.split` split, stratified by length.

        Latency depends on an input's length, not its words, so the texts are sorted by token
        length (at the base's cap) and split into sample_size equal-count strata; one text is
        drawn from each (seeded). A small sample then has the split's length distribution; the
        order is shuffled (seeded) so batches of B > 1 mix lengths as a server's would.
        """

        if settings.inputs == "fixed":
            return cls(settings, tokenizer=tokenizer, vocab_size=vocab_size)
        ds = getattr(task, settings.split, None)
        if ds is None or len(ds) == 0:
            raise ValueError(f"latency.split={settings.split!r}: the task's {settings.split} split is empty")
        rng = np.random.default_rng(settings.seed)
        pool = rng.permutation(len(ds))[:MAX_POOL]  # random order: ties in length are broken at random
        texts = ds.select(sorted(pool.tolist()))["text"]
        texts = [texts[i] for i in np.argsort(np.argsort(pool))]  # back to the permuted order

        lengths = token_lengths(texts, tokenizer, cap=cap)
        by_length = np.argsort(lengths, kind="stable")
        n = min(settings.sample_size, len(texts))
        picked = [int(rng.choice(stratum)) for stratum in np.array_split(by_length, n)]
        picked = [picked[i] for i in rng.permutation(n)]
        return cls(settings, tokenizer=tokenizer, texts=[texts[i] for i in picked], vocab_size=vocab_size)

    def __len__(self) -> int:
        return len(self.texts) if self.texts is not None else self.settings.sample_size

    def with_tokenizer(self, tokenizer: Any) -> InputSample:
        """The same texts as another tokenizer reads them (a language model with a cut vocabulary, nas.cut.vocab:
        its own ids for the same prompts), memoised per tokenizer."""
        if tokenizer is self.tokenizer:
            return self
        others = self.__dict__.setdefault("_others", {})
        if id(tokenizer) not in others:
            others[id(tokenizer)] = InputSample(self.settings, tokenizer=tokenizer, texts=self.texts,
                                                vocab_size=len(tokenizer))
        return others[id(tokenizer)]

    def batches(self, cap: int) -> list[dict[str, Any]]:
        cap = int(cap)
        if cap not in self._cache:
            b = self.settings.batch_size
            if self.texts is None:
                rng = np.random.default_rng(self.settings.seed)
                low = min(1000, self.vocab_size - 1)
                rows = [rng.integers(low, self.vocab_size, size=cap, dtype=np.int64).tolist() for _ in range(len(self))]
            else:
                rows = self.tokenizer(list(self.texts), truncation=True, max_length=cap)["input_ids"]
            pad = self.tokenizer.pad_token_id if getattr(self.tokenizer, "pad_token_id", None) is not None else 0
            out = []
            for start in range(0, len(rows), b):
                group = rows[start:start + b]
                width = max(len(r) for r in group)
                ids = np.full((len(group), width), pad, dtype=np.int64)
                mask = np.zeros((len(group), width), dtype=np.int64)
                for i, r in enumerate(group):
                    ids[i, :len(r)] = r
                    mask[i, :len(r)] = 1
                out.append({"input_ids": ids, "attention_mask": mask})
            self._cache[cap] = out
        return self._cache[cap]

    def mean_tokens(self, cap: int) -> float:
        """Real tokens per input at this cap (padding excluded), from the memoised batches."""
        return float(sum(int(b["attention_mask"].sum()) for b in self.batches(cap)) / len(self))


# ---------------------------------------------------------------------------- runtimes

# A side of the comparison: run(start, stop) runs the sample's batches start..stop-1 and returns their wall time in seconds.
Pass = Callable[[int, int], float]


def torch_pass(model: Any, batches: Sequence[Mapping[str, Any]]) -> Pass:
    device = next(model.parameters()).device
    feeds = [{k: torch.from_numpy(v).to(device) for k, v in b.items()} for b in batches]
    cuda = device.type == "cuda"

    @torch.inference_mode()
    def run(start: int, stop: int) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for feed in feeds[start:stop]:
            model(**feed)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return run


def onnx_pass(session: Any, batches: Sequence[Mapping[str, Any]]) -> Pass:
    wanted = {i.name for i in session.get_inputs()}
    feeds = [{k: v for k, v in b.items() if k in wanted} for b in batches]

    def run(start: int, stop: int) -> float:
        t0 = time.perf_counter()
        for feed in feeds[start:stop]:
            session.run(None, feed)
        return time.perf_counter() - t0

    return run


# ---------------------------------------------------------------------------- paired timing


@dataclass(frozen=True)
class PairedRounds:
    """Per-input milliseconds of the base and the candidate, one value per alternating round."""

    base_ms: tuple[float, ...]
    model_ms: tuple[float, ...]

    @property
    def ratios(self) -> list[float]:
        return sorted(b / m for b, m in zip(self.base_ms, self.model_ms))

    def summary(self) -> dict[str, float]:
        ratios = self.ratios
        return {
            "latency_ms": statistics.median(self.model_ms),
            "latency_p90_ms": _quantile(sorted(self.model_ms), 0.9),
            "base_latency_ms": statistics.median(self.base_ms),
            "speedup": statistics.median(ratios),
            "speedup_p10": _quantile(ratios, 0.1),
            "speedup_p90": _quantile(ratios, 0.9),
            "latency_ratio": 1.0 / statistics.median(ratios),
        }


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of an ascending list."""
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def paired_rounds(base: Pass, model: Pass, *, n_batches: int, n_inputs: int, rounds: int, warmup: int = 2,
                  chunk: int = 1) -> PairedRounds:
    """`warmup` untimed batches of each side, then `rounds` rounds over the sample alternating the
    two sides every `chunk` batches (the side that goes first flips each round)."""
    ms = interleaved_rounds({"base": base, "model": model}, n_batches=n_batches, n_inputs=n_inputs, rounds=rounds,
                            warmup=warmup, chunk=chunk)
    return PairedRounds(ms["base"], ms["model"])


def interleaved_rounds(sides: Mapping[str, Pass], *, n_batches: int, n_inputs: int, rounds: int, warmup: int = 2,
                       chunk: int = 1) -> dict[str, tuple[float, ...]]:
    """Per-input milliseconds of each side per round, the sides taking turns every `chunk` batches
    (in order on even rounds, reversed on odd ones): any two sides then form paired rounds."""
    names = list(sides)
    if warmup:
        for name in names:
            sides[name](0, min(warmup, n_batches))
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        total = dict.fromkeys(names, 0.0)
        for start in range(0, n_batches, chunk):
            stop = min(start + chunk, n_batches)
            for name in order:
                total[name] += sides[name](start, stop)
        for name in names:
            out[name].append(total[name] * 1000.0 / n_inputs)
    return {name: tuple(v) for name, v in out.items()}


def runtime_pass(model: Any, batches: Sequence[Mapping[str, Any]], *, runtime: str, precision: str, threads: int,
                 workdir: Path, name: str, cap: int, quant: QuantSettings | None = None,
                 calibration: Sequence[Mapping[str, Any]] | None = None, fast_export: bool = False,
                 reuse_export: bool = False) -> Pass:
    """`model` run on `batches` in this runtime and precision: torch eager, or its ONNX export (fp32,
    or quantized to int8 by nas.deploy.quantize) in an onnxruntime session. `fast_export`: the
    TorchScript exporter (nas.deploy.onnx.export_onnx); `reuse_export`: the ONNX file `name` already
    written for this same model."""
    if runtime == "torch":
        model.eval()
        return torch_pass(model, batches)
    path = onnx_file(model, workdir=workdir, name=name, cap=cap, precision=precision, quant=quant,
                     calibration=calibration, fast_export=fast_export, reuse_export=reuse_export)
    return onnx_pass(onnx_session(path, threads=threads), batches)


def onnx_file(model: Any, *, workdir: Path, name: str, cap: int, precision: str, quant: QuantSettings | None = None,
              calibration: Sequence[Mapping[str, Any]] | None = None, fast_export: bool = False,
              reuse_export: bool = False) -> Path:
    """`model` as onnxruntime runs it at this precision: workdir/name.onnx (exported), and at int8
    workdir/name.int8.onnx (quantized from it by nas.deploy.quantize). Returns the file to run."""
    path = workdir / f"{name}.onnx"
    if not (reuse_export and path.is_file()):
        export_onnx(model, path, max_seq=cap, fast=fast_export)
    if precision == "int8":
        path = quantize_onnx(path, workdir / f"{name}.int8.onnx", quant or QuantSettings(), calibration=calibration)
    return path


@dataclass
class PairedTimer:
    """Times candidates against the base, in one process, on one input sample, in one runtime.

    Build one per job; `measure(model, context=...)` gives the candidate's metrics. Every base
    round of the job is kept: `base_latency_ms()` is their median (the base's figure in reports).
    """

    base: Any
    sample: InputSample
    settings: LatencySettings
    max_length: int
    max_positions: int
    base_rounds: list[float] = field(default_factory=list)
    lm: bool = False  # a language-modelling task: generation latency (nas.cost.generation)
    calibration: InputSample | None = None  # static int8: training inputs that fix activation ranges
    table: Any = None  # nas.cost.table.LatencyTable, for latency.model=table
    tables: dict[str, Any] = field(default_factory=dict)  # precision -> table, for a space's precision axis
    # The TorchScript exporter for every ONNX model this timer builds (~1 s instead of 4-12 s for MiniLM; the
    # same graph speed, experiments/latency_table): the search's choice. nas.export times the dynamo export it ships.
    fast_export: bool = False
    tokenizer: Any = None  # llama.cpp: the GGUF files carry it
    source_gguf: Path | None = None  # llama.cpp: the base came from this GGUF (its tokenizer fields are copied)
    # llama.cpp: model -> its input second moments per GGUF tensor on calibration text (nas.deploy.imatrix), for the
    # quantizer's importance matrix (latency.imatrix) and GPTQ (latency.rounding); None: llama.cpp's plain rounding
    moments: Any = None
    # llama.cpp, mixed files (mix<n>_<low>): the tensor groups from the cheapest to the dearest (nas.deploy.mixed)
    mix_order: Any = None
    _passes: dict[str, Pass] = field(default_factory=dict)
    _tmp: Any = None

    @classmethod
    def for_prepared(cls, prep: Any, settings: LatencySettings, *, max_length: int) -> PairedTimer:
        """The timer of a job whose task, tokenizer and base are ready (nas.study.prepare.Prepared)."""
        positions = int(prep.shape.max_positions)
        base_cap = latency_lengths(settings.seq_len, context=positions, max_length=max_length, max_positions=positions)[1]

        lm = bool(getattr(prep.task, "is_lm", False))
        settings = settings.resolved(lm=lm)
        settings = replace(settings, generation=resolve_mode(settings.generation, lm=lm, settings=settings))
        vocab = int(prep.base.config.vocab_size)
        sample = InputSample.from_task(prep.task, prep.tokenizer, settings, cap=base_cap, vocab_size=vocab)
        calibration = None
        if settings.precision == "int8" and settings.quantization == "static":
            calibration = InputSample.from_task(
                prep.task, prep.tokenizer, replace(settings, inputs="real", split="train", batch_size=1,
                                                   sample_size=settings.calibration), cap=base_cap, vocab_size=vocab)
        return cls(base=prep.base, sample=sample, settings=settings, max_length=max_length, max_positions=positions,
                   lm=lm, calibration=calibration, tokenizer=getattr(prep, "tokenizer", None),
                   source_gguf=getattr(prep, "source_gguf", None))

    def caps(self, context: int) -> tuple[int, int]:
        caps = latency_lengths(self.settings.seq_len, context=context, max_length=self.max_length,
                               max_positions=self.max_positions)
        return tuple(prompt_cap(c, self.settings.generation, self.settings.new_tokens) for c in caps)

    @property
    def base_cap(self) -> int:
        return self.caps(self.max_positions)[1]

    def _workdir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="nas_latency_")
        return Path(self._tmp.name)

    def _make_pass(self, model: Any, cap: int, *, name: str, variant: str | None = None, reuse: bool = False,
                   fast_export: bool = False) -> Pass:
        # the task's prompts as the model's tokenizer reads them (a cut vocabulary: its own ids for the same texts)
        sample = self.sample if self.tokenizer is None else self.sample.with_tokenizer(tokenizer_for(model, self.tokenizer))
        batches = sample.batches(cap)
        runtime, precision = parse_variant(variant or self.settings.variant)
        if runtime == "llamacpp":
            path = self.gguf_path(name, precision)
            if not (reuse and path.is_file()):
                self.write_gguf(model, path, precision=precision)
            return LlamaCppPass(path, batches, mode=self.settings.generation, new_tokens=self.settings.new_tokens,
                                threads=self.settings.threads)
        if self.settings.generation in ("decode", "generate"):
            model.eval()
            return generation_pass(model, batches, mode=self.settings.generation, new_tokens=self.settings.new_tokens)
        calibration = self.calibration.batches(cap) if self.calibration is not None else None
        return runtime_pass(model, batches, runtime=runtime, precision=precision, threads=self.settings.threads,
                            workdir=self._workdir(), name=name, cap=cap, quant=self.settings.quant,
                            calibration=calibration, reuse_export=reuse, fast_export=fast_export or self.fast_export)

    def write_gguf(self, model: Any, path: Path, *, precision: str | None = None) -> dict[str, Any]:
        """`model` as a GGUF file at `precision` (default latency.precision): written at f32 and, for a quantized
        type, quantized by llama.cpp with the model's importance matrix (`imatrix`). A tokenizer GGUF cannot
        carry gets a stand-in vocabulary: the timer feeds token ids directly."""
        kind = gguf_kind(precision or self.settings.precision)
        moments = None
        if split_precision(kind)[0] in QUANT_TYPES and self.moments is not None:
            moments = self.moments(model)
        return write_gguf(model, None if self.source_gguf else carried_tokenizer(self.tokenizer), path, kind=kind,
                          source_gguf=self.source_gguf,
                          imatrix=diagonal(moments) if moments and self.settings.imatrix not in (None, "none") else None,
                          moments=moments if moments and self.settings.rounding == "gptq" else None,
                          mix_order=self.mix_order)

    def written(self, pattern: str) -> list[Path]:
        """The files this timer has written (its working folder) whose names match `pattern` (a glob)."""
        return [] if self._tmp is None else sorted(Path(self._tmp.name).glob(pattern))

    def gguf_path(self, name: str, precision: str | None = None) -> Path:
        """The GGUF file a candidate `name` runs from in llama.cpp at this precision."""
        return self._workdir() / f"{name}.{gguf_kind(precision or self.settings.precision)}.gguf"

    def base_pass(self, variant: str | None = None) -> Pass:
        variant = variant or self.settings.variant
        if variant not in self._passes:
            self._passes[variant] = self._make_pass(self.base, self.base_cap, name="base", variant=variant,
                                                    reuse=True)  # the same base in every variant
        return self._passes[variant]

    def measure(self, model: Any, *, context: int, name: str = "candidate", fast_export: bool = False,
                precision: str | None = None) -> dict[str, Any]:
        """The candidate's latency and speedup over the base in the same runtime and precision: paired
        rounds (latency.model=measured), or the latency table's prediction (latency.model=table).
        `fast_export`: the TorchScript exporter (nas.deploy.onnx), as the table's own models; always measured.
        `precision`: the candidate's own (a space's precision axis); the base stays at latency.precision,
        so every trial's ratio has the same denominator."""
        cap = self.caps(context)[0]
        variant = variant_name(self.settings.runtime, precision or self.settings.precision)
        if self.table is not None and self.settings.model == "table" and not fast_export:
            t0 = time.perf_counter()
            table = self.tables.get(precision or self.settings.precision, self.table)
            predicted = table.predict_model(model, self.sample.batches(cap))
            base = self.base_latency_ms()
            return {"latency_ms": predicted, "base_latency_ms": base, "speedup": base / predicted,
                    "latency_ratio": predicted / base, "mean_tokens": self.sample.mean_tokens(cap), "latency_cap": cap,
                    "seconds_runtime_prepare": time.perf_counter() - t0, "latency_predicted": True}
        was_training = model.training
        t0 = time.perf_counter()
        candidate = self._make_pass(model, cap, name=name, fast_export=fast_export, variant=variant)
        prepare_s = time.perf_counter() - t0
        try:
            rounds = self._paired(self.base_pass(), candidate, n_batches=len(self.sample.batches(cap)),
                                  n_inputs=len(self.sample), rounds=self.settings.rounds, warmup=self.settings.warmup,
                                  chunk=self.settings.chunk)
        finally:
            close_pass(candidate)
        model.train(was_training)
        self.base_rounds.extend(rounds.base_ms)
        return {**rounds.summary(), "mean_tokens": self.sample.mean_tokens(cap), "latency_cap": cap,
                "seconds_runtime_prepare": prepare_s}

    def deployed_file(self, model: Any, *, context: int, name: str, precision: str | None = None) -> Path | None:
        """`model` exported (fast exporter) and, at int8, quantized as it would be deployed; the ONNX path
        (None in torch at fp32, where the model runs as it is)."""
        if self.settings.runtime == "torch":
            return None
        cap = self.caps(context)[0]
        calibration = self.calibration.batches(cap) if self.calibration is not None else None
        return onnx_file(model, workdir=self._workdir(), name=name, cap=cap, precision=precision or self.settings.precision,
                         quant=self.settings.quant, calibration=calibration, fast_export=True)  # an accuracy: fast exporter

    def deployed_path(self, name: str, precision: str | None = None) -> Path | None:
        """The ONNX file a measured candidate `name` runs from in this runtime and precision (None in torch)."""
        if self.settings.runtime == "torch":
            return None
        int8 = (precision or self.settings.precision) == "int8"
        return self._workdir() / (f"{name}.int8.onnx" if int8 else f"{name}.onnx")

    def baseline_variants(self, precision: str | None = None) -> dict[str, str]:
        """The base's variant for each baseline (BASELINES) of a candidate at `precision` (default latency.precision)
        in this timer's runtime; `reference_base` is the base at latency.precision (the run's reference type)."""
        runtime = self.settings.runtime
        return {"torch_fp32_base": "torch", "runtime_fp32_base": runtime,
                "quantized_base": variant_name(runtime, precision or self.settings.precision),
                "reference_base": self.settings.variant}

    def measure_baselines(self, model: Any, *, context: int, name: str = "candidate", rounds: int | None = None,
                          precision: str | None = None, baselines: Sequence[str] | None = None,
                          reuse: bool = False) -> dict[str, Any]:
        """`model` in this timer's runtime at `precision` (default latency.precision), timed in paired rounds with
        the base in each baseline's variant in turn, in this process, and (with runtime_fp32_base) itself at fp32
        against the fp32 base: every speedup of a deployed model, each naming its baseline.

        `baselines`: which of BASELINES (default: torch fp32, same runtime fp32, quantized alike; plus the
        reference type when `precision` differs from it). Flat keys: latency_ms (deployed), latency_ms_fp32 (the
        candidate in the same runtime at fp32, when measured), base_latency_ms_<baseline>,
        speedup_over_<baseline> with _p10 / _p90. `reuse`: a file already written for `name` at this precision (the
        same weights) is timed as it is, not written again."""
        precision = precision or self.settings.precision
        variants = self.baseline_variants(precision)
        if baselines is None:
            baselines = ["torch_fp32_base", "runtime_fp32_base", "quantized_base"]
            if precision != self.settings.precision:
                baselines.append("reference_base")
        unknown = [b for b in baselines if b not in variants]
        if unknown:
            raise ValueError(f"baseline {unknown[0]!r} is not known; allowed: {', '.join(variants)}")
        cap = self.caps(context)[0]
        deployed_variant = variant_name(self.settings.runtime, precision)
        was_training = model.training
        n = dict(n_batches=len(self.sample.batches(cap)), n_inputs=len(self.sample), rounds=rounds or self.settings.rounds,
                 warmup=self.settings.warmup, chunk=self.settings.chunk)
        pairs: dict[str, PairedRounds] = {}
        candidate = self._make_pass(model, cap, name=name, variant=deployed_variant, reuse=reuse)
        try:
            # one pair of sides at a time, each in alternating rounds: the definition of a measured speedup
            # (a side's forward evicts the other's weights from cache; more sides in a round would evict more)
            for baseline in dict.fromkeys(baselines):
                pairs[baseline] = self._paired(self.base_pass(variants[baseline]), candidate, **n)
        finally:
            close_pass(candidate)
        fp32 = self.settings.runtime
        if fp32 != deployed_variant and "runtime_fp32_base" in pairs:  # the candidate at fp32, against the base
            at_fp32 = self._make_pass(model, cap, name=name, variant=fp32, reuse=True)
            try:
                pairs["fp32"] = self._paired(self.base_pass(fp32), at_fp32, **n)
            finally:
                close_pass(at_fp32)
        model.train(was_training)
        first = pairs["quantized_base" if "quantized_base" in pairs else baselines[0]].summary()
        out: dict[str, Any] = {"latency_ms": first["latency_ms"], "mean_tokens": self.sample.mean_tokens(cap),
                               "variant": deployed_variant, "unit": self.settings.unit,
                               "definition": replace(self.settings, model="measured", precision=precision).describe()}
        if "fp32" in pairs or deployed_variant == fp32:
            out["latency_ms_fp32"] = pairs.get("fp32", pairs.get("quantized_base", pairs[baselines[0]])).summary()["latency_ms"]
        for baseline in pairs:
            if baseline == "fp32":
                continue
            pair = pairs[baseline].summary()
            out[f"base_latency_ms_{baseline}"] = pair["base_latency_ms"]
            out[f"speedup_over_{baseline}"] = pair["speedup"]
            out[f"speedup_over_{baseline}_p10"] = pair["speedup_p10"]
            out[f"speedup_over_{baseline}_p90"] = pair["speedup_p90"]
        return out

    def _paired(self, base: Pass, candidate: Pass, **rounds: Any) -> PairedRounds:
        """paired_rounds at latency.threads: only the timing runs there (both passes were prepared, exported,
        quantized and GPTQ-rounded, on every core)."""
        with num_threads(self.settings.threads):
            return paired_rounds(base, candidate, **rounds)

    def base_latency_ms(self) -> float:
        """The base's per-input latency: the median of all its rounds so far (measured on demand), or
        the latency table's prediction for it (latency.model=table)."""
        if self.table is not None and self.settings.model == "table":
            return self.table.predict_model(self.base, self.sample.batches(self.base_cap))
        if not self.base_rounds:
            run = self.base_pass()
            with num_threads(self.settings.threads):
                n = len(self.sample.batches(self.base_cap))
                if self.settings.warmup:
                    run(0, min(self.settings.warmup, n))
                self.base_rounds.extend(run(0, n) * 1000.0 / len(self.sample) for _ in range(self.settings.rounds))
        return statistics.median(self.base_rounds)

    def flops(self, model: Any, *, context: int | None = None) -> float:
        """Mean forward FLOPs per input over the sample at this model's cap (padding included)."""
        cap = self.caps(context)[0] if context is not None else self.base_cap
        return flops_per_input(model, self.sample.batches(cap))

    def record(self) -> dict[str, Any]:
        """The settings and the sample, as stored in the study and written beside results."""
        return {**asdict(self.settings), "keep_fp32": list(self.settings.keep_fp32), "max_length": self.max_length,
                "mean_tokens_base": round(self.sample.mean_tokens(self.base_cap), 2)}

    def close(self) -> None:
        for p in self._passes.values():
            close_pass(p)
        self._passes.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def measure_runtimes(model: Any, *, context: int, base: Any, task: Any, tokenizer: Any, settings: LatencySettings,
                     max_length: int, runtimes: Sequence[str] | None = None,
                     moments: Callable[[Any], Any] | None = None) -> dict[str, dict[str, Any]]:
    """`model` against `base` in each runtime (default: settings' runtime and precision; names as
    `variant_name`: torch, onnxruntime, onnxruntime_int8), each with its own paired rounds, the base in
    the same runtime and precision.

    What nas.export, nas.train's final report and the benchmarks print and write: the flat
    keys `latency_ms_<runtime>`, `base_latency_ms_<runtime>`, `speedup_<runtime>` and the p10 / p90
    of the rounds, plus `latency_definition` (how they were taken). `moments` (model -> its input second moments
    on calibration text): quantized GGUF files are written as the exported ones are (GPTQ, importance matrix).
    """

    prep = SimpleNamespace(base=base, task=task, tokenizer=tokenizer, shape=base_shape(base.config))
    out: dict[str, dict[str, Any]] = {}
    for variant in runtimes or (settings.variant,):
        runtime, precision = parse_variant(variant)
        timer = PairedTimer.for_prepared(prep, replace(settings, runtime=runtime, precision=precision,
                                                       model="measured"), max_length=max_length)
        timer.moments = moments
        try:
            out[variant] = {**timer.measure(model, context=context), "definition": timer.settings.describe(),
                            "common_definition": timer.settings.describe(runtime=False), "unit": timer.settings.unit}
        finally:
            timer.close()
    return out


def flat_latency_metrics(measured: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """measure_runtimes' result as the flat keys written to config.yaml, READMEs and results files."""
    flat: dict[str, Any] = {}
    for runtime, m in measured.items():
        for key in ("latency_ms", "base_latency_ms", "speedup", "speedup_p10", "speedup_p90"):
            flat[f"{key}_{runtime}"] = float(m[key])
    first = next(iter(measured.values()), None)
    if first is not None:
        flat["mean_tokens"] = round(float(first["mean_tokens"]), 2)
        flat["latency_definition"] = first.get("common_definition", first["definition"])
    return flat


def speedup_line(runtime: str, m: Mapping[str, Any]) -> str:
    """One printed line per runtime: candidate vs base per input (per token when decoding), the speedup and
    its spread, how taken."""
    return (f"{runtime:12s}: {m['latency_ms']:.2f} ms vs base {m['base_latency_ms']:.2f} {m.get('unit', 'ms per input')} -> "
            f"{m['speedup']:.2f}x (p10-p90 {m['speedup_p10']:.2f}-{m['speedup_p90']:.2f}; {m['definition']}; "
            f"mean {m['mean_tokens']:.1f} tokens)")


# ---------------------------------------------------------------------------- FLOPs and size


def _flops_at(model: Any, length: int) -> int:
    device = next(model.parameters()).device
    vocab = int(model.config.vocab_size)
    ids = torch.full((1, length), min(1000, vocab - 1), dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    # FlopCounterMode's module tracker hooks every input that requires grad, and fails on a parameter passed to a
    # module as its input (DeBERTa's relative-position table into its LayerNorm) under inference mode
    wanted = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        with torch.inference_mode(), counter:
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for p, grad in zip(model.parameters(), wanted, strict=True):
            p.requires_grad_(grad)
    return int(counter.get_total_flops())


def flops_curve(model: Any) -> Callable[[int], int]:
    """FLOPs of one input of length L, exactly: a transformer's matmul FLOPs are a quadratic in L
    (linear layers ~ L, attention scores ~ L^2), so three counts fix the curve."""
    points = [(n, _flops_at(model, n)) for n in (1, 2, 3)]

    def at(length: int) -> int:
        total = Fraction(0)
        for i, (xi, yi) in enumerate(points):  # Lagrange interpolation, exact in rationals
            term = Fraction(yi)
            for j, (xj, _) in enumerate(points):
                if j != i:
                    term *= Fraction(length - xj, xi - xj)
            total += term
        return int(total)

    return at


def flops_per_input(model: Any, batches: Sequence[Mapping[str, Any]]) -> float:
    """Mean FLOPs per input over these batches, each batch costing (rows x its padded width)."""
    curve = flops_curve(model)
    n = sum(int(b["input_ids"].shape[0]) for b in batches)
    return sum(int(b["input_ids"].shape[0]) * curve(int(b["input_ids"].shape[1])) for b in batches) / n


def model_size(model: Any) -> dict[str, Any]:
    params = sum(p.numel() for p in model.parameters())
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    size += sum(b.numel() * b.element_size() for b in model.buffers())
    return {"params": int(params), "size_mb": size / 1e6}


def latency_settings(cfg: Any, overrides: Mapping[str, Any]) -> Any:
    """The run's latency settings (how its search timed trials), with the command line's latency.* on top."""

    run = OmegaConf.to_container(cfg.latency, resolve=True) if "latency" in cfg else {}
    # runs made before latency.inputs existed were timed on fixed-length ids: keep only keys still known
    run = {k: v for k, v in run.items() if k in LatencySettings.__dataclass_fields__}
    return LatencySettings.from_cfg({**run, **overrides})
