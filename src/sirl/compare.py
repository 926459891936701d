"""``sirl compare``: methods side by side, from the same starting policy, at an equal budget of generated tokens.

Every (method, seed) pair is one ``sirl train`` run of the same resolved config (``base.yaml`` in the
comparison folder), differing only in ``algo.name`` and ``seed``, stopped once it has generated
``budget_tokens`` tokens with every kind counted: policy samples, probes and self-verification. A run
stops at the end of the step that crosses the budget, so no run exceeds it by more than one step's tokens.
Held-out accuracy is measured on one fixed problem set at every multiple of ``eval_every_tokens`` (so every
method's curve lies on the same token grid) and, at the end, on ``final_problems`` problems. The starting
policy is evaluated once on that final set, by difficulty, for the table's first row. Curves come from the
periodic evaluations and the tables from the final ones; every plot says which set it shows. A run's final
figure is the mean of its last ``final_evaluations`` evaluations, problem by problem (then all of them are
on the final set). With ``learning_rates``, each method first runs once per rate on ``lr_seed`` and the
table's seeds use its best.

The comparison folder::

    base.yaml             the training config every run shares
    compare.json          what was asked (methods, seeds, budget, ...); a rerun must ask the same
    commands.jsonl        every `sirl compare` call on the folder: its command line, time and sirl commit
    runs/<method>/seed<k> the `sirl train` run folders
    runs/<method>/lr<r>/seed<lr_seed>  the learning-rate runs
    logs/<method>-seed<k>.log
    logs/load.jsonl       the machine's load average before, during and after the runs (beside wall-clock)
    start/eval.json       the starting policy on the final evaluation set
    results.json results.md accuracy_vs_tokens.png accuracy_vs_time.png probes_per_failure.png
    accuracy_by_difficulty.png

A killed comparison continues where it stopped when rerun with the same folder: finished runs (eval.json)
are kept, interrupted ones resume from their latest checkpoint (which gives the same numbers as a run never
stopped, see sirl.checkpoint), and runs never started start. A finished run keeps only its final
checkpoint. The summary is computed from the run folders
only, so rerunning on a finished folder just rewrites it. Ctrl-C or SIGTERM stop a comparison cleanly: each
run in progress stops after its step with a checkpoint (sirl.interrupt), and rerunning continues it.
One process at a time writes a comparison folder (sirl.runlock). A part of the report that fails is named
in results.md with its error, and the rest is written all the same.

    sirl compare --task arith --methods grpo,si --seeds 3 --budget-tokens 500000 --out runs/cmp
    sirl compare --plan benchmarks/compare_cpu.yaml --task arith --out runs/compare-arith
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from sirl.config import ConfigError, ExperimentConfig, check_group_size, config_differences, read_old_places, to_dict, to_yaml
from sirl.interrupt import Interrupted, StopSignals, exit_status, signal_name
from sirl.runlock import FolderInUse, FolderLock, check_not_in_use
from sirl.runlog import EVALS_FILE, write_atomic
from sirl.schema import (
    ELAPSED_S, EVAL_ACCURACY, LOC_ACCURACY, LOC_PROBES_PER_FAILURE, METHOD_STATE_MB, REWARDS, SELFLOC_ACCURACY, STEP,
    TOKENS_PROBE, TOKENS_TOTAL, TOKENS_TRAINED, TOKENS_VERIFY,
)
from sirl.tasks.base import difficulty_order, level_from_key

HARD_LEVEL = 0.15
"""Difficulty levels where the starting policy's final-set accuracy is below this are pooled as "hard"."""
REFERENCE = "grpo"
"""The outcome-only baseline whose best accuracy sets the "tokens to reach" target."""


def _method_names() -> tuple[str, ...]:
    from sirl.methods import METHODS  # the registry: every method sirl train runs

    return tuple(METHODS)


