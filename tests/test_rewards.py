"""Reward functions of the records task: the built-ins against hand-checked cases, TRL and verl functions
called as their trainers call them, weights, and hostile functions isolated by the verifier pool (a hang, a
raise, garbage and a crash each cost their sample only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sirl.tasks.records import RecordsTask
from sirl.tasks.rewards import Builtin, RewardInput, reward_set
from sirl.verifier import TaskSpec, make_verifier


def sample(completion: str, answer: str = "18", **kw) -> RewardInput:
    return RewardInput(prompt="q", completion=completion, answer=answer, **kw)


def test_exact_match_compares_the_extracted_answer():
    exact = Builtin("exact_match")
    assert exact(sample("so\n#### 18")) == 1.0  # GSM8K's rules by default
    assert exact(sample("so\n#### 18.0")) == 0.0  # text, not numbers
    assert exact(sample("no answer here")) == 0.0
    assert Builtin("exact_match", answer_pattern=r"answer: (\w+)")(sample("answer: yes", "yes")) == 1.0
    assert Builtin("exact_match", answer_pattern=r"answer: (\w+)")(sample("answer: no, answer: yes", "yes")) == 1.0  # the last match


def test_numeric_within_tolerance():
    numeric = Builtin("numeric", tolerance=0.01)
    assert numeric(sample("#### $18.00")) == 1.0  # "$18.00" reads as 18
    assert numeric(sample("#### 18.005")) == 1.0  # |18.005 - 18| = 0.005 <= 0.01
    assert numeric(sample("#### 18.02")) == 0.0  # 0.02 > 0.01
    assert numeric(sample("#### 1,000", "1000")) == 1.0
    assert numeric(sample("#### 1/2", "0.5")) == 1.0
    assert numeric(sample("#### eighteen")) == 0.0
    assert numeric.check_answer("eighteen") is not None and numeric.check_answer("18") is None


def test_math_verify_reads_equal_expressions():
    math_verify = Builtin("math_verify")
    assert math_verify(sample("The answer is $\\boxed{\\frac{1}{2}}$", "0.5")) == 1.0
    assert math_verify(sample("The answer is $\\boxed{x^2+1}$", "1+x^2")) == 1.0
    assert math_verify(sample("The answer is $\\boxed{3}$", "0.5")) == 0.0


TRL_REWARDS = '''
def correct(completions, answer, **kwargs):
    return [1.0 if c.strip().endswith("#" + a) else 0.0 for c, a in zip(completions, answer)]

def short(completions, **kwargs):
    return [1.0 if len(c) < 10 else None for c in completions]

def seen(prompts, completions, note, **kwargs):
    # a conversational prompt makes the completion a list of messages, as in TRL
    assert prompts[0] == [{"role": "user", "content": "q"}], prompts
    assert completions[0] == [{"role": "assistant", "content": "#18"}], completions
    return [float(note[0])]

def silent(completions, **kwargs):
    return [None for _ in completions]
'''

VERL_REWARD = '''
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return {"score": 2.0 if solution_str.endswith(str(ground_truth)) and data_source == "src" else -1.0}
'''


@pytest.fixture
def reward_files(tmp_path, monkeypatch):
    (tmp_path / "trl_rewards.py").write_text(TRL_REWARDS)
    (tmp_path / "verl_reward.py").write_text(VERL_REWARD)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_trl_functions_with_weights_and_none(reward_files):
    rewards = reward_set(["trl_rewards.py:correct", "trl_rewards.py:short"], [1.0, 0.25])
    # correct and short: 1 * 1 + 0.25 * 1
    assert rewards.score(sample("#18", columns={"answer": "18"})) == 1.25
    # short returns None for a long completion: it adds nothing (TRL's nansum), 1 * 1
    assert rewards.score(sample("a long one, then #18", columns={"answer": "18"})) == 1.0
    conversational = RewardInput(prompt=[{"role": "user", "content": "q"}], completion="#18", answer="18", columns={"note": 0.5})
    assert reward_set("trl_rewards.py:seen").score(conversational) == 0.5
    with pytest.raises(ValueError, match="every reward function .* returned None"):
        reward_set("trl_rewards.py:silent").score(sample("#18"))


def test_a_verl_compute_score(reward_files):
    rewards = reward_set("verl_reward.py:compute_score")
    assert rewards.score(sample("so 18", ground_truth=18, data_source="src")) == 2.0
    assert rewards.score(sample("so 17", ground_truth=18, data_source="src")) == -1.0


def test_what_is_not_a_reward_function_is_refused(reward_files):
    (reward_files / "odd.py").write_text("def two(a, b):\n    return 1\nvalue = 3\n")
    with pytest.raises(ValueError, match=r"takes \(a, b\): give a TRL reward function"):
        reward_set("odd.py:two")
    with pytest.raises(ValueError, match="is a int, not a function"):
        reward_set("odd.py:value")
    with pytest.raises(ValueError, match="must be a built-in .* or an import path"):
        reward_set("exactmatch")
    with pytest.raises(ValueError, match="2 reward_weights for 1 reward functions"):
        reward_set("numeric", [1.0, 2.0])


HOSTILE = '''
import os, time

def hostile(completions, **kwargs):
    text = completions[0]
    if text.endswith("hang"):
        time.sleep(1000)
    if text.endswith("raise"):
        raise RuntimeError("the reward function broke")
    if text.endswith("garbage"):
        return ["1.0"]
    if text.endswith("nan"):
        return [float("nan")]
    if text.endswith("two"):
        return [1.0, 1.0]
    if text.endswith("exit"):
        os._exit(3)
    return [1.0 if text.endswith("#8") else 0.0]
'''


def test_hostile_reward_functions_cost_their_sample_never_the_run(tmp_path):
    (tmp_path / "hostile.py").write_text(HOSTILE)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "9-1=", "answer": "8"}) + "\n")
    args = {"path": str(rows), "reward": f"{tmp_path / 'hostile.py'}:hostile"}
    task = RecordsTask(**args)
    [problem] = task.problems
    completions = ["#8", "hang", "raise", "garbage", "nan", "two", "exit", "#8", "#7"]
    with make_verifier(task, TaskSpec.of("records", args), isolation="auto", workers=1, timeout_s=1.0, memory_mb=1024) as verifier:
        assert verifier.isolation.level == "workers"  # user code never runs in the trainer's process by default
        scores = verifier.score([problem] * len(completions), completions)
        counts = verifier.counts
    assert scores == [1.0, 0, 0, 0, 0, 0, 0, 1.0, 0.0]
    assert (counts.calls, counts.timeouts, counts.errors) == (9, 1, 5)  # the hang timed out; raise, garbage, nan, two, exit failed
    assert not any(math.isnan(s) for s in scores)
