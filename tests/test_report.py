"""Reports from an in-memory study (no model): trial table, Pareto front, knee, written files."""

from __future__ import annotations

import math

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState, create_trial

from nas.spec import BaseShape, SubnetSpec
from nas.study.console import shape_attrs
from nas.study.report import hypervolume, knee_index, pareto_frame, trials_frame, write_reports

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHAPE = BaseShape(num_layers=6, num_heads=12, head_size=32, hidden_size=384, ffn_size=1536, max_positions=512)

# (val_accuracy, latency_ms, n_layers): numbers 0..7 in this order, plus a FAIL (8) and a PRUNED (9)
POINTS = [
    (0.80, 10.0, 4),  # 0 front
    (0.70, 5.0, 2),   # 1 front
    (0.75, 12.0, 4),  # 2 dominated by 0
    (0.60, 2.0, 1),   # 3 front
    (0.85, 20.0, 6),  # 4 front
    (0.70, 6.0, 3),   # 5 dominated by 1
    (0.59, 2.5, 1),   # 6 dominated by 3
    (0.84, 21.0, 5),  # 7 dominated by 4
]
FRONT = [3, 1, 0, 4]  # sorted by latency
BASE = {
    **shape_attrs(SubnetSpec.full(SHAPE)), "val_accuracy": 0.86, "test_accuracy": 0.85, "latency_ms": 40.0,
    "latency_p90_ms": 44.0, "latency_min_ms": 39.0, "speedup": 1.0, "latency_ratio": 1.0, "params": 22_700_000,
    "flops": 9e9,
    "size_mb": 90.8,
}
TEST_ACC = {"0": 0.79, "4": 0.83, "1": 0.69, "3": 0.61}


def spec_for(n_layers: int, i: int) -> SubnetSpec:
    return SubnetSpec.uniform(layers=range(n_layers), heads=12 - i % 3 * 2, ffn=1536 - 128 * i, hidden=384, context=128)


def attrs_for(acc: float, lat: float, spec: SubnetSpec) -> dict:
    params = 10_000_000 + 1_000_000 * len(spec.layers)
    return {
        **shape_attrs(spec), "spec": spec.to_dict(), "val_accuracy": acc, "latency_ms": lat,
        "latency_p90_ms": lat * 1.1, "latency_min_ms": lat * 0.9, "speedup": BASE["latency_ms"] / lat,
        # the latency objective: the ratio to the base timed in the same rounds
        "latency_ratio": lat / BASE["latency_ms"], "speedup_p10": 0.9 * BASE["latency_ms"] / lat,
        "speedup_p90": 1.1 * BASE["latency_ms"] / lat,
        "params": params, "flops": params * 256, "size_mb": params * 4 / 1e6,
        "seconds_prune": 0.1, "seconds_latency": 0.2, "seconds_finetune": 3.0, "seconds_eval": 0.5,
    }


def make_study(*, with_test: bool = True) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i, (acc, lat, n) in enumerate(POINTS):
        spec = spec_for(n, i)
        study.add_trial(create_trial(values=[acc, lat / BASE["latency_ms"]], user_attrs=attrs_for(acc, lat, spec)))
    spec = spec_for(2, 8)
    study.add_trial(create_trial(state=TrialState.FAIL, values=None,
                                 user_attrs={**shape_attrs(spec), "spec": spec.to_dict(),
                                             "fail_reason": "RuntimeError: boom"}))
    spec = spec_for(6, 9)
    slow = attrs_for(0.0, 55.0, spec)
    for key in ("val_accuracy", "seconds_finetune", "seconds_eval"):
        del slow[key]
    study.add_trial(create_trial(state=TrialState.PRUNED, values=None,
                                 user_attrs={**slow, "infeasible": True,
                                             "fail_reason": "latency 55.00 ms > search.max_latency_ms=50.0"}))
    study.set_user_attr("base", BASE)
    if with_test:
        study.set_user_attr("test_accuracy", TEST_ACC)
    return study


@pytest.fixture()
def study() -> optuna.Study:
    return make_study()


