"""One writer per folder: a run folder (``sirl train``, ``sirl sft``, ``sirl eval --out``) or a comparison
folder (``sirl compare``) is written by one process at a time; and a new run never goes into a folder that
holds one (:func:`check_new_run_dir`).

The writer holds ``FOLDER/.sirl.lock``: a small JSON file that names it (pid, host, command, start time)
and on which it holds an exclusive ``flock`` for as long as it runs. The kernel drops that lock when the
process ends however it ends (even SIGKILL), so a lock file that nobody holds is stale, left by a process
that is gone: the next writer takes it over and says whose it was. A lock held by a live process refuses
the second writer with an error that names the holder. A lock file written on another host (a shared file
system, where flock may not reach across machines) is never taken over: the error names the host and
the file to delete once that run is known to be over. The holder deletes the file when it finishes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".sirl.lock"


class FolderInUse(ValueError):
    """Another live process is writing the folder (the message names it)."""


class RunExists(ValueError):
    """The folder given for a new run holds a run already."""


RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints", "eval.json")
"""Files (any one) that make a folder a run folder (sirl.runlog, sirl.checkpoint)."""


def check_new_run_dir(run_dir: Path, overwrite: bool, *, delete: bool = False, resume: str | None = None) -> None:
    """A new run's folder must not hold a run (RUN_MARKERS): appending to its metrics or replacing its
    checkpoints or weights would mix two runs. The refusal names the choices: ``resume`` (the command that
    continues the old run, where there is one), another folder, or ``overwrite``, with which it may;
    ``delete`` then removes everything in it but the writer's lock, so the new run starts in an empty folder."""
    run_dir = Path(run_dir)
    found = [name for name in RUN_MARKERS if (run_dir / name).exists()]
    if not found:
        return
    if not overwrite:
        choices = f"Continue it with `{resume}`, write" if resume else "Write"
        raise RunExists(
            f"{run_dir} holds a run already ({', '.join(found)}); nothing was changed. {choices} the new run to another folder "
            f"(--out), or pass --overwrite to delete everything in it and start again there"
        )
    if delete:
        for entry in run_dir.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def describe_holder(holder: dict) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "an unknown time"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {when}: {holder.get('command', '?')}"


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    try:
        holder = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _in_use(folder: Path, what: str, holder: dict) -> FolderInUse:
    return FolderInUse(
        f"{folder} is being written by another process ({describe_holder(holder)}); one process at a time writes a "
        f"{what}. Wait for it to finish or stop it, or use another folder."
    )


def check_not_in_use(folder: Path, what: str = "folder") -> None:
    """Raise FolderInUse when a live process holds ``folder``'s lock; reads only (creates nothing), so a
    command can say so before it refuses the folder for any other reason."""
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file (or none readable): no holder to name
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(Path(folder), what, _read_holder(fd)) from None
    finally:
        os.close(fd)  # also drops the shared lock, if it was taken


class FolderLock:
    """Hold ``folder``'s lock while entered (module docstring); the folder is created if needed.
    ``command`` names the holder in other writers' errors (default: this process's command line);
    ``what`` names the folder in messages ("run folder", "comparison folder")."""

    def __init__(self, folder: Path, command: str | None = None, what: str = "folder", warn=None):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self.command = command or shlex.join(["sirl", *sys.argv[1:]] if Path(sys.argv[0]).name in ("sirl", "cli.py") else sys.orig_argv)
        self.warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr, flush=True))
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> FolderLock:
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise _in_use(self.folder, self.what, holder) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:  # its holder deleted it as we opened it: again
                    os.close(fd)
                    continue
            except FileNotFoundError:
                os.close(fd)
                continue
            holder = _read_holder(fd)
            if holder.get("host") not in (None, host):
                os.close(fd)
                raise FolderInUse(
                    f"{self.folder} is locked by a process on another host ({describe_holder(holder)}), which this host cannot "
                    f"check; if that run is over, delete {self.path} and try again"
                )
            if holder:
                self.warn(f"{self.folder}: took over the lock of a process that is no longer running ({describe_holder(holder)})")
            record = {"pid": os.getpid(), "host": host, "command": self.command, "started": time.time()}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
            os.fsync(fd)
            self._fd = fd
            return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still held: a waiting writer then finds a new file (the inode check)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
        if self._created:  # a writer that stopped before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                self.folder.rmdir()

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
