"""prime (PRIME, arXiv 2502.01456): its math against hand-derived numbers and a loop twin, its credit on a
small batch, a short run from the shipped mod-7 policy, and a resumed run that equals an uninterrupted one."""

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import sirl.train
from sirl.config import ConfigError, ExperimentConfig, ModelConfig, RolloutConfig, TrainConfig, load_config
from sirl.distributed import Distributed
from sirl.internalize.selfverify import AuditSchedule
from sirl.methods import MethodContext, MethodMemory, get_method
from sirl.methods.settings import PrimeSettings
from sirl.methods.prime import (
    PrimeState, accuracy_filter, implicit_process_rewards, make_prime_state, prime_advantages, prime_advantages_naive,
    prm_cross_entropy, whiten,
)
from sirl.model import policy_from_config, token_logprobs
from sirl.batch import pack
from sirl.tasks import load_task
from sirl.train import run_train
from sirl.types import Problem, Trajectory

TIME_KEYS = ("time/", "tokens_per_s")


# --- the math by hand --------------------------------------------------------------------------------


def test_implicit_process_rewards_by_hand():
    # beta * (log pi_phi - log pi_ref) on trained tokens: 0.1 * (-1.0 + 1.5) = 0.05, 0.1 * (-2.0 + 1.0) = -0.1,
    # and the untrained third position 0 whatever its log-probs
    prm = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -3.0]])
    rewards = implicit_process_rewards(prm, ref, torch.tensor([[1.0, 1.0, 0.0]]), beta=0.1)
    assert rewards[0].tolist() == pytest.approx([0.05, -0.1, 0.0])


def test_the_prm_cross_entropy_by_hand():
    # a summed log-ratio of 20 at beta = 0.05 is the logit 1: -log sigmoid(1) = log(1 + e^-1) = 0.313262 for a
    # verified sample, -log(1 - sigmoid(1)) = log(1 + e) = 1.313262 for a failure; logit 0 (the PRM equal to its
    # reference, as at the start) costs log 2 either way
    loss = prm_cross_entropy(torch.tensor([20.0, 20.0, 0.0, 0.0]), torch.tensor([1.0, 0.0, 1.0, 0.0]), beta=0.05)
    assert loss.tolist() == pytest.approx([0.313262, 1.313262, 0.693147, 0.693147], abs=1e-6)
    # its gradient in the log-ratio sum is beta * (sigmoid(logit) - r_o): it raises r_phi(y) of a success
    ratio = torch.tensor([0.0, 0.0], requires_grad=True)
    prm_cross_entropy(ratio, torch.tensor([1.0, 0.0]), beta=0.05).sum().backward()
    assert ratio.grad.tolist() == pytest.approx([0.05 * (0.5 - 1), 0.05 * 0.5])


# Two groups. Group 0 (K = 3): a, b, c; c's first token is a given prefix (context: no reward, no credit).
# Group 1 (K = 2): d, e, both failures.
PROCESS = [[0.1, 0.2, 0.3], [0.0, -0.3], [0.4, 0.0, 0.2, -0.2], [0.5], [-0.5, 0.5]]
TRAINED_FROM = [0, 0, 1, 0, 0]
OUTCOME = [1.0, 0.0, 1.0, 0.0, 0.0]
GROUP = [0, 0, 0, 1, 1]


