"""Methods of the registry on hand-made rollouts: what each puts on which token."""

import random

import pytest
import torch

from sirl.internalize.selfverify import AuditSchedule
from sirl.methods import METHODS, MethodContext, MethodMemory, get_method
from sirl.methods.common import outcome_advantages
from sirl.methods.settings import SETTINGS, RandomResetSettings, SiInternalSettings, TreeBranchSettings
from sirl.types import Problem, Trajectory


def rollout(tokens: list[int], reward: float, group: int = 0) -> Trajectory:
    return Trajectory(Problem(f"p{group}", "a"), [1], tokens, [0.0] * len(tokens), "", reward, False, group, [(0, len(tokens))])


def credit(name: str, rollouts, **settings):
    """Method ``name``'s credit with its settings (``settings`` over their defaults) and grpo's estimator."""
    own = SETTINGS[name](**settings) if name in SETTINGS else None
    context = MethodContext(None, own, "grpo", None, random.Random(0), MethodMemory(8, 8, AuditSchedule(1, 1, 4)), 1)
    return get_method(name).credit(rollouts, context)


GROUP = [rollout([5, 6, 7, 2], 1.0), rollout([5, 6, 8, 2], 0.0), rollout([5, 9, 2], 0.0), rollout([5, 6, 7, 2], 1.0), rollout([4, 4, 2], 1.0, 1), rollout([4, 3, 2], 0.0, 1)]


def test_tree_credit_keeps_grpos_advantage_per_row_and_puts_it_where_the_paths_part():
    tree = credit("tree", GROUP)
    grpo = outcome_advantages(GROUP, "grpo")
    for row, adv, outcome in zip(GROUP, tree.token_advantages, grpo):
        assert adv.sum().item() == pytest.approx(outcome.item(), abs=1e-4)  # the row's total is GRPO's advantage
        assert adv[0].item() == 0.0  # the first token, shared by the whole group
    # group 0 (std 1/sqrt(3) of rewards 1, 0, 0, 1): token "6" after [5] moves V from 1/2 to 2/3
    assert tree.token_advantages[0][1].item() == pytest.approx((2 / 3 - 1 / 2) * 3**0.5, rel=1e-4)
    # tokens where V does not change: group 0's shared "5" (4), the "2" after [5,9] (1), both "2"s after
    # [5,6,7] and the one after [5,6,8] (3); group 1's "4" (2) and its two final "2"s (2): 12 of 21
    assert tree.metrics["tree/zero_frac"] == pytest.approx(12 / 21)


def test_mixing_in_the_outcome_advantage():
    half = credit("tree", GROUP, outcome_mix=0.5)
    plain, outcome = credit("tree", GROUP), credit("grpo", GROUP)
    for a, p, o in zip(half.token_advantages, plain.token_advantages, outcome.token_advantages):
        assert torch.allclose(a, 0.5 * p + 0.5 * o, atol=1e-6)
    assert all(torch.allclose(a, o) for a, o in zip(credit("tree", GROUP, outcome_mix=1.0).token_advantages, outcome.token_advantages))


def test_tree_variants_leave_one_out_values_and_node_count_weighting():
    # Group 0 of GROUP: rewards 1, 0, 0, 1 over [5,6,7,2], [5,6,8,2], [5,9,2], [5,6,7,2]; group 1: 1, 0.
    # grpo's scale, 1 / the sample std: sqrt(3) and sqrt(2).
    loo = credit("tree", GROUP, values="leave_one_out")
    rloo = outcome_advantages(GROUP, "rloo")  # R_i - mean of the others
    scale = {0: 3**0.5, 1: 2**0.5}
    for row, adv, score in zip(GROUP, loo.token_advantages, rloo):
        assert adv.sum().item() == pytest.approx(score.item() * scale[row.group], abs=1e-4)
    # the failure [5,9,2] leaves three rows whose other members' rate is 2/3 at "9": -(2/3) * sqrt(3)
    assert loo.token_advantages[2][1].item() == pytest.approx(-(2 / 3) * 3**0.5, rel=1e-4)
    weighted, plain = credit("tree", GROUP, weighting="node_count"), credit("tree", GROUP)
    # "6" after [5] is sampled by 3 rows, "7" after [5,6] by 2, "8" and "9" by one
    assert weighted.token_advantages[0][1].item() == pytest.approx(plain.token_advantages[0][1].item() / 3, rel=1e-5)
    assert weighted.token_advantages[0][2].item() == pytest.approx(plain.token_advantages[0][2].item() / 2, rel=1e-5)
    assert weighted.token_advantages[1][2].item() == pytest.approx(plain.token_advantages[1][2].item(), rel=1e-5)
    assert weighted.token_advantages[2][1].item() == pytest.approx(plain.token_advantages[2][1].item(), rel=1e-5)


