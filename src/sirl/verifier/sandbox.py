"""Running a model-written Python program against test cases, inside bubblewrap.

:class:`ProgramRunner` starts ``python -I -S harness.py`` (sirl.verifier.harness) in a bubblewrap
sandbox (Debian package ``bubblewrap``) with:

- every namespace unshared (``--unshare-all``: no network, its own PID namespace, IPC and hostname),
  ``--die-with-parent``, ``--new-session`` (no terminal to inject keystrokes into), all capabilities
  dropped and a clean environment;
- a read-only view of the system directories the interpreter needs, the interpreter's own prefix and
  the harness, a private ``/tmp`` (tmpfs), and one private writable work directory; neither the home
  directory nor the trainer's run folder is mounted, so they do not exist inside;
- when sirl runs as root, an unprivileged user id of its own (``SANDBOX_UID_BASE`` + the calling
  process's pid), so ``RLIMIT_NPROC`` counts only this sandbox's processes (the kernel never applies it
  to root) and concurrent sandboxes of the verifier pool do not share the count;
- resource limits the harness sets on itself before the program runs, soft = hard so they cannot be
  raised again: address space, CPU seconds, file size, open files, processes, no core dumps;
- a wall-clock deadline after which the sandbox's process group is killed; ``--die-with-parent`` and
  the PID namespace take everything inside with it, including processes that left the session with
  ``setsid`` (when the namespace's first process dies the kernel kills the rest).

The program's results come back as JSON lines of serialized values written to a file outside the
sandbox; the caller compares them with expected values the sandbox never sees (the harness docstring
explains why that channel needs no secret).

``sandbox=False`` runs the same harness without bubblewrap, with the same resource limits and the
wall-clock kill of its process group, but no filesystem or network isolation, and a program that leaves
its session survives the kill. It exists for machines without bubblewrap and is only ever used when
asked for explicitly (the code task's ``unsafe_exec`` knob); nothing falls back to it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

HARNESS = Path(__file__).with_name("harness.py")
SANDBOX_UID_BASE = 1_000_000
"""When sirl runs as root, sandboxed programs run as uid (and gid) ``SANDBOX_UID_BASE + pid`` of the
process that starts them; these ids need no entry in /etc/passwd."""
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Mounted read-only (or recreated as the same symlinks on merged-/usr systems)."""
_HARNESS_PROCESSES = 3
"""Processes of the sandbox's uid besides the program's own: bubblewrap, its PID-namespace init, the harness."""


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create a sandbox here; the message says why."""


@dataclass(frozen=True)
class Limits:
    """What one run of a program may use."""

    timeout_s: float = 2.0
    """Wall-clock seconds for the whole run (start-up and every test case)."""
    memory_mb: int = 256
    """Address space of each process (RLIMIT_AS)."""
    processes: int = 8
    """Processes the program may create besides itself (RLIMIT_NPROC)."""
    output_bytes: int = 1_000_000
    """Most bytes of stdout one input/output case may write."""
    file_mb: int = 16
    """Largest file any process may write (RLIMIT_FSIZE)."""
    open_files: int = 64
    """Most open file descriptors per process (RLIMIT_NOFILE)."""


@dataclass(frozen=True)
class CaseResult:
    ok: bool
    """True when the case produced a value (or an output); False when it raised, crashed or is missing."""
    text: str
    """The canonical text of the value (call cases), the program's stdout (input/output cases), or the error."""


@dataclass(frozen=True)
class RunResult:
    cases: list[CaseResult]
    """One per test case, in order."""
    timed_out: bool
    stderr: str
    """The last bytes of the sandbox's stderr (bubblewrap's own errors end up here)."""


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def _world_accessible(path: str) -> bool:
    """True when any user may execute ``path`` and traverse every directory above it (the sandbox's
    unprivileged uid must reach the interpreter to mount and run it)."""
    target = Path(path)
    if not target.exists() or not os.stat(target).st_mode & stat.S_IXOTH:
        return False
    return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in target.parents)


