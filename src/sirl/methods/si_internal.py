"""si_internal (docs/method.md, "Internalize"): si where the policy, on the same weights, learns to name the
first wrong step of its own solutions and proposes it for new failures.

Per step, under ``localizer="proposals"`` (the default) the policy proposes the error step of each chosen
failure; a share of failures (the audit fraction, which falls as the policy agrees with the oracle, never
below ``audit_min``) gets the full oracle search and scores the proposal; any other proposal is confirmed
by two probe checks and falls back to the search when they disagree. Under ``localizer="divergence"``
failures of groups that hold a success are localized for free at their divergence step (si's divergence
localizer), and the policy's own verdict is used only where nothing else can look, in groups with no
success (``blind_resets``). Credit is si's. With ``blind_resets``, groups with
no success (where outcome credit is zero and the outcome-based localizer cannot look) get resets too: the
policy names the first wrong step of a failure and K continuations start just before it
(sirl.methods.common.blind_resets). The policy then trains on self-verification
examples drawn from its own recent outputs (the oracle's verdicts): an auxiliary cross-entropy
(``verify_loss=sft``), sampled verdicts rewarded for agreeing with the oracle (``rl``), or both.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import torch

from sirl.config import ConfigError, ExperimentConfig
from sirl.internalize import selfverify
from sirl.internalize.credit import ProbeFn, SearchSettings, divergence_localize, self_localize
from sirl.internalize.localize import PrefixBook
from sirl.internalize.selfverify import AuditSchedule
from sirl.internalize.repair import RepairEntry
from sirl.methods.base import Method, MethodContext, refuse_ground_truth, register
from sirl.methods.common import blind_resets, outcome_advantages, with_blind_resets
from sirl.methods.settings import SiInternalSettings
from sirl.methods.si import localized_credit, search_settings
from sirl.schema import (
    REWARD_VERIFY, SELFLOC_ACCURACY, SELFLOC_AGREEMENT, SELFLOC_AUDIT_FRAC, SELFLOC_CONFIRMED_FRAC, SELFLOC_VALID_FRAC,
)
from sirl.tasks.base import Task, supports_step_check
from sirl.types import AuxiliaryLoss, Credit, Localization, Trajectory, Verdict


def localize_with_proposals(
    failures: list[Trajectory], verdicts: list[Verdict], book: PrefixBook, probe: ProbeFn, settings: SearchSettings,
    audits: AuditSchedule, rng: random.Random, truth: list[int | None] | None,
) -> tuple[list[Localization], dict[str, float]]:
    """Audit a share of the failures (``audits.fraction``, drawn with ``rng``), confirm the other proposals or
    fall back to the search (sirl.internalize.credit.self_localize), record the audits' agreement, and
    measure the verdicts: ``selfloc/*`` metrics, with ``truth`` (ground-truth first errors) where the
    task has it."""
    audit_fraction = audits.fraction
    audited = [rng.random() < audit_fraction for _ in failures]
    found = self_localize(failures, verdicts, audited, book, probe, settings)
    for agreed in found.audited_agreement:
        audits.record(agreed)
    metrics = {}
    if found.audited_agreement:
        metrics[SELFLOC_AGREEMENT] = sum(found.audited_agreement) / len(found.audited_agreement)
    metrics[SELFLOC_AUDIT_FRAC] = audit_fraction
    metrics[SELFLOC_CONFIRMED_FRAC] = found.confirmed / max(found.candidates, 1)
    metrics[SELFLOC_VALID_FRAC] = sum(v.valid for v in verdicts) / max(len(verdicts), 1)
    if truth is not None and failures:
        metrics[SELFLOC_ACCURACY] = sum(v.step == e for v, e in zip(verdicts, truth)) / len(failures)
    return list(found.localizations), metrics


def si_internal_credit(rollouts: Sequence[Trajectory], context: MethodContext) -> Credit:
    internal: SiInternalSettings = context.settings
    task, fmt = context.task, internal.verdict_format
    settings = search_settings(internal)

    def proposals(failures, book, probe, metrics):
        verdicts = context.sampler.propose(failures, fmt)
        truth = [task.first_error(t.problem, t.text) for t in failures] if task.has_ground_truth else None
        localizations, found = localize_with_proposals(failures, verdicts, book, probe, settings, context.memory.audits, context.rng, truth)
        metrics.update(found)
        return localizations

    def divergence(failures, book, probe, metrics):
        return divergence_localize(failures, book)

    credit, good_prefixes = localized_credit(rollouts, context, divergence if internal.localizer == "divergence" else proposals)
    context.memory.remember(context.step, rollouts, credit, good_prefixes)
    if internal.blind_resets:
        def own_verdicts(failures: list[Trajectory]) -> list[int | None]:
            # keep the steps before the named one; "none" or a malformed verdict names no reset point
            return [v.step if v.valid else None for v in context.sampler.propose(failures, fmt)]

        blind = blind_resets(
            rollouts, internal.blind_resets, internal.branch_samples, own_verdicts,
            context.sampler.probe, (lambda t: task.first_error(t.problem, t.text)) if task.has_ground_truth else None,
        )
        for failure, prefix in blind.good_prefixes:
            context.memory.repair.add(RepairEntry(failure.problem, prefix, context.step))
        credit = with_blind_resets(credit, blind)

    # Teach self-verification on the policy's own recent outputs, this step's included.
    examples = selfverify.draw_examples(context.memory.verification, internal.verify_batch, internal.none_share, context.rng)
    if not examples:
        return credit
    aux_losses, metrics, verdict_rows, verdict_adv = [], dict(credit.metrics), [], []
    if internal.verify_loss in ("sft", "both"):
        batch = context.sampler.verdict_batch(examples, fmt)
        aux_losses.append(AuxiliaryLoss("verify", internal.verify_coef, batch.input_ids_BT, batch.attention_BT, batch.target_mask_BT))
    if internal.verify_loss in ("rl", "both"):
        verdict_rows = context.sampler.sample_verdicts(examples, internal.verify_group, max(t.group for t in credit.rows) + 1, fmt)
        verdict_adv = [
            torch.full((len(v.response_ids),), float(a) * internal.verify_coef)
            for v, a in zip(verdict_rows, outcome_advantages(verdict_rows, "grpo"))
        ]
        metrics[REWARD_VERIFY] = sum(v.reward for v in verdict_rows) / len(verdict_rows)
    return dataclasses.replace(
        credit,
        rows=(*credit.rows, *verdict_rows),
        token_advantages=(*credit.token_advantages, *verdict_adv),
        reference=(*credit.reference, *(False,) * len(verdict_rows)),
        aux_losses=tuple(aux_losses),
        metrics=metrics,
        row_kinds=(*(credit.row_kinds or ("sample",) * len(credit.rows)), *("verdict",) * len(verdict_rows)),
    )


def check_si_internal(config: ExperimentConfig, task: Task) -> None:
    """The rederive verdict format needs a task that can re-derive its steps (and si's diagnostic localizer
    is refused, as for every method but si)."""
    refuse_ground_truth(config, task)
    if config.method.si_internal.verdict_format == "rederive" and not supports_step_check(task):
        raise ConfigError(
            f"method.si_internal.verdict_format=rederive needs a task that re-derives its steps (step_check); task "
            f"{task.name!r} does not: use method.si_internal.verdict_format=index or judgments"
        )


register(Method(
    "si_internal", "si where the policy also learns to name its own first wrong step and proposes it, confirmed by probes",
    si_internal_credit, uses_repair=True, check=check_si_internal,
))
