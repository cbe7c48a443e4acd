"""The weights a run keeps on disk: each front member's trial weights, and the final stage's.

`models/trial_N.safetensors` is written when trial N finishes and deleted once N falls off the
front; `models/final_N.safetensors` holds the final stage's weights of member N. A model is
rebuilt by cutting the base to the trial's spec and loading the file over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import TrialState
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from nas.cut.prune import prune_model
from nas.spec import SubnetSpec


def load_weights(model: Any, path: str | Path) -> Any:
    """Load a saved model file over `model` (the base cut to the same spec). Biases the file has and the cut lacks
    (closed-form healing, nas.cut.heal, gives output projections one) are added first, as zeros."""
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    modules = dict(model.named_modules())
    for key in keys:
        owner, _, leaf = key.rpartition(".")
        linear = modules.get(owner)
        if leaf == "bias" and isinstance(linear, nn.Linear) and linear.bias is None:
            linear.bias = nn.Parameter(linear.weight.new_zeros(linear.out_features))
    load_model(model, str(path))  # a tied matrix was stored once
    return model


def trial_path(run_dir: Path, number: int) -> Path:
    """Where trial `number`'s own weights are kept (while it is on the front)."""
    return run_dir / "models" / f"trial_{number}.safetensors"


def final_path(run_dir: Path, number: int) -> Path:
    """Where the final stage keeps member `number`'s weights."""
    return run_dir / "models" / f"final_{number}.safetensors"


@dataclass(frozen=True)
class RunWeights:
    run_dir: Path
    base: Any  # the fine-tuned base the trials were cut from
    scores: Any  # its importance scores (which units each cut keeps)

    def trial_path(self, number: int) -> Path:
        return trial_path(self.run_dir, number)

    def final_path(self, number: int) -> Path:
        return final_path(self.run_dir, number)

    def rung_path(self, number: int) -> Path:
        """A halving survivor's weights at the end of its last rung (a killed run resumes from them)."""
        return self.run_dir / "models" / f"rung_{number}.safetensors"

    def save(self, model: Any, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_model(model, str(tmp))  # stores a tied matrix (a decoder's embeddings and lm_head) once
        tmp.replace(path)

    def load(self, trial: Any) -> Any:
        """Rebuild a trial's fine-tuned model: prune the base to its spec, load its weights."""
        spec = SubnetSpec.from_dict(trial.user_attrs["spec"])
        model = prune_model(self.base, spec, self.scores)
        return load_weights(model, self.trial_path(trial.number)).eval()

    def drop_partial(self) -> None:
        """What a killed worker left: its half-written model files."""
        for partial in (self.run_dir / "models").glob("*.tmp"):
            partial.unlink(missing_ok=True)

    def drop_dominated(self, study: Any) -> None:
        """Keep weights only for the current front (the export step needs those)."""
        keep = {t.number for t in study.best_trials}
        # Only trials that are finished and off the front lose their weights: another worker's
        # trial may have saved its model and not yet reported its values.
        finished = {t.number for t in study.get_trials(deepcopy=False)
                    if t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)}
        folder = self.run_dir / "models"
        if not folder.is_dir():
            return
        for path in folder.glob("trial_*.safetensors"):
            number = int(path.stem.split("_")[1])
            if number in finished and number not in keep:
                path.unlink(missing_ok=True)
