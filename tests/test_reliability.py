"""Summaries that never die last: a comparison of a task without difficulty levels, tables by difficulty with
levels of any kind, and a report part that fails without losing the others. Also: prompt files with a
byte-order mark on every line, group-relative methods with groups of one, and third-party warnings."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import sirl.compare.render
import sirl.compare.summary
from sirl.cli import main
from sirl.compare import ComparePlan, summarize_or_report, write_outputs
from sirl.config import load_config, to_yaml

ECHO_TASK = '''
from sirl.tasks.base import Task, split_on_separator
from sirl.types import Problem


class Echo(Task):
    """Repeat the word; a task written to the interface, whose problems carry no difficulty."""

    name = "echo"
    description = "repeat the word"

    def sample(self, rng, split):
        word = "".join(rng.choice("abc") for _ in range(3))
        return Problem(prompt=word + ">", answer=word, meta={})

    def verify(self, problem, completion):
        return float(completion == problem.answer)

    def split_steps(self, completion):
        return split_on_separator(completion, "|")

    def reference_solution(self, problem):
        return problem.answer
'''

TINY = ["--model.device=cpu", "--eval.n_problems=4", "--eval.max_new_tokens=6", "--quiet"]


def test_a_comparison_of_a_task_without_difficulty_writes_its_summary(tmp_path, capsys):
    """It used to run every run and then die in the summary (int('None') in the table by difficulty),
    leaving no results.md after all the compute."""
    task_file = tmp_path / "echo_task.py"
    task_file.write_text(ECHO_TASK)
    task = f"{task_file}:Echo"
    model = tmp_path / "echo-sft"
    assert main(["sft", "--task", task, "--out", str(model), "--model.size=nano", "--sft.steps=1", "--sft.eval_every=1",
                 "--sft.batch_size=4", *TINY]) == 0
    out = tmp_path / "cmp"
    code = main(["compare", "--task", task, "--model", str(model), "--methods", "grpo", "--seeds", "1", "--budget-tokens", "60",
                 "--eval-every-tokens", "30", "--final-problems", "4", "--jobs", "1", "--threads", "1", "--out", str(out),
                 "--rollout.prompts_per_step=2", "--rollout.group_size=2", "--rollout.max_new_tokens=6", *TINY])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["methods"]["grpo"]["by_difficulty"] == {} and results["start"]["by_difficulty"] == {}
    markdown = (out / "results.md").read_text()
    assert "| grpo |" in markdown and "by difficulty on the final set" not in markdown  # no levels: no table
    assert not results.get("failed_parts")


# --- tables by difficulty with levels of any kind -----------------------------------------------------


def write_finished_run(folder: Path, levels: list, rewards: list[float]) -> None:
    folder.mkdir(parents=True)
    rows = [{"step": 0, "time/elapsed_s": 0.0, "tokens/total": 0, "eval/accuracy": 0.0},
            {"step": 1, "time/elapsed_s": 1.0, "tokens/total": 100, "tokens/policy": 100, "tokens/probe": 0, "tokens/verify": 0,
             "eval/accuracy": sum(rewards) / len(rewards)}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    by_level: dict[str, list[float]] = {}
    for level, reward in zip(levels, rewards):
        if level is not None:
            by_level.setdefault(str(level), []).append(reward)
    final = {"step": 1, "tokens/total": 100, "n": len(rewards), "accuracy": sum(rewards) / len(rewards), "rewards": rewards,
             "difficulties": levels, "by_difficulty": {k: {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in by_level.items()}}
    (folder / "eval.json").write_text(json.dumps(final))


# Numbers (by value, not as text: 10 after 2), then strings, and problems without a level in no column.
LEVELS = [10, 2, "hard", None, 2.5, "easy", 1, 10]
REWARDS = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]


@pytest.fixture
def mixed_levels(tmp_path):
    plan = ComparePlan(methods=["grpo", "dr_grpo"], seeds=1, budget_tokens=100, eval_every_tokens=100, final_evaluations=1)
    (tmp_path / "compare.json").write_text(json.dumps(plan.__dict__))
    (tmp_path / "base.yaml").write_text(to_yaml(load_config("arith")))
    write_finished_run(tmp_path / "runs/grpo/seed0", LEVELS, REWARDS)
    write_finished_run(tmp_path / "runs/dr_grpo/seed0", LEVELS, [1.0 - r for r in REWARDS])
    write_finished_run(tmp_path / "start", LEVELS, [0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    return tmp_path


def test_tables_by_difficulty_take_levels_of_any_kind_in_order(mixed_levels):
    write_outputs(mixed_levels, summarize_or_report(mixed_levels))
    results = json.loads((mixed_levels / "results.json").read_text())
    assert not results.get("failed_parts")
    grpo = results["methods"]["grpo"]["by_difficulty"]
    assert list(grpo) == ["1", "2", "2.5", "10", "easy", "hard"]
    # level 10: rewards 1.0 and 0.0 -> 0.5; "hard": 1.0; the problem without a level is in no column
    assert grpo["10"]["mean"] == 0.5 and grpo["hard"]["mean"] == 1.0
    assert results["difficulty_bands"] == {"hard": [2, 2.5, 10, "hard"], "other": [1, "easy"]}  # start below 15%: 2, 2.5, 10, hard
    markdown = (mixed_levels / "results.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| method | 1 (n=1) |"))
    assert header == "| method | 1 (n=1) | 2 (n=1) | 2.5 (n=1) | 10 (n=2) | easy (n=1) | hard (n=1) |"
    assert (mixed_levels / "accuracy_by_difficulty.png").stat().st_size > 0


def test_a_report_part_that_fails_is_named_and_the_others_are_written(mixed_levels, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise KeyError("a bug in the bands")

    monkeypatch.setattr(sirl.compare.summary, "difficulty_bands", broken)
    monkeypatch.setattr(sirl.compare.render, "plot_comparison", lambda *args: 1 / 0)
    results = summarize_or_report(mixed_levels)
    write_outputs(mixed_levels, results)
    saved = json.loads((mixed_levels / "results.json").read_text())
    assert saved["methods"]["grpo"]["final_accuracy"]["mean"] == pytest.approx(5 / 8)
    assert "KeyError" in saved["failed_parts"]["difficulty bands"] and "a bug in the bands" in saved["failed_parts"]["difficulty bands"]
    assert "ZeroDivisionError" in saved["failed_parts"]["plots"]
    markdown = (mixed_levels / "results.md").read_text()
    assert "| grpo |" in markdown and "| method | 1 (n=1) |" in markdown  # the main table and the table by difficulty
    assert "difficulty bands" in markdown and "KeyError: 'a bug in the bands'" in markdown and "ZeroDivisionError" in markdown
    assert "could not be built" in capsys.readouterr().err


def test_tables_or_a_summary_that_fail_whole_still_leave_what_every_run_reached(mixed_levels, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(sirl.compare.render, "results_markdown", lambda results: 1 / 0)
        write_outputs(mixed_levels, summarize_or_report(mixed_levels))
    markdown = (mixed_levels / "results.md").read_text()
    assert "results.md's tables: ZeroDivisionError: division by zero" in markdown
    assert "grpo seed 0: 62.5% after 100 generated tokens" in markdown and "dr_grpo seed 0: 37.5%" in markdown
    assert json.loads((mixed_levels / "results.json").read_text())["methods"]["grpo"]["final_accuracy"]["mean"] == 0.625

    monkeypatch.setattr(sirl.compare.summary, "summarize", lambda out: {}["a bug in the summary"])
    results = summarize_or_report(mixed_levels)
    write_outputs(mixed_levels, results)
    markdown = (mixed_levels / "results.md").read_text()
    assert "summary: KeyError: 'a bug in the summary'" in markdown and "grpo seed 0: 62.5%" in markdown
    saved = json.loads((mixed_levels / "results.json").read_text())
    assert saved["failed_parts"]["summary"].startswith("KeyError") and saved["runs"]["grpo/seed0"]["accuracy"] == 0.625



def test_an_evaluation_with_text_levels_survives_a_checkpoint():
    """A run's checkpoint stores its evaluations as JSON and a resumed run reads them back; a text level used
    to make the resume fail (int('easy'))."""
    from sirl.evaluate import EvalResult

    result = EvalResult(n=3, accuracy=2 / 3, ci95=(0.2, 0.9), by_difficulty={2: {"n": 1, "accuracy": 1.0}, "easy": {"n": 2, "accuracy": 0.5}},
                        first_error_histogram=None, mean_response_tokens=3.0, truncated_frac=0.0, tokens_per_second=1.0,
                        rewards=[1.0, 1.0, 0.0], difficulties=[2, "easy", "easy"])
    assert EvalResult.from_json(json.loads(json.dumps(result.to_json()))) == result


# --- prompt files read by their byte-order mark ------------------------------------------------------

DATA_FIELDS = {"question": str, "answer": str}
ROW = {"question": "What is 2+2? caf\u00e9", "answer": "4"}


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-8"])
def test_every_lines_byte_order_mark_is_dropped(tmp_path, encoding):
    """Files joined with `cat a.jsonl b.jsonl`, each written with a mark: every line starts with one. It used
    to be refused with json's hint "Unexpected UTF-8 BOM (decode using utf-8-sig)", which fits no such file."""
    from sirl.data import read_records

    path = tmp_path / "joined.jsonl"
    path.write_bytes(b"".join(("\ufeff" + json.dumps(dict(ROW, question=f"q{i} caf\u00e9"), ensure_ascii=False) + "\n").encode(encoding)
                              for i in range(5)))
    records = read_records(path, DATA_FIELDS)
    assert [r["question"] for r in records.rows] == [f"q{i} caf\u00e9" for i in range(5)] and not records.bad


