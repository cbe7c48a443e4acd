"""Early exits in a run: a final member's exit heads trained with it, its exit rule chosen and the member with exits
measured as served, beside the same member without them.

    start_member_exits   heads after the member's layers (exits.layers), attached for its own final training
    measure_exits        the rule (searched on the selection rows, or given) and the member with exits as served:
                         onnxruntime segments at the run's precision (nas.deploy.exits), accuracy one input at a time
                         on the selection, judge and test rows, and per-input time paired with the same member's
                         single graph and with the base in the same runtime and precision (c)
    record_member_exits  what the final stage keeps: the heads' file beside the member's weights, and the study
                         attribute `final_exits` (trial number -> the variant's figures); the variant is a row of its
                         own in the reports and competes for the winner like any member

The rule search reads per-input logits of every exit from one pass of a runner that stops nowhere, on the selection
rows (validation minus the judge rows), and per-input costs from measured segment times (a + b x tokens per segment,
fitted on some of those rows), not FLOPs. The variant is timed on the judge rows (where held out), which no choice
read: on a sample of them with their own mix of exits taken and lengths (exit_sample). The speedups over (a) the base
in torch fp32 and (b) in onnxruntime fp32 are the same member's measured ones times the exits' measured speedup over
it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_model, save_model

from nas.cost.exits import pair_summary, paired_inputs, segment_seconds, session_call
from nas.cost.latency import InputSample, variant_name
from nas.data.tasks import make_loader, tokenize
from nas.deploy.exit_runner import ExitRunner
from nas.deploy.exits import HEADS_FILE, export_segments, set_rule, ship
from nas.deploy.onnx import onnx_session
from nas.models.exits import hidden_size
from nas.quality.exits import (ExitHeads, ExitRule, ExitSettings, ExitTraining, exit_costs, fit_segment_costs,
                               search_rule)
from nas.study.report import EXITS_ATTR

SPLIT_KEYS = (("validation", "val"), ("judge", "judge"), ("test", "test"))
# A member's exits cost about as much again as its own evaluation and deployment (nas.study.final_plan reserves
# EVALUATION_VALIDATIONS validations for that): two segment exports, one pass through every exit on the selection
# rows, the runner one input at a time on the selection, judge and test rows, and two paired timings
EXIT_EVALUATION_VALIDATIONS = 8.0


def heads_path(run_dir: str | Path, number: int) -> Path:
    """Where the final stage keeps member `number`'s exit heads (beside models/final_N.safetensors)."""
    return Path(run_dir) / "models" / f"final_{number}.exits.safetensors"


