"""``arith``: left-to-right modular arithmetic with a scratchpad.

Worked example::

    prompt      7+5*3-2=
    solution    7+5=2;2*3=6;6-2=4;#4
    steps       [7+5=2;] [2*3=6;] [6-2=4;] [#4]

Operands are digits below the modulus (10 by default); the expression is evaluated left to right (no
precedence) and every intermediate result is taken mod ``modulus``. A two-digit prime modulus (11-97)
keeps the operands one digit and lets the running value (and the first number) take two. Each step restates both operands: without them a small
character-level policy has to track a hidden running value, and measured before this module existed
it then stayed near chance; with them SFT learns the format in minutes.

The completion has one step per operation and a final answer step ``#r``. The outcome verifier reads only
the final answer (outcome supervision: a wrong chain that lands on the right digit still scores 1).
Ground truth for localization: the first step whose operands, operator or result differ from the
correct chain, the answer step if it is wrong, or the last step when the completion stops early (the
end of the response belongs to the last step).

Knobs: ``min_ops``/``max_ops`` (the number of operations, drawn uniformly; up to 32), ``op_weights``
(relative frequency of ``+``, ``-`` and ``*``: multiplication is the hard step), and ``modulus`` (2-10, so
every value stays one digit, or a prime up to 97).

Mod 10 absorbs wrong values: ``*0``, ``*5`` and even factors map different values to the same one, so a
chain can go wrong and still reach the right answer, and its first wrong step is then not its first
irrecoverable one. With a prime modulus (``modulus=7``) multipliers are drawn nonzero, so every step is a
bijection of the running value: a wrong value is never absorbed, and a chain that goes wrong and then
computes every later step correctly always ends wrong (tests/test_arith.py checks it exhaustively).

A prime modulus does not stop a second wrong step from landing back on the right answer: a wrong chain
scores 1 by luck about once in ``modulus`` times. Mod 7 that is one in seven, so a weak policy's verified
samples often hold a wrong step (benchmarks/results/localization_prime.md measured 43%) and every
outcome-based localizer inherits the error; mod 97 it is about one in a hundred.
"""

from __future__ import annotations

import random
import re

from sirl.tasks.base import Task, check_split, split_of, split_on_separator
from sirl.types import Problem, Span

OPERATORS = "+-*"
MAX_OPS = 32


PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97)
MAX_MODULUS = 97  # two-digit values at most


def apply(a: int, op: str, b: int, modulus: int = 10) -> int:
    if op == "+":
        return (a + b) % modulus
    if op == "-":
        return (a - b) % modulus
    if op == "*":
        return (a * b) % modulus
    raise ValueError(f"unknown operator {op!r}")


