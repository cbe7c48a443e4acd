"""The exported folder of a chosen shape: its SubnetSpec and metrics (config.yaml), an HF folder written
by the model's family, model.onnx, and a README that says how to load and run it."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from nas.deploy.onnx import export_onnx
from nas.models.registry import family_for
from nas.redact import mask, mask_tree


def save_hf_folder(model: Any, tokenizer: Any, out: str | Path, *, context: int) -> dict[str, Any]:
    """An HF folder that loads outside this project, written by the model's family (config.json,
    model.safetensors, tokenizer truncating at `context`, custom code where the stock class cannot
    hold the shape). Returns {'remote_code': bool}."""
    return family_for(model).save_folder(model, tokenizer, Path(out), context=context)


def write_readme(out: Path, *, spec: Any, metrics: Mapping[str, Any], source: Mapping[str, Any], remote: bool,
                 loads_with: tuple[str, str, str], onnx: bool = True, int8: bool = False) -> None:
    """`loads_with`: (Auto class, custom modeling file, why the stock config cannot hold the shape),
    from the model's family."""
    auto, modeling, why = loads_with
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
        f"from transformers import {auto}, AutoTokenizer",
        f"model = {auto}.from_pretrained(FOLDER{', ' + load if load else ''})",
        "tokenizer = AutoTokenizer.from_pretrained(FOLDER)",
        "```",
        "",
        (f"The per-layer shapes do not fit the stock config ({why}), "
         f"so `{modeling}` ships here and the model needs `trust_remote_code=True` (without it the stock "
         "class refuses the weights with a size-mismatch error). The config and tokenizer are stock ones." if remote else
         "The shape fits the stock architecture: no custom code is needed."),
        "",
    ]
    if int8:
        acc = ", ".join(f"{split} accuracy {metrics[f'{key}_accuracy_deployed']:.4f}"
                        for key, split in (("val", "validation"), ("test", "test"))
                        if f"{key}_accuracy_deployed" in metrics)
        lines += [
            "## Run it as deployed: int8 in onnxruntime",
            "",
            f"`model.int8.onnx` is `model.onnx` quantized to int8 by onnxruntime ({acc}, measured on this int8 file).",
            "",
            "```python",
            "import numpy as np, onnxruntime as ort",
            "from transformers import AutoTokenizer",
            "tokenizer = AutoTokenizer.from_pretrained(FOLDER)",
            "opts = ort.SessionOptions(); opts.intra_op_num_threads = 1",
            "session = ort.InferenceSession(FOLDER + '/model.int8.onnx', opts, providers=['CPUExecutionProvider'])",
            "enc = tokenizer(['a gripping, beautifully acted film'], truncation=True, return_tensors='np')",
            "logits = session.run(None, {'input_ids': enc['input_ids'].astype(np.int64),",
            "                            'attention_mask': enc['attention_mask'].astype(np.int64)})[0]",
            "```",
            "",
        ]
        if "speedup_over_quantized_base" in metrics:
            lines += [
                f"Speed of this int8 model per input ({metrics.get('latency_definition_deployed', '')}), each "
                "against the unpruned base timed beside it in paired rounds in one process:",
                "",
                "| baseline | speedup |",
                "|---|---|",
                f"| the base in onnxruntime int8, quantized the same way (quantization alone) | "
                f"{metrics['speedup_over_quantized_base']:.2f}x |",
                f"| the base in onnxruntime fp32 | {metrics['speedup_over_runtime_fp32_base']:.2f}x |",
                f"| the base in torch eager fp32 | {metrics['speedup_over_torch_fp32_base']:.2f}x |",
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
    (out / "README.md").write_text(mask("\n".join(lines)))


def export_all(model: Any, tokenizer: Any, spec: Any, out: str | Path, *, metrics: Mapping[str, Any],
               source: Mapping[str, Any], onnx: bool = True, deployed: Path | None = None) -> dict[str, Any]:
    """config.yaml + HF folder + model.onnx + README.md into `out`; `deployed`: the quantized ONNX file
    whose accuracy and speed `metrics` report, copied in as model.int8.onnx."""
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

    (out / "config.yaml").write_text(yaml.safe_dump(mask_tree(config), sort_keys=False))  # no password, ever
    if onnx:
        export_onnx(model, out / "model.onnx", max_seq=spec.context)
    else:
        (out / "model.onnx").unlink(missing_ok=True)  # never leave an older export's ONNX beside new weights
    int8 = out / "model.int8.onnx"
    if deployed is not None and Path(deployed).name.endswith(".int8.onnx"):
        shutil.copyfile(deployed, int8)
    else:
        int8.unlink(missing_ok=True)
    write_readme(out, spec=spec, metrics=metrics, source=source, remote=info["remote_code"],
                 loads_with=family_for(model).loads_with(model), onnx=onnx, int8=int8.is_file())
    return info