def _count_processes(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except FileNotFoundError:
                pass
    return count


def _remove_tree(path: str) -> None:
    """``rmtree`` that also removes directories the program made unreadable (chmod 000)."""

    def retry(function, failed, _excinfo):
        os.chmod(os.path.dirname(failed), 0o700)
        if os.path.isdir(failed):
            os.chmod(failed, 0o700)
        function(failed)

    shutil.rmtree(path, onerror=retry)


class ProgramRunner:
    """Runs a program against call cases (``"f(2)"``) or input/output cases (stdin text) and returns what
    each case produced. ``sandbox`` chooses bubblewrap or, only when asked for, none."""

    def __init__(self, limits: Limits = Limits(), *, sandbox: bool = True, python: str | None = None):
        self.limits = limits
        self.sandbox = sandbox
        self.as_root = os.geteuid() == 0
        self.python = python or self._default_python()

    def _default_python(self) -> str:
        """The trainer's own interpreter; under bubblewrap as root, the first interpreter the sandbox's
        unprivileged uid can reach when the trainer's is not (e.g. one installed under /root)."""
        own = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
        if not (self.sandbox and self.as_root) or _world_accessible(own):
            return own
        for candidate in ("/usr/local/bin/python3", "/usr/bin/python3"):
            if os.path.exists(candidate) and _world_accessible(os.path.realpath(candidate)):
                return os.path.realpath(candidate)
        raise SandboxUnavailable(f"no Python interpreter reachable by an unprivileged user ({own} is not); give one with the python knob")

    def describe(self) -> str:
        limits = self.limits
        budget = f"{limits.timeout_s:g} s wall clock, {limits.memory_mb} MB, {limits.processes} processes per program; {self.python}"
        if not self.sandbox:
            return f"NO SANDBOX (unsafe_exec): no filesystem or network isolation, resource limits and a process-group kill only; {budget}"
        user = f", uid {SANDBOX_UID_BASE}+pid" if self.as_root else ""
        return f"bubblewrap (no network, read-only system, private /tmp and work dir, new session{user}); {budget}"

    def check(self) -> None:
        """Raise :class:`SandboxUnavailable` unless a trivial program runs and answers (cached per setup)."""
        problem = _probe(self.limits, self.sandbox, self.python, bwrap_path() if self.sandbox else None)
        if problem:
            raise SandboxUnavailable(problem)

    # --- one run ------------------------------------------------------------------------------------
    def run(self, source: str, kind: str, cases: list[str]) -> RunResult:
        """Run ``source`` on ``cases``: ``kind="call"`` evaluates each case (an expression such as
        ``"f(2)"``) after running the program once; ``kind="stdio"`` runs the program once per case with
        the case as its stdin."""
        if kind not in ("call", "stdio"):
            raise ValueError(f"kind must be 'call' or 'stdio', got {kind!r}")
        base = tempfile.mkdtemp(prefix="sirl-code-")
        try:
            return self._run_in(base, source, kind, cases)
        finally:
            _remove_tree(base)

    def _sandbox_ids(self) -> int | None:
        return SANDBOX_UID_BASE + os.getpid() if self.sandbox and self.as_root else None

    def _process_limit(self, uid: int | None) -> int | None:
        if uid is not None:  # a uid of its own: the count is this sandbox's alone
            return self.limits.processes + _HARNESS_PROCESSES
        if self.as_root:  # the kernel does not apply RLIMIT_NPROC to root
            return None
        # The user's own uid: the count includes every process the user runs, so allow those too.
        return _count_processes(os.getuid()) + self.limits.processes + _HARNESS_PROCESSES

    def _command(self, work: str) -> list[str]:
        interpreter = [self.python, "-I", "-S"]
        if not self.sandbox:
            return [*interpreter, str(HARNESS)]
        bwrap = bwrap_path()
        if bwrap is None:
            raise SandboxUnavailable("bwrap is not installed (Debian/Ubuntu: apt-get install -y bubblewrap)")
        args = [
            bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/work", "--setenv", "LANG", "C.UTF-8",
        ]
        for path in SYSTEM_DIRS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        prefix = os.path.dirname(os.path.dirname(self.python))  # .../bin/python3 -> ...
        if not any(prefix == d or prefix.startswith(d + "/") for d in SYSTEM_DIRS):
            args += ["--ro-bind", prefix, prefix]
        args += [
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--ro-bind", str(HARNESS), "/sirl/harness.py", "--bind", work, "/work", "--chdir", "/work",
            "--remount-ro", "/",
        ]
        return [*args, *interpreter, "/sirl/harness.py"]

    def _run_in(self, base: str, source: str, kind: str, cases: list[str]) -> RunResult:
        limits = self.limits
        uid = self._sandbox_ids()
        work = os.path.join(base, "work")
        os.mkdir(work, 0o700)
        if uid is not None:  # the sandbox's uid may pass through base (not list it) and own its work dir
            os.chmod(base, 0o711)
            os.chown(work, uid, uid)
        job = {
            "kind": kind,
            "source": source,
            "cases": cases,
            "limits": {
                "memory_bytes": limits.memory_mb << 20,
                # CPU time is a second backstop: the wall clock below usually ends a run first.
                "cpu_seconds": max(1, int(limits.timeout_s) + 1),
                "file_bytes": limits.file_mb << 20,
                "open_files": limits.open_files,
                "processes": self._process_limit(uid),
                "output_bytes": limits.output_bytes,
            },
        }
        payload = json.dumps(job).encode("utf-8", "surrogatepass")
        out_path, err_path = os.path.join(base, "results"), os.path.join(base, "stderr")
        identity = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
        timed_out = False
        with open(out_path, "xb") as out, open(err_path, "xb") as err:
            process = subprocess.Popen(
                self._command(work), stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=work,
                env={"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8"}, start_new_session=True, **identity,
            )
            try:
                process.communicate(payload, timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                if process.returncode is None:
                    _kill_group(process)
        with open(err_path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(err_path) - 2000))
            stderr = handle.read().decode("utf-8", "replace")
        cap = len(cases) * (limits.output_bytes * 6 + 100) + 1000  # JSON escaping at most sextuples a byte
        with open(out_path, "rb") as handle:
            raw = handle.read(cap)
        return RunResult(_parse_results(raw, len(cases)), timed_out, stderr)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process group of a run (it leads its own session) and reap its leader."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _parse_results(raw: bytes, n_cases: int) -> list[CaseResult]:
    """Case results from the harness's JSON lines. A case with no line, a malformed line, or more than
    one line (a program writing its own) fails."""
    found: dict[int, CaseResult] = {}
    repeated: set[int] = set()
    for line in raw.split(b"\n"):
        if not line:
            continue
        try:
            index, status, text = json.loads(line)
        except (ValueError, TypeError):  # a truncated or forged line: not a result
            continue
        if not (type(index) is int and 0 <= index < n_cases and status in ("ok", "error") and type(text) is str):
            continue
        if index in found:
            repeated.add(index)
        found[index] = CaseResult(status == "ok", text)
    return [
        CaseResult(False, "more than one result") if i in repeated else found.get(i, CaseResult(False, "no result"))
        for i in range(n_cases)
    ]


@lru_cache(maxsize=None)
def _probe(limits: Limits, sandbox: bool, python: str, bwrap: str | None) -> str | None:
    """None when a trivial program runs and answers under these settings, else what went wrong."""
    if sandbox and bwrap is None:
        return "bwrap is not installed (Debian/Ubuntu: apt-get install -y bubblewrap)"
    runner = ProgramRunner(Limits(timeout_s=max(limits.timeout_s, 10.0), memory_mb=max(limits.memory_mb, 64)), sandbox=sandbox, python=python)
    try:
        result = runner.run("x = 1", "call", ["x + 1"])
    except OSError as error:
        return f"could not start it: {error}"
    if result.cases != [CaseResult(True, "2")]:
        detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"results {result.cases}"
        return f"a test program did not run in it: {detail}"
    return None
