"""random_reset: si's harness with the reset step drawn at random instead of localized, the baseline that
isolates what localization buys (docs/method.md, "Baselines").

Each chosen failure gets K probes from the prefix through a uniformly random number of its steps; the
probes join the batch with R - V(prefix), the failure keeps its outcome advantage, and a prefix from which
a probe verified goes to the repair buffer. With ``blind_resets``, the first failure of each group
with no success gets a branch group from a random reset point too: the baseline of si_internal's resets
from its own verdicts on the same failures (sirl.methods.common.blind_resets).
"""

from __future__ import annotations

from collections.abc import Sequence

from sirl.credit.continuations import continuation_advantages
from sirl.internalize.localize import PrefixBook, prefix_ids
from sirl.internalize.repair import RepairEntry
from sirl.methods.base import Method, MethodContext, register
from sirl.methods.common import blind_resets, choose_failures, outcome_token_advantages, value_scales, with_blind_resets
from sirl.methods.settings import RandomResetSettings
from sirl.schema import LOC_LOCALIZED_FRAC, LOC_PROBES_PER_FAILURE, REPAIR_ADDED
from sirl.types import Credit, Trajectory


def random_reset_credit(rollouts: Sequence[Trajectory], context: MethodContext) -> Credit:
    config: RandomResetSettings = context.settings
    estimator = context.outcome_advantage
    book = PrefixBook(rollouts)
    chosen_rows, metrics = choose_failures(book, rollouts, config.max_localizations, config.failure_choice, context.rng)
    requests = [(rollouts[i], context.rng.randrange(len(rollouts[i].step_spans))) for i in chosen_rows]
    found = context.sampler.probe(requests, config.probes) if requests else []
    good_prefixes = []
    for (t, k), probes in zip(requests, found):
        book.add(probes)
        if any(p.reward >= 1 for p in probes):
            good_prefixes.append((t, prefix_ids(t, k)))
    probes = [p for group in found for p in group]
    kept = probes if config.train_on_probes else [p for p in probes if p.reward >= 1]
    metrics[LOC_LOCALIZED_FRAC] = 0.0
    metrics[LOC_PROBES_PER_FAILURE] = len(probes) / max(len(chosen_rows), 1)
    metrics[REPAIR_ADDED] = sum(p.reward >= 1 for p in kept)
    credit = Credit(
        rows=(*rollouts, *kept),
        token_advantages=(
            *outcome_token_advantages(rollouts, estimator),
            *continuation_advantages(book.tree, [book.row(p) for p in kept], value_scales(rollouts, estimator)),
        ),
        reference=(True,) * len(rollouts) + (False,) * len(kept),
        metrics=metrics,
        row_kinds=("sample",) * len(rollouts) + ("probe",) * len(kept),
    )
    context.memory.remember(context.step, rollouts, credit, good_prefixes)
    if config.blind_resets:
        task = context.task
        blind = blind_resets(
            rollouts, config.blind_resets, config.branch_samples,
            lambda failures: [context.rng.randrange(len(t.step_spans)) for t in failures], context.sampler.probe,
            (lambda t: task.first_error(t.problem, t.text)) if task.has_ground_truth else None,
        )
        for failure, prefix in blind.good_prefixes:
            context.memory.repair.add(RepairEntry(failure.problem, prefix, context.step))
        credit = with_blind_resets(credit, blind)
    return credit


register(Method("random_reset", "si's resets at a random step instead of a localized one (baseline)", random_reset_credit, uses_repair=True))