def padded(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    values = torch.zeros(len(rows), width, dtype=torch.float64)
    mask = torch.zeros(len(rows), width, dtype=torch.float64)
    for i, (row, start) in enumerate(zip(rows, TRAINED_FROM)):
        values[i, start : len(row)] = torch.tensor(row[start:], dtype=torch.float64)
        mask[i, start : len(row)] = 1
    return values, mask


def test_the_advantage_by_hand():
    # Mean process reward of each row's trained tokens: a 0.2, b -0.15, c (0.0 + 0.2 - 0.2) / 3 = 0, d 0.5, e 0.
    # Leave-one-out baselines: a (-0.15 + 0) / 2 = -0.075, b (0.2 + 0) / 2 = 0.1, c (0.2 - 0.15) / 2 = 0.025,
    # d 0 (e's mean), e 0.5 (d's mean). RLOO on the outcome: a 1 - (0 + 1) / 2 = 0.5, b 0 - 1 = -1,
    # c 1 - 1/2 = 0.5, d and e 0. With gamma = 1 the process part is the sum of (r - b) from t to the end:
    #   a: r - b = 0.175, 0.275, 0.375 -> returns 0.825, 0.65, 0.375 -> A 1.325, 1.15, 0.875
    #   b: -0.1, -0.4 -> -0.5, -0.4 -> A -1.5, -1.4
    #   c: prefix, -0.025, 0.175, -0.225 -> 0, -0.075, -0.05, -0.225 -> A 0, 0.425, 0.45, 0.275
    #   d: 0.5 -> A 0.5;  e: -1.0, 0.0 -> A -1.0, 0.0
    values, mask = padded(PROCESS)
    process, adv = prime_advantages(values, mask, torch.tensor(OUTCOME), torch.tensor(GROUP), gamma=1.0)
    expected = [[1.325, 1.15, 0.875, 0], [-1.5, -1.4, 0, 0], [0, 0.425, 0.45, 0.275], [0.5, 0, 0, 0], [-1.0, 0.0, 0, 0]]
    assert adv.tolist() == [pytest.approx(row, abs=1e-12) for row in expected]
    assert process[0].tolist() == pytest.approx([0.825, 0.65, 0.375, 0])
    # gamma = 0.5 on a: 0.375; 0.275 + 0.5 * 0.375 = 0.4625; 0.175 + 0.5 * 0.4625 = 0.40625 -> A + 0.5
    _, discounted = prime_advantages(values, mask, torch.tensor(OUTCOME), torch.tensor(GROUP), gamma=0.5)
    assert discounted[0, :3].tolist() == pytest.approx([0.90625, 0.9625, 0.875])


def test_the_advantage_equals_its_loop_twin():
    rng = random.Random(0)
    for _ in range(20):
        groups = [g for g in range(rng.randint(1, 4)) for _ in range(rng.randint(1, 5))]
        rows = [[rng.uniform(-1, 1) for _ in range(rng.randint(1, 7))] for _ in groups]
        starts = [rng.randint(0, len(r) - 1) if rng.random() < 0.3 else 0 for r in rows]
        outcome = [float(rng.random() < 0.5) for _ in groups]
        gamma = rng.choice([1.0, 0.9, 0.0])
        width = max(len(r) for r in rows)
        values = torch.zeros(len(rows), width, dtype=torch.float64)
        mask = torch.zeros(len(rows), width, dtype=torch.float64)
        for i, (row, start) in enumerate(zip(rows, starts)):
            values[i, : len(row)] = torch.tensor(row, dtype=torch.float64) * (torch.arange(len(row)) >= start)
            mask[i, start : len(row)] = 1
        _, adv = prime_advantages(values, mask, torch.tensor(outcome), torch.tensor(groups), gamma)
        naive = prime_advantages_naive([[v if t >= s else 0.0 for t, v in enumerate(r)] for r, s in zip(rows, starts)], starts, outcome, groups, gamma)
        for i, row in enumerate(naive):
            assert adv[i, : len(row)].tolist() == pytest.approx(row, abs=1e-12)
            assert adv[i, len(row):].abs().sum() == 0


def test_whitening_by_hand():
    # 1, 2, 3, 4: mean 2.5, unbiased variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3, std 1.290994;
    # the masked-out 100 changes nothing and stays 0
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    out = whiten(values, mask)
    std = (5 / 3) ** 0.5
    assert out.tolist() == [pytest.approx([-1.5 / std, -0.5 / std, 0.0]), pytest.approx([0.5 / std, 1.5 / std, 0.0])]
    # two processes with one row each whiten like one process with both: ``total`` adds the other process's
    # share of each sum (its count and sum, then its squares about the global mean)
    def total_with(other_values, other_mask):
        seen = {}

        def total(numbers):
            if not seen:
                seen["mean"] = (numbers[1] + float((other_values * other_mask).sum())) / (numbers[0] + float(other_mask.sum()))
                return [numbers[0] + float(other_mask.sum()), numbers[1] + float((other_values * other_mask).sum())]
            return [numbers[0] + float((((other_values - seen["mean"]) * other_mask) ** 2).sum())]

        return total

    first = whiten(values[:1], mask[:1], total_with(values[1:], mask[1:]))
    second = whiten(values[1:], mask[1:], total_with(values[:1], mask[:1]))
    assert torch.allclose(torch.cat([first, second]), out, atol=1e-12)


def test_the_accuracy_filter_by_hand():
    # groups of 4: mean 0.25 kept (>= 0.2), all verified or none dropped, 0.75 kept; a group of five with one
    # success (mean 0.2, on the bound) kept; a group with a NaN reward kept (the guards must see it)
    rewards = [1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0, float("nan"), 0]
    groups = [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 5 + [5] * 2
    kept = accuracy_filter(torch.tensor(rewards, dtype=torch.float64), torch.tensor(groups), 0.2, 0.8)
    assert kept.tolist() == [True] * 4 + [False] * 8 + [True] * 4 + [True] * 5 + [True] * 2
    assert accuracy_filter(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0, 0, 1]), 0.0, 1.0).all()


def test_prime_refuses_groups_of_one_and_an_empty_filter():
    task = load_task("arith")
    check = get_method("prime").check
    with pytest.raises(ConfigError, match="group_size >= 2"):
        check(ExperimentConfig(rollout=RolloutConfig(group_size=1)), task)
    config = ExperimentConfig()
    config.method.prime.accuracy_low = 0.9
    with pytest.raises(ConfigError, match="accuracy_low=0.9 is above method.prime.accuracy_high=0.8"):
        check(config, task)


