"""Self-localization with confirmation, fallback and audits, against the scripted sampler of
test_localize (success depends only on whether the prefix is correct)."""

import random

import pytest

from sirl.internalize import PrefixBook
from sirl.internalize.credit import SearchSettings
from sirl.internalize.repair import VerificationExample, VerificationExamples
from sirl.internalize.selfverify import AuditSchedule, draw_examples
from sirl.methods.si_internal import localize_with_proposals
from sirl.types import Problem, Verdict
from test_localize import PROBLEM, REFERENCE, TASK, ScriptedSampler, make, wrong_at

NEVER = dict(low=1e-9, high=1e-9, window=10)
ALWAYS = dict(low=1.0, high=1.0, window=10)
K = 2


def verdicts(steps):
    """Scripted verdicts of a policy: a step, None ("none") or "junk" (unparsable) per failure."""
    return [Verdict("x?", None, False, 2) if s == "junk" else Verdict(TASK.verdict_text(s), s, True, 1) for s in steps]


def self_localize_one(failure, siblings, proposal, probe, settings, audits=NEVER):
    """si_internal's localization of one failure whose policy proposed ``proposal``."""
    [loc], metrics = localize_with_proposals(
        [failure], verdicts([proposal]), PrefixBook([*siblings, failure]), probe, settings, AuditSchedule(**audits),
        random.Random(0), truth=[TASK.first_error(PROBLEM, failure.text)],
    )
    return loc, metrics


def run(failure, siblings, steps, audits=NEVER):
    sampler = ScriptedSampler()
    loc, metrics = self_localize_one(failure, siblings, steps[0], sampler, SearchSettings(probes=K, drop=0.0), audits)
    return loc, metrics, sampler


UNRELATED_SUCCESS = "Q1;#z"  # verifies, shares no step with the failures: it certifies the prompt only


def test_a_confirmed_self_localization_costs_exactly_the_two_checks():
    failure = make(wrong_at(4))
    loc, metrics, sampler = run(failure, [make(UNRELATED_SUCCESS)], [4])
    assert loc.error_step == 4 and loc.proposal == "5"
    assert loc.probes == 2 * K  # V(prefix of 4 steps) > 0 and V(prefix of 5 steps) = 0, K probes each
    assert [steps for _, steps in sampler.calls[0]] == [4, 5] and len(sampler.calls) == 1
    assert metrics["selfloc/confirmed_frac"] == 1.0 and metrics["selfloc/accuracy"] == 1.0


def test_free_evidence_settles_the_first_check():
    # a verified sibling through the first 4 steps certifies the prefix before the named step
    loc, _, _ = run(make(wrong_at(4)), [make("".join(REFERENCE))], [4])
    assert loc.error_step == 4 and loc.probes == K


@pytest.mark.parametrize("proposal", [2, 6, None, "junk"])
def test_a_wrong_proposal_falls_back_to_the_oracle_search(proposal):
    failure = make(wrong_at(4))
    loc, metrics, sampler = run(failure, [make(UNRELATED_SUCCESS)], [proposal])
    assert loc.error_step == 4  # the oracle's answer, which becomes the self-verification example
    assert metrics["selfloc/accuracy"] == 0.0
    if isinstance(proposal, int):
        assert metrics["selfloc/confirmed_frac"] == 0.0
        assert loc.probes > 2 * K  # the failed checks, then the search


def test_audits_always_search_and_measure_agreement():
    for proposal, agreed in [(4, 1.0), (2, 0.0)]:
        loc, metrics, _ = run(make(wrong_at(4)), [make(UNRELATED_SUCCESS)], [proposal], audits=ALWAYS)
        assert loc.error_step == 4 and metrics["selfloc/agreement"] == agreed and metrics["selfloc/audit_frac"] == 1.0


def test_the_audit_fraction_follows_agreement_within_its_bounds():
    audits = AuditSchedule(low=0.1, high=0.8, window=20)
    assert audits.fraction == 0.8  # nothing measured yet
    rng = random.Random(0)
    for i in range(500):
        audits.record(rng.random() < i / 500)  # agreement rising from 0 to 1
        assert 0.1 <= audits.fraction <= 0.8
    for _ in range(20):
        audits.record(True)
    assert audits.fraction == 0.1  # full agreement: the floor, never zero
    for _ in range(20):
        audits.record(False)
    assert audits.fraction == 0.8
    with pytest.raises(ValueError, match="audit_min"):
        AuditSchedule(low=0.0, high=0.5, window=5)


def test_examples_are_drawn_with_the_requested_share_of_verified_solutions():
    store = VerificationExamples(capacity=100)
    for i in range(30):
        store.add(VerificationExample(PROBLEM, "x", i % 5, step=i))
    for i in range(10):
        store.add(VerificationExample(PROBLEM, "y", None, step=i))
    drawn = draw_examples(store, 16, none_share=0.25, rng=random.Random(0))
    assert len(drawn) == 16 and sum(e.first_error is None for e in drawn) == 4
    drawn = draw_examples(store, 60, none_share=0.25, rng=random.Random(0))
    assert len(drawn) == 40  # all there is


def confirm_at_k1(failure, siblings, proposal, sampler, settle=0, reuse=False):
    """self_localize of one failure at K=1 with the drop rule (0.5), never audited; returns the localization,
    the metrics and the settle requests (``settle`` probes each, drawn by ``sampler``; 0 for none)."""
    settles = []

    def probe(requests, k):
        if k == settle:
            settles.append(requests)
        return sampler(requests, k)

    settings = SearchSettings(probes=1, drop=0.5, settle_probes=settle, reuse_samples=reuse)
    loc, metrics = self_localize_one(failure, siblings, proposal, probe, settings)
    return loc, metrics, settles


