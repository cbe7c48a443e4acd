"""`python -m nas.export run_dir=PATH [pick=knee|max_accuracy|min_latency|trial trial=N]
[max_latency_ms=X] [min_accuracy=Y] [out=FOLDER]`: a search result in deployable form.

Writes into the output folder:
- config.yaml: the chosen SubnetSpec, the base model and data it came from, its metrics;
  `python -m nas.train +arch=FOLDER/config.yaml` re-trains it longer.
- an HF folder (config.json, model.safetensors, tokenizer) loadable with transformers' Auto
  classes; shapes the stock architecture cannot express ship modeling_nas.py and load with
  trust_remote_code=True.
- model.onnx with dynamic batch and sequence axes.
- README.md: shape, metrics, how to load it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PICKS = ("knee", "max_accuracy", "min_latency", "trial")
REMOTE_CODE = Path(__file__).resolve().parent / "hf_remote" / "modeling_nas.py"
# family -> (config class, model class, model_type written to config.json). The model_type stays
# the stock one: AutoConfig / AutoTokenizer then need no custom code (no trust prompt) and only
# the model needs trust_remote_code=True (without it, loading fails on mismatched shapes).
REMOTE_CLASSES = {
    "bert": ("NasBertConfig", "NasBertForSequenceClassification", "bert"),
    "roberta": ("NasRobertaConfig", "NasRobertaForSequenceClassification", "roberta"),
    "distilbert": ("NasDistilBertConfig", "NasDistilBertForSequenceClassification", "distilbert"),
}


# ---------------------------------------------------------------------------- choosing


def choose(front: Any, *, pick: str = "knee", trial: int | None = None, max_latency_ms: float | None = None,
           min_accuracy: float | None = None, trials: Any = None, cost: str = "latency_ms") -> Mapping[str, Any]:
    """One row of the front (a pandas Series) by the pick rule, after the budgets filter it.

    `front` has columns number, val_accuracy, latency_ms, `cost` and is_base (the base row is
    never picked). pick=knee uses the study's cost column; min_latency always means the lowest
    measured latency_ms, and max_latency_ms always bounds latency_ms, whatever the cost objective.
    pick=trial takes `trial` from `trials` (every trial of the study) and ignores the budgets.
    Raises ValueError with one line when the rule or the budgets leave nothing.
    """
    from nas.report import knee_index

    if pick not in PICKS:
        raise ValueError(f"pick={pick!r} is not known; allowed: {', '.join(PICKS)}")
    members = front[~front["is_base"].fillna(False).astype(bool)]
    # the quality: accuracy, or perplexity (lower is better) for a language-modelling study (nas.lm)
    perplexity = "val_perplexity" in members and members["val_perplexity"].notna().any()
    q = acc = "val_perplexity" if perplexity else "val_accuracy"
    from nas.report import final_quality

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
    if pick == "max_accuracy":
        return ok.sort_values([q, cost], ascending=[q == "val_perplexity", True]).iloc[0]
    if pick == "min_latency":
        return ok.sort_values(["latency_ms", q], ascending=[True, q == "val_perplexity"]).iloc[0]
    k = knee_index(ok.assign(is_base=False), acc=q, cost=cost)
    if k is None:
        raise ValueError(f"no Pareto trial has both val_accuracy and {cost}; pick another rule")
    return ok.loc[k]


# ---------------------------------------------------------------------------- writing


def fits_stock(model: Any) -> bool:
    """True when the stock config expresses the shape: equal heads and FFN in every layer and
    heads * head_size == hidden (stock BERT derives head size = hidden / heads)."""
    from nas.arch import arch_for

    cfg = model.config
    arch = arch_for(model)
    heads = getattr(cfg, "nas_heads", None)
    if heads is None:
        return True
    ffn = cfg.nas_ffn
    hidden = getattr(cfg, arch.cfg_hidden)
    return len(set(heads)) == 1 and len(set(ffn)) == 1 and heads[0] * cfg.nas_head_size == hidden


def save_hf_folder(model: Any, tokenizer: Any, out: str | Path, *, context: int) -> dict[str, Any]:
    """Save an HF folder that loads outside this project. Returns {'remote_code': bool}."""
    from safetensors.torch import save_file

    from nas.decoder import is_decoder

    if is_decoder(model):  # Llama family (nas.lmexport)
        from nas.lmexport import save_decoder_folder

        return save_decoder_folder(model, tokenizer, out, context=context)

    from nas.arch import arch_for

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arch = arch_for(model)
    cfg = model.config.to_dict()
    for key in ("nas_spec", "nas_base_shape"):
        cfg.pop(key, None)
    remote = not fits_stock(model)
    if remote:
        config_cls, model_cls, model_type = REMOTE_CLASSES[arch.family]
        cfg.update(
            model_type=model_type,
            architectures=[model_cls],
            auto_map={
                "AutoConfig": f"modeling_nas.{config_cls}",
                "AutoModelForSequenceClassification": f"modeling_nas.{model_cls}",
            },
        )
        shutil.copyfile(REMOTE_CODE, out / "modeling_nas.py")
    else:
        for key in ("nas_heads", "nas_ffn", "nas_head_size", "auto_map"):
            cfg.pop(key, None)
        cfg["architectures"] = [type(model).__name__]
        (out / "modeling_nas.py").unlink(missing_ok=True)
    cfg.pop("transformers_version", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
    # The tokenizer truncates at the kept context, and names its class so that AutoTokenizer
    # picks it from tokenizer_config.json (the caller's tokenizer object is left as it was).
    tok_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_path.read_text()) if tok_path.is_file() else {}
    tok_cfg["model_max_length"] = int(context)
    tok_cfg.setdefault("tokenizer_class", type(tokenizer).__name__)
    tok_cfg.pop("auto_map", None)
    tok_path.write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n")
    return {"remote_code": remote}


def export_onnx(model: Any, path: str | Path, *, max_seq: int) -> None:
    """ONNX with dynamic batch and sequence axes (torch.onnx dynamo exporter)."""
    import logging
    import warnings

    import torch

    for noisy in ("torch.onnx", "onnx_ir", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    model = model.eval()
    use_cache = getattr(model.config, "use_cache", False)
    model.config.use_cache = False  # a decoder's forward without its KV cache: logits are the only output
    ids = torch.randint(1000 if model.config.vocab_size > 1000 else 1, model.config.vocab_size, (2, min(8, max_seq)))
    mask = torch.ones_like(ids)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=1, max=max_seq)
    try:
        with warnings.catch_warnings():  # the exporter's deprecation chatter, not the caller's warnings
            warnings.filterwarnings("ignore", module=r"torch\.onnx.*")
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            program = torch.onnx.export(
                model, (), kwargs={"input_ids": ids, "attention_mask": mask}, dynamo=True, verbose=False,
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                input_names=["input_ids", "attention_mask"], output_names=["logits"],
            )
    finally:
        model.config.use_cache = use_cache
    program.save(str(path))


def write_readme(out: Path, *, spec: Any, metrics: Mapping[str, Any], source: Mapping[str, Any], remote: bool,
                 onnx: bool = True) -> None:
    load = "trust_remote_code=True" if remote else ""
    lines = [
        f"# Pruned model: {spec.describe()}",
        "",
        f"Pruned from `{source.get('model')}` by nas-prune (trial {source.get('trial')}, space `{source.get('space')}`).",
        "",
        "| layers kept | heads per layer | FFN per layer | hidden | context |",
        "|---|---|---|---|---|",
        f"| {list(spec.layers)} | {list(spec.heads)} | {list(spec.ffn)} | {spec.hidden} | {spec.context} |",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()],
        "",
        *([f"Latency and speedup: per input, against the unpruned base timed beside it in alternating rounds "
           f"in one process ({metrics['latency_definition']}; mean {metrics.get('mean_tokens', '?')} tokens per "
           "input). A speedup holds for inputs like these, in the runtime it names.", ""]
          if "latency_definition" in metrics else []),
        "## Load",
        "",
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        f"model = AutoModelForSequenceClassification.from_pretrained(FOLDER{', ' + load if load else ''})",
        "tokenizer = AutoTokenizer.from_pretrained(FOLDER)",
        "```",
        "",
        ("The per-layer shapes do not fit the stock config (it derives head size from hidden size / heads), "
         "so `modeling_nas.py` ships here and the model needs `trust_remote_code=True` (without it the stock "
         "class refuses the weights with a size-mismatch error). The config and tokenizer are stock ones." if remote else
         "The shape fits the stock architecture: no custom code is needed."),
        "",
    ]
    if onnx:
        lines += [
            "ONNX: `model.onnx` (inputs input_ids and attention_mask, int64, dynamic batch and sequence; output logits):",
            "",
            "```python",
            "import onnxruntime as ort",
            "session = ort.InferenceSession(FOLDER + '/model.onnx')",
            "logits = session.run(None, {'input_ids': ids, 'attention_mask': mask})[0]",
            "```",
            "",
        ]
    from nas.masking import mask

    (out / "README.md").write_text(mask("\n".join(lines)))


def export_all(model: Any, tokenizer: Any, spec: Any, out: str | Path, *, metrics: Mapping[str, Any],
               source: Mapping[str, Any], onnx: bool = True) -> dict[str, Any]:
    """config.yaml + HF folder + model.onnx + README.md into `out`."""
    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = save_hf_folder(model, tokenizer, out, context=spec.context)
    config = {
        "arch": spec.to_dict(),
        "source": {k: v for k, v in source.items() if k not in ("cfg",)},
        "metrics": {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()},  # numpy -> plain
    }
    if "cfg" in source:
        config["config"] = source["cfg"]
    from nas.masking import mask_tree

    (out / "config.yaml").write_text(yaml.safe_dump(mask_tree(config), sort_keys=False))  # no password, ever
    if onnx:
        export_onnx(model, out / "model.onnx", max_seq=spec.context)
    else:
        (out / "model.onnx").unlink(missing_ok=True)  # never leave an older export's ONNX beside new weights
    write_readme(out, spec=spec, metrics=metrics, source=source, remote=info["remote_code"], onnx=onnx)
    from nas.decoder import is_decoder

    if is_decoder(model):
        from nas.lmexport import fix_readme

        fix_readme(out, model)
    return info


# ---------------------------------------------------------------------------- the command


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    allowed = {"run_dir", "pick", "trial", "max_latency_ms", "min_accuracy", "out", "onnx"}
    args: dict[str, Any] = {"onnx": "true", "latency": {}}
    for item in argv:
        key, sep, value = item.partition("=")
        if sep and key.startswith("latency."):  # e.g. latency.sample_size=64: over the run's own settings
            import yaml

            args["latency"][key.removeprefix("latency.")] = yaml.safe_load(value)
            continue
        if not sep or key not in allowed:
            raise ValueError(f"argument {item!r} is not key=value with key in: {', '.join(sorted(allowed))} "
                             "or latency.KEY")
        args[key] = value
    if "run_dir" not in args:
        raise ValueError("run_dir=PATH is required (a folder written by python -m nas.search)")
    for key, kind in (("trial", int), ("max_latency_ms", float), ("min_accuracy", float)):
        if key in args and args[key] not in (None, "", "null"):
            try:
                args[key] = kind(args[key])
            except ValueError:
                raise ValueError(f"{key}={args[key]!r} must be a number") from None
        else:
            args[key] = None
    if "pick" not in args:  # trial=N alone means pick=trial
        args["pick"] = "trial" if args["trial"] is not None else "knee"
    if args["pick"] not in PICKS:
        raise ValueError(f"pick={args['pick']!r} is not known; allowed: {', '.join(PICKS)}")
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
    args["onnx"] = str(args["onnx"]).lower() not in ("false", "0", "no")
    return args


def latency_settings(cfg: Any, overrides: Mapping[str, Any]) -> Any:
    """The run's latency settings (how its search timed trials), with the command line's latency.* on top."""
    from omegaconf import OmegaConf

    from nas.latency import LatencySettings

    run = OmegaConf.to_container(cfg.latency, resolve=True) if "latency" in cfg else {}
    # runs made before latency.inputs existed were timed on fixed-length ids: keep only keys still known
    run = {k: v for k, v in run.items() if k in LatencySettings.__dataclass_fields__}
    return LatencySettings.from_cfg({**run, **overrides})


def load_run(run_dir: str | Path) -> tuple[Any, Any]:
    """(run config, study) of a search run folder."""
    import optuna
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        raise ValueError(f"run_dir={str(run_dir)!r} is not a search run folder (no .hydra/config.yaml)")
    cfg = OmegaConf.load(cfg_path)
    storage = run_storage_url(cfg, run_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from nas.masking import mask_url
    from nas.storage import check_reachable, make_storage

    check_reachable(storage)
    try:
        study = optuna.load_study(study_name=cfg.search.study_name, storage=make_storage(storage))
    except KeyError:
        raise ValueError(f"study {cfg.search.study_name!r} is not in {mask_url(storage)}") from None
    return cfg, study


def run_storage_url(cfg: Any, run_dir: Path) -> str:
    """The storage a run used. Its saved config holds NAS_STORAGE_URL as an interpolation, or a URL
    whose password was masked: either way the real URL comes from that environment variable."""
    from omegaconf import OmegaConf

    from nas.masking import ENV_VAR, is_masked, mask_url

    raw = OmegaConf.to_container(cfg.search, resolve=False).get("storage")
    from_env = isinstance(raw, str) and ENV_VAR in raw and "${" in raw
    url = os.environ.get(ENV_VAR) if from_env else raw
    if is_masked(url):
        env = os.environ.get(ENV_VAR)
        if not env or mask_url(env) != url:
            raise ValueError(f"this run's search.storage is saved with its password masked ({url}); set the "
                             f"environment variable {ENV_VAR} to the full URL and run again")
        url = env
    if url:
        return str(url)
    local = run_dir / "study.db"
    if from_env and not local.is_file():
        raise ValueError(f"this run's study is in the storage named by {ENV_VAR}, which is not set here; "
                         "set it to the URL the search used")
    return f"sqlite:///{local.resolve()}"


def trial_weights(run_dir: Path, number: int) -> Path:
    """A trial's weights: the final stage's when it trained this trial, else the trial's own."""
    final = run_dir / "models" / f"final_{number}.safetensors"
    return final if final.is_file() else run_dir / "models" / f"trial_{number}.safetensors"


