"""`python -m nas.export run_dir=PATH [pick=knee|max_accuracy|min_latency|trial trial=N]
[max_latency_ms=X] [min_accuracy=Y] [out=FOLDER]`: a search result in deployable form.

Writes into the output folder:
- config.yaml: the chosen SubnetSpec, the base model and data it came from, its metrics;
  `python -m nas.train +arch=FOLDER/config.yaml` re-trains it longer.
- an HF folder (config.json, model.safetensors, tokenizer) loadable with transformers' Auto
  classes; shapes the stock architecture cannot express ship the family's modeling file (modeling_nas.py for
  BERT) and load with trust_remote_code=True.
- model.onnx with dynamic batch and sequence axes (fp32), and the model as it is deployed in the
  run's runtime and precision: model.int8.onnx (onnxruntime's int8 quantization, nas.deploy.quantize)
  with its accuracy measured there and its speedups over the three baselines.
- README.md: shape, metrics, how to load and run it (an onnxruntime session).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, make_dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional, get_type_hints

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf
from pandas import notna
from rich.console import Console
from rich.markup import escape

from nas.config import CONF_DIR, compose_or_refuse
from nas.cost.latency import (
    LatencySettings,
    flat_latency_metrics,
    gguf_variant,
    latency_settings,
    measure_runtimes,
    speedup_line,
)
from nas.cut.prune import prune_model
from nas.cut.vocab import tokenizer_for
from nas.data.tasks import load_task
from nas.deploy.bundle import export_all, export_gguf_set
from nas.deploy.exits import remove_segments
from nas.deploy.gguf import GGUF_ARCHES, GGUF_TYPES, bpe_fields, check_request
from nas.deploy.gguf_quant import check_precision
from nas.deploy.imatrix import calibration_ids, moments_of
from nas.deploy.llamacpp import llama_cpp_available
from nas.models.gguf import gguf_file_of
from nas.models.loading import load_base_model, load_causal_lm, load_tokenizer
from nas.models.registry import family_for
from nas.redact import guard_output
from nas.quality.exits import ExitRule, ExitSettings
from nas.spec import SubnetSpec
from nas.study.deployed import deployed_line, measure_deployed
from nas.study.exits import exits_line, export_exits, heads_path, load_heads
from nas.study.lm_final import ALONE_PREFIX
from nas.study.prepare import prepare
from nas.study.report import (EXITS_ATTR, WINNER_ATTR, WINNER_EXITS_ATTR, cost_column, final_quality, knee_index,
                              pareto_frame, trials_frame)
from nas.study.runs import load_run, rebuild_trial_model, trial_weights
from nas.study.settings import QUANT_ALONE_ATTR
from nas.util import quiet_libraries

PICKS = ("winner", "knee", "max_accuracy", "min_latency", "trial")


# ---------------------------------------------------------------------------- choosing


def choose(front: Any, *, pick: str = "knee", trial: int | None = None, max_latency_ms: float | None = None,
           min_accuracy: float | None = None, trials: Any = None, cost: str = "latency_ms",
           winner: int | None = None, winner_exits: bool = False) -> Mapping[str, Any]:
    """One row of the front (a pandas Series) by the pick rule, after the budgets filter it.

    `front` has columns number, val_accuracy, latency_ms, `cost` and is_base (the base row is
    never picked). pick=knee uses the study's cost column; min_latency always means the lowest
    measured latency_ms, and max_latency_ms always bounds latency_ms, whatever the cost objective.
    pick=trial takes `trial` from `trials` (every trial of the study) and ignores the budgets.
    pick=winner takes the final stage's winner (`winner`: the fastest final member within final.band; `winner_exits`:
    its early-exit variant, a row of its own) when it meets the budgets, else the knee.
    Raises ValueError with one line when the rule or the budgets leave nothing.
    """

    if pick not in PICKS:
        raise ValueError(f"pick={pick!r} is not known; allowed: {', '.join(PICKS)}")
    members = front[~front["is_base"].fillna(False).astype(bool)]
    # the quality: accuracy, or perplexity (lower is better) for a language-modelling study (nas.quality.lm)
    perplexity = next((c for c in ("val_byte_perplexity", "val_perplexity") if c in members
                       and members[c].notna().any()), None)  # per byte of the text (a cut vocabulary compares)
    q = acc = perplexity or "val_accuracy"

    final = final_quality(members) if pick != "trial" else None
    if final is not None:
        # the final stage trained some members longer: the choice is among those, on their final quality
        members = members[members[final].notna()].assign(**{q: members[final]})
        acc = final
    if pick == "trial":
        if trial is None:
            raise ValueError("pick=trial needs trial=N (a trial number)")
        pool = trials if trials is not None else members
        hit = pool[pool["number"] == trial]
        if hit.empty:
            known = sorted(int(n) for n in pool["number"].dropna())
            ran = f"trials run: {known[0]}..{known[-1]}" if known else "no trials ran"
            raise ValueError(f"trial={trial} is not in this study; {ran}")
        row = hit.iloc[0]
        if "state" in row and row["state"] != "COMPLETE":
            raise ValueError(f"trial={trial} did not complete (state {row['state']}); pick a COMPLETE trial")
        return row
    if members.empty:
        raise ValueError("the study has no completed trial on its Pareto front yet; nothing to export")
    ok = members
    if max_latency_ms is not None:
        ok = ok[ok["latency_ms"] <= max_latency_ms]
    if min_accuracy is not None:
        ok = ok[ok["val_accuracy"] >= min_accuracy]
    if ok.empty:
        gap = members["latency_ms"].astype(float) * 0.0  # relative shortfall, summed over budgets
        if max_latency_ms is not None:
            gap = gap + (members["latency_ms"] - max_latency_ms).clip(lower=0) / max_latency_ms
        if min_accuracy is not None:
            gap = gap + (min_accuracy - members["val_accuracy"]).clip(lower=0)
        closest = members.assign(gap=gap).sort_values(["gap", "latency_ms"]).head(3)
        names = "; ".join(
            f"trial {int(r['number'])} ({acc} {r[acc]:.4f}, latency_ms {r['latency_ms']:.4g})"
            for _, r in closest.iterrows()
        )
        budgets = " and ".join(f"{k}={v:g}" for k, v in (("max_latency_ms", max_latency_ms),
                                                          ("min_accuracy", min_accuracy)) if v is not None)
        raise ValueError(f"no Pareto trial meets {budgets}; closest: {names}")
    named = ok["number"] == winner
    if "exits" in ok:  # a member and its early-exit variant: the one the final stage named
        named &= ok["exits"].notna() == bool(winner_exits)
    if pick == "winner" and winner is not None and named.any():
        return ok[named].iloc[0]
    if pick == "max_accuracy":
        return ok.sort_values([q, cost], ascending=[q.endswith("perplexity"), True]).iloc[0]
    if pick == "min_latency":
        return ok.sort_values(["latency_ms", q], ascending=[True, q.endswith("perplexity")]).iloc[0]
    k = knee_index(ok.assign(is_base=False), acc=q, cost=cost)
    if k is None:
        raise ValueError(f"no Pareto trial has both val_accuracy and {cost}; pick another rule")
    return ok.loc[k]


# ---------------------------------------------------------------------------- writing


# ---------------------------------------------------------------------------- the command


class Pick(str, Enum):
    winner = "winner"
    knee = "knee"
    max_accuracy = "max_accuracy"
    min_latency = "min_latency"
    trial = "trial"


def _optional(kind: Any) -> Any:
    """LatencySettings' field type, optional: None leaves the run's own setting."""
    return Optional[kind] if kind in (int, float, str, bool) else Optional[Any]  # noqa: UP045 (OmegaConf reads it)


# latency.KEY=VALUE overrides the run's own latency settings (how its search timed trials), key by key.
LatencyOverrides = make_dataclass(
    "LatencyOverrides",
    [(f.name, _optional(get_type_hints(LatencySettings)[f.name]), field(default=None)) for f in fields(LatencySettings)],
)


@dataclass
class ExportSettings:
    """`python -m nas.export` settings (conf/export.yaml); Hydra checks their names and types."""

    run_dir: str = MISSING  # a folder written by python -m nas.search
    pick: Optional[Pick] = None  # noqa: UP045  winner (default) | knee | max_accuracy | min_latency | trial (trial=N)
    trial: Optional[int] = None  # noqa: UP045
    max_latency_ms: Optional[float] = None  # noqa: UP045  filter the front first
    min_accuracy: Optional[float] = None  # noqa: UP045
    out: Optional[str] = None  # noqa: UP045  default: RUN_DIR/export/trial_N
    onnx: bool = True
    # language models: GGUF files for llama.cpp (f32, f16, q8_0, q4_0); null: q8_0 for a language model, none otherwise
    gguf: Optional[List[str]] = None  # noqa: UP045
    # auto: llama (deci for per-layer shapes), or the family's own (qwen3, smollm3) | llama | deci | qwen3 | smollm3
    gguf_arch: str = "auto"
    # early exits: null: as the chosen row is (an early-exit variant ships them) | true: with them | false: without
    exits: Optional[bool] = None  # noqa: UP045
    latency: Any = field(default_factory=LatencyOverrides)


ConfigStore.instance().store(name="export_schema", node=ExportSettings)
KEYS = [f.name for f in fields(ExportSettings) if f.name != "latency"] + ["latency.KEY"]


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    """The export's settings from key=value overrides (Hydra's grammar), checked: one-line ValueErrors."""
    try:
        cfg = compose_or_refuse(argv, config_name="export")
    except ValueError as e:
        if "is not a setting" not in str(e):
            raise
        keys = [f"latency.{f.name}" for f in fields(LatencyOverrides)] if str(e).startswith("latency.") else KEYS
        raise ValueError(f"{e}; allowed: {', '.join(keys)}") from None
    return settings_of(cfg)


def settings_of(cfg: Any) -> dict[str, Any]:
    """What Hydra's types cannot say: a run folder is required, and the pick rule's arguments agree."""
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise ValueError("run_dir=PATH is required (a folder written by python -m nas.search)")
    args: dict[str, Any] = {k: cfg[k] for k in ("run_dir", "trial", "max_latency_ms", "min_accuracy", "out", "onnx",
                                                "gguf_arch", "exits")}
    args["gguf"] = None if cfg.gguf is None else [str(t) for t in cfg.gguf]
    for t in args["gguf"] or []:
        check_precision(t, allowed_bodies=GGUF_TYPES)
    if args["gguf_arch"] not in GGUF_ARCHES:
        raise ValueError(f"gguf_arch={args['gguf_arch']!r} is not known; allowed: {', '.join(GGUF_ARCHES)}")
    args["latency"] = {k: v for k, v in OmegaConf.to_container(cfg.latency).items() if v is not None}
    pick = cfg.pick
    args["pick"] = pick.value if pick is not None else "trial" if args["trial"] is not None else "winner"
    if args["pick"] == "trial" and args["trial"] is None:
        raise ValueError("pick=trial needs trial=N (a trial number)")
    if args["trial"] is not None and args["pick"] != "trial":
        raise ValueError(f"trial={args['trial']} goes with pick=trial, not pick={args['pick']}")
    if args["max_latency_ms"] is not None and not args["max_latency_ms"] > 0:
        raise ValueError(f"max_latency_ms={args['max_latency_ms']:g} must be > 0")
    if args["min_accuracy"] is not None and not 0 <= args["min_accuracy"] <= 1:
        raise ValueError(f"min_accuracy={args['min_accuracy']:g} must be a fraction in [0, 1]")
    if args["pick"] == "trial" and (args["max_latency_ms"] is not None or args["min_accuracy"] is not None):
        raise ValueError("max_latency_ms / min_accuracy choose among the front; they do not apply to pick=trial")
    return args


def pick_row(study: Any, args: Mapping[str, Any]) -> Mapping[str, Any]:
    """The front row (or, for pick=trial, the trial row) the arguments choose. Cheap: no torch."""

    objectives = study.user_attrs.get("objectives", ["accuracy", "latency"])
    cost = cost_column(objectives)
    front = pareto_frame(study, study.user_attrs.get("base", {}), cost=cost)
    return choose(front, pick=args["pick"], trial=args["trial"], max_latency_ms=args["max_latency_ms"],
                  min_accuracy=args["min_accuracy"], trials=trials_frame(study), cost=cost,
                  winner=study.user_attrs.get("final_winner"),
                  winner_exits=bool(study.user_attrs.get(WINNER_EXITS_ATTR)))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m nas.export KEY=VALUE ...` (argv None: the command line, through Hydra: --help, --cfg
    and the grammar of nas.search), or the same from a list of overrides. Returns the exit code."""
    guard_output()
    console = Console(soft_wrap=True)
    args = list(sys.argv[1:] if argv is None else argv)
    if argv is not None or not any(a.startswith("-") for a in args):
        try:  # every setting is checked before anything is read: one line per mistake
            settings = parse_args(args)
        except ValueError as e:
            console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
            return 2
        if argv is not None:
            return run(settings, console)

    @hydra.main(config_path=str(CONF_DIR), config_name="export", version_base="1.3")
    def export(cfg: Any) -> None:
        code = run(settings_of(cfg), console)
        if code:
            sys.exit(code)

    export()
    return 0


