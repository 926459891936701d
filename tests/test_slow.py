"""The long end-to-end checks (``make test-slow``, ``pytest -m slow``): the README's main job and the
method, from the shipped policy, each asked to improve held-out accuracy by a margin it clears."""

import json

import pytest

from sirl.config import load_config
from sirl.train import run_train

pytestmark = pytest.mark.slow


def improvement(run_dir) -> tuple[float, float]:
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["eval/accuracy"]
    return first, json.loads((run_dir / "eval.json").read_text())["accuracy"]


DEMO_STEPS = 20
"""About the steps `make demo` reaches in its 4 minutes (``train.max_minutes`` of the demo preset) on 2
idle cores: 3 steps took 57 CPU-seconds, about 19 a step, so about 12 s a step on two threads. The test
runs this many steps and reads no clock, so what it asserts does not depend on the machine's speed."""


def test_the_demo_preset_improves_held_out_accuracy(tmp_path, one_thread):
    """`make demo` as the README runs it (the demo preset: si on arith from the shipped policy), for a fixed
    number of steps instead of its 4 minutes, on one thread (the same run on every CPU)."""
    config = load_config("demo", ["model.device=cpu", "train.max_minutes=null", f"train.steps={DEMO_STEPS}"])
    run_train(config, tmp_path / "run", quiet=True)
    first, last = improvement(tmp_path / "run")
    assert last - first >= 0.08, (first, last)
    assert (tmp_path / "run" / "report.html").is_file()


@pytest.mark.parametrize("algo", ["si", "si_internal", "random_reset"])
def test_each_step_credit_method_improves_from_the_shipped_policy(tmp_path, algo, one_thread):
    """40 steps at lr 2e-4 from the shipped arith policy, 300 held-out problems, one thread."""
    config = load_config("arith", [
        "model.device=cpu", f"algo.name={algo}", "seed=0", "train.steps=40", "train.lr=2e-4", "train.warmup_steps=0",
        "train.eval_every=0", "train.checkpoint_every=0", "eval.n_problems=300",
    ])
    run_train(config, tmp_path / "run", quiet=True)
    first, last = improvement(tmp_path / "run")
    assert last - first >= 0.06, (first, last)
