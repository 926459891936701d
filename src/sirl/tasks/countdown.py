"""``countdown``: reach a target by combining given numbers with + - * /.

Worked example::

    prompt      3,5,7,2->24:
    solution    5*3=15;15+7=22;22+2=24;#24
    steps       [5*3=15;] [15+7=22;] [22+2=24;] [#24]

The **pool** starts as the multiset of given numbers. A step ``a op b=c;`` takes ``a`` and ``b`` out of
the pool (each given number and each intermediate result is used at most once) and puts ``c`` in. A step
is legal when both operands are in the pool, ``c`` is the true result, and that result is a positive
integer of at most 9 digits: ``a-b`` needs ``a > b``, ``a/b`` needs ``b != 0`` and an exact quotient.
Numbers are written in plain decimal (no sign, no leading zeros, at most 9 digits; anything else is
malformed, which keeps parsing bounded). The completion ends with the answer step ``#N``, right iff
``N`` is the target and is in the pool at that point, so a target among the given numbers can be
answered at once with ``#N``. Nothing may follow the answer step, and numbers need not all be used.

The verifier checks every step, not only the answer: the target is printed in the prompt, so an
answer-only check would reward writing ``#target`` and nothing else.

Ground truth for localization: the first step that is malformed or illegal, or after which the target
can no longer be reached from the pool (decided exactly by :func:`reachable`); the answer step if it is
wrong or something else stands where it should be; the last step when every step is fine but the
completion stops before the answer (the end of the response belongs to the last step).

Generator: draw ``n`` numbers uniformly from 1..max_number, then combine the whole pool down to one
number by random legal steps (a random ordered pair and a random operator, redrawn while illegal). That
number is the target; the draw is rejected when it exceeds ``max_target`` or is one of the given numbers
(such a problem is solved by ``#N`` alone). The path is kept as the reference solution.

Knobs: ``min_numbers``/``max_numbers`` (how many numbers are given, drawn uniformly, 2..6; this is the
difficulty), ``max_number`` (largest given number), ``max_target`` (largest target), ``test_fraction``.
"""

from __future__ import annotations

import itertools
import random
import re
from functools import lru_cache

from sirl.tasks.base import Task, check_split, split_of, split_on_separator
from sirl.types import Problem, Span

OPERATORS = "+-*/"
MIN_NUMBERS, MAX_NUMBERS = 2, 6
MAX_VALUE = 999_999_999  # the largest number that can be written (9 digits)
MAX_DRAWS = 100_000  # the generator gives up after this many rejected draws (knobs that admit no problem)
_NUM = r"(0|[1-9][0-9]{0,8})"  # [0-9], not \d: \d also matches non-ASCII digits that int() accepts
_STEP_RE = re.compile(rf"{_NUM}([-+*/]){_NUM}={_NUM};")
_ANSWER_RE = re.compile(rf"#{_NUM}")


def apply(a: int, op: str, b: int) -> int | None:
    """``a op b``, or None when the rules forbid the step (result not a positive integer <= MAX_VALUE)."""
    if op == "+":
        result = a + b
    elif op == "-":
        result = a - b
    elif op == "*":
        result = a * b
    elif op == "/":
        if b == 0 or a % b:
            return None
        result = a // b
    else:
        raise ValueError(f"unknown operator {op!r}")
    return result if 0 < result <= MAX_VALUE else None


def reachable(pool: tuple[int, ...], target: int) -> bool:
    """Whether legal steps can bring ``target`` into ``pool``. Naive equivalent: :func:`_reachable_brute_force`."""
    return _reachable_sorted(tuple(sorted(pool)), target)


@lru_cache(maxsize=1 << 20)
def _reachable_sorted(pool: tuple[int, ...], target: int) -> bool:
    # Memoized on the sorted pool: different step orders reach the same multiset, and training asks about
    # the same pools again and again. Unordered pairs with both orders applied cover every ordered pair.
    if target in pool:
        return True
    for i, j in itertools.combinations(range(len(pool)), 2):
        rest = pool[:i] + pool[i + 1 : j] + pool[j + 1 :]
        a, b = pool[i], pool[j]
        results = {apply(x, op, y) for x, y in ((a, b), (b, a)) for op in OPERATORS} - {None}
        if any(_reachable_sorted(tuple(sorted(rest + (c,))), target) for c in results):
            return True
    return False


def _reachable_brute_force(pool: tuple[int, ...], target: int) -> bool:
    """Reference for :func:`reachable` (tests only): tries every step sequence, no memo, no symmetry."""
    if target in pool:
        return True
    for i, j in itertools.permutations(range(len(pool)), 2):
        rest = tuple(x for k, x in enumerate(pool) if k not in (i, j))
        for op in OPERATORS:
            c = apply(pool[i], op, pool[j])
            if c is not None and _reachable_brute_force(rest + (c,), target):
                return True
    return False


def _take(pool: list[int], x: int) -> bool:
    """Remove one ``x`` from the pool; False when it is not there."""
    if x not in pool:
        return False
    pool.remove(x)
    return True


