"""The credit of a continuation: a row sampled from a given prefix (a probe, a correction, a reset)
against the value of that prefix (docs/method.md, "Credit": probes join the batch with R - V(prefix)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sirl.credit.prefix_tree import PrefixTree


def continuation_advantages(
    tree: PrefixTree, rows: Sequence[int], scales: dict[int, float], leave_out: Sequence[Sequence[int]] | None = None,
) -> list[torch.Tensor]:
    """Per row of ``tree`` in ``rows``, float32 ``[T]`` filled with (R - V(prefix)) * scale, where the prefix
    is the row's given one (its first ``prefix_len`` tokens, context that the loss masks), V the success rate
    of the rows free through it and scale ``scales[group]``.

    With ``leave_out`` (per row, the rows to leave out of its baseline: itself and the failure it was drawn
    for), V counts only the others: the failure was picked for failing, and with one probe a baseline
    holding the probe gives a failed probe 0 by construction; a row with no other free row through its
    prefix then gets 0. Without it, a prefix that no free row passes has V = 0."""
    out = []
    for i, row in enumerate(rows):
        node = tree.paths[row][tree.prefix_lens[row]]
        reward = tree.rewards[row]
        if leave_out is None:
            value, _ = tree.value(node)
            adv = reward - value
        else:
            value, n = tree.value_without(node, leave_out[i])
            adv = reward - value if n else 0.0
        out.append(torch.full((len(tree.paths[row]) - 1,), adv * scales[tree.groups[row]]))
    return out
