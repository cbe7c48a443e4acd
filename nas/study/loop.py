"""The study loop: what happens between "the base is ready" and "the trials are done".

It samples a shape, skips shapes already tried, recovers the trials dead workers left RUNNING,
stops on the target (search.n_trials, shared by every worker on the storage), on consecutive
failures, on search.time_budget or when the space is used up, and refreshes the reports after
every trial. It knows nothing about models: `propose(trial)` gives the trial's SubnetSpec,
`evaluate(trial, spec)` its objective values (raising optuna.TrialPruned for an infeasible
shape), `after_each(study)` refreshes reports and weights on disk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nas.study.console import shape_attrs, trial_line
from nas.study.settings import SearchSettings
from nas.study.storage import is_journal, record_worker, recover_stale_trials

# This many proposals in a row of shapes already tried ends the search: the space is used up.
MAX_CONSECUTIVE_REPEATS = 30


@dataclass
class StudyLoop:
    settings: SearchSettings
    storage_url: str  # the study's storage (a journal file has no heartbeat)
    propose: Callable[[Any], Any]  # trial -> SubnetSpec
    evaluate: Callable[[Any, Any], Sequence[float]]  # (trial, spec) -> objective values
    after_each: Callable[[Any], None]  # study -> None, after every trial that ran
    out_of_time: Callable[[], bool]  # search.time_budget spent
    say: Callable[[str], None]
    console: Any = None  # rich Console for the progress bar (None: no bar)
    poll_seconds: float = 2.0  # how often a worker waiting on the others' last trials looks again
    consecutive_failures: int = 0
    consecutive_repeats: int = 0
    last_error: str | None = None

    # search.n_trials counts finished trials (COMPLETE or infeasible) shared by every worker on this
    # storage; failed trials do not count, and a repeated shape costs nothing and does not count either.
    def n_finished(self, study: Any) -> int:
        counted = (TrialState.COMPLETE, TrialState.PRUNED)
        return sum("repeat_of" not in t.user_attrs for t in study.get_trials(deepcopy=False, states=counted))

    def run(self, study: Any) -> None:
        """Trials until the study is done; raises RuntimeError after too many consecutive failures."""
        # Optuna's own warning for a failed trial is a full traceback; our trial line says why.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self.recover(study)
        done = self.n_finished(study)
        remaining = max(0, self.settings.n_trials - done)
        if done:
            self.say(f"continuing study '{self.settings.study_name}': {done} finished trials, {remaining} to go")
        progress = self._progress(remaining)

        if remaining and self.out_of_time():
            self.say(f"search.time_budget={self.settings.time_budget:g}s was spent before the first trial "
                     "(preparation); no trial runs")
        elif remaining and not self.target_reached(study):
            try:
                if progress is not None:
                    progress[0].start()
                # No trial count here: the callback stops when the study (all workers) is done.
                study.optimize(lambda trial: self._guarded(study, trial), n_trials=None,
                               callbacks=[lambda s, t: self._after_trial(s, t, progress)], catch=(Exception,),
                               gc_after_trial=True)
            finally:
                if progress is not None:
                    progress[0].stop()
        if self.consecutive_failures >= self.settings.max_consecutive_failures:
            raise RuntimeError(
                f"stopped after {self.consecutive_failures} consecutive failed trials; last error: {self.last_error}"
            )

    # -- one trial -------------------------------------------------------------------------------
    def _guarded(self, study: Any, trial: Any) -> Sequence[float]:
        record_worker(trial)  # host, pid and start time: a later worker can tell if this one died
        # Trials numbered below this one (finished, or running elsewhere) that already make up
        # search.n_trials: two workers that started a trial at the same moment overshoot the target.
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        ahead = sum(1 for t in study.get_trials(deepcopy=False, states=states)
                    if t.number < trial.number and "repeat_of" not in t.user_attrs)
        if ahead >= self.settings.n_trials:
            trial.set_user_attr("surplus", True)
            trial.set_user_attr("fail_reason", f"not run: the {ahead} trials before it make up "
                                               f"search.n_trials={self.settings.n_trials}")
            raise RuntimeError(trial.user_attrs["fail_reason"])
        try:
            return self._trial(trial)
        except optuna.TrialPruned:
            raise
        except Exception as e:  # recorded on the trial, the study goes on
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}".splitlines()[0][:500])
            raise

    def _trial(self, trial: Any) -> Sequence[float]:
        """Sample a shape; a shape tried before gets its results again, else it is evaluated."""
        spec = self.propose(trial)
        for key, value in {**shape_attrs(spec), "spec": spec.to_dict()}.items():
            trial.set_user_attr(key, value)
        original = tried_before(trial.study, spec, exclude=trial.number, precision=trial.user_attrs.get("precision"))
        if original is not None:
            return repeat(trial, original)
        return self.evaluate(trial, spec)

    def _after_trial(self, study: Any, trial: Any, progress: Any) -> None:
        self.recover(study)
        if "repeat_of" in trial.user_attrs:
            self.consecutive_repeats += 1
            self.say(trial_line(trial, self.settings.objectives))
            if self.consecutive_repeats >= MAX_CONSECUTIVE_REPEATS:
                self.say(f"stopping: the last {self.consecutive_repeats} proposals were all shapes already "
                         f"tried ({self.n_finished(study)} distinct); the space looks exhausted")
                study.stop()
            elif self.target_reached(study):
                study.stop()
            return
        self.consecutive_repeats = 0
        if trial.user_attrs.get("surplus"):
            pass  # not run at all: neither a failure nor a success
        elif trial.state == TrialState.FAIL:
            self.consecutive_failures += 1
            self.last_error = trial.user_attrs.get("fail_reason") or trial.system_attrs.get("fail_reason")
        else:
            self.consecutive_failures = 0
        self.say(trial_line(trial, self.settings.objectives))
        if progress is not None:
            progress[0].advance(progress[1])
        self.after_each(study)
        if self.consecutive_failures >= self.settings.max_consecutive_failures:
            study.stop()
        elif self.target_reached(study):
            study.stop()
        elif self.out_of_time():
            self.say(f"stopping: search.time_budget={self.settings.time_budget:g}s is spent "
                     f"({self.n_finished(study)} finished trials); no new trial starts")
            study.stop()

    # -- workers ---------------------------------------------------------------------------------
    def recover(self, study: Any) -> None:
        """Fail and queue again the trials that dead workers left RUNNING (nas.study.storage)."""
        heartbeat = bool(self.settings.heartbeat_interval) and not is_journal(self.storage_url)
        for r in recover_stale_trials(study, heartbeat=heartbeat, grace_period=self.settings.grace_period,
                                      stale_timeout=self.settings.stale_timeout):
            then = f"its shape is queued again as trial {r.retry}" if r.retry is not None else r.why_not
            self.say(f"recovered trial {r.number}, left RUNNING: {r.reason}; marked FAIL, {then}")

    def target_reached(self, study: Any) -> bool:
        """True once the study holds search.n_trials counted trials. While trials running on other
        workers could still make up the target, wait for them (failing those whose worker dies)
        instead of starting one that would overshoot it."""
        said = False
        while True:
            done = self.n_finished(study)
            if done >= self.settings.n_trials:
                return True
            running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if done + running < self.settings.n_trials:
                return False
            if not said:
                self.say(f"waiting: {done} trials finished and {running} running on other workers make up "
                         f"search.n_trials={self.settings.n_trials}")
                said = True
            time.sleep(self.poll_seconds)
            self.recover(study)

    def _progress(self, total: int) -> Any:
        if self.console is None or total == 0:
            return None

        progress = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=self.console, transient=True)
        task = progress.add_task("trials", total=total)
        return progress, task


def tried_before(study: Any, spec: Any, *, exclude: int, precision: str | None = None) -> Any:
    """The first finished trial (complete or infeasible) that trained or timed this exact spec (at this
    precision, for a space with a precision axis), or None."""
    wanted = json.loads(json.dumps(spec.to_dict()))  # as the storage hands it back: lists, not tuples
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if (t.number != exclude and "repeat_of" not in t.user_attrs and t.user_attrs.get("spec") == wanted
                and t.user_attrs.get("precision") == precision):
            return t
    return None


def repeat(trial: Any, original: Any) -> Sequence[float]:
    """A shape already trained (the samplers propose repeats, NSGA-II often): its results again, at
    no cost. The sampler sees the true values; the budget does not count it."""
    trial.set_user_attr("repeat_of", original.number)
    for key, value in original.user_attrs.items():
        if key not in trial.user_attrs and not key.startswith("seconds_") and key != "final_loss":
            trial.set_user_attr(key, value)
    if original.state == TrialState.PRUNED:
        raise optuna.TrialPruned(f"repeat of trial {original.number}: {original.user_attrs.get('fail_reason')}")
    return list(original.values)
