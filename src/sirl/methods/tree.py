"""tree: zero-sum credit from the group's own prefix tree, no probes (docs/method.md, "Credit").

Over the trie of the step's rows of one prompt, a token's advantage is V(child) - V(parent), the change in
the group's success rate that choosing it made (sirl.credit.tree_credit), put on the outcome advantage's
scale (divided by the group std under grpo's estimator). Tokens every member shares get 0; along a row the
advantages add up to the outcome advantage itself, so GRPO's negative signal is kept in full and moved
onto the tokens where the group's paths part. Its settings (method.tree): ``outcome_mix`` mixes in the
plain outcome advantage, ``values`` picks mean or leave-one-out node values, and ``weighting`` divides a
token's advantage by the rows that share it (lambda-GRPO).
"""

from __future__ import annotations

from collections.abc import Sequence

from sirl import credit as core
from sirl.methods.base import Method, MethodContext, register
from sirl.methods.common import TokenRows
from sirl.methods.settings import TreeCredit
from sirl.schema import TREE_ZERO_FRAC
from sirl.types import Credit, Trajectory


def tree_credit(rollouts: Sequence[Trajectory], context: MethodContext) -> Credit:
    return tree_credit_of(rollouts, context.settings, context.outcome_advantage)


def tree_credit_of(rollouts: Sequence[Trajectory], config: TreeCredit, estimator: str) -> Credit:
    """Tree credit of the step's rollouts with ``config.values``, mixed with ``config.outcome_mix`` of the
    outcome advantage, each token divided by its node's row count under ``config.weighting=node_count``."""
    rows = TokenRows.of(rollouts)
    found = core.tree_credit(
        rows.responses, rows.rewards, rows.groups, prefix_lens=rows.prefix_lens, estimator=estimator, values=config.values,
        weighting=config.weighting, outcome_mix=config.outcome_mix,
    )
    return Credit(
        rows=tuple(rollouts),
        token_advantages=found.token_advantages,
        reference=(True,) * len(rollouts),
        # trained tokens whose tree credit is 0: V did not change there (shared by every row through the
        # node, or on a branch of one)
        metrics={TREE_ZERO_FRAC: found.metrics["credit/tree_zero_frac"]},
    )


register(Method("tree", "zero-sum credit V(child) - V(parent) over the group's prefix tree, no probes", tree_credit, min_group_size=2))
