"""The credit core (sirl.credit) on token ids: each piece against numbers derived by hand (derivations in
the comments) and against its naive twin; the zero-sum property of tree credit, the prefix protection of the
divergence credit, and the divergence credit equal to what sirl's si gives the rows of a real step."""

import random

import pytest
import torch

from sirl.credit import GroupCredit, divergence_credit, outcome_credit, tree_credit
from sirl.credit.continuations import continuation_advantages
from sirl.credit.divergence import divergence_step, localized_token_advantages
from sirl.credit.outcome import outcome_advantages, value_scales
from sirl.credit.prefix_tree import PrefixTree, naive_certified, naive_shared_with_success, naive_value
from sirl.credit.step_advantages import broadcast_steps_to_tokens, localized_step_advantages, step_index, value_difference_step_advantages
from sirl.credit.tree import branch_token_advantages, tree_node_counts, tree_node_counts_naive, tree_token_advantages, tree_token_advantages_naive

EOS = 9


def random_forest(rng: random.Random, n_groups: int = 3, rows: int = 6, given: bool = True):
    """Rows over a small vocabulary so that prefixes are shared, some continuing a given prefix of a sibling.
    Like real responses they end in EOS (none is a strict prefix of another) and their outcome is a
    function of their tokens (identical rows score alike)."""
    responses, rewards, groups, prefix_lens = [], [], [], []
    for g in range(n_groups):
        mine = []
        for _ in range(rows):
            if given and mine and rng.random() < 0.3:  # a probe: a sibling's prefix, then its own tokens
                base = rng.choice(mine)
                cut = rng.randrange(len(base) + 1)
                cut = min(cut, len(base) - 1)  # never past a sibling's EOS
                tokens, pl = base[:cut] + [rng.randrange(3) for _ in range(rng.randrange(0, 4))] + [EOS], cut
            else:
                tokens, pl = [rng.randrange(3) for _ in range(rng.randrange(0, 5))] + [EOS], 0
            mine.append(tokens)
            reward = float(hash(tuple(tokens)) % 2)  # a fixed function of the tokens (ints hash to themselves)
            responses.append(tokens), rewards.append(reward), groups.append(g), prefix_lens.append(pl)
    return responses, rewards, groups, prefix_lens


def two_token_steps(tokens: list[int]) -> list[int]:
    """Steps of two tokens each (the last one shorter when the length is odd): a step boundary every
    second token, so rows that share tokens share steps, as rows that share a line share a step."""
    return [min(end, len(tokens)) for end in range(2, len(tokens) + 2, 2)]


# --- outcome credit ----------------------------------------------------------------------------------


def test_outcome_credit_by_hand():
    # Rewards 1, 0, 0, 1 in one group: mean 1/2, unbiased std sqrt((4 * 1/4) / 3) = 1/sqrt(3), so GRPO gives
    # +-(1/2) * sqrt(3) = +-0.8660 on every token; group 1 (one member) gets 0; dr_grpo gives +-1/2.
    responses = [[1, 2], [1, 3, 4], [5], [1, 2], [7, 7]]
    found = outcome_credit(responses, [1.0, 0.0, 0.0, 1.0, 1.0], [0, 0, 0, 0, 1])
    assert isinstance(found, GroupCredit) and [len(a) for a in found.token_advantages] == [2, 3, 1, 2, 2]
    half_sqrt3 = 0.5 * 3**0.5
    for a, want in zip(found.token_advantages, [half_sqrt3, -half_sqrt3, -half_sqrt3, half_sqrt3, 0.0]):
        assert a.dtype == torch.float32 and torch.allclose(a, torch.full_like(a, want), atol=1e-5)
    assert found.metrics["credit/zero_frac"] == pytest.approx(2 / 10)  # the lone group's two tokens
    dr = outcome_credit(responses, [1.0, 0.0, 0.0, 1.0, 1.0], [0, 0, 0, 0, 1], estimator="dr_grpo")
    assert dr.outcome_advantages.tolist() == [0.5, -0.5, -0.5, 0.5, 0.0]
    # group ids need not be 0..G-1: any ints, in any order, give the same advantages
    relabeled = outcome_credit(responses, [1.0, 0.0, 0.0, 1.0, 1.0], [40, 40, 40, 40, -3])
    assert torch.equal(relabeled.outcome_advantages, found.outcome_advantages)
    with pytest.raises(ValueError, match="unknown outcome estimator 'ppo'"):
        outcome_credit(responses, [1.0] * 5, [0] * 5, estimator="ppo")