def rebuild_trial_model(cfg: Any, run_dir: Path, number: int, spec: Any, num_labels: int, label_names: Any) -> Any:
    """The pruned, fine-tuned model of a trial: base architecture cut to `spec`, its weights loaded
    (the final stage's when they exist). Which units were kept does not matter here: the saved
    weights replace them all."""
    from safetensors.torch import load_model

    from nas.models import load_base_model
    from nas.prune import prune_model

    path = trial_weights(run_dir, number)
    if not path.is_file():
        raise ValueError(f"trial {number}'s weights are not in {path.parent} (only Pareto members keep weights)")
    if num_labels == 0:  # a language-modelling study (nas.lm): the causal LM
        from nas.lm import load_causal_lm

        base = load_causal_lm(cfg.model.name_or_path)
    else:
        base = load_base_model(cfg.model.name_or_path, num_labels=num_labels, label_names=label_names)
    model = prune_model(base, spec)
    load_model(model, str(path))  # a tied matrix was stored once
    return model.eval()


def pick_row(study: Any, args: Mapping[str, Any]) -> Mapping[str, Any]:
    """The front row (or, for pick=trial, the trial row) the arguments choose. Cheap: no torch."""
    from nas.report import cost_column, pareto_frame, trials_frame

    objectives = study.user_attrs.get("objectives", ["accuracy", "latency"])
    cost = cost_column(objectives)
    front = pareto_frame(study, study.user_attrs.get("base", {}), cost=cost)
    return choose(front, pick=args["pick"], trial=args["trial"], max_latency_ms=args["max_latency_ms"],
                  min_accuracy=args["min_accuracy"], trials=trials_frame(study), cost=cost)


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    from nas.masking import guard_output

    guard_output()
    console = Console(soft_wrap=True)
    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv))
        run_dir = Path(args["run_dir"]).resolve()
        cfg, study = load_run(run_dir)
        args["latency_settings"] = latency_settings(cfg, args["latency"])
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
        return _export(console, args, run_dir, cfg, study, row)
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        return 2


