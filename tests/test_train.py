"""The training loop's pieces: batch packing, the update, and short end-to-end runs."""

import copy
import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

from sirl.batch import PolicyBatch, collate_rollouts
from sirl.config import AlgoConfig, ConfigError, load_config
from sirl.distributed import Distributed
from sirl.evaluate import wilson_interval
from sirl.model import token_logprobs
from sirl.train import run_train
from sirl.types import Problem, Trajectory
from sirl.update import UpdateStats, policy_update


def trajectory(prompt_ids, response_ids, group=0, reward=0.0):
    return Trajectory(
        problem=Problem("p", "a", {}), prompt_ids=prompt_ids, response_ids=response_ids,
        logprobs=[-0.5] * len(response_ids), text="", reward=reward, truncated=False, group=group,
        step_spans=[(0, len(response_ids))],
    )


def test_collate_aligns_response_tokens_with_their_logprob_positions(nano_llama):
    trajectories = [trajectory([5, 6, 7], [8, 9, 1]), trajectory([5], [10, 1])]
    batch = collate_rollouts(trajectories, [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0])], pad_id=0)
    assert batch.tokens.input_ids_BT.tolist() == [[5, 6, 7, 8, 9, 1], [5, 10, 1, 0, 0, 0]]
    # position t scores token t+1: row 0's response tokens 8, 9, 1 sit at input positions 3, 4, 5
    assert batch.tokens.target_mask_BT.tolist() == [[0, 0, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch.adv_BT.tolist() == [[0, 0, 1, 2, 3], [4, 5, 0, 0, 0]]
    logp, _ = token_logprobs(nano_llama, batch.tokens.input_ids_BT, batch.tokens.attention_BT)
    scored = logp[0][batch.tokens.target_mask_BT[0].bool()]
    direct = torch.log_softmax(nano_llama(torch.tensor([[5, 6, 7, 8, 9, 1]])).logits[0, 2:5], -1)
    assert torch.allclose(scored, direct.gather(-1, torch.tensor([[8], [9], [1]])).squeeze(-1), atol=1e-5)


def make_batch(nano_llama, advantages):
    trajectories = [trajectory([5, 6], [7 + 3 * i, 8 + 3 * i, 9 + 3 * i]) for i in range(len(advantages))]
    batch = collate_rollouts(trajectories, [torch.full((3,), a) for a in advantages], pad_id=0)
    with torch.no_grad():  # on-policy: old log-probs are the current ones
        logp, _ = token_logprobs(nano_llama, batch.tokens.input_ids_BT, batch.tokens.attention_BT)
    return PolicyBatch(batch.tokens, logp * batch.tokens.target_mask_BT, batch.adv_BT, batch.reference_B)


def run_update(model, batch, micro_batch_size, lr=1e-2, algo=None):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    stats = policy_update(
        model, optimizer, batch, algo or AlgoConfig(), norm_length=3, micro_batch_size=micro_batch_size,
        grad_clip=1e9, generator=torch.Generator().manual_seed(0), dist=Distributed(),
    )
    return stats


def test_micro_batches_give_the_same_update_as_one_batch(nano_llama):
    batch = make_batch(nano_llama, [1.0, -0.5, 0.25, -1.0, 0.0])
    whole, split = copy.deepcopy(nano_llama), copy.deepcopy(nano_llama)
    run_update(whole, batch, micro_batch_size=5)
    run_update(split, batch, micro_batch_size=2)
    for a, b in zip(whole.parameters(), split.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_zero_advantages_leave_the_policy_unchanged_and_the_loss_finite(nano_llama):
    model = copy.deepcopy(nano_llama)
    stats = run_update(model, make_batch(model, [0.0, 0.0, 0.0]), micro_batch_size=8)
    assert all(math.isfinite(v) for v in stats.to_metrics().values())
    assert stats.grad_norm == 0.0 and not stats.skipped
    for a, b in zip(model.parameters(), nano_llama.parameters()):
        assert torch.equal(a, b)


def test_a_positive_advantage_raises_the_sampled_tokens_logprob(nano_llama):
    model = copy.deepcopy(nano_llama)
    batch = make_batch(model, [1.0, -1.0])
    before, _ = token_logprobs(model, batch.tokens.input_ids_BT, batch.tokens.attention_BT)
    run_update(model, batch, micro_batch_size=8, lr=0.05)
    after, _ = token_logprobs(model, batch.tokens.input_ids_BT, batch.tokens.attention_BT)
    mask = batch.tokens.target_mask_BT.bool()
    assert after[0][mask[0]].sum() > before[0][mask[0]].sum()
    assert after[1][mask[1]].sum() < before[1][mask[1]].sum()


def tiny_config(tmp_path, *extra):
    return load_config("arith", [
        "model.path=null", "model.size=nano", "model.device=cpu", "train.steps=3", "train.eval_every=2",
        "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=40",
        "eval.n_problems=8", "eval.max_new_tokens=40", *extra,
    ])


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "rloo", "tree", "tree_branch"])
def test_a_short_run_writes_the_run_folder(tmp_path, capsys, algo):
    config = tiny_config(tmp_path, f"algo.name={algo}", "algo.kl_coef=0.1", "algo.minibatches=2")
    run_train(config, tmp_path / "run", quiet=True)
    printed = capsys.readouterr().out.splitlines()  # --quiet: the result line, nothing else
    assert len(printed) == 1 and printed[0].startswith("held-out accuracy ") and "after 3 steps" in printed[0]
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert "eval/accuracy" in records[0] and "eval/accuracy" in records[2] and "eval/accuracy" in records[3]
    for key in ["time/elapsed_s", "tokens/total", "tokens/policy", "tokens/probe", "tokens/verify", "reward/mean",
                "loss/policy", "loss/kl", "entropy", "grad_norm", "adv/zero_std_frac", "rollout/truncated_frac"]:
        assert key in records[1], key
    assert records[3]["tokens/total"] > records[1]["tokens/total"] > 0
    assert (run / "config.yaml").is_file() and (run / "eval.json").is_file() and (run / "samples.jsonl").is_file()
    # evals.jsonl: every evaluation of metrics.jsonl, with the reward of each held-out problem behind its accuracy
    evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [r["step"] for r in records if "eval/accuracy" in r]
    for e in evals:
        accuracy = next(r["eval/accuracy"] for r in records if r["step"] == e["step"])
        assert len(e["rewards"]) == config.eval.n_problems and sum(e["rewards"]) / len(e["rewards"]) == pytest.approx(accuracy)
        assert e["tokens/total"] == next(r["tokens/total"] for r in records if r["step"] == e["step"])
    assert (run / "checkpoints" / "final" / "model.safetensors").is_file()
    assert list((run / "tb").glob("events.out.tfevents.*"))


def test_runs_are_deterministic_for_a_seed(tmp_path):
    config = tiny_config(tmp_path, "train.steps=2")
    run_train(config, tmp_path / "a", quiet=True)
    run_train(config, tmp_path / "b", quiet=True)

    def strip_times(path):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("time") and k != "tokens_per_s"} for r in rows]

    assert strip_times(tmp_path / "a" / "metrics.jsonl") == strip_times(tmp_path / "b" / "metrics.jsonl")


