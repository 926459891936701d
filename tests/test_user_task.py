"""A user's task end to end: the tasks guide's example (docs/guides/tasks.md), verbatim, through `sirl sft` and `sirl train`; a model
directory that knows its task; an evaluation that fails after training keeps the weights."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sirl.cli import main
from sirl.config import ConfigError, load_config
from sirl.paths import PROJECT_ROOT
from sirl.tasks import TASK_RECORD, check_model_task, read_task_record, write_task_record

TINY = ["--model.size=nano", "--model.device=cpu", "--eval.n_problems=4", "--eval.max_new_tokens=12", "--quiet"]


def readme_task_file(directory: Path) -> Path:
    """The tasks guide's ``my_tasks.py`` exactly as printed there."""
    readme = (PROJECT_ROOT / "docs" / "guides" / "tasks.md").read_text()
    [source] = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if block.startswith("# my_tasks.py")]
    path = directory / "my_tasks.py"
    path.write_text(source)
    return path


def test_the_readme_task_trains_with_sft_then_train(tmp_path, monkeypatch, capsys):
    """SFT used to train for its whole budget and then crash at the first held-out evaluation, because
    the example's task has no ground truth while Task.has_ground_truth said it had."""
    monkeypatch.chdir(tmp_path)
    readme_task_file(tmp_path)
    # the guide's command, with a small budget
    assert main(["sft", "--task", "my_tasks.py:Reverse", "--out", "runs/reverse-sft", "--task.args.length=6",
                 "--sft.steps=20", "--sft.eval_every=10", "--sft.batch_size=8", *TINY]) == 0
    sft = tmp_path / "runs" / "reverse-sft"
    assert (sft / "model.safetensors").is_file() and json.loads((sft / "eval.json").read_text())["n"] == 4
    assert read_task_record(sft) == {"name": "reverse", "task": "my_tasks.py:Reverse", "args": {"length": 6}}
    assert main(["train", "--algo", "si", "--model", "runs/reverse-sft", "--task", "my_tasks.py:Reverse",
                 "--task.args.length=6", "--out", "runs/reverse-rl", "--train.steps=2", "--train.eval_every=2",
                 "--rollout.prompts_per_step=2", "--rollout.group_size=2", "--rollout.max_new_tokens=12", *TINY]) == 0
    records = [json.loads(line) for line in (tmp_path / "runs" / "reverse-rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2] and "eval/accuracy" in records[-1]
    capsys.readouterr()
    # the same model without --task (so: arith, the default) is refused, naming both tasks
    assert main(["train", "--algo", "grpo", "--model", "runs/reverse-sft", "--out", "runs/wrong", *TINY]) == 2
    error = capsys.readouterr().err
    assert "model runs/reverse-sft was trained on task 'reverse' (--task my_tasks.py:Reverse --task.args.length=6)" in error
    assert "the task given is 'arith'" in error and "--allow-task-mismatch" in error
    assert not (tmp_path / "runs" / "wrong").exists()


def test_a_model_directory_names_its_task_and_another_task_is_refused(tmp_path, capsys):
    write_task_record(tmp_path, "arith", {"max_ops": 12})
    assert check_model_task(tmp_path, "arith", {"max_ops": 18}) is None  # other knobs of the same task: fine
    with pytest.raises(ConfigError, match=r"trained on task 'arith' \(--task arith --task.args.max_ops=12\), but the task given is 'countdown'"):
        check_model_task(tmp_path, "countdown", {})
    assert "as asked" in check_model_task(tmp_path, "countdown", {}, allow_mismatch=True)
    assert check_model_task(tmp_path / "elsewhere", "countdown", {}) is None  # not written by sirl: no record
    (tmp_path / TASK_RECORD).write_text("[1]")
    with pytest.raises(ConfigError, match="not a task record"):
        check_model_task(tmp_path, "arith", {})
    for shipped, other in [("checkpoints/arith-tiny", "countdown"), ("checkpoints/countdown-tiny", "arith")]:
        assert main(["eval", "--model", shipped, "--task", other, "--quiet"]) == 2
        assert f"the task given is {other!r}" in capsys.readouterr().err


def test_a_failing_evaluation_during_sft_saves_the_weights_first(tmp_path, monkeypatch):
    import sirl.sft

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in the task")

    monkeypatch.setattr(sirl.sft, "evaluate", broken)
    config = load_config("arith_sft", ["model.size=nano", "model.device=cpu", "sft.steps=4", "sft.eval_every=2",
                                       "sft.batch_size=4", "sft.target_accuracy=null"])
    with pytest.raises(sirl.sft.EvaluationFailed, match=r"at SFT step 2 failed \(ZeroDivisionError: a bug in the task.*saved in") as error:
        sirl.sft.run_sft(config, tmp_path / "run", quiet=True)
    assert isinstance(error.value.__cause__, ZeroDivisionError)
    for name in ["config.json", "model.safetensors", "tokenizer.json", TASK_RECORD]:
        assert (tmp_path / "run" / name).is_file(), name
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1]
