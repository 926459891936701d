"""The test harness that runs a model-written program inside the sandbox, and the value serializer that
the trusted side shares with it.

This file is two things at once:

- a script, run as ``python -I -S harness.py`` inside the sandbox (sirl.verifier.sandbox), that reads a
  JSON job from stdin, lowers its own resource limits, runs the program, and writes one JSON line per
  test case to its original stdout: ``[index, "ok", text]`` or ``[index, "error", message]``;
- a module imported by the trusted side for :func:`canonical`, so that expected values are serialized
  by exactly the code that serializes the program's values.

Why the result channel needs no secret: the program runs in this process and can write anything
anywhere this script can, forged result lines included. It never sees the expected values, though:
they stay in the parent, which compares them with the serialized values it reads back. A forged line
passes only if it holds the right answer, which is the same as computing it. The parent never trusts a
verdict, an exit status or an object made by the program, only text, so ``__eq__`` returning True,
``__repr__`` lying about a type or ``os._exit(0)`` before the tests run gain nothing.

It imports nothing outside the standard library and runs on any Python 3.8+.
"""

import json
import os
import sys

MAX_DEPTH = 64
"""Deepest nesting of containers :func:`canonical` serializes; deeper values count as wrong answers."""
MAX_TEXT = 1_000_000
"""Longest serialized value in characters; longer values count as wrong answers."""


class Unserializable(TypeError):
    """A value that is not made of plain builtin data (None, bool, int, float, complex, str, bytes,
    list, tuple, set, frozenset, dict), or one too deep or too large."""


def canonical(value, _depth=0):
    """The canonical text of a value made of builtin data, equal for values that ``==`` treats as equal.

    Types are tested with ``type(x) is T``, never ``isinstance``, and each value is printed with the
    builtin type's own ``__repr__`` (``int.__repr__(x)``), so a subclass or an object overriding
    ``__eq__`` or ``__repr__`` is rejected rather than trusted. Sets and dict items are sorted by their
    canonical text (string hashing, and so set order, differs between processes). An integral float
    prints as an int (``4.0 == 4`` in Python, and a test ``f(2) == 4`` accepts either); bool stays bool.
    """
    if _depth > MAX_DEPTH:
        raise Unserializable("nested deeper than %d" % MAX_DEPTH)
    kind = type(value)
    if value is None or kind is bool:
        return "True" if value is True else "False" if value is False else "None"
    if kind is int:
        return int.__repr__(value)
    if kind is float:
        if value == value and value not in (float("inf"), float("-inf")) and value.is_integer() and abs(value) < 2**53:
            return int.__repr__(int(value))
        return float.__repr__(value)
    if kind is complex:
        return complex.__repr__(value)
    if kind is str:
        text = str.__repr__(value)
    elif kind is bytes:
        text = bytes.__repr__(value)
    elif kind is list or kind is tuple:
        items = [canonical(item, _depth + 1) for item in value]
        if kind is list:
            text = "[" + ", ".join(items) + "]"
        else:
            text = "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    elif kind is set or kind is frozenset:
        text = "%s({%s})" % (kind.__name__, ", ".join(sorted(canonical(item, _depth + 1) for item in value)))
    elif kind is dict:
        pairs = sorted((canonical(k, _depth + 1), canonical(v, _depth + 1)) for k, v in dict.items(value))
        text = "{" + ", ".join(k + ": " + v for k, v in pairs) + "}"
    else:
        raise Unserializable("a %s is not plain data" % kind.__name__)
    if len(text) > MAX_TEXT:
        raise Unserializable("longer than %d characters" % MAX_TEXT)
    return text


# --- the script -----------------------------------------------------------------------------------
def _limit(resource, name, value):
    # Soft and hard limit alike: an unprivileged process can lower its hard limits but never raise them,
    # so the program cannot undo these.
    resource.setrlimit(getattr(resource, name), (value, value))


def _set_limits(limits):
    import resource

    _limit(resource, "RLIMIT_AS", limits["memory_bytes"])
    _limit(resource, "RLIMIT_CPU", limits["cpu_seconds"])
    _limit(resource, "RLIMIT_FSIZE", limits["file_bytes"])
    _limit(resource, "RLIMIT_NOFILE", limits["open_files"])
    _limit(resource, "RLIMIT_CORE", 0)
    if limits.get("processes") is not None:
        _limit(resource, "RLIMIT_NPROC", limits["processes"])


def _run_calls(source, cases, emit):
    """Function tests: run the program once, then evaluate each call in its namespace."""
    namespace = {"__name__": "__main__"}
    try:
        exec(compile(source, "solution.py", "exec"), namespace)
    except BaseException as error:  # the program failed to load: every case fails, with its error
        for index in range(len(cases)):
            emit(index, "error", "program: %s: %s" % (type(error).__name__, error))
        return
    for index, call in enumerate(cases):
        try:
            value = eval(compile(call, "test", "eval"), namespace)
            emit(index, "ok", canonical(value))
        except BaseException as error:
            emit(index, "error", "%s: %s" % (type(error).__name__, error))


def _run_stdio(source, cases, emit, out_cap):
    """Input/output tests: each case runs the program in a fresh child process with the case's input
    on stdin; what it writes to stdout is the case's output. A child per case keeps the cases
    independent of each other and of this process (a program that calls ``os._exit`` ends one case)."""
    code = compile(source, "solution.py", "exec")
    for index, stdin_text in enumerate(cases):
        in_path, out_path = "case-%d.in" % index, "case-%d.out" % index  # in the work directory
        with open(in_path, "w") as handle:
            handle.write(stdin_text)
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                os.dup2(os.open(in_path, os.O_RDONLY), 0)
                os.dup2(os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
                sys.stdin = open(0, "r", closefd=False)
                sys.stdout = open(1, "w", closefd=False)
                try:
                    exec(code, {"__name__": "__main__"})
                    status = 0
                except SystemExit as stop:
                    status = 0 if stop.code in (None, 0) else 1
                finally:
                    sys.stdout.flush()
            finally:
                os._exit(status)
        _, wait_status = os.waitpid(pid, 0)
        with open(out_path, "rb") as handle:
            output = handle.read(out_cap + 1)
        if wait_status != 0:
            emit(index, "error", "exit status %d" % wait_status)
        elif len(output) > out_cap:
            emit(index, "error", "more than %d bytes of output" % out_cap)
        else:
            emit(index, "ok", output.decode("utf-8", "replace"))


def main():
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    _set_limits(job["limits"])
    results = os.dup(1)
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # the program's own prints go nowhere; results go to the saved descriptor
    sys.stdin, sys.stdout = open(0, "r", closefd=False), open(1, "w", closefd=False)
    import builtins

    builtins.exit = builtins.quit = sys.exit  # run with -S, so the site module did not define them

    def emit(index, status, text):
        line = json.dumps([index, status, text]) + "\n"
        os.write(results, line.encode("utf-8", "surrogatepass"))

    if job["kind"] == "call":
        _run_calls(job["source"], job["cases"], emit)
    else:
        _run_stdio(job["source"], job["cases"], emit, job["limits"]["output_bytes"])
    os._exit(0)


if __name__ == "__main__":
    main()
