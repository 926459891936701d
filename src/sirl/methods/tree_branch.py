"""tree_branch: tree credit, plus branch groups at each chosen failure's decision point (docs/method.md,
"Credit").

The decision point of a failure is the step after its longest prefix that a verified sibling shares: where
it left every success of its group, found without a probe. From the prefix just before it, K
continuations (``branch_samples``) are sampled; they are scored against each other, leave-one-out
(sirl.credit.tree.branch_token_advantages), so a verified one is credited for repairing the failure and a failed
one for repeating it. A verified branch is the corrected trajectory and its prefix goes to the repair
buffer. The group's own rows keep their tree credit (sirl.methods.tree), which stays zero-sum. Which
failures get branches under the per-step budget (``max_localizations``) is ``failure_choice``
(sirl.credit.divergence.choose_failures), si's rule.
"""

from __future__ import annotations

from collections.abc import Sequence


from sirl.credit.divergence import divergence_step
from sirl.credit.tree import branch_token_advantages
from sirl.internalize.localize import PrefixBook, prefix_ids, step_ends
from sirl.methods.base import Method, MethodContext, register
from sirl.methods.common import choose_failures, failure_rows, value_scales
from sirl.methods.settings import TreeBranchSettings
from sirl.methods.tree import tree_credit_of
from sirl.schema import BRANCH_SOLVE_RATE, LOC_ACCURACY, LOC_LOCALIZED_FRAC, LOC_PROBES_PER_FAILURE, REPAIR_ADDED
from sirl.types import Credit, Localization, LocalizedFailure, Trajectory


def tree_branch_credit(rollouts: Sequence[Trajectory], context: MethodContext) -> Credit:
    config: TreeBranchSettings = context.settings
    estimator = context.outcome_advantage
    base = tree_credit_of(rollouts, config, estimator)
    scales = value_scales(rollouts, estimator)
    book = PrefixBook(rollouts)
    chosen_rows, metrics = choose_failures(book, rollouts, config.max_localizations, config.failure_choice, context.rng)
    decisions = [divergence_step(book.tree, i, step_ends(rollouts[i])) for i in chosen_rows]  # where each left every success
    requests = [(rollouts[i], c) for i, c in zip(chosen_rows, decisions)]
    branches = context.sampler.probe(requests, config.branch_samples) if requests else []
    rows, advantages, kinds = list(base.rows), list(base.token_advantages), ["sample"] * len(base.rows)
    localizations, good_prefixes = [], []
    for n, (row, c, group) in enumerate(zip(chosen_rows, decisions, branches)):
        failure = rollouts[row]
        scale = scales[failure.group]
        adv = branch_token_advantages([b.response_ids for b in group], [b.reward for b in group], group[0].prefix_len)
        first = len(rows)
        rows += group
        advantages += [a * scale for a in adv]
        kinds += ["correction" if b.reward >= 1 else "branch" for b in group]
        verified = [first + j for j, b in enumerate(group) if b.reward >= 1]
        if verified:
            good_prefixes.append((failure, prefix_ids(failure, c)))
        localizations.append(LocalizedFailure(row, Localization(n, error_step=c, probes=len(group)), verified[0] if verified else None))
    n_branches = sum(len(g) for g in branches)
    metrics.update({
        LOC_LOCALIZED_FRAC: len(chosen_rows) / max(len(failure_rows(rollouts)), 1),
        LOC_PROBES_PER_FAILURE: n_branches / max(len(chosen_rows), 1),
        BRANCH_SOLVE_RATE: sum(b.reward >= 1 for g in branches for b in g) / max(n_branches, 1),
        REPAIR_ADDED: len(good_prefixes),
        **base.metrics,
    })
    if context.task.has_ground_truth and chosen_rows:  # how often the decision point is the first wrong step
        truth = [context.task.first_error(rollouts[i].problem, rollouts[i].text) for i in chosen_rows]
        metrics[LOC_ACCURACY] = sum(c == e for c, e in zip(decisions, truth)) / len(chosen_rows)
    credit = Credit(
        rows=tuple(rows), token_advantages=tuple(advantages), reference=(True,) * len(rollouts) + (False,) * n_branches,
        metrics=metrics, localizations=tuple(localizations), row_kinds=tuple(kinds),
    )
    context.memory.remember(context.step, rollouts, credit, good_prefixes)
    return credit


register(Method(
    "tree_branch", "tree credit plus K leave-one-out continuations from each chosen failure's decision point",
    tree_branch_credit, uses_repair=True,
))