class ArithTask(Task):
    name = "arith"
    description = "left-to-right arithmetic mod 10 (or a prime) with a scratchpad that restates operands (e.g. 7+5*3-2=)"
    safe_verify = True  # one regular expression over the completion: linear time, no allocation to speak of

    def __init__(
        self,
        min_ops: int = 8,
        max_ops: int = 12,
        op_weights: dict[str, float] | None = None,
        test_fraction: float = 0.1,
        modulus: int = 10,
    ):
        if not 1 <= min_ops <= max_ops <= MAX_OPS:
            raise ValueError(f"need 1 <= min_ops <= max_ops <= {MAX_OPS}, got min_ops={min_ops}, max_ops={max_ops}")
        weights = {"+": 1.0, "-": 1.0, "*": 1.0} if op_weights is None else dict(op_weights)
        unknown = set(weights) - set(OPERATORS)
        if unknown:
            raise ValueError(f"op_weights has unknown operators {sorted(unknown)}; valid: {list(OPERATORS)}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"op_weights must be non-negative with a positive sum, got {weights}")
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        if not (2 <= modulus <= 10 or modulus in PRIMES):
            raise ValueError(
                f"modulus must be between 2 and 10, or a prime up to {MAX_MODULUS} (two-digit values), got {modulus}"
            )
        self.modulus = modulus
        self.min_ops, self.max_ops = min_ops, max_ops
        self.op_weights = {op: float(weights.get(op, 0.0)) for op in OPERATORS}
        self.test_fraction = test_fraction

    def sample(self, rng: random.Random, split: str) -> Problem:
        check_split(split)
        ops_list, weights = list(OPERATORS), [self.op_weights[op] for op in OPERATORS]
        while True:
            n_ops = rng.randint(self.min_ops, self.max_ops)
            if self.modulus in PRIMES:  # a multiplier is never 0, so every step is a bijection (nothing absorbed)
                ops = rng.choices(ops_list, weights=weights, k=n_ops)
                operand_end = min(self.modulus, 10)  # operands stay one digit under a two-digit modulus
                numbers = [rng.randrange(self.modulus)] + [rng.randrange(op == "*", operand_end) for op in ops]
            else:  # (this order of draws keeps the problems of every seed as they were before the modulus knob)
                numbers = [rng.randrange(self.modulus) for _ in range(n_ops + 1)]
                ops = rng.choices(ops_list, weights=weights, k=n_ops)
            prompt = "".join(f"{n}{op}" for n, op in zip(numbers, ops)) + f"{numbers[-1]}="
            if split_of(prompt, self.test_fraction) == split:
                break
        value = numbers[0]
        for op, b in zip(ops, numbers[1:]):
            value = apply(value, op, b, self.modulus)
        return Problem(
            prompt=prompt,
            answer=str(value),
            meta={"numbers": numbers, "ops": "".join(ops), "difficulty": n_ops},
        )

    def _chain(self, problem: Problem) -> list[str]:
        """The correct step texts, answer step included."""
        numbers, ops = problem.meta["numbers"], problem.meta["ops"]
        steps, value = [], numbers[0]
        for op, b in zip(ops, numbers[1:]):
            result = apply(value, op, b, self.modulus)
            steps.append(f"{value}{op}{b}={result};")
            value = result
        steps.append(f"#{value}")
        return steps

    def reference_solution(self, problem: Problem) -> str:
        return "".join(self._chain(problem))

    def verify(self, problem: Problem, completion: str) -> float:
        # Outcome only: the completion must end in exactly one answer step "#d" equal to the answer.
        match = re.search(r"#([0-9]+)\Z", completion)
        return 1.0 if match and match.group(1) == problem.answer and completion.count("#") == 1 else 0.0

    def split_steps(self, completion: str) -> list[Span]:
        return split_on_separator(completion, ";")

    def first_error(self, problem: Problem, completion: str) -> int | None:
        expected = self._chain(problem)
        spans = self.split_steps(completion)
        for index, (start, end) in enumerate(spans):
            if index >= len(expected) or completion[start:end] != expected[index]:
                return index
        # Every written step is right; a completion that stops early is wrong at its last step.
        return None if len(spans) == len(expected) else len(spans) - 1

    def first_lasting_error(self, problem: Problem, completion: str) -> int | None:
        """The first wrong step the chain never recovers from: the first wrong one after the last step
        that is right. A step can be right again after a wrong one when the wrong result was not carried
        (the next step starts from the true value): a slip in the writing, not in the running value, which
        a bijective chain would otherwise never forget. None when the chain ends right (every step, or every
        one after a slip); with no slip, the same step as :meth:`first_error` (a localization diagnostic:
        benchmarks/localization.py)."""
        first = self.first_error(problem, completion)
        if first is None:
            return None
        expected = self._chain(problem)
        spans = self.split_steps(completion)
        right = [i < len(expected) and completion[a:b] == expected[i] for i, (a, b) in enumerate(spans)]
        last_right = max((i for i, ok in enumerate(right) if ok), default=-1)
        if last_right == len(spans) - 1:  # right to the end: recovered, unless it stopped early
            return None if len(spans) == len(expected) else last_right
        return last_right + 1

    # rederive verdicts: "a op b=r?w" per step, r recomputed from the previous written result and the
    # prompt's operand, w the result the step wrote ("?" where nothing can be read), then "+" or "-";
    # the answer step is "#v?w" with v the last written result. For 7+5*3 with a written 7+5=2;2*3=5;
    # the verdict is "7+5=2?2+2*3=6?5-". Every character is one the task's alphabet already has.
    step_check_pattern = r"(?:[0-9?]+[+\-*][0-9]+=[0-9?]+|#[0-9?]+)\?[0-9?]+"

    def step_check(self, problem: Problem, completion: str, index: int) -> str:
        numbers, ops = problem.meta["numbers"], problem.meta["ops"]
        spans = self.split_steps(completion)
        text = completion[spans[index][0] : spans[index][1]]
        if index == 0:
            before = str(numbers[0])
        else:
            previous = re.fullmatch(r"[0-9]+[+\-*][0-9]+=([0-9]+);", completion[spans[index - 1][0] : spans[index - 1][1]])
            before = previous.group(1) if previous else "?"
        if index < len(ops):
            op, b = ops[index], numbers[index + 1]
            result = str(apply(int(before), op, b, self.modulus)) if before != "?" else "?"
            written = re.fullmatch(r"[0-9]+[+\-*][0-9]+=([0-9]+);?", text)
            return f"{before}{op}{b}={result}?{written.group(1) if written else '?'}"
        written = re.fullmatch(r"#([0-9]+)", text) or re.fullmatch(r"[0-9]+[+\-*][0-9]+=([0-9]+);?", text)
        return f"#{before}?{written.group(1) if written else '?'}"

    def alphabet(self, n_samples: int = 0, seed: int = 0) -> str:
        return "".join(sorted(set("0123456789" + OPERATORS + "=;#" + "[]" + self.verify_query + self.verdict_none)))
