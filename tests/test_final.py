"""`python -m nas.train +arch=...`: re-prune an exported shape, train it longer, evaluate, export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from nas.spec import SubnetSpec

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported_arch(tmp_path_factory):
    """A finished tiny search (shared with test_export) and its knee exported without ONNX."""
    from nas.export import main as export_main
    from tiny import tiny_search_run

    run_dir = tiny_search_run(tmp_path_factory.getbasetemp())
    out = tmp_path_factory.mktemp("final_export") / "knee"
    assert export_main([f"run_dir={run_dir}", f"out={out}", "onnx=false"]) == 0
    return run_dir, out / "config.yaml"


def test_final_training_reprunes_trains_longer_and_exports(exported_arch, tmp_path):
    from rich.console import Console

    from nas.config import compose
    from nas.train import run_final

    run_dir, arch = exported_arch
    arch_data = yaml.safe_load(arch.read_text())
    spec = SubnetSpec.from_dict(arch_data["arch"])
    out = tmp_path / "model"
    cfg = compose([f"+arch={arch}", "final.max_steps=6", "final.onnx=false"])
    metrics = run_final(cfg, arch, out, overrides=["final.max_steps=6", "final.onnx=false"], console=Console(quiet=True))

    # trained with the longer budget, evaluated on both held-out splits, timed against the base
    assert metrics["final_steps"] == 6
    for key in ("val_accuracy", "test_accuracy", "base_test_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["latency_ms_torch"] > 0 and metrics["base_latency_ms_torch"] > 0
    assert metrics["speedup_p10_torch"] <= metrics["speedup_torch"] <= metrics["speedup_p90_torch"]
    # final.onnx=false: no ONNX file and no deployed (int8) measurement; the run timed its trials in
    # onnxruntime (the default for a classifier), so the figures include that runtime beside torch
    assert "speedup_onnxruntime" in metrics and "speedup_over_quantized_base" not in metrics
    assert metrics["latency_definition"].startswith("real inputs, sample 8, batch 1, 1 thread")
    assert 0 < metrics["mean_tokens"] <= spec.context
    # the model, data and cache of the search run were used (its tiny model, not the embedded default)
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert SubnetSpec.from_dict(written["arch"]) == spec
    assert written["config"]["model"]["name_or_path"] == arch_data["config"]["model"]["name_or_path"]
    assert written["source"]["final_training"] is True
    assert not (out / "model.onnx").exists()

    # the exported weights have the spec's shape and give the logits run_final reported on
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    assert model.config.num_hidden_layers == len(spec.layers)
    assert model.config.hidden_size == spec.hidden
    ids = torch.randint(5, 99, (2, 7))
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits).all()


def test_final_cli_needs_an_arch_file(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nas.train", f"hydra.run.dir={tmp_path / 'r'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "+arch=PATH/config.yaml" in proc.stdout + proc.stderr

    missing = tmp_path / "nope.yaml"
    proc = subprocess.run([sys.executable, "-m", "nas.train", f"+arch={missing}", f"hydra.run.dir={tmp_path / 'r2'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"arch='{missing}' does not exist" in proc.stdout + proc.stderr
