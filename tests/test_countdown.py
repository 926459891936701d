"""Tests of the countdown task: generator, verifier, ground-truth first error and the exhaustive search."""

from __future__ import annotations

import random
import re

import pytest

from sirl.tasks import load_task
from sirl.tasks import countdown
from sirl.tasks.base import partition_check, split_of
from sirl.tasks.countdown import CountdownTask, _reachable_brute_force, apply, reachable
from sirl.types import Problem


def problem(numbers: list[int], target: int) -> Problem:
    """A hand-made problem; verify and first_error read only numbers and target."""
    prompt = f"{','.join(map(str, numbers))}->{target}:"
    meta = {"numbers": numbers, "target": target, "solution": [], "difficulty": len(numbers)}
    return Problem(prompt, str(target), meta)


TASK = CountdownTask()
P = problem([3, 5, 7, 2], 24)  # the worked example of the module docstring
GOOD = "5*3=15;15+7=22;22+2=24;#24"


def samples(task: CountdownTask, seed: int, split: str, n: int) -> list[Problem]:
    rng = random.Random(seed)
    return [task.sample(rng, split) for _ in range(n)]


# --- generator ------------------------------------------------------------------------------------
def test_same_seed_same_problems_and_different_seeds_differ():
    a, b, c = (samples(TASK, seed, "train", 50) for seed in (1, 1, 2))
    assert [(p.prompt, p.meta) for p in a] == [(p.prompt, p.meta) for p in b]
    assert [p.prompt for p in a] != [p.prompt for p in c]


def test_train_and_test_prompts_are_disjoint():
    train = {p.prompt for p in samples(TASK, 0, "train", 3000)}
    test = {p.prompt for p in samples(TASK, 0, "test", 3000)}
    assert len(test) > 300  # enough distinct test prompts for the check to mean something
    assert not train & test
    assert all(split_of(prompt, TASK.test_fraction) == "test" for prompt in test)


@pytest.mark.parametrize(
    "knobs",
    [
        {},
        {"min_numbers": 2, "max_numbers": 2},
        {"min_numbers": 5, "max_numbers": 6, "max_number": 20, "max_target": 500},
    ],
)
def test_problems_follow_the_knobs_and_references_verify(knobs):
    task = CountdownTask(**knobs)
    for p in samples(task, 3, "train", 150) + samples(task, 3, "test", 50):
        numbers, target = p.meta["numbers"], p.meta["target"]
        assert task.min_numbers <= len(numbers) == p.meta["difficulty"] == task.difficulty(p) <= task.max_numbers
        assert all(1 <= x <= task.max_number for x in numbers)
        assert 1 <= target <= task.max_target and target not in numbers  # no problem is solved by "#N" alone
        assert p.prompt == f"{','.join(map(str, numbers))}->{target}:" and p.answer == str(target)
        assert len(p.meta["solution"]) == len(numbers) - 1  # the path combines the whole pool
        reference = task.reference_solution(p)
        assert reference.endswith(f";#{target}")
        assert task.verify(p, reference) == 1.0
        assert task.first_error(p, reference) is None


# --- verify -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "completion, expected",
    [
        (GOOD, 1.0),
        ("7*3=21;21+5=26;26-2=24;#24", 1.0),  # another path is just as right
        ("5*3=16;16+7=23;23+1=24;#24", 0.0),  # wrong arithmetic
        ("5*5=25;25-3=22;22+2=24;#24", 0.0),  # 5 is given once but used twice
        ("5+7=12;12+12=24;#24", 0.0),  # the intermediate 12 is used twice
        ("8*3=24;#24", 0.0),  # 8 is not in the pool
        ("2-7=-5;5*5=25;", 0.0),  # negative subtraction (and "-5" is no number of the format)
        ("7/2=3;3+5=8;8*3=24;#24", 0.0),  # inexact division; every other step is legal
        ("3*5=15;15/0=0;#24", 0.0),  # division by zero
        ("5*3=15;15+7=22;22+2=24;", 0.0),  # missing answer step
        ("5*3=15;15+7=22;#22", 0.0),  # wrong answer, though 22 is in the pool
        ("5*3=15;15+7=22;#24", 0.0),  # right number, not in the pool
        (GOOD + ";", 0.0),  # trailing junk
        (GOOD + "#24", 0.0),
        (GOOD + " ", 0.0),
        (GOOD + "\n", 0.0),
        ("", 0.0),  # empty
        ("#", 0.0),
        ("hello", 0.0),  # malformed garbage
        ("5*3=15;;15+7=22;22+2=24;#24", 0.0),
        ("5*3=015;15+7=22;22+2=24;#24", 0.0),  # leading zero
        ("5 * 3=15;15+7=22;22+2=24;#24", 0.0),
        ("٥*٣=١٥;15+7=22;22+2=24;#24", 0.0),  # non-ASCII digits that int() would accept
        ("5*3=" + "9" * 1000 + ";#24", 0.0),  # huge number
        ("#" + "2" * 10_000, 0.0),
        ("5*3=15;15+7=22;22+2=24;#024", 0.0),
    ],
)
def test_verify_truth_table(completion, expected):
    assert TASK.verify(P, completion) == expected
    assert (TASK.first_error(P, completion) is None) == (expected == 1.0)


