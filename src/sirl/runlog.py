"""The run folder: resolved config, metrics as JSON lines, TensorBoard events."""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sirl.config import ExperimentConfig, to_yaml


def default_run_dir(command: str, config: ExperimentConfig) -> Path:
    name = config.name or f"{command}-{config.task.name.replace(':', '_').replace('/', '_')}"
    return Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class RunLog:
    """Appends one JSON object per logged step to ``metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, config: ExperimentConfig, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(to_yaml(config))
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._file = self.metrics_path.open("a")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported here: it is slow to import

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"))
        self.start_time = time.time()

    def log(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        record = {"step": step, "time/elapsed_s": round(time.time() - self.start_time, 3), **metrics}
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()
        return record

    def write_json(self, name: str, data: Any) -> Path:
        path = self.run_dir / name
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()