def test_inputs_of_the_wrong_shape_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="rewards has 1 entries for 2 responses"):
        outcome_credit([[1], [2]], [1.0], [0, 0])
    with pytest.raises(ValueError, match="row 1: step_ends \\[1\\] must be increasing offsets whose last is the response's length \\(2\\)"):
        divergence_credit([[1], [2, 3]], [1.0, 0.0], [0, 0], [[1], [1]])
    with pytest.raises(ValueError, match="row 0: step_ends \\[2, 1, 2\\]"):
        divergence_credit([[1, 2]], [1.0], [0], [[2, 1, 2]])
    with pytest.raises(ValueError, match="row 0: prefix_lens 3 outside its 2 response tokens"):
        tree_credit([[1, 2]], [1.0], [0], prefix_lens=[3])
    with pytest.raises(ValueError, match="unknown error_span 'token'"):
        divergence_credit([[1]], [1.0], [0], [[1]], error_span="token")
    with pytest.raises(ValueError, match="unknown weighting 'sqrt'"):
        tree_credit([[1]], [1.0], [0], weighting="sqrt")


# --- the group's prefix tree -----------------------------------------------------------------------


def test_prefix_tree_by_hand():
    # Group 0: [1,2,3] verified, [1,2,4] and [1,5] failed, and a probe given [1,2] that wrote [1,2,3] and
    # verified. Through [1,2] pass rows 0, 1 and 3, all free there (the probe is free from depth 2 on):
    # V([1,2]) = 2/3 (rows 0 and 3 verified); through [1] pass all four, but the probe was forced there, so
    # V([1]) = 1/3 over rows 0, 1, 2. [1,5] is no success's prefix; the empty prefix of group 1 has no row.
    tree = PrefixTree.build([[1, 2, 3], [1, 2, 4], [1, 5], [1, 2, 3]], [1.0, 0.0, 0.0, 1.0], [0, 0, 0, 0], [0, 0, 0, 2])
    node12 = tree.node(0, [1, 2])
    assert tree.value(node12) == (2 / 3, 3) and tree.value(tree.node(0, [1])) == (1 / 3, 3)
    assert tree.visits[node12] == 3 and tree.sampled[node12] == 2  # rows 0 and 1 sampled the "2"; the probe was given it
    assert tree.certified(node12) and not tree.certified(tree.node(0, [1, 5]))
    assert tree.node(0, [1, 6]) is None and tree.value(None) == (0.0, 0) and tree.node(1, []) is None
    # leaving out row 0 and the probe (which is free at [1,2], depth 2 >= its 2 given tokens): only row 1
    assert tree.value_without(node12, [0, 3]) == (0.0, 1)
    # the first token where each row left every success of its group: [1,2,4] after 2, [1,5] after 1;
    # a success shares all of itself with its twin (the probe) and none with another group
    assert [tree.shared_with_success(r) for r in range(4)] == [3, 2, 1, 3]


@pytest.mark.parametrize("seed", range(20))
def test_prefix_tree_matches_its_naive_definition(seed):
    rng = random.Random(seed)
    responses, rewards, groups, prefix_lens = random_forest(rng)
    tree = PrefixTree.build(responses, rewards, groups, prefix_lens)
    for i, tokens in enumerate(responses):
        assert tree.shared_with_success(i) == naive_shared_with_success(responses, rewards, groups, i)
        for d in range(len(tokens) + 1):
            prefix, node = tokens[:d], tree.paths[i][d]
            assert tree.node(groups[i], prefix) == node
            assert tree.value(node) == naive_value(responses, rewards, groups, prefix_lens, groups[i], prefix)
            assert tree.certified(node) == naive_certified(responses, rewards, groups, groups[i], prefix)
            left_out = rng.sample(range(len(responses)), 3)
            assert tree.value_without(node, left_out) == naive_value(responses, rewards, groups, prefix_lens, groups[i], prefix, left_out)
            through = [j for j, t in enumerate(responses) if groups[j] == groups[i] and t[:d] == prefix]
            assert tree.visits[node] == len(through)
            assert tree.sampled[node] == sum(prefix_lens[j] < d for j in through)


def test_a_row_counts_as_a_success_from_the_threshold_on():
    tree = PrefixTree.build([[1, 2], [1, 3]], [0.5, 0.2], [0, 0], success_threshold=0.5)
    assert tree.certified(tree.node(0, [1, 2])) and not tree.certified(tree.node(0, [1, 3]))
    assert tree.value(tree.node(0, [1])) == (0.5, 2)


# --- step credit: values to tokens -------------------------------------------------------------------

def test_value_differences_by_hand():
    # prefix values V(0..3) = 0.5, 0.5, 0.25, 0 -> step advantages 0, -0.25, -0.25
    values = torch.tensor([[0.5, 0.5, 0.25, 0.0]])
    known = torch.tensor([[True, True, True, True]])
    assert torch.allclose(value_difference_step_advantages(values, known), torch.tensor([[0.0, -0.25, -0.25]]))
    # V(2) unmeasured: steps 1 and 2 touch it and get 0
    known = torch.tensor([[True, True, False, True]])
    assert torch.allclose(value_difference_step_advantages(values, known), torch.tensor([[0.0, 0.0, 0.0]]))


