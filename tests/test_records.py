"""The records task: rows from JSONL, CSV, Parquet and ``datasets`` directories (verl's layout read as it is),
columns named by knobs, bad rows reported by file and line, splits that never share a prompt, the reward
scale and the named step splitters."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from sirl.config import check_task_args
from sirl.data import DataError
from sirl.tasks import load_task, resolve_task_class
from sirl.tasks.base import partition_check
from sirl.tasks.records import RecordsTask, outcome_score

ROWS = [
    {"prompt": "3+4*2=", "answer": "0", "solution": "3+4=7;7*2=4;#4", "level": 2},
    {"prompt": "5-6*3=", "answer": "4", "solution": "5-6=9;9*3=7;#7", "level": 2},
    {"prompt": "2*2+1=", "answer": "5", "solution": "2*2=4;4+1=5;#5", "level": 2},
    {"prompt": "9-1=", "answer": "8", "solution": "9-1=8;#8", "level": 1},
]
DIGIT = r"#(\d+)\s*$"  # arith's final answer "#r"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def records(path, **knobs) -> RecordsTask:
    return RecordsTask(path=str(path), reward="exact_match", answer_pattern=DIGIT, **knobs)


def every_problem(task: RecordsTask) -> list:
    return [task.problems[i] for split in ("train", "test") for i in task.indices(split)]


def test_jsonl_rows_become_problems_scored_by_the_reward(tmp_path):
    task = records(write_jsonl(tmp_path / "rows.jsonl", ROWS), solution="solution", difficulty="level")
    assert sorted(p.prompt for p in every_problem(task)) == sorted(r["prompt"] for r in ROWS)
    problem = next(p for p in task.problems if p.prompt == "9-1=")
    assert (problem.answer, task.difficulty(problem), task.reference_solution(problem)) == ("8", 1, "9-1=8;#8")
    assert problem.meta["columns"] == {"answer": "8", "solution": "9-1=8;#8", "level": 1}  # every column but the prompt
    assert task.verify(problem, "9-1=8;#8") == 1.0 and task.verify(problem, "9-1=7;#7") == 0.0
    assert set(task.indices("train")).isdisjoint(task.indices("test"))
    assert len(task.indices("train")) + len(task.indices("test")) == len(ROWS)


def test_bad_jsonl_rows_are_reported_by_file_and_line_and_nothing_else_is_lost(tmp_path, capsys):
    path = write_jsonl(tmp_path / "rows.jsonl", [
        ROWS[0], '{"prompt": "1+1=", "answer": ', {"prompt": "", "answer": "2"}, {"prompt": "1+2="}, ROWS[1],
        {"prompt": "1+3=", "answer": None}, ROWS[2],
    ])
    task = records(path, max_bad_fraction=0.6)
    assert len(task) == 3  # the three good rows, all of them
    err = capsys.readouterr().err
    for line, reason in [(2, "not valid JSON"), (3, "field 'prompt' is an empty string"), (4, "the answer column 'answer' is missing"),
                         (6, "the answer column 'answer' is null")]:
        assert f"rows.jsonl, line {line}: {reason}" in err
    with pytest.raises(DataError, match=r"rows.jsonl: 4 of 7 rows are bad, over max_bad_fraction=0\.01.*line 2"):
        records(path)


def test_csv_rows_with_lines_counted_across_quoted_line_breaks(tmp_path, capsys):
    path = tmp_path / "rows.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "answer", "note"])
        writer.writerow(["3+4*2=", "0", "two\nlines"])  # lines 2-3
        writer.writerow(["5-6*3=", "4", "x"])  # line 4
        handle.write("9-1=,8\n")  # line 5: a value short
        writer.writerow(["2*2+1=", "5", "y"])  # line 6
    task = records(path, max_bad_fraction=0.5)
    assert sorted(p.prompt for p in task.problems) == ["2*2+1=", "3+4*2=", "5-6*3="]
    assert next(p for p in task.problems if p.prompt == "2*2+1=").meta["where"].endswith("rows.csv, line 6")
    assert "rows.csv, line 5: 2 values for the header's 3 columns" in capsys.readouterr().err


def test_parquet_rows(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    task = records(path)
    assert sorted(p.prompt for p in task.problems) == sorted(r["prompt"] for r in ROWS)
    assert task.problems[0].meta["where"] == f"{path}, row 1"


def verl_rows() -> list[dict]:
    """Rows as verl's data_preprocess/gsm8k.py writes them."""
    return [
        {"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": question}], "ability": "math",
         "reward_model": {"style": "rule", "ground_truth": answer}, "extra_info": {"split": "train", "index": i}}
        for i, (question, answer) in enumerate([("3+4*2=", "0"), ("5-6*3=", "4"), ("2*2+1=", "5"), ("9-1=", "8"), ("8-1=", "7")])
    ]


VERL_SCORE = '''
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    assert data_source == "openai/gsm8k" and isinstance(extra_info["index"], int)
    return {"score": 1.0 if solution_str.endswith("#" + ground_truth) else -1.0, "acc": 0}
'''


def test_verls_parquet_layout_is_read_as_it_is(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(verl_rows()), path)
    (tmp_path / "verl_score.py").write_text(VERL_SCORE)
    task = RecordsTask(path=str(path), reward=f"{tmp_path / 'verl_score.py'}:compute_score", reward_floor=-1.0)
    problem = next(p for p in task.problems if p.prompt == "9-1=")  # the user's turn; the answer from reward_model
    assert problem.answer == "8" and problem.meta["messages"] == [{"role": "user", "content": "9-1="}]
    assert problem.meta["data_source"] == "openai/gsm8k" and problem.meta["extra_info"] == {"split": "train", "index": 3}
    # compute_score gives 1 or -1; reward_floor=-1 maps -1 to 0: (-1 - (-1)) / (1 - (-1)) = 0
    assert task.verify(problem, "9-1=8;#8") == 1.0 and task.verify(problem, "9-1=7;#7") == 0.0


