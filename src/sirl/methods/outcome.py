"""Outcome-only methods: each response's group-relative advantage on every one of its tokens.

grpo (Shao et al. 2024), dr_grpo (Liu et al. 2025) and rloo (Ahmadian et al. 2024) differ only in the
advantage estimator (sirl.credit.outcome.ADVANTAGES).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

from sirl.methods.base import Method, MethodContext, register
from sirl.methods.common import outcome_advantages
from sirl.types import Credit, Trajectory


def outcome_credit(rollouts: Sequence[Trajectory], context: MethodContext | None, *, estimator: str) -> Credit:
    adv_B = outcome_advantages(rollouts, estimator)
    return Credit(
        rows=tuple(rollouts),
        token_advantages=tuple(torch.full((len(t.response_ids),), float(a)) for t, a in zip(rollouts, adv_B)),
        reference=(True,) * len(rollouts),
    )


register(Method("grpo", "outcome advantages (r - mean) / std over the group", partial(outcome_credit, estimator="grpo"), min_group_size=2))
register(Method("dr_grpo", "outcome advantages r - mean over the group", partial(outcome_credit, estimator="dr_grpo"), min_group_size=2))
register(Method("rloo", "outcome advantages r - mean of the group's other members", partial(outcome_credit, estimator="rloo"), min_group_size=2))
