"""The code task: test formats, answer extraction, the shipped problems, and programs that attack the
sandbox. Each hostile program scores 0 within its deadline + 1 s and leaves nothing behind: no process,
no temp directory, no change to the trainer's files or the home directory."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time

import pytest

from sirl.tasks import load_task
from sirl.tasks.base import NoGroundTruth
from sirl.tasks.code import CodeTask, extract_program, normalize_output, parse_assert, parse_tests
from sirl.verifier import TaskSpec, make_verifier
from sirl.verifier.harness import Unserializable, canonical
from sirl.verifier.sandbox import bwrap_path
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


@pytest.fixture(scope="module")
def code_task():
    if bwrap_path() is None:
        pytest.skip("bubblewrap is not installed (apt-get install -y bubblewrap)")
    return CodeTask(timeout_s=DEADLINE)


@needs_bwrap
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_scores_zero_and_leaves_nothing(code_task, name, tmp_path, monkeypatch):
    # The trainer's files: a run folder and a home directory, each with a sentinel file.
    run_file, home_file = tmp_path / "run" / "metrics.jsonl", tmp_path / "home" / "secret"
    for path, text in ((run_file, "trainer data\n"), (home_file, "do not read\n")):
        path.parent.mkdir()
        path.write_text(text)
    monkeypatch.setenv("HOME", str(home_file.parent))
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    program = HOSTILE[name].format(port=listener.getsockname()[1], run_file=str(run_file), home_file=str(home_file))
    problem = code_task.problem(0)  # add(a, b): the hostile programs that define add define it right
    before = descendants()

    start = time.monotonic()
    score = code_task.verify(problem, f"```python\n{program}```")
    elapsed = time.monotonic() - start

    assert score == 0.0
    assert elapsed <= DEADLINE + 1.0
    assert wait_until_gone(descendants() - before) == set()
    assert wait_until_gone(sandbox_processes()) == set()
    assert run_file.read_text() == "trainer data\n" and home_file.read_text() == "do not read\n"
    assert list(temp.iterdir()) == []
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing connected from inside
    listener.close()


@needs_bwrap
def test_hostile_programs_through_the_pool(tmp_path):
    task = CodeTask(timeout_s=DEADLINE)
    problem = task.problem(0)
    programs = [HOSTILE[name] for name in ("infinite loop", "fork bomb", "double fork with setsid", "memory bomb")]
    before = descendants()
    with make_verifier(task, TaskSpec.of("code", {"timeout_s": DEADLINE}), workers=2, timeout_s=DEADLINE + 2) as verifier:
        assert "bubblewrap" in verifier.isolation.describe()
        scores = verifier.score([problem] * 5, programs + [task.reference_solution(problem)])
        assert scores == [0.0, 0.0, 0.0, 0.0, 1.0]
        assert verifier.counts.timeouts == 0  # the sandbox's own wall clock ended them first
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
