"""The oracle localizer against a scripted sampler whose success depends only on whether the prefix is
correct, so the first irrecoverable step is planted and known."""

import math
import random

import pytest
import torch

from sirl.methods.settings import SiSettings
from sirl.credit.divergence import choose_failures
from sirl.credit.step_advantages import step_index as token_step_index
from sirl.internalize import PrefixBook, localize, prefix_ids
from sirl.internalize.localize import step_ends
from sirl.internalize.selfverify import AuditSchedule
from sirl.methods import MethodContext, MethodMemory, get_method
from sirl.tasks.base import Task, split_on_separator
from sirl.types import Problem, Trajectory

def search_si(**changes) -> SiSettings:
    """si with the oracle search localizer, its error penalty on the whole step and the probes' baseline over
    every free sample (si's defaults before the divergence localizer became one); ``changes`` on top."""
    return SiSettings(**{"localizer": "search", "error_span": "step", "probe_baseline": "all", **changes})


REFERENCE = ["a1;", "b2;", "c3;", "d4;", "e5;", "f6;", "g7;", "#z"]  # 8 steps


class Script(Task):
    """Steps end in ";"; the outcome is right iff the response ends with the reference's answer "#z"."""

    name = "script"

    def sample(self, rng, split):
        return Problem("q:", "".join(REFERENCE), {})

    def verify(self, problem, completion):
        return float(completion.endswith("#z"))

    def split_steps(self, completion):
        return split_on_separator(completion, ";")

    def reference_solution(self, problem):
        return problem.answer

    def first_error(self, problem, completion):
        steps = [completion[a:b] for a, b in self.split_steps(completion)]
        for i, s in enumerate(steps):
            if i >= len(REFERENCE) or s != REFERENCE[i]:
                return i
        return None if len(steps) == len(REFERENCE) else len(steps) - 1


def step_index(t: Trajectory) -> torch.Tensor:
    """The step of each of the trajectory's tokens (-1 on its given prefix)."""
    return token_step_index(step_ends(t), len(t.response_ids), t.prefix_len)


def select_failures(failures, book, rates, budget, rule="half_solved", rng=None):
    """Positions in ``failures`` (trajectories of ``book``) that the credit core chooses."""
    ends = [step_ends(t) for t in book.trajectories]
    return choose_failures(book.tree, [book.row(t) for t in failures], ends, rates, budget, rule, rng)


TASK = Script()
PROBLEM = TASK.sample(None, "train")


def make(text: str, group: int = 0, prefix_len: int = 0) -> Trajectory:
    ids = [ord(c) for c in text]
    spans = TASK.split_steps(text)
    return Trajectory(PROBLEM, [1], ids, [0.0] * len(ids), text, TASK.verify(PROBLEM, text), False, group, spans, prefix_len)


def wrong_at(step: int) -> str:
    """The reference with step ``step`` (0-based) corrupted and every later step following it."""
    return "".join(REFERENCE[:step]) + "".join(s.upper() for s in REFERENCE[step:])


class ScriptedSampler:
    """Continues a prefix correctly iff the prefix is correct so far (the planted value function:
    V = 1 on correct prefixes, 0 after the first wrong step). Records every call."""

    def __init__(self):
        self.calls: list[list[tuple[Trajectory, int]]] = []

    def __call__(self, requests, k=2):
        self.calls.append(list(requests))
        out = []
        for t, steps in requests:
            prefix = "".join(chr(c) for c in prefix_ids(t, steps))
            reference = "".join(REFERENCE)
            text = reference if reference.startswith(prefix) else prefix + "x;#y"
            out.append([make(text, t.group, prefix_len=len(prefix)) for _ in range(k)])
        return out

    def probe(self, requests, k):  # the interface methods sample probes through (sirl.methods.base.PolicySampler)
        return self(requests, k)


def method_credit(name, group, sampler, config: SiSettings):
    """The registered method ``name``'s credit for ``group``, probing through ``sampler``; returns the
    credit and the method's memory (repair buffer, self-verification examples)."""
    memory = MethodMemory(64, 64, AuditSchedule(1.0, 1.0, 10))
    context = MethodContext(TASK, config, "grpo", sampler, random.Random(0), memory, step=1)
    return get_method(name).credit(group, context), memory


