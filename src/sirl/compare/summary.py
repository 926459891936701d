"""The summary of a comparison folder, computed from the folder only (its runs' files): :func:`summarize`
reads every finished run into a :class:`~sirl.compare.records.ComparisonSummary`, whose ``to_json()`` is
results.json. Wall-clock figures live under each method's ``timing`` and under ``machine``: everything else
is a deterministic function of the runs.

Should a part of the summary fail (a bug, a file of an unexpected shape), :func:`report_part` records it in
``failed_parts`` and the rest is built all the same; should the summary fail as a whole,
:func:`summarize_or_report` falls back to each finished run's eval.json (a
:class:`~sirl.compare.records.BareReport`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from sirl.compare.plan import ComparePlan, RunSpec, finished, read_plan_json, run_dir, threads_per_run
from sirl.compare.records import (
    BareReport, CommandRecord, ComparisonSummary, Curve, DifficultyBands, EvalPoint, EvalSets, FinalFigure, LearningRateChoice, Level,
    LevelAccuracy, Machine, MachineLoad, MethodSettings, MethodSummary, ProbesCurve, ReferenceFigure, Report, RunReached,
    StartEvaluation, Timing, VersusReference,
)
from sirl.compare.stats import MeanStd, PairedDifference, RunCurve, on_grid, paired_difference, tokens_to_reach
from sirl.config import ExperimentConfig, flat_config, read_old_places
from sirl.runlog import EVALS_FILE
from sirl.schema import (
    ELAPSED_S, EVAL_ACCURACY, LOC_ACCURACY, LOC_PROBES_PER_FAILURE, METHOD_STATE_MB, REWARDS, SELFLOC_ACCURACY, STEP,
    TOKENS_PROBE, TOKENS_TOTAL, TOKENS_TRAINED, TOKENS_VERIFY,
)
from sirl.tasks.base import difficulty_order, level_from_key

COMMANDS_FILE = "commands.jsonl"
"""One line per `sirl compare` call on a comparison folder: its command line, time, and the sirl commit."""
PER_RUN_KEYS = ("seed", "out")
"""Config keys that differ from run to run of one method by design, left out of its settings."""
LOAD_EVERY_S = 30.0
"""Seconds between samples of the machine's load average while runs are going (logs/load.jsonl)."""


# --- one run's figures ---------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_figure(folder: Path, plan: ComparePlan) -> FinalFigure:
    """A finished run's final figure: its reward per held-out problem averaged over its last
    ``plan.final_evaluations`` evaluations (evals.jsonl) and their mean, with the evaluations used. A run
    without evals.jsonl (or whose last evaluations are on another set than its final one) falls back to its
    final evaluation (eval.json) alone."""
    final = json.loads((folder / "eval.json").read_text())
    rewards = final.get(REWARDS) or []
    used = [EvalPoint(final[STEP], final[TOKENS_TOTAL])]
    path = folder / EVALS_FILE
    if plan.final_evaluations > 1 and path.is_file():
        records = [r for r in _read_jsonl(path) if len(r[REWARDS]) == final["n"]][-plan.final_evaluations:]
        if records and records[-1][STEP] == final[STEP]:
            rewards = [statistics.fmean(values) for values in zip(*(r[REWARDS] for r in records))]
            used = [EvalPoint(r[STEP], r[TOKENS_TOTAL]) for r in records]
    accuracy = statistics.fmean(rewards) if rewards else final["accuracy"]
    return FinalFigure(accuracy, rewards, used)