def test_localized_failure_advantages_by_hand():
    # Two failures. Row 0: 4 steps, error at step 2, V(good prefix) = 0.75, V(after) = 0 -> [0, 0, -0.75, 0].
    # Row 1: 3 steps, error at step 0, V = 0.5 -> 0.0 after, post-error steps take the outcome advantage -0.3:
    # [-0.5, -0.3, -0.3] and a padded 4th column 0.
    adv = localized_step_advantages(
        n_steps_B=torch.tensor([4, 3]),
        error_step_B=torch.tensor([2, 0]),
        value_before_B=torch.tensor([0.75, 0.5]),
        value_after_B=torch.tensor([0.0, 0.0]),
        after_error_B=torch.tensor([0.0, -0.3]),
        width=4,
    )
    assert torch.allclose(adv, torch.tensor([[0.0, 0.0, -0.75, 0.0], [-0.5, -0.3, -0.3, 0.0]]))


def test_broadcast_steps_to_tokens_equals_a_naive_loop():
    torch.manual_seed(0)
    step_adv = torch.randn(5, 6)
    step_index = torch.randint(-1, 6, (5, 20))
    naive = torch.tensor([[step_adv[b, s].item() if s >= 0 else 0.0 for s in row] for b, row in enumerate(step_index.tolist())])
    assert torch.equal(broadcast_steps_to_tokens(step_adv, step_index), naive)



def test_step_index_by_hand():
    # step_ends [2, 5, 6]: tokens 0-1 are step 0, 2-4 step 1, 5 step 2; 3 given tokens are context (-1)
    assert step_index([2, 5, 6], 6).tolist() == [0, 0, 1, 1, 1, 2]
    assert step_index([2, 5, 6], 6, prefix_len=3).tolist() == [-1, -1, -1, 1, 1, 2]
    assert step_index([0], 0).tolist() == []  # an empty response: one empty step


def test_localized_token_advantages_by_hand():
    # 3 steps over 6 tokens ([0,2), [2,5), [5,6)); error at step 1 with V(before) 0.75, V(after) 0.25:
    # the destroyed value 0.5 times error_scale 2 times scale 1.5 = -1.5 on step 1; 0 before it, and after
    # it 0 (post_error zero) or the outcome advantage -0.4. From token 3 on (the first token where the
    # failure left the successes) the penalty starts one token into the step.
    zero = localized_token_advantages([2, 5, 6], 0, 1, 0.75, 0.25, -0.4, scale=1.5, error_scale=2.0, post_error="zero")
    assert torch.allclose(zero, torch.tensor([0.0, 0.0, -1.5, -1.5, -1.5, 0.0]))
    outcome = localized_token_advantages([2, 5, 6], 0, 1, 0.75, 0.25, -0.4, scale=1.5, error_scale=2.0, post_error="outcome")
    assert torch.allclose(outcome, torch.tensor([0.0, 0.0, -1.5, -1.5, -1.5, -0.4]))
    late = localized_token_advantages([2, 5, 6], 0, 1, 0.75, 0.25, -0.4, scale=1.5, error_scale=2.0, post_error="zero", error_from_token=3)
    assert torch.allclose(late, torch.tensor([0.0, 0.0, 0.0, -1.5, -1.5, 0.0]))
    assert late.dtype == torch.float32


def localized_naive(step_ends, error_step, before, after, outcome, scale, error_scale, post_error, first_difference):
    """The definition token by token: 0 before the error step's penalty starts, the penalty through the
    step's end, then 0 or the outcome advantage."""
    start = step_ends[error_step - 1] if error_step else 0
    penalty_from = max(start, first_difference)
    out = []
    for t in range(step_ends[-1]):
        if t < penalty_from:
            out.append(0.0)
        elif t < step_ends[error_step]:
            out.append(-(before - after) * error_scale * scale)
        else:
            out.append(outcome if post_error == "outcome" else 0.0)
    return torch.tensor(out)


@pytest.mark.parametrize("seed", range(20))
def test_localized_token_advantages_match_their_naive_definition(seed):
    rng = random.Random(seed)
    ends = sorted(rng.sample(range(1, 30), rng.randrange(1, 8)))
    error = rng.randrange(len(ends))
    start = ends[error - 1] if error else 0
    first = rng.randrange(start, ends[error])  # inside the error step: where a failure leaves its successes
    before, after, outcome, scale = rng.random(), rng.random() * 0.2, -rng.random(), 1 + rng.random()
    for post in ("zero", "outcome"):
        fast = localized_token_advantages(ends, 0, error, before, after, outcome, scale=scale, error_scale=0.5, post_error=post, error_from_token=first)
        slow = localized_naive(ends, error, before, after, outcome, scale, 0.5, post, first)
        assert torch.allclose(fast, slow, atol=1e-6)


