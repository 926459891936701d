"""si, the method (docs/method.md): localize failed trajectories, correct them from the good prefix, reuse
the good prefixes, and credit the step that went wrong.

Per step: the most informative failures are localized, by default at their divergence step (the step
where a failure left every success of its group, free: no probe; ``method.si.localizer=divergence``), or
by the oracle search over their prefixes (``search``: sirl.internalize.localize, free evidence from
successful siblings first, K probes a checked prefix); each localized failure's
error step is penalized by the value it destroyed, its good prefix gets 0; the probes drawn on the way
(the corrections among them: verified continuations of a good prefix) join the batch with R - V(prefix)
on their own tokens; successes and unlocalized failures keep the outcome advantage. Good prefixes go to the
repair buffer, from which later steps continue on-policy. The credit's arithmetic is the credit core's
(sirl.credit); with the divergence localizer the sampled rows get exactly sirl.credit.divergence_credit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sirl.config import ConfigError, ExperimentConfig
from sirl.credit.continuations import continuation_advantages
from sirl.credit.divergence import localized_token_advantages
from sirl.internalize.credit import SearchSettings, divergence_localize, ground_truth_localize, search
from sirl.internalize.localize import PrefixBook, prefix_ids, step_ends
from sirl.methods.base import Method, MethodContext, register
from sirl.methods.common import RecordingProbe, choose_failures, failure_rows, outcome_advantages, value_scales
from sirl.methods.settings import SiInternalSettings, SiSettings
from sirl.schema import LOC_ACCURACY, LOC_LOCALIZED_FRAC, LOC_PROBES_PER_FAILURE, REPAIR_ADDED
from sirl.tasks.base import Task
from sirl.types import Credit, Localization, LocalizedFailure, Trajectory

Localizer = Callable[[list[Trajectory], PrefixBook, RecordingProbe, dict[str, float]], list[Localization]]
"""(failures, the step's book, the probe sampler, metrics to add to) -> one localization per failure."""


def search_settings(settings: SiSettings | SiInternalSettings) -> SearchSettings:
    """The search knobs of si's or si_internal's settings; the confirmation knobs are si_internal's (si's
    search confirms no proposal)."""
    confirm = {}
    if isinstance(settings, SiInternalSettings):
        confirm = {"confirm_probes": settings.confirm_probes, "reuse_samples": settings.reuse_samples}
    return SearchSettings(
        probes=settings.probes, free_evidence=settings.free_evidence, first_check=settings.first_check, drop=settings.drop,
        settle_probes=settings.settle_probes, **confirm,
    )


def localized_credit(rollouts: Sequence[Trajectory], context: MethodContext, localizer: Localizer) -> tuple[Credit, list[tuple[Trajectory, list[int]]]]:
    """Credit of si and si_internal, which differ only in ``localizer``; also returns the good prefixes
    (failure, prefix ids) found. The arithmetic is the credit core's (sirl.credit); this is its order."""
    config: SiSettings | SiInternalSettings = context.settings
    estimator = context.outcome_advantage

    # 1. Every sampled row starts with its group-relative outcome advantage on every token.
    outcome_B = outcome_advantages(rollouts, estimator)
    token_adv = [torch.full((len(t.response_ids),), float(a)) for t, a in zip(rollouts, outcome_B)]
    scales = value_scales(rollouts, estimator)  # puts value differences on the outcome advantages' scale

    # 2. The group's prefix tree (its rows: the rollouts, then every probe drawn) and the failures to localize.
    book = PrefixBook(rollouts)
    chosen_rows, metrics = choose_failures(book, rollouts, config.max_localizations, config.failure_choice, context.rng)
    chosen = [rollouts[i] for i in chosen_rows]

    # 3. Localize them; the probes drawn on the way join the tree. Optionally a small group of corrections
    #    of its own from each good prefix.
    probe = RecordingProbe(context.sampler.probe)
    localizations = localizer(chosen, book, probe, metrics)
    if config.correction_samples and chosen:
        for probes in probe([(t, loc.error_step) for t, loc in zip(chosen, localizations)], config.correction_samples):
            book.add(probes)
    drawn = probe.drawn

    # 4. Each localized failure: 0 on its good prefix, the value it destroyed on its error step (from the
    #    first token where it left every success under error_span=first_difference), then 0 or its outcome.
    good_prefixes, correction_positions, per_failure = [], [], []
    for row, t, loc in zip(chosen_rows, chosen, localizations):
        good = prefix_ids(t, loc.error_step)
        good_prefixes.append((t, good))
        token_adv[row] = localized_token_advantages(
            step_ends(t), t.prefix_len, loc.error_step, loc.value_before, loc.value_after, float(outcome_B[row]),
            scale=scales[t.group], error_scale=config.error_scale, post_error=config.post_error,
            error_from_token=book.tree.shared_with_success(row) if config.error_span == "first_difference" else 0,
        )
        # The corrections: verified continuations of the good prefix (probes, or sampled on purpose).
        mine = [
            j for j, p in enumerate(drawn)
            if p.reward >= 1 and p.group == t.group and p.prefix_len == len(good) and p.response_ids[: len(good)] == good
        ]
        correction_positions += mine
        per_failure.append((row, loc, mine[0] if mine else None))

    # 5. The probes kept for training (or only the corrections) join the batch with R - V(prefix) on their
    #    own tokens; under probe_baseline=leave_out V leaves out the probe and the failure it was drawn for.
    corrections = set(correction_positions)
    kept = list(range(len(drawn))) if config.train_on_probes else list(dict.fromkeys(correction_positions))
    extra = [drawn[j] for j in kept]
    extra_rows = [book.row(p) for p in extra]
    leave_out = [book.rows_of([drawn[j], probe.drawn_for[j]]) for j in kept] if config.probe_baseline == "leave_out" else None
    row_of = {j: len(rollouts) + n for n, j in enumerate(kept)}

    metrics[LOC_LOCALIZED_FRAC] = len(localizations) / max(len(failure_rows(rollouts)), 1)
    metrics[LOC_PROBES_PER_FAILURE] = sum(loc.probes for loc in localizations) / max(len(localizations), 1)
    metrics[REPAIR_ADDED] = len(corrections)
    if context.task.has_ground_truth and localizations:
        truth = [context.task.first_error(t.problem, t.text) for t in chosen]
        metrics[LOC_ACCURACY] = sum(loc.error_step == e for loc, e in zip(localizations, truth)) / len(localizations)
    credit = Credit(
        rows=(*rollouts, *extra),
        token_advantages=(*token_adv, *continuation_advantages(book.tree, extra_rows, scales, leave_out)),
        reference=(True,) * len(rollouts) + (False,) * len(extra),
        metrics=metrics,
        localizations=tuple(LocalizedFailure(row, loc, row_of[c] if c is not None else None) for row, loc, c in per_failure),
        row_kinds=("sample",) * len(rollouts) + tuple("correction" if j in corrections else "probe" for j in kept),
    )
    return credit, good_prefixes


def si_credit(rollouts: Sequence[Trajectory], context: MethodContext) -> Credit:
    settings = search_settings(context.settings)
    task = context.task
    localizers: dict[str, Localizer] = {  # method.si.localizer
        "search": lambda failures, book, probe, metrics: search(failures, book, probe, settings),
        "divergence": lambda failures, book, probe, metrics: divergence_localize(failures, book),
        "ground_truth": lambda failures, book, probe, metrics: ground_truth_localize(
            failures, book, probe, settings.probes, lambda t: task.first_error(t.problem, t.text)
        ),
    }
    credit, good_prefixes = localized_credit(rollouts, context, localizers[context.settings.localizer])
    context.memory.remember(context.step, rollouts, credit, good_prefixes)
    return credit


def check_localizer(config: ExperimentConfig, task: Task) -> None:
    if config.method.si.localizer == "ground_truth" and not task.has_ground_truth:
        raise ConfigError(
            f"method.si.localizer=ground_truth needs a task with ground truth first-error steps; task {config.task.name} has none; "
            "use method.si.localizer=search"
        )


register(Method(
    "si", "localize each failure where it left every success of its group (or by probing prefixes), credit the error step, reuse good prefixes", si_credit,
    uses_repair=True, check=check_localizer,
    # Every localizer needs a success of the failure's own group (the divergence step is where it left one;
    # the search starts from the prefixes one certified), so a group of one localizes nothing, its outcome
    # advantage is 0, and the run would train on nothing.
    min_group_size=2,
))