def test_settle_probes_decide_a_lucky_second_check():
    from test_localize import RecoverableSampler

    failure = make(wrong_at(3))
    siblings = [make("".join(REFERENCE)), make("".join(REFERENCE))]  # they certify the prefix before step 3
    # One probe after the wrong step verifies by luck: V̂ = 1/2 > 0.5 * 2/3, the proposal is not confirmed
    loc, metrics, _ = confirm_at_k1(failure, siblings, 3, RecoverableSampler())
    assert metrics["selfloc/confirmed_frac"] == 0.0
    # 7 settle probes: 2 of 9 samples verify, 2/9 < 1/3: confirmed for 1 + 7 probes (the first check is free)
    loc, metrics, settles = confirm_at_k1(failure, siblings, 3, RecoverableSampler(), settle=7)
    assert metrics["selfloc/confirmed_frac"] == 1.0 and (loc.error_step, loc.probes) == (3, 8)
    assert [[k for _, k in r] for r in settles] == [[4]]


def test_reused_samples_make_a_confirmation_free():
    failure, twin = make(wrong_at(4)), make(wrong_at(4))  # the twin failed through the same wrong step
    siblings = [make("".join(REFERENCE)), twin]  # the success certifies the prefix before the named step
    sampler = ScriptedSampler()
    loc, metrics, _ = confirm_at_k1(failure, siblings, 4, sampler, reuse=True)
    assert metrics["selfloc/confirmed_frac"] == 1.0 and (loc.error_step, loc.probes, sampler.calls) == (4, 0, [])
    # A proposal one step too early is not confirmed by the same samples: the success passes through the
    # prefix after the named step, so the second check finds value there, and the search takes over.
    loc, metrics, _ = confirm_at_k1(failure, siblings, 3, ScriptedSampler(), reuse=True)
    assert metrics["selfloc/confirmed_frac"] == 0.0 and loc.error_step == 4
    # Without reuse the second check draws its probe.
    loc, metrics, _ = confirm_at_k1(failure, siblings, 4, ScriptedSampler())
    assert metrics["selfloc/confirmed_frac"] == 1.0 and (loc.error_step, loc.probes) == (4, 1)


def test_a_reused_lucky_sample_still_gets_settle_probes():
    failure = make(wrong_at(3))
    lucky_twin = make(wrong_at(3)[: len("".join(REFERENCE[:4]))] + "".join(REFERENCE[4:]))  # wrong step 3, right answer
    assert lucky_twin.reward == 1
    siblings = [make("".join(REFERENCE)), make("".join(REFERENCE)), lucky_twin]
    # The twin settles the second check without a probe: V̂(4 steps) = 1/2 (twin and failure), not under
    # 0.5 * V̂(3 steps) = 0.5 * 3/4, so the proposal is not confirmed ...
    loc, metrics, _ = confirm_at_k1(failure, siblings, 3, ScriptedSampler(), reuse=True)
    assert metrics["selfloc/confirmed_frac"] == 0.0
    # ... unless its success draws the settle probes, as a probe's would: 1 success in 9, confirmed for 7.
    loc, metrics, settles = confirm_at_k1(failure, siblings, 3, ScriptedSampler(), settle=7, reuse=True)
    assert metrics["selfloc/confirmed_frac"] == 1.0 and (loc.error_step, loc.probes) == (3, 7)
    assert [[k for _, k in r] for r in settles] == [[4]]


def test_labels_from_a_localization_in_each_format():
    # A failure localized at step 2 (0-based 1): step 1 judged right, step 2 wrong, nothing after it;
    # a verified solution: every step judged right.
    from sirl.config import ConfigError, ExperimentConfig
    from sirl.internalize.selfverify import supervised_batch
    from sirl.methods import get_method
    from sirl.tasks import load_task
    from sirl.tokenizer import build_char_tokenizer

    arith = load_task("arith")
    tokenizer = build_char_tokenizer(arith.alphabet())
    problem = Problem(prompt="7+5*3=", answer="6", meta={"numbers": [7, 5, 3], "ops": "+*", "difficulty": 2})
    examples = [VerificationExample(problem, "7+5=2;2*3=5;#5", 1, 0), VerificationExample(problem, "7+5=2;2*3=6;#6", None, 0)]
    for fmt, expected in [("index", ["2", "none"]), ("judgments", ["+-", "+++"]), ("rederive", ["7+5=2?2+2*3=6?5-", "7+5=2?2+2*3=6?6+#6?6+"])]:
        pairs = supervised_batch(arith, tokenizer, examples, fmt)
        assert [tokenizer.decode(target[:-1]) for _, target in pairs] == expected
        assert all(target[-1] == tokenizer.eos_token_id for _, target in pairs)
        assert tokenizer.decode(pairs[0][0]) == "7+5*3=[1]7+5=2;[2]2*3=5;[3]#5\n?"
    # rederive needs a task that re-derives its steps; the config is refused before anything runs
    config = ExperimentConfig()
    config.method.si_internal.verdict_format = "rederive"
    get_method("si_internal").check(config, arith)
    with pytest.raises(ConfigError, match="use method.si_internal.verdict_format=index or judgments"):
        get_method("si_internal").check(config, load_task("gsm8k"))
