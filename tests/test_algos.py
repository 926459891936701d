"""RL math against hand-derived values (derivations in the comments) and against naive loops."""

import math
import random

import pytest
import torch

from sirl import algos

from sirl.algos import (
    ADVANTAGES,
    LOSS_AGGREGATIONS,
    MAX_LOG_RATIO,
    dr_grpo_advantages,
    grpo_advantages,
    kl_k1,
    kl_k3,
    ppo_clip_loss,
    rloo_advantages,
    seq_mean_token_mean_weights,
    seq_mean_token_sum_norm_weights,
    token_mean_weights,
    zero_std_fraction,
)

REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
GROUPS = torch.tensor([0, 0, 0, 0, 1, 1])


def test_grpo_by_hand():
    # group 0: rewards 1,0,0,0 -> mean 0.25; unbiased var = (0.75^2 + 3 * 0.25^2) / 3 = 0.75/3 = 0.25, std 0.5
    # advantages: 0.75/0.5 = 1.5 and -0.25/0.5 = -0.5. group 1: all equal -> 0.
    adv = grpo_advantages(REWARDS, GROUPS)
    assert torch.allclose(adv, torch.tensor([1.5, -0.5, -0.5, -0.5, 0.0, 0.0]), atol=1e-5)


def test_dr_grpo_by_hand():
    # r - mean: 1 - 0.25 = 0.75, 0 - 0.25 = -0.25; group 1: 1 - 1 = 0
    assert torch.allclose(dr_grpo_advantages(REWARDS, GROUPS), torch.tensor([0.75, -0.25, -0.25, -0.25, 0.0, 0.0]))


def test_rloo_by_hand():
    # r_0 - mean(0,0,0) = 1; r_1 - mean(1,0,0) = -1/3; equals G/(G-1) * (r - mean) = 4/3 * 0.75 = 1
    adv = rloo_advantages(REWARDS, GROUPS)
    assert torch.allclose(adv, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3, 0.0, 0.0]))


