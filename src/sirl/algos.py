"""All RL math of sirl, as pure functions of tensors and scalars.

Nothing here knows about models, tasks, configs or trainers, so every formula can be read next to its
source and tested against numbers derived by hand. Shapes are in the names: ``_B`` one value per sequence,
``_BT`` per response token (``T`` the padded response length), ``_G`` per group.

Variants are small name -> function dicts (``ADVANTAGES``, ``LOSS_AGGREGATIONS``, ``KL_ESTIMATORS``) so the
training loop picks one by config name instead of branching.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

MAX_LOG_RATIO = 20.0
"""Log importance ratios are clamped to +-20 before exp (e^20 ~ 5e8): finite even for a token the policy
has all but abandoned, and far outside any clip range, so the clipped objective is unchanged."""


# --- group-relative outcome advantages ----------------------------------------------------------


def _group_stats(rewards_B: torch.Tensor, group_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sequence group size, group mean and unbiased group std (0 for groups of one)."""
    n_groups = int(group_B.max()) + 1 if len(group_B) else 0
    ones = torch.ones_like(rewards_B)
    size_G = torch.zeros(n_groups, dtype=rewards_B.dtype).index_add_(0, group_B, ones)
    mean_G = torch.zeros(n_groups, dtype=rewards_B.dtype).index_add_(0, group_B, rewards_B) / size_G.clamp(min=1)
    centered_B = rewards_B - mean_G[group_B]
    sq_G = torch.zeros(n_groups, dtype=rewards_B.dtype).index_add_(0, group_B, centered_B**2)
    std_G = (sq_G / (size_G - 1).clamp(min=1)).sqrt()
    return size_G[group_B], mean_G[group_B], std_G[group_B]


def grpo_advantages(rewards_B: torch.Tensor, group_B: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath, eq. 3): (r - mean_group) / (std_group + eps).

    ``group_B`` gives each sequence's group id (0..n_groups-1). A group whose rewards are all equal, or
    that has one member, gets advantage 0 (its std is 0, so the numerator is 0 too).
    """
    _, mean_B, std_B = _group_stats(rewards_B, group_B)
    return (rewards_B - mean_B) / (std_B + eps)


def dr_grpo_advantages(rewards_B: torch.Tensor, group_B: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", sec. 3.1): r - mean_group.

    Dropping the std removes GRPO's question-difficulty bias; dropping per-sequence length normalization
    is the loss aggregation's job (use ``seq_mean_token_sum_norm``).
    """
    _, mean_B, _ = _group_stats(rewards_B, group_B)
    return rewards_B - mean_B


def rloo_advantages(rewards_B: torch.Tensor, group_B: torch.Tensor) -> torch.Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"): r_i - mean_{j != i} r_j.

    Equals G/(G-1) * (r_i - mean_group). A group of one has no other member to compare with: 0.
    """
    size_B, mean_B, _ = _group_stats(rewards_B, group_B)
    loo_baseline_B = (mean_B * size_B - rewards_B) / (size_B - 1).clamp(min=1)
    return torch.where(size_B > 1, rewards_B - loo_baseline_B, torch.zeros_like(rewards_B))


ADVANTAGES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
}


def group_std_scales(rewards_B: torch.Tensor, group_B: torch.Tensor, eps: float = 1e-6) -> dict[int, float]:
    """Per group id, 1 / (std + eps) of its rewards: the factor GRPO divides a group's reward differences
    by, so step-level value differences (sirl.internalize.credit) can be put on the same scale. A group
    whose std is 0 (or that has one member) gets 1. Each group's std is ``torch.std`` of its own rewards
    (unbiased), like ``grpo_advantages``' group std."""
    scales = {}
    for group in dict.fromkeys(group_B.tolist()):  # first-seen order
        values = rewards_B[group_B == group]
        std = values.std().item() if len(values) > 1 else 0.0
        scales[group] = 1.0 / (std + eps) if std > 0 else 1.0
    return scales


def unit_scales(rewards_B: torch.Tensor, group_B: torch.Tensor) -> dict[int, float]:
    """Per group id, 1: the estimators that do not divide by the group std (dr_grpo, rloo)."""
    return dict.fromkeys(group_B.tolist(), 1.0)


VALUE_SCALES: dict[str, Callable[[torch.Tensor, torch.Tensor], dict[int, float]]] = {
    "grpo": group_std_scales,
    "dr_grpo": unit_scales,
    "rloo": unit_scales,
}
"""For each advantage estimator, the per-group factor that puts value differences on its scale."""


