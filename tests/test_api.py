"""The Python API: ``import sirl`` is cheap, builds the configs the command line builds, evaluates as
``sirl eval`` does, and the documented example (examples/train_records.py) runs at a tiny size."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import sirl
from sirl.cli import main
from sirl.config import ConfigError, load_config, to_dict
from sirl.paths import PROJECT_ROOT


def test_import_sirl_loads_no_torch():
    # the verifier's workers import sirl's modules; the package itself must not pull in torch
    code = "import sys, sirl; assert 'torch' not in sys.modules, 'torch imported'; assert 'make_config' in dir(sirl)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_make_config_builds_what_the_command_line_builds():
    made = sirl.make_config("arith_prime", train={"steps": 5, "lr": 2e-4}, seed=3)
    assert to_dict(made) == to_dict(load_config("arith_prime", ["train.steps=5", "train.lr=2e-4", "seed=3"]))
    assert to_dict(sirl.make_config(made, train={"steps": 7})) == to_dict(load_config("arith_prime", ["train.steps=7", "train.lr=2e-4", "seed=3"]))
    switched = sirl.make_config("arith_prime", task={"name": "records", "args": {"test_fraction": 0.1}})
    assert switched.task.args == {"test_fraction": 0.1}  # arith_prime's arith knobs do not follow to another task
    with pytest.raises(ConfigError, match="unknown config key train.stpes"):
        sirl.make_config(train={"stpes": 5})
    with pytest.raises(ConfigError, match="train.lr=2.0 is out of range"):
        sirl.make_config(train={"lr": 2.0})


def test_run_eval_gives_what_sirl_eval_prints(capsys):
    config = sirl.make_config("arith_prime", eval={"n_problems": 8, "max_new_tokens": 40})
    result = sirl.run_eval(config)
    assert main(["eval", "--config", "arith_prime", "--eval.n_problems=8", "--eval.max_new_tokens=40", "--json", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (result.n, result.accuracy, result.rewards) == (printed["n"], printed["accuracy"], printed["rewards"])
    with pytest.raises(ConfigError, match="run_eval needs a model"):
        sirl.run_eval(sirl.make_config(task={"name": "arith"}))


def test_the_example_trains_the_tiny_policy_on_records_with_a_trl_reward(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    overrides = ["train.steps=2", "train.eval_every=0", "eval.n_problems=8", "rollout.prompts_per_step=2", "rollout.group_size=4",
                 "verifier.workers=1", "train.report_to=[]"]
    monkeypatch.setattr(sys, "argv", ["train_records.py", "--out", str(out), *overrides])
    runpy.run_path(str(PROJECT_ROOT / "examples" / "train_records.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "final held-out accuracy" in printed and "n=8" in printed
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]
    config = json.loads(json.dumps(load_config(str(out / "config.yaml")).task.args))
    assert config["reward"].endswith("examples/rewards.py:correct") and config["step_splitter"] == "regex:;"
    before = load_file(str(PROJECT_ROOT / "checkpoints" / "arith7-tiny" / "model.safetensors"))
    after = load_file(str(out / "checkpoints" / "final" / "model.safetensors"))
    assert any(not torch.equal(before[name], after[name]) for name in before)  # the policy was trained
