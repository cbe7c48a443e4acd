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
    "val_accuracy", "test_accuracy", "val_byte_perplexity", "test_byte_perplexity", "val_perplexity", "test_perplexity",
    "val_bits_per_byte", "test_bits_per_byte", "vocab", "latency_ms", "latency_p90_ms", "base_latency_ms", "speedup", "speedup_p10",
    "speedup_p90", "latency_ratio", "mean_tokens", "params", "flops", "size_mb", "val_accuracy_fp32", "judge_accuracy",
]
# The final stage (search.final_k): the chosen front members trained longer, from their trial weights.
# A language-modelling study's final stage measures perplexity instead of accuracy.
# And it measures each member as deployed (latency.runtime / latency.precision, e.g. int8 ONNX): its
# accuracy there, and its measured speedups over the three baselines (nas.cost.latency.BASELINES).
DEPLOYED_KEYS = ["val_accuracy_deployed", "test_accuracy_deployed", "judge_accuracy_deployed",
                 "val_byte_perplexity_deployed", "test_byte_perplexity_deployed", "val_perplexity_deployed",
                 "test_perplexity_deployed", "test_bits_per_byte_deployed",
                 "speedup_over_reference_base", "speedup_over_reference_base_p10", "speedup_over_reference_base_p90",
                 "precision", "variant", "latency_ms", "latency_ms_fp32",
                 "speedup_over_quantized_base", "speedup_over_quantized_base_p10", "speedup_over_quantized_base_p90",
                 "speedup_over_runtime_fp32_base", "speedup_over_torch_fp32_base", "base_latency_ms_quantized_base",
                 "base_latency_ms_runtime_fp32_base", "base_latency_ms_torch_fp32_base", "definition"]
FINAL_COLUMNS = ["final_val_accuracy", "final_test_accuracy", "final_val_byte_perplexity", "final_test_byte_perplexity",
                 "final_val_perplexity", "final_test_perplexity",
                 "final_steps", *("final_" + k for k in DEPLOYED_KEYS)]
# The latency objective is the paired ratio to the base (see nas.search.OBJECTIVE_ATTR).
COST_COLUMN = {"latency": "latency_ratio", "params": "params", "flops": "flops", "size": "size_mb"}


COST_LABEL = {"latency_ratio": "latency / base latency (timed in pairs; lower is faster)",
              "latency_ms": "latency (median ms per input; per token for a decoding LM)", "params": "parameters", "flops": "FLOPs per input",
              "size_mb": "size (MB)"}


WINNER_ATTR = "final_winner"  # study attribute: the final stage's winner (a trial number)
EXITS_ATTR = "final_exits"  # study attribute: final member -> its early-exit variant's figures (nas.study.exits)
WINNER_EXITS_ATTR = "final_winner_exits"  # study attribute: whether the winner runs with its early exits


def measured_members(front: pd.DataFrame, *, quality: str, cost: str) -> pd.DataFrame:
    """The front's trials (the base row left out) that have both their quality and their cost."""
    is_base = front.get("is_base", pd.Series(False, index=front.index)).fillna(False).astype(bool)
    return front[~is_base].dropna(subset=[quality, cost])


def cost_column(objectives: Sequence[str]) -> str:
    costs = [o for o in objectives if o not in ("accuracy", "perplexity")]
    return COST_COLUMN[costs[0]] if costs else "latency_ms"


