"""The names a run logs, declared once: every key of a ``metrics.jsonl`` record (one per training step of
``sirl train``, or of ``sirl sft``) and of an ``evals.jsonl`` record (one per held-out evaluation), each
with its unit and meaning.

The writers (sirl.metrics, sirl.update, sirl.runlog, the loop, sirl.sft and the methods' ``Credit.metrics``)
and the readers (sirl.compare, sirl.report) use these constants, never the bare strings, so a name cannot
change on one side only; tests/test_metrics.py holds a short run of every method to this list and the
modules to the constants. A name is ``section/name`` (TensorBoard groups the sections) or one word.
Counters named "this step" are the step's own; "so far" ones are cumulative over the run. A metric a step
does not measure is absent from its record (e.g. ``eval/accuracy`` between evaluations).

This module imports nothing, so the report reads it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One logged name, its unit and what it measures."""

    name: str
    unit: str
    meaning: str


METRICS: dict[str, Metric] = {}
"""Every declared name, in declaration order."""


def _declare(name: str, unit: str, meaning: str) -> str:
    if name in METRICS:
        raise ValueError(f"metric {name!r} is declared twice")
    METRICS[name] = Metric(name, unit, meaning)
    return name


# --- every record ---------------------------------------------------------------------------------------
STEP = _declare("step", "step", "The training step the record is of; 0 is the evaluation before the first update.")
ELAPSED_S = _declare("time/elapsed_s", "s", "Wall-clock time since the run started, continued across resumes.")

# --- evaluation -------------------------------------------------------------------------------------------
EVAL_ACCURACY = _declare("eval/accuracy", "share (0-1)", "Greedy accuracy on the fixed held-out set, on the steps that evaluate.")
REWARDS = _declare("rewards", "reward per problem", "evals.jsonl: each held-out problem's reward at this evaluation, in the set's order.")

# --- the token budget ------------------------------------------------------------------------------------
TOKENS_TOTAL = _declare("tokens/total", "tokens, so far", "Generated tokens of every kind: policy + probe + verify (the budget).")
TOKENS_POLICY = _declare("tokens/policy", "tokens, so far", "Response tokens of the rollouts, past any given prefix.")
TOKENS_PROBE = _declare("tokens/probe", "tokens, so far", "Tokens of probes, corrections, branches and resets a method sampled.")
TOKENS_VERIFY = _declare("tokens/verify", "tokens, so far", "Tokens of self-verification verdicts (si_internal).")
TOKENS_TRAINED = _declare(
    "tokens/trained", "tokens, so far",
    "Tokens through a forward and backward pass: every trained row's prompt and response once per PPO epoch, auxiliary rows, "
    "and the tokens a method trains a model of its own on (prime's reward model).",
)
TOKENS_PER_S = _declare("tokens_per_s", "tokens/s", "tokens/total over the training time so far (evaluations excluded).")

# --- the step's rollouts -----------------------------------------------------------------------------------
REWARD_MEAN = _declare("reward/mean", "reward", "Mean reward of this step's samples drawn from the prompt alone (not from the repair buffer).")
ROLLOUT_SAMPLES = _declare("rollout/samples", "count", "Rollouts sampled this step (all processes).")
ROLLOUT_TRUNCATED_FRAC = _declare("rollout/truncated_frac", "share (0-1)", "Rollouts cut off at rollout.max_new_tokens.")
ROLLOUT_RESPONSE_TOKENS = _declare("rollout/response_tokens", "tokens per rollout", "Mean response length past the given prefix.")
ADV_ZERO_STD_FRAC = _declare("adv/zero_std_frac", "share (0-1)", "Groups whose rewards are all equal (no outcome signal).")
VERIFY_TIMEOUTS = _declare("verify/timeouts", "count", "Completions whose verifier ran past verifier.timeout_s this step (scored 0).")
VERIFY_ERRORS = _declare("verify/errors", "count", "Completions whose verifier raised this step (scored 0).")

# --- the update ------------------------------------------------------------------------------------------
LOSS_POLICY = _declare("loss/policy", "loss", "PPO-clip policy loss, averaged over the step's optimizer steps.")
LOSS_KL = _declare("loss/kl", "nats", "KL estimate to the frozen starting policy (0 when algo.kl_coef is 0).")
ENTROPY = _declare("entropy", "nats per token", "Policy entropy on the trained tokens.")
CLIP_FRAC = _declare("clip_frac", "share (0-1)", "Trained tokens whose probability ratio was clipped.")
GRAD_NORM = _declare("grad_norm", "L2 norm", "Gradient norm before clipping (mean over the step's optimizer steps).")
LR = _declare("lr", "learning rate", "The learning rate after the step's scheduler step.")
TIME_ROLLOUT_S = _declare("time/rollout_s", "s", "Sampling and verification time of the step.")
TIME_STEP_S = _declare("time/step_s", "s", "Time of the whole step, evaluation excluded.")
GUARD_SKIPPED_STEPS = _declare("guard/skipped_steps", "steps, so far", "Steps skipped for a non-finite loss, gradient or sampling logit.")
GUARD_NONFINITE_LOGITS = _declare("guard/nonfinite_logits", "flag", "1 on a step skipped because sampling met non-finite logits.")
LOSS_SFT = _declare("loss/sft", "nats per token", "sirl sft: cross-entropy on the reference solutions.")
LOSS_VERIFY = _declare("loss/verify", "nats per token", "si_internal: the self-verification auxiliary loss (before its weight).")


