"""Running a comparison: every (method, seed) run as its own ``sirl train`` process, ``plan.jobs`` at a time,
with the machine's load sampled beside them, one writer per folder and a clean stop on SIGINT or SIGTERM.

A run is started, resumed from its latest checkpoint, or skipped when finished (its eval.json), so a killed
comparison continues where it stopped. A run of an earlier comparison killed outright can outlive it: a run
folder another process holds is never deleted or resumed under it (sirl.runlock); that run is reported
failed, naming the holder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from sirl.compare.plan import ComparePlan, RunSpec, finished, lr_runs, read_plan_json, run_dir, table_runs, threads_per_run
from sirl.compare.render import count_of, write_outputs
from sirl.compare.records import Report
from sirl.compare.summary import COMMANDS_FILE, LOAD_EVERY_S, chosen_learning_rates, summarize_or_report
from sirl.config import ConfigError, ExperimentConfig, check_group_size, config_differences, to_yaml
from sirl.interrupt import Interrupted, StopSignals, exit_status, signal_name
from sirl.runlock import FolderInUse, FolderLock, check_not_in_use
from sirl.schema import TOKENS_TOTAL

POLL_S = 2.0
"""Seconds between updates of the progress bar."""
STOPPED = (exit_status(signal.SIGINT), exit_status(signal.SIGTERM))
"""Exit statuses of a run that stopped when asked to, with a checkpoint (sirl.interrupt)."""


class StartEvaluationFailed(RuntimeError):
    """The starting policy's evaluation failed; the comparison is summarized without it."""


# --- one command ---------------------------------------------------------------------------------


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


# --- progress and load ---------------------------------------------------------------------------


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


# --- the what-ran record -------------------------------------------------------------------------


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


# --- the comparison ------------------------------------------------------------------------------


def run_comparison(
    config: ExperimentConfig, plan: ComparePlan, out: Path, quiet: bool = False, command: list[str] | None = None,
) -> Report:
    """Run (or continue) every (method, seed) run of ``plan`` from ``config`` into ``out``, then summarize.
    Raises ConfigError when ``out`` holds a comparison of another config or plan. Unless ``quiet``, a
    progress bar counts the generated tokens of all runs against their budgets, with an ETA. ``command``
    (default ``sys.argv``) is recorded in commands.jsonl with the sirl commit.

    One process at a time writes ``out`` (sirl.runlock). SIGINT or SIGTERM stop the comparison: each run
    in progress gets SIGTERM, stops after its step in progress with a checkpoint, no run starts, and
    Interrupted is raised; rerunning the same command continues them (sirl.interrupt)."""
    from sirl.methods import get_method

    for name in plan.methods:  # before any run starts: a group-relative method with groups of one learns nothing
        algo = plan.algo_of(name)
        check_group_size(dataclasses.replace(config, algo=dataclasses.replace(config.algo, name=algo)), get_method(algo).min_group_size)
    children = Children()
    with FolderLock(out, what="comparison folder"), StopSignals(
        "the runs stop after their step in progress, each with a checkpoint; rerun the same command to continue them",
        name="sirl compare", on_signal=lambda signum: children.stop(), second_ctrl_c_aborts=False,
    ) as stop:
        return _run_comparison(config, plan, out, quiet, command, children, stop)


def _save_settings(config: ExperimentConfig, plan: ComparePlan, out: Path) -> None:
    """base.yaml and compare.json; a folder that holds a comparison with other settings is refused, naming them."""
    out.mkdir(parents=True, exist_ok=True)
    base_path, plan_path = out / "base.yaml", out / "compare.json"
    if base_path.is_file() or plan_path.is_file():
        saved_config = yaml.safe_load(base_path.read_text()) if base_path.is_file() else {}
        changed = config_differences(saved_config, config)
        if plan_path.is_file():
            changed += plan.same_results_as(read_plan_json(plan_path))
        if changed:
            raise ConfigError(
                f"{out} holds a comparison with other settings ({'; '.join(changed)}); rerun it with the same "
                f"ones to continue it, or give a new --out"
            )
    base_path.write_text(to_yaml(config))
    plan_path.write_text(json.dumps(asdict(plan), indent=2) + "\n")