def test_target_among_the_given_numbers_is_answered_directly():
    p = problem([3, 24, 5], 24)
    assert TASK.verify(p, "#24") == 1.0 and TASK.first_error(p, "#24") is None
    assert TASK.verify(p, "3*5=15;#24") == 1.0  # numbers need not all be used
    assert TASK.verify(p, "24/3=8;#24") == 0.0  # 24 was consumed


def test_zero_result_is_illegal():
    p = problem([3, 3, 8, 2], 16)
    assert TASK.verify(p, "8*2=16;#16") == 1.0
    assert TASK.verify(p, "3-3=0;8*2=16;16+0=16;#16") == 0.0
    assert apply(3, "-", 3) is None and apply(3, "-", 5) is None and apply(5, "/", 0) is None
    assert apply(7, "/", 2) is None and apply(8, "/", 2) == 4 and apply(10**5, "*", 10**5) is None


def test_verify_never_raises_on_junk():
    rng = random.Random(0)
    chars = "0123456789+-*/=;#,->: xé٣\n\x00"
    for _ in range(2000):
        junk = "".join(rng.choice(chars) for _ in range(rng.randrange(30)))
        assert TASK.verify(P, junk) in (0.0, 1.0)
        error = TASK.first_error(P, junk)
        assert (error is None) == (TASK.verify(P, junk) == 1.0)


# --- first_error ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "completion, expected",
    [
        (GOOD, None),
        ("", 0),  # the empty completion is one empty step, and it is wrong
        ("5*3=16;16+7=23;23+1=24;#24", 0),  # 5*3 is 15
        ("5*3=15;15+7=21;21+3=24;#24", 1),  # 15+7 is 22
        ("5*3=15;15+15=30;#30", 1),  # 15 was used already
        ("5*3=15;15+7=22;22+2=24;#25", 3),  # wrong answer
        ("5*3=15;15+7=22;#24", 2),  # 24 is not in the pool yet
        ("5*3=15;15+7=22;22+2=24;", 2),  # stops before the answer: the last step owns the end
        ("5*3=15;15+7=22;", 1),  # likewise; the target is still reachable (22+2)
        ("5*3=15;15+7=22;22+2=24", 2),  # an unterminated step stands where the answer should be
        (GOOD + ";", 3),  # "#24;" is not a step
        (GOOD + "junk", 3),  # nothing may follow the answer
        ("5*3=15;junk;22+2=24;#24", 1),
        # 15-7=8 is legal, but from the pool {8, 2} only 10, 6, 16 and 4 can be made: 24 is out of reach.
        ("5*3=15;15-7=8;8*2=16;#16", 1),
    ],
)
def test_first_error_on_hand_written_solutions(completion, expected):
    assert TASK.first_error(P, completion) == expected


def test_first_error_at_a_legal_step_that_strands_the_target():
    p = problem([2, 3, 4], 24)  # 2*3*4
    # 2+3=5 is legal arithmetic, but {5, 4} only makes 9, 1, 20 (and 5/4, 4/5 are inexact): no 24.
    assert TASK.first_error(p, "2+3=5;5*4=20;#20") == 0
    assert TASK.verify(p, "2+3=5;5*4=20;#20") == 0.0
    # 4/2=2 is legal, but the pool {3, 2} only makes 5, 1 and 6.
    assert TASK.first_error(p, "4/2=2;2*3=6;#6") == 0
    # 2*3=6 keeps 24 in reach (6*4); 6+4=10 leaves {10}.
    assert TASK.first_error(p, "2*3=6;6+4=10;#10") == 1
    assert TASK.first_error(p, "2*3=6;6*4=24;#24") is None


def corrupt(rng: random.Random, text: str) -> str:
    """A random small edit of a solution, of the kinds a policy makes."""
    steps = re.findall(r"[^;]*;|[^;]+$", text) or [""]
    kind = rng.randrange(7)
    if kind == 0 and text:  # change one character
        i = rng.randrange(len(text))
        return text[:i] + rng.choice("0123456789+-*/=;#") + text[i + 1 :]
    if kind == 1 and text:  # drop one character
        i = rng.randrange(len(text))
        return text[:i] + text[i + 1 :]
    if kind == 2:  # insert one character
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice("0123456789+-*/=;#") + text[i:]
    if kind == 3:  # stop early
        return text[: rng.randrange(len(text) + 1)]
    if kind == 4 and len(steps) > 2:  # swap two operation steps
        i, j = rng.sample(range(len(steps) - 1), 2)
        steps[i], steps[j] = steps[j], steps[i]
        return "".join(steps)
    if kind == 5:  # answer a different number
        return "".join(steps[:-1]) + f"#{rng.randrange(1, 30)}"
    return "".join(steps[:-1]) + rng.choice(steps[:-1] or [""]) + steps[-1]  # repeat a step