def zero_std_fraction(rewards_B: torch.Tensor, group_B: torch.Tensor) -> float:
    """Share of groups whose rewards are all equal (they carry no outcome signal)."""
    if len(rewards_B) == 0:
        return 0.0
    _, _, std_B = _group_stats(rewards_B, group_B)
    n_groups = int(group_B.max()) + 1
    flat_G = torch.zeros(n_groups, dtype=torch.bool).index_fill_(0, group_B[std_B == 0], True)
    present_G = torch.zeros(n_groups, dtype=torch.bool).index_fill_(0, group_B, True)
    return float(flat_G.sum() / present_G.sum())


# --- step-level credit -------------------------------------------------------------------------
# Two small composable pieces (the VinePPO formula, Kazemnejad et al. 2024, eq. 6, without its sentinel
# values): advantages per step from measured prefix values, then a broadcast from steps to tokens.


def value_difference_step_advantages(values_BK: torch.Tensor, known_BK: torch.Tensor) -> torch.Tensor:
    """A(step k) = V(k) - V(k-1) for k = 1..K-1, where both prefix values were measured; 0 elsewhere.

    ``values_BK[b, k]`` is the estimated value of the prefix through k steps (k = 0 is the prompt alone,
    the last column the whole response, i.e. its outcome); ``known_BK`` marks measured ones. Returns
    ``[B, K-1]``: column j is the advantage of step j (0-based), the step from prefix j to prefix j+1.
    """
    both_BK = known_BK[:, 1:] & known_BK[:, :-1]
    return torch.where(both_BK, values_BK[:, 1:] - values_BK[:, :-1], torch.zeros_like(values_BK[:, 1:]))


