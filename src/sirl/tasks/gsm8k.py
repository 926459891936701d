"""``gsm8k``: grade-school math word problems (OpenAI's GSM8K), read from a JSONL file.

Worked example (the first row of ``data/gsm8k/test.jsonl``)::

    prompt      Janet’s ducks lay 16 eggs per day. [...] How much in dollars does she make every day at the farmers' market?\\n
    solution    Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\\n
                She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market.\\n
                #### 18
    answer      18
    steps       [Janet sells [...] a day.\\n] [She makes [...] market.\\n] [#### 18]
    difficulty  2 (the solution's lines before its "#### 18" line)

    verify("[...]\\nA: 18")            -> 1.0   (the format of example_model_solutions.jsonl)
    verify("[...]\\n#### $18.00")      -> 1.0   ("$", "1,000", "18.00", "18%" are read as numbers)
    verify("[...] \\boxed{18}")        -> 1.0
    verify("9 * 2 = 18 dollars")       -> 1.0   (no answer format: the last number, 18)
    verify("[...]\\nA: 19\\nso 18")     -> 0.0   (a formal answer is present, the fallback is not used)

The prompt is the question followed by one newline; the model writes its solution after it. The data has
no step labels, so ``has_ground_truth`` is False and :meth:`GSM8KTask.first_error` raises
:class:`NoGroundTruth`. Steps are lines: each step is one line of the completion with its newline, and a
blank line joins the step before it (:func:`sirl.tasks.base.split_lines`).

Outcome verification (:meth:`GSM8KTask.verify`) is two separate stages:

1. :func:`extract_answer` finds the final answer *text*: the last ``#### N`` (the text after the last
   ``####``, to the end of its line), else the last line starting ``A:``, else the content of the last
   ``\\boxed{...}`` (braces balanced; an unclosed one is a truncated answer and reads as empty), and only
   when none of these formats occurs anywhere, the last number in the text.
2. :func:`score_answer` normalizes that text (drops ``$`` and ``\\$``, thousands separators, a trailing
   full stop or exclamation mark), reads it as LaTeX when it has a backslash and as plain text
   otherwise, and compares it with the gold answer using math-verify's ``parse`` and ``verify``, which
   read ``18.00`` as 18, ``18%`` as 18 or 0.18, ``\\frac{36}{2}`` as 18, and the leading number of
   ``18 dollars`` (so, like the usual GSM8K graders, it is lenient about words after a number). Two kinds
   of answer text score 0 without being parsed: those over :data:`MAX_ANSWER_CHARS` characters (a
   degenerate line, a number thousands of digits long) and those with a power, a factorial or a LaTeX
   command other than a few harmless ones (``10**10**10``, ``\\binom{10^8}{5}``), which sympy would
   evaluate for minutes. A GSM8K answer is a number and needs none of them.

With these rules ``verify`` agrees with the dataset authors' ``is_correct`` label on all 5,276 model
solutions in ``data/gsm8k/example_model_solutions.jsonl`` (``tests/test_gsm8k.py`` checks it).

Knobs: ``path`` (a JSONL file, one object per line with a ``question`` and an ``answer`` whose last line
is ``#### N``, or a Parquet file with those columns; relative paths are looked up with
:func:`sirl.paths.resolve_path`), ``test_fraction`` (the share of questions, by a hash of their text, in
the test split), ``max_bad_fraction`` (the share of malformed rows that are reported and skipped; above
it the file is refused) and ``max_prompt_chars`` (longer questions are skipped and counted, never cut).
"""

from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from pathlib import Path

from math_verify import ExprExtractionConfig, LatexExtractionConfig
from math_verify import parse as mv_parse
from math_verify import verify as mv_verify
from math_verify.errors import TimeoutException as MathVerifyTimeout

from sirl.data import read_records
from sirl.paths import resolve_path
from sirl.tasks.base import NoGroundTruth, Task, check_split, split_lines, split_of
from sirl.types import Problem, Span

DEFAULT_PATH = "data/gsm8k/test.jsonl"
MAX_ANSWER_CHARS = 100
"""Longest answer text that is parsed at all. Gold answers are short numbers; this bounds the time
math-verify (sympy) can spend on a completion, whatever its length."""

# A number as written in solutions: "18", "-3", "1,000", "2.5", ".5". A minus sign counts only where it
# cannot be a binary operator (not right after a digit, letter, "." or ")"), so "16-3" ends in 3, not -3.
_NUMBER_RE = re.compile(r"(?:(?<![\w.)])-)?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)")
_GOLD_RE = re.compile(r"[-+]?\d+(?:\.\d+)?(?:/\d+)?")
_ANSWER_LINE_RE = re.compile(r"^[ \t]*A:(.*)$", re.MULTILINE)
_BOXED_RE = re.compile(r"\\boxed\s*\{")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LATEX_SPACE_RE = re.compile(r"(?<=\d)\\[,!;: ](?=\d)")  # 1\,000: a thin space between digit groups
_GOLD_MARKER = "####"
_LATEX_COMMAND_RE = re.compile(r"\\([A-Za-z]+|[^A-Za-z])")
_SAFE_LATEX = frozenset(
    "frac dfrac tfrac sqrt text textbf textrm mathrm mathbf cdot times div left right quad qquad approx".split()
    + ["%", ",", "!", ";", ":", " ", "{", "}", "(", ")", "[", "]"]
)

