"""The task interface every component builds on, and helpers shared by all tasks.

A task gives problems, an outcome verifier and a step splitter. Synthetic tasks also know the ground-truth
first wrong step of any completion; that is used only to *measure* localization, never to train.

Contract (other code and outside users rely on these exact names):

- ``name``: registry name; ``description``: one line for ``sirl tasks``.
- ``sample(rng, split) -> Problem``: ``split`` is ``"train"`` or ``"test"``; the two never share a prompt.
- ``verify(problem, completion) -> float``: outcome in [0, 1], deterministic, a pure function.
- ``split_steps(completion) -> list[(start, end)]``: character spans that partition the completion,
  in order and contiguous, at least one span (the empty completion is one empty step). The end of
  the response (EOS) belongs to the last step.
- ``first_error(problem, completion) -> int | None``: 0-based index of the first wrong step, None when
  no step is wrong. Tasks without ground truth leave it (it raises :class:`NoGroundTruth`).
- ``has_ground_truth``: derived from the class, never a flag to remember: True when the class (or the
  nearest ancestor that says anything about it) implements ``first_error``; a class that overrides
  ``first_error`` only to raise :class:`NoGroundTruth` with its own message declares
  ``has_ground_truth = False``.
- ``reference_solution(problem) -> str``: a correct completion (synthetic tasks; data tasks return the
  dataset's worked solution).
- ``safe_verify``: True only when ``verify`` is bounded in time and memory for *any* completion, so the
  trainer may call it in its own process (sirl.verifier); otherwise it runs in worker processes with a
  deadline and a memory cap. It holds only for the class that declares it (:func:`declares_safe_verify`):
  a subclass may change ``verify``, so it runs in workers unless it declares it again.
- ``program_isolation() -> str | None``: for tasks whose verifier executes model-written programs, a
  description of the sandbox it runs them in (printed at the start of a run); None otherwise.

Knobs (difficulty and the like) are constructor keyword arguments; the config passes them through.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from abc import ABC, abstractmethod

from sirl.types import Problem, Span

SPLITS = ("train", "test")
VERDICT_FORMATS = ("index", "judgments", "rederive")
"""How the policy writes a self-verification verdict (:meth:`Task.verdict_target`)."""


def difficulty_order(level: object) -> tuple:
    """Sort key for difficulty levels of any kind (:meth:`Task.difficulty`): numbers by value, then text,
    then None. A level read back from JSON, where it is an object's key, is text: ``"10"`` sorts as the
    number it spells (after ``"2"``), ``"easy"`` as text."""
    level = level_from_key(level) if isinstance(level, str) else level
    if isinstance(level, (int, float)) and not isinstance(level, bool):
        return (0, level, "")
    if level is None:
        return (2, 0, "")
    return (1, 0, str(level))


def level_from_key(key: str) -> int | float | str:
    """A difficulty level from its text (a JSON object's key): ``"3"`` -> 3, ``"2.5"`` -> 2.5, other text as is."""
    try:
        return int(key)
    except ValueError:
        pass
    try:
        value = float(key)
    except ValueError:
        return key
    return value if math.isfinite(value) else key  # "nan" and "inf" are names here, not numbers


class NoGroundTruth(NotImplementedError):
    """Raised by ``first_error`` on tasks that do not know where a solution went wrong."""


class NoStepCheck(NotImplementedError):
    """Raised by ``step_check`` on tasks that cannot re-derive a step (the ``rederive`` verdict format)."""


def split_of(prompt: str, test_fraction: float) -> str:
    """The split a prompt belongs to, from a stable hash of its text.

    Hashing the prompt (not the draw order) makes the partition a property of the problem itself, so
    a test problem can never be generated for training, whatever the seed or sampling knobs.
    """
    digest = hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest()
    bucket = int.from_bytes(digest, "big") / 2**64
    return "test" if bucket < test_fraction else "train"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


class Task(ABC):
    """Base class of all tasks. Subclasses implement the abstract methods and set the class attributes."""

    name: str = "task"
    description: str = ""
    has_ground_truth: bool = False
    """Set for each subclass by ``__init_subclass__`` from whether it implements ``first_error`` (module
    docstring); a class may declare it, and declaring True without a ``first_error`` is an error."""
    safe_verify: bool = False
    """True when ``verify`` is bounded in time and memory for any completion (plain string checks on
    bounded data), so it may run in the trainer's process; the default runs it in isolated workers.
    Read with :func:`declares_safe_verify`: it is not inherited."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        declared = "has_ground_truth" in cls.__dict__
        cls._declares_ground_truth = declared
        if not declared:
            cls.has_ground_truth = _derived_ground_truth(cls)
        elif cls.has_ground_truth and cls.first_error is Task.first_error:
            raise TypeError(
                f"task class {cls.__qualname__} declares has_ground_truth = True but does not implement "
                "first_error(problem, completion); implement it, or remove the declaration"
            )

    # Self-verification format: the policy sees the problem and a solution with numbered steps, then
    # writes the number of the first wrong step (1-based) or "none". Kept compact for character-level
    # policies; tasks may override the three methods below.
    verify_query: str = "\n?"
    verdict_none: str = "none"

    @abstractmethod
    def sample(self, rng: random.Random, split: str) -> Problem: ...

    @abstractmethod
    def verify(self, problem: Problem, completion: str) -> float: ...

    @abstractmethod
    def split_steps(self, completion: str) -> list[Span]: ...

    def first_error(self, problem: Problem, completion: str) -> int | None:
        raise NoGroundTruth(f"task {self.name!r} has no ground-truth steps")

    @abstractmethod
    def reference_solution(self, problem: Problem) -> str: ...

    def program_isolation(self) -> str | None:
        """How ``verify`` isolates the model-written programs it executes; None when it runs none."""
        return None

    def difficulty(self, problem: Problem) -> int | float | str | None:
        """A difficulty level for per-difficulty reports (an integer, usually; numbers and text are ordered
        by :func:`difficulty_order`), or None when the task has none."""
        return problem.meta.get("difficulty")

    # --- self-verification format -------------------------------------------------------------
    def verification_prompt(self, problem: Problem, completion: str) -> str:
        """The problem, then each step prefixed by ``[i]`` (1-based), then the query."""
        steps = [completion[s:e] for s, e in self.split_steps(completion)]
        numbered = "".join(f"[{i + 1}]{text}" for i, text in enumerate(steps))
        return f"{problem.prompt}{numbered}{self.verify_query}"

    def verdict_text(self, first_error: int | None) -> str:
        """The target answer of a verification prompt: ``"3"`` for 0-based step 2, or ``"none"``."""
        return self.verdict_none if first_error is None else str(first_error + 1)

    def parse_verdict(self, text: str) -> int | None:
        """Inverse of :meth:`verdict_text`. Raises ValueError on anything else."""
        answer = text.strip()
        if answer == self.verdict_none:
            return None
        if re.fullmatch(r"[1-9][0-9]*", answer):
            return int(answer) - 1
        raise ValueError(f"not a verdict: {text!r} (expected a step number >= 1 or {self.verdict_none!r})")

    # --- step-by-step verdicts ------------------------------------------------------------------
    # ``judgments``: one mark per step, in order, up to the first wrong one: "++-" says steps 1-2 are
    # right and step 3 is wrong; a mark for every step and none negative says "none".
    # ``rederive``: the same marks, each after a re-derivation of its step (:meth:`step_check`) that puts
    # the policy's own result beside the written one, so each judgment is a comparison of two adjacent
    # values rather than a look far back into the context (ThinkPRM, arXiv 2504.16828, judges step by
    # step for the same reason). In both, the first negative mark is the verdict and what follows it is
    # not read.
    mark_good: str = "+"
    mark_bad: str = "-"
    step_check_pattern: str | None = None
    """A regular expression matching one :meth:`step_check` text (without its mark), for parsing; None
    when the task has no re-derivation."""

    def step_check(self, problem: Problem, completion: str, index: int) -> str:
        """``rederive``: the check of step ``index`` (0-based) of ``completion``, without its mark: the
        step's inputs as the steps before it leave them, the result recomputed from them, and the written
        result copied beside it. Tasks that can re-derive a step override it and ``step_check_pattern``."""
        raise NoStepCheck(
            f"task {self.name!r} cannot re-derive its steps, so the 'rederive' verdict format is not available; "
            f"use method.si_internal.verdict_format=index or judgments"
        )

    def verdict_target(self, problem: Problem, completion: str, first_error: int | None, fmt: str = "index") -> str:
        """The verdict the policy should write, in format ``fmt``, for a solution whose first wrong step is
        ``first_error`` (None: every step right): a label, whatever the label's source (ground truth, the
        outcome-based localizer, a verified outcome)."""
        if fmt == "index":
            return self.verdict_text(first_error)
        n_steps = len(self.split_steps(completion))
        if first_error is not None and not 0 <= first_error < n_steps:
            raise ValueError(f"first_error {first_error} is not a step of a {n_steps}-step solution")
        judged = n_steps if first_error is None else first_error + 1
        marks = [self.mark_good] * (judged - 1) + [self.mark_good if first_error is None else self.mark_bad]
        if fmt == "judgments":
            return "".join(marks)
        if fmt == "rederive":
            return "".join(self.step_check(problem, completion, i) + mark for i, mark in enumerate(marks))
        raise ValueError(f"unknown verdict format {fmt!r}; valid: {list(VERDICT_FORMATS)}")

    def read_verdict(self, problem: Problem, completion: str, text: str, fmt: str = "index") -> int | None:
        """Inverse of :meth:`verdict_target`: the 0-based step the verdict names, or None for "none".
        Raises ValueError, saying what is wrong, on a verdict that does not parse: a check or mark that
        does not fit the format, fewer marks than steps with no negative one, or a negative mark past
        the last step."""
        if fmt == "index":
            return self.parse_verdict(text)
        if fmt not in VERDICT_FORMATS:
            raise ValueError(f"unknown verdict format {fmt!r}; valid: {list(VERDICT_FORMATS)}")
        n_steps = len(self.split_steps(completion))
        marks = re.escape(self.mark_good) + re.escape(self.mark_bad)
        if fmt == "judgments":
            one = re.compile(f"([{marks}])")
        elif self.step_check_pattern is None:
            self.step_check(problem, completion, 0)  # raises NoStepCheck with its message
            raise NoStepCheck(f"task {self.name!r} has step_check but no step_check_pattern to parse it with")
        else:
            one = re.compile(f"(?:{self.step_check_pattern})([{marks}])")
        position, judged = 0, 0
        while position < len(text):
            match = one.match(text, position)
            if match is None:
                raise ValueError(f"not a {fmt} verdict: {text[position:position + 24]!r} at character {position} is not a check and a mark")
            if match.group(1) == self.mark_bad:
                if judged >= n_steps:
                    raise ValueError(f"the {fmt} verdict marks step {judged + 1} wrong, but the solution has {n_steps} steps")
                return judged
            judged, position = judged + 1, match.end()
        if judged != n_steps:
            raise ValueError(f"the {fmt} verdict judges {judged} of {n_steps} steps right and stops without naming a wrong one")
        return None

    # --- vocabulary -----------------------------------------------------------------------------
    def alphabet(self, n_samples: int = 2000, seed: int = 0) -> str:
        """Every character the task's prompts, solutions and verification prompts use.

        The default draws problems from both splits, which suits any task whose characters show up in
        a few thousand samples; tasks with a fixed alphabet override it with the exact set.
        """
        rng = random.Random(seed)
        chars: set[str] = set(self.verify_query + self.verdict_none + "[]0123456789")
        for i in range(n_samples):
            problem = self.sample(rng, SPLITS[i % 2])
            solution = self.reference_solution(problem)
            chars.update(problem.prompt, solution, problem.answer)
        return "".join(sorted(chars))


def _derived_ground_truth(cls: type) -> bool:
    """Whether the nearest class in ``cls``'s MRO that says anything about ground truth (declares
    ``has_ground_truth``, or defines ``first_error``) says it has it; Task itself says it has not."""
    for klass in cls.__mro__:
        if klass is Task:
            return False
        if "has_ground_truth" in klass.__dict__ and klass.__dict__.get("_declares_ground_truth", True):
            return bool(klass.__dict__["has_ground_truth"])
        if "first_error" in klass.__dict__:
            return True
    return False


def supports_step_check(task: Task) -> bool:
    """Whether ``task`` can write ``rederive`` verdicts: it overrides ``step_check`` and gives the pattern."""
    return type(task).step_check is not Task.step_check and task.step_check_pattern is not None


def declares_safe_verify(cls: type) -> bool:
    """True when ``cls`` itself declares ``safe_verify = True``. An inherited declaration does not count:
    it was made about the parent's ``verify``, which a subclass may have replaced."""
    return bool(cls.__dict__.get("safe_verify", False))


