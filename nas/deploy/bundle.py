"""The exported folder of a chosen shape: its SubnetSpec and metrics (config.yaml), an HF folder written
by the model's family, model.onnx, and a README that says how to load and run it."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from nas.cut.vocab import tokenizer_for
from nas.data.text import lm_chunks
from nas.deploy.gguf import bpe_fields, write_gguf
from nas.deploy.imatrix import diagonal
from nas.deploy.llamacpp import file_text_nll, llama_cpp_available
from nas.deploy.onnx import export_onnx
from nas.models.registry import family_for
from nas.quality.metrics import TextScore
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
    whose accuracy and speed `metrics` report, copied in as model.int8.onnx. `tokenizer`: the base's (a model with a
    cut vocabulary saves its own, nas.cut.vocab.tokenizer_for)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = save_hf_folder(model, tokenizer_for(model, tokenizer), out, context=spec.context)
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


def export_gguf_set(model: Any, tokenizer: Any, out: str | Path, types: Sequence[str], *, arch: str = "auto",
                    source_gguf: Path | None, task: Any, context: int, max_length: int, threads: int,
                    metrics: dict[str, Any], moments: Mapping[str, Any] | None = None, imatrix: bool = True,
                    gptq: bool = True) -> list[str]:
    """model.<type>.gguf for each GGUF type into `out` (nas.deploy.gguf), each file's test scores in llama.cpp (when
    llama-cpp-python is installed: perplexity per byte of the test text, bits per byte, perplexity per token of the
    base's tokenizer; nas.quality.metrics) added to `metrics`, config.yaml and the README. `tokenizer`: the base's
    (a model with a cut vocabulary carries its own, nas.cut.vocab; the test text is cut by the base's). `moments` (the
    model's input second moments on the task's training text, nas.deploy.imatrix): quantized files are weighted by
    their importance matrix (`imatrix`) and rounded GPTQ-style (`gptq`). Returns the lines to print."""
    out = Path(out)
    if source_gguf is None:
        try:
            bpe_fields(tokenizer)
        except ValueError as e:
            return [f"GGUF not written: {e}"]
    block = min(int(context), int(max_length))
    chunks = lm_chunks(task, "test", tokenizer, block=block) if task is not None else None
    texts = [str(t)[:400] for t in (task.validation["text"][:32] if task is not None else [])]
    lines, rows = [], []
    for kind in types:
        path = out / f"model.{kind}.gguf"
        info = write_gguf(model, tokenizer, path, kind=kind, arch=arch, source_gguf=source_gguf, texts=texts,
                          imatrix=diagonal(moments) if moments and imatrix else None,
                          moments=moments if moments and gptq else None)
        metrics[f"gguf_{kind}_mb"] = round(info["bytes"] / 1e6, 1)
        score = None
        if chunks is not None and llama_cpp_available():
            nll, tokens = file_text_nll(path, chunks.texts, threads=threads)
            score = TextScore(nll=nll, tokens=tokens, bytes=chunks.bytes, base_tokens=chunks.base_tokens)
            metrics.update({f"test_byte_perplexity_gguf_{kind}": score.byte_perplexity,
                            f"test_bits_per_byte_gguf_{kind}": score.bits_per_byte,
                            f"test_perplexity_gguf_{kind}": score.perplexity})
        rows.append(f"| `{path.name}` | {info['arch']} | {int(model.config.vocab_size):,} | {info['bytes'] / 1e6:.1f} MB | "
                    + (f"{score.byte_perplexity:.4f} | {score.bits_per_byte:.4f} | {score.perplexity:.2f}" if score
                       is not None else "not measured (llama-cpp-python missing) | | ") + " |")
        lines.append(f"GGUF {path.name}: {info['arch']} architecture, {info['bytes'] / 1e6:.1f} MB, tensor types "
                     f"{info['tensor_types']} ({info['rounding']} rounding), tokenizer {info['tokenizer']}"
                     + (f"; test in llama.cpp: perplexity per byte {score.byte_perplexity:.4f} ({score.bits_per_byte:.4f}"
                        f" bits per byte), per token of the base's tokenizer {score.perplexity:.2f}" if score else ""))
    config_path = out / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["metrics"].update({k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()
                              if k.startswith(("gguf_", "test_perplexity_gguf_", "test_byte_perplexity_gguf_",
                                               "test_bits_per_byte_gguf_"))})
    config_path.write_text(yaml.safe_dump(mask_tree(config), sort_keys=False))
    first = f"model.{types[0]}.gguf"
    readme = out / "README.md"
    readme.write_text(readme.read_text() + "\n".join([
        "", "## llama.cpp (GGUF)", "",
        f"Scores are on the task's test text (pieces of {block} tokens of the base's tokenizer, each after one "
        "EOS token), scored by llama.cpp itself with each file's own tokenizer: perplexity per byte (exp of the "
        "total negative log-likelihood over the text's UTF-8 bytes), bits per byte, and perplexity per token of "
        "the base's tokenizer (the same total over the base's token count).", "",
        "| file | architecture | vocabulary | size | test perplexity per byte | bits per byte | perplexity per base "
        "token |", "|---|---|---|---|---|---|---|", *rows, "",
        "```bash", f"llama-cli -m {first} -p 'Once upon a time' -n 32", "```", "",
        "```python", "from llama_cpp import Llama", f"llm = Llama(model_path='{first}')",
        "print(llm('Once upon a time', max_tokens=32)['choices'][0]['text'])", "```", "",
        "Layers of one shape are written as llama.cpp's `llama` architecture; layers of different shapes as `deci` "
        "(per-layer head, key/value-head and FFN counts), which llama.cpp builds layer by layer.", ""]))
    return lines
