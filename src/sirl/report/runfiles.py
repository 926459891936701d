"""Reading a run folder written by ``sirl train``: config.yaml, metrics.jsonl, samples.jsonl, eval.json,
isolation.json. Only the files are read, never training code, so a report can be made of any run folder,
finished or not, on a machine without the model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sirl.schema import STEP


class ReportError(ValueError):
    """A run folder the report cannot be made from; the message names the file and what to do."""


RECORD_KINDS = ("sample", "correction", "branch", "probe")
"""What a samples.jsonl record is: a sampled response to a prompt, a corrected continuation of a failure's
good prefix, a continuation of a repair-buffer prefix, or a probe continuation, in the order the viewer
lists them. Records written before ``kind`` existed are samples."""


@dataclass(frozen=True)
class Sample:
    """One trajectory of samples.jsonl. Step indices (``localized_step``, ``first_error``) are 0-based, as
    the logs write them; ``self_verdict`` is the policy's own answer as it wrote it (a 1-based step number
    or ``none`` when it is a verdict at all). ``token_advantages[i]`` is None for a token that was not
    trained on (the first ``prefix_len`` tokens were given, not sampled); older logs wrote a number there
    too, which the report ignores for given tokens."""

    step: int
    prompt: str
    steps: list[str]
    reward: float
    truncated: bool
    prefix_len: int
    tokens: list[str]
    token_advantages: list[float | None]
    kind: str = "sample"
    """One of RECORD_KINDS (another name is kept and shown as it is)."""
    localized: bool = False
    """The localizer ran on it; the fields below come with it."""
    localized_step: int | None = None
    probes: int | None = None
    correction: str | None = None
    self_verdict: str | None = None
    first_error: int | None = None
    """The task's ground-truth first wrong step (None: none known, or the task has no ground truth)."""
    has_ground_truth: bool = False
    prompt_text: str | None = None
    """The exact text the model saw (chat template, worked examples), where the log has it."""

    @property
    def success(self) -> bool:
        return self.reward >= 1

    @property
    def text(self) -> str:
        return "".join(self.steps)

    def advantage(self, index: int) -> float | None:
        """The advantage token ``index`` was trained with; None for a given token or one without a value."""
        if index < self.prefix_len or index >= len(self.token_advantages):
            return None
        return self.token_advantages[index]


@dataclass(frozen=True)
class Run:
    """Everything a report shows, as read from the folder."""

    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    samples: list[Sample]
    final_eval: dict[str, Any] | None
    """eval.json; None while the run has not finished."""
    isolation: dict[str, Any] | None

    @property
    def name(self) -> str:
        return self.config.get("name") or self.path.resolve().name

    def section(self, name: str) -> dict[str, Any]:
        value = self.config.get(name)
        return value if isinstance(value, dict) else {}


def load_run(run_dir: Path) -> Run:
    """Read a run folder; a missing folder or metrics.jsonl, or a malformed line, is a :class:`ReportError`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such folder; give the folder of a run started by `sirl train` (its --out)")
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise ReportError(
            f"{run_dir} has no metrics.jsonl, so it is not a `sirl train` run folder (or the run has not logged its "
            f"first step yet); give the folder that `sirl train --out` wrote"
        )
    return Run(
        path=run_dir,
        config=_read_yaml(run_dir / "config.yaml"),
        metrics=[_check_metrics(record, metrics_path, line) for line, record in _read_jsonl(metrics_path)],
        samples=[_sample(record, run_dir / "samples.jsonl", line) for line, record in _read_jsonl(run_dir / "samples.jsonl")],
        final_eval=_read_json(run_dir / "eval.json"),
        isolation=_read_json(run_dir / "isolation.json"),
    )


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line; NaN and Infinity parse (metrics are written with
    ``allow_nan``). A last line without its newline that does not parse is a record still being written by
    a running training process: it is left out, so a run can be reported while it trains."""
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines) and not text.endswith("\n"):
                break
            raise ReportError(f"{path}, line {number}: not JSON ({error.msg}); fix or delete that line") from None
        if not isinstance(record, dict):
            raise ReportError(f"{path}, line {number}: expected a JSON object, found {type(record).__name__}")
        records.append((number, record))
    return records


def _check_metrics(record: dict[str, Any], path: Path, line: int) -> dict[str, Any]:
    if not isinstance(record.get(STEP), int):
        raise ReportError(f"{path}, line {line}: no integer '{STEP}'; every metrics record has one")
    return record


def _sample(record: dict[str, Any], path: Path, line: int) -> Sample:
    try:
        verdict = record.get("self_verdict")
        return Sample(
            step=int(record["step"]),
            prompt=str(record["prompt"]),
            steps=[str(s) for s in record["steps"]],
            reward=float(record["reward"]),
            truncated=bool(record.get("truncated", False)),
            prefix_len=int(record.get("prefix_len", 0)),
            tokens=[str(t) for t in record.get("tokens", [])],
            token_advantages=[None if a is None else float(a) for a in record.get("token_advantages", [])],
            kind=str(record.get("kind") or "sample"),  # a kind not in RECORD_KINDS is shown under its own name
            localized="localized_step" in record,
            localized_step=_optional_int(record.get("localized_step")),
            probes=_optional_int(record.get("probes")),
            correction=None if record.get("correction") is None else str(record["correction"]),
            self_verdict=None if verdict is None else str(verdict),
            first_error=_optional_int(record.get("first_error")),
            has_ground_truth="first_error" in record,
            prompt_text=None if record.get("prompt_text") is None else str(record["prompt_text"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ReportError(f"{path}, line {line}: not a trajectory record ({type(error).__name__}: {error})") from None


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer or null, found {value!r}")
    return value


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not JSON ({error.msg}, line {error.lineno})") from None
    return data if isinstance(data, dict) else None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ReportError(f"{path}: not YAML ({error})") from None
    return data if isinstance(data, dict) else {}