def aux_loss(name: str) -> str:
    """The name an auxiliary loss of a method's Credit (sirl.types.AuxiliaryLoss) is logged under: ``loss/<name>``
    (si_internal's "verify" is :data:`LOSS_VERIFY`)."""
    return f"loss/{name}"


# --- what the step-credit methods log (Credit.metrics) ----------------------------------------------------
LOC_LOCALIZED_FRAC = _declare("loc/localized_frac", "share (0-1)", "Fresh failures localized (si, si_internal) or branched (tree_branch) this step.")
LOC_PROBES_PER_FAILURE = _declare("loc/probes_per_failure", "probes per failure", "Probes (or branches, resets) drawn per chosen failure.")
LOC_PROBES_PER_TRAJECTORY = _declare("loc/probes_per_trajectory", "probes per rollout", "vine: probes per rollout.")
LOC_ACCURACY = _declare("loc/accuracy", "share (0-1)", "Localized steps that are the task's ground-truth first wrong step (tasks with ground truth).")
LOC_UNLOCALIZABLE_FRAC = _declare("loc/unlocalizable_frac", "share (0-1)", "Fresh failures whose prompt has no verified sample this step.")
LOC_BUDGET_SKIPPED = _declare("loc/budget_skipped", "count", "Localizable failures left out by the per-step budget (max_localizations).")
REPAIR_ADDED = _declare("repair/added", "count", "Corrections (verified continuations of a good prefix) found this step; their prefixes join the repair buffer.")
REPAIR_BUFFER_DRAWS = _declare("repair/buffer_draws", "prompts", "Prompts of this step continued from a stored good prefix.")
REPAIR_BUFFER_SIZE = _declare("repair/buffer_size", "prefixes", "Good prefixes in the repair buffer after the step.")
VERIFY_EXAMPLES = _declare("verify/examples", "examples", "Self-verification examples kept after the step.")
TREE_ZERO_FRAC = _declare("tree/zero_frac", "share (0-1)", "tree: trained tokens whose tree credit is 0 (V did not change there).")
BRANCH_SOLVE_RATE = _declare("branch/solve_rate", "share (0-1)", "tree_branch: branches that verified.")
RESET_BLIND_GROUPS = _declare("reset/blind_groups", "groups", "Groups with no success this step, whose first failure may be reset.")
RESET_RESETS = _declare("reset/resets", "count", "Blind resets made this step.")
RESET_SOLVE_RATE = _declare("reset/solve_rate", "share (0-1)", "Continuations from a reset point that verified.")
RESET_OPENED = _declare("reset/opened", "share (0-1)", "Resets with at least one verified continuation.")
RESET_AT_FIRST_ERROR = _declare("reset/at_first_error", "share (0-1)", "Reset points just before the ground-truth first wrong step.")
SELFLOC_AGREEMENT = _declare("selfloc/agreement", "share (0-1)", "si_internal: audited proposals that named the oracle search's step.")
SELFLOC_AUDIT_FRAC = _declare("selfloc/audit_frac", "share (0-1)", "si_internal: the audit fraction this step.")
SELFLOC_CONFIRMED_FRAC = _declare("selfloc/confirmed_frac", "share (0-1)", "si_internal: checkable proposals the two probe checks confirmed.")
SELFLOC_VALID_FRAC = _declare("selfloc/valid_frac", "share (0-1)", "si_internal: verdicts that parsed.")
SELFLOC_ACCURACY = _declare("selfloc/accuracy", "share (0-1)", "si_internal: proposals that name the ground-truth first wrong step.")
REWARD_VERIFY = _declare("reward/verify", "reward (-1 or 1)", "si_internal, verify_loss rl or both: mean reward of the sampled verdicts.")
PRIME_KEPT_FRAC = _declare("prime/kept_frac", "share (0-1)", "prime: rollouts the accuracy filter kept.")
PRIME_PRM_LOSS = _declare("prime/prm_loss", "nats", "prime: the reward model's cross-entropy on the outcome labels.")
PRIME_PRM_GRAD_NORM = _declare("prime/prm_grad_norm", "L2 norm", "prime: the reward model's gradient norm before clipping.")
PRIME_PRM_SKIPPED = _declare("prime/prm_skipped", "flag", "prime: 1 when the reward model's step was skipped (non-finite).")
PRIME_PRM_ACCURACY = _declare("prime/prm_accuracy", "share (0-1)", "prime: kept rollouts whose implicit reward's sign agrees with the label.")
PRIME_PROCESS_ADV_ABS = _declare("prime/process_adv_abs", "advantage per token", "prime: mean |process part| of the advantage before whitening.")
PRIME_OUTCOME_ADV_ABS = _declare("prime/outcome_adv_abs", "advantage per token", "prime: mean |outcome part| of the advantage before whitening.")
METHOD_STATE_MB = _declare("memory/method_state_mb", "MiB", "Memory a method holds besides the policy (prime: its reward model, optimizer, reference).")
