"""Checkpoints that resume exactly, refuse damaged files, and a run that stops instead of diverging."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sirl.train
from sirl.checkpoint import check_checkpoint, load_checkpoint
from sirl.cli import main as cli_main
from sirl.config import load_config
from sirl.methods import METHODS
from sirl.train import Diverged, run_train

TIME_KEYS = ("time/", "tokens_per_s")


def records(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock keys, which no two runs share."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIME_KEYS)} for r in rows]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_file(str(checkpoint / "model.safetensors")).items()}


def shipped_config(algo: str, *extra: str):
    """The shipped arith policy (so the method finds failures and successes to work with), six short steps:
    checkpoints at steps 3 and 6, evaluations on 4 problems at steps 0, 3 and 6. Seed 2 gives groups of
    mixed outcome from step 1 on, so every method has trained its own state before the step-3 checkpoint."""
    return load_config("arith", [
        "model.device=cpu", f"algo.name={algo}", "seed=2", "train.steps=6", "train.eval_every=3", "train.checkpoint_every=3",
        "task.args.min_ops=3", "task.args.max_ops=6", "rollout.max_new_tokens=48", "rollout.prompts_per_step=2",
        "rollout.group_size=4", "eval.n_problems=4", "eval.max_new_tokens=48", "method.repair_share=0.5",
        "internalize.verify_batch=4", *extra,
    ])


def nano_config(*extra: str):
    return load_config("arith", [
        "model.path=null", "model.size=nano", "model.device=cpu", "algo.name=grpo", "train.steps=6", "train.eval_every=3",
        "train.checkpoint_every=2", "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=40",
        "eval.n_problems=8", "eval.max_new_tokens=40", *extra,
    ])


class Killed(Exception):
    """Stands for the process dying: raised in the middle of a training step."""


def crash_at_step(monkeypatch, step: int) -> None:
    """Make the rollout of training step ``step`` die (each step samples once before anything else)."""
    real, calls = sirl.train.sample_trajectories, {"n": 0}

    def sample(*args, **kwargs):
        if kwargs.get("group_size") and not kwargs.get("groups"):  # the step's own rollout, not a probe
            calls["n"] += 1
            if calls["n"] == step:
                raise Killed(f"killed during step {step}")
        return real(*args, **kwargs)

    monkeypatch.setattr(sirl.train, "sample_trajectories", sample)


@pytest.mark.parametrize("algo", list(METHODS))  # the registry: a method added later is resumed here too
def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch, algo):
    config = shipped_config(algo)
    method, initial = METHODS[algo], {}
    if method.make_state is not None:  # record the method's own state as the run builds it, before any step

        def make_state(*args, **kwargs):
            state = method.make_state(*args, **kwargs)
            initial.update({k: v.detach().clone() for k, v in state.tensors().items()})
            return state

        monkeypatch.setitem(METHODS, algo, dataclasses.replace(method, make_state=make_state))
    run_train(config, tmp_path / "whole", quiet=True)

    with monkeypatch.context() as patch:
        crash_at_step(patch, 5)  # step 4 is logged after the step-3 checkpoint, then it dies
        with pytest.raises(Killed):
            run_train(config, tmp_path / "resumed", quiet=True)
    assert records(tmp_path / "resumed")[-1]["step"] == 4
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text().strip() == "step_3"
    run_train(config, tmp_path / "resumed", quiet=True, resume=True)

    whole, resumed = records(tmp_path / "whole"), records(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == list(range(7))
    assert resumed == whole
    a, b = weights(tmp_path / "whole" / "checkpoints" / "final"), weights(tmp_path / "resumed" / "checkpoints" / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "whole" / "samples.jsonl").read_text() == (tmp_path / "resumed" / "samples.jsonl").read_text()
    # each evaluation once (the one after the checkpoint, logged before the crash, was dropped and redone)
    assert (tmp_path / "whole" / "evals.jsonl").read_text() == (tmp_path / "resumed" / "evals.jsonl").read_text()
    # The state the method carries over was in the checkpoint, and in use after it.
    step_3 = tmp_path / "resumed" / "checkpoints" / "step_3"
    state = json.loads((step_3 / "trainer_state.json").read_text())
    if method.uses_repair:
        assert state["processes"][0]["verification"]
        assert sum(r["repair/buffer_draws"] for r in resumed[4:]) > 0
    if method.make_state is not None:  # its own state had moved from where it starts, so a lost one would show
        from sirl.checkpoint import METHOD_PREFIX

        saved = {k.removeprefix(METHOD_PREFIX): v for k, v in load_file(str(step_3 / "trainer_state.safetensors")).items()
                 if k.startswith(METHOD_PREFIX)}
        assert initial and saved.keys() >= initial.keys() and any(not torch.equal(saved[k], initial[k]) for k in initial)


def test_sigkill_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path):
    """A real SIGKILL, in a child process, after the new checkpoint's weights are written and before its
    manifest: `latest` still names the previous checkpoint, and the resumed run ends like a whole one."""
    config = nano_config()
    run_train(config, tmp_path / "whole", quiet=True)
    (tmp_path / "config.yaml").write_text((tmp_path / "whole" / "config.yaml").read_text())
    script = textwrap.dedent(f"""
        import os, signal
        import sirl.checkpoint
        from sirl.config import load_config
        from sirl.train import run_train

        real, calls = sirl.checkpoint.save_file, [0]
        def save_file(*args, **kwargs):
            real(*args, **kwargs)
            calls[0] += 1
            if calls[0] == 2:  # the second checkpoint (step_4): tensors on disk, no manifest yet
                os.kill(os.getpid(), signal.SIGKILL)
        sirl.checkpoint.save_file = save_file
        run_train(load_config({str(tmp_path / "config.yaml")!r}), {str(tmp_path / "killed")!r}, quiet=True)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    child = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr
    checkpoints = tmp_path / "killed" / "checkpoints"
    assert (checkpoints / ".tmp-step_4" / "trainer_state.safetensors").is_file()  # it died mid-write
    assert (checkpoints / "latest").read_text().strip() == "step_2" and not (checkpoints / "step_4").exists()

    run_train(config, tmp_path / "killed", quiet=True, resume=True)
    assert records(tmp_path / "killed") == records(tmp_path / "whole")
    a, b = weights(tmp_path / "whole" / "checkpoints" / "final"), weights(checkpoints / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(checkpoints.glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["truncate", "tamper", "delete_manifest"])
def test_a_damaged_checkpoint_is_refused_with_a_warning_and_the_previous_one_used(tmp_path, capsys, damage):
    config = nano_config("train.steps=4")
    run = tmp_path / "run"
    run_train(config, run, quiet=True)
    original = weights(run / "checkpoints" / "final")
    final = run / "checkpoints" / "final"
    if damage == "truncate":
        data = (final / "model.safetensors").read_bytes()
        (final / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "tamper":
        state = json.loads((final / "trainer_state.json").read_text())
        state["step"] = 3
        (final / "trainer_state.json").write_text(json.dumps(state))
    else:
        (final / "manifest.json").unlink()
    assert check_checkpoint(final) is not None
    capsys.readouterr()
    assert load_checkpoint(run).path.name == "step_2"
    assert f"checkpoint {final} refused" in capsys.readouterr().err

    run_train(config, run, quiet=True, resume=True)  # from step 2, two more steps: the same final weights
    err = capsys.readouterr().err
    assert f"{final} refused" in err
    assert all(torch.equal(original[k], weights(final)[k]) for k in original)
    assert check_checkpoint(final) is None


def test_resuming_with_a_changed_config_is_an_error_unless_forced(tmp_path, capsys):
    run = tmp_path / "run"
    run_train(nano_config("train.steps=2", f"out={run}"), run, quiet=True)
    assert cli_main(["train", "--resume", str(run), "--quiet", "--train.lr=0.001"]) == 2
    err = capsys.readouterr().err
    assert "train.lr: 0.0001 -> 0.001" in err and "--force" in err
    assert cli_main(["train", "--resume", str(run), "--quiet", "--train.steps=4", "--force"]) == 0
    assert [r["step"] for r in records(run)] == [0, 1, 2, 3, 4]
    with pytest.raises(SystemExit) as exit_:
        cli_main(["train", "--resume", str(tmp_path / "nothing"), "--quiet"])
    assert exit_.value.code == 2 and "no config.yaml" in capsys.readouterr().err


# --- numerical guards ---------------------------------------------------------------------------------


def poison_rewards(monkeypatch, from_step: int) -> None:
    """From training step ``from_step`` on, every reward of the step's rollout is NaN (a broken verifier)."""
    real, calls = sirl.train.verify_trajectories, {"n": 0}

    def verify(*args, **kwargs):
        found = real(*args, **kwargs)
        calls["n"] += 1  # the loop's verification stage runs once a step
        if calls["n"] >= from_step:
            found = [dataclasses.replace(t, reward=float("nan")) for t in found]
        return found

    monkeypatch.setattr(sirl.train, "verify_trajectories", verify)


def test_three_non_finite_steps_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    poison_rewards(monkeypatch, from_step=3)
    with pytest.raises(Diverged, match=r"steps 3\.\.5 all had a non-finite loss, gradient or sampling logit.*checkpoints/step_2"):
        run_train(nano_config("train.steps=10"), run, quiet=True)
    rows = records(run)
    assert [r["guard/skipped_steps"] for r in rows[1:]] == [0, 0, 1, 2, 3]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_2"
    assert not (run / "checkpoints" / "step_4").exists() and not (run / "checkpoints" / "final").exists()
    assert check_checkpoint(run / "checkpoints" / "step_2") is None


def test_non_finite_logits_while_sampling_skip_steps_and_stop_the_run_at_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Weights broken after step 2's update (as an overflowing update would leave them): step 2's
    checkpoint is refused, steps 3..5 cannot sample (NaN logits) and are skipped and logged as such, and
    the run stops naming step_1, the last checkpoint whose weights passed the finite check."""
    real_update, calls = sirl.train.policy_update, {"n": 0}

    def update(model, *args, **kwargs):
        stats = real_update(model, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return stats

    monkeypatch.setattr(sirl.train, "policy_update", update)
    run = tmp_path / "run"
    with pytest.raises(Diverged, match=r"steps 3\.\.5 all had a non-finite loss, gradient or sampling logit.*checkpoints/step_1 \(checkpoints/latest\)"):
        run_train(nano_config("train.steps=10", "train.checkpoint_every=1"), run, quiet=True)
    rows = records(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r.get("guard/nonfinite_logits", 0) for r in rows[1:]] == [0, 0, 1, 1, 1]
    assert [r["guard/skipped_steps"] for r in rows[1:]] == [0, 0, 1, 2, 3]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_1" and not (run / "checkpoints" / "step_2").exists()
    assert calls["n"] == 2  # no update after the weights broke


def test_a_skipped_step_leaves_the_weights_unchanged(tmp_path, monkeypatch):
    """One poisoned step among good ones: skipped, counted, and the run goes on with the same weights."""
    snapshots = []
    real_update = sirl.train.policy_update

    def update(model, *args, **kwargs):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        stats = real_update(model, *args, **kwargs)
        snapshots.append((int(stats.skipped), all(torch.equal(before[k], v) for k, v in model.state_dict().items())))
        return stats

    real, calls = sirl.train.verify_trajectories, {"n": 0}

    def verify(*args, **kwargs):
        found = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            found = [dataclasses.replace(t, reward=float("nan")) if i == 0 else t for i, t in enumerate(found)]
        return found

    monkeypatch.setattr(sirl.train, "policy_update", update)
    monkeypatch.setattr(sirl.train, "verify_trajectories", verify)
    run_train(nano_config("train.steps=3"), tmp_path / "run", quiet=True)
    assert [s[0] for s in snapshots] == [0, 1, 0]
    assert snapshots[1][1] is True  # the skipped step changed nothing
    assert records(tmp_path / "run")[-1]["guard/skipped_steps"] == 1


def test_a_failing_evaluation_during_rl_saves_the_weights_first(tmp_path, monkeypatch):
    """The held-out evaluation of step 3 raises (a bug in a task): the weights after step 3 are written as
    a complete checkpoint that names its task, then the error is reported with where they are."""
    import sirl.evaluate

    real, calls = sirl.train.evaluate, {"n": 0}

    def evaluate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the first is before training (step 0), the second at step 3
            raise ZeroDivisionError("a bug in the task")
        return real(*args, **kwargs)

    monkeypatch.setattr(sirl.train, "evaluate", evaluate)
    run = tmp_path / "run"
    with pytest.raises(sirl.evaluate.EvaluationFailed, match=r"failed after step 3; they are saved in .*step_3 \(sirl train --resume") as error:
        run_train(nano_config(), run, quiet=True)
    assert isinstance(error.value.__cause__, ZeroDivisionError)
    assert check_checkpoint(run / "checkpoints" / "step_3") is None
    assert json.loads((run / "checkpoints" / "step_3" / "sirl_task.json").read_text())["name"] == "arith"