def figure_by_difficulty(figure: FinalFigure, final: dict[str, Any]) -> dict[str, LevelAccuracy]:
    """The final figure (:func:`final_figure`) by difficulty level: per level (its text, as a JSON key), its
    problems' rewards averaged as in the figure, so the table by difficulty and the headline agree; levels in
    :func:`~sirl.tasks.base.difficulty_order` (numbers by value, then text), problems without one in none, as
    in sirl.evaluate. A run whose eval.json (``final``) lacks per-problem difficulties keeps that evaluation's
    own table."""
    difficulties = final.get("difficulties") or []
    if not figure.rewards or len(difficulties) != len(figure.rewards):
        ordered = sorted(final["by_difficulty"].items(), key=lambda kv: difficulty_order(kv[0]))
        return {level: LevelAccuracy(v["n"], v["accuracy"]) for level, v in ordered}
    grouped: dict[str, list[float]] = {}
    for level, reward in zip(difficulties, figure.rewards):
        if level is not None:
            grouped.setdefault(str(level), []).append(reward)
    ordered = sorted(grouped.items(), key=lambda kv: difficulty_order(kv[0]))
    return {level: LevelAccuracy(len(values), statistics.fmean(values)) for level, values in ordered}


def chosen_learning_rates(out: Path, plan: ComparePlan) -> dict[str, LearningRateChoice] | None:
    """Per method, the learning rate whose run on ``plan.lr_seed`` has the best final figure (the smaller
    rate on a tie), with every rate's figure; None without learning_rates. A method whose learning-rate
    runs are not all finished has no choice yet."""
    if not plan.learning_rates:
        return None
    chosen = {}
    for method in plan.methods:
        runs = [RunSpec(method, plan.lr_seed, lr) for lr in sorted(plan.learning_rates)]
        if all(finished(out, r) for r in runs):
            figures = {r.lr: final_figure(run_dir(out, r), plan).accuracy for r in runs}
            best = max(figures, key=lambda lr: (figures[lr], -lr))
            chosen[method] = LearningRateChoice(best, {f"{lr:g}": a for lr, a in figures.items()}, plan.lr_seed)
    return chosen


def settings_from_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """The settings of a resolved config (a run's config.yaml) that differ from sirl's defaults
    (``ExperimentConfig()``), by dotted key, without the keys that differ run to run (:data:`PER_RUN_KEYS`).
    A key the saved config lacks took its default then; a key it has that sirl no longer knows is kept; a key at a
    place an older sirl had it is read at today's (sirl.config.read_old_places)."""
    defaults = flat_config(ExperimentConfig())
    missing = object()
    return {key: value for key, value in sorted(flat_config(read_old_places(saved)).items())
            if key not in PER_RUN_KEYS and defaults.get(key, missing) != value}


def method_settings(folders: list[Path]) -> MethodSettings | None:
    """What a method's finished runs ran with (:func:`settings_from_defaults` of their config.yaml): the
    settings all of them have, and any that differ between seeds (seed -> value). None without config.yaml."""
    per_seed = {int(d.name.removeprefix("seed")): settings_from_defaults(yaml.safe_load((d / "config.yaml").read_text()))
                for d in folders if (d / "config.yaml").is_file()}
    if not per_seed:
        return None
    defaults = flat_config(ExperimentConfig())
    shared, by_seed = {}, {}
    for key in sorted({k for settings in per_seed.values() for k in settings}):
        values = {seed: settings.get(key, defaults.get(key)) for seed, settings in per_seed.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) == 1:
            shared[key] = next(iter(values.values()))
        else:
            by_seed[key] = {str(seed): value for seed, value in values.items()}
    return MethodSettings(shared, by_seed)


# --- a method's row ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinishedRun:
    """A finished run of the table as read from its folder."""

    seed: int
    folder: Path
    final: dict[str, Any]
    """eval.json: its last evaluation."""
    figure: FinalFigure
    rows: list[dict[str, Any]]
    """metrics.jsonl."""

    def curve(self, grid: list[float]) -> RunCurve:
        """Accuracy and trained tokens on the generated-token grid (trained tokens 0 at step 0 where the
        first record predates the count)."""
        points = [(r[TOKENS_TOTAL], r[EVAL_ACCURACY]) for r in self.rows if EVAL_ACCURACY in r]
        accuracy = on_grid([p[0] for p in points], [p[1] for p in points], grid)
        trained = [(r[TOKENS_TOTAL], r.get(TOKENS_TRAINED, 0 if r[STEP] == 0 else None)) for r in self.rows]
        trained = [p for p in trained if p[1] is not None]
        trained_curve = on_grid([p[0] for p in trained], [p[1] for p in trained], grid) if len(trained) > 1 else None
        return RunCurve(accuracy, trained_curve, self.figure.accuracy, self.figure.rewards)


