"""Turn one step's rollouts into training rows with token advantages, for every method.

- Outcome only (grpo, dr_grpo, rloo): each response's group-relative advantage on all its tokens.
- si: failures are localized (sirl.internalize.localize); a localized failure's error step is penalized by
  the value it destroyed, its good prefix gets 0; probes from a prefix (the corrections among them) join
  the batch with R - V(prefix) on their own tokens; successes and unlocalized failures keep the outcome
  advantage.
- random_reset: like si, but each failure is reset at a random step and keeps its outcome advantage.
- vine: K probes at every step boundary of every response; A(step) = V(k) - V(k-1) on every step.

Step-level advantages are put on the outcome advantages' scale: with the std-normalized estimator (grpo)
they are divided by the same group std, so a destroyed value of 1 weighs what one std of reward does.
The math itself lives in sirl.algos; this module decides which rows get which values.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sirl import algos
from sirl.config import MethodConfig
from sirl.internalize.localize import Localization, PrefixBook, Probe, certified_prefix_steps, localize, prefix_ids
from sirl.internalize.selfverify import AuditSchedule, Verdict
from sirl.tasks.base import Task
from sirl.types import Trajectory

STD_EPS = 1e-6

ProbeFn = Callable[[list[tuple[Trajectory, int]], int], list[list[Trajectory]]]
"""(requests of (trajectory, k steps), continuations per request) -> the probes of each request."""


@dataclass
class Credit:
    """Training rows for one step. ``reference[i]`` marks rows of the original batch (loss denominators
    count them only, under additive normalization); ``localizations`` pairs failures with their search."""

    trajectories: list[Trajectory]
    token_advantages: list[torch.Tensor]
    reference: list[bool]
    metrics: dict[str, float] = field(default_factory=dict)
    localizations: list[tuple[Trajectory, Localization, Trajectory | None]] = field(default_factory=list)
    """(failure, its search, a verified continuation of its good prefix when one was found)."""
    good_prefixes: list[tuple[Trajectory, list[int]]] = field(default_factory=list)


def step_index(trajectory: Trajectory) -> torch.Tensor:
    """The step of each response token (``[R]``); -1 on given prefix tokens, which are not trained."""
    index = torch.full((len(trajectory.response_ids),), -1, dtype=torch.long)
    for step, (start, end) in enumerate(trajectory.step_spans):
        index[start:end] = step
    index[: trajectory.prefix_len] = -1
    return index


def group_scales(trajectories: list[Trajectory], estimator: str) -> dict[int, float]:
    """Per group, the factor that puts value differences on the outcome advantages' scale."""
    if estimator != "grpo":
        return {t.group: 1.0 for t in trajectories}
    rewards: dict[int, list[float]] = {}
    for t in trajectories:
        rewards.setdefault(t.group, []).append(t.reward)
    scales = {}
    for group, values in rewards.items():
        std = torch.tensor(values).std().item() if len(values) > 1 else 0.0
        scales[group] = 1.0 / (std + STD_EPS) if std > 0 else 1.0
    return scales


def outcome_advantages(trajectories: list[Trajectory], estimator: str) -> torch.Tensor:
    rewards_B = torch.tensor([t.reward for t in trajectories])
    groups = sorted({t.group for t in trajectories})
    group_B = torch.tensor([groups.index(t.group) for t in trajectories])
    return algos.ADVANTAGES[estimator](rewards_B, group_B)


def outcome_credit(trajectories: list[Trajectory], estimator: str) -> Credit:
    adv_B = outcome_advantages(trajectories, estimator)
    return Credit(
        trajectories=list(trajectories),
        token_advantages=[torch.full((len(t.response_ids),), float(a)) for t, a in zip(trajectories, adv_B)],
        reference=[True] * len(trajectories),
    )


def _prefix_credit(probes: list[Trajectory], book: PrefixBook, scales: dict[int, float]) -> list[torch.Tensor]:
    """R - V(prefix) on each probe's own tokens (its given prefix is context)."""
    out = []
    for p in probes:
        value, _ = book.value(p.group, p.response_ids[: p.prefix_len])
        out.append(torch.full((len(p.response_ids),), (p.reward - value) * scales[p.group]))
    return out


def select_failures(failures: list[Trajectory], book: PrefixBook, solve_rate: dict[int, float], budget: int) -> list[Trajectory]:
    """The ``budget`` most informative localizable failures: prompts whose solve rate is closest to one
    half first (their outcome is the least settled), round-robin over prompts so each gets one before any
    gets two; within a prompt, the failure sharing the longest prefix with a success (the cheapest search)."""
    by_group: dict[int, list[tuple[int, Trajectory]]] = {}
    for t in failures:
        if book.certified(t.group, []):
            by_group.setdefault(t.group, []).append((certified_prefix_steps(book, t, below=len(t.step_spans)), t))
    queues = [sorted(items, key=lambda item: -item[0]) for _, items in sorted(by_group.items(), key=lambda kv: (abs(solve_rate[kv[0]] - 0.5), kv[0]))]
    chosen: list[Trajectory] = []
    while len(chosen) < budget and any(queues):
        for queue in queues:
            if queue and len(chosen) < budget:
                chosen.append(queue.pop(0)[1])
    return chosen