@pytest.mark.parametrize("error", range(len(REFERENCE)))
def test_divergence_search_finds_the_planted_step_with_k_probes(error):
    failure = make(wrong_at(error))
    book = PrefixBook([make("".join(REFERENCE)), failure])  # one verified sibling
    sampler = ScriptedSampler()
    [loc] = localize([failure], book, lambda r: sampler(r, 2), free_evidence=True, first_check="divergence")
    assert loc.error_step == error == TASK.first_error(PROBLEM, failure.text)
    # the sibling certifies the first `error` steps, the first probe checks the next step: K probes,
    # none when the failure diverges at its very last step (V of the full failed response is 0)
    assert loc.probes == (0 if error == len(REFERENCE) - 1 else 2)
    assert loc.value_before > 0 and loc.value_after == 0


@pytest.mark.parametrize("error", range(len(REFERENCE)))
def test_bisection_without_free_evidence_finds_it_within_the_log_bound(error):
    failure = make(wrong_at(error))
    book = PrefixBook([make("".join(REFERENCE)), failure])
    sampler = ScriptedSampler()
    [loc] = localize([failure], book, lambda r: sampler(r, 2), free_evidence=False, first_check="bisect")
    assert loc.error_step == error
    n = len(REFERENCE)
    assert loc.probes <= 2 * math.ceil(math.log2(n + 1))
    # every check agrees with the planted values: V(k) > 0 iff the first k steps are correct
    assert all(ok == (k <= error) for k, ok in loc.checks)


def test_searches_of_a_step_share_rounds_and_probes_certify_other_failures():
    failures = [make(wrong_at(e), group=0) for e in (1, 3, 6)]
    book = PrefixBook([make("".join(REFERENCE), group=0), *failures])
    sampler = ScriptedSampler()
    locs = localize(failures, book, lambda r: sampler(r, 2), free_evidence=False, first_check="bisect")
    assert [loc.error_step for loc in locs] == [1, 3, 6]
    assert len(sampler.calls) <= math.ceil(math.log2(len(REFERENCE) + 1))  # one engine call per round
    assert all(len(call) <= 3 for call in sampler.calls)


def test_a_prompt_without_any_success_is_not_localized():
    failure = make(wrong_at(2))
    sampler = ScriptedSampler()
    [loc] = localize([failure], PrefixBook([failure, make(wrong_at(0))]), lambda r: sampler(r, 2))
    assert loc.error_step is None and loc.probes == 0 and not sampler.calls


def test_prefix_values_use_only_free_samples():
    success, failure = make("".join(REFERENCE)), make(wrong_at(4))
    probe_from_step_6 = make(wrong_at(6), prefix_len=len("".join(REFERENCE[:6])))
    book = PrefixBook([success, failure, probe_from_step_6])
    # through the first 2 steps pass all three, but the probe was forced past step 2: it is not counted
    assert book.value(0, prefix_ids(success, 2)) == (0.5, 2)
    assert book.certified(0, prefix_ids(success, 2))
    assert not book.certified(0, prefix_ids(failure, 5))


def test_failure_selection_prefers_uncertain_prompts_round_robin():
    # group 0 solved 1 of 4 (rate 0.25), group 1 solved 2 of 4 (rate 0.5): group 1 first, then alternate
    g0 = [make("".join(REFERENCE), 0)] + [make(wrong_at(e), 0) for e in (1, 2, 5)]
    g1 = [make("".join(REFERENCE), 1)] * 2 + [make(wrong_at(e), 1) for e in (3, 6)]
    book = PrefixBook(g0 + g1)
    failures = [t for t in g0 + g1 if t.reward < 1]
    chosen = [failures[i] for i in select_failures(failures, book, {0: 0.25, 1: 0.5}, budget=3)]
    assert [(t.group, TASK.first_error(PROBLEM, t.text)) for t in chosen] == [(1, 6), (0, 5), (1, 3)]