@dataclass(frozen=True)
class ComparePlan:
    """What a comparison runs; stored as compare.json so that a rerun continues the same comparison."""

    methods: list[str]
    seeds: int = 3
    budget_tokens: int = 500_000
    """Generated tokens per run, every kind counted."""
    eval_every_tokens: int = 100_000
    """Held-out accuracy at every multiple of this many generated tokens (the curves' grid)."""
    final_problems: int | None = None
    """Size of the final held-out evaluation of each run (and of the starting policy); None: eval.n_problems."""
    checkpoint_every: int = 50
    """Steps between checkpoints, where a killed comparison resumes an interrupted run."""
    jobs: int = 1
    """Runs at once, each in its own process."""
    threads: int | None = None
    """CPU threads per run (OMP_NUM_THREADS); None: the machine's cores divided by jobs."""
    final_evaluations: int = 3
    """A run's final figure is the mean of its last this many held-out evaluations, problem by problem
    (one evaluation is a noisy point of a noisy curve). Above 1, every periodic evaluation is on the final
    set, so that the last few are comparable; 1 keeps a separate final evaluation."""
    learning_rates: list[float] | None = None
    """Learning rates to choose from per method, each tried once on ``lr_seed`` (a seed the table does not
    use); the one with the best final figure runs the table's seeds. None: every run uses train.lr."""
    lr_seed: int = 1000
    """The seed of the learning-rate runs; at least ``seeds``, so it is never one of the table's."""
    hard_below: float = HARD_LEVEL
    """The hard band of the tables by difficulty: the levels where the starting policy's accuracy on the
    final set is below this. Raise it on a task whose answer space is small enough that luck alone scores
    near 15% (arith mod 7: a wrong chain ends on the right answer 1 time in 7). Changes the report only."""
    reference: str | None = None
    """The method every other is measured against (differences, token ratios); None: grpo, where it is
    one of ``methods``. Changes the report only, so one set of runs can be read against grpo and against,
    say, dr_grpo."""
    variants: dict[str, dict[str, Any]] | None = None
    """Named variants of registered methods, each a mapping ``{method: NAME, overrides: {dotted.key: value}}``;
    a variant's name may then be listed in ``methods`` like a method. Its runs train ``method`` with the
    comparison's config plus its overrides, so an ablation (say, si without its repair buffer) runs in the
    same folder as the runs it is measured against, seed for seed."""

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
        known = _method_names()
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
        for name in ("seeds", "budget_tokens", "eval_every_tokens", "jobs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.final_evaluations < 1:
            raise ConfigError(f"final_evaluations must be at least 1, got {self.final_evaluations}")
        if self.learning_rates is not None:
            if not self.learning_rates or any(not 0 < lr <= 1 for lr in self.learning_rates) or len(set(self.learning_rates)) != len(self.learning_rates):
                raise ConfigError(f"learning_rates must be distinct values in (0, 1], got {self.learning_rates}")
            if self.lr_seed < self.seeds:
                raise ConfigError(f"lr_seed ({self.lr_seed}) is one of the table's seeds 0..{self.seeds - 1}; choose one >= seeds")
        if not 0 < self.hard_below < 1:
            raise ConfigError(f"hard_below must be in (0, 1), got {self.hard_below}")
        if self.reference is not None and self.reference not in self.methods:
            raise ConfigError(f"reference {self.reference!r} is not one of the methods {self.methods}; add it to methods or pick one of them")
        if self.eval_every_tokens > self.budget_tokens:
            raise ConfigError(f"eval_every_tokens ({self.eval_every_tokens}) is larger than budget_tokens ({self.budget_tokens})")

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


PLAN_FILE_KEYS = {"methods", "seeds", "budget_tokens", "eval_every_tokens", "final_problems", "checkpoint_every", "jobs", "threads",
                  "final_evaluations", "learning_rates", "lr_seed", "hard_below", "reference", "variants"}


def read_plan_file(path: Path, task: str) -> tuple[str, list[str], dict[str, Any]]:
    """A comparison preset: shared settings at the top level and, under ``tasks.<task>``, the training
    preset (``config``), dotted ``overrides`` and any setting to change for that task. Returns (training
    preset, overrides, plan settings)."""
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
    unknown = sorted(set(settings) - PLAN_FILE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {unknown}; valid: {sorted(PLAN_FILE_KEYS)} (and 'tasks')")
    return preset, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()], settings


# --- running -------------------------------------------------------------------------------------


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


def _finished(out: Path, run: RunSpec) -> bool:
    return (run_dir(out, run) / "eval.json").is_file()


def lr_runs(plan: ComparePlan) -> list[RunSpec]:
    return [RunSpec(m, plan.lr_seed, lr) for lr in plan.learning_rates or [] for m in plan.methods]


def chosen_learning_rates(out: Path, plan: ComparePlan) -> dict[str, dict] | None:
    """Per method, the learning rate whose run on ``plan.lr_seed`` has the best final figure (the smaller
    rate on a tie), with every rate's figure; None without learning_rates. A method whose learning-rate
    runs are not all finished has no choice yet."""
    if not plan.learning_rates:
        return None
    chosen = {}
    for method in plan.methods:
        runs = [RunSpec(method, plan.lr_seed, lr) for lr in sorted(plan.learning_rates)]
        if all(_finished(out, r) for r in runs):
            figures = {r.lr: final_figure(run_dir(out, r), plan)["accuracy"] for r in runs}
            best = max(figures, key=lambda lr: (figures[lr], -lr))
            chosen[method] = {"lr": best, "accuracy_by_lr": {f"{lr:g}": a for lr, a in figures.items()}, "seed": plan.lr_seed}
    return chosen


def _train_command(out: Path, run: RunSpec, plan: ComparePlan, lr: float | None = None) -> list[str]:
    """The `sirl train` command of ``run``; ``lr`` (a table run's chosen learning rate) overrides train.lr."""
    folder = run_dir(out, run)
    if (folder / "checkpoints" / "latest").is_file():
        return [sys.executable, "-m", "sirl.cli", "train", "--resume", str(folder), "--quiet"]
    if folder.exists():  # started but never checkpointed: nothing to keep
        shutil.rmtree(folder)
    return [
        sys.executable, "-m", "sirl.cli", "train", "--config", str(out / "base.yaml"), "--out", str(folder), "--quiet",
        "--algo", plan.algo_of(run.method), "--seed", str(run.seed), *plan.overrides_of(run.method),
        f"--train.max_tokens={plan.budget_tokens}", "--train.steps=1000000000", "--train.max_minutes=null",
        "--train.eval_every=0", f"--train.eval_every_tokens={plan.eval_every_tokens}",
        f"--train.checkpoint_every={plan.checkpoint_every}",
        *_eval_flags(plan),
        *([f"--train.lr={lr}"] if (lr := run.lr if run.lr is not None else lr) is not None else []),
    ]


def _eval_flags(plan: ComparePlan) -> list[str]:
    if not plan.final_problems:
        return []
    if plan.final_evaluations > 1:  # the last few evaluations make the final figure: all on the final set
        return [f"--eval.n_problems={plan.final_problems}", "--eval.final_n_problems=null"]
    return [f"--eval.final_n_problems={plan.final_problems}"]


def final_figure(folder: Path, plan: ComparePlan) -> dict[str, Any]:
    """A finished run's final figure: its reward per held-out problem averaged over its last
    ``plan.final_evaluations`` evaluations (evals.jsonl) and their mean, with the evaluations used. A run
    without evals.jsonl (or whose last evaluations are on another set than its final one) falls back to its
    final evaluation (eval.json) alone."""
    final = json.loads((folder / "eval.json").read_text())
    rewards = final.get(REWARDS) or []
    used = [{STEP: final[STEP], TOKENS_TOTAL: final[TOKENS_TOTAL]}]
    path = folder / EVALS_FILE
    if plan.final_evaluations > 1 and path.is_file():
        records = [r for r in _read_jsonl(path) if len(r[REWARDS]) == final["n"]][-plan.final_evaluations:]
        if records and records[-1][STEP] == final[STEP]:
            rewards = [statistics.fmean(values) for values in zip(*(r[REWARDS] for r in records))]
            used = [{STEP: r[STEP], TOKENS_TOTAL: r[TOKENS_TOTAL]} for r in records]
    accuracy = statistics.fmean(rewards) if rewards else final["accuracy"]
    return {"accuracy": accuracy, "rewards": rewards, "evaluations": used}


def figure_by_difficulty(figure: dict[str, Any], final: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The final figure (``final_figure``) by difficulty level: per level (its text, as a JSON key), its
    problems' rewards averaged as in the figure, so the table by difficulty and the headline agree; levels in
    :func:`~sirl.tasks.base.difficulty_order` (numbers by value, then text), problems without one in none, as
    in sirl.evaluate. A run whose eval.json lacks per-problem difficulties keeps that evaluation's own table."""
    difficulties = final.get("difficulties") or []
    if not figure["rewards"] or len(difficulties) != len(figure["rewards"]):
        return dict(sorted(final["by_difficulty"].items(), key=lambda kv: difficulty_order(kv[0])))
    grouped: dict[str, list[float]] = {}
    for level, reward in zip(difficulties, figure["rewards"]):
        if level is not None:
            grouped.setdefault(str(level), []).append(reward)
    ordered = sorted(grouped.items(), key=lambda kv: difficulty_order(kv[0]))
    return {level: {"n": len(values), "accuracy": statistics.fmean(values)} for level, values in ordered}


def _threads(plan: ComparePlan) -> int:
    return plan.threads or max(1, (os.cpu_count() or 1) // plan.jobs)


class Children:
    """The commands a comparison is running, so that a stop reaches them: :meth:`stop` sends each SIGTERM
    once (a run then stops after its step in progress, with a checkpoint; sirl.interrupt), and no command
    starts after it."""

    def __init__(self) -> None:
        self.running: dict[str, subprocess.Popen] = {}
        self.stopped: set[int] = set()
        self.stopping = False

    def stop(self) -> None:
        """Called from the signal handler (main thread) and the polling loop: every running command gets
        one SIGTERM, whatever signal the comparison got (a Ctrl-C at the terminal reached them already;
        a SIGTERM after it is no second Ctrl-C, so it never cuts a checkpoint short)."""
        self.stopping = True
        for process in list(self.running.values()):
            if process.pid not in self.stopped and process.poll() is None:
                self.stopped.add(process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)


def _execute(command: list[str], log_path: Path, threads: int, children: Children | None = None, name: str = "") -> int | None:
    """Run ``command`` with its output in ``log_path``; its exit status, or None when the comparison is
    stopping and it was not started."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        if children is not None and children.stopping:
            return None
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        if children is None:
            return process.wait()
        children.running[name] = process
        try:
            if children.stopping:  # the stop came between the check above and the start
                children.stop()
            return process.wait()
        finally:
            children.running.pop(name, None)


POLL_S = 2.0
"""Seconds between updates of the progress bar."""
LOAD_EVERY_S = 30.0
"""Seconds between samples of the machine's load average while runs are going."""


def load_sample(phase: str, running: int, threads: int) -> dict | None:
    """The machine's load averages now (os.getloadavg: processes running or waiting for a CPU, over 1, 5 and
    15 minutes), with what this comparison itself had running; None where the OS has no load average."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):  # Windows
        return None
    return {"time": time.time(), "phase": phase, "load": [one, five, fifteen], "cpu_count": os.cpu_count(),
            "runs": running, "threads_per_run": threads}


def _record_load(path: Path, phase: str, running: int, threads: int) -> None:
    sample = load_sample(phase, running, threads)
    if sample is not None:
        with path.open("a") as f:
            f.write(json.dumps(sample) + "\n")


def _last_tokens(metrics: Path) -> int:
    """Generated tokens in a run's last complete metrics record (0 before the first): read from the end of
    the file, which a running run appends to."""
    if not metrics.is_file():
        return 0
    with metrics.open("rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
        lines = f.read().decode("utf-8", errors="replace").split("\n")[:-1]  # the part after the last newline may be torn
    for line in reversed(lines):
        try:
            return int(json.loads(line).get(TOKENS_TOTAL, 0))
        except (ValueError, AttributeError):
            continue
    return 0


def tokens_done(out: Path, runs: list[RunSpec], budget: int) -> int:
    """Generated tokens of every run so far, each counted up to the budget (a finished run counts in full)."""
    return sum(
        budget if (run_dir(out, r) / "eval.json").is_file() else min(budget, _last_tokens(run_dir(out, r) / "metrics.jsonl"))
        for r in runs
    )


def run_comparison(
    config: ExperimentConfig, plan: ComparePlan, out: Path, quiet: bool = False, command: list[str] | None = None,
) -> dict:
    """Run (or continue) every (method, seed) run of ``plan`` from ``config`` into ``out``, then summarize.
    Raises ConfigError when ``out`` holds a comparison of another config or plan. Unless ``quiet``, a
    progress bar counts the generated tokens of all runs against their budgets, with an ETA. ``command``
    (default ``sys.argv``) is recorded in commands.jsonl with the sirl commit.

    One process at a time writes ``out`` (sirl.runlock). SIGINT or SIGTERM stop the comparison: each run
    in progress gets SIGTERM, stops after its step in progress with a checkpoint, no run starts, and
    Interrupted is raised; rerunning the same command continues them (sirl.interrupt)."""
    from sirl.methods import get_method
    from sirl.train import group_relative

    for name in plan.methods:  # before any run starts: a group-relative method with groups of one learns nothing
        algo = plan.algo_of(name)
        check_group_size(dataclasses.replace(config, algo=dataclasses.replace(config.algo, name=algo)), group_relative(get_method(algo)))
    children = Children()
    with FolderLock(out, what="comparison folder"), StopSignals(
        "the runs stop after their step in progress, each with a checkpoint; rerun the same command to continue them",
        name="sirl compare", on_signal=lambda signum: children.stop(), second_ctrl_c_aborts=False,
    ) as stop:
        return _run_comparison(config, plan, out, quiet, command, children, stop)


def _run_comparison(
    config: ExperimentConfig, plan: ComparePlan, out: Path, quiet: bool, command: list[str] | None, children: Children, stop: StopSignals,
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    base_path, plan_path = out / "base.yaml", out / "compare.json"
    if base_path.is_file() or plan_path.is_file():
        saved_config = yaml.safe_load(base_path.read_text()) if base_path.is_file() else {}
        changed = config_differences(saved_config, config)
        if plan_path.is_file():
            changed += plan.same_results_as(ComparePlan(**json.loads(plan_path.read_text())))
        if changed:
            raise ConfigError(
                f"{out} holds a comparison with other settings ({'; '.join(changed)}); rerun it with the same "
                f"ones to continue it, or give a new --out"
            )
    base_path.write_text(to_yaml(config))
    plan_path.write_text(json.dumps(asdict(plan), indent=2) + "\n")
    record_command(out, sys.argv if command is None else command)

    threads = _threads(plan)
    # The learning-rate runs first (the table's runs use their choice), then seeds outer: partial results stay balanced.
    table = [RunSpec(m, s) for s in range(plan.seeds) for m in plan.methods]
    runs = lr_runs(plan) + table
    pending = [r for r in runs if not _finished(out, r)]
    (out / "logs").mkdir(exist_ok=True)
    load_path = out / "logs" / "load.jsonl"
    # The load describes the runs' wall-clock: a rerun that only re-renders the report records nothing, so the
    # saved before/after samples stay those of the runs.
    measuring = bool(pending) or not (out / "start" / "eval.json").is_file()
    if measuring:
        _record_load(load_path, "before", 0, threads)
    if not quiet:
        if plan.learning_rates:
            print(f"compare: first {_count(len(lr_runs(plan)), 'learning-rate run')} (learning rates {plan.learning_rates} on seed "
                  f"{plan.lr_seed}); each method's table runs use its best", flush=True)
        print(f"compare: {_count(len(runs), 'run')} ({_count(len(plan.methods), 'method')} x {_count(plan.seeds, 'seed')}) of "
              f"{plan.budget_tokens:,} tokens each on {config.task.name}; {len(runs) - len(pending)} already finished; "
              f"{plan.jobs} at a time, {_count(threads, 'thread')} each; folder {out}", flush=True)
    start = time.time()
    failed: list[str] = []
    stopped: list[str] = []
    running: set[str] = set()
    total = len(runs) * plan.budget_tokens
    bar = tqdm(total=total, initial=tokens_done(out, runs, plan.budget_tokens), desc="compare", unit="tok", unit_scale=True,
               disable=quiet, dynamic_ncols=True, smoothing=0.05)

    def say(message: str) -> None:
        if not quiet:
            bar.write(message)

    def one(run: RunSpec) -> None:
        if children.stopping:
            return
        t0 = time.time()
        lr = None
        if run.lr is None and plan.learning_rates:
            choice = (chosen_learning_rates(out, plan) or {}).get(run.method)
            if choice is None:
                failed.append(f"{run.name} (its method's learning-rate runs did not all finish)")
                return
            lr = choice["lr"]
        try:  # a run of an earlier comparison killed outright can outlive it: never delete or resume its folder under it
            check_not_in_use(run_dir(out, run), "run folder")
        except FolderInUse as error:
            failed.append(f"{run.name} ({error})")
            say(f"  {run.name}: not started, its folder is in use")
            return
        command = _train_command(out, run, plan, lr)
        running.add(run.name)
        say(f"  {run.name}: {'resuming' if '--resume' in command else 'starting'} (log {out / 'logs' / f'{run.name}.log'})")
        try:
            code = _execute(command, out / "logs" / f"{run.name}.log", threads, children, run.name)
        finally:
            running.discard(run.name)
        if code is None:  # the comparison was stopped before it began
            return
        if children.stopping and code in STOPPED:
            stopped.append(run.name)
            say(f"  {run.name}: stopped after its step in progress, with a checkpoint")
            return
        if code != 0:
            failed.append(f"{run.name} (exit {code}, see {out / 'logs' / f'{run.name}.log'})")
            say(f"  {run.name}: failed (exit {code})")
            return
        # A finished run keeps checkpoints/final; the step checkpoints only served resumption, and with a
        # large policy and many runs they would fill the disk.
        for step_checkpoint in (run_dir(out, run) / "checkpoints").glob("step_*"):
            shutil.rmtree(step_checkpoint)
        result = json.loads((run_dir(out, run) / "eval.json").read_text())
        say(f"  {run.name}: {result['accuracy']:.1%} after {result[TOKENS_TOTAL]:,} tokens, {time.time() - t0:.0f} s "
            f"[{time.time() - start:.0f} s in]")

    def start_eval() -> None:
        running.add("start")
        say(f"  starting policy: evaluating on the final set (log {out / 'logs' / 'start.log'})")
        try:
            _evaluate_start(config, plan, out, threads, children)
        finally:
            running.discard("start")

    last_load = time.time()
    with ThreadPoolExecutor(max_workers=plan.jobs) as pool:
        futures = [] if (out / "start" / "eval.json").is_file() else [pool.submit(start_eval)]
        # Two phases when learning rates are chosen: a table run can only start once its method's choice is made.
        phases = [[r for r in pending if r.lr is not None], [r for r in pending if r.lr is None]]
        for phase in phases:
            submitted = [pool.submit(one, run) for run in phase]
            futures += submitted
            waiting = futures if phase is phases[-1] else submitted
            while True:
                _, not_done = wait(waiting, timeout=POLL_S)
                bar.update(tokens_done(out, runs, plan.budget_tokens) - bar.n)
                bar.set_postfix_str(f"{sum(_finished(out, r) for r in runs)}/{len(runs)} runs done")
                if not not_done:
                    break
                if children.stopping:
                    children.stop()  # any command that started after the signal
                if time.time() - last_load >= LOAD_EVERY_S:
                    _record_load(load_path, "during", len(running), threads)
                    last_load = time.time()
        for future in futures:
            try:
                future.result()
            except StartEvaluationFailed as error:  # the runs' results are summarized without the starting row
                failed.append(str(error))
    bar.close()
    if children.stopping:
        signum = stop.requested or signal.SIGTERM
        runs_stopped = f"{', '.join(stopped)} stopped after their step in progress, each with a checkpoint" if stopped else "no run was in progress"
        raise Interrupted(signum, f"stopped by {signal_name(signum)}: {runs_stopped}; finished runs are kept. Rerun the same "
                                  f"command to continue the comparison (the stopped runs resume where they stopped).")
    if measuring:
        _record_load(load_path, "after", 0, threads)
    results = summarize_or_report(out)
    write_outputs(out, results)
    if failed:
        raise RuntimeError(
            f"{len(failed)} run(s) failed: {'; '.join(failed)}. The other runs are kept; rerun the same command to retry "
            f"the failed ones (interrupted runs resume from their last checkpoint)."
        )
    return results


class StartEvaluationFailed(RuntimeError):
    """The starting policy's evaluation failed; the comparison is summarized without it."""


STOPPED = (exit_status(signal.SIGINT), exit_status(signal.SIGTERM))
"""Exit statuses of a run that stopped when asked to, with a checkpoint (sirl.interrupt)."""


def _evaluate_start(config: ExperimentConfig, plan: ComparePlan, out: Path, threads: int, children: Children | None = None) -> None:
    """The starting policy on the final evaluation set, by difficulty (the first row of the tables)."""
    n = plan.final_problems or config.eval.n_problems
    code = _execute(
        [sys.executable, "-m", "sirl.cli", "eval", "--config", str(out / "base.yaml"), "--out", str(out / "start"),
         "--quiet", f"--eval.n_problems={n}"],
        out / "logs" / "start.log", threads, children, "start",
    )
    if code is None or (children is not None and children.stopping):  # stopped: a rerun evaluates it
        return
    if code != 0:
        raise StartEvaluationFailed(f"evaluating the starting policy failed (exit {code}); see {out / 'logs' / 'start.log'}")


# --- summarizing (reads the comparison folder only) ----------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mean_std(values: list[float]) -> dict[str, Any]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None, "values": []}
    # One value has no spread: its std is None (shown as nothing), never a zero-width error bar.
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None, "values": values}


def _interp(xs: list[float], ys: list[float], grid: list[float]) -> list[float]:
    """Piecewise-linear ``ys(xs)`` at ``grid``; held flat past the ends (xs ascending)."""
    out = []
    for g in grid:
        if g <= xs[0]:
            out.append(ys[0])
        elif g >= xs[-1]:
            out.append(ys[-1])
        else:
            i = next(i for i in range(1, len(xs)) if xs[i] >= g)
            frac = (g - xs[i - 1]) / (xs[i] - xs[i - 1]) if xs[i] > xs[i - 1] else 1.0
            out.append(ys[i - 1] + frac * (ys[i] - ys[i - 1]))
    return out


def _finite(values: list[Any]) -> list[float]:
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def paired_difference(a: dict[int, list[float]], b: dict[int, list[float]], n_boot: int = 4000, seed: int = 0) -> dict | None:
    """Mean accuracy of method A minus method B with a 95% bootstrap interval that resamples both sources of
    variation, pairing what the methods share: the seeds both have (a seed fixes a run's prompts and
    sampling stream; both methods start from the same policy), and the held-out problems (the same for
    every run). ``a[seed]`` is one run's reward per final held-out problem. None without a common seed."""
    seeds = sorted(set(a) & set(b))
    lengths = {len(a[s]) for s in seeds} | {len(b[s]) for s in seeds}
    if not seeds or len(lengths) != 1 or lengths == {0}:  # no common seed, or runs without per-problem rewards
        return None
    diff_SP = np.array([a[s] for s in seeds], dtype=np.float64) - np.array([b[s] for s in seeds], dtype=np.float64)
    rng = np.random.default_rng(seed)
    S, P = diff_SP.shape
    draws = np.empty(n_boot)
    for i in range(n_boot):  # seeds and problems drawn with replacement, together
        draws[i] = diff_SP[rng.integers(0, S, S)][:, rng.integers(0, P, P)].mean()
    low, high = np.quantile(draws, [0.025, 0.975])
    return {"mean": float(diff_SP.mean()), "ci95": [float(low), float(high)], "seeds": seeds, "problems": P}


@dataclass(frozen=True)
class RunCurve:
    """One finished run, as the summary uses it: accuracy and trained tokens on the generated-token grid,
    its final figure and the per-problem rewards behind it."""

    accuracy: list[float]
    trained_tokens: list[float] | None
    final_accuracy: float
    rewards: list[float]


def first_crossing(grid: list[float], curve: list[float], target: float) -> float | None:
    """The first x where the piecewise-linear ``curve(grid)`` reaches ``target``; None if it never does."""
    for i, value in enumerate(curve):
        if value >= target - 1e-12:
            if i == 0:
                return float(grid[0])
            before = curve[i - 1]  # below the target, so value > before
            return grid[i - 1] + (target - before) / (value - before) * (grid[i] - grid[i - 1])
    return None


def _reach(runs: list[RunCurve], target: float, grid: list[float]) -> tuple[float | None, float | None]:
    """Generated and trained tokens at which the mean curve of ``runs`` first reaches ``target``."""
    curve = np.mean([r.accuracy for r in runs], axis=0).tolist()
    generated = first_crossing(grid, curve, target)
    if generated is None or any(r.trained_tokens is None for r in runs):
        return generated, None
    trained = np.mean([r.trained_tokens for r in runs], axis=0).tolist()
    return generated, _interp(grid, trained, [generated])[0]


def tokens_to_reach(method: dict[int, RunCurve], reference: dict[int, RunCurve], grid: list[float],
                    n_boot: int = 2000, seed: int = 0) -> dict | None:
    """The tokens a method needs to reach the reference's final accuracy (the mean of its runs' final
    figures), as ratios to the tokens the reference itself needs, on both budget axes (generated and
    trained tokens), with 95% bootstrap intervals that resample the seeds both ran, paired. Each estimate
    reads where the mean accuracy curve first crosses the target; a resample in which the method never
    gets there within the budget counts as an infinite ratio ("not reached"), so an interval can be open
    above. None without a common seed."""
    seeds = sorted(set(method) & set(reference))
    if not seeds:
        return None

    def estimate(chosen: list[int]) -> tuple[float | None, float | None, float | None]:
        target = statistics.fmean(reference[s].final_accuracy for s in chosen)
        mine = _reach([method[s] for s in chosen], target, grid)
        theirs = _reach([reference[s] for s in chosen], target, grid)
        ratios = []
        for m, r in zip(mine, theirs):
            ratios.append(None if r is None or r <= 0 else (math.inf if m is None else m / r))
        return mine[0], ratios[0], ratios[1]

    generated, generated_ratio, trained_ratio = estimate(seeds)
    rng = np.random.default_rng(seed)
    draws: list[tuple[float | None, float | None]] = []
    for _ in range(n_boot):
        _, g, t = estimate([seeds[i] for i in rng.integers(0, len(seeds), len(seeds))])
        draws.append((g, t))

    def interval(values: list[float | None]) -> list[float] | None:
        values = sorted(v for v in values if v is not None)
        if len(values) < n_boot // 2:  # the reference itself did not cross in most resamples
            return None
        return [values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]]

    def finite(value: float | None) -> float | None:  # JSON has no infinity: "not reached" is null
        return None if value is None or math.isinf(value) else value

    bounds = {axis: interval([d[i] for d in draws]) for i, axis in enumerate(("generated", "trained"))}
    return {
        "target": statistics.fmean(reference[s].final_accuracy for s in seeds),
        "generated_tokens": generated,
        "generated_ratio": finite(generated_ratio),
        "generated_ratio_ci95": bounds["generated"] and [finite(v) for v in bounds["generated"]],
        "trained_ratio": finite(trained_ratio),
        "trained_ratio_ci95": bounds["trained"] and [finite(v) for v in bounds["trained"]],
        "seeds": seeds,
    }


COMMANDS_FILE = "commands.jsonl"
"""One line per `sirl compare` call on a comparison folder: its command line, time, and the sirl commit."""
PER_RUN_KEYS = ("seed", "out")
"""Config keys that differ from run to run of one method by design, left out of its settings."""


def sirl_revision() -> dict[str, Any]:
    """The git commit of the sirl source that runs, and whether the checkout's tracked files differ from it
    (``dirty``); commit "unknown" and dirty None outside a git checkout or without git."""
    source = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=60)
        if head.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": "unknown", "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def record_command(out: Path, argv: list[str]) -> dict[str, Any]:
    """Append this call's command line (``argv``, as ``sys.argv`` holds it; shown as ``sirl ARGS``), the time,
    the working directory and :func:`sirl_revision` to the folder's commands.jsonl. Not part of the plan: a
    comparison continued or grown by another command line is the same comparison."""
    entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": shlex.join(["sirl", *argv[1:]]), "argv": list(argv),
             "cwd": os.getcwd(), "sirl": sirl_revision()}
    with (out / COMMANDS_FILE).open("a") as f:
        f.write(json.dumps(entry) + "\n")
    return entry