def self_localize(
    chosen: list[Trajectory],
    book: PrefixBook,
    search_probe: Callable[[list[tuple[Trajectory, int]]], list[list[Trajectory]]],
    config: MethodConfig,
    propose: Callable[[list[Trajectory]], list[Verdict]],
    audits: AuditSchedule,
    task: Task,
    rng: random.Random,
    metrics: dict[str, float],
    confirm_probe: Callable[[list[tuple[Trajectory, int]]], list[list[Trajectory]]] | None = None,
    settle_probe: Callable[[list[tuple[Trajectory, int]]], list[list[Trajectory]]] | None = None,
    reuse_samples: bool = False,
    confirm_k: int | None = None,
) -> list[Localization]:
    """si_internal's localization (METHOD.md, "Internalize"). The policy proposes the error step of each
    failure; an audited failure (a share given by ``audits``) always gets the oracle search, and its
    proposal is scored against it; any other proposal is confirmed by two checks: the prefix before the
    named step is still good and the prefix through it is not (each check K probes, or none when the
    trajectories already sampled settle it; ``confirm_probe`` draws them, by default like the search; a
    verified probe at the second check gets ``settle_probe``'s extra probes, as in the search; with
    ``reuse_samples`` a check needs none when ``confirm_k`` (default K) samples besides the failure already
    pass through its prefix). An unconfirmed, unparsable or "none" proposal falls back to the oracle
    search, whose answer becomes that failure's self-verification example like every other."""
    verdicts = propose(chosen)
    audit_fraction = audits.fraction
    audited = [rng.random() < audit_fraction for _ in chosen]
    candidates = [
        i for i, (t, v, a) in enumerate(zip(chosen, verdicts, audited)) if not a and v.step is not None and v.step < len(t.step_spans)
    ]

    def good(t: Trajectory, k: int, reference: int) -> bool:
        """The localizer's rule for "prefix k is still good", relative to prefix ``reference``."""
        if config.drop == 0:
            return book.certified(t.group, prefix_ids(t, k))
        return book.value(t.group, prefix_ids(t, k))[0] > config.drop * book.value(t.group, prefix_ids(t, reference))[0]

    # The two checks, batched: prefix s (skipped when a verified trajectory passes through it) and
    # prefix s+1 (skipped when it is the whole failed response, whose value is 0).
    # With reuse_samples, a check is also skipped when K samples of the group besides the failure already pass
    # through its prefix. They are fair draws from it because the proposal never saw their outcomes.
    reuse = (confirm_k or config.probes) if reuse_samples else 0

    def settled(t: Trajectory, k: int) -> bool:
        return reuse > 0 and book.samples_besides(t.group, prefix_ids(t, k), t) >= reuse

    requests, owners = [], []
    for i in candidates:
        t, s = chosen[i], verdicts[i].step
        unsettled = not book.certified(t.group, prefix_ids(t, s)) or (config.drop > 0 and book.value(t.group, prefix_ids(t, s))[1] == 0)
        if unsettled and not settled(t, s):
            requests.append((t, s))
            owners.append(i)
        if s + 1 < len(t.step_spans) and not settled(t, s + 1):
            requests.append((t, s + 1))
            owners.append(i)
    spent = [0] * len(chosen)
    drawn = (confirm_probe or search_probe)(requests) if requests else []
    for i, found in zip(owners, drawn):
        book.add(found)
        spent[i] += len(found)
    if settle_probe is not None and config.drop > 0:  # the search's rule: a lucky success gets more probes
        lucky = [
            (i, request) for i, request, found in zip(owners, requests, drawn)
            if request[1] == verdicts[i].step + 1 and any(p.reward >= 1 for p in found)
        ] + [
            (i, (chosen[i], verdicts[i].step + 1)) for i in candidates
            if verdicts[i].step + 1 < len(chosen[i].step_spans) and settled(chosen[i], verdicts[i].step + 1)
            and book.value(chosen[i].group, prefix_ids(chosen[i], verdicts[i].step + 1))[0] > 0
        ]
        for (i, _), found in zip(lucky, settle_probe([request for _, request in lucky]) if lucky else []):
            book.add(found)
            spent[i] += len(found)
    results: dict[int, Localization] = {}
    for i in candidates:
        t, s = chosen[i], verdicts[i].step
        before_ok = book.certified(t.group, prefix_ids(t, s))
        after_bad = s + 1 == len(t.step_spans) or not good(t, s + 1, s)
        if before_ok and after_bad:  # confirmed
            results[i] = Localization(
                i, error_step=s, value_before=book.value(t.group, prefix_ids(t, s))[0],
                value_after=book.value(t.group, prefix_ids(t, s + 1))[0], probes=spent[i], checks=((s, True), (s + 1, False)),
                proposal=verdicts[i].text,
            )
    confirmed = len(results)
    rest = [i for i in range(len(chosen)) if i not in results]
    searched = localize(
        [chosen[i] for i in rest], book, search_probe, free_evidence=config.free_evidence, first_check=config.first_check,
        drop=config.drop, settle=settle_probe,
    )
    for i, loc in zip(rest, searched):
        results[i] = Localization(
            i, loc.error_step, loc.value_before, loc.value_after, loc.probes + spent[i], loc.checks, proposal=verdicts[i].text
        )

    audited_agree = [verdicts[i].step == results[i].error_step for i in range(len(chosen)) if audited[i]]
    for agreed in audited_agree:
        audits.record(agreed)
    if audited_agree:
        metrics["selfloc/agreement"] = sum(audited_agree) / len(audited_agree)
    metrics["selfloc/audit_frac"] = audit_fraction
    metrics["selfloc/confirmed_frac"] = confirmed / max(len(candidates), 1)
    metrics["selfloc/valid_frac"] = sum(v.valid for v in verdicts) / max(len(verdicts), 1)
    if task.has_ground_truth and chosen:
        truth = [task.first_error(t.problem, t.text) for t in chosen]
        metrics["selfloc/accuracy"] = sum(v.step == e for v, e in zip(verdicts, truth)) / len(chosen)
    return [results[i] for i in range(len(chosen))]


