"""The records of a comparison's summary: what results.json holds, typed. ``to_json()`` writes the shape that
results.json has always had (committed folders and benchmarks/ read it), ``from_json`` reads one back, those of
earlier versions too (a figure they did not record reads as None). sirl.compare.summary computes them from a
comparison folder; sirl.compare.render turns them into results.md and plots.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sirl.compare.plan import ComparePlan, load_plan
from sirl.compare.stats import MeanStd, PairedDifference, Reach
from sirl.schema import STEP, TOKENS_TOTAL
from sirl.tasks.base import level_from_key

Level = int | float | str
"""A difficulty level (sirl.tasks.base.difficulty_order); text where it is a JSON object's key."""


def to_json(record: Any) -> Any:
    """A record as results.json holds it: dataclasses as objects in field order (records with their own
    ``to_json`` as it says), the rest as is."""
    if hasattr(record, "to_json"):
        return record.to_json()
    if isinstance(record, (list, tuple)):
        return [to_json(v) for v in record]
    if isinstance(record, dict):
        return {k: to_json(v) for k, v in record.items()}
    if hasattr(record, "__dataclass_fields__"):
        return {name: to_json(getattr(record, name)) for name in record.__dataclass_fields__}
    return record


def _mean_std(data: dict[str, Any] | None) -> MeanStd | None:
    return None if data is None else MeanStd(data["mean"], data["std"], data["values"])


def _paired(data: dict[str, Any] | None) -> PairedDifference | None:
    return None if data is None else PairedDifference(**data)


@dataclass(frozen=True)
class LevelAccuracy:
    """One difficulty level of an evaluation: its problem count and accuracy."""

    n: int
    accuracy: float


@dataclass(frozen=True)
class EvalPoint:
    step: int
    tokens: int
    """Generated tokens at the evaluation."""


@dataclass(frozen=True)
class FinalFigure:
    """A finished run's final figure: ``accuracy``, the mean of ``rewards`` (per held-out problem, averaged
    over the ``evaluations`` used)."""

    accuracy: float
    rewards: list[float]
    evaluations: list[EvalPoint]


@dataclass(frozen=True)
class Curve:
    """Accuracy on the generated-token grid: the mean over seeds and its sample standard deviation."""

    tokens: list[float]
    mean: list[float]
    std: list[float]


@dataclass(frozen=True)
class ProbesCurve:
    """Probes per localized failure, averaged within each interval of the grid (``tokens``: the midpoints),
    then over seeds; None where no seed localized a failure."""

    tokens: list[float]
    mean: list[float | None]


@dataclass(frozen=True)
class Timing:
    wall_clock_s: MeanStd
    eval_points: list[list[tuple[float, float]]]
    """Per seed, (elapsed seconds, accuracy) of each periodic evaluation."""


@dataclass(frozen=True)
class LearningRateChoice:
    """The learning rate a method's table runs use: the best final figure of one run per rate on ``seed``."""

    lr: float
    accuracy_by_lr: dict[str, float]
    seed: int


@dataclass(frozen=True)
class MethodSettings:
    """What a method's runs ran with, as dotted keys that differ from sirl's defaults: ``shared`` by all its
    runs, ``by_seed`` (key -> seed -> value) where they differ."""

    shared: dict[str, Any]
    by_seed: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class VersusReference:
    """A method measured against the comparison's reference method."""

    tokens_to_reach: Reach | None
    difference: PairedDifference | None = None
    """Final accuracy minus the reference's; None for the reference itself or without a common seed with
    per-problem rewards."""
    band_differences: dict[str, PairedDifference | None] | None = None
    """The same on each difficulty band's problems; None without per-problem levels."""