def _flat_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config dict by dotted key (task.args stays one value, as in sirl.config.config_differences)."""
    out: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value and key != "task.args":
            out.update(_flat_config(value, key + "."))
        else:
            out[key] = value
    return out


def settings_from_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """The settings of a resolved config (a run's config.yaml) that differ from sirl's defaults
    (``ExperimentConfig()``), by dotted key, without the keys that differ run to run (:data:`PER_RUN_KEYS`).
    A key the saved config lacks took its default then; a key it has that sirl no longer knows is kept; a key at a
    place an older sirl had it is read at today's (sirl.config.read_old_places)."""
    defaults = _flat_config(to_dict(ExperimentConfig()))
    missing = object()
    return {key: value for key, value in sorted(_flat_config(read_old_places(saved)).items())
            if key not in PER_RUN_KEYS and defaults.get(key, missing) != value}


def method_settings(folders: list[Path]) -> dict[str, Any] | None:
    """What a method's finished runs ran with (:func:`settings_from_defaults` of their config.yaml):
    ``shared``, the settings all of them have, and ``by_seed``, any that differ between seeds (seed ->
    value). None without config.yaml."""
    per_seed = {int(d.name.removeprefix("seed")): settings_from_defaults(yaml.safe_load((d / "config.yaml").read_text()))
                for d in folders if (d / "config.yaml").is_file()}
    if not per_seed:
        return None
    defaults = _flat_config(to_dict(ExperimentConfig()))
    shared, by_seed = {}, {}
    for key in sorted({k for settings in per_seed.values() for k in settings}):
        values = {seed: settings.get(key, defaults.get(key)) for seed, settings in per_seed.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) == 1:
            shared[key] = next(iter(values.values()))
        else:
            by_seed[key] = {str(seed): value for seed, value in values.items()}
    return {"shared": shared, "by_seed": by_seed}


def summarize(out: Path) -> dict:
    """results.json's content, from the comparison folder. Timing lives under each method's ``timing`` and
    under ``machine``: everything else is a deterministic function of the runs."""
    plan = ComparePlan(**json.loads((out / "compare.json").read_text()))
    config = yaml.safe_load((out / "base.yaml").read_text())
    failed: dict[str, str] = {}  # report parts that could not be built (_report_part)
    grid = list(range(0, plan.budget_tokens + 1, plan.eval_every_tokens))
    if grid[-1] != plan.budget_tokens:
        grid.append(plan.budget_tokens)
    start_path = out / "start" / "eval.json"
    start = json.loads(start_path.read_text()) if start_path.is_file() else None
    methods: dict[str, dict] = {}
    per_run: dict[str, dict[int, RunCurve]] = {}
    for method in plan.methods:
        finished = [run_dir(out, RunSpec(method, s)) for s in range(plan.seeds)]
        finished = [d for d in finished if (d / "eval.json").is_file()]
        if not finished:
            continue
        finals = [json.loads((d / "eval.json").read_text()) for d in finished]
        figures = [final_figure(d, plan) for d in finished]
        logs = [_read_jsonl(d / "metrics.jsonl") for d in finished]
        curves = []
        for d, rows, figure in zip(finished, logs, figures):
            points = [(r[TOKENS_TOTAL], r[EVAL_ACCURACY]) for r in rows if EVAL_ACCURACY in r]
            curves.append(_interp([p[0] for p in points], [p[1] for p in points], grid))
            trained = [(r[TOKENS_TOTAL], r.get(TOKENS_TRAINED, 0 if r[STEP] == 0 else None)) for r in rows]
            trained = [p for p in trained if p[1] is not None]
            trained_curve = _interp([p[0] for p in trained], [p[1] for p in trained], grid) if len(trained) > 1 else None
            per_run.setdefault(method, {})[int(d.name.removeprefix("seed"))] = RunCurve(curves[-1], trained_curve, figure["accuracy"], figure["rewards"])
        mean_curve = [statistics.mean(c[i] for c in curves) for i in range(len(grid))]
        std_curve = [statistics.stdev(c[i] for c in curves) if len(curves) > 1 else 0.0 for i in range(len(grid))]
        last = [rows[-1] for rows in logs]
        by_difficulty = _report_part(failed, "table by difficulty", lambda: [figure_by_difficulty(f, e) for f, e in zip(figures, finals)], [])
        levels = sorted({k for b in by_difficulty for k in b}, key=difficulty_order)
        methods[method] = {
            "seeds": [int(d.name.removeprefix("seed")) for d in finished],
            "final_accuracy": _mean_std([f["accuracy"] for f in figures]),
            "final_evaluations": min(len(f["evaluations"]) for f in figures),
            "last_evaluation_accuracy": _mean_std([f["accuracy"] for f in finals]),
            "final_n": finals[0]["n"],
            "steps": _mean_std([f[STEP] for f in finals]),
            "tokens": _mean_std([f[TOKENS_TOTAL] for f in finals]),
            "tokens_per_step": _mean_std([r[TOKENS_TOTAL] / r[STEP] for r in last]),
            "trained_tokens": _mean_std([r.get(TOKENS_TRAINED) for r in last]),
            "max_step_tokens": max(_step_tokens(rows) for rows in logs),
            "probe_share": _mean_std([r[TOKENS_PROBE] / max(r[TOKENS_TOTAL], 1) for r in last]),
            "verify_share": _mean_std([r[TOKENS_VERIFY] / max(r[TOKENS_TOTAL], 1) for r in last]),
            "localization_accuracy": _mean_std([_mean_of(rows, LOC_ACCURACY) for rows in logs]),
            "probes_per_failure": _mean_std([_mean_of(rows, LOC_PROBES_PER_FAILURE, last_fraction=0.25) for rows in logs]),
            "selfloc_accuracy": _mean_std([_mean_of(rows, SELFLOC_ACCURACY, last_fraction=0.25) for rows in logs]),
            # model state the method holds besides the policy and its optimizer (PRIME's reward model and reference)
            "method_state_mb": _mean_std([_mean_of(rows, METHOD_STATE_MB) for rows in logs]),
            "settings": method_settings(finished),
            "by_difficulty": {
                level_from_key(level): _mean_std([b[level]["accuracy"] for b in by_difficulty if level in b]) for level in levels
            },
            "curve": {"tokens": grid, "mean": mean_curve, "std": std_curve},
            "probes_curve": _probes_curve(logs, grid),
            "timing": {
                "wall_clock_s": _mean_std([rows[-1][ELAPSED_S] for rows in logs]),
                "eval_points": [[(r[ELAPSED_S], r[EVAL_ACCURACY]) for r in rows if EVAL_ACCURACY in r] for rows in logs],
            },
        }
    reference = None
    bands = _report_part(failed, "difficulty bands", lambda: difficulty_bands(start, methods, plan.hard_below))
    ref = plan.reference_method
    if ref in methods:
        rewards = {method: {seed: run.rewards for seed, run in runs.items()} for method, runs in per_run.items()}
        for method, row in methods.items():
            if method != ref:
                row["difference_from_reference"] = paired_difference(rewards[method], rewards[ref])
                if bands:
                    row["band_difference_from_reference"] = _report_part(
                        failed, "differences by band", lambda: band_differences(rewards[method], rewards[ref], start, bands))
        reference = {"method": ref, "final_accuracy": methods[ref]["final_accuracy"]["mean"]}
        for method, row in methods.items():
            row["tokens_to_reference"] = _report_part(failed, "tokens to reach the reference", lambda: tokens_to_reach(per_run[method], per_run[ref], grid))
    choice = chosen_learning_rates(out, plan)
    for method, row in methods.items():
        if choice and method in choice:
            row["learning_rate"] = choice[method]
    return {
        "task": config["task"],
        "model": config["model"]["path"],
        "plan": asdict(plan),
        "start": None if start is None else {"accuracy": start["accuracy"], "n": start["n"], "by_difficulty": start["by_difficulty"]},
        "reference": reference,
        "learning_rate": (config.get("train") or {}).get("lr"),
        "difficulty_bands": bands,
        "methods": methods,
        "missing_runs": [f"{m}-seed{s}" for m in plan.methods for s in range(plan.seeds)
                         if not (run_dir(out, RunSpec(m, s)) / "eval.json").is_file()],
        "eval_sets": {
            # The curves (and tokens to reach the reference's final accuracy) come from the periodic evaluations during training;
            # the tables, the starting policy and the final markers from the final set.
            "periodic_n": plan.final_problems if plan.final_problems and plan.final_evaluations > 1 else config["eval"]["n_problems"],
            "final_n": start["n"] if start else next((row["final_n"] for row in methods.values()), None),
        },
        "machine": {**_machine(plan), "load": load_summary(out / "logs" / "load.jsonl")},
        "commands": _read_jsonl(out / COMMANDS_FILE) if (out / COMMANDS_FILE).is_file() else [],
        "failed_parts": failed,
    }


def load_summary(path: Path) -> dict | None:
    """The 1-minute load average before, during (mean and max) and after the runs, from logs/load.jsonl;
    None without samples. A load above the CPU count means processes waited for a CPU, so wall-clock
    figures measured then are slower than the machine is."""
    samples = _read_jsonl(path) if path.is_file() else []
    if not samples:
        return None
    by_phase = {phase: [r["load"][0] for r in samples if r["phase"] == phase] for phase in ("before", "during", "after")}
    during = by_phase["during"]
    return {
        "cpu_count": samples[-1]["cpu_count"],
        "before": statistics.mean(by_phase["before"]) if by_phase["before"] else None,
        "during_mean": statistics.mean(during) if during else None,
        "during_max": max(during) if during else None,
        "during_samples": len(during),
        "after": by_phase["after"][-1] if by_phase["after"] else None,
    }


def difficulty_bands(start: dict | None, methods: dict[str, dict], hard_below: float = HARD_LEVEL) -> dict | None:
    """Pool the final accuracy by difficulty into two bands: the levels where the starting policy is below
    ``hard_below`` ("hard": docs/method.md's first hypothesis is about prompts it almost never solves) and the rest,
    each level weighted by its problem count. Adds ``hard_levels_accuracy`` and ``other_levels_accuracy``
    (mean and std over seeds) to each method's row; works on a summary read back from results.json too."""
    if start is None or not start["by_difficulty"]:
        return None
    levels = {level_from_key(str(k)): v for k, v in start["by_difficulty"].items()}
    hard = sorted((k for k, v in levels.items() if v["accuracy"] < hard_below), key=difficulty_order)
    bands = {"hard": hard, "other": sorted((k for k in levels if k not in hard), key=difficulty_order)}
    for row in methods.values():
        by_level = {level_from_key(str(k)): v for k, v in row["by_difficulty"].items()}
        for band, members in bands.items():
            n = sum(levels[k]["n"] for k in members)
            known = n and all(k in by_level and len(by_level[k]["values"]) == len(row["seeds"]) for k in members)
            per_seed = [sum(levels[k]["n"] * by_level[k]["values"][i] for k in members) / n for i in range(len(row["seeds"]))] if known else []
            row[f"{band}_levels_accuracy"] = _mean_std(per_seed)
    return bands


def band_differences(a: dict[int, list[float]], b: dict[int, list[float]], start: dict, bands: dict) -> dict | None:
    """:func:`paired_difference` of methods A and B on the final problems of each difficulty band (hard, other),
    the problems picked by the levels the starting policy's evaluation recorded for them (the final set is the
    same for every run). None when that evaluation has no per-problem levels (written before they were kept)."""
    levels = start.get("difficulties") or []
    if not levels or any(len(rewards) != len(levels) for rewards in (*a.values(), *b.values())):
        return None
    out = {}
    for band, members in bands.items():
        picked = [i for i, level in enumerate(levels) if level in set(members)]
        if picked:
            out[band] = paired_difference({s: [r[i] for i in picked] for s, r in a.items()}, {s: [r[i] for i in picked] for s, r in b.items()})
    return out


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


def _probes_curve(logs: list[list[dict]], grid: list[float]) -> dict | None:
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
    return {"tokens": mids, "mean": means}


def _machine(plan: ComparePlan) -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "jobs": plan.jobs,
        "threads_per_run": _threads(plan),
    }


