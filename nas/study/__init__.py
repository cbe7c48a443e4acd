"""The study. Takes the composed config; gives the Optuna study and its reports. Pieces, in run
order: preflight checks (nas.study.preflight), the search space (space), the prepared base (prepare),
one trial (trial), the loop (loop), the final stage and test evaluation (final), the run's weights
(weights), storage and dead-worker recovery (storage), reports (report, console), a finished run
folder (runs); nas.study.search wires them into one run."""
