"""Helpers of the verifier tests: tasks whose verify misbehaves on purpose, and leak checks.

The tasks are loaded by workers from this file's path (``verifier_helpers.py:HostileTask``).
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

from sirl.tasks.base import Task, split_on_separator
from sirl.types import Problem, Span

HERE = Path(__file__).resolve()


class HostileTask(Task):
    """``verify`` does what the completion says: hang, crash, exit, allocate, start a helper and hang,
    return nonsense, wait for a file or create one; anything else scores 1.0 when it equals the answer."""

    name = "hostile"

    def sample(self, rng: random.Random, split: str) -> Problem:
        return Problem(prompt="say ok:", answer="ok")

    def verify(self, problem: Problem, completion: str) -> float:
        if completion == "hang":
            while True:
                pass
        if completion == "sleep":
            time.sleep(1e6)
        if completion == "helper":  # a child process in the worker's group that would outlive a plain kill
            subprocess.Popen(["sleep", "1000"])
            time.sleep(1e6)
        if completion.startswith("escape"):  # helpers that leave the worker's session: escape-MODE-SECONDS
            _, mode, seconds = completion.split("-")
            if mode == "daemon":  # the classic double fork: the helper's parent exits at once
                subprocess.Popen(["setsid", "-f", "sleep", seconds])
            else:
                subprocess.Popen(["sleep", seconds], start_new_session=True)
            if mode == "hang":
                time.sleep(1e6)
            if mode == "exit":
                os._exit(3)
            return 1.0  # "return" and "daemon": the helper outlives the call
        if completion.startswith("wait-for "):  # scores 1.0 once another verify call has created the file
            path = completion.split(" ", 1)[1]
            while not os.path.exists(path):
                time.sleep(0.01)
            return 1.0
        if completion.startswith("create "):
            Path(completion.split(" ", 1)[1]).touch()
            return 1.0
        if completion == "raise":
            raise RuntimeError("verifier bug")
        if completion == "exit":
            os._exit(3)
        if completion == "allocate":
            return float(len(bytearray(10**11)))
        if completion == "nonsense":
            return 7.0
        return float(completion == problem.answer)

    def split_steps(self, completion: str) -> list[Span]:
        return split_on_separator(completion, ";")

    def reference_solution(self, problem: Problem) -> str:
        return problem.answer


def _stat(pid: str) -> tuple[int, int] | None:
    """(parent pid, real uid) of a process, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is dead, only not yet reaped
        return None
    uid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))
    return int(fields[1]), uid


def processes() -> dict[int, tuple[int, int]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _stat(entry)) is not None:
            found[int(entry)] = info
    return found


def descendants(root: int | None = None) -> set[int]:
    """Living processes below ``root`` (default: this process)."""
    table, root = processes(), root or os.getpid()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def running(argv: list[str]) -> set[int]:
    """Living processes, anywhere on the machine, whose command line is exactly ``argv``."""
    wanted = "\0".join(argv).encode() + b"\0"
    found = set()
    for pid in processes():
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == wanted and _stat(str(pid)) is not None:
                found.add(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return found


def sandbox_processes() -> set[int]:
    """Processes running as a sandbox uid (sirl runs sandboxes as SANDBOX_UID_BASE + pid when root)."""
    from sirl.verifier.sandbox import SANDBOX_UID_BASE

    return {pid for pid, (_, uid) in processes().items() if uid >= SANDBOX_UID_BASE}


def wait_until_gone(pids: set[int], seconds: float = 5.0) -> set[int]:
    """The pids still alive after up to ``seconds`` times SIRL_TEST_TIME_FACTOR (a SIGKILLed process takes a
    moment to disappear; it returns as soon as they are gone)."""
    from conftest import scaled

    deadline = time.monotonic() + scaled(seconds)
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if _stat(str(pid)) is not None}
        time.sleep(0.02)
    return alive


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