def finished_runs(out: Path, plan: ComparePlan, method: str) -> list[FinishedRun]:
    """The method's finished runs among the table's seeds."""
    runs = []
    for seed in range(plan.seeds):
        folder = run_dir(out, RunSpec(method, seed))
        if (folder / "eval.json").is_file():
            runs.append(FinishedRun(seed, folder, json.loads((folder / "eval.json").read_text()), final_figure(folder, plan),
                                    _read_jsonl(folder / "metrics.jsonl")))
    return runs


def method_summary(runs: list[FinishedRun], curves: list[RunCurve], grid: list[float], failed: dict[str, str]) -> MethodSummary:
    """One method's row from its finished runs and their curves on ``grid``."""
    last = [run.rows[-1] for run in runs]
    logs = [run.rows for run in runs]
    by_difficulty = report_part(failed, "table by difficulty", lambda: [figure_by_difficulty(r.figure, r.final) for r in runs], [])
    levels = sorted({k for b in by_difficulty for k in b}, key=difficulty_order)
    accuracy = [c.accuracy for c in curves]
    return MethodSummary(
        seeds=[run.seed for run in runs],
        final_accuracy=MeanStd.of([r.figure.accuracy for r in runs]),
        final_evaluations=min(len(r.figure.evaluations) for r in runs),
        last_evaluation_accuracy=MeanStd.of([r.final["accuracy"] for r in runs]),
        final_n=runs[0].final["n"],
        steps=MeanStd.of([r.final[STEP] for r in runs]),
        tokens=MeanStd.of([r.final[TOKENS_TOTAL] for r in runs]),
        tokens_per_step=MeanStd.of([r[TOKENS_TOTAL] / r[STEP] for r in last]),
        trained_tokens=MeanStd.of([r.get(TOKENS_TRAINED) for r in last]),
        max_step_tokens=max(_step_tokens(rows) for rows in logs),
        probe_share=MeanStd.of([r[TOKENS_PROBE] / max(r[TOKENS_TOTAL], 1) for r in last]),
        verify_share=MeanStd.of([r[TOKENS_VERIFY] / max(r[TOKENS_TOTAL], 1) for r in last]),
        localization_accuracy=MeanStd.of([_mean_of(rows, LOC_ACCURACY) for rows in logs]),
        probes_per_failure=MeanStd.of([_mean_of(rows, LOC_PROBES_PER_FAILURE, last_fraction=0.25) for rows in logs]),
        selfloc_accuracy=MeanStd.of([_mean_of(rows, SELFLOC_ACCURACY, last_fraction=0.25) for rows in logs]),
        method_state_mb=MeanStd.of([_mean_of(rows, METHOD_STATE_MB) for rows in logs]),
        settings=method_settings([run.folder for run in runs]),
        by_difficulty={level_from_key(level): MeanStd.of([b[level].accuracy for b in by_difficulty if level in b]) for level in levels},
        curve=Curve(grid, [statistics.mean(c[i] for c in accuracy) for i in range(len(grid))],
                    [statistics.stdev(c[i] for c in accuracy) if len(accuracy) > 1 else 0.0 for i in range(len(grid))]),
        probes_curve=_probes_curve(logs, grid),
        timing=Timing(MeanStd.of([rows[-1][ELAPSED_S] for rows in logs]),
                      [[(r[ELAPSED_S], r[EVAL_ACCURACY]) for r in rows if EVAL_ACCURACY in r] for rows in logs]),
    )


