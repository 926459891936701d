"""The code task: test formats, answer extraction, the shipped problems, and programs that attack the
sandbox and the unsandboxed path. Each hostile program scores 0, is ended by what should end it (the
run's wall-clock kill, or the error its resource limit raises: no clock is read here), and leaves nothing
behind: no process, no temp directory, no change to the trainer's files or the home directory."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from sirl.tasks import load_task
from sirl.tasks.base import NoGroundTruth
from sirl.tasks.code import CodeTask, extract_program, normalize_output, parse_assert, parse_tests
from sirl.verifier import TaskSpec, make_verifier
from sirl.verifier.harness import Unserializable, canonical
from sirl.verifier.sandbox import CaseResult, Limits, ProgramRunner, RunResult, SandboxUnavailable, bwrap_path
from conftest import scaled
from verifier_helpers import descendants, sandbox_processes, wait_until_gone

needs_bwrap = pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap is not installed (apt-get install -y bubblewrap)")
DEADLINE = 1.0


# --- formats and extraction (no sandbox) ------------------------------------------------------------
def test_canonical_text_matches_python_equality_on_plain_data():
    assert canonical(4) == canonical(4.0) == "4"
    assert canonical({3, 1, 2}) == canonical({2, 1, 3}) == "set({1, 2, 3})"
    assert canonical({"b": 1, "a": [1, (2,)]}) == canonical({"a": [1, (2,)], "b": 1})
    assert canonical(True) != canonical(1)  # stricter than ==: a bool is not a number here
    assert canonical([1, 2]) != canonical((1, 2))

    class Liar:
        def __eq__(self, other):
            return True

        def __repr__(self):
            return "4"

    class Int(int):
        pass

    for value in (Liar(), Int(4), [Liar()], {"k": Liar()}):
        with pytest.raises(Unserializable):
            canonical(value)


def test_assert_lines_and_test_objects():
    assert parse_assert("assert add(2, 3) == 5") == ("add(2, 3)", "5")
    assert parse_assert("assert is_even(4)") == ("is_even(4)", "True")
    assert parse_assert("assert not is_even(7)") == ("is_even(7)", "False")
    assert parse_assert("assert f([1,2]) == {'a': (1,)}") == ("f([1, 2])", "{'a': (1,)}")
    for bad in ("assert f(1) == g(2)", "assert f(1) < 2", "x = 1", "assert (("):
        with pytest.raises(ValueError):
            parse_assert(bad)
    assert parse_tests([{"call": "f(2)", "expected": "4.0"}]) == ("call", ["f(2)"], ["4"])
    assert parse_tests([{"input": "1\n", "output": "2\n"}]) == ("stdio", ["1\n"], ["2\n"])
    with pytest.raises(ValueError, match="mix"):
        parse_tests(["assert f(1) == 1", {"input": "", "output": ""}])


def test_extract_program():
    assert extract_program("def f(): pass") == "def f(): pass"
    assert extract_program("Here:\n```python\na = 1\n```\nthen\n```\nb = 2\n```\n") == "b = 2\n"
    assert extract_program("```py\nx = 1\n") == "x = 1\n"  # truncated: the unclosed fence's content
    assert normalize_output("1  \n2\n\n\n") == normalize_output("1\n2") == ["1", "2"]


def test_bad_problem_files_name_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "p", "tests": ["assert f(1) < 2"]}) + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl, line 1: test 1"):
        CodeTask(path=str(path), unsafe_exec=True)


def test_refuses_to_run_without_a_sandbox_unless_told(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    with pytest.raises(ValueError, match=r"bubblewrap.*--task.args.unsafe_exec=true"):
        CodeTask()
    task = CodeTask(unsafe_exec=True, python=shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin"))
    assert task.program_isolation().startswith("NO SANDBOX")
    problem = task.problem(0)
    assert task.verify(problem, task.reference_solution(problem)) == 1.0


# --- the shipped problems, in the sandbox -------------------------------------------------------------
@needs_bwrap
def test_shipped_problems_pass_their_reference_solutions_and_split_cleanly():
    task = load_task("code")
    assert len(task) >= 20 and {task.problem(i).meta["kind"] for i in range(len(task))} == {"call", "stdio"}
    train, test = set(task.indices("train")), set(task.indices("test"))
    assert train and test and not train & test and len(train | test) == len(task)
    for index in range(len(task)):
        problem = task.problem(index)
        solution = task.reference_solution(problem)
        assert task.verify(problem, f"Here is my program:\n```python\n{solution}```\n") == 1.0, problem.meta["id"]
    assert task.verify(task.problem(0), "def add(a, b):\n    return a - b\n") == 0.0
    steps = task.split_steps("a\nb\n")
    assert steps == [(0, 2), (2, 4)]
    with pytest.raises(NoGroundTruth):
        task.first_error(task.problem(0), "")


# --- hostile programs ---------------------------------------------------------------------------------
HOSTILE = {
    "infinite loop": "while True:\n    pass\n",
    "sleep": "import time\ntime.sleep(1e6)\n",
    "memory bomb": "blocks = []\nwhile True:\n    blocks.append(bytearray(10**7))\n",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "double fork with setsid": (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(1000)\n"
        "    os._exit(0)\ntime.sleep(1000)\n"
    ),
    "network connect": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=0.5)\ndef add(a, b):\n    return a + b\n",
    "write outside its temp dir": "open({run_file!r}, 'w').write('overwritten')\ndef add(a, b):\n    return a + b\n",
    "read the user's home": "SECRET = open({home_file!r}).read()\ndef add(a, b):\n    return a + b\n",
    "os._exit before the tests": "import os\nos._exit(0)\ndef add(a, b):\n    return a + b\n",
    "__eq__ always true": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n    def __repr__(self):\n        return '5'\n"
        "def add(a, b):\n    return Anything()\n"
    ),
}
ENDED_BY = {
    # name: (the run's wall-clock kill fired, what the first test case reports)
    "infinite loop": (True, "no result"),
    "sleep": (True, "no result"),
    "memory bomb": (False, "program: MemoryError"),  # RLIMIT_AS
    "fork bomb": (True, "no result"),  # RLIMIT_NPROC makes each fork fail; it spins until the kill
    "double fork with setsid": (True, "no result"),
    "network connect": (False, "program: ConnectionRefusedError"),  # a network namespace of its own: nothing listens
    "write outside its temp dir": (False, "program: FileNotFoundError"),  # the run folder is not mounted
    "read the user's home": (False, "program: FileNotFoundError"),  # nor the home directory
    "os._exit before the tests": (False, "no result"),
    "__eq__ always true": (False, "Unserializable: a Anything is not plain data"),
}


def record_runs(monkeypatch, task: CodeTask) -> list[RunResult]:
    """What each of the task's program runs returned (verify keeps only the score)."""
    results, real = [], task.runner.run

    def run(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(task.runner, "run", run)
    return results


@pytest.fixture
def system_temp(monkeypatch):
    """A private temp directory for the runs' folders, in the system's temp directory: the sandbox's
    unprivileged uid must pass through it as through /tmp (pytest's own tmp_path is closed to other
    users, and a run under it could not start at all)."""
    temp = Path(tempfile.mkdtemp(prefix="sirl-test-runs-"))
    temp.chmod(0o711)
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    yield temp
    shutil.rmtree(temp, ignore_errors=True)


PATIENT = 20.0
"""The deadline of runs that a resource limit or an error must end (in seconds, times SIRL_TEST_TIME_FACTOR):
far beyond what they take, so that on a loaded machine the clock never ends them first."""


def deadline_for(name: str) -> float:
    """The wall clock ends only the programs that nothing else ends; they get the short deadline."""
    return DEADLINE if ENDED_BY[name][0] else scaled(PATIENT)


@pytest.fixture(scope="module")
def code_tasks():
    if bwrap_path() is None:
        pytest.skip("bubblewrap is not installed (apt-get install -y bubblewrap)")
    return {deadline: CodeTask(timeout_s=deadline) for deadline in (DEADLINE, scaled(PATIENT))}


@needs_bwrap
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_scores_zero_and_leaves_nothing(code_tasks, name, tmp_path, monkeypatch, system_temp):
    code_task = code_tasks[deadline_for(name)]
    # The trainer's files: a run folder and a home directory, each with a sentinel file.
    run_file, home_file = tmp_path / "run" / "metrics.jsonl", tmp_path / "home" / "secret"
    for path, text in ((run_file, "trainer data\n"), (home_file, "do not read\n")):
        path.parent.mkdir()
        path.write_text(text)
    monkeypatch.setenv("HOME", str(home_file.parent))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    program = HOSTILE[name].format(port=listener.getsockname()[1], run_file=str(run_file), home_file=str(home_file))
    problem = code_task.problem(0)  # add(a, b): the hostile programs that define add define it right
    runs = record_runs(monkeypatch, code_task)
    before = descendants()

    assert code_task.verify(problem, f"```python\n{program}```") == 0.0

    [result] = runs
    timed_out, first_case = ENDED_BY[name]
    assert (result.timed_out, result.cases[0].text[: len(first_case)]) == (timed_out, first_case), result.stderr
    assert wait_until_gone(descendants() - before) == set()
    assert wait_until_gone(sandbox_processes()) == set()
    assert run_file.read_text() == "trainer data\n" and home_file.read_text() == "do not read\n"
    assert list(system_temp.iterdir()) == []
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing connected from inside
    listener.close()


@needs_bwrap
def test_hostile_programs_through_the_pool(tmp_path):
    task = CodeTask(timeout_s=DEADLINE)
    problem = task.problem(0)
    programs = [HOSTILE[name] for name in ("infinite loop", "fork bomb", "double fork with setsid", "memory bomb")]
    before = descendants()
    # The pool's own deadline is far behind the sandbox's (1 s): had the sandbox's clock not ended a
    # program, the pool's would, and count it.
    pool_deadline = DEADLINE + scaled(10.0)
    with make_verifier(task, TaskSpec.of("code", {"timeout_s": DEADLINE}), workers=2, timeout_s=pool_deadline) as verifier:
        assert "bubblewrap" in verifier.isolation.describe()
        scores = verifier.score([problem] * 5, programs + [task.reference_solution(problem)])
        assert scores == [0.0, 0.0, 0.0, 0.0, 1.0]
        assert verifier.counts.timeouts == 0  # the sandbox's own wall clock ended them
    assert wait_until_gone(descendants() - before) == set()
    assert wait_until_gone(sandbox_processes()) == set()


@needs_bwrap
def test_forged_result_lines_gain_nothing():
    # The program writes "passed" result lines of its own to every descriptor, then ends before the harness
    # runs a test. The expected values never entered the sandbox, so a forged line can only hold a guess.
    forger = (
        "import os\nfor fd in range(1, 20):\n    for i in range(10):\n        try:\n"
        "            os.write(fd, b'[%d, \"ok\", \"True\"]\\n' % i)\n        except OSError:\n            pass\nos._exit(0)\n"
    )
    task = load_task("code")
    assert [task.verify(task.problem(i), forger) for i in range(len(task))] == [0.0] * len(task)


# --- without a sandbox (unsafe_exec): the resource limits and the kill are all there is ----------------
def unsafe_task(monkeypatch, tmp_path, deadline: float) -> CodeTask:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH: only unsafe_exec runs programs
    return CodeTask(timeout_s=deadline, unsafe_exec=True)


def stdio_problem(task: CodeTask):
    return next(task.problem(i) for i in range(len(task)) if task.problem(i).meta["kind"] == "stdio")


@pytest.mark.parametrize("name", ["infinite loop", "sleep", "memory bomb"])
def test_without_a_sandbox_a_runaway_program_is_ended_and_leaves_nothing(name, monkeypatch, tmp_path, system_temp):
    task = unsafe_task(monkeypatch, tmp_path, deadline_for(name))
    runs = record_runs(monkeypatch, task)
    before = descendants()
    assert task.verify(task.problem(0), HOSTILE[name]) == 0.0
    [result] = runs
    timed_out, first_case = ENDED_BY[name]
    assert (result.timed_out, result.cases[0].text[: len(first_case)]) == (timed_out, first_case), result.stderr
    assert wait_until_gone(descendants() - before) == set()
    assert list(system_temp.iterdir()) == []


def test_without_a_sandbox_an_output_flood_is_stopped_by_the_file_size_limit(monkeypatch, tmp_path, system_temp):
    """A program that prints forever: its output file reaches RLIMIT_FSIZE (16 MB) and the write fails,
    long before the wall clock; the case fails and the file is deleted with the run's folder."""
    task = unsafe_task(monkeypatch, tmp_path, scaled(PATIENT))
    problem = stdio_problem(task)
    runs = record_runs(monkeypatch, task)
    flood = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"
    assert task.verify(problem, flood) == 0.0
    [result] = runs
    assert not result.timed_out and result.cases[0] == CaseResult(False, "exit status 256")  # exit(1): the write raised EFBIG
    assert list(system_temp.iterdir()) == []
    # One megabyte more than a case may print, well under the file limit: refused by the output cap.
    assert task.verify(problem, "print('x' * 1000000)\n") == 0.0
    assert runs[-1].cases[0] == CaseResult(False, "more than 1000000 bytes of output")


LIMITS_PROGRAM = """import errno
def write(n):
    try:
        with open('big', 'wb') as f:
            f.write(b'x' * n)
        return 'wrote'
    except OSError as error:
        return errno.errorcode[error.errno]
def open_all():
    files = []
    try:
        while True:
            files.append(open('/dev/null'))
    except OSError as error:
        return max(f.fileno() for f in files), errno.errorcode[error.errno]
"""


@pytest.mark.parametrize("sandbox", [False, pytest.param(True, marks=needs_bwrap)], ids=["unsafe_exec", "bubblewrap"])
def test_the_stdout_file_size_and_open_file_limits_hold_to_the_byte(sandbox, system_temp):
    # A deadline far beyond what these take, so that only the limits decide.
    limits = Limits(timeout_s=scaled(PATIENT), output_bytes=100, file_mb=1, open_files=16)
    runner = ProgramRunner(limits, sandbox=sandbox)
    result = runner.run(LIMITS_PROGRAM, "call", ["write(1 << 20)", "write((1 << 20) + 1)", "open_all()"])
    # 1 MB is the largest file; descriptors are numbered from 0, so the last one a process may hold is 15
    assert [c.text for c in result.cases] == ["'wrote'", "'EFBIG'", "(15, 'EMFILE')"] and not result.timed_out
    # print adds a newline: 99 characters are 100 bytes, the most a case may write; 100 are one too many
    assert runner.run("print('x' * 99)\n", "stdio", [""]).cases == [CaseResult(True, "x" * 99 + "\n")]
    assert runner.run("print('x' * 100)\n", "stdio", [""]).cases == [CaseResult(False, "more than 100 bytes of output")]
    assert list(system_temp.iterdir()) == []


def test_a_missing_or_broken_bubblewrap_is_sandbox_unavailable(monkeypatch, tmp_path, system_temp):
    tools = system_temp / "bin"  # where the sandbox's uid may run a program from
    tools.mkdir(mode=0o755)
    monkeypatch.setenv("PATH", str(tools))
    runner = ProgramRunner(Limits(timeout_s=scaled(PATIENT)))
    with pytest.raises(SandboxUnavailable, match="bwrap is not installed"):
        runner.check()
    with pytest.raises(SandboxUnavailable, match="bwrap is not installed"):
        runner.run("x = 1", "call", ["x"])  # and nothing runs unsandboxed in its place
    # A bwrap that is there but cannot make a sandbox (a container without user namespaces): named, refused.
    fake = tools / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="a test program did not run in it: bwrap: No permissions to create new namespace"):
        runner.check()
    with pytest.raises(ValueError, match=r"bubblewrap sandbox, which is unavailable: .*No permissions.*unsafe_exec=true"):
        CodeTask()
    with pytest.raises(ValueError, match="the code task cannot run programs: could not start it"):
        CodeTask(unsafe_exec=True, python=str(tmp_path / "no-such-python"))