def test_each_failure_choice_orders_the_prompts_its_own_way_round_robin():
    # three prompts solved 1, 2 and 3 times of 4 (rates 0.25, 0.5, 0.75), and one never solved (group 3),
    # whose failure no rule may pick: nothing shares a verified prefix with it
    groups = []
    for g, (solved, errors) in enumerate([(1, (1, 2, 5)), (2, (3, 6)), (3, (4,)), (0, (2, 3, 4, 5))]):
        groups += [make("".join(REFERENCE), g)] * solved + [make(wrong_at(e), g) for e in errors]
    book = PrefixBook(groups)
    failures = [t for t in groups if t.reward < 1]
    rates = {0: 0.25, 1: 0.5, 2: 0.75, 3: 0.0}

    def picks(rule, budget, rng=None):
        return [(t.group, TASK.first_error(PROBLEM, t.text)) for t in
                (failures[i] for i in select_failures(failures, book, rates, budget, rule, rng))]

    # within a prompt the latest error first (the longest prefix a success shares); ties: the lower group
    assert picks("half_solved", 4) == [(1, 6), (0, 5), (2, 4), (1, 3)]  # |rate - 1/2|: 0, 0.25, 0.25
    assert picks("least_solved", 4) == [(0, 5), (1, 6), (2, 4), (0, 2)]
    assert picks("most_solved", 4) == [(2, 4), (1, 6), (0, 5), (1, 3)]
    everything = sorted((t.group, TASK.first_error(PROBLEM, t.text)) for t in failures if t.group != 3)
    for rule in ("half_solved", "least_solved", "most_solved", "random"):
        assert sorted(picks(rule, 99, random.Random(0))) == everything  # a budget that does not bind takes all
    # random: a permutation that depends on the stream and repeats with it, still one per prompt per round
    draws = {tuple(picks("random", 6, random.Random(seed))) for seed in range(20)}
    assert len(draws) > 1 and draws == {tuple(picks("random", 6, random.Random(seed))) for seed in range(20)}
    for draw in draws:
        assert sorted(g for g, _ in draw[:3]) == [0, 1, 2]
    with pytest.raises(ValueError, match="random.*rng"):
        select_failures(failures, book, rates, 2, "random")
    with pytest.raises(ValueError, match="unknown failure choice"):
        select_failures(failures, book, rates, 2, "nearest")


def test_si_credit_by_hand():
    # A group of 4: one success, failures with errors at steps 2 and 5, and one more at 5. Rewards 1,0,0,0:
    # GRPO outcome advantages 1.5 and -0.5 (std 0.5), so value differences are scaled by 1 / 0.5 = 2.
    # Each failure: V(good prefix) = free samples through it that succeeded. For the step-2 failure the
    # prefix through 2 steps is shared by all four samples (1 success): V = 1/4, and its step 2 gets
    # -(1/4) * 2 = -0.5. The two step-5 failures share 5 steps with the success: V = 1/3 -> -2/3.
    group = [make("".join(REFERENCE)), make(wrong_at(2)), make(wrong_at(5)), make(wrong_at(5))]
    sampler = ScriptedSampler()
    config = search_si(probes=2, train_on_probes=True)
    credit, _ = method_credit("si", group, sampler, config)
    assert credit.metrics["loc/accuracy"] == 1.0 and credit.metrics["loc/localized_frac"] == 1.0
    assert torch.allclose(credit.token_advantages[0], torch.full((len(group[0].response_ids),), 1.5), atol=1e-4)
    for row, error, value in [(1, 2, 0.25), (2, 5, 1 / 3), (3, 5, 1 / 3)]:
        steps = step_index(group[row])
        expected = torch.where(steps == error, -value * 2, 0.0)
        assert torch.allclose(credit.token_advantages[row], expected, atol=1e-4), row
    # probes join as extra rows outside the reference batch with R - V(prefix); here every probe continued
    # a prefix that already holds the wrong step, all of them failed, so V(prefix) = 0 and R - V = 0
    extra = credit.rows[4:]
    assert extra and not any(credit.reference[4:]) and all(p.prefix_len > 0 for p in extra)
    assert credit.row_kinds[:4] == ("sample",) * 4 and set(credit.row_kinds[4:]) == {"probe"}  # none verified
    assert all(torch.all(a == 0) for a in credit.token_advantages[4:])


def test_every_correction_verifies():
    # bisection probes from correct prefixes succeed: those are corrections of the good prefix
    group = [make("".join(REFERENCE)), make(wrong_at(3))]
    sampler = ScriptedSampler()
    config = search_si(probes=2, free_evidence=False, first_check="bisect", correction_samples=2)
    credit, memory = method_credit("si", group, sampler, config)
    [found] = credit.localizations
    failure, loc, correction = credit.rows[found.row], found.localization, credit.rows[found.correction_row]
    assert failure is group[1] and loc.error_step == 3 and credit.kind(found.correction_row) == "correction"
    assert TASK.verify(PROBLEM, correction.text) == 1.0
    assert correction.response_ids[: correction.prefix_len] == prefix_ids(failure, 3)
    assert credit.metrics["repair/added"] >= 1
    assert [(e.problem, e.prefix_ids) for e in memory.repair.entries] == [(failure.problem, prefix_ids(failure, 3))]
    # the oracle's verdicts are kept for self-verification: the failure's step, and "none" for the success
    assert [(e.completion, e.first_error) for e in memory.verification.examples] == [(failure.text, 3), (group[0].text, None)]