def _step_tokens(rows: list[dict]) -> int:
    """The most tokens any one step of a run generated."""
    totals = [r[TOKENS_TOTAL] for r in rows]
    return max((b - a for a, b in zip(totals, totals[1:])), default=0)


def _mean_of(rows: list[dict], key: str, last_fraction: float = 1.0) -> float | None:
    """Mean of a per-step metric over the run (or its last ``last_fraction`` of steps); None if never logged."""
    values = [(r[STEP], r[key]) for r in rows if key in r and isinstance(r[key], (int, float)) and math.isfinite(r[key])]
    if not values:
        return None
    cutoff = rows[-1][STEP] * (1 - last_fraction)
    kept = [v for s, v in values if s >= cutoff] or [v for _, v in values]
    return statistics.mean(kept)


def _probes_curve(logs: list[list[dict]], grid: list[float]) -> ProbesCurve | None:
    """Probes per failure against generated tokens: each seed's per-step values averaged within the grid's
    intervals, then the mean over seeds."""
    per_seed = []
    for rows in logs:
        points = [(r[TOKENS_TOTAL], r[LOC_PROBES_PER_FAILURE]) for r in rows if isinstance(r.get(LOC_PROBES_PER_FAILURE), (int, float))]
        points = [(t, v) for t, v in points if math.isfinite(v)]
        if not points:
            return None
        bins = []
        for lo, hi in zip(grid, grid[1:]):
            inside = [v for t, v in points if lo < t <= hi]
            bins.append(statistics.mean(inside) if inside else None)
        per_seed.append(bins)
    mids = [(lo + hi) / 2 for lo, hi in zip(grid, grid[1:])]
    means = []
    for i in range(len(mids)):
        values = [b[i] for b in per_seed if b[i] is not None]
        means.append(statistics.mean(values) if values else None)
    return ProbesCurve(mids, means)


# --- across methods: bands and the reference -----------------------------------------------------


def difficulty_bands(start: StartEvaluation | None, hard_below: float) -> DifficultyBands | None:
    """The levels where the starting policy is below ``hard_below`` ("hard": docs/method.md's first hypothesis
    is about prompts it almost never solves) and the rest; None without a starting evaluation by level."""
    if start is None or not start.by_difficulty:
        return None
    levels = {level_from_key(k): v for k, v in start.by_difficulty.items()}
    hard = sorted((k for k, v in levels.items() if v.accuracy < hard_below), key=difficulty_order)
    return DifficultyBands(hard, sorted((k for k in levels if k not in hard), key=difficulty_order))


def band_accuracy(start: StartEvaluation, row: MethodSummary, members: list[Level]) -> MeanStd:
    """A method's final accuracy pooled over the levels ``members``, each level weighted by its problem count
    in the starting evaluation (mean and std over seeds); no value where a seed lacks one of the levels."""
    levels = {level_from_key(k): v for k, v in start.by_difficulty.items()}
    n = sum(levels[k].n for k in members)
    known = n and all(k in row.by_difficulty and len(row.by_difficulty[k].values) == len(row.seeds) for k in members)
    per_seed = [sum(levels[k].n * row.by_difficulty[k].values[i] for k in members) / n for i in range(len(row.seeds))] if known else []
    return MeanStd.of(per_seed)


def band_differences(a: dict[int, list[float]], b: dict[int, list[float]], difficulties: list[Level | None] | None,
                     bands: Mapping[str, list[Level]]) -> dict[str, PairedDifference | None] | None:
    """:func:`paired_difference` of methods A and B on the final problems of each difficulty band (band ->
    its levels), the problems picked by ``difficulties``, the levels the starting policy's evaluation recorded
    for them (the final set is the same for every run). None when that evaluation has no per-problem levels
    (written before they were kept)."""
    levels = difficulties or []
    if not levels or any(len(rewards) != len(levels) for rewards in (*a.values(), *b.values())):
        return None
    out = {}
    for band, members in bands.items():
        picked = [i for i, level in enumerate(levels) if level in set(members)]
        if picked:
            out[band] = paired_difference({s: [r[i] for i in picked] for s, r in a.items()}, {s: [r[i] for i in picked] for s, r in b.items()})
    return out


