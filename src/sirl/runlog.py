"""The run folder: resolved config, metrics as JSON lines, and the sinks of train.report_to (sirl.sinks)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sirl.config import ExperimentConfig, to_dict, to_yaml
from sirl.schema import ELAPSED_S, REWARDS, STEP, TOKENS_TOTAL, TOKENS_TRAINED
from sirl.sinks import finite_scalars, open_sinks


EVALS_FILE = "evals.jsonl"
"""Every held-out evaluation of a training run with its per-problem rewards (RunLog.log_evaluation)."""


def default_run_dir(command: str, config: ExperimentConfig) -> Path:
    name = config.name or f"{command}-{config.task.name.replace(':', '_').replace('/', '_')}"
    return Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file beside it, renamed into place: a reader (or a
    process killed while writing) sees the previous file or the new one whole, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the records of ``path`` up to step ``last_step`` (a resumed run rewrites what came after its
    checkpoint). The file is replaced atomically; a torn last line (the process was killed mid-write)
    goes with the rest."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def truncate_tensorboard(tb_dir: Path, last_step: int) -> None:
    """Drop the TensorBoard events of steps after ``last_step`` from the event files in ``tb_dir``, which
    a resumed run then writes again. ``SummaryWriter(purge_step=...)`` alone only appends a marker that
    some readers honour (TensorBoard's Python loader) and others do not (its fast data server, tbparse,
    a plain record reader), which then show those steps twice. Each file is rewritten beside the folder
    and renamed into place; a torn last record (the process was killed mid-write) goes with the rest."""
    if not tb_dir.is_dir():
        return
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    for path in sorted(tb_dir.glob("*tfevents*")):
        records = list(RawEventFileLoader(str(path)).Load())
        kept = [r for r in records if (event := event_pb2.Event.FromString(r)).step <= last_step or event.HasField("file_version")]
        if len(kept) == len(records) and path.stat().st_size == sum(len(r) + 16 for r in records):
            continue  # nothing to drop, nothing torn (a record is its bytes plus 16 bytes of length and checksums)
        tmp = tb_dir.with_name(f".{tb_dir.name}-{path.name}.tmp")  # outside tb/: a reader never sees it half written
        with tmp.open("wb") as handle:
            writer = RecordWriter(handle)
            for record in kept:
                writer.write(record)
            writer.flush()
        tmp.replace(path)


class RunLog:
    """Appends one JSON object per logged step to ``metrics.jsonl`` and mirrors its numbers to the sinks of
    ``train.report_to`` (TensorBoard by default; sirl.sinks).

    ``resume_step`` continues an existing run folder after its checkpoint of that step: records of later
    steps (logged before the run stopped) are dropped from metrics.jsonl, samples.jsonl, evals.jsonl and the TensorBoard
    event files, so every reader sees each step once,
    the clock continues from ``elapsed_s``, and config.yaml is rewritten only when ``write_config``."""

    def __init__(
        self, run_dir: Path, config: ExperimentConfig, *,
        resume_step: int | None = None, elapsed_s: float = 0.0, write_config: bool = True,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if write_config:
            (self.run_dir / "config.yaml").write_text(to_yaml(config))
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resume_step is not None:
            truncate_jsonl(self.metrics_path, resume_step)
            truncate_jsonl(self.run_dir / "samples.jsonl", resume_step)
            truncate_jsonl(self.run_dir / EVALS_FILE, resume_step)
        self._sinks = open_sinks(config.train.report_to, self.run_dir, name=config.name or self.run_dir.name,
                                 project=config.train.report_project, config=to_dict(config), resume_step=resume_step)
        self._file = self.metrics_path.open("a")
        self.start_time = time.time() - elapsed_s

    def log(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        record = {STEP: step, ELAPSED_S: round(time.time() - self.start_time, 3), **metrics}
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        scalars = finite_scalars(record)
        for sink in self._sinks:
            sink.log(step, scalars)
        return record

    def log_evaluation(self, step: int, tokens: int, trained_tokens: int, rewards: list[float]) -> None:
        """One held-out evaluation in ``evals.jsonl``: its step, the generated and trained tokens so far,
        and the reward of every held-out problem (in the held-out set's order, the same for every run with
        the same eval.seed), so that a comparison can average the last few evaluations problem by problem
        and pair runs on the same problems."""
        record = {STEP: step, TOKENS_TOTAL: tokens, TOKENS_TRAINED: trained_tokens, REWARDS: rewards}
        with (self.run_dir / EVALS_FILE).open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def write_json(self, name: str, data: Any) -> Path:
        """``name`` in the run folder, written whole or not at all (write_atomic): readers take eval.json as
        the mark of a finished run."""
        return write_atomic(self.run_dir / name, json.dumps(data, indent=2) + "\n")

    def close(self) -> None:
        self._file.close()
        for sink in self._sinks:
            sink.close()