def localized_step_advantages(
    n_steps_B: torch.Tensor,
    error_step_B: torch.Tensor,
    value_before_B: torch.Tensor,
    value_after_B: torch.Tensor,
    after_error_B: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """Step advantages of localized failures (docs/method.md, "Credit"), ``[B, width]``.

    Steps before the error step get 0 (the good prefix is not punished); the error step e gets
    -(V(e) - V(e+1)) in prefix-value terms, i.e. -(value_before - value_after), the value it destroyed;
    steps after it get ``after_error_B`` (0, or the trajectory's outcome advantage); columns past the
    trajectory's last step are 0. ``error_step_B`` is 0-based.
    """
    step_BS = torch.arange(width)[None, :].expand(len(n_steps_B), width)
    error_BS = error_step_B[:, None]
    advantages = torch.zeros(len(n_steps_B), width, dtype=value_before_B.dtype)
    advantages = torch.where(step_BS == error_BS, -(value_before_B - value_after_B)[:, None], advantages)
    advantages = torch.where(step_BS > error_BS, after_error_B[:, None].expand(-1, width), advantages)
    return torch.where(step_BS < n_steps_B[:, None], advantages, torch.zeros_like(advantages))


def broadcast_steps_to_tokens(step_adv_BS: torch.Tensor, step_index_BT: torch.Tensor) -> torch.Tensor:
    """Token advantages: each token takes its step's advantage; ``step_index_BT`` is -1 on tokens that
    belong to no step (prompt, given prefix, padding), which get 0. Naive equivalent: a loop that looks
    up ``step_adv_BS[b, step_index_BT[b, t]]`` token by token (tests hold them equal)."""
    gathered_BT = step_adv_BS.gather(1, step_index_BT.clamp(min=0))
    return torch.where(step_index_BT >= 0, gathered_BT, torch.zeros_like(gathered_BT))


# --- tree credit ---------------------------------------------------------------------------------
# Every row sampled from one prompt in a step (the group, and any probes or branches) shares its prefixes
# with the others: together they form a trie over token ids. A node's value is the mean outcome of the
# rows through it, and a token's advantage is V(child) - V(parent): the change in the chance of success
# that choosing this token made (the prefix-tree credit of lambda-GRPO, arXiv 2509.21154, and TreeAdv,
# arXiv 2601.03703). Tokens every row shares get 0; along one row the advantages telescope to
# R - V(root), the outcome advantage's numerator; and over the rows through any node where none ends, the
# advantages of the next token sum to 0, so the credit is zero-sum wherever a choice was made.
#
# Variants (method.tree_values, method.tree_weighting): leave-one-out node values, and lambda-GRPO's
# division of each token's loss by the number of rows that share it. TreeAdv's own redistribution (each
# token the mean outcome advantage of the rows below its node) is not one: on a node n rows share, the n
# rows' coefficients sum to n times their mean advantage, which is what GRPO's sum over them is already.


TREE_VALUES = ("mean", "leave_one_out")


def _prefix_trie(responses: list[list[int]], groups: list[int]) -> tuple[list[list[int]], int]:
    """Per row, the node ids of a trie over token ids from its group's root through each of its tokens,
    and the number of nodes. One dict per node: O(total tokens)."""
    children: list[dict[int, int]] = []  # node id -> {token: child node id}
    roots: dict[int, int] = {}  # group -> its root node
    paths = []
    for tokens, group in zip(responses, groups, strict=True):
        if group not in roots:
            roots[group] = len(children)
            children.append({})
        path = [roots[group]]
        for token in tokens:
            nxt = children[path[-1]].get(token)
            if nxt is None:
                nxt = children[path[-1]][token] = len(children)
                children.append({})
            path.append(nxt)
        paths.append(path)
    return paths, len(children)


def _free_sums(paths: list[list[int]], rewards: list[float], prefix_lens: list[int], n_nodes: int) -> tuple[list[float], list[int]]:
    """Per node, the summed reward and the number of rows that were free there (a row given L tokens
    counts from depth L on)."""
    total, count = [0.0] * n_nodes, [0] * n_nodes
    for path, reward, given in zip(paths, rewards, prefix_lens, strict=True):
        for n in path[given:]:
            total[n] += reward
            count[n] += 1
    return total, count


def tree_token_advantages(
    responses: list[list[int]],
    rewards: list[float],
    groups: list[int],
    prefix_lens: list[int] | None = None,
    values: str = "mean",
) -> list[torch.Tensor]:
    """Per row, ``[len(responses[i])]`` advantages V(node after token t) - V(node before it); 0 on the
    first ``prefix_lens[i]`` tokens (given, not sampled). Rows are tried only against rows of the same
    group. A row given a prefix of L tokens was forced through its first L nodes, so it counts in the value
    of a node at depth d only when L <= d (as sirl.internalize.localize.PrefixBook counts free samples).

    ``values``: "mean", V(node) the mean reward of the rows free through it; "leave_one_out", for row i
    the mean over the *other* rows free through the node, and R_i where none is (a node only i reached).
    Along a row the leave-one-out advantages telescope to R_i - mean_{j != i} R_j, the RLOO score (Kool et
    al. 2019), so a row is never its own baseline: a failure parting from k successes of n rows is pushed
    down by the others' rate k / (n - 1), not by k / n.

    One pass builds the trie and one reads it: O(total tokens). Naive equivalent: for each row and
    position, the mean reward of the rows of the group that share the prefix and were free there
    (:func:`tree_token_advantages_naive`; tests hold them equal)."""
    if values not in TREE_VALUES:
        raise ValueError(f"values must be one of {TREE_VALUES}, got {values!r}")
    prefix_lens = prefix_lens or [0] * len(responses)
    paths, n_nodes = _prefix_trie(responses, groups)
    total, count = _free_sums(paths, rewards, prefix_lens, n_nodes)
    out = []
    for path, reward, given in zip(paths, rewards, prefix_lens):
        if values == "mean":
            v = [total[n] / count[n] if count[n] else 0.0 for n in path]
        else:  # this row is free at depth >= given, so it is in count there: take it out
            v = [(total[n] - reward) / (count[n] - 1) if count[n] > 1 else reward for n in path]
        out.append(torch.tensor([v[t + 1] - v[t] if t >= given else 0.0 for t in range(len(path) - 1)], dtype=torch.float32))
    return out


def tree_node_counts(responses: list[list[int]], groups: list[int], prefix_lens: list[int] | None = None) -> list[torch.Tensor]:
    """Per row and sampled token, the number of rows of its group that sampled the same token in the same
    context (through the node the token leads to, free before it). lambda-GRPO (Sullivan 2025,
    arXiv 2509.21154, sec. 4) divides each token's loss by this count, so that a step many rows share is
    not trained once per row; given tokens get 1 (they carry no advantage). Naive equivalent: count the
    rows whose tokens match up to and including t (:func:`tree_node_counts_naive`)."""
    prefix_lens = prefix_lens or [0] * len(responses)
    paths, n_nodes = _prefix_trie(responses, groups)
    count = [0] * n_nodes
    for path, given in zip(paths, prefix_lens):
        for n in path[given + 1 :]:  # the nodes its sampled tokens lead to
            count[n] += 1
    return [
        torch.tensor([float(count[path[t + 1]]) if t >= given else 1.0 for t in range(len(path) - 1)], dtype=torch.float32)
        for path, given in zip(paths, prefix_lens)
    ]


def branch_token_advantages(responses: list[list[int]], rewards: list[float], prefix_len: int) -> list[torch.Tensor]:
    """Advantages of a branch group: K >= 2 continuations of one given prefix (``prefix_len`` tokens).
    Within the branch, tree credit over its own trie; the first sampled token also carries the gap between
    the branch's mean and the mean of the *other* members, so each row's advantages add up to
    R_i - mean_{j != i} R_j, the leave-one-out score (RLOO, Kool et al. 2019): no row gets 0 merely for
    being alone, and the failure that the branch repairs, picked for failing, is not in the baseline."""
    k = len(responses)
    if k < 2:
        raise ValueError(f"a branch group needs at least 2 rows to score each against the others, got {k}")
    adv = tree_token_advantages(responses, rewards, [0] * k, [prefix_len] * k)
    mean = sum(rewards) / k
    for a, r in zip(adv, rewards):
        if len(a) > prefix_len:
            a[prefix_len] += mean - (mean * k - r) / (k - 1)
    return adv


def tree_token_advantages_naive(
    responses: list[list[int]],
    rewards: list[float],
    groups: list[int],
    prefix_lens: list[int] | None = None,
    values: str = "mean",
) -> list[torch.Tensor]:
    """The definition, row by row and position by position (the test twin of :func:`tree_token_advantages`)."""
    prefix_lens = prefix_lens or [0] * len(responses)

    def through(group: int, prefix: list[int], leave_out: int | None) -> list[float]:
        return [
            r for j, (tokens, r, g, given) in enumerate(zip(responses, rewards, groups, prefix_lens))
            if g == group and tokens[: len(prefix)] == prefix and len(tokens) >= len(prefix) and given <= len(prefix) and j != leave_out
        ]

    def value(i: int, prefix: list[int]) -> float:
        if values == "mean":
            rows = through(groups[i], prefix, None)
            return sum(rows) / len(rows)
        others = through(groups[i], prefix, i)
        return sum(others) / len(others) if others else rewards[i]

    return [
        torch.tensor([value(i, tokens[: t + 1]) - value(i, tokens[:t]) if t >= given else 0.0 for t in range(len(tokens))], dtype=torch.float32)
        for i, (tokens, given) in enumerate(zip(responses, prefix_lens))
    ]


def tree_node_counts_naive(responses: list[list[int]], groups: list[int], prefix_lens: list[int] | None = None) -> list[torch.Tensor]:
    """The test twin of :func:`tree_node_counts`."""
    prefix_lens = prefix_lens or [0] * len(responses)

    def count(group: int, prefix: list[int]) -> float:
        return float(sum(
            g == group and tokens[: len(prefix)] == prefix and given <= len(prefix) - 1
            for tokens, g, given in zip(responses, groups, prefix_lens)
        ))

    return [
        torch.tensor([count(g, tokens[: t + 1]) if t >= given else 1.0 for t in range(len(tokens))], dtype=torch.float32)
        for tokens, g, given in zip(responses, groups, prefix_lens)
    ]


# --- policy loss --------------------------------------------------------------------------------


def ppo_clip_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    adv_BT: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss (Schulman et al. 2017, eq. 7) with separate ranges below and above 1
    ("clip-higher", Yu et al. 2025, DAPO sec. 3.1):

        ratio = exp(logp - old_logp),  loss = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))

    Returns the loss and a 0/1 tensor marking tokens where the clipped branch was taken, both ``[B, T]``.
    """
    log_ratio_BT = (logp_BT - old_logp_BT).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio_BT = log_ratio_BT.exp()
    unclipped_BT = -adv_BT * ratio_BT
    clipped_BT = -adv_BT * ratio_BT.clamp(1 - clip_low, 1 + clip_high)
    return torch.maximum(unclipped_BT, clipped_BT), (clipped_BT > unclipped_BT).float()


# --- KL to a reference policy -------------------------------------------------------------------


def kl_k1(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """k1 = log p - log p_ref: unbiased for KL(p || p_ref) under samples of p, high variance, can be < 0
    (Schulman 2020, "Approximating KL Divergence")."""
    return logp_BT - ref_logp_BT


def kl_k3(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = p_ref / p: unbiased, always >= 0, low variance (Schulman 2020);
    the estimator GRPO uses (Shao et al. 2024, eq. 4)."""
    log_r_BT = (ref_logp_BT - logp_BT).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return log_r_BT.exp() - 1 - log_r_BT


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"k1": kl_k1, "k3": kl_k3}