def mixed_file(path: Path, kind: str) -> Path:
    """Four good UTF-8 (or UTF-16-LE) rows, long enough that the file starts as one, then four rows in another encoding."""
    rows = [json.dumps(dict(ROW, question=f"q{i} caf\u00e9", answer="4" * 100), ensure_ascii=False) + "\n" for i in range(8)]
    if kind == "windows-1252":  # an editor saved the second half in the Windows code page
        data = "".join(rows[:4]).encode("utf-8") + "".join(rows[4:]).encode("cp1252")
    elif kind == "utf-16 part":  # a UTF-16 file appended to a UTF-8 one
        data = "".join(rows[:4]).encode("utf-8") + ("\ufeff" + "".join(rows[4:])).encode("utf-16-le")
    else:  # a big-endian UTF-16 part appended to a little-endian one
        data = ("\ufeff" + "".join(rows[:4])).encode("utf-16-le") + ("\ufeff" + "".join(rows[4:])).encode("utf-16-be")
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind, named", [("windows-1252", "Windows-1252"), ("utf-16 part", "UTF-16"), ("utf-16-be part", "UTF-16-BE")])
def test_a_misdecoded_line_names_the_encoding_it_most_likely_is(tmp_path, kind, named):
    from sirl.data import read_records

    bad = []
    records = read_records(mixed_file(tmp_path / "mixed.jsonl", kind), DATA_FIELDS, max_bad_fraction=1.0, warn=bad.append)
    assert [r["question"] for r in records.rows] == [f"q{i} caf\u00e9" for i in range(4)]
    assert records.bad and all(f"looks like {named}" in row.reason for row in records.bad), [row.reason for row in records.bad]
    assert all("utf-8-sig" not in row.reason for row in records.bad)


