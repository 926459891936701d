import json
import subprocess
import sys

import pytest

from sirl.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sirl.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", [[], ["sft"], ["eval"], ["tasks"], ["config"], ["report"]])
def test_help_of_every_command(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    assert "usage: sirl" in result.stdout
    if command in (["sft"], ["eval"]):
        for flag in ["--config PRESET", "--task NAME_OR_IMPORT_PATH", "--model PATH", "--out DIR", "--seed N", "--quiet", "--model.hidden_size=128"]:
            assert flag in result.stdout, flag


def test_tasks_lists_every_task(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ["arith", "countdown", "gsm8k"]:
        assert f"\n{name}" in "\n" + out


def test_unknown_arguments_and_missing_model_are_clear_errors(capsys):
    result = run_cli("eval", "--frobnicate")
    assert result.returncode == 2 and "unrecognized argument '--frobnicate'" in result.stderr
    assert main(["eval", "--task", "arith"]) == 2
    assert "needs a model: --model PATH" in capsys.readouterr().err
    assert main(["eval", "--model", "/nonexistent/model"]) == 2
    assert "not a Hugging Face model directory" in capsys.readouterr().err


def test_eval_json_on_a_freshly_trained_model(tmp_path, capsys):
    assert main([
        "sft", "--config", "arith_sft", "--out", str(tmp_path / "m"), "--quiet",
        "--model.size=nano", "--model.device=cpu", "--sft.steps=5", "--sft.eval_every=5", "--eval.n_problems=8",
        "--eval.max_new_tokens=40",
    ]) == 0
    capsys.readouterr()
    assert main([
        "eval", "--model", str(tmp_path / "m"), "--task", "arith", "--json", "--eval.n_problems=12",
        "--eval.max_new_tokens=40", "--eval.pass_k=[1,2]", "--eval.n_samples=2", "--out", str(tmp_path / "e"),
    ]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 12 and 0 <= result["accuracy"] <= 1
    lo, hi = result["ci95"]
    assert lo <= result["accuracy"] <= hi
    assert set(result["pass_at_k"]) == {"1", "2"}
    assert result["first_error_histogram"] is not None and sum(result["first_error_histogram"].values()) <= 12
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["n"] == 12
