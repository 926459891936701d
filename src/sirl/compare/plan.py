"""What a comparison runs: :class:`ComparePlan` (stored as compare.json), its runs and their folders, and the
comparison presets that set it per task (``--plan``).

A plan's settings are the dataclass's fields and nothing else: a plan file, compare.json and the flags of
``sirl compare`` (generated from the fields by sirl.cli) are all read by the loader of every other config
(sirl.config.from_dict: unknown keys listed with the valid ones, wrong types named) and the ranges declared
beside each field (sirl.config.check_ranges).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from sirl.config import ConfigError, check_keys, check_ranges, from_dict
from sirl.config_fields import Range

HARD_LEVEL = 0.15
"""Difficulty levels where the starting policy's final-set accuracy is below this are pooled as "hard"."""
REFERENCE = "grpo"
"""The outcome-only baseline whose best accuracy sets the "tokens to reach" target."""


def method_names() -> tuple[str, ...]:
    from sirl.methods import METHODS  # the registry: every method sirl train runs

    return tuple(METHODS)


@dataclass(frozen=True)
class Flag:
    """How a plan setting reads as a ``sirl compare`` flag: its help line, metavar, and what the help says of
    its default where that is not the field's (the flag's name, type and default come from the field)."""

    help: str
    metavar: str = "N"
    default: str | None = None