# --- group-relative methods need groups of two ---------------------------------------------------------

TINY_TRAIN = ["--config", "arith", "--model.device=cpu", "--train.steps=1", "--rollout.prompts_per_step=2", "--eval.n_problems=4",
              "--eval.max_new_tokens=12", "--rollout.max_new_tokens=12", "--quiet"]


def test_the_methods_that_need_groups_of_two_are_those_whose_credit_of_a_lone_sample_is_zero():
    """The outcome estimators, tree credit and si's divergence credit give every row of a group of one an
    advantage of 0 whatever its reward (the sample is its own group's mean and its own prefix tree's root
    value, and a lone failure has no success to have left)."""
    from sirl.credit import divergence_credit, outcome_credit, tree_credit
    from sirl.methods import METHODS

    assert sorted(name for name, method in METHODS.items() if method.min_group_size == 2) == ["dr_grpo", "grpo", "rloo", "si", "tree"]
    responses, rewards, groups = [[1, 2, 3], [1, 4], [5]], [1.0, 0.0, 1.0], [0, 1, 2]
    credits = [tree_credit(responses, rewards, groups), divergence_credit(responses, rewards, groups, [[1, 3], [1, 2], [1]]),
               *(outcome_credit(responses, rewards, groups, estimator=e) for e in ("grpo", "dr_grpo", "rloo"))]
    for credit in credits:
        assert all(not a.any() for a in credit.token_advantages)
    assert any(a.any() for a in tree_credit(responses, rewards, [0, 0, 1]).token_advantages)  # two rows in a group: not zero


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "rloo", "tree", "si"])
def test_a_group_relative_method_with_groups_of_one_is_refused_before_it_runs(tmp_path, capsys, algo):
    """It used to train on advantages that were all 0, without a word."""
    run = tmp_path / "run"
    assert main(["train", "--algo", algo, "--rollout.group_size=1", "--out", str(run), *TINY_TRAIN]) == 2
    error = capsys.readouterr().err
    assert f"rollout.group_size=1 with algo.name={algo}" in error and "the smallest valid value is 2" in error
    assert not run.exists()
    out = tmp_path / "cmp"
    assert main(["compare", "--task", "arith", "--methods", f"random_reset,{algo}", "--seeds", "1", "--budget-tokens", "100", "--rollout.group_size=1",
                 "--out", str(out), *TINY_TRAIN[2:]]) == 2
    assert f"rollout.group_size=1 with algo.name={algo}" in capsys.readouterr().err and not out.exists()


