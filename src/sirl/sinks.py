"""Where a run's logged numbers go besides ``metrics.jsonl``: TensorBoard, Weights & Biases, Trackio.

``metrics.jsonl`` is the record: ``sirl compare`` and the run report read it, whatever the sinks. Each
logged step's finite numbers are mirrored to every sink that ``train.report_to`` names:

    tensorboard   event files in the run folder's tb/ (the default)
    wandb         a Weights & Biases run (``pip install 'sirl[wandb]'``; ``WANDB_MODE=offline`` keeps it on
                  disk, under the run folder's wandb/), the resolved config as its config
    trackio       a Trackio run (``pip install 'sirl[trackio]'``), stored where Trackio keeps its projects
                  (``TRACKIO_DIR``, by default ~/.cache/huggingface/trackio)

``[]`` or ``none`` logs to ``metrics.jsonl`` alone. A resumed run continues its sinks: TensorBoard's event
files lose the steps after the checkpoint (they are logged again), the wandb run of the same id is resumed
(its id is kept in the run folder's ``sinks.json``) and keeps the values it received first for steps that
are logged again, as does Trackio's run of the same name. sirl's resume is exact, so these are the same
numbers; only times differ.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

NONE = "none"
SINKS_FILE = "sinks.json"
"""What a run folder keeps of its sinks to continue them on resume (the wandb run id)."""


class Sink(Protocol):
    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def finite_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics record that a sink can plot: finite ints and floats, never bools."""
    return {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class TensorBoardSink:
    def __init__(self, run_dir: Path, resume_step: int | None, **_):
        from torch.utils.tensorboard import SummaryWriter  # imported here: it is slow to import

        from sirl.runlog import truncate_tensorboard

        # The earlier process's events after the checkpoint are removed; purge_step also tells readers
        # that honour it, should a file have been missed (one being written by a process not yet dead).
        purge = None
        if resume_step is not None:
            truncate_tensorboard(run_dir / "tb", resume_step)
            purge = resume_step + 1
        self._writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _needs(package: str, sink: str):
    """Import ``package`` for ``sink``, or say which extra brings it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"train.report_to names {sink}, which needs the {package} package: pip install 'sirl[{sink}]' "
                                  f"(or drop {sink} from train.report_to)") from None


def _state(run_dir: Path) -> dict:
    path = run_dir / SINKS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_state(run_dir: Path, state: dict) -> None:
    (run_dir / SINKS_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


class WandbSink:
    def __init__(self, run_dir: Path, resume_step: int | None, *, name: str, project: str, config: dict, **_):
        wandb = _needs("wandb", "wandb")
        state = _state(run_dir)
        run_id = state.get("wandb_id") if resume_step is not None else None
        if run_id is None:
            run_id = secrets.token_hex(4)  # wandb's ids: 8 characters of [a-z0-9]
            _save_state(run_dir, {**state, "wandb_id": run_id})
        self._run = wandb.init(project=project, name=name, id=run_id, resume="allow", dir=str(run_dir), config=config)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._run.log(scalars, step=step)

    def close(self) -> None:
        self._run.finish()


class TrackioSink:
    def __init__(self, run_dir: Path, resume_step: int | None, *, name: str, project: str, config: dict, **_):
        trackio = _needs("trackio", "trackio")
        self._trackio = trackio
        self._run = trackio.init(project=project, name=name, config=config, resume="allow" if resume_step is not None else "never",
                                 auto_log_gpu=False, auto_log_cpu=False, embed=False)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._run.log(scalars, step=step)

    def close(self) -> None:
        self._run.finish()


SINKS: dict[str, Callable[..., Sink]] = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "trackio": TrackioSink}


def sink_names(report_to: str | list[str]) -> list[str]:
    """``train.report_to`` as a list of sink names: a name or a list of them; ``none`` or ``[]`` for none."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if NONE in names:
        if len(names) > 1:
            raise ValueError(f"train.report_to={report_to!r}: 'none' cannot go with other sinks")
        return []
    unknown = [n for n in names if n not in SINKS]
    if unknown:
        raise ValueError(f"train.report_to names {unknown}, which are not sinks; valid: {sorted(SINKS)} or 'none'")
    return list(dict.fromkeys(names))


def open_sinks(report_to: str | list[str], run_dir: Path, *, name: str, project: str, config: dict,
               resume_step: int | None = None) -> list[Sink]:
    """The sinks ``report_to`` names, opened for ``run_dir`` (each closed again if a later one fails)."""
    opened: list[Sink] = []
    try:
        for sink in sink_names(report_to):
            opened.append(SINKS[sink](run_dir, resume_step, name=name, project=project, config=config))
    except BaseException:
        for sink in opened:
            sink.close()
        raise
    return opened
