"""Scoring completions safely: where a task's ``verify`` runs, and with what isolation.

A task's ``verify`` is a pure function (sirl.tasks.base); time limits and process isolation belong to the
caller, and this package is that caller. :func:`make_verifier` builds a :class:`Verifier` at one of two
isolation levels (``verifier.isolation`` in the config):

- ``in_process``: ``verify`` is called in the trainer's own process. The fast path for tasks that
  declare ``safe_verify = True`` (their verifier is bounded in time and memory for any completion, like
  the string checks of ``arith`` and ``countdown``); an exception still scores 0 and is counted.
- ``workers``: a :class:`~sirl.verifier.pool.VerifierPool` of spawned worker processes with a deadline,
  a memory cap and, on overrun, a kill of the worker and every process it started (its guardian is a
  child subreaper). The default for every other task.

``auto`` (the default) picks ``in_process`` for tasks whose class declares ``safe_verify`` itself (not
a subclass that inherits it: it may verify differently) and ``workers`` otherwise. A
task that executes model-written programs (``code``) also has a program sandbox of its own
(sirl.verifier.sandbox); :attr:`Isolation.programs` names it. The isolation in use is printed when a run
starts and written to the run folder, never chosen silently.

Failures: every completion whose verification overran its deadline (``timeouts``) or failed (``errors``:
an exception, a crashed worker, a score outside [0, 1]) scores 0 and is counted; the trainer logs the
counts as ``verify/timeouts`` and ``verify/errors`` each step, and the first error message is printed
once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import asdict, dataclass

from sirl.config import TaskConfig, VerifierConfig
from sirl.tasks.base import Task, declares_safe_verify
from sirl.types import Problem, Trajectory
from sirl.verifier.pool import TaskSpec, VerifierPool, VerifierStartupError, VerifyCounts

__all__ = ["Isolation", "TaskSpec", "Verifier", "VerifierPool", "VerifierStartupError", "VerifyCounts", "make_verifier", "resolve_isolation", "score_completions", "verifier_for", "verify_trajectories"]

LEVELS = ("in_process", "workers")


class _TimeoutNotice(logging.Filter):
    """Drops math-verify's "Timeout is disabled ..." warning. sirl turns math-verify's own timeouts off on
    purpose (they use signal.alarm, which only works on a main thread; sirl.tasks.gsm8k) and bounds every
    verify call from outside (the worker pool's deadline), so the warning, printed by every process that
    verifies, once for parsing and once for comparing, asks the user for something already done."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


_TIMEOUT_NOTICE = _TimeoutNotice()


def silence_timeout_notices() -> None:
    """Install the filter on math-verify's loggers (idempotent); done when this package is imported, which
    every process that verifies does (the trainer, and each worker through sirl.verifier.pool)."""
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_TIMEOUT_NOTICE)


silence_timeout_notices()


@dataclass(frozen=True)
class Isolation:
    """The isolation a run's verifier uses, as printed at start and stored in the run folder."""

    level: str
    """``in_process`` or ``workers``."""
    workers: int | None = None
    timeout_s: float | None = None
    memory_mb: int | None = None
    programs: str | None = None
    """How the task runs model-written programs (its sandbox), or None when it runs none."""

    def describe(self) -> str:
        if self.level == "in_process":
            text = "in process (no deadline, no memory cap; the task declares its verify safe)"
        else:
            text = (f"{self.workers} worker processes (spawned, {self.timeout_s:g} s deadline per completion, "
                    f"{self.memory_mb} MB address space, the worker and every process it started killed on overrun)")
        return text + (f"; programs: {self.programs}" if self.programs else "")

    def to_json(self) -> dict:
        return asdict(self)


def resolve_isolation(isolation: str, task: Task) -> str:
    """``auto`` -> ``in_process`` for a task whose class declares ``safe_verify`` itself (a subclass that
    only inherits it runs in workers), else ``workers``; others as given."""
    if isolation == "auto":
        return "in_process" if declares_safe_verify(type(task)) else "workers"
    if isolation not in LEVELS:
        raise ValueError(f"verifier.isolation must be 'auto' or one of {list(LEVELS)}, got {isolation!r}")
    return isolation