# Gold answers are plain numbers. A model's answer is plain text ("18 dollars", "1/2") or, when it has a
# backslash, LaTeX (\frac{1}{2}, mostly from \boxed{...}), which is parsed as $...$: math-verify reads
# LaTeX without delimiters only in part ("3\frac{1}{2}" as 1/2, "2\cdot 9" as 9).
_GOLD_CONFIG = (ExprExtractionConfig(),)
_PRED_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())


# --- answer extraction ------------------------------------------------------------------------------
def _boxed_content(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (nested braces balanced), "" when that one is never
    closed, None when there is none. Scans from the last occurrence only, so it is linear in the text."""
    start = text.rfind("\\boxed")
    while start >= 0:
        match = _BOXED_RE.match(text, start)
        if match:
            break
        start = text.rfind("\\boxed", 0, start)
    else:
        return None
    depth, open_at = 1, match.end()
    for index in range(open_at, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_at:index]
    return ""


def extract_answer(text: str) -> str | None:
    """The final answer written in ``text``, as raw text (not normalized), or None when there is none.

    In order of precedence: the text after the last ``####`` up to the end of its line; the text after
    ``A:`` on the last line that starts with ``A:``; the content of the last ``\\boxed{...}``. Only when
    none of these formats appears does it fall back to the last number in the text. A format that is
    present but empty (``"A:"`` at the very end, an unclosed ``\\boxed{``) gives "" rather than falling
    back: the model did state an answer, and it is not a number found elsewhere.
    """
    marker = text.rfind(_GOLD_MARKER)
    if marker >= 0:
        end = text.find("\n", marker)
        return text[marker + len(_GOLD_MARKER) : end if end >= 0 else len(text)].strip()
    last_line = None
    for last_line in _ANSWER_LINE_RE.finditer(text):
        pass
    if last_line is not None:
        return last_line.group(1).strip()
    boxed = _boxed_content(text)
    if boxed is not None:
        return boxed.strip()
    last_number = None
    for last_number in _NUMBER_RE.finditer(text):
        pass
    return last_number.group(0) if last_number is not None else None


# --- scoring ----------------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """Answer text as math-verify should see it: no currency signs or LaTeX ``$`` delimiters, no
    thousands separators (``1,000``, LaTeX ``1{,}000`` and ``1\\,000``), no trailing full stop or
    exclamation mark (``#### 18!`` is 18, not 18 factorial)."""
    text = text.replace("{,}", ",").replace("\\$", "").replace("$", "")
    text = _LATEX_SPACE_RE.sub("", text)
    text = _THOUSANDS_RE.sub("", text)
    return text.strip().rstrip(".!").strip()


# math-verify's timeouts use signal.alarm, which only works on the main thread (it raises ValueError
# elsewhere). Both calls below disable them (parsing_timeout=None, timeout_seconds=None): the inputs
# are at most MAX_ANSWER_CHARS long, and the verifier pool (sirl.verifier.pool) bounds the time and memory
# of a whole verify call from outside; sirl.verifier drops math-verify's warning that its timeouts are disabled.
# With raise_on_error=False it catches errors of parsing and comparison itself and returns []/False;
# the only exceptions it still lets out are its ValueError for signals outside the main thread and its
# TimeoutException, which _parse and score_answer catch.
@lru_cache(maxsize=8192)
def _parse(text: str, gold: bool) -> tuple:
    try:
        parsed = mv_parse(
            text,
            extraction_config=_GOLD_CONFIG if gold else _PRED_CONFIG,
            parsing_timeout=None,
            raise_on_error=False,
        )
    except (ValueError, MathVerifyTimeout):
        return ()
    return tuple(parsed)


def _cheap_to_evaluate(answer: str) -> bool:
    """False for answer texts that sympy could spend unbounded time on: powers (``10**10**10``,
    ``10^{10^{10}}``), factorials (``!`` other than LaTeX's ``\\!`` space) and LaTeX commands outside
    :data:`_SAFE_LATEX` (``\\prod``, ``\\binom``, ``\\sum`` ...). sympy evaluates these eagerly and, with
    math-verify's timeouts off, would hang the verifier; a GSM8K final answer is a number and needs none
    of them, so such an answer scores 0 instead."""
    if "^" in answer or "**" in answer or "!" in answer.replace("\\!", ""):
        return False
    return all(command in _SAFE_LATEX for command in _LATEX_COMMAND_RE.findall(answer))


def score_answer(gold: str, answer: str | None) -> float:
    """1.0 when the answer text means the same number as the gold answer under math-verify, else 0.0."""
    if answer is None:
        return 0.0
    answer = normalize_answer(answer)
    if not answer or len(answer) > MAX_ANSWER_CHARS or not _cheap_to_evaluate(answer):
        return 0.0
    if "\\" in answer:
        answer = f"${answer}$"
    gold_parsed, answer_parsed = _parse(normalize_answer(gold), True), _parse(answer, False)
    if not gold_parsed or not answer_parsed:
        return 0.0
    try:
        same = mv_verify(list(gold_parsed), list(answer_parsed), timeout_seconds=None, raise_on_error=False)
    except (ValueError, MathVerifyTimeout):
        return 0.0
    return 1.0 if same else 0.0


# --- data -------------------------------------------------------------------------------------------
def gold_answer(solution: str) -> str | None:
    """The ``N`` of a worked solution's final ``#### N`` line, commas removed; None when the last
    non-empty line is not ``#### N`` with a number N."""
    lines = solution.rstrip().splitlines()
    if not lines or not lines[-1].lstrip().startswith(_GOLD_MARKER):
        return None
    value = lines[-1].lstrip()[len(_GOLD_MARKER) :].strip().replace(",", "")
    return value if _GOLD_RE.fullmatch(value) else None


def load_rows(path: Path, max_bad_fraction: float = 0.01, max_prompt_chars: int | None = 4000) -> list[dict]:
    """The rows of a GSM8K-style JSONL or Parquet file, each ``{"question", "solution", "answer", "index"}``.

    Read with :func:`sirl.data.read_records`: a row that is not a question with a ``#### N`` answer is
    reported with its file and line and skipped, and the whole file is refused when more than
    ``max_bad_fraction`` of its rows are; questions over ``max_prompt_chars`` characters are skipped and
    counted. ``index`` numbers the rows kept (0-based).
    """
    if not path.is_file():
        raise ValueError(f"GSM8K data file {str(path)!r} does not exist (knob 'path')")

    def has_gold(record: dict) -> str | None:
        if gold_answer(record["answer"]) is None:
            return f"field 'answer' must end in a line '#### N' with a number N, its last line is {record['answer'].rstrip().splitlines()[-1]!r}"
        return None

    records = read_records(
        path, {"question": str, "answer": str}, prompt_field="question", max_prompt_chars=max_prompt_chars,
        max_bad_fraction=max_bad_fraction, check=has_gold,
    )
    return [
        {"question": r["question"], "solution": r["answer"], "answer": gold_answer(r["answer"]), "index": i}
        for i, r in enumerate(records.rows)
    ]


class GSM8KTask(Task):
    name = "gsm8k"
    description = "grade-school math word problems (GSM8K); outcome-only, no step labels"
    has_ground_truth = False

    def __init__(self, path: str = DEFAULT_PATH, test_fraction: float = 0.2, max_bad_fraction: float = 0.01, max_prompt_chars: int | None = 4000):
        if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        self.path = resolve_path(path)
        self.test_fraction = float(test_fraction)
        self.rows = load_rows(self.path, max_bad_fraction, max_prompt_chars)
        self._by_split: dict[str, list[int]] = {"train": [], "test": []}
        for row in self.rows:
            self._by_split[split_of(row["question"], self.test_fraction)].append(row["index"])

    def __len__(self) -> int:
        return len(self.rows)

    def indices(self, split: str) -> list[int]:
        """Row numbers of the problems in a split, in file order."""
        check_split(split)
        return list(self._by_split[split])

    def problem(self, index: int) -> Problem:
        """The problem of row ``index`` (0-based, in file order, blank lines not counted)."""
        row = self.rows[index]
        steps = row["solution"].rstrip().splitlines()[:-1]  # lines before the "#### N" line
        return Problem(
            prompt=row["question"] + "\n",
            answer=row["answer"],
            meta={"solution": row["solution"], "difficulty": len(steps), "index": row["index"]},
        )

    def sample(self, rng: random.Random, split: str) -> Problem:
        check_split(split)
        indices = self._by_split[split]
        if not indices:
            raise ValueError(
                f"{str(self.path)!r} has no {split} problems with test_fraction={self.test_fraction} "
                f"({len(self.rows)} rows); use a larger file or another test_fraction"
            )
        return self.problem(indices[rng.randrange(len(indices))])

    def verify(self, problem: Problem, completion: str) -> float:
        return score_answer(problem.answer, extract_answer(completion))

    def split_steps(self, completion: str) -> list[Span]:
        return split_lines(completion)

    def first_error(self, problem: Problem, completion: str) -> int | None:
        raise NoGroundTruth("GSM8K has no ground-truth step labels: only the final answer can be checked")

    def reference_solution(self, problem: Problem) -> str:
        return problem.meta["solution"]

    def alphabet(self, n_samples: int = 0, seed: int = 0) -> str:
        """Every character of the data file's prompts, solutions and answers, plus the verification format."""
        chars = set(self.verify_query + self.verdict_none + "[]0123456789\n")
        for row in self.rows:
            chars.update(row["question"], row["solution"], row["answer"])
        return "".join(sorted(chars))
