"""Ctrl-C and SIGTERM stop `sirl train` at a safe point with a checkpoint that resumes exactly; a second
Ctrl-C while saving corrupts nothing; `sirl compare` passes the stop to its runs and a rerun continues them.

The signals are real and sent at deterministic points: by the child process itself, from inside the
rollout of a chosen training step (the step is then in progress) or from inside the checkpoint writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sirl.checkpoint import check_checkpoint
from sirl.config import load_config, to_yaml
from sirl.train import run_train
from test_resume import nano_config, records, weights

ROOT = Path(__file__).resolve().parents[1]


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", **extra}


def signalled_train(config_path: Path, run: Path, at_step: int, first: str, second: str | None = None) -> subprocess.CompletedProcess:
    """``sirl train --config config_path --out run`` in a child process that sends itself ``first`` from
    inside the rollout of training step ``at_step``; ``second`` (a second SIGINT) follows either at once
    (``"step"``: the step is still in progress) or from inside the checkpoint writer (``"saving"``)."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        import sirl.checkpoint, sirl.train
        from sirl.cli import main

        real_sample, calls = sirl.train.sample_trajectories, [0]
        def sample(*args, **kwargs):
            if kwargs.get("group_size") and not kwargs.get("groups"):  # the step's own rollout
                calls[0] += 1
                if calls[0] == {at_step}:
                    os.kill(os.getpid(), signal.{first})
                    if {second!r} == "step":
                        os.kill(os.getpid(), signal.SIGINT)
            return real_sample(*args, **kwargs)
        sirl.train.sample_trajectories = sample

        real_save, sent = sirl.checkpoint.save_file, [False]
        def save_file(*args, **kwargs):
            if {second!r} == "saving" and calls[0] >= {at_step} and not sent[0]:
                sent[0] = True
                os.kill(os.getpid(), signal.SIGINT)  # lands while the checkpoint is half written
            return real_save(*args, **kwargs)
        sirl.checkpoint.save_file = save_file
        sys.exit(main(["train", "--config", {str(config_path)!r}, "--out", {str(run)!r}, "--quiet"]))
    """)
    return subprocess.run([sys.executable, "-c", script], env=child_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted run every stopped-and-resumed one must equal, and its config file."""
    folder = tmp_path_factory.mktemp("whole")
    config = nano_config()
    (folder / "config.yaml").write_text(to_yaml(config))
    run_train(config, folder / "run", quiet=True)
    return folder