# --- loss aggregation ---------------------------------------------------------------------------
# Each mode is written as per-token weights w, with the loss = sum(w * token_loss). Weights depend only on
# the masks and on one count (tokens, sequences or rows) that sets the denominator. Weights are computed
# once for a whole minibatch, so micro-batches (gradient accumulation) add up exactly to the minibatch's
# loss; under data parallelism ``count`` is the sum of every process's count (as verl's ``agg_loss`` uses
# global token counts), so the processes' losses add up to the loss of one process on the global batch.
#
# ``reference_B`` (default: every row) names the rows whose counts set the denominators. Extra samples
# (corrections, probes) outside it then *add* gradient at the scale of the original batch instead of
# diluting it ("additive" normalization); passing every row gives the diluting alternative.


def _reference(mask_BT: torch.Tensor, reference_B: torch.Tensor | None) -> torch.Tensor:
    return mask_BT if reference_B is None else mask_BT * reference_B[:, None]


def token_count(mask_BT: torch.Tensor, reference_B: torch.Tensor | None = None) -> torch.Tensor:
    """Response tokens of the reference rows: token_mean's denominator."""
    return _reference(mask_BT, reference_B).sum()


def sequence_count(mask_BT: torch.Tensor, reference_B: torch.Tensor | None = None) -> torch.Tensor:
    """Reference rows with at least one response token: seq_mean_token_mean's denominator."""
    return (_reference(mask_BT, reference_B).sum(-1) > 0).sum()