def test_token_budget_stops_the_run(tmp_path):
    config = tiny_config(tmp_path, "train.steps=50", "train.max_tokens=500")
    run_train(config, tmp_path / "run", quiet=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["tokens/total"] >= 500 and records[-2]["tokens/total"] < 500


def shipped_config(*extra):
    return load_config("arith", [
        "model.device=cpu", "train.steps=2", "train.eval_every=2", "rollout.prompts_per_step=6",
        "rollout.group_size=4", "eval.n_problems=8", "method.repair_share=0.5", *extra,
    ])


@pytest.mark.parametrize("algo", ["si", "si_internal", "random_reset", "vine", "tree_branch"])
def test_method_runs_log_their_metrics_and_count_probe_tokens(tmp_path, algo):
    search = ["method.si.localizer=search"] if algo == "si" else []  # si's default localizer draws no probe
    run_train(shipped_config(f"algo.name={algo}", *search), tmp_path / "run", quiet=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in records[1:]:
        assert r["tokens/total"] == r["tokens/policy"] + r["tokens/probe"] + r["tokens/verify"]
        assert (r["tokens/verify"] > 0) == (algo == "si_internal")
    assert max(r["loc/probes_per_trajectory" if algo == "vine" else "loc/probes_per_failure"] for r in records[1:]) > 0
    assert records[-1]["tokens/probe"] > 0
    if algo != "vine":
        for key in ["loc/localized_frac", "loc/unlocalizable_frac", "repair/added", "repair/buffer_draws"]:
            assert key in records[-1], key
        assert ("loc/accuracy" in records[-1]) == (algo != "random_reset")  # the others localize
        # the second step continues good prefixes found in the first
        assert records[2]["repair/buffer_draws"] > 0
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(len(s["tokens"]) == len(s["token_advantages"]) for s in samples)
    # given-prefix tokens are context: no advantage is shown on them, every trained token has one
    assert all((a is None) == (k < s["prefix_len"]) for s in samples for k, a in enumerate(s["token_advantages"]))
    if algo in ("si", "si_internal", "tree_branch"):  # the methods that localize
        assert any("localized_step" in s for s in samples)
    if algo == "si_internal":
        for key in ["selfloc/audit_frac", "selfloc/confirmed_frac", "selfloc/accuracy", "loss/verify"]:
            assert key in records[-1], key
        assert records[-1]["tokens/verify"] > 0
        assert any("self_verdict" in s for s in samples)


@pytest.mark.parametrize("algo", ["si_internal", "random_reset"])
def test_blind_resets_in_a_run_happen_are_counted_and_spend_the_budget(tmp_path, monkeypatch, algo):
    """One step of the verdict-trained policy on 12-operation chains, with and without blind resets, from the
    same seed: the rollouts and the outcome-based localization are the same, so what the resets add to the
    generated-token counts is exactly the tokens their continuations (and, for si_internal, their verdicts)
    generated."""
    import sirl.methods.common
    import sirl.methods.random_reset
    import sirl.methods.si_internal

    module = sirl.methods.si_internal if algo == "si_internal" else sirl.methods.random_reset
    branches = []

    def recording(*args, **kwargs):
        out = sirl.methods.common.blind_resets(*args, **kwargs)
        branches.extend(out.rows)
        return out

    monkeypatch.setattr(module, "blind_resets", recording)
    runs = {}
    for resets in (0, 8):
        config = load_config("arith_prime_hard", [
            "model.device=cpu", f"algo.name={algo}", "task.args.min_ops=12", "train.steps=1", "train.eval_every=0",
            "train.checkpoint_every=0", "rollout.prompts_per_step=16", "rollout.group_size=4", "eval.n_problems=4",
            f"method.blind_resets={resets}", "method.branch_samples=2", "method.repair_share=0",
        ])
        run_train(config, tmp_path / str(resets), quiet=True)
        runs[resets] = [json.loads(line) for line in (tmp_path / str(resets) / "metrics.jsonl").read_text().splitlines()][-1]
    plain, reset = runs[0], runs[8]
    assert reset["reset/blind_groups"] >= 1 and reset["reset/resets"] >= 1 and "reset/resets" not in plain  # they happened
    assert len(branches) == 2 * reset["reset/resets"]  # K = 2 continuations each
    assert reset["tokens/policy"] == plain["tokens/policy"]  # the same rollouts
    added = sum(len(b.response_ids) - b.prefix_len for b in branches)
    assert added > 0 and reset["tokens/probe"] - plain["tokens/probe"] == added
    assert reset["tokens/total"] == reset["tokens/policy"] + reset["tokens/probe"] + reset["tokens/verify"]
    if algo == "si_internal":  # the policy's own verdicts on the blind failures are budget too
        assert reset["tokens/verify"] > plain["tokens/verify"]


@pytest.mark.parametrize("algo", ["si_internal", "grpo"])
def test_the_ground_truth_localizer_is_refused_outside_si(tmp_path, algo):
    with pytest.raises(ConfigError, match="method.si.localizer=ground_truth is a diagnostic of algo.name=si only"):
        run_train(tiny_config(tmp_path, f"algo.name={algo}", "method.localizer=ground_truth"), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_an_unknown_method_is_refused_with_the_registered_names(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown method algo.name='grpoo'; valid methods: \['dr_grpo', 'grpo', 'prime', 'random_reset', 'rloo', 'si', 'si_internal', 'tree', 'tree_branch', 'vine'\]"):
        run_train(tiny_config(tmp_path, "algo.name=grpoo"), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_data_parallel_processes_share_the_work(tmp_path):
    """torchrun with two CPU processes (gloo): each samples its own prompts, gradients are summed over
    global counts (tests/test_update.py holds that step equal to one process's)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "sirl.cli", "train",
        "--config", "arith", "--out", str(tmp_path / "run"), "--quiet", "--algo", "grpo", "--model.device=cpu",
        "--train.steps=2", "--rollout.prompts_per_step=2", "--rollout.group_size=3", "--eval.n_problems=8",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[1]["rollout/samples"] == 2 * 2 * 3  # both processes' samples are counted


# --- guards: the documented outcome of degenerate batches ---------------------------------------------


def test_an_empty_batch_is_a_no_op_with_zero_losses(nano_llama):
    model = copy.deepcopy(nano_llama)
    batch = collate_rollouts([], [], pad_id=0)
    assert len(batch) == 0
    stats = run_update(model, batch, micro_batch_size=8)
    assert stats == UpdateStats() and stats.to_metrics() == {"loss/policy": 0.0, "loss/kl": 0.0, "entropy": 0.0, "clip_frac": 0.0, "grad_norm": 0.0}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), nano_llama.parameters()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_advantage_skips_the_update_and_leaves_optimizer_and_weights_alone(nano_llama, bad):
    model = copy.deepcopy(nano_llama)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stats = policy_update(
        model, optimizer, make_batch(model, [1.0, bad, -1.0]), AlgoConfig(), norm_length=3, micro_batch_size=8,
        grad_clip=1.0, generator=torch.Generator().manual_seed(0), dist=Distributed(),
    )
    assert stats.skipped
    # the step that was refused reports what it measured, not a calm 0
    assert not math.isfinite(stats.policy_loss) and not math.isfinite(stats.grad_norm)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), nano_llama.parameters()))
    assert not optimizer.state  # AdamW never stepped: no moments, no step count
    assert all(p.grad is None for p in model.parameters())


def test_a_run_where_every_completion_is_truncated_is_finite_and_learns_nothing(tmp_path, monkeypatch):
    """Three new tokens, and every sample marked cut off (as a truncated completion scores, 0): the
    groups carry no signal, the loss is finite and zero, nothing is skipped."""
    import dataclasses

    import sirl.train

    real = sirl.train.verify_trajectories
    monkeypatch.setattr(
        sirl.train, "verify_trajectories",
        lambda *a, **k: [dataclasses.replace(t, truncated=True, reward=0.0) for t in real(*a, **k)],
    )
    run_train(tiny_config(tmp_path, "rollout.max_new_tokens=3", "train.steps=2", "algo.name=grpo"), tmp_path / "run", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][1:]
    for r in rows:
        assert r["rollout/truncated_frac"] == 1.0 and r["reward/mean"] == 0.0 and r["adv/zero_std_frac"] == 1.0
        assert r["loss/policy"] == 0.0 and r["grad_norm"] == 0.0 and r["guard/skipped_steps"] == 0


def test_evaluations_on_a_token_grid_fall_at_the_steps_that_cross_each_multiple(tmp_path):
    config = tiny_config(tmp_path, "train.steps=6", "train.eval_every=0", "train.eval_every_tokens=300")
    run_train(config, tmp_path / "run", quiet=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    totals = [r["tokens/total"] for r in records]
    # naive: a step evaluates when it is the first (step 0), the last, or its tokens pass a multiple of 300
    expected = [i for i in range(len(records)) if i in (0, len(records) - 1) or totals[i] // 300 > totals[i - 1] // 300]
    assert [i for i, r in enumerate(records) if "eval/accuracy" in r] == expected
    assert 2 <= len(expected) < len(records)


def test_grpo_from_the_shipped_policy_improves_held_out_accuracy(tmp_path, one_thread):
    """A real improvement, end to end: 30 grpo steps from the shipped arith policy (fixed seed, one
    thread, so the run is the same on every CPU) lift greedy accuracy on 300 held-out problems from 63.3%
    to 78.0% (measured); the test asks for 8 points, beyond the 95% interval of either figure (±5)."""
    config = load_config("arith", [
        "model.device=cpu", "algo.name=grpo", "seed=0", "train.steps=30", "train.lr=2e-4", "train.warmup_steps=0",
        "train.eval_every=0", "train.checkpoint_every=0", "eval.n_problems=300",
    ])
    final = run_train(config, tmp_path / "run", quiet=True)
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["eval/accuracy"]
    assert final.n == 300 and final.accuracy - first >= 0.08, (first, final.accuracy)


def test_si_with_the_divergence_step_from_the_shipped_mod_7_policy_improves_held_out_accuracy(tmp_path, one_thread):
    """The headline, end to end: si with the divergence localizer, the first differing token as the error
    span and leave-one-out probe baselines (the README's mended si with method.localizer=divergence), 20
    steps from checkpoints/arith7-tiny on arith mod 7 (configs/arith_prime.yaml), fixed seed, one thread
    (about 20 CPU-seconds). Greedy accuracy on 300 held-out problems went from 46.3% (139/300, 95% interval
    40.8%-52.0%) to 93.7% (measured). Seeds 1 and 2 went to 89.3% and 62.3%; at 15 steps seed 2 reached only
    53.7% and at 10 steps 52.7%, inside reach of the starting interval, so 20 steps is the smallest budget
    tried that clears it on all three (at grpo's test rate, 2e-4, seed 2 fell to 21.0% in 10 steps; 1e-4 is the
    preset's). The test asks that the two 95% intervals do not overlap."""
    config = load_config("arith_prime", [
        "model.device=cpu", "algo.name=si", "method.localizer=divergence", "method.error_span=first_difference",
        "method.probe_baseline=leave_out", "seed=0", "train.steps=20", "train.lr=1e-4", "train.warmup_steps=0",
        "train.eval_every=0", "train.checkpoint_every=0", "eval.n_problems=300",
    ])
    final = run_train(config, tmp_path / "run", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first_lo, first_hi = wilson_interval(round(rows[0]["eval/accuracy"] * 300), 300)
    assert final.n == 300 and final.ci95[0] > first_hi, (rows[0]["eval/accuracy"], (first_lo, first_hi), final.accuracy, final.ci95)
    assert rows[-1]["tokens/probe"] == 0 and rows[-1]["loc/localized_frac"] > 0  # the divergence step: no probes


def test_a_method_is_one_registry_entry(tmp_path):
    """A method defined outside sirl (here: GRPO's advantages on successes only) runs through the same loop
    by registering it; its name is then valid, and only then."""
    from sirl.methods.common import outcome_advantages
    from sirl.methods import METHODS, Method, register
    from sirl.types import Credit

    def success_only(rollouts, context):
        adv = outcome_advantages(rollouts, "grpo")
        return Credit(
            rows=tuple(rollouts),
            token_advantages=tuple(torch.full((len(t.response_ids),), float(max(a, 0))) for t, a in zip(rollouts, adv)),
            reference=(True,) * len(rollouts),
        )

    with pytest.raises(ConfigError, match="unknown method algo.name='success_only'"):
        run_train(tiny_config(tmp_path, "algo.name=success_only", "train.steps=1"), tmp_path / "refused", quiet=True)
    register(Method("success_only", "GRPO's positive half", success_only))
    try:
        with pytest.raises(ValueError, match="already registered"):
            register(Method("success_only", "again", success_only))
        run_train(tiny_config(tmp_path, "algo.name=success_only", "train.steps=2"), tmp_path / "run", quiet=True)
    finally:
        METHODS.pop("success_only")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2] and records[-1]["tokens/probe"] == 0