def save_heads(heads: ExitHeads, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_model(heads, str(tmp))
    tmp.replace(path)


def load_heads(info: Mapping[str, Any], path: str | Path) -> ExitHeads:
    """Heads described by `info` (ExitHeads.describe) with the weights saved at `path`."""
    heads = ExitHeads.from_description(info)
    load_model(heads, str(path))
    return heads.eval()


def exits_for(settings: ExitSettings | None, evaluator: Any) -> ExitSettings | None:
    """`settings` where this run's members carry exits (ExitSettings.enabled: a classifier of a family with exits,
    timed in onnxruntime at batch 1), else None; exits.layers=all or a list where they cannot run is refused."""
    timer = getattr(evaluator, "timer", None)
    if settings is None or timer is None:
        return None
    lat = timer.settings
    on = settings.enabled(lm=bool(evaluator.lm), batch_size=lat.batch_size, runtime=lat.runtime,
                          quantization=lat.quantization, keep_fp32=lat.keep_fp32, config=evaluator.prep.base.config)
    return settings if on else None


def start_member_exits(model: Any, spec: Any, settings: ExitSettings | None, *, labels: int, train: Any,
                       strict: bool = False) -> ExitTraining | None:
    """Exit heads for a member keeping `spec.layers` (exits.layers; `strict`: a listed layer it does not keep is
    refused, else skipped), attached to `model` for its final training; None where exits are off or it has none."""
    if settings is None:
        return None
    positions = settings.positions(spec.layers, strict=strict)
    if not positions:
        return None
    heads = ExitHeads(positions, hidden=hidden_size(model), labels=labels, seed=int(train.seed))
    return ExitTraining(heads, head_lr=float(settings.head_lr), distill_weight=float(train.distill_weight),
                        temperature=float(train.temperature)).attach(model)


# ---------------------------------------------------------------------------- the inputs


def rows_of(loader: Any) -> tuple[list[np.ndarray], np.ndarray]:
    """Each input of a loader's batches as served: its real tokens only, (1, tokens) int64; and the labels."""
    ids, labels = [], []
    for batch in loader:
        arr = np.asarray(batch["input_ids"])
        mask = np.asarray(batch["attention_mask"]).astype(bool)
        for i in range(arr.shape[0]):
            ids.append(arr[i][mask[i]][None].astype(np.int64))
            labels.append(int(batch["labels"][i]))
    return ids, np.asarray(labels, dtype=np.int64)


@dataclass
class ExitData:
    """What measure_exits reads: the rows by split key (val: the selection rows, judge, test), each (inputs,
    labels); the timing pool: every text of the timing split (`split`) at the member's cap and the same texts at the
    base's, from which `size` inputs are timed (exit_sample)."""

    rows: dict[str, tuple[list[np.ndarray], np.ndarray]]
    member: list[np.ndarray]
    base: list[np.ndarray]
    timing_split: str = "validation"
    size: int = 96
    seed: int = 0

    @classmethod
    def build(cls, loaders: Mapping[str, Any], *, task: Any, tokenizer: Any, latency: Any, size: int,
              member_cap: int, base_cap: int, split: str | None = None) -> ExitData:
        """`loaders`: split key -> a loader at the member's context; the timing pool: every text of `split`
        (default latency.split; the final stage's: the judge rows, which the rule was not chosen on; at most
        nas.cost.latency.MAX_POOL) at both caps, of which measure_exits times `size`."""
        rows = {key: rows_of(loader) for key, loader in loaders.items()}
        split = split or latency.split
        ds = getattr(task, split, None)
        pool = max(int(size), len(ds) if ds is not None else 0)
        sample = InputSample.from_task(task, tokenizer, replace(latency, sample_size=pool, batch_size=1, inputs="real",
                                                                split=split), cap=base_cap)
        member = [b["input_ids"] for b in sample.batches(member_cap)]
        base = [b["input_ids"] for b in sample.batches(base_cap)]
        return cls(rows=rows, member=member, base=base, timing_split=split, size=int(size), seed=int(latency.seed))


def exit_sample(depths: np.ndarray, lengths: np.ndarray, size: int, *, seed: int = 0) -> list[int]:
    """`size` indices into a pool of inputs whose exit depths (layers the runner ran) and token lengths are given:
    each depth gets its share of the pool (largest remainders), and within a depth one input is drawn from each of
    that many equal-count strata by length (seeded). Time depends on the exit an input takes and on its length, so a
    small sample then has the pool's mix of both: drawn by length alone, 96 of seed 0's 630 judge rows held 54% that
    left at the first exit and 23% that ran every layer (the 630: 49% and 28%), and read the exits 1.45-1.48x over
    the member where 200 test reviews (44% and 32%; all 1,366: 49% and 30%) read 1.31-1.34x."""
    depths, lengths = np.asarray(depths), np.asarray(lengths)
    n = len(depths)
    if size >= n:
        return list(range(n))
    rng = np.random.default_rng(seed)
    levels, counts = np.unique(depths, return_counts=True)
    quota = counts * size / n
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: size - int(take.sum())]:
        take[i] += 1
    picked: list[int] = []
    for level, k in zip(levels, take):
        if k == 0:
            continue
        members = np.flatnonzero(depths == level)
        by_length = members[np.argsort(lengths[members], kind="stable")]
        picked += [int(rng.choice(stratum)) for stratum in np.array_split(by_length, k)]
    return [picked[i] for i in rng.permutation(len(picked))]


# ---------------------------------------------------------------------------- measuring