class CountdownTask(Task):
    name = "countdown"
    description = "reach a target from given numbers with + - * /, each used once (e.g. 3,5,7,2->24:)"
    safe_verify = True  # fixed-shape regular expressions per step and one operation on integers per step

    def __init__(
        self,
        min_numbers: int = 3,
        max_numbers: int = 4,
        max_number: int = 9,
        max_target: int = 99,
        test_fraction: float = 0.1,
    ):
        if not MIN_NUMBERS <= min_numbers <= max_numbers <= MAX_NUMBERS:
            raise ValueError(
                f"need {MIN_NUMBERS} <= min_numbers <= max_numbers <= {MAX_NUMBERS}, "
                f"got min_numbers={min_numbers}, max_numbers={max_numbers}"
            )
        if not 1 <= max_number <= MAX_VALUE:
            raise ValueError(f"max_number must be in [1, {MAX_VALUE}], got {max_number}")
        if not 1 <= max_target <= MAX_VALUE:
            raise ValueError(f"max_target must be in [1, {MAX_VALUE}], got {max_target}")
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.min_numbers, self.max_numbers = min_numbers, max_numbers
        self.max_number, self.max_target = max_number, max_target
        self.test_fraction = test_fraction

    def sample(self, rng: random.Random, split: str) -> Problem:
        check_split(split)
        for _ in range(MAX_DRAWS):
            numbers = [rng.randint(1, self.max_number) for _ in range(rng.randint(self.min_numbers, self.max_numbers))]
            pool, solution = list(numbers), []
            while len(pool) > 1:
                i, j = rng.sample(range(len(pool)), 2)
                op = rng.choice(OPERATORS)
                c = apply(pool[i], op, pool[j])
                if c is None:
                    continue  # illegal step: redraw pair and operator (a + b is always legal, so this ends)
                solution.append((pool[i], op, pool[j], c))
                pool = [x for k, x in enumerate(pool) if k not in (i, j)] + [c]
            target = pool[0]
            if target > self.max_target or target in numbers:
                continue
            prompt = f"{','.join(map(str, numbers))}->{target}:"
            if split_of(prompt, self.test_fraction) == split:
                return Problem(
                    prompt=prompt,
                    answer=str(target),
                    meta={"numbers": numbers, "target": target, "solution": solution, "difficulty": len(numbers)},
                )
        raise ValueError(
            f"no {split} problem in {MAX_DRAWS} draws: max_target={self.max_target} is too small for "
            f"max_number={self.max_number} (or test_fraction={self.test_fraction} leaves the split empty)"
        )

    def reference_solution(self, problem: Problem) -> str:
        steps = "".join(f"{a}{op}{b}={c};" for a, op, b, c in problem.meta["solution"])
        return f"{steps}#{problem.meta['target']}"

    def verify(self, problem: Problem, completion: str) -> float:
        return 1.0 if self._first_bad(problem, completion, lookahead=False) is None else 0.0

    def split_steps(self, completion: str) -> list[Span]:
        return split_on_separator(completion, ";")

    def first_error(self, problem: Problem, completion: str) -> int | None:
        return self._first_bad(problem, completion, lookahead=True)

    def _first_bad(self, problem: Problem, completion: str, *, lookahead: bool) -> int | None:
        """Index of the first step that breaks a rule (with ``lookahead``: or strands the target), else None.

        Without lookahead this is the outcome check; the lookahead cannot change whether the result is
        None, since a completion that ends in a right answer is itself a witness that the target stayed
        reachable after each of its steps.
        """
        target, pool = problem.meta["target"], list(problem.meta["numbers"])
        spans = self.split_steps(completion)
        for index, (start, end) in enumerate(spans):
            text = completion[start:end]
            if not text.endswith(";"):  # only the last span can lack the separator: it is the answer slot
                match = _ANSWER_RE.fullmatch(text)
                right = match is not None and int(match[1]) == target and target in pool
                return None if right else index
            match = _STEP_RE.fullmatch(text)
            if match is None:
                return index
            a, op, b, written = int(match[1]), match[2], int(match[3]), int(match[4])
            if not (_take(pool, a) and _take(pool, b)) or apply(a, op, b) != written:
                return index
            pool.append(written)
            if lookahead and not reachable(tuple(pool), target):
                return index
        return len(spans) - 1  # every step is legal but the answer never comes: the end is the error

    # rederive verdicts: "a op b=r?w" per step, a, op and b as written, r recomputed ("?" when the rules
    # forbid the step), w the written result; "#t?w" for the answer step with t the target; "?" alone
    # for a step that does not parse. The mark also covers what the check does not show (an operand not
    # in the pool, a target no longer reachable), so it is not a pure function of the check.
    step_check_pattern = r"(?:[0-9]+[-+*/][0-9]+=[0-9?]+\?[0-9]+|#[0-9]+\?[0-9?]+|\?)"

    def step_check(self, problem: Problem, completion: str, index: int) -> str:
        start, end = self.split_steps(completion)[index]
        text = completion[start:end]
        if not text.endswith(";"):
            match = _ANSWER_RE.fullmatch(text)
            return f"#{problem.meta['target']}?{match[1] if match else '?'}"
        match = _STEP_RE.fullmatch(text)
        if match is None:
            return "?"
        result = apply(int(match[1]), match[2], int(match[3]))
        return f"{match[1]}{match[2]}{match[3]}={'?' if result is None else result}?{match[4]}"

    def alphabet(self, n_samples: int = 0, seed: int = 0) -> str:
        return "".join(sorted(set("0123456789" + OPERATORS + "=;#,->:" + "[]" + self.verify_query + self.verdict_none)))
