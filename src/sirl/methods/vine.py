"""vine: Monte-Carlo step values (VinePPO, Kazemnejad et al. 2024): K probes at every inner step boundary
of every trajectory; step k's advantage is V(k) - V(k-1), where V(0) comes from the group and V(n) is the
trajectory's outcome. The most thorough and most expensive use of probes, a baseline for si's economy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sirl.credit.step_advantages import broadcast_steps_to_tokens, step_index, value_difference_step_advantages
from sirl.internalize.localize import PrefixBook, prefix_ids, step_ends
from sirl.methods.base import Method, MethodContext, register
from sirl.methods.common import value_scales
from sirl.schema import LOC_PROBES_PER_TRAJECTORY
from sirl.types import Credit, Trajectory


def vine_credit(rollouts: Sequence[Trajectory], context: MethodContext) -> Credit:
    scales = value_scales(rollouts, context.outcome_advantage)
    book = PrefixBook(rollouts)
    # Every inner step boundary past the given prefix.
    requests = [(t, k) for t in rollouts for k in range(1, len(t.step_spans)) if len(prefix_ids(t, k)) > t.prefix_len]
    found = context.sampler.probe(requests, context.settings.probes) if requests else []
    for probes in found:
        book.add(probes)
    token_adv = []
    for t in rollouts:
        n = len(t.step_spans)
        values = torch.zeros(1, n + 1)
        known = torch.zeros(1, n + 1, dtype=torch.bool)
        for k in range(n + 1):
            prefix = prefix_ids(t, k)
            if k == n:
                values[0, k], known[0, k] = t.reward, True
            elif len(prefix) >= t.prefix_len:
                value, count = book.value(t.group, prefix)
                values[0, k], known[0, k] = value, count > 0
        step_adv = value_difference_step_advantages(values, known) * scales[t.group]
        token_adv.append(broadcast_steps_to_tokens(step_adv, step_index(step_ends(t), len(t.response_ids), t.prefix_len)[None])[0])
    return Credit(
        rows=tuple(rollouts),
        token_advantages=tuple(token_adv),
        reference=(True,) * len(rollouts),
        metrics={LOC_PROBES_PER_TRAJECTORY: sum(len(p) for p in found) / max(len(rollouts), 1)},
    )


register(Method("vine", "K probes at every step of every trajectory, A(step) = V(k) - V(k-1) (baseline)", vine_credit))
