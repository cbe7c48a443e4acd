"""A member with early exits as onnxruntime runs it: consecutive segment graphs and their manifest, read by the
runner (nas.deploy.exit_runner, shipped beside them).

`export_segments(model, heads, rule, folder)` cuts the member after each exit of the rule: the first segment runs the
embeddings and the layers up to the first exit, and gives the hidden states and that exit's logits; each next one
takes the hidden states and runs the layers up to the next exit; the last runs the rest and the member's own head.
Each segment is exported (the TorchScript exporter, as the final stage's members are; dynamo where it fails) and, at
int8, quantized as the single graph is (nas.deploy.quantize: dynamic, per-channel int8 weights, the value_info trap
handled). With no exit the one segment is the whole member.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from nas.deploy.exit_runner import FORMAT, MANIFEST
from nas.deploy.quantize import QuantSettings, quantize_onnx
from nas.models.exits import classify, embed, hidden_size, layer_count, run_layers
from nas.quality.exits import ExitHeads, ExitRule
from nas.redact import mask_tree

RUNNER_FILE = Path(__file__).resolve().parent / "exit_runner.py"
HEADS_FILE = "exit_heads.safetensors"  # an export's exit heads (torch), beside its segments: nas.train can reuse them


class Segment(nn.Module):
    """Layers start..stop-1 of `model` (positions among its kept layers), from its token ids when first, else from
    the hidden states; then the exit head at `stop` (returns hidden states and logits) or, last, the member's head."""

    def __init__(self, model: nn.Module, heads: ExitHeads | None, *, start: int, stop: int, last: bool) -> None:
        super().__init__()
        self.model, self.heads = model, heads
        self.start, self.stop, self.last = start, stop, last

    def forward(self, x: torch.Tensor) -> Any:
        hidden = embed(self.model, x) if self.start == 0 else x
        hidden = run_layers(self.model, hidden, self.start, self.stop)
        if self.last:
            return classify(self.model, hidden)
        return hidden, self.heads(self.stop, hidden)


def segment_bounds(layers: int, exits: Sequence[int]) -> list[tuple[int, int]]:
    """[(start, stop)] of each segment: cut after each exit position, the last ending at `layers`."""
    cuts = [0, *exits, layers]
    return [(a, b) for a, b in zip(cuts, cuts[1:])]


def segments(model: nn.Module, heads: ExitHeads | None, exits: Sequence[int]) -> list[Segment]:
    """The torch segments of `model` cut after each of `exits` (positions that have a head in `heads`)."""
    n = layer_count(model)
    exits = list(exits)
    if exits and (heads is None or any(p not in heads.positions for p in exits)):
        raise ValueError(f"exits after layers {exits} need heads there; heads at "
                         f"{list(heads.positions) if heads is not None else []}")
    if exits and exits[-1] >= n:
        raise ValueError(f"an exit after layer {exits[-1]} of a {n}-layer member is its own head")
    bounds = segment_bounds(n, exits)
    return [Segment(model, heads, start=a, stop=b, last=i == len(bounds) - 1) for i, (a, b) in enumerate(bounds)]