def test_first_error_is_none_exactly_when_verify_passes_on_corrupted_references():
    task = CountdownTask(min_numbers=2, max_numbers=5)
    rng = random.Random(0)
    outcomes = []
    for p in samples(task, 4, "train", 400):
        for _ in range(5):
            text = task.reference_solution(p)
            for _ in range(rng.randint(1, 2)):
                text = corrupt(rng, text)
            error, score = task.first_error(p, text), task.verify(p, text)
            assert (error is None) == (score == 1.0), (p.prompt, text)
            assert error is None or 0 <= error < len(task.split_steps(text))
            outcomes.append(score)
    # Both sides of the invariant are exercised (swapped independent steps still verify, for one).
    assert sum(outcomes) >= 20 and outcomes.count(0.0) >= 1000


# --- exhaustive search --------------------------------------------------------------------------------
def test_memoized_search_agrees_with_brute_force():
    rng = random.Random(0)
    answers = []
    for case in range(360):
        size = 5 if case % 30 == 0 else rng.randint(1, 4)  # a few 5-number pools: brute force is slow there
        pool = tuple(rng.randint(1, 9) for _ in range(size))
        target = rng.randint(1, 60)
        expected = _reachable_brute_force(pool, target)
        assert reachable(pool, target) == expected, (pool, target)
        assert reachable(tuple(reversed(pool)), target) == expected  # order of the pool does not matter
        answers.append(expected)
    assert 0.2 < sum(answers) / len(answers) < 0.8  # a mix of reachable and unreachable targets


def test_reachable_by_hand():
    assert reachable((3, 5, 7, 2), 24) and reachable((24,), 24) and reachable((4, 6), 24)
    assert not reachable((5, 4), 24)  # 9, 1, 20 only
    assert not reachable((1, 1, 1), 4)  # at most 1+1+1 = 3
    assert reachable((1, 1, 1, 1), 4)
    assert reachable((6, 4, 3), 8)  # 6*4/3: needs an intermediate divided by a given number


# --- steps, alphabet, knobs ---------------------------------------------------------------------------
def test_split_steps_partitions():
    assert TASK.split_steps(GOOD) == [(0, 7), (7, 15), (15, 23), (23, 26)]
    assert TASK.split_steps("") == [(0, 0)]
    texts = [GOOD, "", ";", ";;", "#24", "5*3=15;", "a;b;c", GOOD + ";x"]
    texts += [TASK.reference_solution(p) for p in samples(TASK, 5, "train", 50)]
    for text in texts:
        partition_check(text, TASK.split_steps(text))


def test_alphabet_is_exact_and_covers_everything():
    alphabet = TASK.alphabet()
    assert alphabet == "".join(sorted(set("0123456789+-*/=;#,->:[]" + TASK.verify_query + TASK.verdict_none)))
    for p in samples(CountdownTask(min_numbers=2, max_numbers=6), 6, "train", 300):
        reference = TASK.reference_solution(p)
        text = TASK.verification_prompt(p, reference) + TASK.verdict_text(1) + TASK.verdict_text(None)
        assert set(text) <= set(alphabet), set(text) - set(alphabet)


@pytest.mark.parametrize(
    "knobs, knob",
    [
        ({"min_numbers": 1}, "min_numbers"),
        ({"max_numbers": 7}, "max_numbers"),
        ({"min_numbers": 5, "max_numbers": 4}, "min_numbers"),
        ({"max_number": 0}, "max_number"),
        ({"max_target": 0}, "max_target"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
    ],
)
def test_bad_knobs_are_rejected_by_name(knobs, knob):
    with pytest.raises(ValueError, match=knob):
        CountdownTask(**knobs)


def test_knobs_that_admit_no_problem_raise_instead_of_looping(monkeypatch):
    monkeypatch.setattr(countdown, "MAX_DRAWS", 1000)  # the real bound only makes the failure slower
    # All numbers are 1, and every target that can be made from ones is either 1 (a given number) or > 1.
    with pytest.raises(ValueError, match="max_target"):
        CountdownTask(max_number=1, max_target=1).sample(random.Random(0), "train")
    with pytest.raises(ValueError, match="split"):
        CountdownTask().sample(random.Random(0), "valid")


def test_registered_and_knobs_pass_through():
    task = load_task("countdown", min_numbers=2, max_numbers=2)
    assert isinstance(task, CountdownTask) and task.max_numbers == 2