def setting(default: Any = None, help: str = "", low: float | None = None, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False, metavar: str = "N", shown_default: str | None = None, default_factory: Any = None) -> Any:
    """A plan field: its default, its ``sirl compare`` flag (:class:`Flag`) and, with ``low`` or ``high``, the
    range its value must lie in (checked as every config's are, sirl.config.check_ranges)."""
    metadata: dict[str, Any] = {"flag": Flag(help, metavar, shown_default)}
    if low is not None or high is not None:
        metadata["range"] = Range(low, high, low_open, high_open)
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ComparePlan:
    """What a comparison runs; stored as compare.json so that a rerun continues the same comparison."""

    methods: list[str] = setting(default_factory=lambda: list(method_names()), metavar="A,B,...", help="comma-separated methods",
                                 shown_default="default: every registered method, or the plan's")
    seeds: int = setting(3, "seeds per method", 1)
    budget_tokens: int = setting(500_000, "generated tokens per run", 1, shown_default="required without a --plan that sets it")
    """Generated tokens per run, every kind counted."""
    eval_every_tokens: int = setting(100_000, "held-out evaluation grid", 1, shown_default="default: budget / 5")
    """Held-out accuracy at every multiple of this many generated tokens (the curves' grid)."""
    final_problems: int | None = setting(None, "final evaluation set size", 1, shown_default="default eval.n_problems")
    """Size of the final held-out evaluation of each run (and of the starting policy); None: eval.n_problems."""
    checkpoint_every: int = setting(50, "steps between resumable checkpoints", 0, metavar="STEPS")
    """Steps between checkpoints, where a killed comparison resumes an interrupted run (train.checkpoint_every)."""
    jobs: int = setting(1, "runs at once, each its own process", 1)
    threads: int | None = setting(None, "CPU threads per run", 1, shown_default="default: cores / jobs")
    """CPU threads per run (OMP_NUM_THREADS); None: the machine's cores divided by jobs."""
    final_evaluations: int = setting(3, "a run's final accuracy is the mean of its last N evaluations on the final set", 1)
    """A run's final figure is the mean of its last this many held-out evaluations, problem by problem
    (one evaluation is a noisy point of a noisy curve). Above 1, every periodic evaluation is on the final
    set, so that the last few are comparable; 1 keeps a separate final evaluation."""
    learning_rates: list[float] | None = setting(
        None, "choose each method's learning rate from these, one run each on --lr-seed", metavar="A,B,...",
        shown_default="default: train.lr for all")
    """Learning rates to choose from per method, each tried once on ``lr_seed`` (a seed the table does not
    use); the one with the best final figure runs the table's seeds. None: every run uses train.lr."""
    lr_seed: int = setting(1000, "the seed of the learning-rate runs, not one of the table's", 0)
    """The seed of the learning-rate runs; at least ``seeds``, so it is never one of the table's."""
    hard_below: float = setting(HARD_LEVEL, "the tables' hard band: levels where the starting policy is below this accuracy",
                                0, 1, low_open=True, high_open=True, metavar="X")
    """The hard band of the tables by difficulty: the levels where the starting policy's accuracy on the
    final set is below this. Raise it on a task whose answer space is small enough that luck alone scores
    near 15% (arith mod 7: a wrong chain ends on the right answer 1 time in 7). Changes the report only."""
    reference: str | None = setting(None, "the method the others are measured against, one of --methods; changes the report only",
                                    metavar="METHOD", shown_default=f"default {REFERENCE}")
    """The method every other is measured against (differences, token ratios); None: grpo, where it is
    one of ``methods``. Changes the report only, so one set of runs can be read against grpo and against,
    say, dr_grpo."""
    variants: dict[str, dict[str, Any]] | None = field(default=None)
    """Named variants of registered methods, each a mapping ``{method: NAME, overrides: {dotted.key: value}}``;
    a variant's name may then be listed in ``methods`` like a method. Its runs train ``method`` with the
    comparison's config plus its overrides, so an ablation (say, si without its repair buffer) runs in the
    same folder as the runs it is measured against, seed for seed. A plan-file setting (no flag)."""

    @property
    def reference_method(self) -> str:
        return self.reference or REFERENCE

    def algo_of(self, name: str) -> str:
        """The registered method that a table entry (a method or a variant's name) trains."""
        return (self.variants or {}).get(name, {}).get("method", name)

    def overrides_of(self, name: str) -> list[str]:
        """A variant's overrides as command-line ``--dotted.key=value`` flags (none for a plain method)."""
        overrides = (self.variants or {}).get(name, {}).get("overrides") or {}
        return [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()]

    def __post_init__(self) -> None:
        check_ranges(self)  # each field's declared range
        self._check_methods()
        if self.learning_rates is not None:
            if not self.learning_rates or any(not 0 < lr <= 1 for lr in self.learning_rates) or len(set(self.learning_rates)) != len(self.learning_rates):
                raise ConfigError(f"learning_rates must be distinct values in (0, 1], got {self.learning_rates}")
            if self.lr_seed < self.seeds:
                raise ConfigError(f"lr_seed ({self.lr_seed}) is one of the table's seeds 0..{self.seeds - 1}; choose one >= seeds")
        if self.reference is not None and self.reference not in self.methods:
            raise ConfigError(f"reference {self.reference!r} is not one of the methods {self.methods}; add it to methods or pick one of them")
        if self.eval_every_tokens > self.budget_tokens:
            raise ConfigError(f"eval_every_tokens ({self.eval_every_tokens}) is larger than budget_tokens ({self.budget_tokens})")

    def _check_methods(self) -> None:
        """Every listed method is registered or a variant of a registered one, listed once."""
        known = method_names()
        for name, spec in (self.variants or {}).items():
            if name in known:
                raise ConfigError(f"variants: {name!r} is a registered method's name; give the variant another name")
            if not isinstance(spec, dict) or spec.get("method") not in known or set(spec) - {"method", "overrides"}:
                raise ConfigError(
                    f"variants.{name}: give {{method: NAME, overrides: {{dotted.key: value}}}} with NAME one of {list(known)}, got {spec!r}"
                )
            if not isinstance(spec.get("overrides") or {}, dict):
                raise ConfigError(f"variants.{name}.overrides must be a mapping of dotted keys to values, got {spec['overrides']!r}")
        known = (*known, *(self.variants or {}))
        unknown = [m for m in self.methods if m not in known]
        if unknown or not self.methods:
            raise ConfigError(f"unknown method(s) {unknown or '(none given)'}; choose from {list(known)}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods listed twice: {self.methods}")

    def same_results_as(self, other: ComparePlan) -> list[str]:
        """Fields whose change would change the runs (jobs and threads only change the speed, hard_below and
        reference only the report). A comparison may grow: more seeds, or methods added, leave every saved
        run as it is and only add runs; fewer would drop finished runs from the table, so they count."""
        mine, theirs = asdict(self), asdict(other)
        changed = [f"{k}: {theirs[k]} -> {mine[k]}" for k in mine
                   if k not in ("jobs", "threads", "hard_below", "reference", "seeds", "methods", "variants") and mine[k] != theirs[k]]
        # Variants may be added; one that both define must define the same runs.
        changed += [f"variants.{name}: {(other.variants or {})[name]} -> {spec}" for name, spec in (self.variants or {}).items()
                    if name in (other.variants or {}) and (other.variants or {})[name] != spec]
        if self.seeds < other.seeds:
            changed.append(f"seeds: {other.seeds} -> {self.seeds} (a comparison can grow, not shrink; give a new --out for fewer)")
        dropped = [m for m in other.methods if m not in self.methods]
        if dropped:
            changed.append(f"methods: {other.methods} -> {self.methods} drops {dropped} (add methods, or give a new --out)")
        return changed