def _export(segment: Segment, path: Path, *, hidden: int, vocab: int) -> None:
    """One segment as ONNX: dynamic batch and sequence; inputs input_ids (first) or hidden_in; outputs hidden_out
    and logits (logits alone for the last)."""
    for noisy in ("torch.onnx", "onnx_ir", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    first = segment.start == 0
    x = (torch.randint(1 if vocab < 1000 else 1000, vocab, (2, 8)) if first else torch.randn(2, 8, hidden))
    name = "input_ids" if first else "hidden_in"
    outputs = ["logits"] if segment.last else ["hidden_out", "logits"]
    axes = {name: {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
    if not segment.last:
        axes["hidden_out"] = {0: "batch", 1: "seq"}
    segment.eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            with torch.no_grad():
                torch.onnx.export(segment, (x,), str(path), dynamo=False, opset_version=17, input_names=[name],
                                  output_names=outputs, dynamic_axes=axes)
            return
        except Exception:  # noqa: BLE001 - a graph the TorchScript exporter cannot trace: use dynamo
            pass
        batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("seq", min=1, max=4096)
        program = torch.onnx.export(segment, (x,), dynamo=True, verbose=False, input_names=[name],
                                    output_names=outputs, dynamic_shapes=({0: batch, 1: seq},))
        program.save(str(path))


def export_segments(model: nn.Module, heads: ExitHeads | None, rule: ExitRule | None, folder: str | Path, *,
                    precision: str = "int8", quant: QuantSettings | None = None, name: str = "exit",
                    labels: Sequence[str] = (), base_layers: Sequence[int] = (), runner: bool = False) -> Path:
    """The segment graphs of `model` cut after the rule's exits (none: one segment, the member) at `precision`
    (fp32 | int8) into `folder`, and their manifest exits.json (format, precision, rule, segments with the layers
    each runs); `runner`: exit_runner.py beside them. Returns the manifest's path."""
    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision={precision!r}: exit segments run at fp32 or int8")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    exits = list(rule.exits) if rule is not None else []
    model = model.eval()
    parts = segments(model, heads, exits)
    hidden = hidden_size(model)
    vocab = int(model.config.vocab_size)
    entries = []
    for i, part in enumerate(parts):
        fp32 = folder / f"{name}_{i}.onnx"
        _export(part, fp32, hidden=hidden, vocab=vocab)
        path = fp32
        if precision == "int8":
            path = quantize_onnx(fp32, folder / f"{name}_{i}.int8.onnx", quant or QuantSettings())
            fp32.unlink()
        entries.append({"file": path.name, "layers": [part.start, part.stop], "depth": part.stop,
                        "exit": not part.last})
    # with no exit the rule never runs; a confidence rule at 1 says so
    described = rule.to_dict() if rule is not None else {"kind": "confidence", "threshold": 1.0, "exits": []}
    manifest = {"format": FORMAT, "precision": precision, "rule": {k: v for k, v in described.items() if k != "exits"},
                "exits": exits, "layers": layer_count(model), "segments": entries, "labels": list(labels),
                "base_layers": list(base_layers), "inputs": "input_ids (1, tokens), real tokens only: batch 1"}
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    if runner:
        shutil.copyfile(RUNNER_FILE, folder / RUNNER_FILE.name)
    return path


def set_rule(folder: str | Path, rule: ExitRule) -> None:
    """The manifest in `folder` with `rule` (its segments cut after exactly the rule's exits)."""
    path = Path(folder) / MANIFEST
    manifest = json.loads(path.read_text())
    if list(rule.exits) != manifest["exits"]:
        raise ValueError(f"rule exits {list(rule.exits)} differ from the segments' {manifest['exits']}")
    manifest["rule"] = {k: v for k, v in rule.to_dict().items() if k != "exits"}
    path.write_text(json.dumps(manifest, indent=1) + "\n")


def remove_segments(folder: str | Path, name: str = "exit") -> None:
    """Segment files and the manifest of an earlier export in `folder` (a new export never mixes with them)."""
    folder = Path(folder)
    for path in list(folder.glob(f"{name}_*.onnx")) + [folder / MANIFEST, folder / HEADS_FILE,
                                                       folder / RUNNER_FILE.name]:
        path.unlink(missing_ok=True)


def ship(chosen: str | Path, out: str | Path, metrics: Mapping[str, Any]) -> list[str]:
    """The measured segments in `chosen` (export_segments' folder) into the export folder `out`, with exits.json and
    exit_runner.py; the variant's figures (`metrics`: nas.study.exits.measure_exits) added to config.yaml under
    `exits` and a README section that runs it. Returns the files written."""
    chosen, out = Path(chosen), Path(out)
    remove_segments(out)
    manifest = json.loads((chosen / MANIFEST).read_text())
    files = [s["file"] for s in manifest["segments"]]
    for name in files:
        shutil.copyfile(chosen / name, out / name)
    manifest["measured"] = plain({k: v for k, v in metrics.items() if k not in ("heads", "selection")})
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.copyfile(RUNNER_FILE, out / RUNNER_FILE.name)
    config_path = out / "config.yaml"
    if config_path.is_file():
        config = yaml.safe_load(config_path.read_text())
        config["exits"] = plain({"rule": manifest["rule"], "exits": manifest["exits"],
                                 "base_layers": manifest["base_layers"], "files": files,
                                 "heads": dict(metrics.get("heads") or {}), "heads_file": HEADS_FILE,
                                 "metrics": {k: v for k, v in metrics.items() if k not in ("heads", "rule")}})
        config_path.write_text(yaml.safe_dump(mask_tree(config), sort_keys=False))
    readme = out / "README.md"
    if readme.is_file():
        readme.write_text(readme.read_text() + readme_section(manifest, metrics))
    return [*files, MANIFEST, RUNNER_FILE.name]


def plain(value: Any) -> Any:
    """numpy scalars and tuples inside `value` as plain Python (YAML and JSON write those)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def readme_section(manifest: Mapping[str, Any], m: Mapping[str, Any]) -> str:
    """The README's section on running the model with its early exits, with what they were measured to give."""
    rule = manifest["rule"]
    how = (f"the first exit whose top probability is over {rule['threshold']:g}" if rule["kind"] == "confidence" else
           f"the first exit at which the prediction has stayed the same {rule['patience']} time(s) in a row")
    acc = ", ".join(f"{split} accuracy {m[f'{key}_accuracy_deployed']:.4f}"
                    for key, split in (("val", "validation"), ("judge", "judge rows"), ("test", "test"))
                    if m.get(f"{key}_accuracy_deployed") is not None)
    shares = m.get("test_exit_shares") or m.get("timed_exit_shares") or {}
    where = ", ".join(f"{share:.1%} after layer {d}" for d, share in shares.items())
    lines = [
        "", "## Run it with early exits", "",
        f"`exit_*.onnx` are this model cut after layers {', '.join(map(str, manifest['exits']))} "
        f"({manifest['precision']}, {len(manifest['segments'])} segments); each segment but the last also gives an "
        f"exit's logits. `exit_runner.py` (numpy and onnxruntime only) runs them one input at a time and stops at "
        f"{how} (exits.json holds the rule; `threshold=` / `patience=` override it).", "",
        "```python",
        "from transformers import AutoTokenizer",
        "from exit_runner import ExitRunner",
        "tokenizer = AutoTokenizer.from_pretrained(FOLDER)",
        "runner = ExitRunner(FOLDER, threads=1)",
        "enc = tokenizer('a gripping, beautifully acted film', truncation=True, return_tensors='np')",
        "logits, depth = runner(enc['input_ids'])  # depth: the layers this input went through",
        "```", "",
        f"Measured as served (one input at a time, real tokens): {acc}; inputs leaving on test: {where}.",
    ]
    if m.get("speedup_over_static") is not None:
        lines += [
            "",
            f"Speed per input ({m.get('definition', '')}): {m['latency_ms']:.2f} ms mean, {m['latency_p90_ms']:.2f} ms "
            f"p90 (without exits {m['latency_ms_static']:.2f} ms): {m['speedup_over_static']:.2f}x over this model "
            f"without exits (`model.int8.onnx`), {m['speedup_over_quantized_base']:.2f}x over the unpruned base in "
            "onnxruntime, quantized the same way.",
        ]
    return "\n".join(lines) + "\n"
