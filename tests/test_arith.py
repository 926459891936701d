import random

import pytest

from sirl.tasks import load_task
from sirl.tasks.arith import ArithTask, apply
from sirl.tasks.base import partition_check
from sirl.types import Problem


def problem(prompt: str) -> Problem:
    """An arith problem parsed from a prompt, for hand-written cases."""
    numbers = [int(c) for c in prompt[:-1:2]]
    ops = prompt[1:-1:2]
    value = numbers[0]
    for op, b in zip(ops, numbers[1:]):
        value = apply(value, op, b)
    return Problem(prompt, str(value), {"numbers": numbers, "ops": ops, "difficulty": len(ops)})


def test_worked_example_from_the_docstring():
    task = ArithTask()
    p = problem("7+5*3-2=")
    # 7+5=12 -> 2; 2*3=6; 6-2=4
    assert task.reference_solution(p) == "7+5=2;2*3=6;6-2=4;#4"
    assert p.answer == "4"
    assert task.split_steps("7+5=2;2*3=6;6-2=4;#4") == [(0, 6), (6, 12), (12, 18), (18, 20)]


def test_generator_is_deterministic_per_seed_and_respects_knobs():
    task = ArithTask(min_ops=3, max_ops=5, op_weights={"+": 1, "-": 0, "*": 0})
    def draw(seed):
        rng = random.Random(seed)
        return [task.sample(rng, "train") for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    rng = random.Random(0)
    for _ in range(200):
        p = task.sample(rng, "train")
        assert 3 <= p.meta["difficulty"] <= 5
        assert set(p.meta["ops"]) == {"+"}
        assert task.verify(p, task.reference_solution(p)) == 1.0
        assert task.first_error(p, task.reference_solution(p)) is None


def test_train_and_test_are_disjoint():
    task = ArithTask(min_ops=1, max_ops=2)  # a small space, so overlap would show
    rng = random.Random(0)
    train = {task.sample(rng, "train").prompt for _ in range(3000)}
    test = {task.sample(rng, "test").prompt for _ in range(300)}
    assert train and test and not (train & test)


def test_operator_weights_shape_the_distribution():
    task = ArithTask(min_ops=10, max_ops=10, op_weights={"+": 0.46, "-": 0.46, "*": 0.08})
    rng = random.Random(1)
    ops = "".join(task.sample(rng, "train").meta["ops"] for _ in range(500))
    assert abs(ops.count("*") / len(ops) - 0.08) < 0.02


@pytest.mark.parametrize(
    "completion, reward",
    [
        ("7+5=2;2*3=6;6-2=4;#4", 1.0),
        ("#4", 1.0),  # outcome only: the final answer decides
        ("7+5=3;3*3=9;9-2=7;#4", 1.0),  # wrong chain, right digit: still 1 under outcome supervision
        ("7+5=2;2*3=6;6-2=4;#5", 0.0),
        ("7+5=2;2*3=6;6-2=4;", 0.0),  # no answer
        ("7+5=2;2*3=6;6-2=4;#4;", 0.0),  # junk after the answer
        ("7+5=2;2*3=6;6-2=4;#4#4", 0.0),
        ("7+5=2;2*3=6;6-2=4;#44", 0.0),
        ("", 0.0),
        ("\x00\ud800#4x", 0.0),
    ],
)
def test_verify_truth_table(completion, reward):
    assert ArithTask().verify(problem("7+5*3-2="), completion) == reward


@pytest.mark.parametrize(
    "completion, first_error",
    [
        ("7+5=2;2*3=6;6-2=4;#4", None),
        ("7+5=3;2*3=6;6-2=4;#4", 0),  # wrong result in step 0
        ("7+5=2;3*3=9;9-2=7;#7", 1),  # step 1 restates the wrong operand (3, not 2)
        ("7+5=2;2+3=5;5-2=3;#3", 1),  # step 1 has the wrong operator
        ("7+5=2;2*3=6;6-2=4;#6", 3),  # only the answer step is wrong
        ("7+5=2;2*3=6;6-2=4;", 2),  # stops before the answer: the end belongs to the last step
        ("7+5=2;2*3=6;", 1),  # stops early
        ("7+5=2;2*3=6;6-2=4;9-1=8;#8", 3),  # an extra step where the answer should be
        ("7+5=2;2*3=6;6-2=4;#4;", 3),  # junk after the answer makes the answer step wrong
        ("", 0),  # the empty completion is one empty step, and it is wrong
        ("7+5=2;2*3=6;6-2=4;#4", None),
    ],
)
def test_first_error_on_hand_written_solutions(completion, first_error):
    assert ArithTask().first_error(problem("7+5*3-2="), completion) == first_error


@pytest.mark.parametrize(
    "completion, first_error, lasting",
    [
        ("7+5=2;2*3=6;6-2=4;#4", None, None),
        ("7+5=3;2*3=6;6-2=4;#4", 0, None),  # a slip not carried (step 1 starts from 2): right to the end
        ("7+5=3;3*3=9;9-2=7;#7", 0, 0),  # carried: never right again
        ("7+5=3;2*3=6;6-2=5;#5", 0, 2),  # the slip at 0 was not carried; the chain went wrong for good at 2
        ("7+5=3;2*3=6;6-2=4;#6", 0, 3),  # right again until the answer
        ("7+5=2;2*3=6;", 1, 1),  # stops early: the last step holds the end
        ("7+5=3;2*3=6;", 0, 1),  # a slip, then an early stop
    ],
)
def test_the_first_lasting_error_skips_slips_the_chain_recovered_from(completion, first_error, lasting):
    task, p = ArithTask(), problem("7+5*3-2=")
    assert (task.first_error(p, completion), task.first_lasting_error(p, completion)) == (first_error, lasting)


def test_split_steps_partition_any_text():
    task = ArithTask()
    for text in ["", "7+5=2;", "7+5=2;2*", "#4", ";;;", "a;b", "7+5=2;2*3=6;6-2=4;#4"]:
        partition_check(text, task.split_steps(text))


def test_knob_validation_names_the_knob():
    with pytest.raises(ValueError, match="min_ops"):
        ArithTask(min_ops=5, max_ops=3)
    with pytest.raises(ValueError, match="op_weights"):
        ArithTask(op_weights={"/": 1})
    with pytest.raises(ValueError, match="valid knobs"):
        load_task("arith", max_opz=3)


def test_alphabet_covers_solutions_and_verification_format():
    task = ArithTask(min_ops=1, max_ops=16)
    alphabet = set(task.alphabet())
    rng = random.Random(0)
    for _ in range(100):
        p = task.sample(rng, "train")
        solution = task.reference_solution(p)
        assert set(p.prompt + solution + task.verification_prompt(p, solution) + task.verdict_text(3)) <= alphabet


def absorbed_errors(modulus: int, max_ops: int) -> int:
    """Exhaustively over every chain of 1..max_ops operations (multipliers nonzero under a prime modulus):
    how many (chain, step, wrong value) triples end on the right answer when every later step is computed
    correctly from the wrong value, i.e. how often a wrong step is absorbed."""
    import itertools

    from sirl.tasks.arith import PRIMES

    absorbed = 0
    for n in range(1, max_ops + 1):
        for ops in itertools.product("+-*", repeat=n):
            operand_end = min(modulus, 10)  # as ArithTask draws them: one-digit operands
            ranges = [range(1 if op == "*" and modulus in PRIMES else 0, operand_end) for op in ops]
            for start in range(modulus):
                for operands in itertools.product(*ranges):
                    values = [start]
                    for op, b in zip(ops, operands):
                        values.append(apply(values[-1], op, b, modulus))
                    for k in range(1, n + 1):  # step k wrote a wrong result
                        for wrong in range(modulus):
                            if wrong == values[k]:
                                continue
                            value = wrong
                            for op, b in zip(ops[k:], operands[k:]):
                                value = apply(value, op, b, modulus)
                            absorbed += value == values[-1]
    return absorbed


def test_a_prime_modulus_never_absorbs_a_wrong_value_and_mod_10_does():
    assert absorbed_errors(7, 3) == 0  # every step a bijection: the first wrong step is the first irrecoverable one
    assert absorbed_errors(11, 2) == 0  # two-digit values, one-digit operands
    assert absorbed_errors(97, 1) == 0
    assert absorbed_errors(10, 2) > 0  # *0, *5 and even factors: e.g. 3*0 and 4*0 both give 0


def test_prime_modulus_problems_draw_nonzero_multipliers_and_one_digit_values():
    task = ArithTask(min_ops=8, max_ops=12, modulus=7)
    rng = random.Random(0)
    for _ in range(300):
        p = task.sample(rng, "train")
        numbers, ops = p.meta["numbers"], p.meta["ops"]
        assert all(0 <= x < 7 for x in numbers) and all(b != 0 for op, b in zip(ops, numbers[1:]) if op == "*")
        solution = task.reference_solution(p)
        assert task.verify(p, solution) == 1.0 and task.first_error(p, solution) is None
        # a wrong result at step k followed by steps consistent with it: wrong answer, first error k
        k = rng.randrange(len(ops))
        value = numbers[0]
        steps = []
        for i, (op, b) in enumerate(zip(ops, numbers[1:])):
            result = apply(value, op, b, 7)
            if i == k:
                result = (result + rng.randrange(1, 7)) % 7
            steps.append(f"{value}{op}{b}={result};")
            value = result
        completion = "".join(steps) + f"#{value}"
        assert task.verify(p, completion) == 0.0 and task.first_error(p, completion) == k
        assert task.first_lasting_error(p, completion) == k  # carried: never right again


def test_a_two_digit_prime_modulus_keeps_operands_one_digit_and_scores_two_digit_answers():
    task = ArithTask(min_ops=4, max_ops=8, modulus=97)
    rng = random.Random(1)
    problems = [task.sample(rng, "train") for _ in range(300)]
    assert any(int(p.answer) >= 10 for p in problems)  # the answer space is two digits wide
    for p in problems:
        numbers, ops = p.meta["numbers"], p.meta["ops"]
        assert 0 <= numbers[0] < 97 and all(0 <= b <= 9 for b in numbers[1:])
        assert all(b != 0 for op, b in zip(ops, numbers[1:]) if op == "*")
        solution = task.reference_solution(p)
        assert task.verify(p, solution) == 1.0 and task.first_error(p, solution) is None
        wrong = str((int(p.answer) + 1) % 97)
        assert task.verify(p, solution[: solution.rindex("#") + 1] + wrong) == 0.0
    p = ArithTask(min_ops=1, max_ops=1, modulus=97).sample(random.Random(3), "train")
    # hand-checked: the single step and its answer, e.g. 57*9=28 since 513 = 5*97 + 28
    a, op, b = p.meta["numbers"][0], p.meta["ops"], p.meta["numbers"][1]
    expected = {"+": (a + b) % 97, "-": (a - b) % 97, "*": (a * b) % 97}[op]
    assert task.reference_solution(p) == f"{a}{op}{b}={expected};#{expected}"
    assert apply(57, "*", 9, 97) == 28 and apply(3, "-", 5, 97) == 95


def test_a_modulus_above_ten_must_be_prime():
    with pytest.raises(ValueError, match="a prime up to 97"):
        ArithTask(modulus=12)
    with pytest.raises(ValueError, match="a prime up to 97"):
        ArithTask(modulus=101)


def test_the_default_modulus_keeps_every_seeds_problems():
    # the first problems of seed 0 as the generator drew them before the modulus knob existed
    rng = random.Random(0)
    assert [ArithTask().sample(rng, "train").prompt for _ in range(2)] == ["6+0+4+8*7*6-4*7-5+9+3+8=", "7*8+1*5-6+5*9-3*8*7+7="]


def test_the_three_verdict_formats_of_a_hand_made_failure():
    # 7+5*3 mod 10: 7+5=2, 2*3=6; the completion wrote 2*3=5 (step 2 wrong) and answered from it.
    task = ArithTask()
    p = Problem(prompt="7+5*3=", answer="6", meta={"numbers": [7, 5, 3], "ops": "+*", "difficulty": 2})
    wrong = "7+5=2;2*3=5;#5"
    assert task.first_error(p, wrong) == 1
    assert task.verdict_target(p, wrong, 1, "index") == "2"
    assert task.verdict_target(p, wrong, 1, "judgments") == "+-"
    # each step: operands as the steps before leave them, the recomputed result ? the written one, a mark
    assert task.verdict_target(p, wrong, 1, "rederive") == "7+5=2?2+2*3=6?5-"
    right = "7+5=2;2*3=6;#6"
    assert task.verdict_target(p, right, None, "rederive") == "7+5=2?2+2*3=6?6+#6?6+"
    assert task.read_verdict(p, right, "7+5=2?2+2*3=6?6+#6?6+", "rederive") is None
    # the policy's verdict names the step of its first negative mark, whatever its arithmetic says
    assert task.read_verdict(p, right, "7+5=2?2-", "rederive") == 0
    assert task.read_verdict(p, right, "7+5=3?2+2*3=6?6-", "rederive") == 1
    # a step that cannot be read and one whose left operand is not the previous result
    assert task.verdict_target(p, "7x", 0, "rederive") == "7+5=2??-"
    assert task.verdict_target(p, "7+5=2;3*3=9;#9", 1, "rederive") == "7+5=2?2+2*3=6?9-"
    for malformed in ["7+5=2?2", "7+5=2?2+2*3=6?6+", "++", "7+5=2?2+#6?6+"]:
        with pytest.raises(ValueError):
            task.read_verdict(p, right, malformed, "rederive")
