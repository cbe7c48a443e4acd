"""`python -m nas.train +arch=PATH/config.yaml`: the final training of a chosen shape.

Re-prunes the fine-tuned base to the exported shape, fine-tunes it with a longer budget
(`final.max_steps`, distilling from the base), evaluates on validation and test, and exports
it like `nas.export` does. Model, data and pruning settings come from the arch file's run
config; command-line overrides win over them.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from rich.console import Console
from rich.markup import escape

from nas.config import CONF_DIR, refuse_bad_overrides
from nas.cost.latency import (
    flat_latency_metrics,
    gguf_variant,
    latency_settings,
    measure_runtimes,
    model_size,
    speedup_line,
)
from nas.cut.heal import heal_settings
from nas.cut.recovery import RecoverySettings
from nas.data.transfer import TransferSettings
from nas.deploy.bundle import export_all, export_gguf_set
from nas.deploy.gguf import GGUF_TYPES
from nas.deploy.gguf_quant import check_precision
from nas.deploy.llamacpp import llama_cpp_available
from nas.data.text import is_lm_data
from nas.models.loading import read_config
from nas.models.registry import family_for
from nas.quality.exits import ExitSettings
from nas.redact import protect_run
from nas.spec import SubnetSpec
from nas.study.deployed import deployed_line, measure_deployed
from nas.study.exits import exits_line, export_exits, start_member_exits
from nas.study.preflight import cli_prelude, preflight
from nas.study.prepare import prepare
from nas.study.settings import final_recipe, final_train_settings
from nas.study.trial import Evaluator

RUN_KEYS = ("model", "data", "max_length", "base", "importance", "cache_dir", "latency")


def load_arch(path: str | Path) -> dict[str, Any]:
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise ValueError(f"arch={str(path)!r} does not exist; give the config.yaml written by nas.export")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or "arch" not in data:
        raise ValueError(f"arch={str(path)!r} has no 'arch' section; give the config.yaml written by nas.export")
    return data


def merged_config(cfg: Any, arch_file: dict[str, Any], overrides: list[str]) -> Any:
    """The run's model/data/pruning settings from the arch file, then the command line's overrides."""
    run_cfg = arch_file.get("config") or {}
    merged = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(merged):
        for key in RUN_KEYS:
            if key in run_cfg:
                merged[key] = run_cfg[key]
        user = [o.lstrip("+~") for o in overrides if not o.lstrip("+").startswith("arch=")]
        if user:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(user))
    return merged


def train_to_convergence(ev: Any, model: Any, spec: Any, recipe: Any, transfer: Any, *,
                         say: Any = print, exits: Any = None) -> tuple[Any, dict[str, Any]]:
    """One shape's final training with the final recipe (the search's final stage, for one member); `exits`
    (nas.quality.exits.ExitTraining): early-exit heads attached to `model`, trained with it."""
    data = ev.distill_data(spec.context, transfer, say=say)
    run = ev.distill_run(model, spec, recipe, data, exits=exits)
    say(f"final training of {spec.describe()}: {recipe.describe(data.batches_per_epoch(recipe.train.batch_size))}; "
        f"transfer set: {transfer.describe()}")
    run.advance()
    return run.finish(), {**run.summary(), "seconds": run.seconds}


def run_final(cfg: Any, arch_path: str | Path, out_dir: str | Path, *, overrides: list[str], console: Any) -> dict[str, Any]:
    arch_file = load_arch(arch_path)
    spec = SubnetSpec.from_dict(arch_file["arch"])
    cfg = merged_config(cfg, arch_file, overrides)
    container = OmegaConf.to_container(cfg, resolve=True)
    settings = final_train_settings(container)
    recipe = final_recipe(container)  # its settings checked before any work
    recovery = RecoverySettings.from_cfg(container.get("prune")).resolved("finetune")  # it trains afterwards

    for kind in (container.get("final") or {}).get("gguf") or []:
        check_precision(str(kind), allowed_bodies=GGUF_TYPES)
    transfer = TransferSettings.from_cfg(container.get("final") or {})
    transfer.check()  # a missing transfer file or column: refused before the base is loaded
    # early exits (exits.*): refused here, before any work, where they cannot run or name a layer the shape drops
    exit_settings = ExitSettings.from_cfg(container.get("exits"))
    lm_data = is_lm_data(container.get("data"))
    planned = latency_settings(cfg, {}).resolved(lm=lm_data)
    if not exit_settings.enabled(lm=lm_data, batch_size=planned.batch_size, runtime=planned.runtime,
                                 quantization=planned.quantization, keep_fp32=planned.keep_fp32,
                                 config=read_config(cfg.model.name_or_path)) or not cfg.final.onnx:
        exit_settings = None
    elif not exit_settings.positions(spec.layers, strict=True):
        exit_settings = None  # a one-layer shape: no layer before its last
    preflight(cfg, out_dir)  # settings, files, max_length, output folder: before the base is loaded
    t0 = time.perf_counter()
    prep = prepare(cfg)
    spec.validate(prep.shape)

    family = family_for(prep.base)  # what it does not apply was refused by preflight, or is `auto` resolved here
    if recovery.method not in family.recovery_methods:
        recovery = replace(recovery, method="none")
    if not family.hidden_distill:
        settings = replace(settings, distill="logits")
    lm = bool(getattr(prep.task, "is_lm", False))  # a language-modelling task: perplexity (nas.quality.lm)
    heads = None  # early-exit heads, where the shape trains with them
    # the search's own steps: the same cut, recovery, fine-tune and evaluation as a trial and the final stage
    ev = Evaluator(prep=prep, timer=None, train=settings, recovery=recovery, lm=lm,
                   heal_settings=heal_settings(container.get("prune")))
    model, cut = ev.candidate(spec)  # a decoder's cut is healed in closed form first (nas.cut.heal)
    if lm:  # a language model: up to final.max_steps steps, the best validation checkpoint (the healed cut included)
        budget = (container.get("final") or {}).get("time_budget")
        console.print(f"final training of {spec.describe()}: up to {settings.max_steps} steps"
                      + (f" within {budget:g}s" if budget else "") + f" (distill {settings.distill}, "
                      f"{settings.resolved_precision})" + (f"; healed first (stream error x{cut['heal_error_ratio']:.2f})"
                                                            if "heal_error_ratio" in cut else ""), highlight=False)
        result = ev.fit_lm(model, spec, settings, progress="final training",
                           deadline=time.perf_counter() + float(budget) if budget else None,
                           eval_every=recipe.eval_every, patience=recipe.patience)
        result["seconds"] = result["train_seconds"]
        steps = result["steps"]
    else:  # the final recipe (nas.quality.distill): to convergence, best validation checkpoint
        exits = start_member_exits(model, spec, exit_settings, labels=int(model.config.num_labels), train=settings,
                                   strict=True)
        model, result = train_to_convergence(ev, model, spec, recipe, transfer, say=console.print, exits=exits)
        heads = exits.detach(model) if exits is not None else None
        steps = result["steps"]
    q, val = ev.quality_of(model, spec, "validation")
    metrics: dict[str, Any] = {
        f"val_{q}": val,
        f"test_{q}": ev.quality_of(model, spec, "test")[1],
    }
    if lm:  # per byte of the text and per token of the base's tokenizer (nas.quality.metrics)
        for split, key in (("validation", "val"), ("test", "test")):
            metrics.update(ev.text_metrics(model, spec, split, key))

    lat = replace(latency_settings(cfg, {}).resolved(lm=lm), model="measured")
    deployed_file, timer = None, None
    if cfg.final.onnx and not lm and lat.runtime == "onnxruntime":  # as it will run, against the three baselines
        deployed_metrics, deployed, timer = measure_deployed(model, spec, base=prep.base, task=prep.task,
                                                             tokenizer=prep.tokenizer, settings=lat,
                                                             max_length=int(cfg.max_length))
        deployed_file = timer.deployed_path("export")
        metrics.update(deployed_metrics)
    runtimes = ("torch", "onnxruntime") if cfg.final.onnx or lat.runtime == "onnxruntime" else ("torch",)
    gguf_types = [str(t) for t in cfg.final.get("gguf") or []] if lm else []
    if lm and lat.generation not in ("prefill",):
        runtimes = ("torch",)  # decode with the KV cache: in torch, and in llama.cpp for each GGUF type
        if llama_cpp_available():
            runtimes += tuple(gguf_variant(t) for t in gguf_types)
    measured = measure_runtimes(model, context=spec.context, base=prep.base, task=prep.task, tokenizer=prep.tokenizer,
                                settings=lat, max_length=int(cfg.max_length), runtimes=runtimes,
                                moments=ev.moments if lm else None)
    metrics.update(**flat_latency_metrics(measured), **model_size(model))
    if lm:  # the base on the same text, per byte (a cut vocabulary tokenizes it otherwise)
        full = SubnetSpec.full(prep.shape)
        for split, key in (("validation", "base_val"), ("test", "base_test")):
            metrics.update(ev.text_metrics(prep.base, full, split, key))
    else:
        metrics[f"base_val_{q}"] = prep.base_info[f"validation_{q}"]
        metrics[f"base_test_{q}"] = prep.base_info[f"test_{q}"]
    metrics["final_steps"] = steps
    metrics["train_seconds"] = result["seconds"]
    metrics.update(best_step=result["best_step"], stopped_early=result["stopped_early"])

    source = {**(arch_file.get("source") or {}), "final_training": True,
              "cfg": OmegaConf.to_container(cfg, resolve=False)}
    shipped = None
    try:
        export_all(model, prep.tokenizer, spec, out_dir, metrics=metrics, source=source, onnx=bool(cfg.final.onnx),
                   deployed=deployed_file)
        if not lm and heads is not None and timer is not None:  # the rule chosen on the selection rows, then shipped
            shipped = export_exits(model, heads, settings=exit_settings, rule=None, out=Path(out_dir), timer=timer,
                                   task=prep.task, tokenizer=prep.tokenizer, spec=spec, max_length=int(cfg.max_length),
                                   static=metrics)
    finally:
        if timer is not None:
            timer.close()
    if gguf_types:
        for line in export_gguf_set(model, prep.tokenizer, out_dir, gguf_types, source_gguf=prep.source_gguf,
                                    task=prep.task, context=spec.context, max_length=int(cfg.max_length),
                                    threads=lat.threads, metrics=metrics, moments=ev.moments(model),
                                    imatrix=lat.imatrix not in (None, "none"), gptq=lat.rounding == "gptq"):
            console.print(line, highlight=False)
    console.print(
        f"{spec.describe()}: val {q} {metrics[f'val_{q}']:.4f}, test {q} {metrics[f'test_{q}']:.4f} "
        f"(base {metrics[f'base_test_{q}']:.4f}); exported to {out_dir} [{time.perf_counter() - t0:.0f}s]",
        highlight=False,
    )
    for runtime, m in measured.items():
        console.print(speedup_line(runtime, m), highlight=False)
    if timer is not None:
        console.print(deployed_line(deployed, metrics), highlight=False)
    if shipped is not None:
        console.print(exits_line("exits", shipped), highlight=False)
        metrics["exits"] = shipped
    return metrics


def main() -> None:
    real_storage = cli_prelude(sys.argv)
    refuse_bad_overrides(sys.argv)  # a wrong key or type: one line, before Hydra says it in ten

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def _main(cfg: Any) -> None:
        protect_run(cfg, HydraConfig.get().runtime.output_dir, real_storage)
        console = Console(soft_wrap=True)
        try:
            arch = cfg.get("arch")
            if not arch:
                raise ValueError("give the shape to train: +arch=PATH/config.yaml (written by nas.export)")
            out = Path(HydraConfig.get().runtime.output_dir) / "model"
            run_final(cfg, arch, out, overrides=list(HydraConfig.get().overrides.task), console=console)
        except (ValueError, FileNotFoundError) as e:
            console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
            sys.exit(2)

    _main()


if __name__ == "__main__":
    main()