def plan_keys() -> list[str]:
    """Every setting a plan has: its dataclass's fields."""
    return [f.name for f in fields(ComparePlan)]


def load_plan(settings: dict[str, Any], where: str | Path | None = None) -> ComparePlan:
    """A plan from its settings, by the loader of every config (sirl.config.from_dict: unknown keys and wrong
    types named), then its ranges and cross-field checks; ``where`` (a file) prefixes any error."""
    try:
        return from_dict(ComparePlan, settings, "")
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}" if where else str(error)) from None


def read_plan_json(path: Path) -> ComparePlan:
    """A comparison folder's compare.json."""
    return load_plan(json.loads(Path(path).read_text()), path)


def read_plan_file(path: Path, task: str) -> tuple[str, list[str], dict[str, Any]]:
    """A comparison preset: shared settings at the top level and, under ``tasks.<task>``, the training
    preset (``config``), dotted ``overrides`` and any setting to change for that task. Returns (training
    preset, overrides, plan settings); the settings' keys are checked here (naming the file), their values
    where the plan is built (:func:`load_plan`)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"no comparison preset {path}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise ConfigError(f"{path}: a comparison preset is a mapping with a 'tasks:' mapping (task -> its config and overrides)")
    tasks = data.pop("tasks")
    if task not in tasks:
        raise ConfigError(f"{path}: no task {task!r} under 'tasks:'; it has {sorted(tasks)}")
    entry = dict(tasks[task] or {})
    preset = entry.pop("config", task)
    overrides = entry.pop("overrides", {}) or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: tasks.{task}.overrides must be a mapping of dotted keys to values")
    settings = {**data, **entry}
    try:
        check_keys(ComparePlan, settings, "")
    except ConfigError as error:
        raise ConfigError(f"{path}: {error} (and 'tasks', each task's config and overrides)") from None
    return preset, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()], settings


# --- the runs and their folders ------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    method: str
    seed: int
    lr: float | None = None
    """The learning rate of a learning-rate run; None for the table's runs (they use the chosen one)."""

    @property
    def name(self) -> str:
        return f"{self.method}-seed{self.seed}" if self.lr is None else f"{self.method}-lr{self.lr:g}-seed{self.seed}"


def run_dir(out: Path, run: RunSpec) -> Path:
    folder = out / "runs" / run.method
    return folder / f"seed{run.seed}" if run.lr is None else folder / f"lr{run.lr:g}" / f"seed{run.seed}"


def finished(out: Path, run: RunSpec) -> bool:
    return (run_dir(out, run) / "eval.json").is_file()


def lr_runs(plan: ComparePlan) -> list[RunSpec]:
    return [RunSpec(m, plan.lr_seed, lr) for lr in plan.learning_rates or [] for m in plan.methods]


def table_runs(plan: ComparePlan) -> list[RunSpec]:
    """The runs of the table, seeds outer so that partial results stay balanced across methods."""
    return [RunSpec(m, s) for s in range(plan.seeds) for m in plan.methods]


def threads_per_run(plan: ComparePlan) -> int:
    """CPU threads of each run: the plan's, or the machine's cores divided by the runs at once."""
    return plan.threads or max(1, (os.cpu_count() or 1) // plan.jobs)
