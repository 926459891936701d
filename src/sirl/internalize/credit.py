"""The localizers of si: where a failure went wrong, found by probing its prefixes (the oracle search),
by the policy's own proposals confirmed by probes (si_internal), at the step after the prefix it shares
with a success (the free divergence localizer), or from the task's ground truth (a diagnostic).

Each returns one :class:`~sirl.types.Localization` per failure; what the methods make of them, the token
advantages, is the credit core's (sirl.credit). The search needs the policy, so it lives here and reaches
it through a probe callback; its values and prefix queries read the group's prefix tree through
:class:`~sirl.internalize.localize.PrefixBook`. Nothing here reads a config object: settings arrive as
plain values or the small frozen :class:`SearchSettings`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sirl.credit.divergence import divergence
from sirl.internalize.localize import PrefixBook, localize, prefix_ids, step_ends
from sirl.types import Localization, Trajectory, Verdict

ProbeFn = Callable[[list[tuple[Trajectory, int]], int], list[list[Trajectory]]]
"""(requests of (trajectory, k steps), continuations per request) -> the verified probes of each request."""


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
    every known success (sirl.credit.divergence). No probe is drawn; V(before) and V(after) are the free
    samples' success rates through the prefixes before and through that step. A failure whose prompt has
    no success is not localized."""
    results = []
    for i, t in enumerate(failures):
        found = divergence(book.tree, book.row(t), step_ends(t))
        if found is None:
            results.append(Localization(i, None))
            continue
        c = found.error_step
        results.append(Localization(i, c, value_before=found.value_before, value_after=found.value_after, probes=0, checks=((c, True),)))
    return results
