import json
import re
import subprocess
import sys

import pytest

from sirl.cli import main
from sirl.evaluate import wilson_interval


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
        "--eval.max_new_tokens=40", "--pass-k", "--eval.pass_k=[1,2]", "--eval.n_samples=2", "--out", str(tmp_path / "e"),
    ]) == 0
    result = json.loads(capsys.readouterr().out)
    rewards = result["rewards"]  # each held-out problem's greedy reward: every figure below follows from them
    assert result["n"] == len(rewards) == 12 and set(rewards) <= {0.0, 1.0}
    assert result["accuracy"] == sum(rewards) / 12 and result["ci95"] == list(wilson_interval(sum(rewards), 12))
    levels = result["by_difficulty"].values()
    assert sum(v["n"] for v in levels) == 12 and sum(v["n"] * v["accuracy"] for v in levels) == pytest.approx(sum(rewards))
    # every failure of arith has a first wrong step (a missing step is wrong too), and only failures are counted
    assert sum(result["first_error_histogram"].values()) == rewards.count(0.0)
    # two samples per problem, c_i of them right: pass@1 = sum(c_i) / 24 and pass@2 = #(c_i > 0) / 12, so
    # 24 pass@1 and 12 pass@2 are whole numbers with pass@2 / 2 <= pass@1 <= pass@2
    p1, p2 = result["pass_at_k"]["1"], result["pass_at_k"]["2"]
    assert set(result["pass_at_k"]) == {"1", "2"} and 24 * p1 == pytest.approx(round(24 * p1)) and 12 * p2 == pytest.approx(round(12 * p2)) and p2 / 2 <= p1 <= p2
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["rewards"] == rewards


EVAL = ["eval", "--config", "arith", "--eval.n_problems=8", "--eval.max_new_tokens=60"]


def test_eval_is_greedy_only_unless_asked_for_pass_at_k(capsys):
    assert main([*EVAL, "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["pass_at_k"] == {}
    assert main(EVAL) == 0
    assert "pass@k             not measured (--pass-k samples eval.n_samples=8 per problem)" in capsys.readouterr().out
    assert main([*EVAL, "--pass-k", "--eval.n_samples=2", "--eval.pass_k=[1,2]", "--json", "--quiet"]) == 0
    assert set(json.loads(capsys.readouterr().out)["pass_at_k"]) == {"1", "2"}
    assert main([*EVAL, "--pass-k", "--eval.n_samples=2"]) == 2  # k=4 from 2 samples: refused before any decoding
    assert "eval.n_samples=2 must be >= max(eval.pass_k)=4" in capsys.readouterr().err


def test_eval_shows_progress_bars_and_quiet_prints_only_the_result(capsys):
    assert main(EVAL) == 0
    captured = capsys.readouterr()
    assert "eval (greedy):" in captured.err and "/8 [" in captured.err  # the bar, on stderr (how far it got is timing)
    assert captured.out.startswith("verifier: ")
    assert main([*EVAL, "--quiet", "--verify", "--eval.n_samples=2"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # no bars
    assert captured.out.startswith("accuracy (greedy)") and "verifier" not in captured.out and "model " not in captured.out
    assert "self-verification of its own samples" in captured.out


def test_a_wrong_model_path_is_reported_before_anything_slow_starts(monkeypatch, capsys):
    import sirl.sft
    import sirl.train  # imported before the patch, so that they keep the real verifier_for
    import sirl.verifier

    def too_late(*args, **kwargs):
        raise AssertionError("started before the model path was checked")

    monkeypatch.setattr(sirl.verifier, "verifier_for", too_late)
    monkeypatch.setattr(sirl.sft, "run_sft", too_late)
    for command in (["eval", "--task", "gsm8k"], ["sft", "--config", "arith_sft"], ["train", "--config", "arith"]):
        assert main([*command, "--model", "/nonexistent/model"]) == 2, command
        assert "/nonexistent/model is not a Hugging Face model directory" in capsys.readouterr().err
    assert main(["eval", "--task", "nosuchtask", "--model", "checkpoints/arith-tiny"]) == 2
    assert "unknown task 'nosuchtask'" in capsys.readouterr().err


def test_sft_quiet_prints_the_result_line_only(tmp_path, capsys):
    assert main([
        "sft", "--config", "arith_sft", "--out", str(tmp_path / "m"), "--quiet", "--model.size=nano", "--model.device=cpu",
        "--sft.steps=3", "--sft.eval_every=3", "--eval.n_problems=4", "--eval.max_new_tokens=20",
    ]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    [line] = captured.out.splitlines()
    assert re.fullmatch(rf"sft stopped after 3 steps \(steps\); held-out accuracy \d+\.\d%; saved {re.escape(str(tmp_path / 'm'))}", line)
