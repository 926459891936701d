"""Tests of the GSM8K task: grading agrees with the dataset's labels, extraction, loading, splits."""

from __future__ import annotations

import json
import random
import threading

import pytest

import sirl.tasks.gsm8k as gsm8k
from sirl.paths import resolve_path
from sirl.tasks import load_task
from sirl.tasks.base import NoGroundTruth, partition_check, split_of
from sirl.tasks.gsm8k import GSM8KTask, extract_answer, normalize_answer, score_answer
from sirl.types import Problem

SOLUTIONS_PATH = "data/gsm8k/example_model_solutions.jsonl"
MODEL_KEYS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


@pytest.fixture(scope="module")
def task() -> GSM8KTask:
    return GSM8KTask()


@pytest.fixture(scope="module")
def labelled_rows() -> list[dict]:
    with open(resolve_path(SOLUTIONS_PATH), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def problem_with(answer: str) -> Problem:
    return Problem(prompt="q\n", answer=answer, meta={})


# --- agreement with the dataset's labels --------------------------------------------------------------
def test_verify_agrees_with_every_is_correct_label(task, labelled_rows):
    assert len(labelled_rows) == len(task) == 1319
    checked, disagreements = 0, []
    for index, row in enumerate(labelled_rows):
        problem = task.problem(index)
        # The problem's gold answer, from test.jsonl, is the same as the ground_truth field's "A: N" line.
        assert row["question"] + "\n" == problem.prompt
        assert normalize_answer(extract_answer(row["ground_truth"])) == problem.answer, index
        for key in MODEL_KEYS:
            solution, label = row[key]["solution"], row[key]["is_correct"]
            assert isinstance(label, bool)
            score = task.verify(problem, solution)
            checked += 1
            if score != float(label):
                disagreements.append((index, key, label, problem.answer, extract_answer(solution)))
    assert checked == 5276
    assert disagreements == [], f"{len(disagreements)} of {checked} disagree: {disagreements[:20]}"


def test_dataset_solutions_verify_as_correct(task):
    for index in range(len(task)):
        problem = task.problem(index)
        assert task.verify(problem, task.reference_solution(problem)) == 1.0, index


# --- answer extraction --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("He makes 9 * 2 = 18\n#### 18", "18"),
        ("#### 1,000", "1,000"),
        ("so #### $18.\nmore text after", "$18."),
        ("#### 5\n#### 6", "6"),  # the last one
        ("She makes $18\nA: 18", "18"),
        ("A: $1,000", "$1,000"),
        ("A: 3\nA: 4\nnothing else", "4"),
        ("The answer is $\\boxed{18}$.", "18"),
        ("\\boxed{\\frac{3}{\\sqrt{4}}}", "\\frac{3}{\\sqrt{4}}"),  # nested braces
        ("\\boxed{1} then \\boxed {2}", "2"),
        ("She makes 9 * 2 = 18 dollars.", "18"),  # fallback: the last number
        ("it costs 1,250.50 in all", "1,250.50"),
        ("16-3", "3"),  # a minus between numbers is an operator
        ("it fell to -5 degrees", "-5"),
        ("no digits at all", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_format_precedence():
    assert extract_answer("A: 6\n#### 5") == "5"  # #### beats A:
    assert extract_answer("\\boxed{7}\nA: 6") == "6"  # A: beats \boxed
    assert extract_answer("Plan A: 7 apples, then 8") == "8"  # "A:" counts only at the start of a line


def test_fallback_not_used_when_a_formal_answer_is_present(task):
    problem = problem_with("18")
    for text in ("A: 19\nActually it is 18", "#### 19\n18", "\\boxed{19} or 18", "total 18\nA:", "18 \\boxed{"):
        assert extract_answer(text) != "18"
        assert task.verify(problem, text) == 0.0
    assert extract_answer("total 18\nA:") == ""  # present but empty
    assert extract_answer("18 \\boxed{19") == ""  # unclosed: truncated
    assert task.verify(problem, "total 18, so 9 * 2 = 18") == 1.0


@pytest.mark.parametrize(
    "gold, answer, expected",
    [
        ("18", "18", 1.0),
        ("18", "18.00", 1.0),
        ("18", "$18", 1.0),
        ("18", "\\$18", 1.0),
        ("18", "18%", 1.0),
        ("18", "18 dollars", 1.0),
        ("18", "18.", 1.0),
        ("18", "\\frac{36}{2}", 1.0),
        ("1000", "1,000", 1.0),
        ("1000", "1{,}000", 1.0),
        ("1000", "1\\,000", 1.0),
        ("1000", "$1,000.00", 1.0),
        ("0.5", "\\frac{1}{2}", 1.0),
        ("3.5", "3\\frac{1}{2}", 1.0),
        ("-3", "-3", 1.0),
        ("18", "2\\cdot 9", 1.0),
        ("9", "2\\cdot 9", 0.0),
        ("18", "180", 0.0),
        ("18", "18.5", 0.0),
        ("1", "1,000", 0.0),
        ("18", "-18", 0.0),
        ("18", "", 0.0),
        ("18", None, 0.0),
        ("18", "eighteen", 0.0),
        ("18", "18!", 1.0),  # a trailing "!" is punctuation
        ("8", "2^3", 0.0),  # powers are never evaluated (see _cheap_to_evaluate)
        ("120", "5!", 0.0),
    ],
)
def test_score_answer(gold, answer, expected):
    assert score_answer(gold, answer) == expected


def test_verify_never_raises_on_junk(task, monkeypatch):
    real_parse = gsm8k.mv_parse
    problem = task.problem(0)
    rng = random.Random(0)
    junk_unicode = "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(100_000))
    junks = [
        "",
        "\x00\x01\x02",
        "\ud800 lone surrogate",
        "🦆" * 1000,
        "####",
        "A:",
        "\\boxed{",
        "}}}{{{\\boxed{}}}",
        "\\boxed" * 20_000,
        "\\boxed{" * 20_000,
        "1" * 100_000,
        "A: " + "3" * 100_000,
        "#### " + "\\frac{" * 30_000,
        "A: \\sqrt{\\sqrt{\\frac{1}{0}}}",
        "A: 1/0",
        # Powers, factorials, products and binomials sympy would evaluate for minutes: never evaluated.
        "A: 10**10**10",
        "#### 10^{10^{10}}",
        "\\boxed{\\prod_{i=1}^{9999999} i}",
        "A: \\binom{100000000}{50000000}",
        "A: 99999999999!!",
        "A: " + "(" * 90,
        junk_unicode,
        junk_unicode + "\nA: 18",
    ]
    # What reaches math-verify (and sympy, whose evaluation could take minutes) is recorded: bounded and
    # cheap answer texts only, which is what keeps junk fast, judged without a clock.
    parsed = []
    monkeypatch.setattr(gsm8k, "mv_parse", lambda text, **kwargs: parsed.append(text) or real_parse(text, **kwargs))
    gsm8k._parse.cache_clear()
    scores = [task.verify(problem, text) for text in junks]
    assert scores == [0.0] * (len(junks) - 1) + [1.0]  # the answer line is still found after 100k characters of junk
    assert parsed and all(len(text) <= gsm8k.MAX_ANSWER_CHARS + 2 for text in parsed)  # + the $ $ around LaTeX
    assert not [text for text in parsed if any(mark in text for mark in ("^", "**", "!", "\\prod", "\\binom"))]
    assert [task.verify(problem, text) for text in junks] == scores  # deterministic


def test_verify_works_off_the_main_thread(task):
    # math-verify's own timeouts (signal.alarm) would raise here; they are disabled.
    problem, results = task.problem(0), []
    worker = threading.Thread(target=lambda: results.append(task.verify(problem, "so\nA: $18.00\n")))
    worker.start()
    worker.join()
    assert results == [1.0]


# --- problems, steps, splits --------------------------------------------------------------------------
def test_problem_fields(task):
    problem = task.problem(0)
    assert problem.prompt.startswith("Janet\u2019s ducks lay 16 eggs") and problem.prompt.endswith("?\n")
    assert problem.answer == "18"
    assert problem.meta["index"] == 0 and problem.meta["difficulty"] == 2
    assert task.reference_solution(problem) == problem.meta["solution"]
    assert problem.meta["solution"].endswith("\n#### 18")
    assert task.difficulty(problem) == 2
    answers = [task.problem(i).answer for i in range(len(task))]
    assert all("," not in answer for answer in answers)
    assert "70000" in answers and "1450000" in answers  # "#### 1,450,000" loses its commas
    assert all(isinstance(task.problem(i).meta["difficulty"], int) for i in range(len(task)))


def test_split_steps_partitions(task, labelled_rows):
    texts = ["", "\n", "\n\n", "a", "a\n", "a\nb", "a\nb\n", "a\r\nb"]
    texts += [row[key]["solution"] for row in labelled_rows[:200] for key in MODEL_KEYS]
    texts += [task.problem(i).meta["solution"] for i in range(50)]
    for text in texts:
        spans = task.split_steps(text)
        partition_check(text, spans)
        pieces = [text[s:e] for s, e in spans]
        assert all(piece.endswith("\n") for piece in pieces[:-1])
        # One line with text per step (blank lines join the step before them), unless the text has none.
        non_blank = [line for line in text.split("\n") if line.strip()]
        assert len(pieces) == max(len(non_blank), 1)
        assert all(len([line for line in piece.split("\n") if line.strip()]) == 1 for piece in pieces) or not non_blank
    assert task.split_steps("") == [(0, 0)]
    assert task.split_steps("a\n\nb\n") == [(0, 3), (3, 5)]  # the blank line is the end of step 1, never a step
    assert task.split_steps("\n a\n \n") == [(0, 6)]
    assert task.split_steps("a\nbc\n") == [(0, 2), (2, 5)]
    assert task.split_steps("a\nbc") == [(0, 2), (2, 4)]
    solution = task.problem(0).meta["solution"]
    assert len(task.split_steps(solution)) == task.problem(0).meta["difficulty"] + 1  # + the "####" line


def test_train_and_test_are_disjoint_and_sampling_is_deterministic(task):
    train, test = set(task.indices("train")), set(task.indices("test"))
    assert train and test and not train & test and len(train | test) == len(task)
    assert 0.1 < len(test) / len(task) < 0.3
    for split, indices in (("train", train), ("test", test)):
        rng = random.Random(1)
        drawn = [task.sample(rng, split) for _ in range(300)]
        assert all(problem.meta["index"] in indices for problem in drawn)
        assert all(split_of(problem.prompt[:-1], task.test_fraction) == split for problem in drawn)
        rng = random.Random(1)
        assert [task.sample(rng, split) for _ in range(300)] == drawn
        assert len({problem.meta["index"] for problem in drawn}) > 100  # spread over the split
    train_prompts = {task.problem(i).prompt for i in train}
    assert not train_prompts & {task.problem(i).prompt for i in test}
    with pytest.raises(ValueError, match="split"):
        task.sample(random.Random(0), "validation")


def test_first_error_raises_no_ground_truth(task):
    assert task.has_ground_truth is False
    problem = task.problem(0)
    with pytest.raises(NoGroundTruth, match="GSM8K has no ground-truth step labels"):
        task.first_error(problem, task.reference_solution(problem))


def test_alphabet_covers_the_data(task):
    alphabet = set(task.alphabet())
    for index in range(len(task)):
        problem = task.problem(index)
        assert set(problem.prompt) <= alphabet
        assert set(task.reference_solution(problem)) <= alphabet
    assert set(task.verification_prompt(task.problem(0), task.problem(0).meta["solution"])) <= alphabet
    assert set(task.verdict_text(None) + task.verdict_text(11)) <= alphabet


def test_registry_builds_it():
    task = load_task("gsm8k", test_fraction=0.5)
    assert isinstance(task, GSM8KTask) and task.test_fraction == 0.5


# --- loading and knobs ----------------------------------------------------------------------------------
def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"question": "What is 2+2?", "answer": "2+2=<<2+2=4>>4\n#### 4"})