def test_the_ground_truth_localizer_names_the_true_step_by_hand():
    # The diagnostic localizer (method.localizer=ground_truth). Rewards 1, 0: the group's std (unbiased) is
    # sqrt(1/2), so value differences are scaled by sqrt(2). The error step is the ground truth, 3; K = 2
    # probes from the prefix through 3 steps both verify, so V(before) = 3/4 (the success, the failure and
    # both probes pass through it, 3 of them verified) and V(after) = 0 by the ground truth: step 3 gets
    # -(3/4 - 0) * sqrt(2).
    group = [make("".join(REFERENCE)), make(wrong_at(3))]
    sampler = ScriptedSampler()
    config = search_si(probes=2, localizer="ground_truth")
    credit, _ = method_credit("si", group, sampler, config)
    [found] = credit.localizations
    failure, loc = credit.rows[found.row], found.localization
    correction = credit.rows[found.correction_row] if found.correction_row is not None else None
    assert (loc.error_step, loc.probes, loc.value_before, loc.value_after) == (3, 2, 0.75, 0.0)
    assert [[(t is failure, k) for t, k in call] for call in sampler.calls] == [[(True, 3)]]
    assert credit.metrics["loc/accuracy"] == 1.0
    assert torch.allclose(credit.token_advantages[1], torch.where(step_index(group[1]) == 3, -0.75 * math.sqrt(2), 0.0))
    assert correction is not None and TASK.verify(PROBLEM, correction.text) == 1.0


class RecoverableSampler(ScriptedSampler):
    """Like ScriptedSampler, but from a prefix whose only wrong step is the last one, one probe in four
    still verifies (the wrong step leaves a chance to recover, as a lucky final digit does on arith)."""

    def __call__(self, requests, k=4):
        self.calls.append(list(requests))
        out = []
        reference = "".join(REFERENCE)
        for t, steps in requests:
            prefix = "".join(chr(c) for c in prefix_ids(t, steps))
            recoverable = not reference.startswith(prefix) and reference.startswith(prefix[:-3])
            recovered = prefix + "".join(REFERENCE[steps:])  # the rest written right after the wrong step
            texts = [
                reference if reference.startswith(prefix) else recovered if recoverable and i == 0 else prefix + "x;#y"
                for i in range(k)
            ]
            out.append([make(text, t.group, prefix_len=len(prefix)) for text in texts])
        return out


def test_the_drop_rule_finds_a_wrong_step_that_leaves_a_little_value():
    failure = make(wrong_at(3))
    siblings = [make("".join(REFERENCE)), make("".join(REFERENCE)), failure]
    # V(good prefix through 3 steps) = 2/3 from the siblings; the wrong step keeps 1 in 5 (one of four
    # probes plus the failure itself): 0.2 < 0.5 * 2/3, so with drop 0.5 step 3 is the error ...
    [loc] = localize([failure], PrefixBook(siblings), lambda r: RecoverableSampler()(r, 4), drop=0.5)
    assert loc.error_step == 3
    assert loc.value_before == pytest.approx(2 / 3) and loc.value_after == pytest.approx(0.2)
    # ... while docs/method.md's V > 0 rule passes it (a probe verified) and blames a later step
    [loc] = localize([failure], PrefixBook(siblings), lambda r: RecoverableSampler()(r, 4), drop=0.0)
    assert loc.error_step > 3
    # The ground-truth localizer, under the same V > 0 rule, is not misled: it names step 3 whatever the
    # probes after it do.
    config = search_si(probes=4, drop=0.0, localizer="ground_truth")
    credit, _ = method_credit("si", siblings, RecoverableSampler(), config)
    assert [found.localization.error_step for found in credit.localizations] == [3]