# --- writing -------------------------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def load_text(machine: dict) -> str:
    """One sentence on the machine's load while the runs' wall-clock was measured."""
    load = machine.get("load")
    own = machine["jobs"] * machine["threads_per_run"]
    if not load:
        return "The machine's load was not recorded (no logs/load.jsonl), so the wall-clock figures may include other work."
    parts = []
    if load["before"] is not None:
        parts.append(f"{load['before']:.1f} before the runs")
    if load["during_mean"] is not None:
        parts.append(f"{load['during_mean']:.1f} on average and {load['during_max']:.1f} at most during them "
                     f"({_count(load['during_samples'], 'sample')}, {LOAD_EVERY_S:.0f} s apart)")
    if load["after"] is not None:
        parts.append(f"{load['after']:.1f} after")
    return (f"Machine load (1-minute load average): {', '.join(parts)}, on {_count(load['cpu_count'], 'CPU core')}. The "
            f"comparison's own runs use up to {_count(own, 'thread')}, so load beyond that was other work slowing them down.")


def load_caption(machine: dict) -> str:
    """The load in a few words, for the wall-clock plot."""
    load = machine.get("load")
    if not load or load["during_mean"] is None:
        return "machine load not recorded"
    return (f"load avg during runs {load['during_mean']:.1f} (max {load['during_max']:.1f}) on {load['cpu_count']} CPUs; "
            f"own runs: {machine['jobs']} x {_count(machine['threads_per_run'], 'thread')}")


