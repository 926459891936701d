"""RL training loop for the GRPO family (``--algo grpo | dr_grpo | rloo``).

Each step: draw ``rollout.prompts_per_step`` training prompts; sample ``rollout.group_size`` responses to
each with the current policy; score them with the task's verifier (sirl.verifier: in process for tasks
that declare their verifier safe, else in worker processes with deadlines); turn rewards into
group-relative advantages (sirl.algos.ADVANTAGES), broadcast over each response's tokens; then
``algo.ppo_epochs`` passes of ``algo.minibatches`` PPO-clip updates against the sampling log-probs, with an
optional KL penalty to the starting policy. Held-out greedy accuracy is measured before the first update,
every ``train.eval_every`` steps (or each ``train.eval_every_tokens`` generated tokens) and at the end.
Everything lands in the run folder: config.yaml, isolation.json (the verifier's isolation), metrics.jsonl
(one object per step), TensorBoard events (tb/), samples.jsonl, checkpoints (checkpoints/step_N,
checkpoints/final: Hugging Face directories with the trainer's state, sirl.checkpoint), eval.json and
report.html (the HTML run report, sirl.report).
``run_train(..., resume=True)`` continues a run from its latest complete checkpoint with the same results
as an uninterrupted run; everything that carries over between steps lives in ``LoopState``.

    sirl train --config arith --algo grpo --out runs/grpo
    sirl train --resume runs/grpo

Data parallel: under ``torchrun`` every process samples its own prompts (seeded by its rank) and the
gradients are averaged across processes before each optimizer step (sirl.distributed).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sirl import algos
from sirl.checkpoint import (
    CheckpointError, decode_numpy_rng, decode_python_rng, decode_torch_rng, encode_numpy_rng, encode_python_rng, encode_torch_rng,
    load_checkpoint, load_policy_weights, optimizer_from_tensors, optimizer_to_tensors, write_checkpoint,
)
from sirl.config import AlgoConfig, ConfigError, ExperimentConfig, TrainConfig, check_task_args, config_differences, to_yaml
from sirl.distributed import Distributed
from sirl.internalize import RepairBuffer, RepairEntry, VerificationExample, VerificationExamples, prefix_ids
from sirl.internalize import selfverify
from sirl.internalize.credit import Credit, method_credit, outcome_advantages, outcome_credit
from sirl.internalize.selfverify import AuditSchedule, Verdict
from sirl.evaluate import EvalResult, evaluate, heldout_problems
from sirl.model import count_parameters, policy_from_config, save_model, token_logprobs
from sirl.report import write_report_or_warn
from sirl.rollout import SamplingParams, sample_trajectories
from sirl.runlog import RunLog
from sirl.sft import collate, sft_loss
from sirl.tasks import Task, load_task, resolve_task_class
from sirl.types import Trajectory
from sirl.verifier import Verifier, verifier_for


@dataclass(frozen=True)
class PolicyBatch:
    """Rollouts as right-padded tensors. Positions follow ``token_logprobs``: index t scores token t+1,
    so ``[B, T-1]`` tensors are aligned with the log-probs of the sequence ``input_ids_BT``."""

    input_ids_BT: torch.Tensor  # [B, T] prompt + response
    attention_BT: torch.Tensor  # [B, T]
    response_mask_BT: torch.Tensor  # [B, T-1] 1 where the scored token is a response token
    old_logp_BT: torch.Tensor  # [B, T-1] sampling log-probs (0 elsewhere)
    adv_BT: torch.Tensor  # [B, T-1] token advantages (0 elsewhere)
    reference_B: torch.Tensor  # [B] bool: rows of the original batch, which set the loss denominators

    def __len__(self) -> int:
        return self.input_ids_BT.shape[0]

    def rows(self, index: torch.Tensor) -> PolicyBatch:
        return PolicyBatch(
            *(t[index] for t in (self.input_ids_BT, self.attention_BT, self.response_mask_BT, self.old_logp_BT, self.adv_BT, self.reference_B))
        )


def collate_trajectories(
    trajectories: list[Trajectory], token_advantages: list[torch.Tensor], pad_id: int, reference: list[bool] | None = None
) -> PolicyBatch:
    """Pack trajectories and their per-response-token advantages into a :class:`PolicyBatch`; tokens of a
    given prefix (``prefix_len``) are context only. ``reference`` marks the original batch's rows (all by
    default)."""
    width = max((len(t.prompt_ids) + len(t.response_ids) for t in trajectories), default=1)
    B = len(trajectories)
    input_ids = torch.full((B, width), pad_id, dtype=torch.long)
    attention = torch.zeros((B, width), dtype=torch.long)
    mask = torch.zeros((B, width - 1))
    old_logp = torch.zeros((B, width - 1))
    adv = torch.zeros((B, width - 1))
    for i, (t, a) in enumerate(zip(trajectories, token_advantages)):
        P, R = len(t.prompt_ids), len(t.response_ids)
        input_ids[i, : P + R] = torch.tensor(t.prompt_ids + t.response_ids)
        attention[i, : P + R] = 1
        mask[i, P - 1 + t.prefix_len : P + R - 1] = 1  # position P-1 scores the first response token
        old_logp[i, P - 1 : P + R - 1] = torch.tensor(t.logprobs)
        adv[i, P - 1 : P + R - 1] = a
    reference_B = torch.ones(B, dtype=torch.bool) if reference is None else torch.tensor(reference)
    return PolicyBatch(input_ids, attention, mask, old_logp, adv, reference_B)


def policy_update(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    batch: PolicyBatch,
    algo: AlgoConfig,
    *,
    norm_length: int,
    micro_batch_size: int,
    grad_clip: float,
    generator: torch.Generator,
    dist: Distributed,
    ref_model: PreTrainedModel | None = None,
    verify_batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    verify_coef: float = 0.0,
) -> dict[str, float]:
    """PPO-clip updates on one step's rollouts; returns mean loss, KL, entropy, clip fraction, grad norm,
    and ``guard/skipped`` (1 when the update was skipped, else 0).

    ``verify_batch`` (input ids, attention, target mask, as sirl.sft.collate builds them) adds
    ``verify_coef`` times the self-verification cross-entropy to every optimizer step, split across the
    minibatches of an epoch like the rollouts.

    Guards: a batch with no token to train on (no rows, or only given prefixes) is a no-op with zero
    losses. An optimizer step whose loss or gradient norm is not finite is not taken: gradients are
    dropped, the optimizer state is untouched, and the step's remaining updates are abandoned, so with one
    epoch and one minibatch (the default) the weights are exactly unchanged; earlier, finite updates of
    the same step stand."""
    device = next(model.parameters()).device
    totals = {"loss/policy": 0.0, "loss/kl": 0.0, "entropy": 0.0, "clip_frac": 0.0, "grad_norm": 0.0, "guard/skipped": 0}
    if len(batch) == 0 or not batch.response_mask_BT.any():
        return totals
    ref_logp = None
    if ref_model is not None:
        with torch.no_grad():
            ref_logp = torch.cat(
                [
                    token_logprobs(ref_model, batch.input_ids_BT[i : i + micro_batch_size].to(device), batch.attention_BT[i : i + micro_batch_size].to(device))[0].cpu()
                    for i in range(0, len(batch), micro_batch_size)
                ]
            )
    verify_chunks = []
    if verify_batch is not None and verify_coef > 0 and len(verify_batch[0]):
        verify_chunks = torch.arange(len(verify_batch[0])).chunk(algo.minibatches)
        totals["loss/verify"] = 0.0
    n_updates = 0
    model.train()
    for _ in range(algo.ppo_epochs):
        order = torch.randperm(len(batch), generator=generator)
        for m, minibatch_rows in enumerate(order.chunk(algo.minibatches)):
            minibatch = batch.rows(minibatch_rows)
            # Weights over the whole minibatch, so micro-batches add up to its loss (see sirl.algos).
            weights_BT = algos.LOSS_AGGREGATIONS[algo.loss_agg](minibatch.response_mask_BT, norm_length, minibatch.reference_B)
            token_share_BT = algos.token_mean_weights(minibatch.response_mask_BT, norm_length)  # for metrics
            optimizer.zero_grad(set_to_none=True)
            stats = dict.fromkeys(("loss/policy", "loss/kl", "entropy", "clip_frac"), 0.0)
            for start in range(0, len(minibatch), micro_batch_size):
                rows = slice(start, start + micro_batch_size)
                ids, attention = minibatch.input_ids_BT[rows].to(device), minibatch.attention_BT[rows].to(device)
                logp_BT, entropy_BT = token_logprobs(model, ids, attention)
                mask_BT, weight_BT = minibatch.response_mask_BT[rows].to(device), weights_BT[rows].to(device)
                pg_BT, clipped_BT = algos.ppo_clip_loss(
                    logp_BT, minibatch.old_logp_BT[rows].to(device), minibatch.adv_BT[rows].to(device), algo.clip_low, algo.clip_high
                )
                loss = (pg_BT * weight_BT).sum()
                share_BT = token_share_BT[rows].to(device)
                if ref_model is not None:
                    kl_BT = algos.KL_ESTIMATORS[algo.kl_estimator](logp_BT, ref_logp[minibatch_rows][rows].to(device))
                    kl = (kl_BT * weight_BT).sum()
                    loss = loss + algo.kl_coef * kl
                    stats["loss/kl"] += (kl_BT.detach() * share_BT).sum().item()
                loss.backward()
                stats["loss/policy"] += (pg_BT.detach() * weight_BT).sum().item()
                stats["entropy"] += (entropy_BT.detach() * share_BT * mask_BT).sum().item()
                stats["clip_frac"] += (clipped_BT * share_BT).sum().item()
            if verify_chunks and m < len(verify_chunks):
                ids, attention, target = (t[verify_chunks[m]].to(device) for t in verify_batch)
                verify_loss = sft_loss(model, ids, attention, target)
                (verify_coef * verify_loss).backward()
                stats["loss/verify"] = verify_loss.item()
            dist.average_gradients(model)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            # A non-finite loss anywhere (summed over processes, so that all of them decide alike) or gradient.
            bad_loss = dist.sum([float(not all(math.isfinite(v) for v in stats.values()))])[0] > 0
            if bad_loss or not math.isfinite(grad_norm.item()):
                optimizer.zero_grad(set_to_none=True)
                totals["guard/skipped"] = 1
                break
            optimizer.step()
            for key, value in stats.items():
                totals[key] += value
            totals["grad_norm"] += grad_norm.item()
            n_updates += 1
        if totals["guard/skipped"]:
            break
    skipped = totals.pop("guard/skipped")
    return {**{key: value / max(n_updates, 1) for key, value in totals.items()}, "guard/skipped": skipped}


def warmup_constant(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / max(1, warmup))


MAX_SKIPPED_IN_ROW = 3
"""Consecutive steps with a non-finite loss or gradient after which a run stops (sirl.train.Diverged)."""


class Diverged(RuntimeError):
    """Training stopped: several steps in a row had a non-finite loss or gradient."""


@dataclass
class LoopState:
    """What carries over from one training step to the next besides the weights, the optimizer and the
    scheduler: a checkpoint stores all of it, so a resumed run continues exactly where it stopped."""

    prompt_rng: random.Random
    method_rng: random.Random
    sample_gen: torch.Generator
    update_gen: torch.Generator
    repair: RepairBuffer
    verification: VerificationExamples
    audits: AuditSchedule
    tokens: dict[str, int]
    step: int = 0
    train_elapsed_s: float = 0.0
    skipped_steps: int = 0
    skipped_in_row: int = 0
    first_eval: EvalResult | None = None
    last_eval: EvalResult | None = None

    def process_json(self) -> dict:
        """This process's own part (data-parallel processes differ in it): random states and buffers."""
        return {
            "prompt_rng": encode_python_rng(self.prompt_rng),
            "method_rng": encode_python_rng(self.method_rng),
            "sample_gen": encode_torch_rng(self.sample_gen.get_state()),
            "update_gen": encode_torch_rng(self.update_gen.get_state()),
            "python_global": encode_python_rng(random),  # the module's own generator: random.getstate()
            "numpy_global": encode_numpy_rng(),
            "torch_global": encode_torch_rng(torch.get_rng_state()),
            "repair": self.repair.to_json(),
            "verification": self.verification.to_json(),
            "audits": self.audits.to_json(),
        }

    def load_process_json(self, data: dict) -> None:
        self.prompt_rng.setstate(decode_python_rng(data["prompt_rng"]))
        self.method_rng.setstate(decode_python_rng(data["method_rng"]))
        self.sample_gen.set_state(decode_torch_rng(data["sample_gen"]))
        self.update_gen.set_state(decode_torch_rng(data["update_gen"]))
        random.setstate(decode_python_rng(data["python_global"]))
        np.random.set_state(decode_numpy_rng(data["numpy_global"]))
        torch.set_rng_state(decode_torch_rng(data["torch_global"]))
        self.repair.load_json(data["repair"])
        self.verification.load_json(data["verification"])
        self.audits.load_json(data["audits"])


