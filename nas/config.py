"""Composing the Hydra config outside `@hydra.main` (benchmarks, tests, notebooks, and the commands'
own checks before Hydra runs them), and Hydra's composition errors said in one line."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: Sequence[str] = (), *, config_name: str = "config") -> Any:
    """The same config `python -m nas.search` would see with these overrides (no run dir)."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def compose_or_refuse(overrides: Sequence[str], *, config_name: str) -> Any:
    """compose(), with a bad override refused as a one-line ValueError naming it and the reason
    (Hydra's own message for a wrong type or an unknown key spans several lines)."""
    try:
        return compose(overrides, config_name=config_name)
    except (HydraException, OmegaConfBaseException) as e:
        raise ValueError(one_line(e, overrides)) from None


def one_line(error: BaseException, overrides: Sequence[str]) -> str:
    """`key=value: reason` from a Hydra / OmegaConf composition error."""
    reason = str(error.__cause__ or error).strip().splitlines()[0]
    text = str(error) + " " + str(error.__cause__ or "")
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", text):
            shown = value if re.fullmatch(r"-?[\d.eE+-]+|true|false|null", value) else repr(value)
            if "not in" in reason:
                return f"{key}={shown} is not a setting ({reason})"
            return f"{key}={shown}: {reason}"
    return reason