def _pct(stat: dict | None, digits: int = 1) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.{digits}%} ± {stat['std']:.{digits}%}" if stat["std"] else f"{stat['mean']:.{digits}%}"


def _number(stat: dict) -> str:
    return "-" if stat["mean"] is None else f"{stat['mean']:.2f}"


def _tokens(n: float | None) -> str:
    if n is None:
        return "not reached"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _difference(diff: dict | None) -> str:
    """A difference from the reference in points with its interval; one inside its interval reads as no difference."""
    if not diff:
        return ""
    low, high = diff["ci95"]
    verdict = "" if low > 0 or high < 0 else " (no difference)"
    return f"{100 * diff['mean']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]{verdict}"


def _ratio(value: float | None, ci: list[float | None] | None) -> str:
    """A token ratio to the reference's with its interval; None reads as not reached within the budget."""
    def one(v: float | None) -> str:
        return "not reached" if v is None else f"{v:.2f}"

    if ci is None:
        return one(value)
    return f"{one(value)} [{one(ci[0])}, {one(ci[1])}]"


def results_markdown(results: dict) -> str:
    plan, methods, start = results["plan"], results["methods"], results["start"]
    task = results["task"]
    sets = results.get("eval_sets") or {}
    final_n = f"n={sets['final_n']}" if sets.get("final_n") else "the final set"
    periodic_n = f"n={sets['periodic_n']}" if sets.get("periodic_n") else "the periodic set"
    ref = plan.get("reference") or REFERENCE
    lines = [
        f"# {task['name']}: {', '.join(plan['methods'])} at {plan['budget_tokens']:,} generated tokens",
        "",
        f"Task `{task['name']}` {json.dumps(task.get('args') or {})}, starting policy `{results['model']}`"
        + (f" ({start['accuracy']:.1%} on the final set, n={start['n']})" if start else "")
        + f". {_count(plan['seeds'], 'seed')} per method; every run generates {plan['budget_tokens']:,} tokens (policy samples, "
        "probes and self-verification all counted) and stops at the step that crosses that budget. "
        + (f"A run's final accuracy is the mean of its last {_count(plan.get('final_evaluations', 1), 'evaluation')} on the final "
           f"held-out set ({final_n}), problem by problem; " if plan.get("final_evaluations", 1) > 1 else
           f"Final accuracies are on the final held-out set ({final_n}); ")
        + f"the curves come from the periodic evaluations during training ({periodic_n}"
        + (", the same problems)." if sets.get("periodic_n") == sets.get("final_n") else
           ", the first of the same problems)." if (sets.get("periodic_n") or 0) <= (sets.get("final_n") or 0) else ")."),
        "",
        f"The difference from {ref} is in points of final accuracy, with a 95% bootstrap interval that resamples the "
        "seeds both methods ran (paired) and the final held-out problems (the same for every run); a difference "
        "whose interval holds 0 is no difference.",
        "",
    ]
    reference = results["reference"]
    target = f"{ref}'s final accuracy ({reference['final_accuracy']:.1%})" if reference else f"{ref}'s final accuracy"
    lines += [
        f"Tokens to reach {target}: where a method's mean accuracy curve first crosses it, as a ratio to where {ref}'s own "
        "mean curve does, in generated tokens and in trained tokens (every row's tokens through forward and backward), "
        "with 95% bootstrap intervals over the seeds both ran (paired); \"not reached\" means not within the budget.",
        "",
    ]
    spread = "mean ± std over seeds" if plan["seeds"] > 1 else "1 seed"
    lines += [
        f"| method | final accuracy ({final_n}; {spread}) | difference from {ref} (95% CI) | seeds | tokens to reach {target} | "
        f"generated-token ratio to {ref} (95% CI) | trained-token ratio to {ref} (95% CI) | learning rate | wall-clock (min) | "
        "steps | trained tokens | probe tokens | localization accuracy | probes per failure (last quarter) | "
        "self-localization accuracy (last quarter) | method's model memory (MB) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in methods.items():
        seeds = ", ".join(f"{v:.1%}" for v in row["final_accuracy"]["values"])
        wall = row["timing"]["wall_clock_s"]["mean"]
        reach = row.get("tokens_to_reference") or {}
        lr = f"{row['learning_rate']['lr']:g}" if row.get("learning_rate") else f"{results.get('learning_rate', '-')}"
        lines.append(
            f"| {name} | {_pct(row['final_accuracy'])} | {_difference(row.get('difference_from_reference'))} | {seeds} | "
            f"{_tokens(reach.get('generated_tokens')) if reach else '-'} | "
            f"{_ratio(reach.get('generated_ratio'), reach.get('generated_ratio_ci95')) if reach else '-'} | "
            f"{_ratio(reach.get('trained_ratio'), reach.get('trained_ratio_ci95')) if reach else '-'} | "
            f"{lr} | {wall / 60:.1f} | "
            f"{row['steps']['mean']:.0f} | {'-' if row['trained_tokens']['mean'] is None else _tokens(row['trained_tokens']['mean'])} | {row['probe_share']['mean']:.0%} | {_pct(row['localization_accuracy'])} | "
            f"{_number(row['probes_per_failure'])} | "
            f"{_pct(row['selfloc_accuracy'])} | {_megabytes(row.get('method_state_mb'))} |"
        )
    lines += ["", "Trained tokens count every token through a forward and backward pass: the policy's rows each epoch, and "
              "those of a model the method trains itself (PRIME's reward model). A method's model memory is the state it "
              "holds besides the policy and its optimizer (PRIME: its reward model's weights, gradients and AdamW moments, "
              "and the frozen reference); - for none."]
    chosen = {name: row["learning_rate"] for name, row in methods.items() if row.get("learning_rate")}
    if chosen:
        rates = sorted({float(lr) for c in chosen.values() for lr in c["accuracy_by_lr"]})
        seed = next(iter(chosen.values()))["seed"]
        lines += ["", f"Learning rate per method: the final accuracy of one run at each rate on seed {seed}, which the table "
                  "does not use; the best (bold) ran the table's seeds.", "",
                  "| method | " + " | ".join(f"lr {lr:g}" for lr in rates) + " |", "|---|" + "---:|" * len(rates)]
        for name, c in chosen.items():
            cells = []
            for lr in rates:
                value = c["accuracy_by_lr"].get(f"{lr:g}")
                text = "-" if value is None else f"{value:.1%}"
                cells.append(f"**{text}**" if lr == c["lr"] else text)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    levels = sorted({str(level) for row in methods.values() for level in row["by_difficulty"]}
                    | ({str(k) for k in start["by_difficulty"]} if start else set()), key=difficulty_order)
    if levels:
        lines += ["", f"Final accuracy by difficulty on the final set (`{task['name']}`'s difficulty level; mean over seeds, n per "
                  "level in the header):", ""]
        counts = start["by_difficulty"] if start else {}
        header = [f"{level}" + (f" (n={counts[str(level)]['n']})" if str(level) in counts else "") for level in levels]
        lines += ["| method | " + " | ".join(header) + " |", "|---|" + "---:|" * len(levels)]
        if start:
            lines.append("| starting policy | " + " | ".join(
                f"{start['by_difficulty'][str(level)]['accuracy']:.1%}" if str(level) in start["by_difficulty"] else "-" for level in levels) + " |")
        for name, row in methods.items():
            cells = [_pct(row["by_difficulty"].get(level) or row["by_difficulty"].get(str(level)), 1) for level in levels]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    bands = results.get("difficulty_bands")
    if bands and bands["hard"] and bands["other"]:
        lines += ["", f"Pooled over the levels where the starting policy is below {plan.get('hard_below', HARD_LEVEL):.0%} (hard: {bands['hard']}) and over "
                  f"the others ({bands['other']}), each level weighted by its problem count; mean ± std over seeds:", "",
                  f"| method | hard levels | hard, difference from {ref} | other levels | other, difference from {ref} |",
                  "|---|---:|---:|---:|---:|"]
        if start:
            def pooled(levels):
                n = sum(start["by_difficulty"][str(level)]["n"] for level in levels)
                return sum(start["by_difficulty"][str(level)]["n"] * start["by_difficulty"][str(level)]["accuracy"] for level in levels) / n
            lines.append(f"| starting policy | {pooled(bands['hard']):.1%} | | {pooled(bands['other']):.1%} | |")
        for name, row in methods.items():
            band = row.get("band_difference_from_reference") or {}
            cells = ["" if name == ref else _difference(band.get(b)) for b in ("hard", "other")]
            lines.append(f"| {name} | {_pct(row.get('hard_levels_accuracy'))} | {cells[0]} | {_pct(row.get('other_levels_accuracy'))} | {cells[1]} |")
        lines += ["", f"Differences by band: paired over the seeds both ran and the band's final problems, 95% bootstrap "
                  f"interval (blank without per-problem levels in the starting policy's evaluation)."]
    if results["missing_runs"]:
        lines += ["", f"Runs not finished (left out of the table): {', '.join(results['missing_runs'])}."]
    machine = results["machine"]
    lines += [
        "",
        f"![accuracy against generated tokens](accuracy_vs_tokens.png) Lines: the periodic evaluations ({periodic_n}) "
        f"interpolated onto the token grid; diamonds: the final set ({final_n}), as in the table.",
        f"![accuracy against wall-clock](accuracy_vs_time.png) The periodic evaluations ({periodic_n}) against wall-clock.",
        "![probes per failure](probes_per_failure.png)",
        f"![accuracy by difficulty](accuracy_by_difficulty.png) The final set ({final_n}), as in the table by difficulty.",
        "",
        f"Machine: {machine['processor']}, {_count(machine['cpu_count'], 'CPU core')}{', GPU ' + machine['gpu'] if machine['gpu'] else ''}; "
        f"{machine['jobs']} run(s) at a time with {_count(machine['threads_per_run'], 'thread')} each; Python {machine['python']}, "
        f"torch {machine['torch']}. Wall-clock includes the periodic held-out evaluations (the same number for every method). "
        + load_text(machine),
        "",
        *what_ran_markdown(results),
    ]
    return "\n".join(lines)


def _megabytes(stat: dict | None) -> str:
    return "-" if not stat or stat.get("mean") is None else f"{stat['mean']:.1f}"


def _setting(key: str, value: Any) -> str:
    return f"`{key}={value if isinstance(value, str) else json.dumps(value)}`"


def what_ran_markdown(results: dict) -> list[str]:
    """The results.md section that lets a reader rerun the comparison: its command lines with the sirl
    commit of each, and every method's settings that differ from sirl's defaults (shared ones once)."""
    lines = ["## What ran", ""]
    commands = results.get("commands") or []
    if commands:
        lines.append("The command (`commands.jsonl` holds every call on this folder, with its full argv):")
        lines.append("")
        for entry in commands:
            revision = entry.get("sirl") or {}
            state = {True: ", with uncommitted changes to tracked files", False: "", None: ""}[revision.get("dirty")]
            lines += [f"    {entry['command']}", "",
                      f"(in `{entry.get('cwd', '?')}`, {entry['time']}; sirl commit {revision.get('commit', 'unknown')}{state})", ""]
    else:
        lines += ["The command line was not recorded (the folder predates commands.jsonl).", ""]
    settings = {name: row.get("settings") for name, row in results["methods"].items()}
    known = {name: s for name, s in settings.items() if s}
    if not known:
        return lines + ["The runs' settings were not recorded (no config.yaml in their folders).", ""]
    common = {k: v for k, v in next(iter(known.values()))["shared"].items()
              if all(k in s["shared"] and s["shared"][k] == v for s in known.values())}
    lines += [
        "Settings that differ from sirl's defaults (each run's config.yaml against `ExperimentConfig()`); every method's runs "
        "share these:",
        "",
        ", ".join(_setting(k, v) for k, v in common.items()) or "(none)",
        "",
        "and each method adds its own (a variant: its method and overrides):",
        "",
        "| method | settings besides the shared ones |",
        "|---|---|",
    ]
    for name, s in settings.items():
        if not s:
            lines.append(f"| {name} | not recorded |")
            continue
        own = [_setting(k, v) for k, v in s["shared"].items() if k not in common]
        own += [f"`{k}` by seed: {json.dumps(by_seed)}" for k, by_seed in s["by_seed"].items()]
        lines.append(f"| {name} | {', '.join(own) or '(none)'} |")
    return lines + [""]


def _report_part(failed: dict[str, str], name: str, build: Callable[[], Any], fallback: Any = None) -> Any:
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


def summarize_or_report(out: Path) -> dict:
    """:func:`summarize`; should it fail as a whole, what can be read without it (each finished run's eval.json,
    see :func:`_bare_markdown`) with the failure in ``failed_parts["summary"]``, so that results.json and
    results.md are written whatever goes wrong."""
    failed: dict[str, str] = {}
    results = _report_part(failed, "summary", lambda: summarize(out))
    if results is not None:
        return results
    plan = json.loads((out / "compare.json").read_text()) if (out / "compare.json").is_file() else None
    return {"plan": plan, "methods": {}, "runs": _finished_runs(out), "failed_parts": failed}


def _finished_runs(out: Path) -> dict[str, dict]:
    """Every finished run of the folder (runs/<method>[/lr<r>]/seed<k>/eval.json) by its path: accuracy,
    steps and generated tokens of its final evaluation, or the error that reading it gave."""
    runs: dict[str, dict] = {}
    for path in sorted((out / "runs").glob("**/eval.json")):
        name = path.parent.relative_to(out / "runs").as_posix()
        try:
            final = json.loads(path.read_text())
            runs[name] = {"accuracy": final["accuracy"], STEP: final.get(STEP), TOKENS_TOTAL: final.get(TOKENS_TOTAL)}
        except (OSError, ValueError, KeyError, TypeError) as error:
            runs[name] = {"error": f"{type(error).__name__}: {error}"}
    return runs


def _bare_markdown(out: Path) -> str:
    """results.md when its tables could not be built: each finished run's final accuracy, from its eval.json."""
    lines = [f"# Comparison in {out}: the summary tables could not be built (see below)", "",
             "Each finished run's final accuracy (its eval.json; the last evaluation only):", ""]
    for name, run in _finished_runs(out).items():
        label = " ".join(part.replace("seed", "seed ", 1) if part.startswith("seed") else part for part in name.split("/"))
        if "error" in run:
            lines.append(f"- {label}: unreadable eval.json ({run['error']})")
        else:
            tokens = f" after {run[TOKENS_TOTAL]:,} generated tokens" if isinstance(run.get(TOKENS_TOTAL), int) else ""
            lines.append(f"- {label}: {run['accuracy']:.1%}{tokens}")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, results: dict) -> None:
    """results.json, results.md and the plots. A part that fails (:func:`_report_part`) is named in both files
    with its exception, and everything else is written all the same; where results.md's tables fail, it
    lists each finished run's final accuracy instead."""
    failed = results.setdefault("failed_parts", {})
    markdown = None
    if "task" in results:  # a summary, not the bare one summarize_or_report falls back to
        markdown = _report_part(failed, "results.md's tables", lambda: results_markdown(results))
    if results.get("methods"):
        _report_part(failed, "plots", lambda: plot_comparison(out, results))
    if markdown is None:
        markdown = _bare_markdown(out)
    if failed:
        markdown += "\n## Report parts that could not be built\n\n" + "".join(f"- {name}: {error}\n" for name, error in failed.items())
        markdown += ("\nEverything else in this report is complete; the traceback of each failure is in the command's error output. "
                     "Rerunning the same command on this folder rewrites the report and keeps the runs.\n")
    write_atomic(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    write_atomic(out / "results.md", markdown)


def plot_comparison(out: Path, results: dict) -> None:
    """The four PNGs. Each says which evaluations it shows: the curves come from the periodic set, the
    diamonds and the bars from the final set of the tables. Spread is drawn only where there are at least
    two seeds (one seed has none to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = results["methods"]
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(methods)}
    title = results["task"]["name"]
    sets = results.get("eval_sets") or {}
    periodic = f"periodic evaluations, n={sets['periodic_n']}" if sets.get("periodic_n") else "periodic evaluations"
    final = f"final set, n={sets['final_n']}" if sets.get("final_n") else "final set"
    start = results["start"]

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, row in methods.items():
        xs = [t / 1e3 for t in row["curve"]["tokens"]]
        mean, std = row["curve"]["mean"], row["curve"]["std"]
        seeds = len(row["seeds"])
        ax.plot(xs, [100 * m for m in mean], label=f"{name} ({_count(seeds, 'seed')})", color=colors[name], lw=2)
        if seeds > 1:
            ax.fill_between(xs, [100 * (m - s) for m, s in zip(mean, std)], [100 * (m + s) for m, s in zip(mean, std)],
                            color=colors[name], alpha=0.15)
        accuracy, tokens = row["final_accuracy"], row["tokens"]
        ax.errorbar([tokens["mean"] / 1e3], [100 * accuracy["mean"]], yerr=[100 * accuracy["std"]] if accuracy["std"] else None,
                    marker="D", ms=6, color=colors[name], mec="black", mew=0.6, capsize=3, ls="none")
    if start:
        ax.plot([0], [100 * start["accuracy"]], marker="D", ms=6, color="0.6", mec="black", mew=0.6, ls="none",
                label=f"starting policy ({final})")
    k = results["plan"].get("final_evaluations", 1)
    marker = f"final figure: mean of the last {k} evaluations" if k > 1 else "end of each run"
    ax.plot([], [], marker="D", color="white", mec="black", ls="none", label=f"{marker} ({final}, as in the table)")
    spread = " ± std over seeds" if any(len(row["seeds"]) > 1 for row in methods.values()) else ""
    ax.set(xlabel="generated tokens (thousands; samples + probes + verification)", ylabel="held-out accuracy (%)")
    ax.set_title(f"{title}: accuracy at equal generated tokens\nlines: {periodic}, mean{spread}\ndiamonds: {final}", fontsize=10)
    _save(fig, ax, out / "accuracy_vs_tokens.png", legend_size=8)

    fig, ax = plt.subplots(figsize=(7, 4.8))
    for name, row in methods.items():
        for i, points in enumerate(row["timing"]["eval_points"]):
            ax.plot([p[0] / 60 for p in points], [100 * p[1] for p in points], color=colors[name], lw=1.5, alpha=0.8,
                    label=name if i == 0 else None)
    ax.set(xlabel="wall-clock (minutes, one line per seed)", ylabel="held-out accuracy (%)",
           title=f"{title}: accuracy against wall-clock ({periodic})\n{load_caption(results['machine'])}")
    _save(fig, ax, out / "accuracy_vs_time.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for name, row in methods.items():
        curve = row["probes_curve"]
        if curve is None:
            continue
        points = [(t / 1e3, v) for t, v in zip(curve["tokens"], curve["mean"]) if v is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colors[name], label=name)
        drawn = True
    ax.set(xlabel="generated tokens (thousands)", ylabel="probes per localized failure",
           title=f"{title}: probes per failure (mean over seeds)" if drawn else f"{title}: no method localized failures")
    _save(fig, ax, out / "probes_per_failure.png", legend=drawn)

    levels = sorted({str(level) for row in methods.values() for level in row["by_difficulty"]}, key=difficulty_order)
    fig, ax = plt.subplots(figsize=(7, 4.8))
    width = 0.8 / (len(methods) + (1 if start else 0))
    series = ([("starting policy", {str(k): {"mean": v["accuracy"], "std": None} for k, v in start["by_difficulty"].items()}, "0.6")]
              if start else [])
    series += [(f"{name} ({_count(len(row['seeds']), 'seed')})", {str(k): v for k, v in row["by_difficulty"].items()}, colors[name])
               for name, row in methods.items()]
    for i, (name, by_level, color) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(levels))]
        stats = [by_level.get(level) or {} for level in levels]
        means = [100 * stat["mean"] if stat.get("mean") is not None else 0 for stat in stats]
        ax.bar(xs, means, width, color=color, label=name)
        spread = [(x, m, 100 * stat["std"]) for x, m, stat in zip(xs, means, stats) if stat.get("std")]  # none of one seed
        if spread:
            ax.errorbar([x for x, _, _ in spread], [m for _, m, _ in spread], yerr=[e for _, _, e in spread], fmt="none",
                        ecolor="black", elinewidth=1, capsize=2)
    ax.set_xticks(range(len(levels)), [str(level) for level in levels])
    bars = "mean ± std over seeds" if any(len(row["seeds"]) > 1 for row in methods.values()) else "one seed: no error bars"
    ax.set(xlabel="difficulty", ylabel="final held-out accuracy (%)", title=f"{title}: final accuracy by difficulty\n{final}; {bars}")
    _save(fig, ax, out / "accuracy_by_difficulty.png", grid_axis="y", legend_size=8)


def _save(fig, ax, path: Path, legend: bool = True, grid_axis: str = "both", legend_size: float | None = None) -> None:
    """The finish every comparison plot shares: a light grid, the legend, tight layout, PNG, figure closed."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3, axis=grid_axis)
    if legend:
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