def _run_comparison(
    config: ExperimentConfig, plan: ComparePlan, out: Path, quiet: bool, command: list[str] | None, children: Children, stop: StopSignals,
) -> Report:
    _save_settings(config, plan, out)
    record_command(out, sys.argv if command is None else command)
    # The learning-rate runs first (the table's runs use their choice), then the table's.
    runs = lr_runs(plan) + table_runs(plan)
    pending = [r for r in runs if not finished(out, r)]
    (out / "logs").mkdir(exist_ok=True)
    # The load describes the runs' wall-clock: a rerun that only re-renders the report records nothing, so the
    # saved before/after samples stay those of the runs.
    measuring = bool(pending) or not (out / "start" / "eval.json").is_file()
    scheduler = Scheduler(config, plan, out, runs, children, quiet)
    if measuring:
        scheduler.record_load("before")
    scheduler.announce(len(runs) - len(pending))
    scheduler.run(pending)
    if children.stopping:
        signum = stop.requested or signal.SIGTERM
        stopped = scheduler.stopped
        runs_stopped = f"{', '.join(stopped)} stopped after their step in progress, each with a checkpoint" if stopped else "no run was in progress"
        raise Interrupted(signum, f"stopped by {signal_name(signum)}: {runs_stopped}; finished runs are kept. Rerun the same "
                                  f"command to continue the comparison (the stopped runs resume where they stopped).")
    if measuring:
        scheduler.record_load("after")
    results = write_outputs(out, summarize_or_report(out))
    if scheduler.failed:
        raise RuntimeError(
            f"{len(scheduler.failed)} run(s) failed: {'; '.join(scheduler.failed)}. The other runs are kept; rerun the same "
            f"command to retry the failed ones (interrupted runs resume from their last checkpoint)."
        )
    return results


