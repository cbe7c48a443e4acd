"""What a run prints: one line per trial, the front as a table, the dashboard hint."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from nas.quality.metrics import quality_text
from nas.redact import ENV_VAR, has_password


def shape_attrs(spec: Any) -> dict[str, Any]:
    return {
        "n_layers": len(spec.layers),
        "heads": round(sum(spec.heads) / len(spec.heads), 2),
        "ffn": round(sum(spec.ffn) / len(spec.ffn), 1),
        "hidden": spec.hidden,
        "context": spec.context,
        "shape": spec.describe(),
    }


def trial_line(trial: Any, objectives: Sequence[str]) -> str:
    a = trial.user_attrs
    head = f"trial {trial.number:3d} {trial.state.name:8s} {a.get('shape', '?'):28s}" + (
        f" {a['precision']:4s}" if a.get("precision") else "")
    if "repeat_of" in a:
        return f"{head} repeat of trial {a['repeat_of']}: not trained again, not counted"
    if trial.state.name == "COMPLETE":
        spread = f" [{a['speedup_p10']:.2f}-{a['speedup_p90']:.2f}]" if "speedup_p10" in a else ""
        return (f"{head} {quality_text(a)}  latency {a['latency_ms']:7.2f} ms  "
                f"speedup {a['speedup']:.2f}x{spread}  params {a['params'] / 1e6:.1f}M")
    reason = a.get("fail_reason") or trial.system_attrs.get("fail_reason") or ""
    return f"{head} {reason}"


def front_table(front: Any, console: Any, *, quality: str = "val_accuracy") -> None:
    """The front, printed: `quality` is the study's quality column (quality_column(objectives))."""
    import pandas as pd  # heavy: only when the table is printed

    q, t = quality, quality.replace("val_", "test_")
    final = "final_" + q in front and front["final_" + q].notna().any()
    deployed = "final_test_accuracy_deployed" in front and front["final_test_accuracy_deployed"].notna().any()
    lm_deployed = ("final_test_byte_perplexity_deployed" in front
                   and front["final_test_byte_perplexity_deployed"].notna().any())
    precision = "precision" in front and front["precision"].notna().any()
    spread = "speedup_p10" in front and front["speedup_p10"].notna().any()  # measured trials (not predicted)
    table = Table(title="Pareto front (validation; test for members; final: after the final stage's training"
                        + ("; deployed: the final model as it runs (e.g. int8 onnxruntime), its test accuracy and "
                           "measured speedup over (c) the base quantized the same way / (b) the base in the same "
                           "runtime at fp32 / (a) the base in torch fp32" if deployed else "")
                        + "); latency per input, speedup vs the base" + (" (p10-p90 of the rounds)" if spread else ""))
    name = {"val_accuracy": "acc", "val_byte_perplexity": "ppl/byte"}.get(q, q[4:7])
    cols = ["trial", "shape"] + (["precision"] if precision else []) + [f"val {name}", f"test {name}"] + (
        ["final val", "final test"] if final else []) + (["deployed test", "(c) / (b) / (a)"] if deployed else []) + (
        ["deployed test ppl/byte", "decode vs reference"] if lm_deployed else [])
    for col in cols + ["latency ms", "speedup"] + (["p10-p90"] if spread else []) + ["params M"]:
        table.add_column(col, justify="right" if col != "shape" else "left", no_wrap=col == "shape")

    def num(value: Any) -> str:
        return "" if value is None or value != value else f"{value:.4f}"

    for _, row in front.iterrows():
        lm_speed = row.get("final_speedup_over_reference_base")
        if lm_speed is None or pd.isna(lm_speed):
            lm_speed = row.get("final_speedup_over_quantized_base")
        table.add_row(
            ("base alone" if row.get("state") == "QUANT_ALONE" else "base") if row.get("is_base")
            else str(int(row["number"])),
            str(row["shape"]),
            *([str(row.get("precision") or "")] if precision else []),
            num(row[q]),  # an early-exit variant has no trial accuracy of its own
            num(row.get(t)),
            *([num(row.get("final_" + q)), num(row.get("final_" + t))] if final else []),
            *([num(row.get("final_test_accuracy_deployed")),
               "" if pd.isna(row.get("final_speedup_over_quantized_base")) else
               f"{row['final_speedup_over_quantized_base']:.2f}x / {row['final_speedup_over_runtime_fp32_base']:.2f}x / "
               f"{row['final_speedup_over_torch_fp32_base']:.2f}x"] if deployed else []),
            *([num(row.get("final_test_byte_perplexity_deployed")),
               "" if lm_speed is None or pd.isna(lm_speed) else f"{lm_speed:.2f}x"] if lm_deployed else []),
            f"{row['latency_ms']:.2f}",
            f"{row['speedup']:.2f}x",
            *(["" if row.get("is_base") or pd.isna(row.get("speedup_p10")) else
               f"{row['speedup_p10']:.2f}-{row['speedup_p90']:.2f}"] if spread else []),
            f"{row['params'] / 1e6:.1f}",
        )
    console.print(table)


def dashboard_url(url: str) -> str:
    """The storage as the dashboard hint shows it: a URL with a password by its variable, never in clear."""

    return f'"${ENV_VAR}"' if has_password(url) else url
