"""``code``: write a Python program that passes a problem's tests; programs run in a sandbox.

Problems come from a JSONL file, one object per line, in the shape of MBPP or LiveCodeBench::

    {"id": "add", "prompt": "Write a function add(a, b) that returns a + b.",
     "tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"], "solution": "def add(a, b):\\n    return a + b\\n"}
    {"id": "double", "prompt": "Read an integer n from stdin and print 2n.",
     "tests": [{"input": "3\\n", "output": "6\\n"}], "solution": "print(2 * int(input()))\\n"}

``tests`` (or MBPP's ``test_list``) is a list of one kind: assert lines ``assert CALL == LITERAL`` (also
``assert CALL`` for True and ``assert not CALL`` for False), objects ``{"call": "add(2, 3)",
"expected": "5"}`` with a Python literal as the expected value, or input/output pairs ``{"input",
"output"}``. ``prompt`` may also be called ``text`` (MBPP) and ``solution`` ``code``; ``solution`` is
optional (it is needed for SFT), ``difficulty`` (an int) too.

Worked example (the first row of ``data/code/problems.jsonl``)::

    prompt      Write a function add(a, b) that returns the sum of two integers.\\n
    completion  ```python\\ndef add(a, b):\\n    return a + b\\n```
    program     def add(a, b):\\n    return a + b\\n      (extract_program: the last fenced block)
    sandbox     runs the program, evaluates add(2, 3), add(-1, 1), ... and prints their values: 5, 0, ...
    verify      1.0: every value's canonical text equals the expected one's
    steps       one per line of the completion

    a program whose add returns an object with ``__eq__`` always true   -> 0.0 (not plain data)
    ``import os; os._exit(0)``                                            -> 0.0 (no results)
    ``while True: pass``                                                  -> 0.0 (killed at timeout_s)

Verification (:meth:`CodeTask.verify`) is two stages, like every task's: :func:`extract_program` finds the
program text (the last closed fenced block, ```` ```python ```` or bare ```` ``` ````; else the
content of an unclosed last fence; else the whole completion), and :func:`score_cases` compares what the
program produced with the expected results. The program runs in a bubblewrap sandbox
(:class:`sirl.verifier.sandbox.ProgramRunner`: no network, read-only system, private /tmp, no home
directory, resource limits, a wall-clock kill). The comparison happens here, in the trusted process, on
serialized text: the sandbox sees the test inputs, never the expected values, and the harness sends back
``canonical(value)`` (sirl.verifier.harness), which accepts plain builtin data only. For input/output
tests, the program's stdout is compared line by line with trailing whitespace and trailing blank lines
ignored. A completion scores 1.0 when every test passes and 0.0 otherwise (pass/fail, as pass@k counts it).

Without bubblewrap the task refuses to start, naming the knob ``unsafe_exec``; with
``--task.args.unsafe_exec=true`` programs run without a sandbox (resource limits and a process-group kill
only), which is printed at the start of every run.

Knobs: ``path`` (relative paths are looked up with :func:`sirl.paths.resolve_path`), ``test_fraction``,
``timeout_s``, ``memory_mb`` and ``max_processes`` (per program run), ``unsafe_exec``, ``python`` (the
interpreter that runs programs; default the trainer's own, or a system one when the sandbox's
unprivileged user cannot reach it), ``max_bad_fraction`` (malformed rows up to this share are reported and
skipped; above it the file is refused).
"""

from __future__ import annotations

import ast
import random
import re
from pathlib import Path

from sirl.data import read_records
from sirl.paths import resolve_path
from sirl.tasks.base import NoGroundTruth, Task, check_split, split_of, split_on_separator
from sirl.types import Problem, Span
from sirl.verifier.harness import Unserializable, canonical
from sirl.verifier.sandbox import Limits, ProgramRunner, RunResult, SandboxUnavailable

DEFAULT_PATH = "data/code/problems.jsonl"
MAX_PROGRAM_CHARS = 50_000
"""Longer programs score 0 without being run."""

_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
_OPEN_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*(?:python3?|py)?[ \t]*\n", re.MULTILINE)


# --- answer extraction ------------------------------------------------------------------------------
def extract_program(completion: str) -> str:
    """The program in a completion: the last closed fenced block; else, when a fence was opened and
    never closed (a truncated answer), what follows it; else the whole completion."""
    last = None
    for last in _FENCE_RE.finditer(completion):
        pass
    if last is not None:
        return last.group(1)
    opened = None
    for opened in _OPEN_FENCE_RE.finditer(completion):
        pass
    return completion[opened.end() :] if opened is not None else completion


