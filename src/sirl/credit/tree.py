"""Tree credit: a token's advantage is V(child) - V(parent) over the group's prefix tree.

Every row sampled from one prompt in a step (the group, and any probes or branches) shares its prefixes
with the others: together they form a trie over token ids (sirl.credit.prefix_tree). A node's value is
the mean outcome of the rows free through it, and a token's advantage is V(child) - V(parent): the change
in the chance of success that choosing this token made (the prefix-tree credit of lambda-GRPO,
arXiv 2509.21154, and TreeAdv, arXiv 2601.03703). Tokens every row shares get 0; along one row the
advantages telescope to R - V(root), the outcome advantage's numerator; and over the rows through any node
where none ends, the advantages of the next token sum to 0, so the credit is zero-sum wherever a choice
was made.

Variants: leave-one-out node values, and lambda-GRPO's division of each token's loss by the number of rows
that share it. TreeAdv's own redistribution (each token the mean outcome advantage of the rows below its
node) is not one: on a node n rows share, the n rows' coefficients sum to n times their mean advantage,
which is what GRPO's sum over them is already.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sirl.credit.prefix_tree import PrefixTree

TREE_VALUES = ("mean", "leave_one_out")


def tree_token_advantages(
    responses: Sequence[Sequence[int]],
    rewards: Sequence[float],
    groups: Sequence[int],
    prefix_lens: Sequence[int] | None = None,
    values: str = "mean",
) -> list[torch.Tensor]:
    """Per row, float32 ``[len(responses[i])]`` advantages V(node after token t) - V(node before it); 0 on
    the first ``prefix_lens[i]`` tokens (given, not sampled). Rows are tried only against rows of the same
    group. A row given a prefix of L tokens was forced through its first L nodes, so it counts in the value
    of a node at depth d only when L <= d.

    ``values``: "mean", V(node) the mean reward of the rows free through it; "leave_one_out", for row i
    the mean over the *other* rows free through the node, and R_i where none is (a node only i reached).
    Along a row the leave-one-out advantages telescope to R_i - mean_{j != i} R_j, the RLOO score (Kool et
    al. 2019), so a row is never its own baseline: a failure parting from k successes of n rows is pushed
    down by the others' rate k / (n - 1), not by k / n.

    One pass builds the tree and one reads it: O(total tokens). Naive equivalent: for each row and
    position, the mean reward of the rows of the group that share the prefix and were free there
    (:func:`tree_token_advantages_naive`; tests hold them equal)."""
    if values not in TREE_VALUES:
        raise ValueError(f"values must be one of {TREE_VALUES}, got {values!r}")
    tree = PrefixTree.build(responses, rewards, groups, prefix_lens)
    out = []
    for path, reward, given in zip(tree.paths, tree.rewards, tree.prefix_lens):
        if values == "mean":
            v = [tree.mean_reward(n) for n in path]
        else:  # this row is free at depth >= given, so it is in the count there: take it out
            v = [(tree.free_reward[n] - reward) / (tree.free[n] - 1) if tree.free[n] > 1 else reward for n in path]
        out.append(torch.tensor([v[t + 1] - v[t] if t >= given else 0.0 for t in range(len(path) - 1)], dtype=torch.float32))
    return out


def tree_node_counts(responses: Sequence[Sequence[int]], groups: Sequence[int], prefix_lens: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Per row and sampled token, the number of rows of its group that sampled the same token in the same
    context (through the node the token leads to, free before it). lambda-GRPO (Sullivan 2025,
    arXiv 2509.21154, sec. 4) divides each token's loss by this count, so that a step many rows share is
    not trained once per row; given tokens get 1 (they carry no advantage). Naive equivalent: count the
    rows whose tokens match up to and including t (:func:`tree_node_counts_naive`)."""
    tree = PrefixTree.build(responses, [0.0] * len(responses), groups, prefix_lens)
    return [
        torch.tensor([float(tree.sampled[path[t + 1]]) if t >= given else 1.0 for t in range(len(path) - 1)], dtype=torch.float32)
        for path, given in zip(tree.paths, tree.prefix_lens)
    ]


def branch_token_advantages(responses: Sequence[Sequence[int]], rewards: Sequence[float], prefix_len: int) -> list[torch.Tensor]:
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
    responses: Sequence[Sequence[int]],
    rewards: Sequence[float],
    groups: Sequence[int],
    prefix_lens: Sequence[int] | None = None,
    values: str = "mean",
) -> list[torch.Tensor]:
    """The definition, row by row and position by position (the test twin of :func:`tree_token_advantages`)."""
    prefix_lens = prefix_lens or [0] * len(responses)

    def through(group: int, prefix: Sequence[int], leave_out: int | None) -> list[float]:
        return [
            r for j, (tokens, r, g, given) in enumerate(zip(responses, rewards, groups, prefix_lens))
            if g == group and list(tokens[: len(prefix)]) == list(prefix) and len(tokens) >= len(prefix) and given <= len(prefix)
            and j != leave_out
        ]

    def value(i: int, prefix: Sequence[int]) -> float:
        if values == "mean":
            rows = through(groups[i], prefix, None)
            return sum(rows) / len(rows)
        others = through(groups[i], prefix, i)
        return sum(others) / len(others) if others else rewards[i]

    return [
        torch.tensor([value(i, tokens[: t + 1]) - value(i, tokens[:t]) if t >= given else 0.0 for t in range(len(tokens))], dtype=torch.float32)
        for i, (tokens, given) in enumerate(zip(responses, prefix_lens))
    ]


def tree_node_counts_naive(responses: Sequence[Sequence[int]], groups: Sequence[int], prefix_lens: Sequence[int] | None = None) -> list[torch.Tensor]:
    """The test twin of :func:`tree_node_counts`."""
    prefix_lens = prefix_lens or [0] * len(responses)

    def count(group: int, prefix: Sequence[int]) -> float:
        return float(sum(
            g == group and list(tokens[: len(prefix)]) == list(prefix) and given <= len(prefix) - 1
            for tokens, g, given in zip(responses, groups, prefix_lens)
        ))

    return [
        torch.tensor([count(g, tokens[: t + 1]) if t >= given else 1.0 for t in range(len(tokens))], dtype=torch.float32)
        for tokens, g, given in zip(responses, groups, prefix_lens)
    ]