# --- the credit on a small batch ------------------------------------------------------------------


def nano_prime(lr: float = 1e-2):
    """A random nano policy (arith's alphabet), its PRIME state, and prime's settings."""
    task = load_task("arith")
    settings = PrimeSettings(lr=lr)
    model, tokenizer = policy_from_config(ModelConfig(size="nano", device="cpu"), task.alphabet(), 0)
    return task, settings, tokenizer, make_prime_state(settings, TrainConfig(), model, Distributed())


def rollout(tokenizer, prompt: str, response: str, reward: float, group: int, prefix_len: int = 0) -> Trajectory:
    prompt_ids, response_ids = tokenizer.encode(prompt), tokenizer.encode(response)
    return Trajectory(Problem(prompt, "0"), prompt_ids, response_ids, [0.0] * len(response_ids), response, reward, False, group,
                      [(0, len(response_ids))], prefix_len)


def prime_step(task, settings, tokenizer, state, rollouts, step=1):
    context = MethodContext(task, settings, "grpo", SimpleNamespace(tokenizer=tokenizer), random.Random(0),
                            MethodMemory(8, 8, AuditSchedule(1, 1, 4)), step, state)
    return get_method("prime").credit(rollouts, context)


def test_the_credit_of_a_small_batch_follows_the_paper_step_by_step():
    task, config, tokenizer, state = nano_prime()
    batch = [
        rollout(tokenizer, "1+2=", "3", 1.0, 0), rollout(tokenizer, "1+2=", "45", 0.0, 0),
        rollout(tokenizer, "1+2=", "4", 0.0, 0), rollout(tokenizer, "1+2=", "03", 1.0, 0, prefix_len=1),
        rollout(tokenizer, "2*3=", "6", 1.0, 1), rollout(tokenizer, "2*3=", "6", 1.0, 1),  # all verified: filtered out
        rollout(tokenizer, "2*3=", "6", 1.0, 1), rollout(tokenizer, "2*3=", "6", 1.0, 1),
    ]
    kept = batch[:4]
    start = {n: p.detach().clone() for n, p in state.prm.named_parameters()}

    # Step 1: the PRM is its reference, so every process reward is 0 and the advantage is RLOO on the outcome
    # (1 - 1/3 = 2/3 for a success, 0 - 2/3 for a failure) on the trained tokens (the given "0" of the last row
    # gets nothing), whitened over them: 5 tokens, mean (2/3)(1 - 2 - 1 + 1)/5 = -2/15.
    first = prime_step(task, config, tokenizer, state, batch)
    assert first.rows == tuple(kept) and first.metrics["prime/kept_frac"] == 0.5
    assert first.metrics["prime/process_adv_abs"] == 0 and first.metrics["prime/prm_loss"] == pytest.approx(0.693147, abs=1e-6)
    raw = torch.tensor([[2 / 3, 0], [-2 / 3, -2 / 3], [-2 / 3, 0], [0, 2 / 3]], dtype=torch.float64)
    mask = torch.tensor([[1, 0], [1, 1], [1, 0], [0, 1]], dtype=torch.float64)
    mean = -2 / 15
    std = (sum(((v - mean) ** 2) for v, m in zip(raw.flatten().tolist(), mask.flatten().tolist()) if m) / 4) ** 0.5
    for adv, row, m in zip(first.token_advantages, raw, mask):
        expected = [((v - mean) / std if keep else 0.0) for v, keep in zip(row.tolist(), m.tolist())][: len(adv)]
        assert adv.tolist() == pytest.approx(expected, abs=1e-5)
    # the PRM took its step (the policy did not: it is not the method's to train), and its forward and backward
    # pass over the four kept rows counts: 4 prompt tokens and their responses each
    assert any(not torch.equal(start[n], p) for n, p in state.prm.named_parameters())
    assert all(torch.equal(start[n], p) for n, p in state.reference.named_parameters())
    assert first.trained_tokens == sum(len(t.prompt_ids) + len(t.response_ids) for t in kept) == 4 * 4 + 6
    assert first.metrics["memory/method_state_mb"] > 0

    # Step 2: the process rewards are the updated PRM's log-ratios to the reference on each response token,
    # before its second step, and the advantage is the paper's estimate of them, whitened.
    packed = pack([t.prompt_ids for t in kept], [t.response_ids for t in kept], [t.prefix_len for t in kept], tokenizer.pad_token_id)
    with torch.no_grad():
        ratio_BT = token_logprobs(state.prm, packed.input_ids_BT, packed.attention_BT)[0] - token_logprobs(
            state.reference, packed.input_ids_BT, packed.attention_BT)[0]
    process = torch.zeros(4, 2, dtype=torch.float64)
    for i, t in enumerate(kept):
        P = len(t.prompt_ids)
        for k in range(t.prefix_len, len(t.response_ids)):
            process[i, k] = 0.05 * ratio_BT[i, P - 1 + k].item()  # position P-1+k scores response token k
    _, adv = prime_advantages(process, mask, torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 0, 0]), 1.0)
    expected = whiten(adv, mask)
    second = prime_step(task, config, tokenizer, state, batch, step=2)
    assert second.metrics["prime/process_adv_abs"] > 0
    for got, want, t in zip(second.token_advantages, expected, kept):
        assert got.tolist() == pytest.approx(want[: len(t.response_ids)].tolist(), abs=1e-5)