# --- scoring ----------------------------------------------------------------------------------------
def normalize_output(text: str) -> list[str]:
    """Output lines with trailing whitespace and trailing blank lines removed (LiveCodeBench's leniency)."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def score_cases(kind: str, expected: list[str], result: RunResult) -> float:
    """1.0 when every case produced its expected result, else 0.0. ``expected`` holds canonical texts
    (call cases) or stdout texts (input/output cases); neither ever entered the sandbox."""
    if result.timed_out or len(result.cases) != len(expected):
        return 0.0
    for case, want in zip(result.cases, expected):
        if not case.ok:
            return 0.0
        if kind == "call" and case.text != want:
            return 0.0
        if kind == "stdio" and normalize_output(case.text) != normalize_output(want):
            return 0.0
    return 1.0


# --- data -------------------------------------------------------------------------------------------
def parse_assert(line: str) -> tuple[str, str]:
    """``assert f(2) == 4`` -> (``"f(2)"``, canonical text of 4); ``assert f(2)`` expects True and
    ``assert not f(2)`` False. Raises ValueError for any other shape (e.g. ``math.isclose``)."""
    try:
        tree = ast.parse(line.strip())
    except SyntaxError as error:
        raise ValueError(f"not Python: {error.msg}") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise ValueError("expected one assert statement")
    test = tree.body[0].test
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        call, literal = test.left, test.comparators[0]
        try:
            value = ast.literal_eval(literal)
        except ValueError:
            raise ValueError(f"the right side of == must be a literal, got {ast.unparse(literal)!r}") from None
        return ast.unparse(call), canonical(value)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return ast.unparse(test.operand), canonical(False)
    if isinstance(test, ast.Compare):
        raise ValueError("only 'assert CALL == LITERAL', 'assert CALL' and 'assert not CALL' are supported")
    return ast.unparse(test), canonical(True)


def parse_tests(tests: list) -> tuple[str, list[str], list[str]]:
    """(kind, cases, expected) of a problem's tests; see the module docstring for the three shapes."""
    if not isinstance(tests, list) or not tests:
        raise ValueError("'tests' must be a non-empty list")
    cases, expected, kinds = [], [], set()
    for number, test in enumerate(tests, start=1):
        where = f"test {number}"
        if isinstance(test, str):
            try:
                call, want = parse_assert(test)
            except (ValueError, Unserializable) as error:
                raise ValueError(f"{where} {test!r}: {error}") from None
            kinds.add("call")
        elif isinstance(test, dict) and set(test) == {"call", "expected"}:
            try:
                call, want = test["call"], canonical(ast.literal_eval(test["expected"]))
            except (ValueError, SyntaxError, TypeError, Unserializable) as error:
                raise ValueError(f"{where}: 'expected' must be a Python literal ({error})") from None
            kinds.add("call")
        elif isinstance(test, dict) and set(test) >= {"input", "output"}:
            if not isinstance(test["input"], str) or not isinstance(test["output"], str):
                raise ValueError(f"{where}: 'input' and 'output' must be strings")
            call, want = test["input"], test["output"]
            kinds.add("stdio")
        else:
            raise ValueError(f"{where}: expected an assert line, {{'call', 'expected'}} or {{'input', 'output'}}, got {test!r}")
        cases.append(call)
        expected.append(want)
    if len(kinds) > 1:
        raise ValueError("tests mix function calls and input/output pairs; use one kind per problem")
    return kinds.pop(), cases, expected


def load_rows(path: Path, max_bad_fraction: float = 0.01) -> list[dict]:
    """Problems of a JSONL or Parquet file as ``{"id", "prompt", "kind", "cases", "expected", "solution",
    "difficulty"}``. Read with :func:`sirl.data.read_records`: a malformed row is reported with its file,
    line and field and skipped, and the file is refused when more than ``max_bad_fraction`` of its rows are."""
    if not path.is_file():
        raise ValueError(f"code problems file {str(path)!r} does not exist (knob 'path')")

    def check(record: dict) -> str | None:
        prompt = record.get("prompt", record.get("text"))
        if not isinstance(prompt, str) or not prompt.strip():
            return f"needs a non-empty 'prompt' (or 'text'), fields present: {sorted(record)}"
        try:
            parse_tests(record.get("tests", record.get("test_list")))
        except ValueError as error:
            return str(error)
        solution = record.get("solution", record.get("code"))
        if solution is not None and not isinstance(solution, str):
            return "'solution' must be a string"
        difficulty = record.get("difficulty")
        if difficulty is not None and (not isinstance(difficulty, int) or isinstance(difficulty, bool)):
            return "'difficulty' must be an integer"
        return None

    rows = []
    for record in read_records(path, {}, max_bad_fraction=max_bad_fraction, check=check).rows:
        prompt = record.get("prompt", record.get("text"))
        kind, cases, expected = parse_tests(record.get("tests", record.get("test_list")))
        rows.append({
            "id": str(record.get("id", len(rows))), "prompt": prompt.rstrip("\n") + "\n", "kind": kind,
            "cases": cases, "expected": expected, "solution": record.get("solution", record.get("code")),
            "difficulty": record.get("difficulty"),
        })
    return rows