def quality_column(objectives: Sequence[str]) -> str:
    """The quality objective's column: val_accuracy (higher is better) or, for a language model, val_byte_perplexity
    (per byte of the evaluation text, nas.quality.metrics; lower is better)."""
    return "val_byte_perplexity" if objectives and objectives[0] == "perplexity" else "val_accuracy"


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
    """A language model's base alone at each other GGUF type and vocabulary of the run (study attribute
    `quantization_alone`, measured by nas.study.search; key `<precision>` or `<precision> V<ids>`): reference rows
    beside the front, state QUANT_ALONE (never front members; the winner may be one, nas.study.lm_final)."""
    rows = []
    reference = (study.user_attrs.get("latency") or {}).get("precision")
    for key, m in (study.user_attrs.get("quantization_alone") or {}).items():
        if key == reference:
            continue
        row = base_row(base)
        row.update({k: m.get(k) for k in METRIC_COLUMNS if k.startswith(("val_", "test_")) and k in m})
        row.update(state="QUANT_ALONE", precision=m.get("precision", key), vocab=m.get("vocab"),
                   params=m.get("params", row.get("params")),
                   shape=f"base V{m['vocab']}" if m.get("vocab") else row.get("shape"),
                   speedup=m.get("speedup"), speedup_p10=m.get("speedup_p10"),
                   speedup_p90=m.get("speedup_p90"), latency_ms=m.get("latency_ms"),
                   latency_ratio=1.0 / m["speedup"] if m.get("speedup") else None,
                   size_mb=m["bytes"] / 1e6 if m.get("bytes") else None)
        rows.append(row)
    return rows


def exit_rows(study: Any, front: pd.DataFrame) -> list[dict[str, Any]]:
    """Each final member's early-exit variant (study attribute EXITS_ATTR, nas.study.exits) as a row of its own, state
    EXITS, beside its member's: the same trial number and shape (+ exits), `exits` naming the rule, its final columns
    as served (its validation and test accuracy are its runner's, one input at a time), and its trial-level latency
    columns the member's scaled by the exits' measured speedup over the member (so pick=min_latency / knee compare it
    with the front in the front's own units). No validation accuracy of a trial: it is not on the search panel."""
    rows = []
    for n, r in (study.user_attrs.get(EXITS_ATTR) or {}).items():
        static = front[front["number"] == int(n)]
        if static.empty or not r.get("speedup_over_static"):
            continue
        row = static.iloc[0].to_dict()
        gain = float(r["speedup_over_static"])
        row.update(state="EXITS", shape=f"{row['shape']} +exits", exits=r.get("exits_rule"), val_accuracy=None,
                   test_accuracy=None, latency_ms=_scaled(row.get("latency_ms"), 1 / gain),
                   latency_ratio=_scaled(row.get("latency_ratio"), 1 / gain), speedup=_scaled(row.get("speedup"), gain),
                   speedup_p10=None, speedup_p90=None, latency_p90_ms=None, is_base=False)
        for key in FINAL_COLUMNS:
            if key != "final_steps":
                row[key] = r.get(key.removeprefix("final_"))
        rows.append(row)
    return rows


def _scaled(value: Any, factor: float) -> Any:
    return None if value is None or value != value else float(value) * factor


def pareto_frame(study: Any, base: Mapping[str, Any] | None = None, *, cost: str = "latency_ms",
                 quality: str = "val_accuracy") -> pd.DataFrame:
    """The Pareto-optimal completed trials sorted by cost, each final member's early-exit variant after them
    (exit_rows), plus the base as a reference row."""
    trials = trials_frame(study)
    # a repeated shape stands on the front once, as the trial that trained it
    numbers = {t.number for t in study.best_trials if "repeat_of" not in t.user_attrs} if _has_complete(study) else set()
    front = trials[trials["number"].isin(numbers)].copy()
    front["is_base"] = False
    front = front.sort_values([cost, quality], ascending=[True, not quality.endswith("perplexity")])
    variants = exit_rows(study, front)
    if variants:
        front = pd.concat([front.assign(exits=None), pd.DataFrame(variants)], ignore_index=True)
    if base is not None:
        reference = base_row(base)
        reference["precision"] = reference.get("precision") or (study.user_attrs.get("latency") or {}).get("precision")
        front = pd.concat([front, pd.DataFrame([reference, *quantization_alone_rows(study, base)])], ignore_index=True)
    return front.reset_index(drop=True)


def _has_complete(study: Any) -> bool:
    return any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))