def run(args: dict[str, Any], console: Any) -> int:
    try:
        run_dir = Path(args["run_dir"]).resolve()
        cfg, study = load_run(run_dir)
        lm_study = int(study.user_attrs.get("num_labels", 2) or 0) == 0
        if args.get("gguf") and not lm_study:
            raise ValueError(f"gguf={args['gguf']}: GGUF files are for language models that llama.cpp runs; this run's "
                             "model is a classifier: its deployable file is the ONNX one (onnx=true)")
        args["latency_settings"] = latency_settings(cfg, args["latency"])
        winner = study.user_attrs.get(WINNER_ATTR)
        if (args["pick"] == "winner" and isinstance(winner, str) and args["max_latency_ms"] is None
                and args["min_accuracy"] is None):  # the base alone (quantized, its vocabulary cut) won
            alone = (study.user_attrs.get(QUANT_ALONE_ATTR) or {}).get(winner.removeprefix(ALONE_PREFIX))
            if alone is None:
                raise ValueError(f"the final stage's winner {winner!r} is not among this run's quantization_alone rows")
            args["gguf_types"] = list(args["gguf"]) if args.get("gguf") is not None else [alone["precision"]]
            return _export_alone(console, args, run_dir, cfg, study, winner, alone)
        # Every argument error comes back before torch / transformers are even imported.
        row = pick_row(study, args)
        repeat_of = row.get("repeat_of")
        if repeat_of is not None and repeat_of == repeat_of:  # not NaN: a repeated shape, trained once
            console.print(f"trial {int(row['number'])} repeats the shape of trial {int(repeat_of)}: exporting that one",
                          highlight=False)
            row = pick_row(study, {**args, "pick": "trial", "trial": int(repeat_of)})
        weights = trial_weights(run_dir, int(row["number"]))
        if not weights.is_file():
            raise ValueError(f"trial {int(row['number'])}'s weights are not in {weights.parent} "
                             "(only Pareto members keep weights)")
        # a language model's default GGUF type: the one the chosen trial was searched at (q8_0 without a precision axis)
        searched = study.trials[int(row["number"])].user_attrs.get("precision") or "q8_0"
        args["gguf_types"] = list(args["gguf"]) if args.get("gguf") is not None else ([searched] if lm_study else [])
        args["exit_variant"] = exit_variant(study, run_dir, row, args.get("exits"), onnx=args["onnx"])
        if isinstance(row.get("exits"), str):  # the variant's member: its own figures, the exits' beside them
            row = pick_row(study, {**args, "pick": "trial", "trial": int(row["number"]), "max_latency_ms": None,
                                   "min_accuracy": None})
        return _export(console, args, run_dir, cfg, study, row)
    except ValueError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
        return 2