def partition_check(completion: str, spans: list[Span]) -> None:
    """Assert the step-splitting contract (used by tests and by the rollout engine in debug mode)."""
    if not spans:
        raise AssertionError("split_steps returned no spans")
    position = 0
    for start, end in spans:
        if start != position or end < start:
            raise AssertionError(f"spans {spans} do not partition a text of length {len(completion)}")
        position = end
    if position != len(completion):
        raise AssertionError(f"spans {spans} end at {position}, text has {len(completion)} characters")


def split_on_separator(completion: str, separator: str) -> list[Span]:
    """Spans that end just after each ``separator``; the remainder (if any) is the last step."""
    spans: list[Span] = []
    start = 0
    while True:
        index = completion.find(separator, start)
        if index < 0:
            break
        spans.append((start, index + len(separator)))
        start = index + len(separator)
    if start < len(completion) or not spans:
        spans.append((start, len(completion)))
    return spans


def split_lines(completion: str) -> list[Span]:
    """Prose steps: one line each (with its newline), a blank line (empty or only whitespace) joined to the
    step before it, and blank lines at the very start to the first step. So no step is whitespace alone:
    a tokenizer that writes "\\n\\n" as one token would otherwise leave the blank line's step without a
    token of its own (sirl.rollout.steps maps these character spans onto tokens)."""
    lines, start = [], 0
    while start < len(completion):
        end = completion.find("\n", start)
        end = len(completion) if end < 0 else end + 1
        lines.append((start, end))
        start = end
    spans: list[Span] = []
    pending_start = 0  # where the next step starts: leading blank lines belong to it
    for start, end in lines:
        if not completion[start:end].strip():
            if spans:
                spans[-1] = (spans[-1][0], end)
            continue
        spans.append((pending_start if not spans else start, end))
    if not spans:
        return [(0, len(completion))]
    return spans