# --- the divergence credit -------------------------------------------------------------------------


def test_divergence_credit_by_hand():
    # One group, steps of two tokens: [1,2 | 3,4] and [1,2 | 3,9] verified, [1,2 | 5,6] and [1,7 | 8,9]
    # failed. GRPO: rewards 1, 0, 0, 1 (in row order 1, 0, 0, 1 below), std 1/sqrt(3): outcome advantages
    # +-sqrt(3)/2 and value scale sqrt(3).
    # Row 1 [1,2,5,6]: both successes share its first step, not its second: error step 1. V(before) = V([1,2])
    #   = 2/3 (rows 0, 1, 3 pass, 0 and 3 verified), V(after) = V([1,2,5,6]) = 0: -(2/3) * sqrt(3) = -1.1547
    #   on tokens 2 and 3 (it left the successes at token 2, the step's start); 0 on [1, 2].
    # Row 2 [1,7,8,9]: no success shares its first step: error step 0, V(before) = V([]) = 1/2,
    #   V(after) = V([1,7]) = 0; the successes also wrote its token "1", so under first_difference the
    #   penalty -(1/2) * sqrt(3) = -0.8660 starts at token 1; the step after it gets 0.
    responses = [[1, 2, 3, 4], [1, 2, 5, 6], [1, 7, 8, 9], [1, 2, 3, 9]]
    rewards, groups, ends = [1.0, 0.0, 0.0, 1.0], [0, 0, 0, 0], [[2, 4]] * 4
    found = divergence_credit(responses, rewards, groups, ends)
    s3 = 3**0.5
    expected = [[s3 / 2] * 4, [0, 0, -2 / 3 * s3, -2 / 3 * s3], [0, -s3 / 2, 0, 0], [s3 / 2] * 4]
    for got, want in zip(found.token_advantages, expected):
        assert torch.allclose(got, torch.tensor(want), atol=1e-5)
    # the half-solved order within the group: the failure sharing the longer prefix with a success first
    assert [(d.row, d.error_step, d.first_difference) for d in found.divergences] == [(1, 1, 2), (2, 0, 1)]
    assert found.divergences[0].value_before == pytest.approx(2 / 3) and found.divergences[0].value_after == 0.0
    assert found.metrics == pytest.approx({"credit/localized_frac": 1.0, "credit/mean_error_step": 0.5, "credit/zero_frac": 5 / 16})
    # the whole step: row 2's penalty starts at its token 0; post_error=outcome: the step after it keeps -sqrt(3)/2
    whole = divergence_credit(responses, rewards, groups, ends, error_span="step", post_error="outcome")
    assert torch.allclose(whole.token_advantages[2], torch.tensor([-s3 / 2] * 4), atol=1e-5)
    # dr_grpo's scale (1) and a budget of one localization: the first in the order, row 1, alone
    one = divergence_credit(responses, rewards, groups, ends, estimator="dr_grpo", max_localizations=1)
    assert torch.allclose(one.token_advantages[1], torch.tensor([0, 0, -2 / 3, -2 / 3]), atol=1e-6)
    assert torch.allclose(one.token_advantages[2], torch.full((4,), -0.5)) and one.metrics["credit/localized_frac"] == 0.5


def test_a_group_without_success_and_given_rows_keep_the_outcome_advantage():
    # Group 1 has no success: nothing to diverge from. Row 3 continues a given prefix and failed: it is a
    # probe-like row, not a fresh failure, so it is not localized either.
    responses = [[1, 2], [1, 3], [4, 4], [4, 5], [1, 2, 6]]
    found = divergence_credit(responses, [1.0, 0.0, 0.0, 0.0, 0.0], [0, 0, 1, 1, 0], [[1, 2], [1, 2], [2], [2], [1, 2, 3]], prefix_lens=[0, 0, 0, 0, 2])
    outcome = outcome_credit(responses, [1.0, 0.0, 0.0, 0.0, 0.0], [0, 0, 1, 1, 0])
    assert [d.row for d in found.divergences] == [1]
    for row in (0, 2, 3, 4):
        assert torch.equal(found.token_advantages[row], outcome.token_advantages[row])