def save_checkpoint(
    run_dir: Path, name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler, state: LoopState, processes: list[dict], log_elapsed_s: float, config: ExperimentConfig,
) -> Path:
    """Write a resumable checkpoint (sirl.checkpoint); refuses a model with non-finite weights."""
    broken = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if broken:
        raise Diverged(f"refusing to save checkpoint {name}: non-finite weights in {broken[:3]}")
    optimizer_tensors, optimizer_meta = optimizer_to_tensors(optimizer)
    trainer_state = {
        "step": state.step,
        "tokens": state.tokens,
        "clock": {"log_s": log_elapsed_s, "train_s": state.train_elapsed_s},
        "guard": {"skipped_steps": state.skipped_steps, "skipped_in_row": state.skipped_in_row},
        "first_eval": state.first_eval.to_json(),
        "last_eval": state.last_eval.to_json(),
        "scheduler": schedule.state_dict(),
        "optimizer": optimizer_meta,
        "processes": processes,
        "config": to_yaml(config),
    }
    return write_checkpoint(run_dir, name, lambda directory: save_model(model, tokenizer, directory), trainer_state, optimizer_tensors)


def run_train(config: ExperimentConfig, run_dir: Path, quiet: bool = False, resume: bool = False, force: bool = False) -> EvalResult:
    """Train as ``config`` says into ``run_dir``; with ``resume``, continue the run in ``run_dir`` from its
    most recent complete checkpoint (sirl.checkpoint), exactly as if it had never stopped. Resuming with
    a config other than the checkpoint's is an error unless ``force``."""
    task = load_task(config.task.name, **check_task_args(resolve_task_class(config.task.name), config.task.args))
    if config.method.localizer == "ground_truth" and (config.algo.name != "si" or not task.has_ground_truth):
        raise ConfigError(
            f"method.localizer=ground_truth needs algo.name=si and a task with ground truth (got algo.name="
            f"{config.algo.name}, task {config.task.name}, ground truth: {task.has_ground_truth}); use method.localizer=search"
        )
    with verifier_for(config.verifier, config.task, task) as verifier:  # its workers stop however the run ends
        return _train(config, run_dir, quiet, resume, force, task, verifier)