class Verifier:
    """Scores batches of completions with a task's ``verify``, in process or in a worker pool, and counts
    the completions that scored 0 because verification overran or failed."""

    def __init__(self, task: Task, isolation: Isolation, pool: VerifierPool | None = None):
        self.task, self.isolation, self.pool = task, isolation, pool
        self._counts = VerifyCounts()  # in-process counts; the pool keeps its own
        self._first_error: str | None = None
        self._shown_error = False
        self._taken = VerifyCounts()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def score(self, problems: list[Problem], completions: list[str]) -> list[float]:
        """One score in [0, 1] per completion, in order."""
        if self.pool is not None:
            scores = self.pool.score(problems, completions)
        else:
            scores = [self._score_one(p, c) for p, c in zip(problems, completions, strict=True)]
            self._counts.calls += len(completions)
        self._show_first_error()
        return scores

    def _score_one(self, problem: Problem, completion: str) -> float:
        try:
            score = self.task.verify(problem, completion)
        except Exception as error:  # counted as verify/errors and shown once; the run goes on
            self._error(f"{type(error).__name__}: {error}")
            return 0.0
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
            self._error(f"verify returned {score!r}, not a number in [0, 1]")
            return 0.0
        return float(score)

    def _error(self, message: str) -> None:
        self._counts.errors += 1
        if self._first_error is None:
            self._first_error = message[:1000]

    def _show_first_error(self) -> None:
        message = self.pool.first_error if self.pool is not None else self._first_error
        if message is not None and not self._shown_error:
            self._shown_error = True
            print(f"verifier: a completion's verification failed and scored 0 (counted in verify/errors; "
                  f"later failures are counted, not shown): {message}", file=sys.stderr)

    @property
    def counts(self) -> VerifyCounts:
        """Totals since the verifier was made."""
        return self.pool.counts if self.pool is not None else self._counts

    def take_counts(self) -> VerifyCounts:
        """Counts since the previous call (the trainer logs them once per step)."""
        total = self.counts
        delta = VerifyCounts(total.calls - self._taken.calls, total.timeouts - self._taken.timeouts, total.errors - self._taken.errors)
        self._taken = VerifyCounts(total.calls, total.timeouts, total.errors)
        return delta

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def score_completions(task: Task, problems: list[Problem], completions: list[str], verifier: Verifier | None = None) -> list[float]:
    """Scores from ``verifier``, or without one from ``task.verify`` called here (library use, tests)."""
    if verifier is not None:
        return verifier.score(problems, completions)
    return [task.verify(problem, completion) for problem, completion in zip(problems, completions, strict=True)]


def verify_trajectories(task: Task, trajectories: list[Trajectory], verifier: Verifier | None = None) -> list[Trajectory]:
    """The verification stage: the trajectories with their rewards, scored in one batch by ``verifier``
    (in process or in isolated workers; without one, ``task.verify`` in this process)."""
    rewards = score_completions(task, [t.problem for t in trajectories], [t.text for t in trajectories], verifier)
    return [dataclasses.replace(t, reward=reward) for t, reward in zip(trajectories, rewards, strict=True)]


def verifier_for(config: VerifierConfig, task_config: TaskConfig, task: Task) -> Verifier:
    """The verifier a run's config asks for (``config.verifier`` and ``config.task``)."""
    return make_verifier(
        task, TaskSpec.of(task_config.name, task_config.args), isolation=config.isolation, workers=config.workers,
        timeout_s=config.timeout_s, memory_mb=config.memory_mb,
    )


def make_verifier(
    task: Task,
    spec: TaskSpec,
    *,
    isolation: str = "auto",
    workers: int | None = None,
    timeout_s: float = 5.0,
    memory_mb: int = 2048,
) -> Verifier:
    """A verifier for ``task`` (rebuilt in workers from ``spec``) at the requested isolation level.
    ``workers=None`` uses min(4, CPU count). The pool's workers are started here and waited for."""
    level = resolve_isolation(isolation, task)
    programs = task.program_isolation()
    if level == "in_process":
        return Verifier(task, Isolation("in_process", programs=programs))
    n = workers if workers is not None else min(4, os.cpu_count() or 1)
    pool = VerifierPool(spec, workers=n, timeout_s=timeout_s, memory_mb=memory_mb)
    try:
        pool.wait_ready()
    except BaseException:
        pool.close()
        raise
    return Verifier(task, Isolation("workers", n, timeout_s, memory_mb, programs), pool)
