"""A pool of verifier worker processes: each call with a deadline, a memory cap and a kill on overrun.

Verifiers read model output, which is adversarial by nature: a math parser can hang on
``5^{5^{5^{5^5}}}`` or eat the machine's memory, and a code task runs programs. In a pool a verifier
failure costs one sample's reward, never the run:

- workers are spawned: each is a fresh interpreter (fork + exec of ``python -c``, as multiprocessing's
  ``spawn`` does, without its re-import of the caller's main script), never a bare fork of a threaded
  trainer (a fork copies locks held by other threads, and CUDA state);
- each worker leads a session and process group of its own (``start_new_session``) and caps its own
  address space (``RLIMIT_AS``); an allocation past the cap raises MemoryError inside ``verify``;
- each worker has a guardian: the process the pool starts, which forks the worker and is its *child
  subreaper* (``PR_SET_CHILD_SUBREAPER``), so every process the worker starts stays below it, even one
  that starts a session of its own and so leaves the worker's process group;
- every completion has a wall-clock deadline from the moment its worker receives it; on overrun the
  guardian kills the worker and every process below itself (so helper processes die with it, wherever
  they went), the completion scores 0 and counts as a timeout, and a new worker is started in its place;
  the same happens on close, when a worker dies, and when the trainer dies (``PR_SET_PDEATHSIG``);
- an exception in ``verify``, a result outside [0, 1] or a worker that dies counts as an error and
  scores 0; the first error message is kept for the caller to show once.

Workers stay alive between calls (starting one imports the task and its dependencies, a second or so),
and only a worker that overran or died is replaced. Tasks keep their pure ``verify``: a worker rebuilds
the task from a picklable :class:`TaskSpec` (its registry name or import path and its knobs) with
:func:`sirl.tasks.load_task`. math-verify runs inside the workers, where the pool's deadline bounds it
(its own signal-based timeouts only work on a main thread, and the GSM8K task disables them).

This module imports no model code.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

from sirl.types import Problem

STARTUP_TIMEOUT_S = 120.0
"""Longest a worker may take to import and build its task before the pool gives up (a config error)."""

GUARDIAN_GRACE_S = 2.0
"""Longest a worker's guardian may take to kill the worker and what it started when asked."""


@dataclass(frozen=True)
class TaskSpec:
    """What a worker needs to rebuild a task: ``load_task(name, **args)``."""

    name: str
    args: dict = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, args: dict) -> TaskSpec:
        """The spec of ``load_task(name, **args)``, with a task file's path made absolute so a worker
        finds it whatever its working directory."""
        module, sep, class_name = name.rpartition(":")
        if sep and module.endswith(".py"):
            name = f"{Path(module).expanduser().resolve()}:{class_name}"
        return cls(name, dict(args))


@dataclass
class VerifyCounts:
    """Completions verified, and those that scored 0 because verification overran or failed."""

    calls: int = 0
    timeouts: int = 0
    errors: int = 0


class VerifierStartupError(RuntimeError):
    """A worker could not build the task (a wrong knob, a missing file, a missing sandbox)."""