def test_every_method_is_registered_once_with_a_summary():
    # (the registry is a dict, so a name is there once; other modules may register more methods)
    assert {"dr_grpo", "grpo", "random_reset", "rloo", "si", "si_internal", "tree", "tree_branch", "vine"} <= set(METHODS)
    assert all(m.name == name and m.summary for name, m in METHODS.items())


def test_each_settings_class_belongs_to_a_registered_method_and_repair_methods_have_repair_settings():
    """sirl.methods.settings names the methods with settings (the config's sections) without importing them:
    each name is a registered method, and a method that draws from the repair buffer reads its share there."""
    from sirl.methods.base import Method, register
    from sirl.methods.settings import Repair

    assert set(SETTINGS) <= set(METHODS) and {"si", "si_internal", "prime"} <= set(SETTINGS)
    assert all(issubclass(SETTINGS[name], Repair) for name, m in METHODS.items() if m.uses_repair)
    with pytest.raises(ValueError, match="'no_settings' uses the repair buffer, so its settings"):
        register(Method("no_settings", "a repair method without settings", lambda rollouts, context: None, uses_repair=True))
    assert "no_settings" not in METHODS


def test_tree_branch_branches_at_the_decision_point_and_scores_the_branch_leave_one_out():
    from test_localize import PROBLEM, REFERENCE, TASK, make, wrong_at

    from sirl.internalize.localize import prefix_ids

    class HalfRight:
        """From any prefix, the first continuation finishes the reference and the second goes wrong."""

        def __init__(self):
            self.requests = []

        def probe(self, requests, k):
            self.requests.append([(t, steps) for t, steps in requests])
            out = []
            for t, steps in requests:
                prefix = "".join(chr(c) for c in prefix_ids(t, steps))
                texts = ["".join(REFERENCE), prefix + "x;#y"][:k]
                out.append([make(text, t.group, prefix_len=len(prefix)) for text in texts])
            return out

    success, failure = make("".join(REFERENCE)), make(wrong_at(3))
    sampler = HalfRight()
    memory = MethodMemory(8, 8, AuditSchedule(1, 1, 4))
    context = MethodContext(TASK, TreeBranchSettings(branch_samples=2), "grpo", sampler, random.Random(0), memory, 1)
    out = get_method("tree_branch").credit([success, failure], context)
    # the decision point is step 3 (0-based), where the failure left its verified sibling: no probe to find it
    assert [[(t is failure, steps) for t, steps in call] for call in sampler.requests] == [[(True, 3)]]
    [found] = out.localizations
    assert (found.row, found.localization.error_step, found.correction_row) == (1, 3, 2)
    assert TASK.first_error(PROBLEM, failure.text) == 3 and out.metrics["loc/accuracy"] == 1.0
    assert out.row_kinds == ("sample", "sample", "correction", "branch") and out.reference == (True, True, False, False)
    # leave-one-out in the branch: +1 and -1, on the group's scale (rewards 1, 0: std 1/sqrt(2))
    assert [a.sum().item() for a in out.token_advantages[2:]] == pytest.approx([2**0.5, -(2**0.5)], rel=1e-4)
    assert all(torch.all(a[: len(prefix_ids(failure, 3))] == 0) for a in out.token_advantages[2:])  # the given prefix
    # the group's own rows keep their tree credit, and the good prefix goes to the repair buffer
    tree = credit("tree", [success, failure])
    assert all(torch.equal(a, b) for a, b in zip(out.token_advantages[:2], tree.token_advantages))
    assert [e.prefix_ids for e in memory.repair.entries] == [prefix_ids(failure, 3)]