def _export(console: Any, args: Mapping[str, Any], run_dir: Path, cfg: Any, study: Any, row: Mapping[str, Any]) -> int:
    from omegaconf import OmegaConf

    from nas.data import load_task
    from nas.latency import flat_latency_metrics, measure_runtimes, speedup_line
    from nas.models import load_base_model, load_tokenizer
    from nas.pipeline import quiet_libraries
    from nas.spec import SubnetSpec

    quiet_libraries()
    number = int(row["number"])
    trial = study.trials[number]
    spec = SubnetSpec.from_dict(trial.user_attrs["spec"])
    label_names = tuple(trial.user_attrs.get("label_names") or study.user_attrs.get("label_names") or ())
    num_labels = len(label_names) or int(study.user_attrs.get("num_labels", 2))
    model = rebuild_trial_model(cfg, run_dir, number, spec, num_labels, label_names or None)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    out = Path(args.get("out") or run_dir / "export" / f"trial_{number}").resolve()
    metrics = {k: row[k] for k in ("val_accuracy", "test_accuracy", "val_perplexity", "test_perplexity", "params",
                                   "flops", "size_mb")
               if k in row and row[k] == row[k] and row[k] is not None}
    final = trial_weights(run_dir, number).name.startswith("final_")
    if final:  # the final stage's weights and accuracies (perplexities for a language model)
        from pandas import notna

        q = "perplexity" if notna(row.get("final_val_perplexity")) else "accuracy"
        metrics.update({f"val_{q}": row[f"final_val_{q}"], f"test_{q}": row[f"final_test_{q}"],
                        f"trial_val_{q}": trial.user_attrs.get(f"val_{q}"), "final_steps": row["final_steps"]})
    source = {"model": cfg.model.name_or_path or "embedded:all-MiniLM-L6-v2", "trial": number,
              "space": study.user_attrs.get("space"), "run_dir": str(run_dir), "pick": args["pick"],
              "cfg": OmegaConf.to_container(cfg, resolve=False)}
    console.print(f"exporting trial {number} ({spec.describe()}) by pick={args['pick']} to {out}"
                  + (" (final-trained weights)" if final else ""), highlight=False)

    # Latency of the export vs the base: paired rounds in this process, on the task's inputs, in
    # each runtime (the base's weights do not change its speed, so the pretrained one stands in).
    settings = args["latency_settings"]
    lm = num_labels == 0  # a language-modelling study (nas.lm): the causal LM, generation latency in torch
    if lm:
        from nas.lm import load_causal_lm

        base = load_causal_lm(cfg.model.name_or_path)
    else:
        base = load_base_model(cfg.model.name_or_path, num_labels=num_labels)
    task = load_task(cfg.data) if settings.inputs == "real" or lm else None
    runtimes = ("torch", "onnxruntime") if args["onnx"] and settings.generation in ("auto", "prefill") and not lm \
        else ("torch",)
    measured = measure_runtimes(model, context=spec.context, base=base, task=task, tokenizer=tokenizer,
                                settings=settings, max_length=int(cfg.get("max_length", 128)), runtimes=runtimes)
    for runtime, m in measured.items():
        console.print(speedup_line(runtime, m), highlight=False)
    metrics.update(flat_latency_metrics(measured))
    info = export_all(model, tokenizer, spec, out, metrics=metrics, source=source, onnx=args["onnx"])
    console.print(f"wrote {out}: config.yaml, config.json, model.safetensors, tokenizer"
                  + (", modeling_nas.py (trust_remote_code=True)" if info["remote_code"] else "")
                  + (", model.onnx" if args["onnx"] else "") + ", README.md", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