# --- third-party warnings ------------------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["in_process", "workers"])
def test_math_verifys_timeout_warning_is_not_printed(tmp_path, capfd, caplog, monkeypatch, isolation):
    """sirl turns math-verify's own signal-based timeouts off on purpose (they only work on a main thread;
    the worker pool bounds every verify call from outside), and math-verify then warned "Timeout is
    disabled ..." on stderr from every process that verifies, once for parsing and once for comparing."""
    import random

    import math_verify.grader
    import math_verify.parser

    from sirl.tasks.gsm8k import GSM8KTask
    from sirl.verifier import TaskSpec, make_verifier

    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i}+{i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"}) + "\n"
                            for i in range(20)))
    for module in (math_verify.parser, math_verify.grader):  # as in a fresh process: not yet warned
        monkeypatch.setattr(module, "TIMEOUT_WARNING_SHOWN", False)
    task = GSM8KTask(path=str(path))
    problem = task.sample(random.Random(0), "train")
    answer = problem.answer
    with make_verifier(task, TaskSpec("gsm8k", {"path": str(path)}), isolation=isolation, workers=2) as verifier:
        scores = verifier.score([problem] * 4, [f"so #### {answer}", "#### 12345", f"{answer}", f"#### {answer}.0"])
    assert scores[0] == 1.0 and scores[1] == 0.0
    assert "Timeout is disabled" not in capfd.readouterr().err  # the workers' stderr
    assert not [r for r in caplog.records if "Timeout is disabled" in r.getMessage()]  # in process: pytest's handler sees it


# --- files that readers take as a finished result are never half written ------------------------------


def test_a_run_folders_json_files_are_never_left_half_written(tmp_path, monkeypatch):
    """A comparison takes a run folder with eval.json as finished (and reads it); a write cut short (the
    process killed, the disk full) used to leave a truncated eval.json behind."""
    import pathlib

    from sirl.runlog import RunLog

    log = RunLog(tmp_path, load_config("arith"))
    log.write_json("eval.json", {"accuracy": 0.5})
    real = pathlib.Path.write_text

    def cut_short(self, data, *args, **kwargs):
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", cut_short)
    with pytest.raises(OSError):
        log.write_json("eval.json", {"accuracy": 0.75, "n": 100})
    monkeypatch.undo()
    assert json.loads((tmp_path / "eval.json").read_text()) == {"accuracy": 0.5}  # the last complete one
    log.close()