def exit_variant(study: Any, run_dir: Path, row: Mapping[str, Any], wanted: bool | None, *,
                 onnx: bool) -> Mapping[str, Any] | None:
    """The chosen member's early-exit variant (nas.study.exits: its figures and rule) when it ships with exits
    (`wanted`: exits=; None: as the row is), else None; exits=true for a member without them is refused in one line."""
    number = int(row["number"])
    with_exits = isinstance(row.get("exits"), str) if wanted is None else bool(wanted)
    if not with_exits:
        return None
    variant = (study.user_attrs.get(EXITS_ATTR) or {}).get(str(number))
    if variant is None or not heads_path(run_dir, number).is_file():
        known = sorted(int(n) for n in (study.user_attrs.get(EXITS_ATTR) or {}))
        raise ValueError(f"exits=true: trial {number} has no early exits (final members trained with them: "
                         f"{known or 'none'}; exits.layers was none, or they could not run)")
    if not onnx:
        raise ValueError("exits=true ships onnxruntime segments: it needs onnx=true")
    return variant


def _export(console: Any, args: Mapping[str, Any], run_dir: Path, cfg: Any, study: Any, row: Mapping[str, Any]) -> int:
    quiet_libraries()
    number = int(row["number"])
    trial = study.trials[number]
    spec = SubnetSpec.from_dict(trial.user_attrs["spec"])
    final = (study.user_attrs.get("final") or {}).get(str(number)) or {}
    if final.get("spec") and trial_weights(run_dir, number).name.startswith("final_"):
        spec = SubnetSpec.from_dict(final["spec"])  # the final stage's layers (final.layers), same sizes
    label_names = tuple(trial.user_attrs.get("label_names") or study.user_attrs.get("label_names") or ())
    num_labels = len(label_names) or int(study.user_attrs.get("num_labels", 2))
    model = rebuild_trial_model(cfg, run_dir, number, spec, num_labels, label_names or None)
    variant = args.get("exit_variant")
    exits = None
    if variant is not None:  # its exit heads (saved beside its final weights) and the rule the final stage chose
        exits = {"heads": load_heads(variant["heads"], heads_path(run_dir, number)),
                 "rule": ExitRule.from_dict(variant["rule"]), "variant": variant,
                 "settings": ExitSettings.from_cfg(OmegaConf.to_container(cfg.exits, resolve=True)
                                                   if "exits" in cfg else {})}
    gguf_types = list(args.get("gguf_types") or [])
    if gguf_types:  # a shape llama.cpp cannot build is refused before anything is written
        check_request(model, gguf_types, args.get("gguf_arch", "auto"))
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    if args.get("gguf") and gguf_file_of(cfg.model.name_or_path) is None:
        bpe_fields(tokenizer)  # asked for GGUF: a tokenizer it cannot carry is refused before anything is written
    out = Path(args.get("out") or run_dir / "export" / f"trial_{number}").resolve()
    metrics = {k: row[k] for k in ("val_accuracy", "test_accuracy", "val_byte_perplexity", "test_byte_perplexity",
                                   "val_perplexity", "test_perplexity", "params", "flops", "size_mb")
               if k in row and row[k] == row[k] and row[k] is not None}
    final = trial_weights(run_dir, number).name.startswith("final_")
    if final:  # the final stage's weights and accuracies (perplexities per byte for a language model)
        q = "byte_perplexity" if notna(row.get("final_val_byte_perplexity")) else "accuracy"
        metrics.update({f"val_{q}": row[f"final_val_{q}"], f"test_{q}": row[f"final_test_{q}"],
                        f"trial_val_{q}": trial.user_attrs.get(f"val_{q}"), "final_steps": row["final_steps"]})
    source = {"model": cfg.model.name_or_path or "embedded:all-MiniLM-L6-v2", "trial": number,
              "space": study.user_attrs.get("space"), "run_dir": str(run_dir), "pick": args["pick"],
              "cfg": OmegaConf.to_container(cfg, resolve=False)}
    console.print(f"exporting trial {number} ({spec.describe()}) by pick={args['pick']} to {out}"
                  + (" (final-trained weights)" if final else "")
                  + (f" with early exits ({exits['rule'].describe()})" if exits else ""), highlight=False)
    return _write(console, args, cfg, model, spec, tokenizer, out, metrics, source, num_labels=num_labels,
                  gguf_types=gguf_types, exits=exits)


