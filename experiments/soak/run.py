"""Soak test of crash recovery: two workers on one SQLite study; worker B is killed with SIGKILL
at random moments and restarted each time, worker A runs undisturbed.

The study must end with exactly search.n_trials distinct completed shapes, none RUNNING, no
shape trained twice, and every completed trial's model either on disk (Pareto members) or
deliberately dropped. Recorded: kills, restarts, trials lost (must be 0) and the time lost.

    .venv/bin/python experiments/soak/run.py                 # writes results.json / results.md here
    .venv/bin/python experiments/soak/run.py --kills 3 --n-trials 40 --seed 0

Cheap on purpose: the embedded model and data, 5 training steps per trial, small
evaluation splits, one thread per worker (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STUDY = "soak"


def worker_args(work: Path, name: str, n_trials: int) -> list[str]:
    return [
        sys.executable, "-m", "nas.search", "+space=triple", f"hydra.run.dir={work / name}",
        f"search.storage=sqlite:///{work / 'study.db'}", f"search.study_name={STUDY}", f"search.n_trials={n_trials}",
        "search.sampler=random", "search.heartbeat_interval=2", "search.grace_period=6",
        f"cache_dir={work / 'cache'}", "max_length=64", "base.max_steps=5", "base.batch_size=16",
        "importance.max_batches=2", "importance.batch_size=16", "train.max_steps=5", "train.batch_size=16",
        "train.eval_batch_size=64", "train.threads=1", "data.max_train_samples=256", "data.max_eval_samples=64",
    ]


def worker_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def load_study(work: Path) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{work / 'study.db'}")


def trials_of(work: Path) -> list[Any]:
    if not (work / "study.db").is_file():
        return []
    try:
        return load_study(work).get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return []


def running_trial_of(work: Path, pid: int) -> Any:
    for t in trials_of(work):
        if t.state.name == "RUNNING" and (t.system_attrs.get("nas_worker") or {}).get("pid") == pid:
            return t
    return None


def first_trial_start_after(work: Path, pid: int) -> float | None:
    starts = [t.system_attrs["nas_worker"]["started"] for t in trials_of(work)
              if (t.system_attrs.get("nas_worker") or {}).get("pid") == pid]
    return min(starts) if starts else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=40)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    # a (re)start takes about 15-25 s here (imports, cached base and scores): most kills land in a trial
    parser.add_argument("--min-delay", type=float, default=20.0, help="earliest kill, seconds after a (re)start")
    parser.add_argument("--max-delay", type=float, default=60.0, help="latest kill, seconds after a (re)start")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a fresh temporary one)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="nas-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    t_start = time.time()

    def start(name: str, attempt: int) -> subprocess.Popen:
        log = open(logs / f"{name}{attempt}.log", "w")
        return subprocess.Popen(worker_args(work, name, args.n_trials), cwd=ROOT, env=worker_env(), stdout=log,
                                stderr=subprocess.STDOUT)

    a = start("A", 0)
    b = start("B", 0)
    kills: list[dict[str, Any]] = []
    restarts = 0
    b_started = time.time()
    while len(kills) < args.kills:
        delay = rng.uniform(args.min_delay, args.max_delay)
        deadline = b_started + delay
        while time.time() < deadline and b.poll() is None:
            time.sleep(0.2)
        if b.poll() is not None:
            print(f"worker B ended on its own (exit {b.returncode}) before kill {len(kills) + 1}", flush=True)
            break
        victim = running_trial_of(work, b.pid)
        started_any = first_trial_start_after(work, b.pid) is not None
        os.kill(b.pid, signal.SIGKILL)
        killed_at = time.time()
        b.wait()
        if victim is not None:  # read before the kill: the trial may have finished in between
            again = [t for t in trials_of(work) if t.number == victim.number]
            if again and again[0].state.name != "RUNNING":
                victim = None
        kill = {"at_s": round(killed_at - t_start, 1), "after_start_s": round(delay, 1), "pid": b.pid,
                "trial": None if victim is None else victim.number,
                "phase": (f"trial {victim.number}" if victim is not None else
                          "between trials" if started_any else "start-up (no trial yet)"),
                "trial_had_shape": bool(victim is not None and victim.params),
                "work_lost_s": 0.0 if victim is None else round(killed_at - victim.system_attrs["nas_worker"]["started"], 1)}
        print(f"kill {len(kills) + 1}: worker B (pid {b.pid}) {delay:.1f} s after its start, "
              + (f"during trial {victim.number} ({kill['work_lost_s']} s into it)" if victim else kill["phase"]),
              flush=True)
        b = start("B", len(kills) + 1)
        restarts += 1
        b_started = time.time()
        kill["restart_pid"] = b.pid
        kills.append(kill)
    for proc in (a, b):
        proc.wait(timeout=1800)
    wall = time.time() - t_start
    for kill in kills:  # the restart's cost: from the kill to the restarted worker's first trial
        first = first_trial_start_after(work, kill["restart_pid"])
        kill["restart_to_first_trial_s"] = None if first is None else round(first - (t_start + kill["at_s"]), 1)

    result = verify(work, args.n_trials, kills)
    result.update(
        n_trials=args.n_trials, kills=len(kills), restarts=restarts, seed=args.seed, wall_s=round(wall, 1),
        exit_codes={"A": a.returncode, "B_last": b.returncode},
        kill_events=kills,
        work_lost_s=round(sum(k["work_lost_s"] for k in kills), 1),
        restart_overhead_s=round(sum(k["restart_to_first_trial_s"] or 0.0 for k in kills), 1),
    )
    result["time_lost_s"] = round(result["work_lost_s"] + result["restart_overhead_s"], 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "results.md").write_text(report(result))
    print(report(result), flush=True)
    print(f"work folder: {work}")
    return 0 if result["ok"] else 1


def verify(work: Path, n_trials: int, kills: list[dict[str, Any]]) -> dict[str, Any]:
    study = load_study(work)
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    trained = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED") and "repeat_of" not in t.user_attrs]
    specs = [json.dumps(t.user_attrs["spec"], sort_keys=True) for t in trained]
    killed = [t for t in trials if str(t.system_attrs.get("fail_reason", "")).startswith("worker lost")]
    retried = {t.system_attrs.get("failed_trial"): t for t in trials if "retry_history" in t.system_attrs}

    def completed_retry(number: int) -> bool:  # the shape of a killed trial was trained to the end
        trial = study.trials[number]
        return any(t.state.name == "COMPLETE" and t.params == trial.params and "retry_history" in t.system_attrs
                   for t in trials)

    lost = [t.number for t in killed if t.params and not completed_retry(t.number)]
    lost += [t.number for t in trials if t.state.name == "RUNNING"]
    front = {t.number for t in study.best_trials if "repeat_of" not in t.user_attrs}
    models = {int(p.stem.split("_")[1]): p for p in work.glob("*/models/trial_*.safetensors")}
    kept_front = sorted(n for n in front if n in models)
    stray = sorted(n for n in models if n not in front)
    kills_mid_trial = sum(k["trial"] is not None for k in kills)
    checks = {
        "exactly n_trials distinct completed shapes": len(trained) == n_trials and len(set(specs)) == n_trials,
        "none RUNNING": states.get("RUNNING", 0) == 0,
        "no shape trained twice": len(set(specs)) == len(specs),
        "every killed trial's shape completed by its retry": not lost,
        "every Pareto member's model on disk": kept_front == sorted(front),
        "no other model left on disk (dropped)": not stray,
        "no partial files": not list(work.glob("*/models/*.tmp")),
    }
    return {
        "ok": all(checks.values()),
        "checks": checks,
        "states": states,
        "trained_distinct": len(set(specs)),
        "repeats": sum("repeat_of" in t.user_attrs for t in trials),
        "killed_trials": [t.number for t in killed],
        "kills_during_a_trial": kills_mid_trial,
        "retries": {str(k): v.number for k, v in retried.items()},
        "waiting_left": states.get("WAITING", 0),
        "trials_lost": len(lost),
        "front": sorted(front),
        "models_on_disk": sorted(models),
    }


def report(r: dict[str, Any]) -> str:
    lines = [
        "| figure | value |", "|---|---|",
        f"| search.n_trials | {r['n_trials']} |",
        f"| kills (SIGKILL of worker B) | {r['kills']} ({r['kills_during_a_trial']} during a trial) |",
        f"| restarts | {r['restarts']} |",
        f"| trials lost | {r['trials_lost']} |",
        f"| time lost | {r['time_lost_s']} s = {r['work_lost_s']} s of killed trials' work + "
        f"{r['restart_overhead_s']} s from kill to the restarted worker's first trial |",
        f"| final trial states | {', '.join(f'{k} {v}' for k, v in sorted(r['states'].items()))} |",
        f"| distinct shapes trained | {r['trained_distinct']} (repeats reused: {r['repeats']}) |",
        f"| killed trials -> retries | {', '.join(f'{k} -> {v}' for k, v in r['retries'].items()) or 'none'} |",
        f"| retries left waiting | {r['waiting_left']} |",
        f"| Pareto front / models on disk | {r['front']} / {r['models_on_disk']} |",
        f"| wall time | {r['wall_s']} s |",
        "",
        "| kill | at (s) | after (re)start (s) | killed during | its work lost (s) | kill -> next trial of the restart (s) |",
        "|---|---|---|---|---|---|",
        *[f"| {i + 1} | {k['at_s']} | {k['after_start_s']} | {k['phase']} | {k['work_lost_s']} | "
          f"{k['restart_to_first_trial_s'] if k['restart_to_first_trial_s'] is not None else 'none (study done)'} |"
          for i, k in enumerate(r["kill_events"])],
        "",
        *[f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in r["checks"].items()],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