def divergence_credit_naive(responses, rewards, groups, step_ends, prefix_lens, estimator, error_span, post_error, error_scale):
    """The divergence credit from its definition, every failure localized (no budget), every value by a
    scan over the rows (the twin of divergence_credit)."""
    outcome = outcome_advantages(rewards, groups, estimator)
    scales = value_scales(rewards, groups, estimator)
    out = []
    for i, tokens in enumerate(responses):
        has_success = any(r >= 1 for r, g in zip(rewards, groups) if g == groups[i])
        if rewards[i] >= 1 or prefix_lens[i] > 0 or not has_success:
            out.append(torch.full((len(tokens),), float(outcome[i])))
            continue
        ends = step_ends[i]

        def prefix(k):
            return tokens[: ends[k - 1] if k else 0]

        c = max(k for k in range(len(ends)) if naive_certified(responses, rewards, groups, groups[i], prefix(k)))
        before, _ = naive_value(responses, rewards, groups, prefix_lens, groups[i], prefix(c))
        after, _ = naive_value(responses, rewards, groups, prefix_lens, groups[i], prefix(c + 1))
        first = naive_shared_with_success(responses, rewards, groups, i) if error_span == "first_difference" else 0
        out.append(localized_naive(ends, c, before, after, float(outcome[i]), scales[groups[i]], error_scale, post_error, first))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_divergence_credit_matches_its_naive_definition(seed):
    rng = random.Random(seed)
    responses, rewards, groups, prefix_lens = random_forest(rng, rows=8)
    ends = [two_token_steps(t) for t in responses]
    for estimator, span, post in [("grpo", "first_difference", "zero"), ("dr_grpo", "step", "outcome"), ("rloo", "first_difference", "outcome")]:
        fast = divergence_credit(
            responses, rewards, groups, ends, prefix_lens=prefix_lens, estimator=estimator, error_span=span, post_error=post, error_scale=0.7,
        )
        slow = divergence_credit_naive(responses, rewards, groups, ends, prefix_lens, estimator, span, post, 0.7)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fast.token_advantages, slow))
        for d in fast.divergences:
            assert d.error_step == divergence_step(PrefixTree.build(responses, rewards, groups, prefix_lens), d.row, ends[d.row])


@pytest.mark.parametrize("seed", range(20))
def test_prefix_protection_a_failure_is_not_punished_for_what_a_success_also_wrote(seed):
    """A localized failure's tokens that a success of its group also wrote (same prefix through that token)
    get 0; its error step's tokens from the first differing one get -(V(before) - V(after)) on the outcome
    scale (times 1 / group std under grpo); the steps after it 0 (post_error=zero)."""
    rng = random.Random(seed)
    responses, rewards, groups, prefix_lens = random_forest(rng, rows=8)
    ends = [two_token_steps(t) for t in responses]
    found = divergence_credit(responses, rewards, groups, ends, prefix_lens=prefix_lens)
    scales = value_scales(rewards, groups, "grpo")
    localizable = [i for i, r in enumerate(rewards) if r < 1 and prefix_lens[i] == 0 and any(s >= 1 for s, g in zip(rewards, groups) if g == groups[i])]
    assert sorted(d.row for d in found.divergences) == localizable
    for d in found.divergences:
        tokens, adv = responses[d.row], found.token_advantages[d.row]
        successes = [t for t, r, g in zip(responses, rewards, groups) if r >= 1 and g == groups[d.row]]
        shared = [t for t in range(len(tokens)) if any(s[: t + 1] == tokens[: t + 1] for s in successes)]
        assert shared == list(range(d.first_difference))  # the tokens a success wrote are the first ones
        assert torch.all(adv[shared] == 0)
        start, end = (ends[d.row][d.error_step - 1] if d.error_step else 0), ends[d.row][d.error_step]
        assert start <= d.first_difference < end  # the failure leaves every success inside its error step
        penalty = -(torch.tensor(d.value_before) - torch.tensor(d.value_after)) * torch.tensor(scales[groups[d.row]])  # float32, as trained
        assert torch.equal(adv[d.first_difference : end], penalty.expand(end - d.first_difference))
        assert torch.all(adv[end:] == 0)


# --- tree credit: the entry point -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_tree_credit_is_zero_sum_and_adds_up_to_the_outcome_advantage_on_its_scale(seed):
    responses, rewards, groups, _ = random_forest(random.Random(seed), given=False)
    found = tree_credit(responses, rewards, groups)
    for adv, outcome in zip(found.token_advantages, found.outcome_advantages):
        assert adv.sum().item() == pytest.approx(outcome.item(), abs=1e-4)  # along a row: GRPO's advantage
    nodes = {(g, tuple(t[:d])) for t, g in zip(responses, groups) for d in range(len(t))}
    for g, prefix in nodes:  # at every node no row ends at, the next token's credit sums to 0 over its rows
        through = [i for i, (t, h) in enumerate(zip(responses, groups)) if h == g and tuple(t[: len(prefix)]) == prefix]
        if all(len(responses[i]) > len(prefix) for i in through):
            assert sum(found.token_advantages[i][len(prefix)].item() for i in through) == pytest.approx(0.0, abs=1e-4)
    assert found.metrics["credit/zero_frac"] == found.metrics["credit/tree_zero_frac"]  # no outcome mixed in