def dominated(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a is dominated by b (accuracy maximised, latency minimised)."""
    return b[0] >= a[0] and b[1] <= a[1] and b != a


# ---- trials_frame -------------------------------------------------------------------------------


def test_trials_frame_one_row_per_trial(study):
    frame = trials_frame(study)
    assert len(frame) == len(study.trials) == 10
    assert list(frame["number"]) == list(range(10))
    assert list(frame["state"]) == ["COMPLETE"] * 8 + ["FAIL", "PRUNED"]
    for col in ("number", "state", "n_layers", "heads", "ffn", "hidden", "context", "shape", "val_accuracy",
                "test_accuracy", "latency_ms", "latency_p90_ms", "speedup", "params", "flops", "size_mb",
                "infeasible", "fail_reason", "duration_s", "seconds_finetune"):
        assert col in frame.columns, col
    for i, (acc, lat, n) in enumerate(POINTS):
        row = frame.iloc[i]
        assert row["val_accuracy"] == acc and row["latency_ms"] == lat and row["n_layers"] == n
        assert row["shape"] == spec_for(n, i).describe()
        assert not row["infeasible"]
    assert frame.iloc[8]["fail_reason"] == "RuntimeError: boom"
    assert bool(frame.iloc[9]["infeasible"]) is True
    assert "max_latency_ms" in frame.iloc[9]["fail_reason"]
    assert frame.iloc[9]["latency_ms"] == 55.0
    assert pd.isna(frame.iloc[9]["val_accuracy"]) and pd.isna(frame.iloc[9]["seconds_finetune"])


def test_trials_frame_merges_test_accuracy(study):
    frame = trials_frame(study).set_index("number")
    for k, v in TEST_ACC.items():
        assert frame.loc[int(k), "test_accuracy"] == v
    others = [n for n in range(10) if str(n) not in TEST_ACC]
    assert frame.loc[others, "test_accuracy"].isna().all()


def test_trials_frame_of_empty_study():
    frame = trials_frame(optuna.create_study(directions=["maximize", "minimize"]))
    assert frame.empty
    assert {"number", "state", "val_accuracy", "latency_ms"} <= set(frame.columns)


# ---- pareto_frame -------------------------------------------------------------------------------


def test_pareto_frame_is_the_non_dominated_set_sorted_by_latency(study):
    front = pareto_frame(study, BASE)
    members = front[~front["is_base"].astype(bool)]
    assert list(members["number"].astype(int)) == FRONT
    # independent check: exactly the completed trials no other completed trial dominates
    pts = {i: (acc, lat) for i, (acc, lat, _) in enumerate(POINTS)}
    want = {i for i, p in pts.items() if not any(dominated(p, q) for q in pts.values())}
    assert set(members["number"].astype(int)) == want
    assert list(members["latency_ms"]) == sorted(members["latency_ms"])
    assert (members["state"] == "COMPLETE").all()
    # test accuracies merged from the study attribute
    for _, row in members.iterrows():
        assert row["test_accuracy"] == TEST_ACC[str(int(row["number"]))]


def test_pareto_frame_base_row(study):
    front = pareto_frame(study, BASE)
    assert len(front) == len(FRONT) + 1
    base = front[front["is_base"].astype(bool)]
    assert len(base) == 1
    row = base.iloc[0]
    assert row["state"] == "BASE"
    assert row["val_accuracy"] == BASE["val_accuracy"] and row["latency_ms"] == BASE["latency_ms"]
    assert row["test_accuracy"] == BASE["test_accuracy"] and row["speedup"] == 1.0
    assert row["n_layers"] == 6 and row["shape"] == SubnetSpec.full(SHAPE).describe()
    assert pd.isna(row["number"])
    assert pareto_frame(study, None)["is_base"].astype(bool).sum() == 0


def test_pareto_frame_sorted_by_another_cost():
    study = optuna.create_study(directions=["maximize", "minimize"])
    # objective 2 is params: the front is sorted by params, not by latency (descending here)
    for i, (acc, params, lat) in enumerate([(0.8, 5e6, 2.0), (0.7, 3e6, 9.0), (0.9, 9e6, 1.0)]):
        attrs = {**attrs_for(acc, lat, spec_for(3, i)), "params": params}
        study.add_trial(create_trial(values=[acc, params], user_attrs=attrs))
    front = pareto_frame(study, BASE, cost="params")
    members = front[~front["is_base"].astype(bool)]
    assert list(members["number"].astype(int)) == [1, 0, 2]


def test_pareto_frame_without_completed_trials():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(create_trial(state=TrialState.FAIL, values=None, user_attrs={"fail_reason": "x"}))
    front = pareto_frame(study, BASE)
    assert len(front) == 1 and bool(front.iloc[0]["is_base"])
    assert knee_index(front) is None


# ---- knee_index ---------------------------------------------------------------------------------


def frame(points: list[tuple[float, float]], *, base: tuple[float, float] | None = None) -> pd.DataFrame:
    rows = [{"val_accuracy": a, "latency_ms": c, "is_base": False} for a, c in points]
    if base is not None:
        rows.append({"val_accuracy": base[0], "latency_ms": base[1], "is_base": True})
    return pd.DataFrame(rows)


def test_knee_of_an_l_shaped_front():
    # accuracy jumps from 0.50 to 0.89 for one extra ms, then barely moves: (2 ms, 0.89) is the corner
    f = frame([(0.50, 1.0), (0.89, 2.0), (0.895, 5.0), (0.90, 10.0)])
    assert knee_index(f) == 1


def test_knee_ignores_the_base_row():
    # the base sits at the ideal corner: if it counted it would be the knee
    f = frame([(0.50, 1.0), (0.80, 3.0), (0.85, 6.0), (0.90, 10.0)], base=(0.99, 0.5))
    k = knee_index(f)
    assert k is not None and not f.loc[k, "is_base"]
    assert k == 1


def test_knee_index_refers_to_the_frame_index():
    f = frame([(0.50, 1.0), (0.89, 2.0), (0.895, 5.0), (0.90, 10.0)])
    f.index = [10, 11, 12, 13]
    assert knee_index(f) == 11


def test_knee_of_one_member():
    assert knee_index(frame([(0.7, 3.0)])) == 0
    assert knee_index(frame([(0.7, 3.0)], base=(0.9, 9.0))) == 0


def test_knee_of_two_members_prefers_the_clearly_better_trade():
    """(1.0 ms, 0.50) vs (1.1 ms, 0.90): 10% more latency buys 40 points of accuracy.

    With min-max scaling two members always sit at (0, 0) and (1, 1), equally far from the
    ideal point, so the choice falls to row order whatever the numbers are."""
    assert knee_index(frame([(0.50, 1.0), (0.90, 1.1)])) == 1
    # and the symmetric case: nearly the same accuracy for 10x the latency -> the cheap one
    assert knee_index(frame([(0.89, 1.0), (0.90, 10.0)])) == 0


def test_knee_of_two_members_is_a_member():
    f = frame([(0.6, 1.0), (0.9, 4.0)], base=(0.95, 9.0))
    assert knee_index(f) in (0, 1)


def test_knee_with_nan_metrics_skips_them():
    f = frame([(0.50, 1.0), (float("nan"), 1.5), (0.89, 2.0), (0.895, 5.0), (0.90, 10.0)])
    assert knee_index(f) == 2


# ---- write_reports ------------------------------------------------------------------------------

FILES = ("trials.csv", "pareto.csv", "pareto.png", "pareto.html", "best.yaml")


def test_write_reports_writes_complete_files(study, tmp_path):
    run = tmp_path / "run"
    out = write_reports(study, run, base=BASE, objectives=("accuracy", "latency"),
                        best_extra={"model": "tiny", "space": "triple"})
    for name in FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert sorted(p.name for p in run.iterdir()) == sorted(FILES)  # no *.tmp leftovers
    assert not list(run.glob("*tmp*")) and not list(run.glob(".*"))

    trials = pd.read_csv(run / "trials.csv")
    assert len(trials) == 10
    for col in ("number", "state", "n_layers", "heads", "ffn", "hidden", "context", "shape", "val_accuracy",
                "test_accuracy", "latency_ms", "speedup", "params", "flops", "size_mb", "infeasible"):
        assert col in trials.columns, col
    pareto = pd.read_csv(run / "pareto.csv")
    assert len(pareto) == len(FRONT) + 1
    assert list(pareto["is_base"]) == [False] * len(FRONT) + [True]
    assert list(pareto["number"].iloc[:-1].astype(int)) == FRONT
    assert list(pareto["test_accuracy"].iloc[:-1]) == [TEST_ACC[str(n)] for n in FRONT]

    assert (run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (run / "pareto.html").read_text()
    assert "plotly" in html.lower() and html.rstrip().endswith("</html>")

    best = yaml.safe_load((run / "best.yaml").read_text())
    knee = out["knee"]
    assert knee is not None
    knee_number = int(out["front"].loc[knee, "number"])
    assert best["trial"] == knee_number and knee_number in FRONT
    spec = SubnetSpec.from_dict(best["spec"]).validate(SHAPE)
    assert spec == SubnetSpec.from_dict(study.trials[knee_number].user_attrs["spec"])
    assert best["shape"] == spec.describe()
    assert best["metrics"]["val_accuracy"] == POINTS[knee_number][0]
    assert best["metrics"]["latency_ms"] == POINTS[knee_number][1]
    assert best["metrics"]["test_accuracy"] == TEST_ACC[str(knee_number)]
    assert best["base"]["val_accuracy"] == BASE["val_accuracy"]
    assert best["model"] == "tiny" and best["space"] == "triple"
    # the knee of this front by hand: scaled to [0, 1] the members are (0, 0), (.17, .4), (.44, .8),
    # (1, 1); trial 0 (10 ms, 0.80) is farthest above the line joining the extremes
    assert knee_number == 0


def test_write_reports_is_repeatable_and_overwrites(study, tmp_path):
    write_reports(study, tmp_path, base=BASE, objectives=("accuracy", "latency"))
    first = (tmp_path / "pareto.csv").read_text()
    spec = spec_for(1, 20)
    study.add_trial(create_trial(values=[0.99, 1.0 / BASE["latency_ms"]], user_attrs=attrs_for(0.99, 1.0, spec)))  # dominates all
    out = write_reports(study, tmp_path, base=BASE, objectives=("accuracy", "latency"))
    assert (tmp_path / "pareto.csv").read_text() != first
    pareto = pd.read_csv(tmp_path / "pareto.csv")
    assert list(pareto["number"].iloc[:-1].astype(int)) == [10]
    assert yaml.safe_load((tmp_path / "best.yaml").read_text())["trial"] == 10
    assert out["best"]["trial"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)


def test_write_reports_without_completed_trials(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(create_trial(state=TrialState.PRUNED, values=None,
                                 user_attrs={"infeasible": True, "latency_ms": 9.0, "fail_reason": "slow"}))
    out = write_reports(study, tmp_path, base=BASE, objectives=("accuracy", "latency"))
    assert out["knee"] is None and out["best"] is None
    assert not (tmp_path / "best.yaml").exists()
    for name in FILES[:4]:
        assert (tmp_path / name).is_file(), name
    assert len(pd.read_csv(tmp_path / "trials.csv")) == 1


def test_write_reports_with_params_objective(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i, (acc, params) in enumerate([(0.6, 2e6), (0.85, 4e6), (0.86, 9e6), (0.80, 5e6)]):
        attrs = {**attrs_for(acc, 10.0 - i, spec_for(2, i)), "params": params}
        study.add_trial(create_trial(values=[acc, params], user_attrs=attrs))
    out = write_reports(study, tmp_path, base=BASE, objectives=("accuracy", "params"))
    members = out["front"][~out["front"]["is_base"].astype(bool)]
    assert list(members["number"].astype(int)) == [0, 1, 2]  # sorted by params, 3 dominated by 1
    assert out["best"]["trial"] == 1
    assert math.isclose(out["best"]["metrics"]["params"], 4e6)


def test_hypervolume_is_the_area_the_front_dominates_up_to_the_reference():
    # one point: the rectangle between it and the reference (0.5, 1.0)
    assert hypervolume([(0.8, 0.5)]) == pytest.approx(0.5 * 0.3)
    # two front members: the union of their rectangles (a staircase), not the sum
    assert hypervolume([(0.8, 0.5), (0.7, 0.2)]) == pytest.approx(0.8 * 0.2 + 0.5 * 0.1)
    # a dominated point and points beyond the reference add nothing; order does not matter
    assert hypervolume([(0.7, 0.2), (0.65, 0.6), (0.8, 0.5), (0.9, 1.2), (0.4, 0.1)]) == pytest.approx(0.21)
    assert hypervolume([]) == 0.0
    # another reference: the near-base score of experiments/search_quality
    assert hypervolume([(0.8, 0.5)], ref_quality=0.78, ref_cost=0.9) == pytest.approx(0.4 * 0.02)


def test_printed_front_shows_the_deployed_accuracy_and_each_baseline():
    from rich.console import Console

    from nas.study.console import front_table

    front = pd.DataFrame([
        {"number": 1, "shape": "L6 H12 F640 D320 C128", "val_accuracy": 0.81, "test_accuracy": 0.79,
         "final_val_accuracy": 0.83, "final_test_accuracy": 0.811, "final_val_accuracy_deployed": 0.8302,
         "final_test_accuracy_deployed": 0.8119, "final_speedup_over_quantized_base": 1.44,
         "final_speedup_over_runtime_fp32_base": 3.27, "final_speedup_over_torch_fp32_base": 5.82,
         "latency_ms": 1.8, "speedup": 1.83, "speedup_p10": None, "speedup_p90": None, "params": 15.3e6,
         "is_base": False},
        {"number": None, "shape": "L6 H12 F1536 D384 C512", "val_accuracy": 0.85, "test_accuracy": 0.818,
         "latency_ms": 3.3, "speedup": 1.0, "params": 22.7e6, "is_base": True},
    ])
    console = Console(record=True, width=400)
    front_table(front, console)
    text = console.export_text()
    assert "deployed test" in text and "0.8119" in text and "1.44x / 3.27x / 5.82x" in text
    assert "(c) the base quantized the same way" in text and "L6 H12 F640 D320 C128" in text  # shape not wrapped
    assert "p10-p90" not in text  # predicted trials have no spread of rounds


def test_pareto_png_shows_the_final_members_as_deployed_and_labels_the_winner(study, tmp_path, monkeypatch):
    """Two final members measured as deployed (trials 0 and 4): the picture's second panel holds them at their
    measured speedup over (c) and test accuracy as served, the winner labelled as the winner with its change against
    the fp32 base, (c) itself at 1x; the search panel keeps the trials at 1 / latency ratio and marks no knee."""
    import nas.study.report as report

    final = {"0": {"val_accuracy": 0.83, "test_accuracy": 0.82, "test_accuracy_deployed": 0.8119,
                   "speedup_over_quantized_base": 2.9, "steps": 793},
             "4": {"val_accuracy": 0.85, "test_accuracy": 0.84, "test_accuracy_deployed": 0.8301,
                   "speedup_over_quantized_base": 1.4, "steps": 793}}
    study.set_user_attr("final", final)
    study.set_user_attr("final_winner", 0)
    base = {**BASE, "test_accuracy_deployed": 0.8390}
    drawn = {}
    real_png, real_html = report.plot_pareto_png, report.plot_pareto_html

    def png(*args, **kwargs):
        drawn["png"] = real_png(*args, **kwargs)
        return drawn["png"]

    def html(*args, **kwargs):
        drawn["html"] = real_html(*args, **kwargs)
        return drawn["html"]

    monkeypatch.setattr(report, "plot_pareto_png", png)
    monkeypatch.setattr(report, "plot_pareto_html", html)
    out = write_reports(study, tmp_path, base=base, objectives=("accuracy", "latency"))
    s = drawn["png"]
    members = s["members"].sort_values("x")
    assert list(members["x"]) == [1.4, 2.9] and list(members["y"]) == [0.8301, 0.8119]
    assert list(members["label"]) == [shape_of(4), shape_of(0)]
    assert len(s["winner"]) == 1 and (s["winner"]["x"].iloc[0], s["winner"]["y"].iloc[0]) == (2.9, 0.8119)
    label = s["winner"]["label"].iloc[0]
    assert label.startswith(f"winner: trial 0 {shape_of(0)}: 0.8119 (-3.81 pts vs fp32 base), 2.90x over (c)")
    assert list(s["base_quantized"][["x", "y"]].iloc[0]) == [1.0, 0.8390]
    assert s["base_fp32"]["y"].iloc[0] == BASE["test_accuracy"]
    trials = s["trials"].sort_values("x")
    expected = sorted((BASE["latency_ms"] / lat, acc) for acc, lat, _ in POINTS)  # speedup over the base, validation
    assert [(round(x, 9), y) for x, y in zip(trials["x"], trials["y"])] == [(round(x, 9), y) for x, y in expected]
    # best.yaml takes the winner: its trial is the one marked on the search panel, as the winner's
    assert (s["knee_label"], s["knee"]["x"].tolist(), s["knee"]["y"].tolist()) == ("the winner's trial", [4.0], [0.80])
    assert out["best"]["trial"] == 0
    assert drawn["html"]["winner"].equals(s["winner"])
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "winner: trial 0" in (tmp_path / "pareto.html").read_text()


def test_pareto_png_without_final_members_marks_the_knee(study, tmp_path):
    from nas.study.report import plot_pareto_png

    trials, front = trials_frame(study), pareto_frame(study, BASE, cost="latency_ratio")
    s = plot_pareto_png(trials, front, tmp_path / "p.png", cost="latency_ratio", knee=2, base=BASE)
    assert s["members"].empty and s["winner"].empty and s["base_quantized"].empty
    assert len(s["knee"]) == 1 and s["knee"]["label"].iloc[0] == front.loc[2, "shape"]
    assert s["knee_label"] == "knee (best.yaml)"
    assert s["base"]["x"].tolist() == [1.0] and s["base"]["y"].tolist() == [BASE["val_accuracy"]]


def shape_of(number: int) -> str:  # the shape of trial `number` of make_study
    return spec_for(POINTS[number][2], number).describe()