def assert_resumes_to_the_whole_run(run: Path, whole: Path) -> None:
    run_train(load_config(str(whole / "config.yaml")), run, quiet=True, resume=True)
    assert records(run) == records(whole / "run")
    a, b = weights(whole / "run" / "checkpoints" / "final"), weights(run / "checkpoints" / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (run / "evals.jsonl").read_text() == (whole / "run" / "evals.jsonl").read_text()


@pytest.mark.parametrize("first, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_mid_step_finishes_the_step_saves_it_and_resumes_exactly(whole, tmp_path, first, status):
    """The signal lands inside step 3's rollout (the last periodic checkpoint is step 2): step 3 finishes,
    is logged and saved as a complete checkpoint, the run names the resume command and exits 128 + the
    signal; resumed, it ends exactly like the run that was never stopped. With SIGINT, a second Ctrl-C
    arrives while that checkpoint is being written: it is held until the checkpoint is complete."""
    run = tmp_path / "run"
    child = signalled_train(whole / "config.yaml", run, at_step=3, first=first, second="saving" if first == "SIGINT" else None)
    assert child.returncode == status, child.stderr[-3000:]
    assert "Traceback" not in child.stderr, child.stderr[-3000:]
    assert f"sirl train --resume {run}" in child.stderr
    assert [r["step"] for r in records(run)] == [0, 1, 2, 3]
    checkpoints = run / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step_3"
    assert check_checkpoint(checkpoints / "step_3") is None and not list(checkpoints.glob(".tmp-*"))
    assert not (run / "eval.json").exists()
    if first == "SIGINT":
        assert "received while saving" in child.stderr
    assert_resumes_to_the_whole_run(run, whole)


def test_a_second_ctrl_c_during_the_step_stops_at_once_and_keeps_the_last_checkpoint(whole, tmp_path):
    run = tmp_path / "run"
    child = signalled_train(whole / "config.yaml", run, at_step=3, first="SIGINT", second="step")
    assert child.returncode == 130, child.stderr[-3000:]
    assert "Traceback" not in child.stderr, child.stderr[-3000:]
    assert "without saving" in child.stderr and f"sirl train --resume {run}" in child.stderr
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_2" and not (run / "checkpoints" / "step_3").exists()
    assert [r["step"] for r in records(run)] == [0, 1, 2]  # step 3 was abandoned before it was logged
    assert_resumes_to_the_whole_run(run, whole)



def test_a_stop_during_the_first_evaluation_saves_step_0_and_resumes_exactly(whole, tmp_path, monkeypatch):
    """SIGTERM while the starting policy is evaluated, before any step: the run saves a step-0 checkpoint (the
    evaluation is part of it) and a resumed run trains as if never stopped. In process: the handler is the
    run's own, so the signal reaches it as it would at the terminal."""
    import sirl.train
    from sirl.interrupt import Interrupted

    real, calls = sirl.train.evaluate, [0]

    def evaluate(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(sirl.train, "evaluate", evaluate)
        with pytest.raises(Interrupted, match="stopped by SIGTERM after step 0: checkpoint .*step_0 written") as stopped:
            run_train(load_config(str(whole / "config.yaml")), run, quiet=True)
    assert stopped.value.exit_status == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's handler is gone with it
    assert [r["step"] for r in records(run)] == [0] and (run / "checkpoints" / "latest").read_text().strip() == "step_0"
    assert_resumes_to_the_whole_run(run, whole)


# --- sirl compare passes the stop to its runs ------------------------------------------------------

STOP_HOOK = '''
import os, sys
if os.environ.get("SIRL_TEST_STOP_PARENT_AT_STEP") and "sirl.cli" in sys.orig_argv and "train" in sys.orig_argv and "--resume" not in sys.orig_argv:
    import signal
    import sirl.train

    real, calls = sirl.train.sample_trajectories, [0]

    def sample(*args, **kwargs):
        if kwargs.get("group_size") and not kwargs.get("groups"):
            calls[0] += 1
            if calls[0] == int(os.environ["SIRL_TEST_STOP_PARENT_AT_STEP"]):
                os.kill(os.getppid(), signal.SIGTERM)  # the comparison that started this run, and only it
        return real(*args, **kwargs)

    sirl.train.sample_trajectories = sample
'''

COMPARE = ["--task", "arith", "--methods", "grpo", "--seeds", "1", "--budget-tokens", "1200", "--eval-every-tokens", "600",
           "--final-problems", "8", "--checkpoint-every", "100", "--jobs", "1", "--threads", "1", "--quiet", "--eval.n_problems=8",
           "--rollout.prompts_per_step=2", "--rollout.group_size=4", "--model.device=cpu"]


def test_a_stopped_comparison_stops_its_run_with_a_checkpoint_and_a_rerun_continues_it(tmp_path):
    """SIGTERM to the comparison alone (as `timeout` or `kill` sends it), from inside step 2 of its run: the
    comparison passes it on, the run finishes step 2, saves it and exits 143, and so does the comparison,
    saying how to continue; rerunning the same command resumes the run from that checkpoint."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STOP_HOOK)
    out = tmp_path / "cmp"
    command = [sys.executable, "-m", "sirl.cli", "compare", *COMPARE, "--out", str(out)]
    env = child_env(SIRL_TEST_STOP_PARENT_AT_STEP="2", PYTHONPATH=f"{hook}{os.pathsep}{ROOT / 'src'}")
    stopped = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "Rerun the same command to continue" in stopped.stderr and "grpo-seed0 stopped after their step in progress" in stopped.stderr
    run = out / "runs" / "grpo" / "seed0"
    log = (out / "logs" / "grpo-seed0.log").read_text()
    assert f"stopped by SIGTERM after step 2: checkpoint {run / 'checkpoints' / 'step_2'} written" in log
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_2" and check_checkpoint(run / "checkpoints" / "step_2") is None
    assert [r["step"] for r in records(run)] == [0, 1, 2] and not (run / "eval.json").exists()  # the run ended with the comparison
    assert not (out / "results.md").exists() and not (out / ".sirl.lock").exists()

    resumed = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "train --resume" in (out / "logs" / "grpo-seed0.log").read_text()
    assert [r["step"] for r in records(run)] == list(range(len(records(run)))) and records(run)[-1]["tokens/total"] >= 1200
    assert "| grpo |" in (out / "results.md").read_text()


# --- sirl sft and sirl eval --------------------------------------------------------------------------


def test_ctrl_c_during_sft_saves_the_weights_trained_so_far(tmp_path):
    """SFT has no checkpoints to resume from: a Ctrl-C inside step 3 finishes that step and saves the weights
    as the model directory --out promises (it used to end in a traceback with nothing saved)."""
    out = tmp_path / "sft"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import sirl.sft
        from sirl.cli import main

        real, calls = sirl.sft.supervised_loss, [0]
        def loss(*args, **kwargs):
            calls[0] += 1
            if calls[0] == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return real(*args, **kwargs)
        sirl.sft.supervised_loss = loss
        sys.exit(main(["sft", "--config", "arith_sft", "--model.size=nano", "--model.device=cpu", "--sft.steps=50", "--sft.eval_every=40",
                       "--sft.batch_size=4", "--sft.target_accuracy=null", "--eval.n_problems=4", "--out", {str(out)!r}, "--quiet"]))
    """)
    child = subprocess.run([sys.executable, "-c", script], env=child_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert child.returncode == 130, child.stderr[-3000:]
    assert "Traceback" not in child.stderr and f"the weights after SFT step 3 are saved in {out}" in child.stderr
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "sirl_task.json"):
        assert (out / name).is_file(), name
    assert not (out / ".sirl.lock").exists()


def test_ctrl_c_during_sirl_eval_ends_cleanly_and_writes_no_partial_result(tmp_path):
    out = tmp_path / "eval"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import sirl.evaluate
        from sirl.cli import main

        real = sirl.evaluate.complete
        def complete(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            return real(*args, **kwargs)
        sirl.evaluate.complete = complete
        sys.exit(main(["eval", "--config", "arith", "--model.device=cpu", "--eval.n_problems=4", "--out", {str(out)!r}, "--quiet"]))
    """)
    child = subprocess.run([sys.executable, "-c", script], env=child_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert child.returncode == 130, child.stderr[-3000:]
    assert "Traceback" not in child.stderr and "sirl eval: stopped by SIGINT" in child.stderr
    assert not (out / "eval.json").exists() and not (out / ".sirl.lock").exists()