def test_tree_credit_entry_point_composes_its_pieces():
    # Mixed with 1/4 of the outcome advantage and divided by node counts: (3/4 * tree * scale + 1/4 * outcome) / count
    responses, rewards, groups, prefix_lens = random_forest(random.Random(3))
    found = tree_credit(responses, rewards, groups, prefix_lens=prefix_lens, outcome_mix=0.25, weighting="node_count", values="leave_one_out")
    plain = tree_token_advantages(responses, rewards, groups, prefix_lens, values="leave_one_out")
    counts = tree_node_counts(responses, groups, prefix_lens)
    outcome = outcome_advantages(rewards, groups, "grpo")
    scales = value_scales(rewards, groups, "grpo")
    for i, adv in enumerate(found.token_advantages):
        assert torch.allclose(adv, (0.75 * plain[i] * scales[groups[i]] + 0.25 * outcome[i]) / counts[i], atol=1e-6)


# --- continuations ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_continuation_advantages_match_their_naive_definition(seed):
    # R - V(given prefix) on every token of a row given a prefix, V over the free rows through it, with and
    # without leaving out the row itself and one other row (the failure a probe was drawn for)
    rng = random.Random(seed)
    responses, rewards, groups, prefix_lens = random_forest(rng)
    tree = PrefixTree.build(responses, rewards, groups, prefix_lens)
    scales = value_scales(rewards, groups, "grpo")
    rows = [i for i, p in enumerate(prefix_lens) if p > 0]
    others = [[i, rng.randrange(len(responses))] for i in rows]
    plain, left = continuation_advantages(tree, rows, scales), continuation_advantages(tree, rows, scales, others)
    for i, a, b, out in zip(rows, plain, left, others):
        prefix = responses[i][: prefix_lens[i]]
        value, _ = naive_value(responses, rewards, groups, prefix_lens, groups[i], prefix)
        rest, n = naive_value(responses, rewards, groups, prefix_lens, groups[i], prefix, out)
        assert torch.allclose(a, torch.full((len(responses[i]),), (rewards[i] - value) * scales[groups[i]]))
        assert torch.allclose(b, torch.full((len(responses[i]),), (rewards[i] - rest) * scales[groups[i]] if n else 0.0))


# --- tree credit: the pieces -----------------------------------------------------------------------


def test_tree_credit_by_hand():
    # One group of four: [1,2,3] and [1,2,3] verified, [1,2,4] and [1,5] failed. V(root) = V([1]) = 2/4;
    # V([1,2]) = 2/3 (three rows, two verified); V([1,5]) = 0; V([1,2,3]) = 1; V([1,2,4]) = 0.
    # Token advantages are V(child) - V(parent): the shared first token 0, then +1/6 for "2", -1/2 for
    # "5", +1/3 for "3" after [1,2] and -2/3 for "4".
    rows = [[1, 2, 3], [1, 2, 4], [1, 5], [1, 2, 3]]
    adv = tree_token_advantages(rows, [1.0, 0.0, 0.0, 1.0], [0, 0, 0, 0])
    expected = [[0, 1 / 6, 1 / 3], [0, 1 / 6, -2 / 3], [0, -1 / 2], [0, 1 / 6, 1 / 3]]
    for got, want in zip(adv, expected):
        assert torch.allclose(got, torch.tensor(want), atol=1e-6)


@pytest.mark.parametrize("seed", range(20))
def test_tree_credit_matches_its_naive_definition(seed):
    responses, rewards, groups, prefix_lens = random_forest(random.Random(seed))
    fast = tree_token_advantages(responses, rewards, groups, prefix_lens)
    slow = tree_token_advantages_naive(responses, rewards, groups, prefix_lens)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fast, slow))
    assert all(torch.all(a[:pl] == 0) for a, pl in zip(fast, prefix_lens))  # given tokens carry nothing