# --- the guardian: one per worker, reaps whatever the worker started ---------------------------------
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    """``prctl(option, value)``; False where it is unavailable (not Linux)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value) == 0
    except (OSError, AttributeError):
        return False


def live_descendants(root: int) -> list[int]:
    """Living (not zombie) processes below ``root``, from /proc (one pass over every process: the
    kernel's per-task ``children`` lists are not built on every system)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _reap_all() -> None:
    """Wait for every child that has ended (orphans re-parented to this subreaper end up here)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_descendants(root: int) -> None:
    """SIGKILL every process below ``root`` until none is left. Called by a subreaper on itself, it also
    finds processes that left their session or process group (``setsid``, a double fork): they are
    re-parented to it when their parent dies, so they stay below it."""
    for _ in range(1000):  # each round kills all it sees; only a process forked meanwhile is left for the next
        alive = live_descendants(root)
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if root == os.getpid():
            _reap_all()
        time.sleep(0.001)


class _Stop(Exception):
    pass


def _stop(signum, frame) -> None:
    raise _Stop


def _guardian_main(fd: int, parent: int) -> None:
    """Body of the process the pool starts for each worker: it forks the worker, waits, and when the
    worker ends, or the pool asks with SIGTERM, or the trainer dies, kills the worker and everything
    below it, then exits with the worker's exit code.

    A process group kill misses a helper that started a session of its own (``setsid``,
    ``start_new_session=True``); on its parent's death such a helper is re-parented to the nearest
    *child subreaper* instead of init. The guardian is that subreaper, and it runs no task code, so
    it is never stuck when it must clean up (a worker may be: in a C call, past its memory cap)."""
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; it closes the pool
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # the trainer died: clean up as if asked
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    code = 0
    try:
        if os.getppid() != parent:  # the trainer died before the call above
            raise _Stop
        worker = os.fork()
        if worker == 0:  # the worker: a fork of this fresh single-threaded interpreter, not of the trainer
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            status = 0
            try:
                _worker_main(fd, os.getppid())
            except BaseException:  # a bug in the worker itself: shown, and seen by the pool as a death
                traceback.print_exc()
                status = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        os.close(fd)  # the worker's end only: the pool sees EOF as soon as the worker is gone
        while True:
            pid, status = os.wait()
            if pid == worker:
                code = os.waitstatus_to_exitcode(status)
                break
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second request must not cut the cleanup short
        kill_descendants(os.getpid())
    os._exit(code if code >= 0 else 128 - code)


# --- the worker -------------------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when its guardian dies, even while it is stuck in a verify call (Linux)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # not Linux: the socket's EOF still ends an idle worker
    if os.getppid() != parent:  # the guardian died before the call above
        os._exit(0)


def _worker_main(fd: int, parent: int) -> None:
    """Body of a worker process: build the task, then answer ``(problem, completion)`` requests with
    ``("ok", score)`` or ``("error", message)`` until it receives None or the socket closes."""
    _die_with_parent(parent)
    conn = Connection(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; it closes the pool
    spec, memory_mb = conn.recv()
    limit = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from sirl.data import silence_warnings
    from sirl.tasks import load_task  # imported here, after the limits, in the fresh interpreter

    silence_warnings()  # the trainer built this task from the same files first and printed their warnings

    try:
        task = load_task(spec.name, **spec.args)
    except Exception as error:  # reported to the pool, which raises it to the caller
        conn.send(("init_error", f"{type(error).__name__}: {error}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the pool is gone
            return
        if request is None:
            return
        problem, completion = request
        try:
            score = task.verify(problem, completion)
        except Exception as error:  # one sample's verdict fails, not the worker: counted as an error
            conn.send(("error", f"{type(error).__name__}: {error}"[:1000]))
            continue
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not 0.0 <= score <= 1.0:
            conn.send(("error", f"verify returned {score!r}, not a number in [0, 1]"[:1000]))
            continue
        conn.send(("ok", float(score)))


# --- the pool ---------------------------------------------------------------------------------------
class _Worker:
    """One worker: a guardian process (a fresh interpreter: fork + exec of ``python``, never a bare fork
    of the trainer) that leads its own session and forks the worker, which talks over a socket pair.
    ``process`` is the guardian; the worker and everything it starts are below it."""

    def __init__(self, spec: TaskSpec, memory_mb: int):
        ours, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # the trainer's imports
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"from sirl.verifier.pool import _guardian_main; _guardian_main({theirs.fileno()}, {os.getpid()})"],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send((spec, memory_mb))
        self.ready = False
        self.started = time.monotonic()
        self.job: int | None = None  # index of the completion it is verifying
        self.deadline = 0.0

    def kill(self) -> None:
        """Kill the worker and everything it started, reap the guardian, free the fds: SIGTERM asks the
        guardian to do it; a guardian that has not finished within GUARDIAN_GRACE_S gets its process
        group killed (the worker and helpers that stayed in it)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(GUARDIAN_GRACE_S)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait()
        self.conn.close()


class VerifierPool:
    """``workers`` processes that score completions with a task's ``verify``.

    :meth:`score` verifies a batch: completions go to idle workers one at a time and are collected as
    they finish, each with its own deadline of ``timeout_s`` seconds. Use as a context manager or call
    :meth:`close`; workers also die with the process that owns the pool (``PR_SET_PDEATHSIG``).
    """

    def __init__(self, spec: TaskSpec, *, workers: int, timeout_s: float, memory_mb: int):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.spec, self.n_workers, self.timeout_s, self.memory_mb = spec, workers, timeout_s, memory_mb
        self.counts = VerifyCounts()
        self.first_error: str | None = None
        self._workers = [_Worker(spec, memory_mb) for _ in range(workers)]
        self._closed = False

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def pids(self) -> list[int]:
        """Process ids of the current workers."""
        return [w.process.pid for w in self._workers]

    def wait_ready(self) -> None:
        """Block until every worker has built its task (raises :class:`VerifierStartupError` if one cannot)."""
        while not all(w.ready for w in self._workers):
            self._poll(self._startup_wait())

    def score(self, problems: list[Problem], completions: list[str]) -> list[float]:
        """One score per completion, in order: ``verify``'s result, or 0.0 after a timeout or an error."""
        if self._closed:
            raise RuntimeError("the verifier pool is closed")
        if len(problems) != len(completions):
            raise ValueError(f"{len(problems)} problems for {len(completions)} completions")
        scores = [0.0] * len(completions)
        pending = deque(range(len(completions)))
        outstanding = len(completions)
        while outstanding:
            for worker in self._workers:
                if worker.ready and worker.job is None and pending:
                    index = pending.popleft()
                    worker.job, worker.deadline = index, time.monotonic() + self.timeout_s
                    try:
                        worker.conn.send((problems[index], completions[index]))
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the worker died; its sentinel is ready and _poll replaces it
            busy = [w.deadline for w in self._workers if w.job is not None]
            timeout = max(0.0, min(busy) - time.monotonic()) if busy else self._startup_wait()
            for index, score in self._poll(timeout):
                scores[index] = score
                outstanding -= 1
        self.counts.calls += len(completions)
        return scores

    def _startup_wait(self) -> float:
        starting = [w.started + STARTUP_TIMEOUT_S for w in self._workers if not w.ready]
        return max(0.0, min(starting) - time.monotonic()) if starting else 0.0

    def _poll(self, timeout: float) -> list[tuple[int, float]]:
        """Wait up to ``timeout`` for messages and deaths; returns the (index, score) pairs finished."""
        by_handle = {worker.conn: worker for worker in self._workers}  # a dead worker's socket reads EOF
        finished: list[tuple[int, float]] = []
        failed: set[_Worker] = set()
        for handle in wait(list(by_handle), timeout):
            worker = by_handle[handle]
            if worker in failed:
                continue
            try:
                kind, value = worker.conn.recv()
            except (EOFError, OSError):
                kind, value = "died", None
            if kind == "ready":
                worker.ready = True
            elif kind == "init_error":
                self.close()
                raise VerifierStartupError(f"a verifier worker could not build task {self.spec.name!r}: {value}")
            elif kind == "ok":
                finished.append((worker.job, value))
                worker.job = None
            elif kind == "error":
                self._error(value)
                finished.append((worker.job, 0.0))
                worker.job = None
            else:  # the worker process ended: a crash (os._exit, a segfault, the OOM killer)
                if not worker.ready:
                    self.close()
                    raise VerifierStartupError(f"a verifier worker for task {self.spec.name!r} died while starting (exit code {worker.process.wait()})")
                if worker.job is not None:
                    self._error(f"the verifier worker died (exit code {worker.process.wait()})")
                    finished.append((worker.job, 0.0))
                failed.add(worker)
        now = time.monotonic()
        for worker in self._workers:
            if worker.job is not None and worker not in failed and now >= worker.deadline:
                self.counts.timeouts += 1
                finished.append((worker.job, 0.0))
                failed.add(worker)
            elif not worker.ready and now - worker.started > STARTUP_TIMEOUT_S:
                self.close()
                raise VerifierStartupError(f"a verifier worker for task {self.spec.name!r} did not start within {STARTUP_TIMEOUT_S:g} s")
        for worker in failed:
            self._replace(worker)
        return finished

    def _error(self, message: str) -> None:
        self.counts.errors += 1
        if self.first_error is None:
            self.first_error = message

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = _Worker(self.spec, self.memory_mb)

    def close(self) -> None:
        """Stop every worker: ask politely, then kill whatever is left of their process groups."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            if worker.job is None:
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + 1.0
        for worker in self._workers:
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            worker.kill()
        self._workers = []