def row_count(mask_BT: torch.Tensor, reference_B: torch.Tensor | None = None) -> int:
    """Reference rows, with or without tokens: seq_mean_token_sum_norm's denominator (over norm_length)."""
    return mask_BT.shape[0] if reference_B is None else int(reference_B.sum())


def token_mean_weights(
    mask_BT: torch.Tensor, norm_length: int, reference_B: torch.Tensor | None = None, count: float | None = None
) -> torch.Tensor:
    """Mean over every response token of the batch (DAPO's token-level loss, Yu et al. 2025 sec. 3.3):
    w = mask / n_tokens."""
    n_tokens = token_count(mask_BT, reference_B) if count is None else torch.as_tensor(count, dtype=mask_BT.dtype)
    return mask_BT / n_tokens.clamp(min=1)


def seq_mean_token_mean_weights(
    mask_BT: torch.Tensor, norm_length: int, reference_B: torch.Tensor | None = None, count: float | None = None
) -> torch.Tensor:
    """Mean over sequences of each sequence's token mean (the original GRPO objective, Shao et al. 2024
    eq. 3): w = mask / (len_b * n_seqs). Long sequences weigh as much as short ones, so each of their
    tokens weighs less. Sequences without tokens are not counted."""
    lengths_B = mask_BT.sum(-1, keepdim=True)
    n_seqs = sequence_count(mask_BT, reference_B) if count is None else torch.as_tensor(count, dtype=mask_BT.dtype)
    return mask_BT / (lengths_B.clamp(min=1) * n_seqs.clamp(min=1))


def seq_mean_token_sum_norm_weights(
    mask_BT: torch.Tensor, norm_length: int, reference_B: torch.Tensor | None = None, count: float | None = None
) -> torch.Tensor:
    """Each sequence's token sum over a constant length, averaged over sequences (Dr. GRPO, Liu et al.
    2025 sec. 3.1): w = mask / (n_seqs * norm_length), no length bias. norm_length is usually
    max_new_tokens."""
    n_seqs = row_count(mask_BT, reference_B) if count is None else count
    return mask_BT / max(n_seqs * norm_length, 1)


LOSS_AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "token_mean": token_mean_weights,
    "seq_mean_token_mean": seq_mean_token_mean_weights,
    "seq_mean_token_sum_norm": seq_mean_token_sum_norm_weights,
}
LOSS_COUNTS: dict[str, Callable[..., torch.Tensor | int]] = {
    "token_mean": token_count,
    "seq_mean_token_mean": sequence_count,
    "seq_mean_token_sum_norm": row_count,
}
"""The count behind each aggregation's denominator, summed over processes under data parallelism."""


# --- metrics --------------------------------------------------------------------------------------


def entropy(log_probs_BTV: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution, ``[B, T]``, from its log-probabilities ``[B, T, V]``.
    A metric only: it takes no part in the loss."""
    return -(log_probs_BTV.exp() * log_probs_BTV).sum(-1)
