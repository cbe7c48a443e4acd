"""Reports: pure functions from a study to DataFrames; CSVs and plots are drawn from those.

Every file is written atomically (write to a temporary name, then rename), so a run killed
at any moment leaves either the previous or the new version, never half a file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from optuna.trial import TrialState

SHAPE_COLUMNS = ["n_layers", "heads", "ffn", "hidden", "context", "shape", "precision"]
METRIC_COLUMNS = [
    "val_accuracy", "test_accuracy", "val_perplexity", "test_perplexity", "latency_ms", "latency_p90_ms", "base_latency_ms", "speedup", "speedup_p10",
    "speedup_p90", "latency_ratio", "mean_tokens", "params", "flops", "size_mb", "val_accuracy_fp32", "judge_accuracy",
]
# The final stage (search.final_k): the chosen front members trained longer, from their trial weights.
# A language-modelling study's final stage measures perplexity instead of accuracy.
# And it measures each member as deployed (latency.runtime / latency.precision, e.g. int8 ONNX): its
# accuracy there, and its measured speedups over the three baselines (nas.cost.latency.BASELINES).
DEPLOYED_KEYS = ["val_accuracy_deployed", "test_accuracy_deployed", "judge_accuracy_deployed",
                 "val_perplexity_deployed", "test_perplexity_deployed",
                 "speedup_over_reference_base", "speedup_over_reference_base_p10", "speedup_over_reference_base_p90",
                 "precision", "variant", "latency_ms", "latency_ms_fp32",
                 "speedup_over_quantized_base", "speedup_over_quantized_base_p10", "speedup_over_quantized_base_p90",
                 "speedup_over_runtime_fp32_base", "speedup_over_torch_fp32_base", "base_latency_ms_quantized_base",
                 "base_latency_ms_runtime_fp32_base", "base_latency_ms_torch_fp32_base", "definition"]
FINAL_COLUMNS = ["final_val_accuracy", "final_test_accuracy", "final_val_perplexity", "final_test_perplexity",
                 "final_steps", *("final_" + k for k in DEPLOYED_KEYS)]
# The latency objective is the paired ratio to the base (see nas.search.OBJECTIVE_ATTR).
COST_COLUMN = {"latency": "latency_ratio", "params": "params", "flops": "flops", "size": "size_mb"}


COST_LABEL = {"latency_ratio": "latency / base latency (timed in pairs; lower is faster)",
              "latency_ms": "latency (median ms per input; per token for a decoding LM)", "params": "parameters", "flops": "FLOPs per input",
              "size_mb": "size (MB)"}


WINNER_ATTR = "final_winner"  # study attribute: the final stage's winner (a trial number)


def measured_members(front: pd.DataFrame, *, quality: str, cost: str) -> pd.DataFrame:
    """The front's trials (the base row left out) that have both their quality and their cost."""
    is_base = front.get("is_base", pd.Series(False, index=front.index)).fillna(False).astype(bool)
    return front[~is_base].dropna(subset=[quality, cost])


def cost_column(objectives: Sequence[str]) -> str:
    costs = [o for o in objectives if o not in ("accuracy", "perplexity")]
    return COST_COLUMN[costs[0]] if costs else "latency_ms"


def quality_column(objectives: Sequence[str]) -> str:
    """The quality objective's column: val_accuracy (higher is better) or val_perplexity (lower is better)."""
    return "val_perplexity" if objectives and objectives[0] == "perplexity" else "val_accuracy"


def hypervolume(points: Sequence[tuple[float, float]], ref_quality: float = 0.5, ref_cost: float = 1.0) -> float:
    """Area dominated by (quality to maximise, cost to minimise) points and bounded by the reference
    (ref_quality, ref_cost): the score the benchmarks compare fronts by (cost: latency / base latency).
    Points at or beyond the reference add nothing; dominated points add nothing."""
    volume, best = 0.0, ref_quality
    # sweep from the cheapest: a dearer point adds area only with the quality it gains over the cheaper ones
    for cost, quality in sorted((c, q) for q, c in points if q > ref_quality and c < ref_cost):
        if quality > best:
            volume += (ref_cost - cost) * (quality - best)
            best = quality
    return volume


