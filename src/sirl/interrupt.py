"""Stopping a long command at a safe point when it is asked to: SIGINT (Ctrl-C) or SIGTERM (what ``kill``,
``timeout`` and job schedulers send).

The first signal is a request: the work in progress (a training step) finishes whole, the command saves
what it has (a checkpoint) and ends with the conventional status, 128 + the signal's number (130 for
SIGINT, 143 for SIGTERM). While it saves, every further signal is held until the save is complete, so a
second Ctrl-C never leaves half-written files (checkpoints are also written atomically, sirl.checkpoint).
A second Ctrl-C before the safe point stops at once, without saving: the last complete checkpoint stays
the one to resume from. A repeated SIGTERM only repeats the request, since a scheduler may send one to
every process of a job, and some send it twice.

Handlers can only be installed from the main thread; elsewhere (a run started from a library's worker
thread) :class:`StopSignals` installs none and signals keep their usual effect.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signum: int) -> int:
    """The shell's status for a process ended by signal ``signum``: 128 + its number (130, 143)."""
    return 128 + signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Interrupted(Exception):
    """A command stopped because it was asked to (SIGINT or SIGTERM); the message says what was saved and
    how to continue. ``exit_status`` is the status the command line ends with."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return exit_status(self.signum)


class StopSignals:
    """While entered, SIGINT and SIGTERM ask the work to stop instead of ending the process (module
    docstring). ``requested`` is the first signal's number, or None; ``holding()`` holds every signal while
    something is being saved. ``announce`` says what happens next when the first signal arrives;
    ``on_signal(signum)`` is called for every signal (a parent passes the stop on to its children);
    ``second_ctrl_c_aborts=False`` makes a second Ctrl-C a repeated request like any other."""

    def __init__(self, announce: str = "stopping at the next safe point", *, name: str = "sirl",
                 on_signal: Callable[[int], None] | None = None, second_ctrl_c_aborts: bool = True):
        self.announce = announce
        self.name = name
        self.on_signal = on_signal
        self.second_ctrl_c_aborts = second_ctrl_c_aborts
        self.requested: int | None = None
        self._holding = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _say(self, message: str) -> None:
        print(f"\n{self.name}: {message}", file=sys.stderr, flush=True)

    def _handle(self, signum: int, frame) -> None:
        if self.on_signal is not None:
            self.on_signal(signum)
        name = signal_name(signum)
        if self._holding:
            self._say(f"{name} received while saving; the save completes first, then it stops")
            self.requested = self.requested or signum
            return
        if self.requested is None:
            self.requested = signum
            again = " (Ctrl-C again to stop at once, without saving)" if signum == signal.SIGINT else ""
            self._say(f"{name} received: {self.announce}{again}")
            return
        # A second Ctrl-C: the person wants out now. (After a SIGTERM, a Ctrl-C is the first from the person.)
        if signum == signal.SIGINT and self.requested == signal.SIGINT and self.second_ctrl_c_aborts:
            raise KeyboardInterrupt
        self._say(f"{name} received again: already stopping ({self.announce})")

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Signals that arrive inside the block are held until it ends (a checkpoint being written)."""
        before, self._holding = self._holding, True
        try:
            yield
        finally:
            self._holding = before


class StopNow(BaseException):
    """Raised by :func:`stopping_at_once`'s handler wherever the work is (a BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way takes it for an error to recover from)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal_name(signum)}")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return exit_status(self.signum)


@contextmanager
def stopping_at_once() -> Iterator[None]:
    """For work with nothing to save (an evaluation): while entered, SIGINT and SIGTERM raise StopNow at once,
    so the command can end with the conventional status and one line instead of a traceback (SIGINT) or
    a silent death (SIGTERM). No handler is installed outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame) -> None:
        raise StopNow(signum)

    previous = {signum: signal.signal(signum, handle) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