def served(runner: ExitRunner, ids: Sequence[np.ndarray], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correct, depth) per input of the runner, one input at a time."""
    correct, depths = np.zeros(len(ids), dtype=np.int8), np.zeros(len(ids), dtype=np.int64)
    for i, x in enumerate(ids):
        logits, depths[i] = runner(x)
        correct[i] = int(np.asarray(logits).reshape(-1).argmax()) == int(labels[i])
    return correct, depths


def shares(depths: np.ndarray, layers: Sequence[int]) -> dict[str, float]:
    """Share of inputs leaving after each depth (layers run), as {"1": 0.42, ...}."""
    return {str(d): float(np.mean(depths == d)) if len(depths) else 0.0 for d in layers}


def measure_exits(model: Any, heads: ExitHeads, *, settings: ExitSettings, data: ExitData, static_path: Path,
                  base_path: Path, latency: Any, workdir: Path, static: Mapping[str, Any] | None = None,
                  rule: ExitRule | None = None, base_layers: Sequence[int] = (), labels: Sequence[str] = (),
                  keep_correct: bool = False, say: Callable[[str], None] = lambda text: None) -> dict[str, Any]:
    """The member `model` with `heads` as served in onnxruntime at latency.precision (segments written under
    `workdir`): its rule (`rule`, else searched on data.rows["val"]), its accuracy one input at a time on each split
    of data.rows, the share of inputs per exit, and its time per input on the timing sample, paired with the same
    member's single graph (`static_path`) and with the base (`base_path`, (c)). `static`: the member's own deployed
    figures, whose speedups over (a) and (b) the exits' speedup over it multiplies. `keep_correct`: each split's
    per-input correctness too ({key}_correct, for paired intervals)."""
    t0 = time.perf_counter()
    precision, threads = latency.precision, max(1, int(latency.threads))
    n_layers = len(base_layers) if base_layers else None
    candidates = tuple(heads.positions)
    choice = None
    if rule is None:
        everywhere = ExitRule("confidence", candidates, threshold=1.0)
        export_segments(model, heads, everywhere, workdir / "all", precision=precision, quant=latency.quant,
                        labels=labels, base_layers=base_layers)
        probe = ExitRunner(workdir / "all", threads=threads)
        ids, labels_sel = data.rows["val"]
        logits = np.stack([np.concatenate(probe.all_logits(x), axis=0) for x in ids])  # (inputs, exits + 1, labels)
        # the cost model from the selection rows too (every k-th, as many as the timing sample holds)
        timed = ids[:: max(1, len(ids) // max(1, data.size))][: max(1, data.size)]
        seconds = segment_seconds(probe, timed, rounds=latency.rounds, warmup=latency.warmup)
        fit = fit_segment_costs(np.array([x.shape[1] for x in timed]), seconds)
        costs = exit_costs(fit, np.array([x.shape[1] for x in ids]))
        choice = search_rule(logits, labels_sel, costs, candidates, settings)
        rule = choice.rule
    rule = rule.validate(n_layers)
    folder = workdir / "chosen"
    if choice is not None and rule.exits == candidates:  # the segments the search read: only the rule changes
        shutil.copytree(workdir / "all", folder, dirs_exist_ok=True)
        set_rule(folder, rule)
    else:
        export_segments(model, heads.subset(rule.exits) if rule.exits else None, rule, folder, precision=precision,
                        quant=latency.quant, labels=labels, base_layers=base_layers)
    runner = ExitRunner(folder, threads=threads)
    depths_all = runner.exits
    out: dict[str, Any] = {"variant": variant_name(latency.runtime, precision) + "+exits", "precision": precision,
                           "rule": rule.to_dict(), "exits_rule": rule.describe(), "heads": heads.describe(),
                           "exit_layers": [int(base_layers[p - 1]) for p in rule.exits] if base_layers else None,
                           "segments": len(depths_all)}
    for key, (ids, y) in data.rows.items():
        correct, depths = served(runner, ids, y)
        acc = float(correct.mean()) if len(ids) else None
        out[f"{key}_accuracy_deployed"] = acc
        if keep_correct:
            out[f"{key}_correct"] = correct.tolist()
        out[f"{key}_exit_shares"] = shares(depths, depths_all)
        out[f"{key}_mean_layers"] = float(depths.mean()) if len(depths) else None
    for key in ("val", "test"):  # a variant's accuracies are only ever as served
        out[f"{key}_accuracy"] = out.get(f"{key}_accuracy_deployed")
    if choice is not None:
        out["selection"] = choice.to_dict()
    # time per input, as served, paired with the member's single graph and with the base (c)
    # the timing sample: the pool's mix of exits and lengths (every input of the pool run once to read its exit)
    pool_depths = np.array([runner(x)[1] for x in data.member])
    pick = exit_sample(pool_depths, np.array([x.shape[1] for x in data.member]), data.size, seed=data.seed)
    member, base = [data.member[i] for i in pick], [data.base[i] for i in pick]
    static_session = onnx_session(static_path, threads=threads)
    base_session = onnx_session(base_path, threads=threads)
    member_feeds = [{"input_ids": x, "attention_mask": np.ones_like(x)} for x in member]
    base_feeds = [{"input_ids": x, "attention_mask": np.ones_like(x)} for x in base]
    n = len(member)

    def exits_side(i: int) -> Any:
        return runner(member[i])

    # one pairing of all three sides, taking turns on every input: the exits' time, the member's and the base's are
    # read in the same rounds, so the means printed beside a ratio are the ones it is made of (two separate pairings
    # read the same runner 1.70 ms beside the base and ~1.17 ms beside the member: the base evicts the small models'
    # weights from the cache between inputs, and each pairing saw another cache state)
    ms = paired_inputs({"base": session_call(base_session, base_feeds),
                        "static": session_call(static_session, member_feeds), "exits": exits_side}, n,
                       rounds=latency.rounds, warmup=latency.warmup)
    over_static = pair_summary(ms["exits"], ms["static"])
    over_base = pair_summary(ms["exits"], ms["base"])
    out.update({
        "latency_ms": over_base["latency_ms"], "latency_p90_ms": over_base["latency_p90_ms"],
        "latency_ms_static": over_static["base_latency_ms"],
        "latency_p90_ms_static": over_static["base_latency_p90_ms"],
        "base_latency_ms_quantized_base": over_base["base_latency_ms"],
        "speedup_over_static": over_static["speedup"], "speedup_over_static_p10": over_static["speedup_p10"],
        "speedup_over_static_p90": over_static["speedup_p90"],
        "speedup_over_quantized_base": over_base["speedup"],
        "speedup_over_quantized_base_p10": over_base["speedup_p10"],
        "speedup_over_quantized_base_p90": over_base["speedup_p90"],
        "timed_exit_shares": shares(pool_depths[pick], depths_all), "pool_exit_shares": shares(pool_depths, depths_all),
        "definition": (f"real {data.timing_split} inputs (sample {n} of {len(pool_depths)}, stratified by the exit "
                       f"taken and by length), batch 1, {threads} thread"
                       f"{'s' if threads > 1 else ''}, onnxruntime {precision} segments "
                       + (f"({latency.quant.describe()})" if precision == "int8" else "") + f", per input, "
                       f"{latency.rounds} rounds, the base, the member and its exits taking turns on every input; (a) "
                       "and (b) via the same member without exits"),
    })
    for over in ("runtime_fp32_base", "torch_fp32_base"):
        known = (static or {}).get(f"speedup_over_{over}")
        out[f"speedup_over_{over}"] = None if known is None else float(known) * over_static["speedup"]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def exits_line(number: Any, out: Mapping[str, Any]) -> str:
    """One printed line: the member with exits as served, against itself without them and against (c)."""
    acc = "  ".join(f"{k} acc {out[f'{k}_accuracy_deployed']:.4f}" for _, k in SPLIT_KEYS
                    if out.get(f"{k}_accuracy_deployed") is not None)
    test = out.get("test_exit_shares") or out.get("timed_exit_shares") or {}
    where = ", ".join(f"{share:.0%} after {d}" for d, share in test.items())
    return (f"exits    {number!s:>3} {out['variant']} ({out['exits_rule']}): {acc}; {out['latency_ms']:.2f} ms per "
            f"input (p90 {out['latency_p90_ms']:.2f}; without exits {out['latency_ms_static']:.2f}): "
            f"{out['speedup_over_static']:.2f}x over the same member without exits "
            f"(p10-p90 {out['speedup_over_static_p10']:.2f}-{out['speedup_over_static_p90']:.2f}), "
            f"{out['speedup_over_quantized_base']:.2f}x over (c); inputs leaving: {where} [{out['seconds']:.0f}s]")


def record_member_exits(study: Any, *, run_dir: Path, evaluator: Any, settings: ExitSettings, number: int, model: Any,
                        heads: ExitHeads, spec: Any, static: Mapping[str, Any], precision: str | None,
                        say: Callable[[str], None], clock: Callable[[str, float], None]) -> dict[str, Any]:
    """The final stage's member `number` with its exits: heads saved beside its weights, its rule chosen and the
    variant measured as served (measure_exits, the evaluator's timer and rows), kept in the study (EXITS_ATTR)."""
    t0 = time.perf_counter()
    timer, prep = evaluator.timer, evaluator.prep
    latency = replace(timer.settings, precision=precision or timer.settings.precision)
    name = f"final_{number}"
    static_path = timer.deployed_path(name, latency.precision)
    loaders = {key: prep.loader(split, spec.context, batch_size=evaluator.train.eval_batch_size, shuffle=False)
               for split, key in SPLIT_KEYS if split != "judge" or evaluator.judge_held_out}
    data = ExitData.build(loaders, task=prep.task, tokenizer=prep.tokenizer, latency=latency,
                          size=settings.sample_size, member_cap=timer.caps(spec.context)[0], base_cap=timer.base_cap,
                          split="judge" if evaluator.judge_held_out else None)  # rows the rule was not chosen on
    out = measure_exits(model, heads, settings=settings, data=data, static_path=static_path,
                        base_path=timer.deployed_path("base", latency.precision), latency=latency,
                        workdir=static_path.parent / f"{name}_exits", static=static, base_layers=spec.layers,
                        labels=list(getattr(prep.task, "label_names", []) or []), say=say)
    save_heads(heads, heads_path(run_dir, number))
    latest = dict(study.user_attrs.get(EXITS_ATTR) or {})
    latest[str(number)] = out
    study.set_user_attr(EXITS_ATTR, latest)
    clock("exits", time.perf_counter() - t0)
    say(exits_line(number, out))
    return out


def split_loaders(task: Any, tokenizer: Any, *, context: int, max_length: int) -> dict[str, Any]:
    """Loaders of a task's validation, judge (where held out) and test rows at a member's context, by split key."""
    out = {}
    for split, key in SPLIT_KEYS:
        ds = getattr(task, split, None)
        if ds is not None and len(ds):
            out[key] = make_loader(tokenize(ds, tokenizer, max_length=min(int(context), int(max_length))), tokenizer,
                                   batch_size=64, shuffle=False)
    return out


def export_exits(model: Any, heads: ExitHeads, *, settings: ExitSettings, rule: ExitRule | None, out: Path,
                 timer: Any, task: Any, tokenizer: Any, spec: Any, max_length: int,
                 static: Mapping[str, Any] | None = None, say: Callable[[str], None] = lambda text: None
                 ) -> dict[str, Any]:
    """A member with its exits into the export folder `out` (nas.export, nas.train): measured as served beside the
    member's deployed file in `timer` (nas.study.deployed.measure_deployed's: `export` and the base), its rule `rule`
    (None: searched on the task's validation rows), then exactly the measured segments shipped with exits.json,
    exit_runner.py, config.yaml's `exits` and a README section (nas.deploy.exits.ship). Returns the figures."""
    latency = timer.settings
    data = ExitData.build(split_loaders(task, tokenizer, context=spec.context, max_length=max_length), task=task,
                          tokenizer=tokenizer, latency=latency, size=settings.sample_size,
                          member_cap=timer.caps(spec.context)[0], base_cap=timer.base_cap)
    with tempfile.TemporaryDirectory(prefix="nas_exits_") as tmp:
        result = measure_exits(model, heads, settings=settings, data=data, static_path=timer.deployed_path("export"),
                               base_path=timer.deployed_path("base", latency.precision), latency=latency,
                               workdir=Path(tmp), static=static, rule=rule, base_layers=spec.layers,
                               labels=list(getattr(task, "label_names", []) or []), say=say)
        result["files"] = ship(Path(tmp) / "chosen", out, result)
    save_heads(heads, out / HEADS_FILE)
    result["files"].append(HEADS_FILE)
    return result
