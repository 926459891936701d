"""si, the method (docs/method.md): localize failed trajectories, correct them from the good prefix, reuse
the good prefixes, and credit the step that went wrong.

Per step: the most informative failures are localized by the oracle search over their prefixes
(sirl.internalize.localize; free evidence from successful siblings first); each localized failure's
error step is penalized by the value it destroyed, its good prefix gets 0; the probes drawn on the way
(the corrections among them: verified continuations of a good prefix) join the batch with R - V(prefix)
on their own tokens; successes and unlocalized failures keep the outcome advantage. Good prefixes go to the
repair buffer, from which later steps continue on-policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sirl.config import ConfigError, ExperimentConfig
from sirl.internalize.credit import (
    SearchSettings, divergence_localize, first_difference_from_success, ground_truth_localize, localized_token_advantages, probe_credit,
    search,
)
from sirl.internalize.localize import PrefixBook, prefix_ids
from sirl.methods.base import Method, MethodContext, register
from sirl.methods.common import RecordingProbe, StepEvidence
from sirl.tasks.base import Task
from sirl.types import Credit, Localization, LocalizedFailure, Trajectory

Localizer = Callable[[list[Trajectory], PrefixBook, RecordingProbe, dict[str, float]], list[Localization]]
"""(failures, the step's book, the probe sampler, metrics to add to) -> one localization per failure."""


def search_settings(config: ExperimentConfig) -> SearchSettings:
    method, internal = config.method, config.internalize
    return SearchSettings(
        probes=method.probes, free_evidence=method.free_evidence, first_check=method.first_check, drop=method.drop,
        settle_probes=method.settle_probes, confirm_probes=internal.confirm_probes, reuse_samples=internal.reuse_samples,
    )


def localized_credit(rollouts: Sequence[Trajectory], context: MethodContext, localizer: Localizer) -> tuple[Credit, list[tuple[Trajectory, list[int]]]]:
    """Credit of si and si_internal, which differ only in ``localizer``; also returns the good prefixes
    (failure, prefix ids) found."""
    config = context.config.method
    evidence = StepEvidence.of(rollouts, context.config.algo.outcome_advantage)
    token_adv = evidence.outcome_token_advantages()
    chosen_rows, metrics = evidence.choose_failures(config.max_localizations, config.failure_choice, context.rng)
    chosen = [rollouts[i] for i in chosen_rows]
    probe = RecordingProbe(context.sampler.probe)
    localizations = localizer(chosen, evidence.book, probe, metrics)
    if config.correction_samples and chosen:  # a small group of its own for each good prefix
        for probes in probe([(t, loc.error_step) for t, loc in zip(chosen, localizations)], config.correction_samples):
            evidence.book.add(probes)
    drawn = probe.drawn
    good_prefixes, correction_positions, per_failure = [], [], []
    for row, t, loc in zip(chosen_rows, chosen, localizations):
        good = prefix_ids(t, loc.error_step)
        good_prefixes.append((t, good))
        token_adv[row] = localized_token_advantages(
            t, loc, float(evidence.outcome_B[row]), scale=evidence.scales[t.group], error_scale=config.error_scale, post_error=config.post_error,
            error_from_token=first_difference_from_success(t, evidence.book) if config.error_span == "first_difference" else 0,
        )
        # The corrections: verified continuations of the good prefix (probes, or sampled on purpose).
        mine = [
            j for j, p in enumerate(drawn)
            if p.reward >= 1 and p.group == t.group and p.prefix_len == len(good) and p.response_ids[: len(good)] == good
        ]
        correction_positions += mine
        per_failure.append((row, loc, mine[0] if mine else None))
    corrections = set(correction_positions)
    kept = list(range(len(drawn))) if config.train_on_probes else list(dict.fromkeys(correction_positions))
    row_of = {j: len(rollouts) + n for n, j in enumerate(kept)}
    metrics["loc/localized_frac"] = len(localizations) / max(len(evidence.failure_rows()), 1)
    metrics["loc/probes_per_failure"] = sum(loc.probes for loc in localizations) / max(len(localizations), 1)
    metrics["repair/added"] = len(corrections)
    if context.task.has_ground_truth and localizations:
        truth = [context.task.first_error(t.problem, t.text) for t in chosen]
        metrics["loc/accuracy"] = sum(loc.error_step == e for loc, e in zip(localizations, truth)) / len(localizations)
    extra = [drawn[j] for j in kept]
    leave_out = [probe.drawn_for[j] for j in kept] if config.probe_baseline == "leave_out" else None
    credit = Credit(
        rows=(*rollouts, *extra),
        token_advantages=(*token_adv, *probe_credit(extra, evidence.book, evidence.scales, leave_out)),
        reference=(True,) * len(rollouts) + (False,) * len(extra),
        metrics=metrics,
        localizations=tuple(LocalizedFailure(row, loc, row_of[c] if c is not None else None) for row, loc, c in per_failure),
        row_kinds=("sample",) * len(rollouts) + tuple("correction" if j in corrections else "probe" for j in kept),
    )
    return credit, good_prefixes


def si_credit(rollouts: Sequence[Trajectory], context: MethodContext) -> Credit:
    settings = search_settings(context.config)
    task = context.task
    localizers: dict[str, Localizer] = {  # method.localizer
        "search": lambda failures, book, probe, metrics: search(failures, book, probe, settings),
        "divergence": lambda failures, book, probe, metrics: divergence_localize(failures, book),
        "ground_truth": lambda failures, book, probe, metrics: ground_truth_localize(
            failures, book, probe, settings.probes, lambda t: task.first_error(t.problem, t.text)
        ),
    }
    credit, good_prefixes = localized_credit(rollouts, context, localizers[context.config.method.localizer])
    context.memory.remember(context.step, rollouts, credit, good_prefixes)
    return credit


def check_localizer(config: ExperimentConfig, task: Task) -> None:
    if config.method.localizer == "ground_truth" and not task.has_ground_truth:
        raise ConfigError(
            f"method.localizer=ground_truth needs a task with ground truth first-error steps; task {config.task.name} has none; "
            "use method.localizer=search"
        )


register(Method(
    "si", "localize failures by probing prefixes, correct and reuse them, credit the error step", si_credit,
    uses_repair=True, check=check_localizer,
))