def _export_alone(console: Any, args: Mapping[str, Any], run_dir: Path, cfg: Any, study: Any, key: str,
                  alone: Mapping[str, Any]) -> int:
    """The final stage's winner is the base alone (quantized, its vocabulary cut: a quantization_alone row): the
    run's fine-tuned base (cached by the search), its vocabulary cut as the row's spec says, as GGUF files."""
    quiet_libraries()
    spec = SubnetSpec.from_dict(alone["spec"])
    prep = prepare(cfg)  # the fine-tuned base and the vocabulary's ranking, from the search's cache
    model = prune_model(prep.base, spec, prep.scores).eval()
    gguf_types = list(args.get("gguf_types") or [])
    check_request(model, gguf_types, args.get("gguf_arch", "auto"))
    label = key.removeprefix(ALONE_PREFIX).replace(" ", "_")
    out = Path(args.get("out") or run_dir / "export" / f"base_{label}").resolve()
    metrics = {k: v for k, v in alone.items() if k.startswith(("val_", "test_")) and v is not None}
    source = {"model": cfg.model.name_or_path, "trial": None, "alone": key, "space": study.user_attrs.get("space"),
              "run_dir": str(run_dir), "pick": args["pick"], "cfg": OmegaConf.to_container(cfg, resolve=False)}
    console.print(f"exporting the final stage's winner, {key} (the fine-tuned base alone: no member was faster within "
                  f"the band; {spec.describe()}) to {out}", highlight=False)
    return _write(console, args, cfg, model, spec, prep.tokenizer, out, metrics, source, num_labels=0,
                  gguf_types=gguf_types)


