"""Every way a resume is refused (sirl.checkpoint.CheckpointError), each with the message a user acts on,
and the sharded weights that a resume must read as exactly as one file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import sirl.train
from sirl.checkpoint import CheckpointError, load_checkpoint, load_policy_weights, resume_training
from sirl.model import SIZE_PRESETS, build_model, load_model, save_model
from sirl.train import run_train
from test_resume import Killed, crash_at_step, nano_config, records, weights


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A nano grpo run of 2 steps with checkpoints step_1 and final (copied by each test that changes it)."""
    run = tmp_path_factory.mktemp("checkpoints") / "run"
    run_train(nano_config("train.steps=2", "train.checkpoint_every=1", "train.eval_every=2"), run, quiet=True)
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_a_run_that_died_before_its_first_checkpoint_has_nothing_to_resume(tmp_path, monkeypatch):
    config = nano_config("train.checkpoint_every=2")
    with monkeypatch.context() as patch:
        crash_at_step(patch, 2)  # step 1 is logged, no checkpoint yet
        with pytest.raises(Killed):
            run_train(config, tmp_path / "run", quiet=True)
    with pytest.raises(CheckpointError, match=r"no checkpoint to resume from in .*run/checkpoints \(was train.checkpoint_every 0"):
        run_train(config, tmp_path / "run", quiet=True, resume=True)
    assert [r["step"] for r in records(tmp_path / "run")] == [0, 1]  # nothing logged was lost


def test_when_every_checkpoint_is_damaged_none_is_used_and_each_is_named(finished_run, tmp_path, capsys):
    run = copy_of(finished_run, tmp_path)
    names = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert names == ["final", "step_1"]  # the last step's checkpoint is final
    for name in names:
        data = (run / "checkpoints" / name / "model.safetensors").read_bytes()
        (run / "checkpoints" / name / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"no complete checkpoint in .*run/checkpoints: all 2 were refused"):
        load_checkpoint(run)
    err = capsys.readouterr().err
    assert all(f"checkpoint {run / 'checkpoints' / name} refused: model.safetensors" in err for name in names), err


def test_a_checkpoint_of_one_process_is_not_resumed_by_two(finished_run):
    # The check comes before anything is loaded into the run, so nothing of the run is needed here.
    with pytest.raises(CheckpointError, match=r"final was written by 1 process\(es\); resume it with as many, not 2"):
        resume_training(finished_run, None, None, None, None, rank=0, world_size=2, changed_config=lambda saved: None,
                        eval_from_json=None)


def test_weights_of_another_architecture_are_refused_with_the_names_that_do_not_fit(finished_run, tmp_path):
    """A resume forced onto another model.arch (qwen2 has q/k/v biases, the saved llama has none)."""
    run = copy_of(finished_run, tmp_path)
    with pytest.raises(CheckpointError, match=r"final: the weights do not fit the model \(missing \['model.layers.0.self_attn.q_proj.bias'"):
        run_train(nano_config("train.steps=3", "model.arch=qwen2"), run, quiet=True, resume=True, force=True)


def sharded_save(model, tokenizer, directory) -> Path:
    """save_model, with the weights split into shards of at most 20 kB (a large model's layout)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True, max_shard_size="20KB")
    tokenizer.save_pretrained(directory)
    return directory


def test_sharded_weights_resume_exactly_and_shards_of_another_model_are_refused(tmp_path, monkeypatch, arith_tokenizer):
    config = nano_config()
    run_train(config, tmp_path / "whole", quiet=True)
    monkeypatch.setattr(sirl.train, "save_model", sharded_save)
    with monkeypatch.context() as patch:
        crash_at_step(patch, 5)
        with pytest.raises(Killed):
            run_train(config, tmp_path / "sharded", quiet=True)
    checkpoint = tmp_path / "sharded" / "checkpoints" / "step_4"
    assert (checkpoint / "model.safetensors.index.json").is_file() and len(list(checkpoint.glob("model-*.safetensors"))) > 1
    run_train(config, tmp_path / "sharded", quiet=True, resume=True)
    assert records(tmp_path / "sharded") == records(tmp_path / "whole")
    policy, _ = load_model(tmp_path / "sharded" / "checkpoints" / "final")
    whole = weights(tmp_path / "whole" / "checkpoints" / "final")
    assert all(torch.equal(policy.state_dict()[k], whole[k]) for k in whole)

    other = build_model(arith_tokenizer, "qwen2", SIZE_PRESETS["nano"], 256, seed=0)
    with pytest.raises(CheckpointError, match=r"the weights do not fit the model \(missing \['model.layers.0.self_attn.q_proj.bias'"):
        load_policy_weights(other, checkpoint)


def test_a_whole_model_file_and_its_shards_load_the_same_weights(tmp_path, nano_llama, arith_tokenizer):
    """load_policy_weights on the one-file layout and on the sharded one, against the model they came from."""
    save_model(nano_llama, arith_tokenizer, tmp_path / "one")
    sharded_save(nano_llama, arith_tokenizer, tmp_path / "shards")
    for layout in ("one", "shards"):
        fresh = build_model(arith_tokenizer, "llama", SIZE_PRESETS["nano"], 256, seed=1)
        assert any(not torch.equal(a, b) for a, b in zip(fresh.parameters(), nano_llama.parameters()))
        load_policy_weights(fresh, tmp_path / layout)
        for (name, a), b in zip(fresh.state_dict().items(), nano_llama.state_dict().values()):
            assert torch.equal(a, b), (layout, name)