def test_small_file_loads(tmp_path):
    path = write_jsonl(tmp_path / "ok.jsonl", [GOOD, "", json.dumps({"question": "Big?", "answer": "#### 1,234"})])
    task = GSM8KTask(path=str(path), test_fraction=0.5)
    assert len(task) == 2
    assert [task.problem(i).answer for i in range(2)] == ["4", "1234"]
    assert task.verify(task.problem(1), "A: 1,234") == 1.0


@pytest.mark.parametrize(
    "bad_line, line_number, message",
    [
        ('{"question": "What is 2+2?", "answer": ', 2, "not valid JSON"),
        (json.dumps({"question": "What is 2+2?"}), 2, "missing field 'answer'"),
        (json.dumps({"answer": "#### 4"}), 2, "missing field 'question'"),
        (json.dumps({"question": "What is 2+2?", "answer": 4}), 2, "field 'answer' must be a str, got int"),
        (json.dumps({"question": "What is 2+2?", "answer": "it is 4"}), 2, "must end in a line '#### N'"),
        (json.dumps({"question": "What is 2+2?", "answer": "#### four"}), 2, "must end in a line '#### N'"),
        (json.dumps(["a list"]), 2, "expected a JSON object"),
    ],
)
def test_bad_file_names_file_line_and_field(tmp_path, bad_line, line_number, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, bad_line, GOOD])
    with pytest.raises(ValueError) as error:
        GSM8KTask(path=str(path))
    text = str(error.value)
    assert str(path) in text and f"line {line_number}" in text and message in text


def test_missing_file_and_bad_knobs(tmp_path):
    with pytest.raises(ValueError, match="nope.jsonl.*does not exist"):
        GSM8KTask(path=str(tmp_path / "nope.jsonl"))
    empty = write_jsonl(tmp_path / "empty.jsonl", [""])
    with pytest.raises(ValueError, match="no rows"):
        GSM8KTask(path=str(empty))
    for fraction in (0, 1, -0.1, 1.5, "0.2"):
        with pytest.raises(ValueError, match="test_fraction"):
            GSM8KTask(test_fraction=fraction)
