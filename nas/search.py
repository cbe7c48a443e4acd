"""`python -m nas.search +space=NAME`: the Optuna search over pruned shapes.

Each trial: sample a SubnetSpec from the space -> prune the fine-tuned base with the cached
importance scores -> time it in alternating rounds with the base on the task's own inputs
(nas.cost.latency; infeasible shapes stop here) -> fine-tune briefly with Lightning, distilling from
the unpruned base -> validation accuracy -> params / FLOPs / size. Reports in the run folder are
refreshed after every trial; after the trials the final stage trains the chosen front members
longer, and every Pareto member is evaluated on the held-out test split (nas.study.search).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from rich.console import Console
from rich.markup import escape

from nas.config import CONF_DIR, refuse_bad_overrides
from nas.redact import protect_run
from nas.study.console import dashboard_url, front_table
from nas.study.preflight import cli_prelude
from nas.study.report import quality_column
from nas.study.search import run_search
from nas.study.space import available_spaces
from nas.study.storage import storage_url


def main() -> None:
    real_storage = cli_prelude(sys.argv)  # a password on the command line never reaches Hydra's files
    # Hydra's own message for an unknown group option spans several lines: say it in one.
    # With hydra.searchpath the user's own folders may hold further spaces: Hydra checks those.
    own_folders = any(arg.partition("=")[0].lstrip("+~") == "hydra.searchpath" for arg in sys.argv[1:])
    for arg in sys.argv[1:]:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") == "space" and value and not own_folders and value not in available_spaces():
            print(f"error: space={value!r} is not known; available spaces: {', '.join(available_spaces())}",
                  file=sys.stderr)
            sys.exit(2)
    refuse_bad_overrides(sys.argv)  # a wrong key or type: one line, before Hydra says it in ten

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def search(cfg: Any) -> None:
        console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 170)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        protect_run(cfg, run_dir, real_storage)
        logging.getLogger("nas").setLevel(logging.INFO)
        t0 = time.perf_counter()
        try:
            study, run = run_search(cfg, run_dir, console=console)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
            sys.exit(2)
        out = run.write(study)
        front_table(out["front"], console, quality=quality_column(run.settings.objectives))
        console.print(f"latency: {run.timer.settings.describe()}; base {run.base_metrics['latency_ms']:.2f} "
                      f"{run.timer.settings.unit} (median of its {len(run.timer.base_rounds)} rounds)", highlight=False)
        phases = ", ".join(f"{k} {v:.0f}s" for k, v in run.clock.seconds.items())
        console.print(f"time per phase: {phases}; total {time.perf_counter() - t0:.0f}s", highlight=False)
        console.print(f"run folder: {run_dir}\n  best.yaml, pareto.csv, pareto.png, pareto.html, trials.csv\n"
                      f"  inspect: optuna-dashboard {dashboard_url(storage_url(run.settings, run_dir))}",
                      highlight=False)

    search()


if __name__ == "__main__":
    main()