@pytest.mark.parametrize("rule, branched", [("half_solved", 1), ("least_solved", 0), ("most_solved", 2)])
def test_tree_branch_spends_its_budget_where_the_failure_choice_says(rule, branched):
    from test_localize import REFERENCE, TASK, make, wrong_at

    class Recorder:
        def __init__(self):
            self.requests = []

        def probe(self, requests, k):
            self.requests += [t.group for t, _ in requests]
            return [[make("".join(REFERENCE), t.group)] * k for t, _ in requests]

    # prompts solved 1, 2 and 3 times of 4; a budget of one branch
    rollouts = []
    for g, solved in enumerate((1, 2, 3)):
        rollouts += [make("".join(REFERENCE), g)] * solved + [make(wrong_at(2), g)] * (4 - solved)
    sampler = Recorder()
    settings = TreeBranchSettings(max_localizations=1, failure_choice=rule)
    context = MethodContext(TASK, settings, "grpo", sampler, random.Random(0), MethodMemory(8, 8, AuditSchedule(1, 1, 4)), 1)
    out = get_method("tree_branch").credit(rollouts, context)
    assert sampler.requests == [branched] and out.metrics["loc/budget_skipped"] == 5


@pytest.mark.parametrize("name", ["si_internal", "random_reset"])
def test_blind_resets_branch_from_groups_with_no_success(name):
    """A group where every sample failed gets a branch group from a reset point: the policy's own verdict
    (si_internal: just before the step it names) or a random number of steps (random_reset)."""
    from test_localize import PROBLEM, REFERENCE, TASK, make, wrong_at

    from sirl.internalize.localize import prefix_ids
    from sirl.types import Verdict

    class Scripted:
        def __init__(self):
            self.requests, self.proposed = [], []

        def probe(self, requests, k):
            self.requests.append([(t, steps) for t, steps in requests])
            out = []
            for t, steps in requests:
                prefix = "".join(chr(c) for c in prefix_ids(t, steps))
                texts = [prefix + "".join(REFERENCE[steps:]), prefix + "x;#y"]  # one finishes (ends in #z), one not
                out.append([make(text, t.group, prefix_len=len(prefix)) for text in texts[:k]])
            return out

        def propose(self, failures, fmt):
            self.proposed.append(list(failures))
            return [Verdict("4", 3, True, 1) for _ in failures]  # names step 4 (0-based 3)

    blind = [make(wrong_at(3), group=0), make(wrong_at(1), group=0)]  # every row of group 0 failed
    sampler, memory = Scripted(), MethodMemory(8, 8, AuditSchedule(1, 1, 4))
    knobs = {"blind_resets": 4, "branch_samples": 2, "max_localizations": 0}
    settings = SiInternalSettings(**knobs, verify_batch=0) if name == "si_internal" else RandomResetSettings(**knobs)
    out = get_method(name).credit(blind, MethodContext(TASK, settings, "grpo", sampler, random.Random(0), memory, 1))
    [[(failure, kept)]] = sampler.requests[-1:]  # one reset, of the group's first failure
    assert failure is blind[0]
    if name == "si_internal":
        assert sampler.proposed[-1] == [blind[0]] and kept == 3  # the steps before the one the policy named
        assert out.metrics["reset/at_first_error"] == 1.0  # TASK's ground truth: wrong_at(3) goes wrong at step 3
    else:
        assert 0 <= kept < len(blind[0].step_spans)
    assert out.metrics["reset/blind_groups"] == 1 and out.metrics["reset/opened"] == 1.0
    assert out.row_kinds[-2:] == ("correction", "branch") and out.reference[-2:] == (False, False)
    # leave-one-out within the branch, on an all-fail group's scale (1): +1 and -1; the given prefix is context
    assert [a.sum().item() for a in out.token_advantages[-2:]] == pytest.approx([1.0, -1.0])
    assert all(torch.all(a[: len(prefix_ids(failure, kept))] == 0) for a in out.token_advantages[-2:])
    assert prefix_ids(failure, kept) in [e.prefix_ids for e in memory.repair.entries]
    # the group's own rows carry nothing (all failed); without blind_resets nothing is added
    assert all(torch.all(a == 0) for a in out.token_advantages[:2])
    settings.blind_resets = 0
    plain = get_method(name).credit(blind, MethodContext(TASK, settings, "grpo", Scripted(), random.Random(0), MethodMemory(8, 8, AuditSchedule(1, 1, 4)), 1))
    assert len(plain.rows) == 2 and "reset/blind_groups" not in plain.metrics