def trials_frame(study: Any) -> pd.DataFrame:
    """One row per trial: number, state, shape, metrics, timings, failure reason."""
    rows = []
    test = {int(k): v for k, v in (study.user_attrs.get("test_accuracy") or {}).items()}
    final = {int(k): v for k, v in (study.user_attrs.get("final") or {}).items()}
    test_ppl = {int(k): v for k, v in (study.user_attrs.get("test_perplexity") or {}).items()}
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        for key in SHAPE_COLUMNS + METRIC_COLUMNS:
            row[key] = attrs.get(key)
        if row["test_accuracy"] is None:
            row["test_accuracy"] = test.get(t.number, test.get(attrs.get("repeat_of")))
        done = final.get(t.number)
        for key in FINAL_COLUMNS:
            row[key] = done.get(key.removeprefix("final_")) if done else None
        if row["test_perplexity"] is None:
            row["test_perplexity"] = test_ppl.get(t.number, test_ppl.get(attrs.get("repeat_of")))
        row["repeat_of"] = attrs.get("repeat_of")
        row["infeasible"] = bool(attrs.get("infeasible", False))
        for key, value in attrs.items():
            if key.startswith("seconds_"):
                row[key] = value
        row["fail_reason"] = attrs.get("fail_reason") or t.system_attrs.get("fail_reason")
        row["duration_s"] = t.duration.total_seconds() if t.duration is not None else None
        rows.append(row)
    columns = ["number", "state", *SHAPE_COLUMNS, *METRIC_COLUMNS, *FINAL_COLUMNS, "infeasible"]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=columns)
    ordered = columns + [c for c in frame.columns if c not in columns]
    return frame[ordered]


def base_row(base: Mapping[str, Any]) -> dict[str, Any]:
    """The unpruned base as a reference row for fronts and plots."""
    row = {key: base.get(key) for key in SHAPE_COLUMNS + METRIC_COLUMNS}
    row.update(number=None, state="BASE", speedup=1.0, latency_ratio=1.0, is_base=True)
    return row