@pytest.mark.parametrize("seed", range(20))
def test_tree_credit_is_zero_sum_at_every_node_and_telescopes_to_the_outcome_advantage(seed):
    responses, rewards, groups, _ = random_forest(random.Random(seed), given=False)
    adv = tree_token_advantages(responses, rewards, groups)
    for i, (tokens, r, g) in enumerate(zip(responses, rewards, groups)):
        # along a row: sum of V(child) - V(parent) = R - V(root) = R - the group's mean
        mean = sum(x for x, h in zip(rewards, groups) if h == g) / groups.count(g)
        assert adv[i].sum().item() == pytest.approx(r - mean, abs=1e-5)
    # at every node where no row ends, the next token's advantages over the rows through it sum to 0
    nodes = {(g, tuple(t[:d])) for t, g in zip(responses, groups) for d in range(len(t))}
    for g, prefix in nodes:
        through = [i for i, (t, h) in enumerate(zip(responses, groups)) if h == g and tuple(t[: len(prefix)]) == prefix]
        if all(len(responses[i]) > len(prefix) for i in through):
            assert sum(adv[i][len(prefix)].item() for i in through) == pytest.approx(0.0, abs=1e-5)


def test_leave_one_out_tree_values_by_hand():
    # The group of test_tree_credit_by_hand, each node's value without the row itself. Row 0 ([1,2,3],
    # verified): V(root) over the three others 1/3, V([1,2]) over rows 1 and 3 = 1/2, V([1,2,3]) over row 3
    # = 1: advantages 1/3 - 1/3 = 0, 1/2 - 1/3 = +1/6, 1 - 1/2 = +1/2; total 2/3 = 1 - 1/3 (RLOO).
    # Row 1 ([1,2,4], failed): V(root) = 2/3, V([1,2]) over rows 0 and 3 = 1, V([1,2,4]) alone = its own 0:
    # 0, +1/3, -1. Row 2 ([1,5], failed): 2/3, 2/3, then alone: 0, 0, -2/3.
    rows = [[1, 2, 3], [1, 2, 4], [1, 5], [1, 2, 3]]
    rewards = [1.0, 0.0, 0.0, 1.0]
    adv = tree_token_advantages(rows, rewards, [0, 0, 0, 0], values="leave_one_out")
    expected = [[0, 1 / 6, 1 / 2], [0, 1 / 3, -1], [0, -2 / 3], [0, 1 / 6, 1 / 2]]
    for got, want in zip(adv, expected):
        assert torch.allclose(got, torch.tensor(want), atol=1e-6)
    with pytest.raises(ValueError, match="values must be one of"):
        tree_token_advantages(rows, rewards, [0, 0, 0, 0], values="median")


@pytest.mark.parametrize("seed", range(20))
def test_leave_one_out_tree_values_match_the_naive_definition_and_telescope_to_rloo(seed):
    responses, rewards, groups, prefix_lens = random_forest(random.Random(seed))
    fast = tree_token_advantages(responses, rewards, groups, prefix_lens, values="leave_one_out")
    slow = tree_token_advantages_naive(responses, rewards, groups, prefix_lens, values="leave_one_out")
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fast, slow))
    free = [i for i, pl in enumerate(prefix_lens) if pl == 0]
    for i in free:  # a row sampled from the prompt: R_i minus the mean of the others free at the root
        others = [rewards[j] for j in free if j != i and groups[j] == groups[i]]
        if others:
            assert fast[i].sum().item() == pytest.approx(rewards[i] - sum(others) / len(others), abs=1e-5)


def test_node_counts_by_hand():
    # [1,2,3] twice, [1,2,4], [1,5]: "1" is sampled by 4 rows, "2" after [1] by 3, "3" after [1,2] by 2,
    # "4" and "5" by one each. A probe given [1,2] that writes [1,2,3] samples only its "3": it counts there
    # (3 rows), not at "1" or "2", and its own given tokens get 1.
    rows = [[1, 2, 3], [1, 2, 4], [1, 5], [1, 2, 3]]
    counts = tree_node_counts(rows, [0, 0, 0, 0])
    assert [c.tolist() for c in counts] == [[4, 3, 2], [4, 3, 1], [4, 1], [4, 3, 2]]
    counts = tree_node_counts(rows + [[1, 2, 3]], [0] * 5, [0, 0, 0, 0, 2])
    assert [c.tolist() for c in counts] == [[4, 3, 3], [4, 3, 1], [4, 1], [4, 3, 3], [1, 1, 3]]


@pytest.mark.parametrize("seed", range(20))
def test_node_counts_match_their_naive_definition(seed):
    responses, _, groups, prefix_lens = random_forest(random.Random(seed))
    fast = tree_node_counts(responses, groups, prefix_lens)
    slow = tree_node_counts_naive(responses, groups, prefix_lens)
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))
    assert all(torch.all(c >= 1) for c in fast)