class Scheduler:
    """Runs a comparison's pending runs ``plan.jobs`` at a time (threads that each wait on one process), with a
    progress bar over every run's generated tokens and load samples while they go. What went wrong is kept
    in ``failed`` (run names with the reason) and the runs a stop ended in ``stopped``."""

    def __init__(self, config: ExperimentConfig, plan: ComparePlan, out: Path, runs: list[RunSpec], children: Children, quiet: bool):
        self.config, self.plan, self.out, self.runs, self.children, self.quiet = config, plan, out, runs, children, quiet
        self.threads = threads_per_run(plan)
        self.failed: list[str] = []
        self.stopped: list[str] = []
        self.running: set[str] = set()
        self.start = time.time()
        self.bar: tqdm | None = None

    def say(self, message: str) -> None:
        if not self.quiet:
            (self.bar or tqdm).write(message)

    def record_load(self, phase: str) -> None:
        _record_load(self.out / "logs" / "load.jsonl", phase, len(self.running), self.threads)

    def announce(self, already_finished: int) -> None:
        plan = self.plan
        if self.quiet:
            return
        if plan.learning_rates:
            print(f"compare: first {count_of(len(lr_runs(plan)), 'learning-rate run')} (learning rates {plan.learning_rates} on seed "
                  f"{plan.lr_seed}); each method's table runs use its best", flush=True)
        print(f"compare: {count_of(len(self.runs), 'run')} ({count_of(len(plan.methods), 'method')} x {count_of(plan.seeds, 'seed')}) of "
              f"{plan.budget_tokens:,} tokens each on {self.config.task.name}; {already_finished} already finished; "
              f"{plan.jobs} at a time, {count_of(self.threads, 'thread')} each; folder {self.out}", flush=True)

    def run(self, pending: list[RunSpec]) -> None:
        """Every pending run and, where it is missing, the starting policy's evaluation. With learning rates,
        in two phases: a table run can only start once its method's choice is made."""
        self.start = time.time()
        self.bar = tqdm(total=len(self.runs) * self.plan.budget_tokens, initial=tokens_done(self.out, self.runs, self.plan.budget_tokens),
                        desc="compare", unit="tok", unit_scale=True, disable=self.quiet, dynamic_ncols=True, smoothing=0.05)
        last_load = time.time()
        with ThreadPoolExecutor(max_workers=self.plan.jobs) as pool:
            futures = [] if (self.out / "start" / "eval.json").is_file() else [pool.submit(self.evaluate_start)]
            phases = [[r for r in pending if r.lr is not None], [r for r in pending if r.lr is None]]
            for phase in phases:
                submitted = [pool.submit(self.run_one, run) for run in phase]
                futures += submitted
                last_load = self._wait(futures if phase is phases[-1] else submitted, last_load)
            for future in futures:
                try:
                    future.result()
                except StartEvaluationFailed as error:  # the runs' results are summarized without the starting row
                    self.failed.append(str(error))
        self.bar.close()

    def _wait(self, waiting: list[Future], last_load: float) -> float:
        """Until ``waiting`` are done: the progress bar, the stop passed to commands started after it, load
        samples every LOAD_EVERY_S. Returns the time of the last load sample."""
        while True:
            _, not_done = wait(waiting, timeout=POLL_S)
            self.bar.update(tokens_done(self.out, self.runs, self.plan.budget_tokens) - self.bar.n)
            self.bar.set_postfix_str(f"{sum(finished(self.out, r) for r in self.runs)}/{len(self.runs)} runs done")
            if not not_done:
                return last_load
            if self.children.stopping:
                self.children.stop()  # any command that started after the signal
            if time.time() - last_load >= LOAD_EVERY_S:
                self.record_load("during")
                last_load = time.time()

    def evaluate_start(self) -> None:
        self.running.add("start")
        self.say(f"  starting policy: evaluating on the final set (log {self.out / 'logs' / 'start.log'})")
        try:
            _evaluate_start(self.config, self.plan, self.out, self.threads, self.children)
        finally:
            self.running.discard("start")

    def _learning_rate(self, run: RunSpec) -> tuple[bool, float | None]:
        """(whether the run can start, the learning rate its method's learning-rate runs chose for it)."""
        if run.lr is not None or not self.plan.learning_rates:
            return True, None
        choice = (chosen_learning_rates(self.out, self.plan) or {}).get(run.method)
        if choice is None:
            self.failed.append(f"{run.name} (its method's learning-rate runs did not all finish)")
            return False, None
        return True, choice.lr

    def run_one(self, run: RunSpec) -> None:
        if self.children.stopping:
            return
        t0 = time.time()
        can_start, lr = self._learning_rate(run)
        if not can_start:
            return
        try:  # a run of an earlier comparison killed outright can outlive it: never delete or resume its folder under it
            check_not_in_use(run_dir(self.out, run), "run folder")
        except FolderInUse as error:
            self.failed.append(f"{run.name} ({error})")
            self.say(f"  {run.name}: not started, its folder is in use")
            return
        command = _train_command(self.out, run, self.plan, lr)
        log = self.out / "logs" / f"{run.name}.log"
        self.running.add(run.name)
        self.say(f"  {run.name}: {'resuming' if '--resume' in command else 'starting'} (log {log})")
        try:
            code = _execute(command, log, self.threads, self.children, run.name)
        finally:
            self.running.discard(run.name)
        self._finish(run, code, log, t0)

    def _finish(self, run: RunSpec, code: int | None, log: Path, t0: float) -> None:
        """What a run's exit status means: stopped, failed, or finished (its step checkpoints pruned)."""
        if code is None:  # the comparison was stopped before it began
            return
        if self.children.stopping and code in STOPPED:
            self.stopped.append(run.name)
            self.say(f"  {run.name}: stopped after its step in progress, with a checkpoint")
            return
        if code != 0:
            self.failed.append(f"{run.name} (exit {code}, see {log})")
            self.say(f"  {run.name}: failed (exit {code})")
            return
        # A finished run keeps checkpoints/final; the step checkpoints only served resumption, and with a
        # large policy and many runs they would fill the disk.
        for step_checkpoint in (run_dir(self.out, run) / "checkpoints").glob("step_*"):
            shutil.rmtree(step_checkpoint)
        result = json.loads((run_dir(self.out, run) / "eval.json").read_text())
        self.say(f"  {run.name}: {result['accuracy']:.1%} after {result[TOKENS_TOTAL]:,} tokens, {time.time() - t0:.0f} s "
                 f"[{time.time() - self.start:.0f} s in]")