@dataclass(frozen=True)
class MethodSummary:
    """One method's row: its finished runs of the table (``seeds``) summarized over seeds."""

    seeds: list[int]
    final_accuracy: MeanStd
    final_evaluations: int | None
    last_evaluation_accuracy: MeanStd | None
    final_n: int
    steps: MeanStd
    tokens: MeanStd
    tokens_per_step: MeanStd
    trained_tokens: MeanStd | None
    max_step_tokens: int
    probe_share: MeanStd
    verify_share: MeanStd
    localization_accuracy: MeanStd
    probes_per_failure: MeanStd
    selfloc_accuracy: MeanStd
    method_state_mb: MeanStd | None
    """Model state the method holds besides the policy and its optimizer (PRIME's reward model and reference)."""
    settings: MethodSettings | None
    by_difficulty: dict[Level, MeanStd]
    curve: Curve
    probes_curve: ProbesCurve | None
    timing: Timing
    hard_levels_accuracy: MeanStd | None = None
    """Pooled over the hard band's levels (None: the comparison has no bands)."""
    other_levels_accuracy: MeanStd | None = None
    versus: VersusReference | None = None
    """None when the reference has no finished run."""
    learning_rate: LearningRateChoice | None = None
    """None without learning_rates."""

    def to_json(self, is_reference: bool = False, banded: bool = False) -> dict[str, Any]:
        """The row as results.json holds it: the band accuracies where the comparison has bands, the
        differences from the reference where this is not the reference (by band where there are bands)."""
        data = {name: to_json(getattr(self, name)) for name in self.__dataclass_fields__
                if name not in ("hard_levels_accuracy", "other_levels_accuracy", "versus", "learning_rate")}
        if self.hard_levels_accuracy is not None:
            data["hard_levels_accuracy"] = to_json(self.hard_levels_accuracy)
            data["other_levels_accuracy"] = to_json(self.other_levels_accuracy)
        if self.versus is not None:
            if not is_reference:
                data["difference_from_reference"] = to_json(self.versus.difference)
                if banded:
                    data["band_difference_from_reference"] = to_json(self.versus.band_differences)
            data["tokens_to_reference"] = to_json(self.versus.tokens_to_reach)
        if self.learning_rate is not None:
            data["learning_rate"] = to_json(self.learning_rate)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MethodSummary:
        optional = {name: _mean_std(data.get(name)) for name in
                    ("last_evaluation_accuracy", "trained_tokens", "method_state_mb", "hard_levels_accuracy", "other_levels_accuracy")}
        bands = data.get("band_difference_from_reference")
        versus = None
        if any(k in data for k in ("difference_from_reference", "band_difference_from_reference", "tokens_to_reference")):
            reach = data.get("tokens_to_reference")
            versus = VersusReference(Reach(**reach) if reach else None, _paired(data.get("difference_from_reference")),
                                     None if bands is None else {band: _paired(d) for band, d in bands.items()})
        timing = data["timing"]
        return cls(
            **{name: MeanStd(**data[name]) for name in ("final_accuracy", "steps", "tokens", "tokens_per_step", "probe_share", "verify_share",
                                                       "localization_accuracy", "probes_per_failure", "selfloc_accuracy")},
            **optional,
            seeds=data["seeds"], final_evaluations=data.get("final_evaluations"), final_n=data["final_n"],
            max_step_tokens=data["max_step_tokens"],
            settings=MethodSettings(**data["settings"]) if data.get("settings") else None,
            by_difficulty={level_from_key(str(k)): MeanStd(**v) for k, v in data["by_difficulty"].items()},
            curve=Curve(**data["curve"]),
            probes_curve=ProbesCurve(**data["probes_curve"]) if data.get("probes_curve") else None,
            timing=Timing(MeanStd(**timing["wall_clock_s"]), [[tuple(p) for p in points] for points in timing["eval_points"]]),
            versus=versus,
            learning_rate=LearningRateChoice(**data["learning_rate"]) if data.get("learning_rate") else None,
        )