def final_quality(front: pd.DataFrame) -> str | None:
    """The final stage's validation column in `front` (final_val_accuracy, or final_val_byte_perplexity for a
    language-modelling study); None when the final stage trained nothing."""
    for column in ("final_val_accuracy", "final_val_byte_perplexity", "final_val_perplexity"):
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


def _series(x: Any, y: Any, label: Any) -> pd.DataFrame:
    frame = pd.DataFrame({"x": pd.Series(x, dtype=float).values, "y": pd.Series(y, dtype=float).values,
                          "label": pd.Series(label, dtype=object).values})
    return frame.dropna(subset=["x", "y"]).reset_index(drop=True)


def pareto_series(trials: pd.DataFrame, front: pd.DataFrame, *, cost: str = "latency_ms", quality: str = "val_accuracy",
                  knee: int | None = None, winner: int | None = None, base: Mapping[str, Any] | None = None,
                  winner_exits: bool = False) -> dict[str, Any]:
    """What pareto.png and pareto.html draw, as data (DataFrames of x, y, label), in two panels.

    search: the trials after their brief fine-tune, on validation: `trials`, the Pareto `front`, the unpruned `base`,
    a language model's base at other types (`quantization_alone`), and `knee`: the member best.yaml takes (the knee of
    the front, or the winner's trial where the final stage trained members; `knee_label` says which). x: the speedup
    over the base in the study's runtime and precision when the cost is the latency ratio (int8 by default: (c), the
    base quantized alike), else the cost.
    ships: the final members as deployed (nas.study.final), on test as served (one input at a time): `members` and
    the `winner`, x their measured speedup over (c); `base_quantized` (c) itself at 1x, `base_fp32`: the fp32 base's
    test quality (a line). Empty frames where the final stage trained nothing."""
    speed = cost == "latency_ratio"
    x_of = (lambda f: 1.0 / f[cost].astype(float)) if speed else (lambda f: f[cost].astype(float))
    is_base = front["is_base"].fillna(False).astype(bool) if "is_base" in front else pd.Series(False, index=front.index)
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=[quality, cost])
    members = front[~is_base].dropna(subset=[quality, cost])
    reference = front[is_base & (front["state"] == "BASE")].dropna(subset=[quality, cost])
    alone = front[front["state"] == "QUANT_ALONE"].dropna(subset=[quality, cost])
    test = "test_" + quality.removeprefix("val_")
    y_col, x_col = f"final_{test}_deployed", "final_speedup_over_quantized_base"
    shipped = front[~is_base]
    if y_col in shipped and x_col in shipped:
        shipped = shipped.dropna(subset=[y_col, x_col])
    else:
        shipped = shipped.iloc[0:0]
    base = dict(base or {})
    fp32 = base.get(test)
    won = shipped[shipped["number"] == winner] if winner is not None and "number" in shipped else shipped.iloc[0:0]
    if "exits" in won:  # a member and its early-exit variant: the one the final stage named (winner_exits)
        won = won[won["exits"].notna() == bool(winner_exits)]
    perplexity = quality.endswith("perplexity")

    def winner_label(r: Mapping[str, Any]) -> str:
        change = "" if fp32 is None else (f" ({(r[y_col] / fp32 - 1) * 100:+.1f}% vs fp32 base)" if perplexity else
                                          f" ({(r[y_col] - fp32) * 100:+.2f} pts vs fp32 base)")
        return (f"winner: trial {int(r['number'])} {r['shape']}: {r[y_col]:.4f}{change}, "
                f"{r[x_col]:.2f}x over (c)")

    knee_rows = front.loc[[knee]] if knee is not None and knee in front.index else front.iloc[0:0]
    knee_rows = knee_rows.dropna(subset=[quality, cost])
    if not shipped.empty:  # best.yaml takes the final stage's winner (or the best final member): its trial
        knee_rows = knee_rows[knee_rows["number"] == winner] if winner is not None else knee_rows.iloc[0:0]
    base_q = base.get(f"{test}_deployed")
    return {
        "speedup": speed,
        "trials": _series(x_of(done), done[quality], done["shape"]),
        "front": _series(x_of(members), members[quality], members["shape"]),
        "base": _series(x_of(reference), reference[quality], ["unpruned base"] * len(reference)),
        "quantization_alone": _series(x_of(alone), alone[quality], alone["precision"]),
        "knee": _series(x_of(knee_rows), knee_rows[quality], knee_rows["shape"]),
        "knee_label": "the winner's trial" if not shipped.empty else "knee (best.yaml)",
        "members": _series(shipped[x_col], shipped[y_col], shipped["shape"]),
        "winner": _series(won[x_col], won[y_col], [winner_label(r) for _, r in won.iterrows()]),
        "base_quantized": _series([1.0] if base_q is not None and not shipped.empty else [],
                                  [base_q] if base_q is not None and not shipped.empty else [],
                                  ["(c) the base quantized alike"] if base_q is not None and not shipped.empty else []),
        "base_fp32": _series([1.0] if fp32 is not None and not shipped.empty else [],
                             [fp32] if fp32 is not None and not shipped.empty else [],
                             ["the base in fp32"] if fp32 is not None and not shipped.empty else []),
    }


