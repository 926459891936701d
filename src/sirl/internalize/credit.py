"""The method's parts that turn localizations into training rows (docs/method.md, "Credit").

- A localized failure's error step is penalized by the value it destroyed, -(V(before) - V(after)), its
  good prefix gets 0, the steps after it 0 or the outcome advantage (sirl.algos.localized_step_advantages).
- Probes from a prefix (the corrections among them) join the batch with R - V(prefix) on their own tokens.
- Step-level advantages are put on the outcome advantages' scale: with the std-normalized estimator (grpo)
  they are divided by the same group std (sirl.algos.group_std_scales), so a destroyed value of 1 weighs
  what one std of reward does.

The methods (sirl.methods) compose these; the math itself lives in sirl.algos. Nothing here reads a
config object: settings arrive as plain values or the small frozen :class:`SearchSettings`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sirl import algos
from sirl.internalize.localize import PrefixBook, certified_prefix_steps, localize, prefix_ids
from sirl.types import Localization, Trajectory, Verdict

ProbeFn = Callable[[list[tuple[Trajectory, int]], int], list[list[Trajectory]]]
"""(requests of (trajectory, k steps), continuations per request) -> the verified probes of each request."""


def step_index(trajectory: Trajectory) -> torch.Tensor:
    """The step of each response token (``[R]``); -1 on given prefix tokens, which are not trained."""
    index = torch.full((len(trajectory.response_ids),), -1, dtype=torch.long)
    for step, (start, end) in enumerate(trajectory.step_spans):
        index[start:end] = step
    index[: trajectory.prefix_len] = -1
    return index


def outcome_advantages(trajectories: Sequence[Trajectory], estimator: str) -> torch.Tensor:
    """Group-relative outcome advantages (sirl.algos.ADVANTAGES[estimator]), one per trajectory ``[B]``."""
    rewards_B = torch.tensor([t.reward for t in trajectories])
    groups = sorted({t.group for t in trajectories})
    group_B = torch.tensor([groups.index(t.group) for t in trajectories])
    return algos.ADVANTAGES[estimator](rewards_B, group_B)


def value_scales(trajectories: Sequence[Trajectory], estimator: str) -> dict[int, float]:
    """Per group, the factor that puts value differences on the outcome advantages' scale: 1 / group std
    for the std-normalized estimator (grpo), 1 for the others (sirl.algos.VALUE_SCALES)."""
    return algos.VALUE_SCALES[estimator](torch.tensor([t.reward for t in trajectories]), torch.tensor([t.group for t in trajectories]))


def probe_credit(
    probes: Sequence[Trajectory], book: PrefixBook, scales: dict[int, float], leave_out: Sequence[Trajectory | None] | None = None
) -> list[torch.Tensor]:
    """R - V(prefix) on each probe's own tokens (its given prefix is context). With ``leave_out`` (the
    failure each probe was drawn for, per probe), V(prefix) leaves out the probe itself and that failure:
    the failure was picked for failing, and with K = 1 a baseline holding the probe gives a failed probe 0
    by construction. A probe with no other free sample through its prefix gets 0."""
    out = []
    for i, p in enumerate(probes):
        prefix = p.response_ids[: p.prefix_len]
        if leave_out is None:
            value, _ = book.value(p.group, prefix)
            adv = p.reward - value
        else:
            value, n = book.value_without(p.group, prefix, [p, leave_out[i]])
            adv = p.reward - value if n else 0.0
        out.append(torch.full((len(p.response_ids),), adv * scales[p.group]))
    return out


def localized_token_advantages(
    trajectory: Trajectory, localization: Localization, outcome_advantage: float, *, scale: float, error_scale: float, post_error: str,
    error_from_token: int = 0,
) -> torch.Tensor:
    """Token advantages of one localized failure ``[R]``: 0 on the good prefix, -(V(before) - V(after))
    times ``error_scale * scale`` on the error step, then 0 or the outcome advantage (``post_error``).
    Tokens before ``error_from_token`` (the first token where the failure left a verified sibling that
    wrote the same steps before it) carry no penalty: a success wrote them too."""
    n = len(trajectory.step_spans)
    step_adv = algos.localized_step_advantages(
        n_steps_B=torch.tensor([n]),
        error_step_B=torch.tensor([localization.error_step]),
        value_before_B=torch.tensor([localization.value_before]),
        value_after_B=torch.tensor([localization.value_after]),
        after_error_B=torch.tensor([outcome_advantage]) if post_error == "outcome" else torch.zeros(1),
        width=n,
    )
    step_adv[0, :n] *= torch.where(torch.arange(n) == localization.error_step, error_scale * scale, 1.0)
    adv = algos.broadcast_steps_to_tokens(step_adv, step_index(trajectory)[None])[0]
    if error_from_token:
        start = trajectory.step_spans[localization.error_step][0]
        adv[start:max(start, error_from_token)] = 0.0
    return adv


def first_difference_from_success(trajectory: Trajectory, book: PrefixBook) -> int:
    """The length of the longest token prefix the trajectory shares with a verified trajectory of its group
    (the first token where it left every success)."""
    best = 0
    for other in book.groups.get(trajectory.group, []):
        if other.reward >= 1 and other is not trajectory:
            n = 0
            for a, b in zip(trajectory.response_ids, other.response_ids):
                if a != b:
                    break
                n += 1
            best = max(best, n)
    return best


FAILURE_CHOICES = ("half_solved", "least_solved", "most_solved", "random")
"""The rules for which failures get localized or branched under a per-step budget (select_failures)."""


def select_failures(
    failures: list[Trajectory], book: PrefixBook, solve_rate: dict[int, float], budget: int,
    rule: str = "half_solved", rng: random.Random | None = None,
) -> list[int]:
    """Positions in ``failures`` of ``budget`` localizable failures (a success shares their prompt), in
    the order ``rule`` puts the prompts, round-robin over prompts so each gets one before any gets two:

    - half_solved: solve rate closest to one half first (the prompts whose outcome is least settled);
    - least_solved: lowest solve rate first (a failure is the prompt's usual outcome);
    - most_solved: highest first (a failure is a slip of a policy that mostly solves the prompt);
    - random: prompts and failures in a random order drawn from ``rng``.

    Ties go to the lower group id. Within a prompt (all rules but random) the failure sharing the longest
    prefix with a success comes first: the cheapest search and the shortest branch."""
    if rule not in FAILURE_CHOICES:
        raise ValueError(f"unknown failure choice {rule!r}; choose one of {', '.join(FAILURE_CHOICES)}")
    by_group: dict[int, list[tuple[int, int]]] = {}
    for i, t in enumerate(failures):
        if book.certified(t.group, []):
            by_group.setdefault(t.group, []).append((certified_prefix_steps(book, t, below=len(t.step_spans)), i))
    groups = sorted(by_group)
    if rule == "random":
        if rng is None:
            raise ValueError("failure choice 'random' needs an rng")
        rng.shuffle(groups)
        queues = [rng.sample(by_group[g], len(by_group[g])) for g in groups]
    else:
        order = {
            "half_solved": lambda g: abs(solve_rate[g] - 0.5),
            "least_solved": lambda g: solve_rate[g],
            "most_solved": lambda g: -solve_rate[g],
        }[rule]
        queues = [sorted(by_group[g], key=lambda item: -item[0]) for g in sorted(groups, key=lambda g: (order(g), g))]
    chosen: list[int] = []
    while len(chosen) < budget and any(queues):
        for queue in queues:
            if queue and len(chosen) < budget:
                chosen.append(queue.pop(0)[1])
    return chosen


@dataclass(frozen=True)
class SearchSettings:
    """How the oracle localizer checks prefixes (docs/method.md, "Localize"; the method config documents
    each knob)."""

    probes: int = 1
    """K, probes per checked prefix."""
    free_evidence: bool = True
    first_check: str = "divergence"
    drop: float = 0.0
    settle_probes: int = 0
    confirm_probes: int | None = None
    """si_internal: probes per confirmation check (None: K)."""
    reuse_samples: bool = False
    """si_internal: a confirmation check draws no probes when K samples besides the failure pass through its prefix."""


def search(failures: list[Trajectory], book: PrefixBook, probe: ProbeFn, settings: SearchSettings) -> list[Localization]:
    """The oracle search (sirl.internalize.localize) with K probes per check and, under the drop rule,
    ``settle_probes`` more for a check that a lucky probe would decide."""
    settle = (lambda requests: probe(requests, settings.settle_probes)) if settings.settle_probes > 0 else None
    return localize(
        failures, book, lambda requests: probe(requests, settings.probes), free_evidence=settings.free_evidence,
        first_check=settings.first_check, drop=settings.drop, settle=settle,
    )


@dataclass(frozen=True)
class SelfLocalization:
    """si_internal's localizations and what they say about the policy's verdicts."""

    localizations: tuple[Localization, ...]
    audited_agreement: tuple[bool, ...]
    """For each audited failure, whether the policy's verdict named the step the oracle search found."""
    confirmed: int
    """Proposals confirmed by the two checks."""
    candidates: int
    """Proposals that could be checked (not audited, parsed, naming a step of the failure)."""


def self_localize(
    chosen: list[Trajectory], verdicts: list[Verdict], audited: list[bool], book: PrefixBook, probe: ProbeFn, settings: SearchSettings
) -> SelfLocalization:
    """si_internal's localization (docs/method.md, "Internalize"). ``verdicts`` are the policy's proposals
    for the error step of each failure; an ``audited`` failure always gets the oracle search, and its
    proposal is scored against it; any other proposal is confirmed by two checks: the prefix before the
    named step is still good and the prefix through it is not (each check K probes, ``confirm_probes``
    when set, or none when the trajectories already sampled settle it; a verified probe at the second check
    gets the search's settle probes; with ``reuse_samples`` a check needs none when that many samples
    besides the failure already pass through its prefix). An unconfirmed, unparsable or "none" proposal
    falls back to the oracle search, whose answer becomes that failure's self-verification example like
    every other."""
    candidates = [
        i for i, (t, v, a) in enumerate(zip(chosen, verdicts, audited)) if not a and v.step is not None and v.step < len(t.step_spans)
    ]
    drop = settings.drop
    confirm_k = settings.confirm_probes or settings.probes

    def good(t: Trajectory, k: int, reference: int) -> bool:
        """The localizer's rule for "prefix k is still good", relative to prefix ``reference``."""
        if drop == 0:
            return book.certified(t.group, prefix_ids(t, k))
        return book.value(t.group, prefix_ids(t, k))[0] > drop * book.value(t.group, prefix_ids(t, reference))[0]

    # The two checks, batched: prefix s (skipped when a verified trajectory passes through it) and
    # prefix s+1 (skipped when it is the whole failed response, whose value is 0).
    # With reuse_samples, a check is also skipped when K samples of the group besides the failure already pass
    # through its prefix. They are fair draws from it because the proposal never saw their outcomes.
    reuse = confirm_k if settings.reuse_samples else 0

    def settled(t: Trajectory, k: int) -> bool:
        return reuse > 0 and book.samples_besides(t.group, prefix_ids(t, k), t) >= reuse

    requests, owners = [], []
    for i in candidates:
        t, s = chosen[i], verdicts[i].step
        unsettled = not book.certified(t.group, prefix_ids(t, s)) or (drop > 0 and book.value(t.group, prefix_ids(t, s))[1] == 0)
        if unsettled and not settled(t, s):
            requests.append((t, s))
            owners.append(i)
        if s + 1 < len(t.step_spans) and not settled(t, s + 1):
            requests.append((t, s + 1))
            owners.append(i)
    spent = [0] * len(chosen)
    drawn = probe(requests, confirm_k) if requests else []
    for i, found in zip(owners, drawn):
        book.add(found)
        spent[i] += len(found)
    if settings.settle_probes > 0 and drop > 0:  # the search's rule: a lucky success gets more probes
        lucky = [
            (i, request) for i, request, found in zip(owners, requests, drawn)
            if request[1] == verdicts[i].step + 1 and any(p.reward >= 1 for p in found)
        ] + [
            (i, (chosen[i], verdicts[i].step + 1)) for i in candidates
            if verdicts[i].step + 1 < len(chosen[i].step_spans) and settled(chosen[i], verdicts[i].step + 1)
            and book.value(chosen[i].group, prefix_ids(chosen[i], verdicts[i].step + 1))[0] > 0
        ]
        for (i, _), found in zip(lucky, probe([request for _, request in lucky], settings.settle_probes) if lucky else []):
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
    for i, loc in zip(rest, search([chosen[i] for i in rest], book, probe, settings)):
        results[i] = Localization(
            i, loc.error_step, loc.value_before, loc.value_after, loc.probes + spent[i], loc.checks, proposal=verdicts[i].text
        )
    return SelfLocalization(
        localizations=tuple(results[i] for i in range(len(chosen))),
        audited_agreement=tuple(verdicts[i].step == results[i].error_step for i in range(len(chosen)) if audited[i]),
        confirmed=confirmed,
        candidates=len(candidates),
    )


def ground_truth_localize(
    failures: list[Trajectory], book: PrefixBook, probe: ProbeFn, k: int, first_error: Callable[[Trajectory], int | None]
) -> list[Localization]:
    """A diagnostic, never the method (``method.localizer=ground_truth``): each failure's error step is the
    task's ground-truth first wrong step (``first_error``). One check of ``k`` probes from the prefix before
    it estimates V(before) and gives the corrections, as the search's last check would. V(after) is taken
    as 0: the step is wrong, and a lucky final digit after it is what the search's mistakes are made of."""
    truth = [first_error(t) for t in failures]
    asked = [(i, t, e) for i, (t, e) in enumerate(zip(failures, truth)) if e is not None]
    found = probe([(t, e) for _, t, e in asked], k) if asked else []
    results = [Localization(i, None) for i in range(len(failures))]
    for (i, t, e), probes in zip(asked, found):
        book.add(probes)
        before, _ = book.value(t.group, prefix_ids(t, e))
        results[i] = Localization(i, e, value_before=before, value_after=0.0, probes=len(probes), checks=((e, before > 0),))
    return results


def divergence_localize(failures: list[Trajectory], book: PrefixBook) -> list[Localization]:
    """The free localizer (``method.localizer=divergence``): each failure's error step is its divergence
    step, the step after its longest prefix that a verified trajectory of its group shares, where it left
    every known success. No probe is drawn; V(before) and V(after) are the free samples' success rates
    through the prefixes before and through that step. A failure whose prompt has no success is not
    localized."""
    results = []
    for i, t in enumerate(failures):
        c = certified_prefix_steps(book, t, below=len(t.step_spans))
        if c < 0:
            results.append(Localization(i, None))
            continue
        before, _ = book.value(t.group, prefix_ids(t, c))
        after, _ = book.value(t.group, prefix_ids(t, c + 1))
        results.append(Localization(i, c, value_before=before, value_after=after, probes=0, checks=((c, True),)))
    return results