def naive_group_advantages(name, rewards, groups):
    out = []
    for i, (r, g) in enumerate(zip(rewards, groups)):
        members = [rewards[j] for j in range(len(rewards)) if groups[j] == g]
        mean = sum(members) / len(members)
        if name == "grpo":
            std = math.sqrt(sum((m - mean) ** 2 for m in members) / (len(members) - 1)) if len(members) > 1 else 0.0
            out.append((r - mean) / (std + 1e-6))
        elif name == "dr_grpo":
            out.append(r - mean)
        else:
            others = [rewards[j] for j in range(len(rewards)) if groups[j] == g and j != i]
            out.append(r - sum(others) / len(others) if others else 0.0)
    return out


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_vectorized_advantages_equal_a_naive_loop(name):
    rng = random.Random(0)
    for _ in range(50):
        n_groups = rng.randint(1, 6)
        groups = sorted(rng.randrange(n_groups) for _ in range(rng.randint(1, 20)))
        groups = [sorted(set(groups)).index(g) for g in groups]  # ids 0..k-1 with no gaps
        rewards = [rng.choice([0.0, 1.0, 0.5, rng.random()]) for _ in groups]
        got = ADVANTAGES[name](torch.tensor(rewards, dtype=torch.float64), torch.tensor(groups))
        assert torch.allclose(got, torch.tensor(naive_group_advantages(name, rewards, groups), dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_equal_rewards_and_singletons_give_zero_advantage(name):
    for rewards, groups in [([1.0, 1.0, 1.0], [0, 0, 0]), ([0.0, 0.0], [0, 0]), ([1.0], [0])]:
        adv = ADVANTAGES[name](torch.tensor(rewards), torch.tensor(groups))
        assert torch.equal(adv, torch.zeros(len(rewards)))


def test_zero_std_fraction():
    assert zero_std_fraction(REWARDS, GROUPS) == 0.5
    assert zero_std_fraction(torch.tensor([]), torch.tensor([], dtype=torch.long)) == 0.0


def test_ppo_clip_by_hand():
    # ratios e^0.5 = 1.6487 and e^-0.5 = 0.6065 with clip_low 0.2, clip_high 0.28:
    # A = +1, ratio 1.6487: max(-1.6487, -1.28) = -1.28 (clipped above)
    # A = -1, ratio 1.6487: max(1.6487, 1.28) = 1.6487 (no clip: the pessimistic branch)
    # A = +1, ratio 0.6065: max(-0.6065, -0.8) = -0.6065 (no clip)
    # A = -1, ratio 0.6065: max(0.6065, 0.8) = 0.8 (clipped below)
    logp = torch.tensor([[0.5, 0.5, -0.5, -0.5]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, clipped = ppo_clip_loss(logp, torch.zeros_like(logp), adv, clip_low=0.2, clip_high=0.28)
    assert torch.allclose(loss, torch.tensor([[-1.28, math.exp(0.5), -math.exp(-0.5), 0.8]]), atol=1e-5)
    assert clipped.tolist() == [[1.0, 0.0, 0.0, 1.0]]


def test_ppo_clip_gradient_on_policy_is_the_policy_gradient():
    # at ratio 1 the gradient of -A * ratio with respect to logp is -A
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = ppo_clip_loss(logp, logp.detach(), torch.tensor([[2.0, -3.0]]), 0.2, 0.2)
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[-2.0, 3.0]]))


def test_ratio_is_bounded_so_the_loss_stays_finite():
    logp = torch.tensor([[0.0, -1e4]])
    old = torch.tensor([[-1e4, 0.0]])
    loss, _ = ppo_clip_loss(logp, old, torch.tensor([[-1.0, 1.0]]), 0.2, 0.2)
    assert torch.isfinite(loss).all()
    assert loss[0, 0] == pytest.approx(math.exp(MAX_LOG_RATIO), rel=1e-5)


def test_kl_estimators_by_hand():
    # logp = log 0.5, ref = log 0.25: k1 = log 2 = 0.6931; r = 0.5, k3 = (0.5 - 1) - log 0.5 = 0.1931
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_k1(logp, ref).item() == pytest.approx(0.693147, abs=1e-5)
    assert kl_k3(logp, ref).item() == pytest.approx(0.193147, abs=1e-5)
    assert kl_k3(ref, ref).item() == 0.0


def test_kl_estimators_are_unbiased_on_a_categorical():
    torch.manual_seed(0)
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    exact = (p * (p / q).log()).sum()
    samples = torch.multinomial(p, 200_000, replacement=True)
    for estimator in (kl_k1, kl_k3):
        assert estimator(p.log()[samples], q.log()[samples]).mean().item() == pytest.approx(exact.item(), abs=0.01)


LOSS = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])


def aggregate(weights_fn, loss, mask, norm_length):
    return (weights_fn(mask, norm_length) * loss).sum()


def test_loss_aggregations_by_hand():
    # token_mean: (1 + 2 + 3 + 4) / 4 tokens = 2.5
    assert aggregate(token_mean_weights, LOSS, MASK, 4).item() == 2.5
    # seq_mean_token_mean: mean(6/3, 4/1) = mean(2, 4) = 3
    assert aggregate(seq_mean_token_mean_weights, LOSS, MASK, 4).item() == 3.0
    # seq_mean_token_sum_norm with norm_length 5: (6 + 4) / (2 * 5) = 1
    assert aggregate(seq_mean_token_sum_norm_weights, LOSS, MASK, 5).item() == 1.0


def naive_aggregate(mode, loss, mask, norm_length):
    rows = [[l for l, m in zip(lr, mr) if m] for lr, mr in zip(loss.tolist(), mask.tolist())]
    if mode == "token_mean":
        tokens = [x for r in rows for x in r]
        return sum(tokens) / max(len(tokens), 1)
    if mode == "seq_mean_token_mean":
        means = [sum(r) / len(r) for r in rows if r]
        return sum(means) / max(len(means), 1)
    return sum(sum(r) for r in rows) / max(len(rows) * norm_length, 1)