@dataclass(frozen=True)
class StartEvaluation:
    """The starting policy on the final evaluation set (start/eval.json)."""

    accuracy: float
    n: int
    by_difficulty: dict[str, LevelAccuracy]
    """By level, as eval.json's keys spell it."""
    difficulties: list[Level | None] | None = None
    """Each final problem's level (not in results.json); None in an evaluation written before they were kept."""

    def to_json(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "n": self.n, "by_difficulty": to_json(self.by_difficulty)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StartEvaluation:
        levels = {str(k): LevelAccuracy(v["n"], v["accuracy"]) for k, v in data["by_difficulty"].items()}
        return cls(data["accuracy"], data["n"], levels, data.get("difficulties"))

    def pooled(self, levels: list[Level]) -> float:
        """Accuracy over ``levels``, each weighted by its problem count."""
        chosen = [self.by_difficulty[str(level)] for level in levels]
        return sum(c.n * c.accuracy for c in chosen) / sum(c.n for c in chosen)


@dataclass(frozen=True)
class DifficultyBands:
    """The levels where the starting policy's final-set accuracy is below the plan's ``hard_below`` (hard) and
    the rest, each in difficulty order."""

    hard: list[Level]
    other: list[Level]

    def members(self) -> dict[str, list[Level]]:
        return {"hard": self.hard, "other": self.other}


@dataclass(frozen=True)
class ReferenceFigure:
    method: str
    final_accuracy: float | None


@dataclass(frozen=True)
class EvalSets:
    """Sizes of the periodic evaluation set (the curves) and of the final one (the tables)."""

    periodic_n: int | None
    final_n: int | None


@dataclass(frozen=True)
class MachineLoad:
    """The 1-minute load average before, during (mean and max) and after the runs (logs/load.jsonl)."""

    cpu_count: int
    before: float | None
    during_mean: float | None
    during_max: float | None
    during_samples: int
    after: float | None


@dataclass(frozen=True)
class Machine:
    platform: str
    processor: str
    cpu_count: int | None
    python: str
    torch: str
    gpu: str | None
    jobs: int
    threads_per_run: int
    load: MachineLoad | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Machine:
        load = data.get("load")
        return cls(**{**data, "load": MachineLoad(**load) if load else None})


@dataclass(frozen=True)
class Revision:
    """The sirl commit that ran a command, and whether the checkout's tracked files differed from it (None:
    not known)."""

    commit: str
    dirty: bool | None


@dataclass(frozen=True)
class CommandRecord:
    """One `sirl compare` call on the folder (a line of commands.jsonl)."""

    time: str
    command: str
    argv: list[str]
    cwd: str | None
    sirl: Revision

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CommandRecord:
        revision = data.get("sirl") or {}
        return cls(data["time"], data["command"], data.get("argv", []), data.get("cwd"),
                   Revision(revision.get("commit", "unknown"), revision.get("dirty")))


@dataclass(frozen=True)
class ComparisonSummary:
    """results.json: the comparison's plan, its starting policy, every method's row and how they were run."""

    task: dict[str, Any]
    """The task section of the comparison's config (base.yaml)."""
    model: str
    plan: ComparePlan
    start: StartEvaluation | None
    reference: ReferenceFigure | None
    learning_rate: float | None
    """train.lr of the comparison's config."""
    difficulty_bands: DifficultyBands | None
    methods: dict[str, MethodSummary]
    missing_runs: list[str]
    eval_sets: EvalSets | None
    machine: Machine
    commands: list[CommandRecord] = field(default_factory=list)
    failed_parts: dict[str, str] = field(default_factory=dict)
    """Report parts that could not be built: name -> the exception's type and message."""

    def to_json(self) -> dict[str, Any]:
        ref = self.reference.method if self.reference else None
        methods = {name: row.to_json(is_reference=name == ref, banded=self.difficulty_bands is not None)
                   for name, row in self.methods.items()}
        own = {"plan": asdict(self.plan), "methods": methods}
        return {name: own[name] if name in own else to_json(getattr(self, name)) for name in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ComparisonSummary:
        """results.json read back; one written by an earlier sirl reads with None (or nothing) for what it lacks.
        One of the first design, which measured tokens to reach the reference's best accuracy rather than its
        final figure, is refused (UnreadableResults): its results.md is its report."""
        bands, sets, reference = data.get("difficulty_bands"), data.get("eval_sets"), data.get("reference")
        if reference and "best_accuracy" in reference:
            raise UnreadableResults(
                "this results.json is of the first design of sirl compare (tokens to reach the reference's best accuracy, "
                "no final figure); its results.md is its report, and rerunning the comparison writes today's"
            )
        return cls(
            task=data["task"], model=data["model"],
            # a plan from before final_evaluations took each run's last evaluation alone
            plan=load_plan({"final_evaluations": 1, **data["plan"]}, "results.json's plan"),
            start=StartEvaluation.from_json(data["start"]) if data.get("start") else None,
            reference=ReferenceFigure(**reference) if reference else None, learning_rate=data.get("learning_rate"),
            difficulty_bands=DifficultyBands(**bands) if bands else None,
            methods={name: MethodSummary.from_json(row) for name, row in data["methods"].items()},
            missing_runs=data.get("missing_runs", []), eval_sets=EvalSets(**sets) if sets else None,
            machine=Machine.from_json(data["machine"]),
            commands=[CommandRecord.from_json(c) for c in data.get("commands", [])],
            failed_parts=dict(data.get("failed_parts") or {}),
        )


class UnreadableResults(ValueError):
    """A results.json whose figures today's records do not describe."""


def read_results(path: Path) -> ComparisonSummary:
    """A comparison folder's results.json (or the file itself) as records; UnreadableResults naming the file for
    one of the first design."""
    path = Path(path)
    path = path / "results.json" if path.is_dir() else path
    try:
        return ComparisonSummary.from_json(json.loads(path.read_text()))
    except UnreadableResults as error:
        raise UnreadableResults(f"{path}: {error}") from None


@dataclass(frozen=True)
class RunReached:
    """What a finished run's eval.json says (its last evaluation only), or the error reading it gave."""

    accuracy: float | None = None
    step: int | None = None
    tokens: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"error": self.error} if self.error else {"accuracy": self.accuracy, STEP: self.step, TOKENS_TOTAL: self.tokens}


@dataclass(frozen=True)
class BareReport:
    """What results.json holds when the summary failed as a whole: the plan as saved, each finished run's
    eval.json, and the failure."""

    plan: dict[str, Any] | None
    runs: dict[str, RunReached]
    """By the run's path under runs/ (``grpo/seed0``, ``si/lr0.0001/seed1000``)."""
    failed_parts: dict[str, str]

    @property
    def methods(self) -> dict[str, MethodSummary]:
        return {}

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan, "methods": {}, "runs": to_json(self.runs), "failed_parts": self.failed_parts}


Report = ComparisonSummary | BareReport