def test_a_datasets_directory_and_its_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    train = [dict(r, index=i) for i, r in enumerate(ROWS)]
    test = [{"prompt": "6+1=", "answer": "0", "solution": "6+1=0;#0", "level": 1, "index": 9}]
    datasets.Dataset.from_list(train).save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list(test)}).save_to_disk(str(tmp_path / "dict"))

    single = records(tmp_path / "single")
    assert sorted(p.prompt for p in single.problems) == sorted(r["prompt"] for r in ROWS)
    assert single.problems[1].meta["where"] == f"{tmp_path / 'single'} [train], row 2"
    both = records(tmp_path / "dict", test_split="test")
    assert [both.problems[i].prompt for i in both.indices("test")] == ["6+1="]
    assert sorted(both.problems[i].prompt for i in both.indices("train")) == sorted(r["prompt"] for r in ROWS)
    with pytest.raises(DataError, match=r"without the split 'validation'; its splits are \['test', 'train'\]"):
        records(tmp_path / "dict", split="validation")


def test_a_test_file_keeps_its_prompts_out_of_training(tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    test = write_jsonl(tmp_path / "test.jsonl", [ROWS[0], {"prompt": "6+1=", "answer": "0", "solution": "6+1=0;#0"}])
    task = records(train, test_path=str(test))
    assert sorted(task.problems[i].prompt for i in task.indices("test")) == ["3+4*2=", "6+1="]
    assert sorted(task.problems[i].prompt for i in task.indices("train")) == sorted(r["prompt"] for r in ROWS[1:])
    assert "1 of 4 training rows have a prompt that is also a test row's" in capsys.readouterr().out


def test_a_conversation_the_chat_template_cannot_show_is_a_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "9-1="}], "answer": "8"},
    ])
    with pytest.raises(DataError, match=r"chat.jsonl, line 1: column 'prompt' is a conversation of roles \['system', 'user'\].*prompt.system"):
        records(path)


def test_an_answer_the_builtin_cannot_read_is_a_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "9-1=", "answer": 8}, {"prompt": "9-2=", "answer": "seven"}])
    task = RecordsTask(path=str(path), reward="numeric", answer_pattern=DIGIT, max_bad_fraction=0.5)
    assert [(p.prompt, p.answer) for p in task.problems] == [("9-1=", "8")]  # a number in JSON reads as its text


def test_the_default_rows_are_a_sample_of_arith_mod_7():
    task = load_task("records")  # data/records/arith7.jsonl, reward math_verify
    assert len(task) == 1000 and len(task.indices("test")) > 150
    problem = task.problems[0]
    assert task.verify(problem, task.reference_solution(problem)) == 1.0 and task.difficulty(problem) is None


def test_the_reward_scale():
    # success_threshold T = 1.2, reward_floor F = -1: R >= T is a success (1); below, (R - F) / (T - F)
    assert outcome_score(1.2, 1.2, -1.0) == 1.0 and outcome_score(5.0, 1.2, -1.0) == 1.0
    assert outcome_score(0.1, 1.2, -1.0) == pytest.approx((0.1 + 1) / 2.2)  # = 0.5
    assert outcome_score(-3.0, 1.2, -1.0) == 0.0
    assert outcome_score(0.7, 1.0, 0.0) == 0.7  # the defaults leave a reward in [0, 1] as it is
    with pytest.raises(ValueError, match="reward_floor=1.0 must be below success_threshold=1.0"):
        RecordsTask(reward_floor=1.0)


def test_named_step_splitters(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    text = "3+4=7;7*2=0;#0"
    spans = records(path, step_splitter="regex:;").split_steps(text)
    assert [text[a:b] for a, b in spans] == ["3+4=7;", "7*2=0;", "#0"]
    prose = "First 3+4=7.\nThen 7*2=0.\n\nSo #0"
    for splitter in ("lines", "sentences"):
        partition_check(prose, records(path, step_splitter=splitter).split_steps(prose))
    with pytest.raises(ValueError, match="unknown step splitter 'paragraphs'"):
        records(path, step_splitter="paragraphs")


def test_knobs_from_the_command_line_and_clear_errors(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    args = check_task_args(resolve_task_class("records"), {"path": str(path), "reward": ["exact_match", "numeric"],
                                                           "reward_weights": [1, 0.5], "answer_pattern": DIGIT})
    task = load_task("records", **args)
    problem = next(p for p in task.problems if p.prompt == "9-1=")
    assert task.raw_reward(problem, "#8") == 1.5 and task.verify(problem, "#8") == 1.0
    assert task.reference_solution(problem) == "9-1=8;#8"  # the column "solution", by default
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(DataError, match=r"JSONL \(.jsonl, .json\), CSV \(.csv\) or Parquet \(.parquet\), not .txt"):
        records(tmp_path / "rows.txt")
    bare = records(write_jsonl(tmp_path / "bare.jsonl", [{"prompt": r["prompt"], "answer": r["answer"]} for r in ROWS]))
    with pytest.raises(ValueError, match="no reference solutions.*task.args.solution"):
        bare.reference_solution(bare.problems[0])
    with pytest.raises(DataError, match=r"no 'answer' column.*task.args.answer=COLUMN"):
        RecordsTask(path=str(write_jsonl(tmp_path / "q.jsonl", [{"prompt": "x", "gold": "1"}])))
    sampled = {task.sample(random.Random(seed), "train").prompt for seed in range(50)}
    assert sampled == {task.problems[i].prompt for i in task.indices("train")}