def ground_truth_localize(failures: list[Trajectory], book: PrefixBook, probe: Probe, task: Task) -> list[Localization]:
    """A diagnostic, never the method (``method.localizer=ground_truth``): each failure's error step is the
    task's ground-truth first wrong step. One check of K probes from the prefix before it estimates
    V(before) and gives the corrections, as the search's last check would. V(after) is taken as 0: the step
    is wrong, and a lucky final digit after it is what the search's mistakes are made of."""
    truth = [task.first_error(t.problem, t.text) for t in failures]
    asked = [(i, t, e) for i, (t, e) in enumerate(zip(failures, truth)) if e is not None]
    found = probe([(t, e) for _, t, e in asked]) if asked else []
    results = [Localization(i, None) for i in range(len(failures))]
    for (i, t, e), probes in zip(asked, found):
        book.add(probes)
        before, _ = book.value(t.group, prefix_ids(t, e))
        results[i] = Localization(i, e, value_before=before, value_after=0.0, probes=len(probes), checks=((e, before > 0),))
    return results


def method_credit(
    name: str,
    trajectories: list[Trajectory],
    probe: ProbeFn,
    config: MethodConfig,
    estimator: str,
    task: Task,
    rng: random.Random,
    propose: Callable[[list[Trajectory]], list[Verdict]] | None = None,
    audits: AuditSchedule | None = None,
    confirm_probes: int | None = None,
    reuse_samples: bool = False,
) -> Credit:
    """Credit for si, si_internal, random_reset and vine (see the module docstring). ``trajectories`` are
    this step's samples: fresh groups and repair-buffer groups alike (a repair group's members share a
    given prefix). si_internal needs ``propose`` (the policy's verdicts on failures) and ``audits``."""
    outcome_B = outcome_advantages(trajectories, estimator)
    scales = group_scales(trajectories, estimator)
    book = PrefixBook(trajectories)
    token_adv = [torch.full((len(t.response_ids),), float(a)) for t, a in zip(trajectories, outcome_B)]
    rows, extra, extra_adv = list(trajectories), [], []
    metrics: dict[str, float] = {}
    solve_rate: dict[int, float] = {}
    for t in trajectories:
        solve_rate.setdefault(t.group, book.value(t.group, t.response_ids[: t.prefix_len])[0])
    failures = [t for t in trajectories if t.reward < 1 and t.prefix_len == 0]
    n_failures = max(len(failures), 1)
    credit = Credit(rows, token_adv, [True] * len(rows), metrics)

    if name == "vine":
        # Every inner step boundary past the given prefix; V(0) comes from the group, V(n) is the outcome.
        requests = [(t, k) for t in trajectories for k in range(1, len(t.step_spans)) if len(prefix_ids(t, k)) > t.prefix_len]
        found = probe(requests, config.probes) if requests else []
        for probes in found:
            book.add(probes)
        for i, t in enumerate(trajectories):
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
            step_adv = algos.value_difference_step_advantages(values, known) * scales[t.group]
            token_adv[i] = algos.broadcast_steps_to_tokens(step_adv, step_index(t)[None])[0]
        metrics["loc/probes_per_trajectory"] = sum(len(p) for p in found) / max(len(trajectories), 1)
        return credit

    chosen = select_failures(failures, book, solve_rate, config.max_localizations)
    unlocalizable = sum(not book.certified(t.group, []) for t in failures)
    metrics["loc/unlocalizable_frac"] = unlocalizable / n_failures
    metrics["loc/budget_skipped"] = len(failures) - unlocalizable - len(chosen)

    if name == "random_reset":
        requests = [(t, rng.randrange(len(t.step_spans))) for t in chosen]
        found = probe(requests, config.probes) if requests else []
        for (t, k), probes in zip(requests, found):
            book.add(probes)
            if any(p.reward >= 1 for p in probes):
                credit.good_prefixes.append((t, prefix_ids(t, k)))
        probes = [p for group in found for p in group]
        kept = probes if config.train_on_probes else [p for p in probes if p.reward >= 1]
        extra, extra_adv = kept, _prefix_credit(kept, book, scales)
        metrics["loc/localized_frac"] = 0.0
        metrics["loc/probes_per_failure"] = len(probes) / max(len(chosen), 1)
        metrics["repair/added"] = sum(p.reward >= 1 for p in kept)
    else:  # si, si_internal
        searched: list[list[Trajectory]] = []

        def search_probe(requests: list[tuple[Trajectory, int]]) -> list[list[Trajectory]]:
            found = probe(requests, config.probes)
            searched.extend(found)
            return found

        def settle_probe(requests: list[tuple[Trajectory, int]]) -> list[list[Trajectory]]:
            found = probe(requests, config.settle_probes)
            searched.extend(found)
            return found

        settle = settle_probe if config.settle_probes > 0 else None
        if name == "si_internal":

            def confirm_probe(requests: list[tuple[Trajectory, int]]) -> list[list[Trajectory]]:
                found = probe(requests, confirm_probes or config.probes)
                searched.extend(found)
                return found

            localizations = self_localize(
                chosen, book, search_probe, config, propose, audits, task, rng, metrics, confirm_probe, settle,
                reuse_samples=reuse_samples, confirm_k=confirm_probes,
            )
        elif config.localizer == "ground_truth":
            localizations = ground_truth_localize(chosen, book, search_probe, task)
        else:
            localizations = localize(
                chosen, book, search_probe, free_evidence=config.free_evidence, first_check=config.first_check, drop=config.drop,
                settle=settle,
            )
        if config.correction_samples and chosen:  # a small group of its own for each good prefix
            for probes in probe([(t, loc.error_step) for t, loc in zip(chosen, localizations)], config.correction_samples):
                book.add(probes)
                searched.append(probes)
        index = {id(t): i for i, t in enumerate(trajectories)}
        corrections: list[Trajectory] = []
        for t, loc in zip(chosen, localizations):
            good = prefix_ids(t, loc.error_step)
            credit.good_prefixes.append((t, good))
            n = len(t.step_spans)
            step_adv = algos.localized_step_advantages(
                n_steps_B=torch.tensor([n]),
                error_step_B=torch.tensor([loc.error_step]),
                value_before_B=torch.tensor([loc.value_before]),
                value_after_B=torch.tensor([loc.value_after]),
                after_error_B=torch.tensor([float(outcome_B[index[id(t)]])]) if config.post_error == "outcome" else torch.zeros(1),
                width=n,
            )
            step_adv[0, :n] *= torch.where(torch.arange(n) == loc.error_step, config.error_scale * scales[t.group], 1.0)
            token_adv[index[id(t)]] = algos.broadcast_steps_to_tokens(step_adv, step_index(t)[None])[0]
            # The corrections: verified continuations of the good prefix (probes, or sampled on purpose).
            mine = [
                p for group in searched for p in group
                if p.reward >= 1 and p.group == t.group and p.prefix_len == len(good) and p.response_ids[: len(good)] == good
            ]
            corrections += mine
            credit.localizations.append((t, loc, mine[0] if mine else None))
        probes = [p for group in searched for p in group]
        kept = probes if config.train_on_probes else list({id(p): p for p in corrections}.values())
        extra, extra_adv = kept, _prefix_credit(kept, book, scales)
        metrics["loc/localized_frac"] = len(localizations) / n_failures
        metrics["loc/probes_per_failure"] = sum(loc.probes for loc in localizations) / max(len(localizations), 1)
        metrics["repair/added"] = len({id(p) for p in corrections})
        if task.has_ground_truth and localizations:
            truth = [task.first_error(t.problem, t.text) for t in chosen]
            metrics["loc/accuracy"] = sum(loc.error_step == e for loc, e in zip(localizations, truth)) / len(localizations)

    credit.trajectories += extra
    credit.token_advantages += extra_adv
    credit.reference += [False] * len(extra)
    return credit