class CodeTask(Task):
    name = "code"
    description = "write a Python program that passes a problem's tests (MBPP / LiveCodeBench shape), run in a sandbox"
    has_ground_truth = False

    def __init__(
        self,
        path: str = DEFAULT_PATH,
        test_fraction: float = 0.25,
        timeout_s: float = 2.0,
        memory_mb: int = 256,
        max_processes: int = 8,
        unsafe_exec: bool = False,
        python: str | None = None,
        max_bad_fraction: float = 0.01,
    ):
        if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        self.path = resolve_path(path)
        self.test_fraction = float(test_fraction)
        self.rows = load_rows(self.path, max_bad_fraction)
        self._by_split: dict[str, list[int]] = {"train": [], "test": []}
        for index, row in enumerate(self.rows):
            self._by_split[split_of(row["prompt"], self.test_fraction)].append(index)
        limits = Limits(timeout_s=float(timeout_s), memory_mb=memory_mb, processes=max_processes)
        try:
            self.runner = ProgramRunner(limits, sandbox=not unsafe_exec, python=python)
            self.runner.check()
        except SandboxUnavailable as error:
            if unsafe_exec:
                raise ValueError(f"the code task cannot run programs: {error}") from None
            raise ValueError(
                f"the code task runs model-written programs in a bubblewrap sandbox, which is unavailable: {error}; "
                f"or run them WITHOUT a sandbox with --task.args.unsafe_exec=true (only on a machine you can afford to lose)"
            ) from None

    def __len__(self) -> int:
        return len(self.rows)

    def program_isolation(self) -> str:
        return self.runner.describe()

    def problem(self, index: int) -> Problem:
        row = self.rows[index]
        meta = {"id": row["id"], "kind": row["kind"], "cases": row["cases"], "expected": row["expected"],
                "solution": row["solution"], "index": index}
        if row["difficulty"] is not None:
            meta["difficulty"] = row["difficulty"]
        # The "final answer" of a code problem is a program: the reference solution when the file has one.
        return Problem(prompt=row["prompt"], answer=row["solution"] or "", meta=meta)

    def indices(self, split: str) -> list[int]:
        check_split(split)
        return list(self._by_split[split])

    def sample(self, rng: random.Random, split: str) -> Problem:
        check_split(split)
        indices = self._by_split[split]
        if not indices:
            raise ValueError(f"{str(self.path)!r} has no {split} problems with test_fraction={self.test_fraction}")
        return self.problem(indices[rng.randrange(len(indices))])

    def verify(self, problem: Problem, completion: str) -> float:
        source = extract_program(completion)
        if not source.strip() or len(source) > MAX_PROGRAM_CHARS:
            return 0.0
        result = self.runner.run(source, problem.meta["kind"], problem.meta["cases"])
        return score_cases(problem.meta["kind"], problem.meta["expected"], result)

    def split_steps(self, completion: str) -> list[Span]:
        return split_on_separator(completion, "\n")

    def first_error(self, problem: Problem, completion: str) -> int | None:
        raise NoGroundTruth("the code task has no ground-truth step labels: only the tests' outcome can be checked")

    def reference_solution(self, problem: Problem) -> str:
        if problem.meta["solution"] is None:
            raise ValueError(f"problem {problem.meta['id']!r} of {self.path} has no 'solution'")
        return problem.meta["solution"]

    def alphabet(self, n_samples: int = 0, seed: int = 0) -> str:
        """Every character of the file's prompts and solutions, plus the verification format and fences."""
        chars = set(self.verify_query + self.verdict_none + "[]0123456789\n`python")
        for row in self.rows:
            chars.update(row["prompt"], row["solution"] or "")
        return "".join(sorted(chars))