@pytest.mark.parametrize("mode", sorted(LOSS_AGGREGATIONS))
def test_aggregations_equal_a_naive_loop_and_split_into_micro_batches(mode):
    torch.manual_seed(0)
    loss = torch.randn(9, 7)
    mask = (torch.rand(9, 7) < 0.6).float()
    mask[3] = 0  # a sequence with no tokens
    weights = LOSS_AGGREGATIONS[mode](mask, 7)
    assert (weights * loss).sum().item() == pytest.approx(naive_aggregate(mode, loss, mask, 7), abs=1e-5)
    # weights of the whole batch, applied micro-batch by micro-batch, add up to the same loss
    parts = sum((weights[i : i + 4] * loss[i : i + 4]).sum() for i in range(0, 9, 4))
    assert parts.item() == pytest.approx((weights * loss).sum().item(), abs=1e-6)


@pytest.mark.parametrize("mode", sorted(LOSS_AGGREGATIONS))
def test_aggregations_of_empty_batches_are_zero(mode):
    for mask in (torch.zeros(0, 3), torch.zeros(2, 3)):
        weights = LOSS_AGGREGATIONS[mode](mask, 4)
        assert torch.isfinite(weights).all() and (weights * torch.ones_like(mask)).sum().item() == 0.0


def test_additive_normalization_keeps_the_original_batch_scale():
    # Two original rows of 2 tokens, one extra row of 3 tokens. Additive token_mean: every token weighs
    # 1 / 4 (the original 4 tokens); diluting: 1 / 7.
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    reference = torch.tensor([True, True, False])
    assert torch.allclose(token_mean_weights(mask, 3, reference), mask / 4)
    assert torch.allclose(token_mean_weights(mask, 3), mask / 7)
    # seq_mean_token_mean: rows are averaged over 2 original sequences instead of 3
    assert torch.allclose(seq_mean_token_mean_weights(mask, 3, reference)[2], torch.full((3,), 1 / 6))
    assert torch.allclose(seq_mean_token_sum_norm_weights(mask, 3, reference), mask / 6)


def test_entropy_by_hand():
    # uniform over 4 tokens: log 4 = 1.3863; a point mass: 0
    log_probs = torch.log(torch.tensor([[[0.25, 0.25, 0.25, 0.25], [1.0, 1e-30, 1e-30, 1e-30]]]))
    from sirl.algos import entropy

    assert torch.allclose(entropy(log_probs), torch.tensor([[math.log(4), 0.0]]), atol=1e-6)


def test_group_std_scales_by_hand():
    # group 0: rewards 1, 0, 0, 0: mean 1/4, unbiased variance (3/16 + 3 * 1/16) / 3 = 1/4, std 1/2 -> scale 2;
    # group 1: all equal (std 0) and group 2: one member: scale 1, as their outcome advantages are 0 anyway
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    scales = algos.group_std_scales(rewards, groups)
    assert scales[0] == pytest.approx(2.0, rel=1e-5) and scales[1] == 1.0 and scales[2] == 1.0
    assert algos.VALUE_SCALES["dr_grpo"](rewards, groups) == {0: 1.0, 1: 1.0, 2: 1.0}
    assert set(algos.VALUE_SCALES) == set(algos.ADVANTAGES)  # every estimator has its scale


@pytest.mark.parametrize("mode", sorted(LOSS_AGGREGATIONS))
def test_a_global_count_splits_the_loss_across_processes_exactly(mode):
    """Two halves of a batch, each weighted with the count over both (what data-parallel processes sum),
    give the weights of the whole batch: the processes' losses add up to the single-process loss."""
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    reference = torch.tensor([True, True, False, True, True])
    whole = LOSS_AGGREGATIONS[mode](mask, 4, reference)
    count = sum(float(algos.LOSS_COUNTS[mode](mask[part], reference[part])) for part in (slice(0, 2), slice(2, 5)))
    halves = torch.cat([LOSS_AGGREGATIONS[mode](mask[part], 4, reference[part], count=count) for part in (slice(0, 2), slice(2, 5))])
    assert torch.allclose(halves, whole)
    # with each half's own count the weights differ: what the data-parallel loss did before global counts
    local = torch.cat([LOSS_AGGREGATIONS[mode](mask[part], 4, reference[part]) for part in (slice(0, 2), slice(2, 5))])
    assert not torch.allclose(local, whole)
