"""Every `sirl` command's exit paths, as one table of argv -> exit status and what it says.

Exit statuses: 0 done; 2 the input was wrong (a usage error from argparse, or sirl's typed errors: config,
data, checkpoint, report, a missing path), with the message on stderr; 1 the work itself failed (a
diverged run, a comparison whose runs failed) or a bug, which shows with its traceback.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import sirl.train
from sirl.cli import COMMANDS, build_parsers, main
from sirl.config import load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]
NANO = ["--model.path=null", "--model.size=nano", "--model.device=cpu", "--train.steps=2", "--train.eval_every=2",
        "--train.checkpoint_every=1", "--rollout.prompts_per_step=2", "--rollout.group_size=2", "--eval.n_problems=2",
        "--eval.max_new_tokens=20", "--rollout.max_new_tokens=20", "--algo", "grpo"]

# (command, argv, exit status, stream, text it contains). {run}: a finished nano run; {empty}: an empty
# folder; {bare}: a run folder with its config.yaml and no checkpoint; {tmp}: a fresh folder.
TABLE = [
    ("", [], 2, "err", "the following arguments are required: COMMAND"),
    ("", ["frobnicate"], 2, "err", "invalid choice: 'frobnicate'"),
    ("", ["--help"], 0, "out", "convert-gguf"),
    ("tasks", ["tasks"], 0, "out", "A task of your own: --task my_tasks.py:MyTask"),
    ("tasks", ["tasks", "extra"], 2, "err", "unrecognized arguments: extra"),
    ("config", ["config", "--config", "arith"], 0, "out", "model:\n  path: checkpoints/arith-tiny"),
    ("config", ["config", "--config", "nosuch"], 2, "err", "no preset 'nosuch'"),
    ("config", ["config", "--train.lr=abc"], 2, "err", "train.lr='abc' has the wrong type: expected float"),
    ("config", ["config", "--nosection.x=1"], 2, "err", "unknown config key nosection"),
    ("config", ["config", "--train.lr"], 2, "err", "config override '--train.lr' needs a value"),
    ("config", ["config", "stray"], 2, "err", "unrecognized argument 'stray' (config overrides look like --section.field=value)"),
    ("train", ["train", "--resume", "{run}", "--config", "arith"], 2, "err", "--resume RUN_DIR takes the config and the run folder from RUN_DIR"),
    ("train", ["train", "--resume", "{run}", "--out", "{tmp}"], 2, "err", "--resume RUN_DIR takes the config and the run folder from RUN_DIR"),
    ("train", ["train", "--force"], 2, "err", "--force only applies with --resume"),
    ("train", ["train", "--resume", "{empty}"], 2, "err", "no config.yaml there; give the folder of a run started by `sirl train`"),
    ("train", ["train", "--resume", "{bare}", "--quiet"], 2, "err", "no checkpoint to resume from in"),
    ("train", ["train", "--resume", "{run}", "--quiet", "--train.lr=0.5"], 2, "err", "train.lr: 0.0001 -> 0.5"),
    ("train", ["train", "--config", "arith", "--algo", "nosuch"], 2, "err", "unknown method algo.name='nosuch'"),
    ("train", ["train", "--config", "arith", "--model", "/nonexistent/model"], 2, "err", "/nonexistent/model is not a Hugging Face model directory"),
    ("train", ["train", "--config", "arith", "--task.args.min_ops=-3"], 2, "err", "task 'arith': need 1 <= min_ops <= max_ops"),
    ("train", ["train", *NANO, "--model.hidden_size=33", "--out", "{tmp}/x", "--quiet"], 2, "err", "model.hidden_size=33 must be divisible by model.num_heads=2"),
    ("sft", ["sft", "--config", "arith_sft", "--model", "/nonexistent/model"], 2, "err", "/nonexistent/model is not a Hugging Face model directory"),
    ("sft", ["sft", "--resume", "{run}"], 2, "err", "unrecognized argument '--resume'"),
    ("sft", ["sft", "--config", "arith_sft", "--sft.nosuch=1"], 2, "err", "unknown config key sft.nosuch"),
    ("eval", ["eval", "--task", "arith"], 2, "err", "sirl eval needs a model: --model PATH"),
    ("eval", ["eval", "--frobnicate"], 2, "err", "unrecognized argument '--frobnicate'"),
    ("eval", ["eval", "--task", "nosuchtask", "--model", "checkpoints/arith-tiny"], 2, "err", "unknown task 'nosuchtask'; registered tasks:"),
    ("eval", ["eval", "--config", "arith", "--pass-k", "--eval.n_samples=2"], 2, "err", "eval.n_samples=2 must be >= max(eval.pass_k)=4"),
    ("eval", ["eval", "--config", "arith", "--task.args.min_ops=0"], 2, "err", "task 'arith': need 1 <= min_ops <= max_ops"),
    ("eval", ["eval", "--task", "sirl.types:Problem", "--model", "checkpoints/arith-tiny"], 2, "err", "lacks the required method(s)"),
    ("compare", ["compare", "--task", "arith"], 2, "err", "--budget-tokens N is required"),
    ("compare", ["compare", "--plan", "benchmarks/compare_cpu.yaml"], 2, "err", "--plan needs --task to pick one of its tasks"),
    ("compare", ["compare", "--plan", "benchmarks/compare_cpu.yaml", "--task", "arith", "--config", "arith"], 2, "err",
     "--plan names each task's config"),
    ("compare", ["compare", "--task", "arith", "--budget-tokens", "100", "--seed", "1"], 2, "err", "--seed: a comparison runs seeds 0..N-1"),
    ("compare", ["compare", "--task", "arith", "--budget-tokens", "100", "--learning-rates", "1e-4,abc"], 2, "err", "--learning-rates: 'abc' is not a number"),
    ("compare", ["compare", "--task", "arith", "--budget-tokens", "100", "--methods", "grpo,ppo"], 2, "err", "unknown method(s) ['ppo']"),
    ("compare", ["compare", "--task", "arith", "--budget-tokens", "100", "--eval-every-tokens", "200"], 2, "err",
     "eval_every_tokens (200) is larger than budget_tokens (100)"),
    ("report", ["report", "{run}", "--out", "{tmp}/report.html"], 0, "out", "report: {tmp}/report.html"),
    ("report", ["report"], 2, "err", "the following arguments are required: RUN_DIR"),
    ("report", ["report", "{tmp}/nothing"], 2, "err", "no such folder; give the folder of a run started by `sirl train`"),
    ("report", ["report", "{empty}"], 2, "err", "has no metrics.jsonl, so it is not a `sirl train` run folder"),
    ("convert-gguf", ["convert-gguf"], 2, "err", "the following arguments are required: OUT"),
    ("convert-gguf", ["convert-gguf", "{tmp}/none.gguf", "{tmp}/model"], 2, "err", "none.gguf does not exist"),
    ("convert-gguf", ["convert-gguf", "a.gguf", "{tmp}/model", "--dtype", "int8"], 2, "err", "invalid choice: 'int8'"),
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    assert main(["train", *NANO, "--out", str(root / "run"), "--quiet"]) == 0
    (root / "empty").mkdir()
    (root / "bare").mkdir()
    (root / "bare" / "config.yaml").write_text((root / "run" / "config.yaml").read_text())
    return {"run": str(root / "run"), "empty": str(root / "empty"), "bare": str(root / "bare")}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``sirl ARGV`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's usage errors and --help
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("command, argv, status, stream, text", TABLE, ids=[" ".join(row[1]) or "(nothing)" for row in TABLE])
def test_argv_gives_its_exit_status_and_message(folders, tmp_path, capsys, monkeypatch, command, argv, status, stream, text):
    monkeypatch.chdir(ROOT)  # the presets and shipped policies, as from a clone
    fill = {**folders, "tmp": str(tmp_path)}
    argv = [arg.format(**fill) for arg in argv]
    got, out, err = run_cli(argv, capsys)
    assert got == status, (out, err)
    assert text.format(**fill) in (out if stream == "out" else err), (out, err)
    if status == 2 and not err.startswith("usage:"):  # sirl's own error line, with the hint to see where
        assert err.startswith(f"sirl {command}: error: ") and "(set SIRL_TRACEBACK=1 to see where)" in err


def test_every_command_of_the_help_has_rows_in_the_table():
    commands = set(build_parsers().commands)
    assert commands == set(COMMANDS)  # the registry is the parser's
    assert commands == {row[0] for row in TABLE} - {""}


def test_sirl_config_prints_yaml_that_loads_back_to_the_same_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    status, out, _ = run_cli(["config", "--config", "arith", "--train.lr=0.0003", "--seed", "7"], capsys)
    assert status == 0
    (tmp_path / "printed.yaml").write_text(out)
    assert yaml.safe_load(out)["train"]["lr"] == 0.0003
    expected = load_config("arith", ["train.lr=0.0003", "seed=7"])
    assert to_dict(load_config(str(tmp_path / "printed.yaml"))) == to_dict(expected)


def test_a_diverged_run_exits_1_and_names_the_checkpoint_to_go_back_to(tmp_path, capsys, monkeypatch):
    real, calls = sirl.train.verify_trajectories, {"n": 0}

    def poisoned(*args, **kwargs):  # from the third step on, every reward is NaN (a broken verifier)
        calls["n"] += 1
        found = real(*args, **kwargs)
        return found if calls["n"] < 3 else [dataclasses.replace(t, reward=float("nan")) for t in found]

    monkeypatch.setattr(sirl.train, "verify_trajectories", poisoned)
    status, _, err = run_cli(["train", *NANO, "--train.steps=10", "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert status == 1
    assert err.startswith("sirl train: stopped: steps 3..5 all had a non-finite loss") and "checkpoints/step_2" in err


def test_a_comparison_whose_runs_fail_exits_1(tmp_path, capsys, monkeypatch):
    """Its starting policy cannot be evaluated (a device this machine lacks): nothing to compare."""
    monkeypatch.chdir(ROOT)
    status, _, err = run_cli(["compare", "--task", "arith", "--methods", "grpo", "--seeds", "1", "--budget-tokens", "100",
                              "--quiet", "--model.device=cuda:7", "--out", str(tmp_path / "cmp")], capsys)
    assert status == 1 and err.startswith("sirl compare: "), err


def test_a_bug_is_not_reported_as_a_user_error(tmp_path, capsys, monkeypatch):
    """A plain ValueError (or any other exception) from inside sirl is a bug: no exit 2 with a tidy line,
    but the exception itself, which the `sirl` command shows as a traceback with exit status 1."""

    def buggy(*args, **kwargs):
        raise ValueError("a bug inside the training loop")

    monkeypatch.setattr(sirl.train, "run_train", buggy)
    with pytest.raises(ValueError, match="a bug inside the training loop"):
        main(["train", *NANO, "--out", str(tmp_path / "run"), "--quiet"])
    assert "error:" not in capsys.readouterr().err


def test_the_sirl_command_shows_a_bug_with_its_traceback_and_exit_status_1(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import sirl.train
        from sirl.cli import main

        def buggy(*args, **kwargs):
            raise ValueError("a bug inside the training loop")

        sirl.train.run_train = buggy
        sys.argv = ["sirl"]
        sys.exit(main({["train", *NANO, "--out", str(tmp_path / "run"), "--quiet"]!r}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and done.stderr.rstrip().endswith("ValueError: a bug inside the training loop")