def test_settle_probes_overrule_a_lucky_first_probe_and_cost_nothing_otherwise():
    failure = make(wrong_at(3))
    siblings = [make("".join(REFERENCE)), make("".join(REFERENCE)), failure]
    sampler = RecoverableSampler()  # every call's first probe from the wrong prefix verifies
    # K = 1: the one probe after the wrong step verifies, V̂ = 1/2 (it and the failure) > 0.5 * V̂(3) = 1/3
    [loc] = localize([failure], PrefixBook(siblings), lambda r: sampler(r, 1), drop=0.5)
    assert loc.error_step > 3
    # With 7 settle probes that prefix holds 2 successes in 9 samples: 2/9 < 1/3, so step 3 is the error,
    # found with one check: 1 probe + 7 settle probes.
    settles = []
    [loc] = localize(
        [failure], PrefixBook(siblings), lambda r: sampler(r, 1), drop=0.5, settle=lambda r: settles.append(r) or sampler(r, 7)
    )
    assert (loc.error_step, loc.probes, loc.value_after) == (3, 8, pytest.approx(2 / 9))
    assert [[(t is failure, k) for t, k in r] for r in settles] == [[(True, 4)]]
    # A check whose probes all fail is decided on them alone: no settle probes are drawn.
    plain = make(wrong_at(5))
    settles.clear()
    [loc] = localize(
        [plain], PrefixBook([make("".join(REFERENCE)), plain]), lambda r: ScriptedSampler()(r, 1), drop=0.5,
        settle=lambda r: settles.append(r) or ScriptedSampler()(r, 7),
    )
    assert (loc.error_step, loc.probes, settles) == (5, 1, [])



@pytest.mark.parametrize("error", range(len(REFERENCE) - 1))
def test_the_divergence_localizer_names_the_step_after_the_shared_prefix_without_probes(error):
    group = [make("".join(REFERENCE)), make("".join(REFERENCE)), make(wrong_at(error))]
    sampler = ScriptedSampler()
    credit, _ = method_credit("si", group, sampler, SiSettings(localizer="divergence"))
    [found] = credit.localizations
    # both successes pass through the prefix before the error (V = 2/3 with the failure), none through it
    assert (found.localization.error_step, found.localization.probes, sampler.calls) == (error, 0, [])
    assert found.localization.value_before == pytest.approx(2 / 3) and found.localization.value_after == 0.0
    assert credit.metrics["loc/accuracy"] == 1.0 and credit.rows == tuple(group)  # nothing drawn, nothing added


def test_the_error_penalty_can_start_where_the_failure_left_its_successful_sibling():
    # The failure's step 3 is "D4;" against the success's "d4;": they differ from its first token, so
    # nothing changes; a failure whose step 3 is "d5;" shares "d" with the success and the penalty skips it.
    success = make("".join(REFERENCE))
    late = make("".join(REFERENCE[:3]) + "d5;" + "".join(s.upper() for s in REFERENCE[4:]))
    sampler = ScriptedSampler()
    whole, _ = method_credit("si", [success, late], sampler, search_si(probes=2))
    split, _ = method_credit("si", [success, late], ScriptedSampler(), search_si(probes=2, error_span="first_difference"))
    start, end = late.step_spans[3]
    assert whole.localizations[0].localization.error_step == 3
    assert torch.all(whole.token_advantages[1][start:end] < 0)
    assert split.token_advantages[1][start] == 0 and torch.all(split.token_advantages[1][start + 1 : end] < 0)
    assert torch.equal(split.token_advantages[1][start + 1 :], whole.token_advantages[1][start + 1 :])


def test_a_probes_baseline_can_leave_out_the_probe_and_its_failure():
    # One success, one failure wrong at step 4, K = 2 bisection probes. Under "all", a probe from the
    # failure's wrong prefix is compared with a value that counts itself and the failure; under
    # "leave_out" only with the other free samples through that prefix.
    group = [make("".join(REFERENCE)), make(wrong_at(4))]
    config = dict(probes=2, free_evidence=False, first_check="bisect", train_on_probes=True)
    plain, _ = method_credit("si", group, ScriptedSampler(), search_si(**config))
    left, _ = method_credit("si", group, ScriptedSampler(), search_si(**config, probe_baseline="leave_out"))
    assert len(plain.rows) == len(left.rows) > 2
    book = PrefixBook(plain.rows)
    for p, a, b in zip(plain.rows[2:], plain.token_advantages[2:], left.token_advantages[2:]):
        prefix = p.response_ids[: p.prefix_len]
        value, _ = book.value(p.group, prefix)
        others, n = book.value_without(p.group, prefix, [p, group[1]])
        scale = 2**0.5  # rewards 1, 0: std 1/sqrt(2)
        assert a[-1].item() == pytest.approx((p.reward - value) * scale, abs=1e-5)
        assert b[-1].item() == pytest.approx(((p.reward - others) if n else 0.0) * scale, abs=1e-5)
    assert any(not torch.allclose(a, b) for a, b in zip(plain.token_advantages[2:], left.token_advantages[2:]))