def quantization_alone_rows(study: Any, base: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A language model's base at each other GGUF type of the run (study attribute `quantization_alone`, measured
    by nas.study.search): reference rows beside the front, state QUANT_ALONE (never front members)."""
    rows = []
    reference = (study.user_attrs.get("latency") or {}).get("precision")
    for precision, m in (study.user_attrs.get("quantization_alone") or {}).items():
        if precision == reference:
            continue
        row = base_row(base)
        row.update(state="QUANT_ALONE", precision=precision, val_perplexity=m.get("val_perplexity"),
                   test_perplexity=m.get("test_perplexity"), speedup=m.get("speedup"), speedup_p10=m.get("speedup_p10"),
                   speedup_p90=m.get("speedup_p90"), latency_ms=m.get("latency_ms"),
                   latency_ratio=1.0 / m["speedup"] if m.get("speedup") else None,
                   size_mb=m["bytes"] / 1e6 if m.get("bytes") else None)
        rows.append(row)
    return rows


def pareto_frame(study: Any, base: Mapping[str, Any] | None = None, *, cost: str = "latency_ms",
                 quality: str = "val_accuracy") -> pd.DataFrame:
    """The Pareto-optimal completed trials sorted by cost, plus the base as a reference row."""
    trials = trials_frame(study)
    # a repeated shape stands on the front once, as the trial that trained it
    numbers = {t.number for t in study.best_trials if "repeat_of" not in t.user_attrs} if _has_complete(study) else set()
    front = trials[trials["number"].isin(numbers)].copy()
    front["is_base"] = False
    front = front.sort_values([cost, quality], ascending=[True, quality != "val_perplexity"])
    if base is not None:
        reference = base_row(base)
        reference["precision"] = reference.get("precision") or (study.user_attrs.get("latency") or {}).get("precision")
        front = pd.concat([front, pd.DataFrame([reference, *quantization_alone_rows(study, base)])], ignore_index=True)
    return front.reset_index(drop=True)


def _has_complete(study: Any) -> bool:
    return any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))


def final_quality(front: pd.DataFrame) -> str | None:
    """The final stage's validation column in `front` (final_val_accuracy, or final_val_perplexity for a
    language-modelling study); None when the final stage trained nothing."""
    for column in ("final_val_accuracy", "final_val_perplexity"):
        if column in front and front[column].notna().any():
            return column
    return None


def final_trained(front: pd.DataFrame) -> pd.DataFrame:
    """The front members the final stage trained (none: an empty frame)."""
    column = final_quality(front)
    if column is None:
        return front.iloc[0:0]
    is_base = front.get("is_base", pd.Series(False, index=front.index)).fillna(False).astype(bool)
    return front[~is_base & front[column].notna()]


def choose_final(front: pd.DataFrame, k: int, *, quality: str = "val_accuracy") -> list[int]:
    """Trial numbers of the k front members the final stage trains: the front's members ranked by
    validation quality (accuracy, or perplexity: lower first), taken at evenly spaced ranks from the
    best (k=3 of 9: ranks 0, 3, 6), so the chosen ones spread over the trade-off instead of bunching
    at the slow end, and the worst tail (usually far below the base) is left out."""
    is_base = front.get("is_base", pd.Series(False, index=front.index)).fillna(False).astype(bool)
    if quality not in front:
        return []
    members = front[~is_base].dropna(subset=[quality]).sort_values(quality, ascending=quality.endswith("perplexity"))
    n = len(members)
    if k <= 0 or n == 0:
        return []
    ranks = sorted({(i * n) // min(k, n) for i in range(min(k, n))})
    return [int(members.iloc[r]["number"]) for r in ranks]


def knee_index(front: pd.DataFrame, *, acc: str = "val_accuracy", cost: str = "latency_ms") -> int | None:
    """Index (in `front`) of the knee: the member farthest from the line joining the two
    extremes, in objectives scaled to [0, 1]. With fewer than 3 members: the one closest to
    the ideal point (best accuracy, lowest cost). Base rows are ignored."""
    members = front[~front.get("is_base", pd.Series(False, index=front.index)).fillna(False).astype(bool)]
    members = members.dropna(subset=[acc, cost])
    if members.empty:
        return None
    a = members[acc].astype(float)
    if acc.endswith("perplexity"):  # lower is better: 1 / perplexity is a positive higher-is-better score
        a = 1.0 / a
    c = members[cost].astype(float)
    if len(members) < 3:
        # Too few points for a knee: the member closest to the ideal (accuracy 1, cost 0) with
        # each objective scaled by its largest value (min-max scaling would make any two
        # members equidistant).
        a_s = a / a.max() if a.max() > 0 else a * 0
        c_s = c / c.max() if c.max() > 0 else c * 0
        return int((((1 - a_s) ** 2 + c_s**2) ** 0.5).idxmin())
    a_n = (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else a * 0 + 1.0
    c_n = (c - c.min()) / (c.max() - c.min()) if c.max() > c.min() else c * 0
    # extremes: cheapest and most accurate; distance of each point to the line through them
    i_lo, i_hi = c_n.idxmin(), a_n.idxmax()
    x1, y1, x2, y2 = c_n[i_lo], a_n[i_lo], c_n[i_hi], a_n[i_hi]
    norm = math.hypot(x2 - x1, y2 - y1) or 1.0
    dist = ((y2 - y1) * c_n - (x2 - x1) * a_n + x2 * y1 - y2 * x1).abs() / norm
    above = a_n >= (y1 + (c_n - x1) * (y2 - y1) / ((x2 - x1) or 1.0)) - 1e-12  # knee bulges toward the ideal
    dist = dist.where(above, -1.0)
    return int(dist.idxmax())


# ---------------------------------------------------------------------------- writing


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def plot_pareto_png(trials: pd.DataFrame, front: pd.DataFrame, path: str | Path, *, cost: str = "latency_ms",
                    knee: int | None = None, quality: str = "val_accuracy") -> None:
    import matplotlib  # heavy: only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: only when a plot is drawn

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    done = trials[(trials["state"] == "COMPLETE")].dropna(subset=[quality, cost])
    ax.scatter(done[cost], done[quality], s=18, color="#9aa5b1", label="trials")
    members = front[~front["is_base"].astype(bool)]
    if not members.empty:
        ax.plot(members[cost], members[quality], "-o", color="#d64545", ms=6, label="Pareto front")
    base = front[front["is_base"].astype(bool) & (front["state"] == "BASE")]
    if not base.empty and pd.notna(base.iloc[0][cost]):
        ax.scatter(base[cost], base[quality], marker="*", s=180, color="#1f6feb", label="unpruned base", zorder=5)
    alone = front[front["state"] == "QUANT_ALONE"].dropna(subset=[quality, cost])
    if not alone.empty:
        ax.scatter(alone[cost], alone[quality], marker="D", s=40, color="#2da44e", label="base, quantization alone",
                   zorder=4)
        for _, r in alone.iterrows():
            ax.annotate(str(r["precision"]), (r[cost], r[quality]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    if knee is not None and knee in front.index:
        k = front.loc[knee]
        ax.scatter([k[cost]], [k[quality]], s=140, facecolors="none", edgecolors="black", label="knee (best.yaml)")
    ax.set_xlabel(COST_LABEL.get(cost, cost))
    ax.set_ylabel("validation " + quality[4:])
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right" if quality.endswith("perplexity") else "lower right", fontsize=8)  # the empty corner
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def plot_pareto_html(trials: pd.DataFrame, front: pd.DataFrame, path: str | Path, *, cost: str = "latency_ms",
                     quality: str = "val_accuracy") -> None:
    import plotly.graph_objects as go  # heavy: only when a plot is drawn

    done = trials[(trials["state"] == "COMPLETE")].dropna(subset=[quality, cost])
    fig = go.Figure()
    hover = "trial %{customdata[0]}<br>%{customdata[1]}<br>" + quality[4:7] + " %{y:.4f}<br>" + cost + " %{x:.4g}<extra></extra>"
    fig.add_trace(go.Scatter(x=done[cost], y=done[quality], mode="markers", name="trials",
                             customdata=done[["number", "shape"]].values, hovertemplate=hover,
                             marker={"color": "#9aa5b1"}))
    members = front[~front["is_base"].astype(bool)]
    fig.add_trace(go.Scatter(x=members[cost], y=members[quality], mode="lines+markers", name="Pareto front",
                             customdata=members[["number", "shape"]].values, hovertemplate=hover,
                             marker={"color": "#d64545", "size": 9}))
    base = front[front["is_base"].astype(bool) & (front["state"] == "BASE")]
    if not base.empty:
        fig.add_trace(go.Scatter(x=base[cost], y=base[quality], mode="markers", name="unpruned base",
                                 marker={"symbol": "star", "size": 16, "color": "#1f6feb"}))
    alone = front[front["state"] == "QUANT_ALONE"]
    if not alone.empty:
        fig.add_trace(go.Scatter(x=alone[cost], y=alone[quality], mode="markers+text", name="base, quantization alone",
                                 text=alone["precision"], textposition="top right",
                                 marker={"symbol": "diamond", "size": 9, "color": "#2da44e"}))
    fig.update_layout(xaxis_title=COST_LABEL.get(cost, cost), yaxis_title="validation " + quality[4:], template="plotly_white")
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))


def write_reports(study: Any, run_dir: str | Path, *, base: Mapping[str, Any], objectives: Sequence[str],
                  best_extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """trials.csv, pareto.csv, pareto.png, pareto.html and best.yaml in run_dir."""

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cost = cost_column(objectives)
    quality = quality_column(objectives)
    trials = trials_frame(study)
    front = pareto_frame(study, base, cost=cost, quality=quality)
    atomic_write_csv(run_dir / "trials.csv", trials)
    atomic_write_csv(run_dir / "pareto.csv", front)
    finals = final_trained(front)
    knee = (knee_index(finals, acc="final_" + quality, cost=cost) if not finals.empty
            else knee_index(front, acc=quality, cost=cost))
    winner = study.user_attrs.get(WINNER_ATTR)  # the final stage's: the fastest member within final.band
    if winner is not None and not finals.empty and (finals["number"] == winner).any():
        knee = int(finals.index[finals["number"] == winner][0])
    plot_pareto_png(trials, front, run_dir / "pareto.png", cost=cost, knee=knee, quality=quality)
    plot_pareto_html(trials, front, run_dir / "pareto.html", cost=cost, quality=quality)
    best = None
    if knee is not None:
        row = front.loc[knee]
        trial = study.trials[int(row["number"])]
        metrics = {k: _plain(row[k]) for k in METRIC_COLUMNS + FINAL_COLUMNS if k in row and pd.notna(row[k])}
        best = {
            "trial": int(row["number"]),
            "weights": f"models/{'final' if not finals.empty else 'trial'}_{int(row['number'])}.safetensors",
            "spec": trial.user_attrs["spec"],
            "shape": row["shape"],
            "metrics": metrics,
            "base": {k: _plain(v) for k, v in base.items() if k in METRIC_COLUMNS},
            **dict(best_extra or {}),
        }
        atomic_write_text(run_dir / "best.yaml", yaml.safe_dump(best, sort_keys=False))
    return {"trials": trials, "front": front, "knee": knee, "best": best}


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value
