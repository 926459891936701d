"""The comparison plans prepared for a GPU run, run on the CPU at a tiny size: the plan's settings reach
every run, both methods finish and the folder holds a paired table. (The GPU run itself needs a GPU.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bpe_helpers import bpe_tokenizer, tiny_llama

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("plan", ["compare_smollm2_gpu.yaml", "compare_smollm2_cpu.yaml"])
def test_smollm2_plan_runs_on_the_cpu_at_a_tiny_size(tmp_path, plan):
    """The SmolLM2 plans (one GPU; this CPU) with a tiny chat Llama in place of SmolLM2, on the CPU, one seed
    of a few hundred tokens: chat format with 3 worked examples on 1-2 operations, si with the divergence
    localizer, and grpo, in one folder."""
    model_dir = tmp_path / "model"
    tokenizer = bpe_tokenizer()
    tiny_llama(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "cmp"
    command = [
        sys.executable, "-m", "sirl.cli", "compare", "--plan", str(ROOT / "benchmarks" / plan), "--task", "arith",
        "--out", str(out), "--seeds", "1", "--jobs", "2", "--budget-tokens", "200", "--eval-every-tokens", "200", "--final-problems", "8",
        f"--model.path={model_dir}", "--model.device=cpu", "--model.dtype=float32", "--rollout.prompts_per_step=2", "--rollout.group_size=4",
        "--rollout.max_new_tokens=12", "--eval.max_new_tokens=12",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"grpo", "si"}
    for method in ("grpo", "si"):
        config = yaml.safe_load((out / "runs" / method / "seed0" / "config.yaml").read_text())
        assert config["prompt"]["format"] == "chat" and config["prompt"]["few_shot"] == 3
        assert (config["task"]["args"]["min_ops"], config["task"]["args"]["max_ops"]) == (1, 2)
        assert config["train"]["lr"] == 2e-5 and config["model"]["device"] == "cpu"
        assert config["method"]["si"]["localizer"] == "divergence"
    assert results["methods"]["si"]["difference_from_reference"]["seeds"] == [0]  # paired with grpo on the same problems