def _train(
    config: ExperimentConfig, run_dir: Path, quiet: bool, resume: bool, force: bool, task: Task, verifier: Verifier
) -> EvalResult:
    torch.manual_seed(config.seed)
    model, tokenizer = policy_from_config(config.model, task.alphabet(), config.seed)
    dist = Distributed.from_env(model.device)
    quiet = quiet or not dist.is_main
    rollout, algo, train = config.rollout, config.algo, config.train
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if algo.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_constant(s, train.warmup_steps))
    params = SamplingParams(rollout.max_new_tokens, temperature=rollout.temperature, top_p=rollout.top_p)
    heldout = heldout_problems(task, config.eval.n_problems, config.eval.seed)
    internal = config.internalize
    state = LoopState(
        prompt_rng=random.Random(f"{config.seed}-prompts-{dist.rank}"),  # each process its own prompts
        method_rng=random.Random(f"{config.seed}-method-{dist.rank}"),
        # Sampling draws on the policy's device (torch.multinomial needs a generator there); shuffles on the CPU.
        sample_gen=torch.Generator(device=model.device).manual_seed(config.seed * 1009 + dist.rank),
        update_gen=torch.Generator().manual_seed(config.seed * 2003 + dist.rank),
        repair=RepairBuffer(config.method.repair_capacity),
        verification=VerificationExamples(config.method.verification_capacity),
        audits=AuditSchedule(internal.audit_min, internal.audit_max, internal.audit_window),
        tokens={"policy": 0, "probe": 0, "verify": 0},
    )
    uses_repair = algo.name in ("si", "si_internal", "random_reset")
    log_elapsed = 0.0
    if resume:
        loaded = load_checkpoint(run_dir)
        saved = loaded.state
        changed = config_differences(yaml.safe_load(saved["config"]), config)
        if changed and not force:
            raise CheckpointError(
                f"the config differs from the one {run_dir} was trained with: {'; '.join(changed)}. Resume without "
                f"these overrides, or pass --force to continue with the changed config."
            )
        if changed and not quiet:
            print(f"resuming with a changed config (--force): {'; '.join(changed)}")
        if len(saved["processes"]) != dist.world_size:
            raise CheckpointError(f"{loaded.path} was written by {len(saved['processes'])} process(es); resume it with as many, not {dist.world_size}")
        load_policy_weights(model, loaded.path)
        optimizer_from_tensors(optimizer, loaded.tensors, saved["optimizer"])
        schedule.load_state_dict(saved["scheduler"])
        state.load_process_json(saved["processes"][dist.rank])
        state.step, state.tokens = saved["step"], saved["tokens"]
        state.train_elapsed_s, log_elapsed = saved["clock"]["train_s"], saved["clock"]["log_s"]
        state.skipped_steps, state.skipped_in_row = saved["guard"]["skipped_steps"], saved["guard"]["skipped_in_row"]
        state.first_eval, state.last_eval = EvalResult.from_json(saved["first_eval"]), EvalResult.from_json(saved["last_eval"])
    log = RunLog(run_dir, config, resume_step=state.step if resume else None, elapsed_s=log_elapsed) if dist.is_main else None

    def held_out_eval(problems=heldout) -> EvalResult:
        return evaluate(
            model, tokenizer, task, problems, max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size, verifier=verifier
        )

    def checkpoint(name: str) -> None:
        processes = dist.gather_json(state.process_json())  # every process takes part; the first writes
        if log:
            save_checkpoint(run_dir, name, model, tokenizer, optimizer, schedule, state, processes, time.time() - log.start_time, config)

    if not quiet:
        print(f"train: {algo.name} on {config.task.name}, {count_parameters(model):,} parameters on {model.device}, "
              f"{dist.world_size} process(es), run folder {run_dir}")
        if resume:
            print(f"resuming from {loaded.path} (step {state.step}, {sum(state.tokens.values()):,} generated tokens)")
    if dist.is_main:  # printed even with --quiet: what can run model output, and how, is never silent
        print(f"verifier: {verifier.isolation.describe()}")
    if log:
        log.write_json("isolation.json", verifier.isolation.to_json())
    if not resume:
        state.first_eval = state.last_eval = held_out_eval()
        if log:
            log.log(0, {"eval/accuracy": state.last_eval.accuracy, "tokens/total": 0})
    start = time.time() - state.train_elapsed_s
    bar = tqdm(
        range(state.step + 1, train.steps + 1), desc=f"train {algo.name}", disable=quiet, dynamic_ncols=True,
        bar_format="{desc} step {n_fmt} [{elapsed}{postfix}]", initial=state.step,
    )
    finishing = state.step >= train.steps
    for step in bar:
        state.step = step
        # 1. Rollouts: this process's prompts, a group of samples each; with a repair buffer, a share of
        #    the prompts continue stored good prefixes instead (a group of their own each).
        step_start = time.time()
        drawn = state.repair.draw(round(config.method.repair_share * rollout.prompts_per_step), state.prompt_rng) if uses_repair else []
        problems = [task.sample(state.prompt_rng, "train") for _ in range(rollout.prompts_per_step - len(drawn))]
        trajectories = sample_trajectories(
            model, tokenizer, task, problems + [d.problem for d in drawn], params,
            group_size=rollout.group_size, prefixes=[[] for _ in problems] + [d.prefix_ids for d in drawn],
            generator=state.sample_gen, max_batch=rollout.batch_size, verifier=verifier,
        )
        rollout_seconds = time.time() - step_start

        # 2. Credit: outcome advantages, or localize / correct / reuse with step-level credit (sirl.internalize).
        probe_tokens = 0

        def probe(requests: list[tuple[Trajectory, int]], k: int) -> list[list[Trajectory]]:
            nonlocal probe_tokens
            found = sample_trajectories(
                model, tokenizer, task, [t.problem for t, _ in requests], params, group_size=k,
                prefixes=[prefix_ids(t, steps) for t, steps in requests], groups=[t.group for t, _ in requests],
                generator=state.sample_gen, max_batch=rollout.batch_size, verifier=verifier,
            )
            probe_tokens += sum(len(p.response_ids) - p.prefix_len for p in found)
            return [found[i * k : (i + 1) * k] for i in range(len(requests))]

        verify_tokens = 0

        def propose(failures: list[Trajectory]) -> list[Verdict]:
            nonlocal verify_tokens
            verdicts = selfverify.propose(model, tokenizer, task, [(t.problem, t.text) for t in failures], rollout.batch_size)
            verify_tokens += sum(v.n_tokens for v in verdicts)
            return verdicts

        if algo.name in algos.ADVANTAGES:
            credit = outcome_credit(trajectories, algo.name)
        else:
            credit = method_credit(
                algo.name, trajectories, probe, config.method, algo.outcome_advantage, task, state.method_rng,
                propose=propose, audits=state.audits, confirm_probes=internal.confirm_probes,
                reuse_samples=internal.reuse_samples,
            )
        for t, prefix in credit.good_prefixes:
            state.repair.add(RepairEntry(t.problem, prefix, step))
        for t, localization, _ in credit.localizations:
            state.verification.add(VerificationExample(t.problem, t.text, localization.error_step, step))
        for t in trajectories:
            if t.reward >= 1 and t.prefix_len == 0:
                state.verification.add(VerificationExample(t.problem, t.text, None, step))
        verify_batch = None
        if algo.name == "si_internal":  # teach self-verification on the policy's own recent outputs
            examples = selfverify.draw_examples(state.verification, internal.verify_batch, internal.none_share, state.method_rng)
            if internal.verify_loss in ("sft", "both") and examples:
                verify_batch = collate(selfverify.supervised_batch(task, tokenizer, examples), tokenizer.pad_token_id)
            if internal.verify_loss in ("rl", "both") and examples:
                verdicts = selfverify.sampled_verdicts(
                    model, tokenizer, task, examples, internal.verify_group, state.sample_gen,
                    first_group=max(t.group for t in credit.trajectories) + 1, max_batch=rollout.batch_size,
                )
                verify_tokens += sum(len(v.response_ids) for v in verdicts)
                credit.trajectories += verdicts
                credit.token_advantages += [
                    torch.full((len(v.response_ids),), float(a) * internal.verify_coef)
                    for v, a in zip(verdicts, outcome_advantages(verdicts, "grpo"))
                ]
                credit.reference += [False] * len(verdicts)
                credit.metrics["reward/verify"] = sum(v.reward for v in verdicts) / len(verdicts)
        additive = config.method.normalization == "additive"
        batch = collate_trajectories(
            credit.trajectories, credit.token_advantages, tokenizer.pad_token_id, reference=credit.reference if additive else None
        )

        # 3. Update; a step with a non-finite loss or gradient is skipped, several in a row stop the run.
        update = policy_update(
            model, optimizer, batch, algo,
            norm_length=rollout.max_new_tokens, micro_batch_size=train.micro_batch_size, grad_clip=train.grad_clip,
            generator=state.update_gen, dist=dist, ref_model=ref_model, verify_batch=verify_batch, verify_coef=internal.verify_coef,
        )
        schedule.step()
        skipped = update.pop("guard/skipped")
        state.skipped_steps += skipped
        state.skipped_in_row = state.skipped_in_row + 1 if skipped else 0

        # 4. Account and log. Token counts and rewards are summed over processes.
        rewards_B = torch.tensor([t.reward for t in trajectories])
        group_B = torch.tensor([t.group for t in trajectories])
        fresh = [t for t in trajectories if t.prefix_len == 0]  # reward/mean: fresh prompts only, as in grpo
        verified = verifier.take_counts()  # completions of this step (and its evaluation) that scored 0 by failure
        n_tokens, n_probe_tokens, n_verify_tokens, reward_sum, n_fresh, truncated, n, timeouts, errors = dist.sum([
            float(sum(len(t.response_ids) - t.prefix_len for t in trajectories)), float(probe_tokens), float(verify_tokens),
            float(sum(t.reward for t in fresh)), float(len(fresh)), float(sum(t.truncated for t in trajectories)),
            float(len(trajectories)), float(verified.timeouts), float(verified.errors),
        ])
        tokens_before = sum(state.tokens.values())
        state.tokens["policy"] += int(n_tokens)
        state.tokens["probe"] += int(n_probe_tokens)
        state.tokens["verify"] += int(n_verify_tokens)
        total_tokens = sum(state.tokens.values())
        state.train_elapsed_s = time.time() - start
        metrics = {
            "tokens/total": total_tokens,
            "tokens/policy": state.tokens["policy"],
            "tokens/probe": state.tokens["probe"],
            "tokens/verify": state.tokens["verify"],
            "reward/mean": reward_sum / max(n_fresh, 1),
            **update,
            "guard/skipped_steps": state.skipped_steps,
            "adv/zero_std_frac": algos.zero_std_fraction(rewards_B, group_B),
            "rollout/samples": int(n),
            "rollout/truncated_frac": truncated / max(n, 1),
            "rollout/response_tokens": n_tokens / max(n, 1),
            "verify/timeouts": int(timeouts),
            "verify/errors": int(errors),
            **credit.metrics,
            "lr": schedule.get_last_lr()[0],
            "time/rollout_s": rollout_seconds,
            "time/step_s": time.time() - step_start,
            "tokens_per_s": total_tokens / state.train_elapsed_s,
        }
        if uses_repair:
            metrics.update({"repair/buffer_draws": len(drawn), "repair/buffer_size": len(state.repair), "verify/examples": len(state.verification)})
        if state.skipped_in_row >= MAX_SKIPPED_IN_ROW:
            if log:
                log.log(step, metrics)
                log.close()
            latest = run_dir / "checkpoints" / "latest"
            kept = f"the last good checkpoint is {run_dir / 'checkpoints' / latest.read_text().strip()} (checkpoints/latest)" if latest.is_file() else "no checkpoint had been written"
            raise Diverged(
                f"steps {step - state.skipped_in_row + 1}..{step} all had a non-finite loss or gradient; the run stopped at "
                f"step {step} without saving the model; {kept}. Lower train.lr or check the rewards (a verifier "
                f"returning NaN?), then resume or start again."
            )
        out_of_tokens = train.max_tokens is not None and total_tokens >= train.max_tokens
        out_of_time = train.max_minutes is not None and state.train_elapsed_s / 60 >= train.max_minutes
        finishing = step == train.steps or out_of_tokens or out_of_time
        every_tokens = train.eval_every_tokens
        crossed = bool(every_tokens) and total_tokens // every_tokens > tokens_before // every_tokens
        if (train.eval_every and step % train.eval_every == 0) or crossed or finishing:
            state.last_eval = held_out_eval()
            metrics["eval/accuracy"] = state.last_eval.accuracy
            if log:
                log_samples(log.run_dir / "samples.jsonl", step, task, tokenizer, credit, train.log_samples)
        if log:
            log.log(step, metrics)
        # No checkpoint while steps are being skipped: `latest` stays the last one before the trouble.
        if train.checkpoint_every and step % train.checkpoint_every == 0 and not finishing and not state.skipped_in_row:
            checkpoint(f"step_{step}")
        bar.set_postfix(
            reward=f"{metrics['reward/mean']:.2f}", eval_acc=f"{state.last_eval.accuracy:.1%}", tok_s=f"{metrics['tokens_per_s']:.0f}",
            eta=_eta(state.train_elapsed_s, step, train, total_tokens),
        )
        if finishing:
            break
    bar.close()
    last_eval = state.last_eval
    if config.eval.final_n_problems and config.eval.final_n_problems != config.eval.n_problems:
        last_eval = held_out_eval(heldout_problems(task, config.eval.final_n_problems, config.eval.seed))
    checkpoint("final")
    if log:
        log.write_json("eval.json", {"step": state.step, "tokens/total": sum(state.tokens.values()), **last_eval.to_json()})
        log.close()
        write_report_or_warn(run_dir)  # last: a report that fails warns and loses nothing
    if not quiet:
        first = state.first_eval
        print(f"held-out accuracy {first.accuracy:.1%} (95% CI {first.ci95[0]:.1%}-{first.ci95[1]:.1%}, n={first.n}) "
              f"before training, {last_eval.accuracy:.1%} (95% CI {last_eval.ci95[0]:.1%}-{last_eval.ci95[1]:.1%}, n={last_eval.n}) "
              f"after {state.step} steps and {sum(state.tokens.values()):,} generated tokens")
        print(f"run folder: {run_dir}")
    dist.close()
    return last_eval


