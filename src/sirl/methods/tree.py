"""tree: zero-sum credit from the group's own prefix tree, no probes (docs/method.md, "Credit").

Over the trie of the step's rows of one prompt, a token's advantage is V(child) - V(parent), the change in
the group's success rate that choosing it made (sirl.algos.tree_token_advantages), put on the outcome
advantage's scale (divided by the group std under grpo's estimator). Tokens every member shares get 0;
along a row the advantages add up to the outcome advantage itself, so GRPO's negative signal is kept in
full and moved onto the tokens where the group's paths part. ``method.tree_outcome_mix`` mixes in the
plain outcome advantage, ``method.tree_values`` picks mean or leave-one-out node values, and
``method.tree_weighting`` divides a token's advantage by the rows that share it (lambda-GRPO).
"""

from __future__ import annotations

from collections.abc import Sequence

from sirl import algos
from sirl.config import MethodConfig
from sirl.methods.base import Method, MethodContext, register
from sirl.methods.common import StepEvidence
from sirl.types import Credit, Trajectory


def tree_credit(rollouts: Sequence[Trajectory], context: MethodContext) -> Credit:
    return tree_credit_of(StepEvidence.of(rollouts, context.config.algo.outcome_advantage), context.config.method)


def tree_credit_of(evidence: StepEvidence, config: MethodConfig) -> Credit:
    """Tree credit of the step's rollouts (``evidence.rollouts``) with ``config.tree_values``, mixed with
    ``config.tree_outcome_mix`` of the outcome advantage, each token divided by its node's row count under
    ``config.tree_weighting=node_count``."""
    rollouts = evidence.rollouts
    mix = config.tree_outcome_mix
    responses, groups, given = [t.response_ids for t in rollouts], [t.group for t in rollouts], [t.prefix_len for t in rollouts]
    tree = algos.tree_token_advantages(responses, [t.reward for t in rollouts], groups, given, values=config.tree_values)
    outcome = evidence.outcome_token_advantages()
    token_adv = tuple((1 - mix) * a * evidence.scales[t.group] + mix * o for t, a, o in zip(rollouts, tree, outcome))
    if config.tree_weighting == "node_count":
        token_adv = tuple(a / n for a, n in zip(token_adv, algos.tree_node_counts(responses, groups, given)))
    shared = sum(int((a == 0).sum()) - t.prefix_len for t, a in zip(rollouts, tree))
    trained = sum(len(t.response_ids) - t.prefix_len for t in rollouts)
    return Credit(
        rows=tuple(rollouts),
        token_advantages=token_adv,
        reference=(True,) * len(rollouts),
        # trained tokens whose tree credit is 0: V did not change there (shared by every row through the
        # node, or on a branch of one)
        metrics={"tree/zero_frac": shared / max(trained, 1)},
    )


register(Method("tree", "zero-sum credit V(child) - V(parent) over the group's prefix tree, no probes", tree_credit))