def test_without_whitening_the_advantage_keeps_the_estimates_scale():
    task, _, tokenizer, state = nano_prime()
    config = PrimeSettings(lr=1e-2, whiten=False)
    batch = [rollout(tokenizer, "1+2=", "3", 1.0, 0), rollout(tokenizer, "1+2=", "4", 0.0, 0)]
    credit = prime_step(task, config, tokenizer, state, batch)
    # RLOO with K = 2: +1 and -1 (no process reward yet)
    assert [a.tolist() for a in credit.token_advantages] == [[1.0], [-1.0]]


# --- end to end --------------------------------------------------------------------------------------


def arith7_config(*extra: str):
    """The shipped mod-7 policy (checkpoints/arith7-tiny) on its task, tiny steps."""
    return load_config("arith_prime", [
        "model.device=cpu", "algo.name=prime", "train.eval_every=0", "rollout.prompts_per_step=3", "rollout.group_size=4",
        "rollout.max_new_tokens=64", "eval.n_problems=8", "eval.max_new_tokens=64", *extra,
    ])


def records(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIME_KEYS)} for r in rows]


def test_three_steps_from_the_shipped_mod7_policy_train_the_prm_and_count_its_tokens(tmp_path, monkeypatch):
    import dataclasses

    from sirl.methods import METHODS

    credits = []
    method = METHODS["prime"]

    def recording(rollouts, context):
        credits.append(method.credit(rollouts, context))
        return credits[-1]

    monkeypatch.setitem(METHODS, "prime", dataclasses.replace(method, credit=recording))
    run = tmp_path / "run"
    run_train(arith7_config("train.steps=3", "train.checkpoint_every=0"), run, quiet=True)
    rows = records(run)[1:]
    assert len(rows) == 3 and all(r["loss/policy"] == r["loss/policy"] and abs(r["loss/policy"]) < 1e3 for r in rows)
    assert all(0 < r["prime/prm_loss"] < 5 and r["prime/prm_skipped"] == 0 for r in rows)
    # trained tokens: the policy's rows (one epoch) and the PRM's pass over the same kept rows
    trained = [0] + [r["tokens/trained"] for r in rows]
    for step, credit in enumerate(credits):
        rows_tokens = sum(len(t.prompt_ids) + len(t.response_ids) for t in credit.rows)
        assert credit.trained_tokens == rows_tokens and trained[step + 1] - trained[step] == 2 * rows_tokens
    # the PRM moved away from the starting policy, and the checkpoint holds it
    start = load_file("checkpoints/arith7-tiny/model.safetensors")
    saved = load_file(str(run / "checkpoints" / "final" / "trainer_state.safetensors"))
    prm = {k.removeprefix("method/prm/"): v for k, v in saved.items() if k.startswith("method/prm/")}
    assert prm.keys() == {k for k in start if k in prm} and len(prm) >= len(start) - 1  # tied embeddings are stored once
    assert any(not torch.equal(prm[k], start[k]) for k in prm)
    assert any(k.startswith("method/optimizer/") for k in saved)


def test_a_killed_and_resumed_prime_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    config = arith7_config("train.steps=6", "train.checkpoint_every=2")
    run_train(config, tmp_path / "whole", quiet=True)
    real, calls = sirl.train.sample_trajectories, {"n": 0}

    class Killed(Exception):
        pass

    def sample(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # the rollout of step 5, after the step-4 checkpoint
            raise Killed
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(sirl.train, "sample_trajectories", sample)
        with pytest.raises(Killed):
            run_train(config, tmp_path / "resumed", quiet=True)
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text().strip() == "step_4"
    run_train(config, tmp_path / "resumed", quiet=True, resume=True)
    assert records(tmp_path / "resumed") == records(tmp_path / "whole")
    for name in ("model.safetensors", "trainer_state.safetensors"):  # the policy, its optimizer, the PRM and its optimizer
        a = load_file(str(tmp_path / "whole" / "checkpoints" / "final" / name))
        b = load_file(str(tmp_path / "resumed" / "checkpoints" / "final" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