def _with_bands(start: StartEvaluation | None, methods: dict[str, MethodSummary], hard_below: float,
                failed: dict[str, str]) -> tuple[DifficultyBands | None, dict[str, MethodSummary]]:
    """The difficulty bands, and every row with its accuracy pooled over each band."""
    def build() -> tuple[DifficultyBands | None, dict[str, MethodSummary]]:
        bands = difficulty_bands(start, hard_below)
        if bands is None:
            return None, methods
        return bands, {name: replace(row, hard_levels_accuracy=band_accuracy(start, row, bands.hard),
                                     other_levels_accuracy=band_accuracy(start, row, bands.other)) for name, row in methods.items()}

    return report_part(failed, "difficulty bands", build, (None, methods))


def _versus_reference(ref: str, methods: dict[str, MethodSummary], curves: dict[str, dict[int, RunCurve]], grid: list[float],
                      start: StartEvaluation | None, bands: DifficultyBands | None, failed: dict[str, str]) -> dict[str, MethodSummary]:
    """Every row with its paired difference from the reference ``ref`` (overall and by band) and the tokens
    it needs to reach the reference's final accuracy."""
    rewards = {method: {seed: run.rewards for seed, run in runs.items()} for method, runs in curves.items()}
    differences: dict[str, tuple[PairedDifference | None, Any]] = {}
    for method in methods:
        if method != ref:
            band = None
            if bands:
                band = report_part(failed, "differences by band", lambda: band_differences(
                    rewards[method], rewards[ref], start.difficulties if start else None, bands.members()))
            differences[method] = (paired_difference(rewards[method], rewards[ref]), band)
    reach = {method: report_part(failed, "tokens to reach the reference", lambda: tokens_to_reach(curves[method], curves[ref], grid))
             for method in methods}
    return {method: replace(row, versus=VersusReference(reach[method], *differences.get(method, (None, None))))
            for method, row in methods.items()}


# --- the whole folder ----------------------------------------------------------------------------


def token_grid(plan: ComparePlan) -> list[int]:
    """The generated-token grid of the curves: every multiple of eval_every_tokens, and the budget."""
    grid = list(range(0, plan.budget_tokens + 1, plan.eval_every_tokens))
    return grid if grid[-1] == plan.budget_tokens else [*grid, plan.budget_tokens]


def summarize(out: Path) -> ComparisonSummary:
    """results.json's content, from the comparison folder."""
    plan = read_plan_json(out / "compare.json")
    config = yaml.safe_load((out / "base.yaml").read_text())
    failed: dict[str, str] = {}  # report parts that could not be built (report_part)
    grid = token_grid(plan)
    start_path = out / "start" / "eval.json"
    start = StartEvaluation.from_json(json.loads(start_path.read_text())) if start_path.is_file() else None
    methods: dict[str, MethodSummary] = {}
    curves: dict[str, dict[int, RunCurve]] = {}
    for method in plan.methods:
        runs = finished_runs(out, plan, method)
        if runs:
            curves[method] = {run.seed: run.curve(grid) for run in runs}
            methods[method] = method_summary(runs, list(curves[method].values()), grid, failed)
    bands, methods = _with_bands(start, methods, plan.hard_below, failed)
    ref, reference = plan.reference_method, None
    if ref in methods:
        methods = _versus_reference(ref, methods, curves, grid, start, bands, failed)
        reference = ReferenceFigure(ref, methods[ref].final_accuracy.mean)
    choice = chosen_learning_rates(out, plan) or {}
    methods = {name: replace(row, learning_rate=choice[name]) if name in choice else row for name, row in methods.items()}
    periodic_n = plan.final_problems if plan.final_problems and plan.final_evaluations > 1 else config["eval"]["n_problems"]
    return ComparisonSummary(
        task=config["task"], model=config["model"]["path"], plan=plan, start=start, reference=reference,
        learning_rate=(config.get("train") or {}).get("lr"), difficulty_bands=bands, methods=methods,
        missing_runs=[f"{m}-seed{s}" for m in plan.methods for s in range(plan.seeds) if not finished(out, RunSpec(m, s))],
        # The curves (and tokens to reach the reference's final accuracy) come from the periodic evaluations during
        # training; the tables, the starting policy and the final markers from the final set.
        eval_sets=EvalSets(periodic_n, start.n if start else next((row.final_n for row in methods.values()), None)),
        machine=replace(_machine(plan), load=machine_load(out / "logs" / "load.jsonl")),
        commands=[CommandRecord.from_json(c) for c in _read_jsonl(out / COMMANDS_FILE)] if (out / COMMANDS_FILE).is_file() else [],
        failed_parts=failed,
    )