def _eta(elapsed: float, step: int, train: TrainConfig, total_tokens: int) -> str:
    """Time left under whichever limit (steps, tokens, minutes) ends the run first."""
    left = [elapsed / step * (train.steps - step)]
    if train.max_tokens:
        left.append(elapsed / max(total_tokens, 1) * max(train.max_tokens - total_tokens, 0))
    if train.max_minutes:
        left.append(max(train.max_minutes * 60 - elapsed, 0))
    minutes, seconds = divmod(int(min(left)), 60)
    return f"{minutes}:{seconds:02d}"


def log_samples(path: Path, step: int, task: Task, tokenizer: PreTrainedTokenizerBase, credit: Credit, n: int) -> None:
    """Append a few trajectories of the step, localized failures first, with their steps, token
    advantages, localization and correction, for inspection and the run report."""
    located = {id(t): (loc, correction) for t, loc, correction in credit.localizations}
    rows = sorted(range(len(credit.trajectories)), key=lambda i: (id(credit.trajectories[i]) not in located, i))
    with path.open("a") as f:
        for i in rows[:n]:
            t = credit.trajectories[i]
            record = {
                "step": step,
                "prompt": t.problem.prompt,
                "steps": [t.text[a:b] for a, b in task.split_steps(t.text)],
                "reward": t.reward,
                "truncated": t.truncated,
                "prefix_len": t.prefix_len,
                "token_advantages": [round(a, 4) for a in credit.token_advantages[i].tolist()],
                "tokens": tokenizer.batch_decode([[token] for token in t.response_ids]),
            }
            if id(t) in located:
                loc, correction = located[id(t)]
                record["localized_step"] = loc.error_step
                record["probes"] = loc.probes
                record["correction"] = correction.text if correction is not None else None
                if loc.proposal is not None:
                    record["self_verdict"] = loc.proposal
            if task.has_ground_truth:
                record["first_error"] = task.first_error(t.problem, t.text)
            f.write(json.dumps(record) + "\n")
