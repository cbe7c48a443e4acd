"""Run a classifier with early exits in onnxruntime, one input at a time.

Shipped beside the model by nas.export (it needs only numpy and onnxruntime). The folder holds `exits.json` and
consecutive segment graphs: the first takes `input_ids` (1, tokens) and runs the embeddings and the first layers,
each next one takes the previous one's `hidden_out` as `hidden_in` and runs the next layers; every segment but the
last gives the `logits` of the exit after its last layer, the last one the model's own logits. The runner stops at
the first exit whose rule fires:

- confidence: the exit's top probability (softmax of its logits) is over the threshold (0: every input leaves at
  the first exit; 1: none leaves early);
- patience (PABEE): the prediction has stayed the same `patience` times in a row (patience + 1 exits agree).

    from exit_runner import ExitRunner
    runner = ExitRunner(FOLDER)                      # the rule exits.json names; threads=1
    logits, depth = runner(input_ids)                # depth: the member's layers the input went through

Inputs are real tokens only (batch 1, no padding); an attention mask, if given, drops the padded positions.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "nas-exits/1"
MANIFEST = "exits.json"


def top_probability(logits: np.ndarray) -> tuple[float, int]:
    """(top softmax probability, its label) of one row of logits, in float64 (as nas.quality.exits.probabilities).
    Plain Python on the few labels: with numpy's per-call overhead (11 us warm, more between other models' calls) the
    check cost seeds 0-2's members' exits 0.05-0.10 ms of ~0.9-1.1 ms per input (experiments/early_exit/pairing.py)."""
    x = np.asarray(logits).reshape(-1).tolist()
    top = max(x)
    return 1.0 / sum(math.exp(v - top) for v in x), x.index(top)


class ExitRule:
    """The runner's rule, one input at a time: `fires(logits)` after each exit in order; `reset()` before an input."""

    def __init__(self, kind: str, *, threshold: float | None = None, patience: int | None = None) -> None:
        if kind == "confidence":
            if threshold is None or isinstance(threshold, bool) or not 0 <= float(threshold) <= 1:
                raise ValueError(f"threshold={threshold!r} must be in [0, 1]")
        elif kind == "patience":
            if patience is None or isinstance(patience, bool) or int(patience) != patience or patience < 1:
                raise ValueError(f"patience={patience!r} must be an integer >= 1")
        else:
            raise ValueError(f"rule {kind!r} is not known; allowed: confidence, patience")
        self.kind, self.threshold, self.patience = kind, threshold, patience
        self.reset()

    def reset(self) -> None:
        self._previous: int | None = None
        self._count = 0

    def fires(self, logits: np.ndarray) -> bool:
        top, label = top_probability(logits)
        if self.kind == "confidence":
            return top > float(self.threshold)
        self._count = self._count + 1 if self._previous is not None and label == self._previous else 0
        self._previous = label
        return self._count >= int(self.patience)


class ExitRunner:
    """Segment by segment, stopping at the first exit whose rule fires. `threshold` / `patience` override the
    manifest's rule (a threshold sets the confidence rule, a patience the patience rule)."""

    def __init__(self, folder: str | Path, *, threads: int = 1, threshold: float | None = None,
                 patience: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / MANIFEST).read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{self.folder / MANIFEST} is not a {FORMAT} manifest")
        if threshold is not None and patience is not None:
            raise ValueError("give a threshold (confidence rule) or a patience (patience rule), not both")
        rule = dict(self.manifest["rule"])
        if threshold is not None:
            rule = {"kind": "confidence", "threshold": threshold}
        elif patience is not None:
            rule = {"kind": "patience", "patience": patience}
        self.rule = ExitRule(rule["kind"], threshold=rule.get("threshold"), patience=rule.get("patience"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        segments = self.manifest["segments"]
        self.sessions = [ort.InferenceSession(str(self.folder / s["file"]), opts, providers=list(providers))
                         for s in segments]
        self.depths = [int(s["depth"]) for s in segments]  # layers run at the end of each segment
        self.segments_run = 0  # of the last call

    @property
    def exits(self) -> list[int]:
        """Depths (layers run) of the exits, then the full depth."""
        return list(self.depths)

    @staticmethod
    def _ids(input_ids: Any, attention_mask: Any = None) -> np.ndarray:
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[0] != 1:
            raise ValueError(f"input_ids of shape {tuple(ids.shape)}: the runner takes one input at a time (batch 1)")
        if attention_mask is not None:
            mask = np.asarray(attention_mask).reshape(-1).astype(bool)
            ids = ids[:, mask]
        return ids

    def __call__(self, input_ids: Any, attention_mask: Any = None) -> tuple[np.ndarray, int]:
        """(logits (1, labels), depth: the member's layers this input went through)."""
        feed = {"input_ids": self._ids(input_ids, attention_mask)}
        self.rule.reset()
        last = len(self.sessions) - 1
        for i, session in enumerate(self.sessions):
            outputs = session.run(None, feed)
            self.segments_run = i + 1
            if i == last:
                return outputs[0], self.depths[i]
            hidden, logits = outputs
            if self.rule.fires(logits):
                return logits, self.depths[i]
            feed = {"hidden_in": hidden}
        raise AssertionError("unreachable")

    def all_logits(self, input_ids: Any, attention_mask: Any = None,
                   seconds: list[float] | None = None) -> list[np.ndarray]:
        """Every exit's logits, then the model's own (no early exit); `seconds`: each segment's wall time is
        appended to it."""
        feed = {"input_ids": self._ids(input_ids, attention_mask)}
        out = []
        last = len(self.sessions) - 1
        for i, session in enumerate(self.sessions):
            t0 = time.perf_counter()
            outputs = session.run(None, feed)
            if seconds is not None:
                seconds.append(time.perf_counter() - t0)
            if i == last:
                out.append(outputs[0])
            else:
                out.append(outputs[1])
                feed = {"hidden_in": outputs[0]}
        self.segments_run = len(self.sessions)
        return out
