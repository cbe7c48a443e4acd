"""A chosen model as it will run (latency.runtime / latency.precision, e.g. its int8 ONNX export): its
accuracy there and its speedups over the three named baselines. What nas.export and nas.train report
and ship; the search's final stage does the same through its own timer (nas.study.trial.Evaluator.deployed)."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from nas.cost.latency import LatencySettings, PairedTimer
from nas.data.tasks import make_loader, tokenize
from nas.deploy.onnx import onnx_session, session_accuracy
from nas.models.registry import base_shape


def measure_deployed(model: Any, spec: Any, *, base: Any, task: Any, tokenizer: Any, settings: LatencySettings,
                     max_length: int) -> tuple[dict[str, Any], dict[str, Any], PairedTimer]:
    """(flat metrics for config.yaml, the measurement, the timer holding the deployed file: close it after
    copying `timer.deployed_path('export')`). `settings` resolved, onnxruntime, a classifier."""
    prep = SimpleNamespace(base=base, task=task, tokenizer=tokenizer, shape=base_shape(base.config))
    timer = PairedTimer.for_prepared(prep, settings, max_length=max_length)
    deployed = timer.measure_baselines(model, context=spec.context, name="export")
    session = onnx_session(timer.deployed_path("export"), threads=max(1, settings.threads))
    metrics: dict[str, Any] = {}
    for split, key in (("validation", "val"), ("test", "test")):
        ds = getattr(task, split, None)
        if ds is not None and len(ds):
            loader = make_loader(tokenize(ds, tokenizer, max_length=min(spec.context, max_length)), tokenizer,
                                 batch_size=64, shuffle=False)
            metrics[f"{key}_accuracy_deployed"] = session_accuracy(session, loader)
    metrics.update({k: v for k, v in deployed.items() if k.startswith(("speedup_over_", "base_latency_ms_"))})
    metrics.update(deployed=deployed["variant"], latency_ms_deployed=deployed["latency_ms"],
                   latency_definition_deployed=deployed["definition"])
    return metrics, deployed, timer


def deployed_line(m: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """One printed line: the deployed model's accuracy and its speedup over each named baseline."""
    acc = "".join(f" {k} acc {metrics[f'{k}_accuracy_deployed']:.4f}" for k in ("val", "test")
                  if f"{k}_accuracy_deployed" in metrics)
    return (f"deployed ({m['variant']}):{acc}; {m['latency_ms']:.2f} ms per input; speedup "
            f"{m['speedup_over_quantized_base']:.2f}x over the base in the same runtime and precision "
            f"(p10-p90 {m['speedup_over_quantized_base_p10']:.2f}-{m['speedup_over_quantized_base_p90']:.2f}), "
            f"{m['speedup_over_runtime_fp32_base']:.2f}x over it at fp32, {m['speedup_over_torch_fp32_base']:.2f}x "
            f"over it in torch fp32 ({m['definition']}; mean {m['mean_tokens']:.1f} tokens)")