def _axis_labels(series: Mapping[str, Any], cost: str, quality: str) -> dict[str, str]:
    measure = quality.removeprefix("val_")
    return {"search_x": ("speedup over the base in the same runtime and precision (trials: 1 / latency ratio)"
                         if series["speedup"] else COST_LABEL.get(cost, cost)),
            "search_y": f"validation {measure} (trials: after their fine-tune)",
            "ships_x": "measured speedup over (c), the base quantized alike",
            "ships_y": f"test {measure} as deployed, one input at a time"}


def plot_pareto_png(trials: pd.DataFrame, front: pd.DataFrame, path: str | Path, *, cost: str = "latency_ms",
                    knee: int | None = None, quality: str = "val_accuracy", winner: int | None = None,
                    base: Mapping[str, Any] | None = None, winner_exits: bool = False) -> dict[str, Any]:
    """pareto.png: the search (left) and, where the final stage trained members, what ships (right: the members as
    deployed, the winner labelled). Returns what it drew (pareto_series)."""
    import matplotlib  # heavy: only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: only when a plot is drawn

    series = pareto_series(trials, front, cost=cost, quality=quality, knee=knee, winner=winner, base=base,
                           winner_exits=winner_exits)
    labels = _axis_labels(series, cost, quality)
    ships = not series["members"].empty
    fig, axes = plt.subplots(1, 2 if ships else 1, figsize=(13 if ships else 7, 5.4 if ships else 4.5), dpi=110,
                             squeeze=False)
    ax = axes[0][0]
    s = series
    ax.scatter(s["trials"]["x"], s["trials"]["y"], s=18, color="#9aa5b1", label="trials")
    if not s["front"].empty:
        ax.plot(s["front"]["x"], s["front"]["y"], "-o", color="#d64545", ms=6, label="Pareto front")
    if not s["base"].empty:
        ax.scatter(s["base"]["x"], s["base"]["y"], marker="*", s=180, color="#1f6feb", label="unpruned base", zorder=5)
    if not s["quantization_alone"].empty:
        ax.scatter(s["quantization_alone"]["x"], s["quantization_alone"]["y"], marker="D", s=40, color="#2da44e",
                   label="base, quantization alone", zorder=4)
        for _, r in s["quantization_alone"].iterrows():
            ax.annotate(str(r["label"]), (r["x"], r["y"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    if not s["knee"].empty:
        ax.scatter(s["knee"]["x"], s["knee"]["y"], s=140, facecolors="none", edgecolors="black", label=s["knee_label"])
    ax.set(xlabel=labels["search_x"], ylabel=labels["search_y"], title="the search")
    ax.grid(alpha=0.3)
    empty = {(True, False): "lower left", (True, True): "upper left", (False, False): "lower right",  # the corner
             (False, True): "upper right"}[(s["speedup"], quality.endswith("perplexity"))]  # no front reaches
    ax.legend(loc=empty, fontsize=8)
    if ships:
        ax = axes[0][1]
        ax.scatter(s["members"]["x"], s["members"]["y"], s=50, color="#d64545", label="final members", zorder=4)
        for _, r in s["members"].iterrows():
            ax.annotate(str(r["label"]), (r["x"], r["y"]), fontsize=7, xytext=(5, -9), textcoords="offset points")
        if not s["winner"].empty:
            w = s["winner"].iloc[0]
            ax.scatter([w["x"]], [w["y"]], marker="*", s=320, color="#e3b341", edgecolors="black", zorder=6,
                       label=w["label"])
            ax.annotate("winner", (w["x"], w["y"]), fontsize=9, fontweight="bold", xytext=(9, 5),
                        textcoords="offset points")
        if not s["base_quantized"].empty:
            ax.scatter(s["base_quantized"]["x"], s["base_quantized"]["y"], marker="D", s=45, color="#2da44e",
                       label=s["base_quantized"]["label"].iloc[0], zorder=5)
        if not s["base_fp32"].empty:
            ax.axhline(s["base_fp32"]["y"].iloc[0], color="#1f6feb", ls="--", lw=1,
                       label=s["base_fp32"]["label"].iloc[0])
        ax.set(xlabel=labels["ships_x"], ylabel=labels["ships_y"], title="what ships: the final members as deployed")
        ax.margins(x=0.25, y=0.15)  # room for the shapes written beside the points
        ax.set_xlim(left=0.0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=7, ncol=2, frameon=False)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return series


def plot_pareto_html(trials: pd.DataFrame, front: pd.DataFrame, path: str | Path, *, cost: str = "latency_ms",
                     quality: str = "val_accuracy", knee: int | None = None, winner: int | None = None,
                     base: Mapping[str, Any] | None = None, winner_exits: bool = False) -> dict[str, Any]:
    """pareto.html: the same panels as pareto.png, interactive. Returns what it drew (pareto_series)."""
    import plotly.graph_objects as go  # heavy: only when a plot is drawn
    from plotly.subplots import make_subplots  # heavy: only when a plot is drawn

    s = pareto_series(trials, front, cost=cost, quality=quality, knee=knee, winner=winner, base=base,
                      winner_exits=winner_exits)
    labels = _axis_labels(s, cost, quality)
    ships = not s["members"].empty
    fig = make_subplots(rows=1, cols=2 if ships else 1, subplot_titles=(
        ("the search", "what ships: the final members as deployed") if ships else ("the search",)))
    hover = "%{text}<br>%{y:.4f}<br>x %{x:.4g}<extra></extra>"

    def add(name: str, key: str, col: int, **style: Any) -> None:
        frame = s[key]
        if not frame.empty:
            fig.add_trace(go.Scatter(x=frame["x"], y=frame["y"], text=frame["label"], name=name, hovertemplate=hover,
                                     **style), row=1, col=col)

    add("trials", "trials", 1, mode="markers", marker={"color": "#9aa5b1"})
    add("Pareto front", "front", 1, mode="lines+markers", marker={"color": "#d64545", "size": 9})
    add("unpruned base", "base", 1, mode="markers", marker={"symbol": "star", "size": 16, "color": "#1f6feb"})
    add("base, quantization alone", "quantization_alone", 1, mode="markers+text", textposition="top right",
        marker={"symbol": "diamond", "size": 9, "color": "#2da44e"})
    add(s["knee_label"], "knee", 1, mode="markers",
        marker={"size": 16, "color": "rgba(0,0,0,0)", "line": {"color": "black", "width": 2}})
    fig.update_xaxes(title_text=labels["search_x"], row=1, col=1)
    fig.update_yaxes(title_text=labels["search_y"], row=1, col=1)
    if ships:
        add("final members (as deployed)", "members", 2, mode="markers+text", textposition="bottom right",
            marker={"color": "#d64545", "size": 10})
        if not s["winner"].empty:
            add(s["winner"]["label"].iloc[0], "winner", 2, mode="markers",
                marker={"symbol": "star", "size": 20, "color": "#e3b341", "line": {"color": "black", "width": 1}})
        add("(c) the base quantized alike", "base_quantized", 2, mode="markers",
            marker={"symbol": "diamond", "size": 10, "color": "#2da44e"})
        if not s["base_fp32"].empty:
            fig.add_hline(y=float(s["base_fp32"]["y"].iloc[0]), line_dash="dash", line_color="#1f6feb",
                          annotation_text="the base in fp32", row=1, col=2)
        fig.update_xaxes(title_text=labels["ships_x"], row=1, col=2)
        fig.update_yaxes(title_text=labels["ships_y"], row=1, col=2)
    fig.update_layout(template="plotly_white")
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return s


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
    with_exits = bool(study.user_attrs.get(WINNER_EXITS_ATTR))  # the winner is a member's early-exit variant
    named = (finals["number"] == winner) & ((finals["exits"].notna() == with_exits) if "exits" in finals else True)
    if winner is not None and not finals.empty and named.any():
        knee = int(finals.index[named][0])
    shipped = winner if winner is not None and not finals.empty and (finals["number"] == winner).any() else None
    plot_pareto_png(trials, front, run_dir / "pareto.png", cost=cost, knee=knee, quality=quality, winner=shipped,
                    base=base, winner_exits=with_exits)
    plot_pareto_html(trials, front, run_dir / "pareto.html", cost=cost, quality=quality, knee=knee, winner=shipped,
                     base=base, winner_exits=with_exits)
    best = None
    alone = (study.user_attrs.get("quantization_alone") or {}).get(winner[len("base "):]) \
        if isinstance(winner, str) and winner.startswith("base ") else None
    if alone is not None:  # the winner is the base alone (quantized, its vocabulary cut): no member is faster in the band
        best = {
            "trial": None,
            "alone": winner,
            "spec": alone.get("spec"),
            "precision": alone.get("precision"),
            "shape": f"the base alone at {winner[len('base '):]}",
            "metrics": {k: _plain(v) for k, v in alone.items() if k != "spec"},
            "base": {k: _plain(v) for k, v in base.items() if k in METRIC_COLUMNS},
            **dict(best_extra or {}),
        }
        atomic_write_text(run_dir / "best.yaml", yaml.safe_dump(best, sort_keys=False))
    elif knee is not None:
        row = front.loc[knee]
        trial = study.trials[int(row["number"])]
        metrics = {k: _plain(row[k]) for k in METRIC_COLUMNS + FINAL_COLUMNS if k in row and pd.notna(row[k])}
        best = {
            "trial": int(row["number"]),
            "weights": f"models/{'final' if not finals.empty else 'trial'}_{int(row['number'])}.safetensors",
            "spec": trial.user_attrs["spec"],
            "precision": trial.user_attrs.get("precision"),
            "shape": row["shape"],
            "metrics": metrics,
            "base": {k: _plain(v) for k, v in base.items() if k in METRIC_COLUMNS},
            **dict(best_extra or {}),
        }
        if isinstance(row.get("exits"), str):  # with its early exits: the rule, and the heads beside its weights
            variant = (study.user_attrs.get(EXITS_ATTR) or {}).get(str(int(row["number"]))) or {}
            best["exits"] = {"rule": variant.get("rule"), "described": row["exits"],
                             "heads": f"models/final_{int(row['number'])}.exits.safetensors"}
        atomic_write_text(run_dir / "best.yaml", yaml.safe_dump(best, sort_keys=False))
    return {"trials": trials, "front": front, "knee": knee, "best": best}


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value