def test_si_internal_proposes_only_where_no_success_can_localize():
    """localizer=divergence: a failure in a group holding a success is localized at
    its divergence step with no proposal and no probe, and gets si-divergence's credit exactly; the policy
    names a step only for the failure of the all-fail group, whose reset starts just before it. Under
    localizer=proposals the policy proposes for the first failure too."""
    from test_localize import REFERENCE, TASK, make, wrong_at

    from sirl.methods.settings import SiSettings
    from sirl.types import Verdict

    class Scripted:
        def __init__(self):
            self.requests, self.proposed = [], []

        def probe(self, requests, k):
            self.requests.append([(t, steps) for t, steps in requests])
            return [[make("".join(REFERENCE), t.group, prefix_len=0) for _ in range(k)] for t, _ in requests]

        def propose(self, failures, fmt):
            self.proposed.append(list(failures))
            return [Verdict("3", 2, True, 1) for _ in failures]  # names step 3 (0-based 2)

    solved = make("".join(REFERENCE), group=0)
    localized = make(wrong_at(2), group=0)  # leaves the success at step 2
    blind = [make(wrong_at(1), group=1), make(wrong_at(3), group=1)]  # every row of group 1 failed
    rollouts = [solved, solved, localized, *blind]
    knobs = {"blind_resets": 4, "branch_samples": 2, "error_span": "first_difference"}
    sampler, memory = Scripted(), MethodMemory(8, 8, AuditSchedule(1, 1, 4))
    assert SiInternalSettings().localizer == "proposals"  # the default: the design of the committed tables
    # si's defaults are si-divergence as it was measured on every testbed; si_internal keeps its own credit
    assert (SiSettings().localizer, SiSettings().error_span, SiSettings().probe_baseline) == ("divergence", "first_difference", "leave_out")
    assert (SiInternalSettings().error_span, SiInternalSettings().probe_baseline) == ("step", "all")
    out = get_method("si_internal").credit(rollouts, MethodContext(TASK, SiInternalSettings(**knobs, localizer="divergence", verify_batch=0), "grpo", sampler,
                                                                   random.Random(0), memory, 1))
    assert sampler.proposed == [[blind[0]]]  # only the all-fail group's failure
    assert [[(t, kept) for t, kept in r] for r in sampler.requests] == [[(blind[0], 2)]]  # its reset, and no probe
    assert [f.localization.error_step for f in out.localizations] == [2] and out.localizations[0].row == 2
    si = get_method("si").credit(rollouts, MethodContext(TASK, SiSettings(localizer="divergence", error_span="first_difference"), "grpo",
                                                        Scripted(), random.Random(0), MethodMemory(8, 8, AuditSchedule(1, 1, 4)), 1))
    for mine, theirs in zip(out.token_advantages[:5], si.token_advantages[:5]):
        assert torch.equal(mine, theirs)
    assert out.metrics["reset/blind_groups"] == 1 and out.metrics["reset/at_first_error"] == 0.0  # wrong_at(1) went wrong at step 1

    proposing = Scripted()
    get_method("si_internal").credit(rollouts, MethodContext(TASK, SiInternalSettings(**knobs, localizer="proposals", verify_batch=0), "grpo",
                                                            proposing, random.Random(0), MethodMemory(8, 8, AuditSchedule(1, 1, 4)), 1))
    assert proposing.proposed[0] == [localized]
