"""A training run's logs: the JSONL file (one line per optimizer step, one per evaluation) and,
optionally, TensorBoard event files beside it with the same numbers.

JSONL lines: ``{"step", "epoch", "lr", "seconds", "tokens", <loss term>: float, ..., "total"}`` per
step and ``{"step", "event": "eval", "split", "mAP", "NDS", "per_class_ap", "tp_errors",
"band_ap"}`` per evaluation. A resumed run keeps the lines of steps ``<= step`` and rewrites the
rest (TensorBoard: ``purge_step``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from storage.nuscenes_eval import DetectionMetrics

#: how to install the optional TensorBoard writer (the ``tensorboard`` extra; numpy<2 compatible).
TENSORBOARD_INSTALL = "pip install 'bevkd[tensorboard]' (tensorboard==2.21.0)"


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (needed by ``torch.utils.tensorboard``) is importable."""
    return importlib.util.find_spec("tensorboard") is not None


class RunLog:
    """Appends step and evaluation records to ``path`` (and TensorBoard under ``tensorboard_dir``).

    Args:
        path: the JSONL log; lines of steps after ``step`` are dropped first (resume).
        step: the run's current step (0 for a new run).
        tensorboard_dir: event-file folder, or None for JSONL only.

    Raises:
        ModuleNotFoundError: ``tensorboard_dir`` given but the ``tensorboard`` package is not
            installed (the message says what to install).
    """

    def __init__(self, path: Path, step: int, tensorboard_dir: Path | None = None) -> None:
        self.path = path
        self.tb: Any = None
        if tensorboard_dir is not None:
            if not tensorboard_available():
                raise ModuleNotFoundError(f"TensorBoard logging needs the tensorboard package: {TENSORBOARD_INSTALL}")
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(tensorboard_dir), purge_step=step + 1 if step else None)
        truncate_log(path, step)
        self._file = path.open("a")

    def step(self, record: dict[str, Any]) -> None:
        """One optimizer step: ``step``, ``epoch``, ``lr``, ``seconds``, ``tokens`` and the loss terms."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.tb is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key not in ("step", "epoch", "tokens") and isinstance(value, int | float):
                    self.tb.add_scalar(key if key in ("lr", "seconds") else f"loss/{key}", value, step)

    def evaluation(self, step: int, split: str, metrics: DetectionMetrics) -> None:
        """The devkit metrics of the model after ``step`` steps on ``split``."""
        record = {"step": step, "event": "eval", "split": split, "mAP": metrics.mAP, "NDS": metrics.NDS,
                  "per_class_ap": metrics.per_class_ap, "tp_errors": metrics.tp_errors, "band_ap": metrics.band_ap}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.tb is not None:
            self.tb.add_scalar("eval/mAP", metrics.mAP, step)
            self.tb.add_scalar("eval/NDS", metrics.NDS, step)
            for group in ("per_class_ap", "tp_errors", "band_ap"):
                for name, value in getattr(metrics, group).items():
                    self.tb.add_scalar(f"eval/{group}/{name}", value, step)
            self.tb.flush()

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()


def truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps ``<= step`` (a resumed run rewrites what follows)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


__all__ = ["TENSORBOARD_INSTALL", "RunLog", "tensorboard_available", "truncate_log"]