def test_branch_groups_score_each_row_against_the_others():
    # Three continuations of a 2-token given prefix [7, 7]: [7,7,1,1] verified, [7,7,1,2] and [7,7,3] not.
    # Leave-one-out: the success scores 1 - 0 = 1, each failure 0 - 1/2 = -1/2; the branch's own tree puts
    # that on the tokens: the first sampled token "1" moves V from 1/3 to 1/2 (+1/6) and carries the gap
    # between the branch mean (1/3) and the others' mean for the row (0 for the success: +1/3; 1/2 for a
    # failure: -1/6); "3" moves V to 0 (-1/3) plus its gap -1/6.
    adv = branch_token_advantages([[7, 7, 1, 1], [7, 7, 1, 2], [7, 7, 3]], [1.0, 0.0, 0.0], prefix_len=2)
    expected = [[0, 0, 1 / 6 + 1 / 3, 1 / 2], [0, 0, 1 / 6 - 1 / 6, -1 / 2], [0, 0, -1 / 3 - 1 / 6]]
    for got, want in zip(adv, expected):
        assert torch.allclose(got, torch.tensor(want), atol=1e-6)
    assert [a.sum().item() for a in adv] == pytest.approx([1.0, -0.5, -0.5])
    # a branch whose members all fail (or all verify) carries nothing
    assert all(torch.all(a == 0) for a in branch_token_advantages([[1, 2], [1, 3]], [0.0, 0.0], 0))
    with pytest.raises(ValueError, match="at least 2 rows"):
        branch_token_advantages([[1]], [1.0], 0)


# --- the same numbers as sirl's si on a real step --------------------------------------------------


def test_divergence_credit_equals_sis_credit_of_a_real_steps_rows():
    """The rows of one step of the shipped arith mod 7 policy (8 prompts x 8 responses, and a group that
    continues a success's first steps, as the repair buffer's do): si with the divergence localizer
    (leave-out probe baseline, penalty from the first differing token) and divergence_credit on the same
    token ids give the sampled rows the same advantages, bit for bit, and localize the same failures."""
    from sirl.config import load_config
    from sirl.internalize.localize import prefix_ids, step_ends
    from sirl.internalize.selfverify import AuditSchedule
    from sirl.methods import MethodContext, MethodMemory, get_method
    from sirl.model import policy_from_config
    from sirl.rollout import SamplingParams, sample_trajectories
    from sirl.tasks import load_task
    from sirl.verifier import verify_trajectories

    config = load_config("arith_prime", [
        "model.device=cpu", "algo.name=si", "method.si.localizer=divergence", "method.si.error_span=first_difference",
        "method.si.probe_baseline=leave_out",
    ])
    settings = config.method.si
    task = load_task(config.task.name, **config.task.args)
    torch.manual_seed(0)
    model, tokenizer = policy_from_config(config.model, task.alphabet(), 0)
    generator = torch.Generator().manual_seed(0)
    params = SamplingParams(config.rollout.max_new_tokens, temperature=1.0)
    prompts_rng = random.Random(0)
    problems = [task.sample(prompts_rng, "train") for _ in range(8)]
    fresh = verify_trajectories(task, sample_trajectories(model, tokenizer, task, problems, params, group_size=8, generator=generator))
    success = next(t for t in fresh if t.reward >= 1 and len(t.step_spans) > 3)
    repair = verify_trajectories(task, sample_trajectories(
        model, tokenizer, task, [success.problem], params, group_size=8, prefixes=[prefix_ids(success, 3)], groups=[8], generator=generator,
    ))
    rollouts = [*fresh, *repair]

    class NoProbes:
        def probe(self, requests, k):
            raise AssertionError("the divergence localizer draws no probe")

    context = MethodContext(
        task, settings, config.algo.outcome_advantage, NoProbes(), random.Random(0), MethodMemory(64, 64, AuditSchedule(1.0, 1.0, 10)), step=1,
    )
    si = get_method("si").credit(rollouts, context)
    core = divergence_credit(
        [t.response_ids for t in rollouts], [t.reward for t in rollouts], [t.group for t in rollouts], [step_ends(t) for t in rollouts],
        prefix_lens=[t.prefix_len for t in rollouts], estimator=config.algo.outcome_advantage, error_span="first_difference",
        post_error=settings.post_error, error_scale=settings.error_scale, max_localizations=settings.max_localizations,
        failure_choice=settings.failure_choice, rng=random.Random(0),
    )
    assert si.rows == tuple(rollouts)  # nothing drawn, nothing added
    assert len(core.divergences) >= 4 and any(t.prefix_len for t in rollouts)  # the step has localized failures and given rows
    assert all(torch.equal(a, b) for a, b in zip(si.token_advantages, core.token_advantages))
    assert [(f.row, f.localization.error_step, f.localization.value_before, f.localization.value_after) for f in si.localizations] == [
        (d.row, d.error_step, d.value_before, d.value_after) for d in core.divergences
    ]
    assert any(0 < d.first_difference for d in core.divergences)