def _write(console: Any, args: Mapping[str, Any], cfg: Any, model: Any, spec: Any, tokenizer: Any, out: Path,
           metrics: dict[str, Any], source: Mapping[str, Any], *, num_labels: int, gguf_types: list[str],
           exits: Mapping[str, Any] | None = None) -> int:
    """The export folder of `model` (cut to `spec`): config.yaml, the HF folder, ONNX (classifiers) or GGUF files
    (language models), README.md; each timed in paired rounds with the base. `exits` ({heads, rule, settings}): the
    member's early exits too (segments, exits.json, exit_runner.py), measured as served beside it."""

    # Latency of the export vs the base: paired rounds in this process, on the task's inputs, in
    # each runtime (the base's weights do not change its speed, so the pretrained one stands in).
    settings = args["latency_settings"]
    lm = num_labels == 0  # a language-modelling study (nas.quality.lm): the causal LM, generation latency in torch
    if lm:
        base = load_causal_lm(cfg.model.name_or_path)
    else:
        base = load_base_model(cfg.model.name_or_path, num_labels=num_labels)
    task = load_task(cfg.data) if settings.inputs == "real" or lm or args["onnx"] else None
    max_length = int(cfg.get("max_length", 128))
    settings = replace(settings.resolved(lm=lm), model="measured")  # an export is always timed, never predicted
    deployed_file = None
    timer = None
    if args["onnx"] and not lm and settings.runtime == "onnxruntime":
        # As it will run: the export in this runtime and precision (e.g. int8 ONNX), its accuracy there
        # and its speedups over the three baselines, each timed in paired rounds with the base.
        deployed_metrics, deployed, timer = measure_deployed(model, spec, base=base, task=task, tokenizer=tokenizer,
                                                             settings=settings, max_length=max_length)
        deployed_file = timer.deployed_path("export")
        metrics.update(deployed_metrics)
        console.print(deployed_line(deployed, metrics), highlight=False)
    runtimes = ("torch",) if lm or not args["onnx"] or settings.generation not in ("auto", "prefill") else (
        "torch", "onnxruntime")
    if gguf_types and llama_cpp_available():  # each GGUF type in llama.cpp, paired with the base written the same way
        runtimes += tuple(gguf_variant(t) for t in gguf_types)
    moments = None
    if gguf_types:  # quantized files: GPTQ and the importance matrix read the models' inputs on training text
        moments = moments_of(lambda m: calibration_ids(  # in each model's own ids (a cut vocabulary reads its own)
            task, tokenizer_for(m, tokenizer), blocks=int(cfg.get("prune", {}).get("heal_blocks", 64)),
            max_length=max_length, seed=int(cfg.get("train", {}).get("seed", 0))))
    measured = measure_runtimes(model, context=spec.context, base=base, task=task, tokenizer=tokenizer,
                                settings=settings, max_length=max_length, runtimes=runtimes, moments=moments)
    for runtime, m in measured.items():
        console.print(speedup_line(runtime, m), highlight=False)
    metrics.update(flat_latency_metrics(measured))
    if exits is not None and timer is None:
        raise ValueError("early exits run in onnxruntime: this export's latency.runtime is not onnxruntime")
    remove_segments(out)  # an earlier export's exits never stay beside another model
    try:
        info = export_all(model, tokenizer, spec, out, metrics=metrics, source=source, onnx=args["onnx"],
                          deployed=deployed_file)
        if exits is not None:
            shipped = export_exits(model, exits["heads"], settings=exits["settings"], rule=exits["rule"], out=out,
                                   timer=timer, task=task, tokenizer=tokenizer, spec=spec, max_length=max_length,
                                   static=metrics)
            console.print(exits_line("export", shipped), highlight=False)
    finally:
        if timer is not None:
            timer.close()
    if gguf_types:
        gguf_lines = export_gguf_set(model, tokenizer, out, gguf_types, arch=args.get("gguf_arch", "auto"),
                                     source_gguf=gguf_file_of(cfg.model.name_or_path), task=task, context=spec.context,
                                     max_length=max_length, threads=settings.threads, metrics=metrics,
                                     moments=moments(model) if moments else None,
                                     imatrix=settings.imatrix not in (None, "none"), gptq=settings.rounding == "gptq")
        for line in gguf_lines:
            console.print(line, highlight=False)
    console.print(f"wrote {out}: config.yaml, config.json, model.safetensors, tokenizer"
                  + (f", {family_for(model).loads_with(model)[1]} (trust_remote_code=True)" if info["remote_code"]
                     else "")
                  + (", model.onnx" if args["onnx"] else "")
                  + (f", {deployed_file.name.replace('export', 'model')}" if deployed_file is not None and
                     deployed_file.name != "export.onnx" else "")
                  + (", exit_*.onnx, exits.json, exit_runner.py" if exits is not None else "") + ", README.md",
                  highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