def machine_load(path: Path) -> MachineLoad | None:
    """The 1-minute load average before, during (mean and max) and after the runs, from logs/load.jsonl;
    None without samples. A load above the CPU count means processes waited for a CPU, so wall-clock
    figures measured then are slower than the machine is."""
    samples = _read_jsonl(path) if path.is_file() else []
    if not samples:
        return None
    by_phase = {phase: [r["load"][0] for r in samples if r["phase"] == phase] for phase in ("before", "during", "after")}
    during = by_phase["during"]
    return MachineLoad(
        cpu_count=samples[-1]["cpu_count"],
        before=statistics.mean(by_phase["before"]) if by_phase["before"] else None,
        during_mean=statistics.mean(during) if during else None,
        during_max=max(during) if during else None,
        during_samples=len(during),
        after=by_phase["after"][-1] if by_phase["after"] else None,
    )


def _machine(plan: ComparePlan) -> Machine:
    import torch

    return Machine(
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        python=platform.python_version(),
        torch=torch.__version__,
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        jobs=plan.jobs,
        threads_per_run=threads_per_run(plan),
    )


# --- a report whatever fails ---------------------------------------------------------------------


def report_part(failed: dict[str, str], name: str, build: Callable[[], Any], fallback: Any = None) -> Any:
    """``build()``, or ``fallback`` when it raises: a bug in one part of a comparison's report must not lose
    the others (nor the compute behind them). The failure is recorded in ``failed[name]`` (the exception's
    type and message, which results.md shows) and its traceback printed to stderr."""
    try:
        return build()
    except Exception as error:
        failed[name] = f"{type(error).__name__}: {error}"
        traceback.print_exc()
        print(f"warning: the comparison's {name} could not be built ({failed[name]}); the rest of the report is written "
              "without it", file=sys.stderr, flush=True)
        return fallback


def summarize_or_report(out: Path) -> Report:
    """:func:`summarize`; should it fail as a whole, what can be read without it (each finished run's eval.json)
    with the failure in ``failed_parts["summary"]``, so that results.json and results.md are written whatever
    goes wrong."""
    failed: dict[str, str] = {}
    results = report_part(failed, "summary", lambda: summarize(out))
    if results is not None:
        return results
    plan = json.loads((out / "compare.json").read_text()) if (out / "compare.json").is_file() else None
    return BareReport(plan, runs_reached(out), failed)


def runs_reached(out: Path) -> dict[str, RunReached]:
    """Every finished run of the folder (runs/<method>[/lr<r>]/seed<k>/eval.json) by its path: accuracy,
    steps and generated tokens of its final evaluation, or the error that reading it gave."""
    runs: dict[str, RunReached] = {}
    for path in sorted((out / "runs").glob("**/eval.json")):
        name = path.parent.relative_to(out / "runs").as_posix()
        try:
            final = json.loads(path.read_text())
            runs[name] = RunReached(final["accuracy"], final.get(STEP), final.get(TOKENS_TOTAL))
        except (OSError, ValueError, KeyError, TypeError) as error:
            runs[name] = RunReached(error=f"{type(error).__name__}: {error}")
    return runs
