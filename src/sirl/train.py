"""The RL training loop, for every method in the registry (``sirl train --algo NAME``; sirl.methods).

Each step, as in GRPO (Shao et al. 2024) with these departures:

1. Sample: ``rollout.prompts_per_step`` training prompts, ``rollout.group_size`` responses each; methods
   with a repair buffer continue a share of stored good prefixes instead (a reset to a state the policy
   is known to solve sometimes, sampled on-policy; docs/method.md, "Reuse").
2. Verify: the task's verifier scores every response, in its own stage (sirl.verifier: in process for
   tasks that declare their verifier safe, else in worker processes with deadlines).
3. Credit: the method turns verified rollouts into rows with token advantages (sirl.methods). Outcome
   methods broadcast the group-relative advantage; si localizes failures with probes, penalizes the step
   that destroyed the value and trains on the corrections, so the one outcome bit becomes step credit.
   Every probe and verdict token counts in the budget.
4. Update: ``algo.ppo_epochs`` passes of ``algo.minibatches`` PPO-clip steps with the method's auxiliary
   losses and an optional KL penalty (sirl.update); a non-finite step is skipped, three in a row stop.
5. Log and checkpoint: metrics.jsonl, TensorBoard, samples.jsonl (sirl.metrics); held-out greedy accuracy
   before the first update, every ``train.eval_every`` steps (or ``train.eval_every_tokens``) and at the
   end; resumable checkpoints (sirl.checkpoint), eval.json and report.html.

    sirl train --config arith --algo grpo --out runs/grpo
    sirl train --resume runs/grpo

Data parallel: under ``torchrun`` every process samples its own prompts (seeded by its rank); loss
denominators count every process's tokens and gradients are summed, so the update equals one process's on
the global batch (sirl.distributed).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from sirl.batch import collate_rollouts
from sirl.checkpoint import (
    CheckpointError, NonFiniteWeights, RandomStreams, TokenCounts, TrainerState, prune_checkpoints, resume_training, save_training_checkpoint,
)
from sirl.config import (
    ConfigError, ExperimentConfig, TrainConfig, check_group_size, check_task_args, config_differences, from_dict, to_dict, to_yaml,
)
from sirl.distributed import Distributed
from sirl.evaluate import EvalResult, EvaluationFailed, evaluate, heldout_problems
from sirl.interrupt import Interrupted, StopSignals, signal_name
from sirl.methods import Method, MethodContext, MethodMemory, get_method
from sirl.methods.base import PolicySampler
from sirl.metrics import StepCounts, append_samples, repair_metrics, sample_records, step_metrics
from sirl.model import base_causal_lm, count_parameters, enable_checkpointing, policy_from_config, save_model
from sirl.prompts import describe_format, prompt_record
from sirl.prompts import prompt_format as make_prompt_format
from sirl.report import write_report_or_warn
from sirl.rollout import NonFiniteLogits, SamplingParams, resolve_rollout_dtype, sample_trajectories
from sirl.runlog import RunLog
from sirl.runlock import FolderLock, check_new_run_dir, check_not_in_use
from sirl.schema import EVAL_ACCURACY, GUARD_NONFINITE_LOGITS, GUARD_SKIPPED_STEPS, REWARD_MEAN, STEP, TOKENS_PER_S, TOKENS_TOTAL
from sirl.tasks import Task, load_task, resolve_task_class, write_task_record
from sirl.update import adamw, auto_micro_batch_tokens, policy_update
from sirl.verifier import Verifier, verifier_for, verify_trajectories

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from sirl.checkpoint import LoadedCheckpoint
    from sirl.prompts import PromptFormat
    from sirl.internalize.repair import RepairEntry
    from sirl.types import Credit, Problem, Trajectory
    from sirl.update import UpdateStats

MAX_SKIPPED_IN_ROW = 3
"""Consecutive steps with a non-finite loss, gradient or logit after which a run stops (Diverged)."""


class Diverged(RuntimeError):
    """Training stopped: several steps in a row had a non-finite loss, gradient or sampling logit."""


def warmup_constant(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / max(1, warmup))


def run_train(
    config: ExperimentConfig, run_dir: Path, quiet: bool = False, resume: bool = False, force: bool = False, overwrite: bool = False,
) -> EvalResult:
    """Train as ``config`` says into ``run_dir``; with ``resume``, continue the run in ``run_dir`` from its
    most recent complete checkpoint (sirl.checkpoint), exactly as if it had never stopped. Resuming with
    a config other than the checkpoint's is an error unless ``force``. A ``run_dir`` that holds a run
    already is refused (sirl.runlock.RunExists) unless ``resume``, or ``overwrite`` (its files are deleted first).

    One process writes a run folder at a time (sirl.runlock). SIGINT and SIGTERM stop the run after the
    step in progress, with a checkpoint of it, by raising Interrupted (sirl.interrupt)."""
    run_dir = Path(run_dir)
    method = get_method(config.algo.name)
    check_group_size(config, method.min_group_size)
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun, the process that writes the folder
    if main_process:  # before anything is written, so that a refusal touches nothing
        check_not_in_use(run_dir, "run folder")
        if not resume:
            check_new_run_dir(run_dir, overwrite, resume=f"sirl train --resume {shlex.quote(str(run_dir))}")
    task = load_task(config.task.name, **check_task_args(resolve_task_class(config.task.name), config.task.args))
    method.check(config, task)
    with contextlib.ExitStack() as scope:
        stop = scope.enter_context(StopSignals("the run stops after the step in progress, with a checkpoint", name="sirl train"))
        if main_process:
            scope.enter_context(FolderLock(run_dir, what="run folder"))
            if not resume:
                check_new_run_dir(run_dir, overwrite, delete=overwrite)  # again, now that no other process writes it
        verifier = scope.enter_context(verifier_for(config.verifier, config.task, task))  # its workers stop however the run ends
        try:
            return _train(config, method, run_dir, quiet, resume, force, task, verifier, stop)
        except KeyboardInterrupt:  # a second Ctrl-C before the safe point
            raise Interrupted(signal.SIGINT, f"stopped at once by a second Ctrl-C, without saving the step in progress; "
                                             f"{_last_good(run_dir)}{_resume_hint(run_dir)}") from None


@dataclass(frozen=True)
class _Run:
    """What a run holds from set-up to the end: the policy, its optimizer and schedule, the task and its
    verifier, the state carried from step to step (and into checkpoints), and the run folder's log (None on
    every process but the first of a data-parallel run)."""

    config: ExperimentConfig
    method: Method
    settings: Any
    """The method's own section, method.<name> (None: it has none)."""
    run_dir: Path
    task: Task
    verifier: Verifier
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    dist: Distributed
    ref_model: PreTrainedModel | None
    """The frozen starting policy of the KL penalty (algo.kl_coef > 0)."""
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    micro_batch_tokens: int
    params: SamplingParams
    prompt_format: PromptFormat
    heldout: list[Problem]
    state: TrainerState
    log: RunLog | None
    show: bool
    """Progress and messages on this process (the first, unless quiet)."""

    def sampler(self) -> PolicySampler:
        """The policy as the methods sample it (probes, verdicts), counting its tokens."""
        return PolicySampler(self.model, self.tokenizer, self.task, self.params, generator=self.state.random.sampling,
                             verifier=self.verifier, max_batch=self.config.rollout.batch_size, prompt_format=self.prompt_format)

    def evaluate(self, problems: list[Problem] | None = None) -> EvalResult:
        """Greedy accuracy on ``problems`` (the held-out set). A failure that is not the weights' saves the
        training done so far before it is raised (EvaluationFailed)."""
        config, state = self.config, self.state
        try:
            return evaluate(self.model, self.tokenizer, self.task, self.heldout if problems is None else problems,
                            max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size, verifier=self.verifier,
                            prompt_format=self.prompt_format, stop=config.rollout.stop)
        except NonFiniteLogits as error:  # broken weights: nothing worth saving
            raise Diverged(f"{error}; the run stopped at step {state.step}; {_last_good(self.run_dir)}") from None
        except Exception as error:  # a bug in a task or in evaluation must not cost the training done so far
            saved = "before any training step"
            if state.step > 0:
                self.checkpoint(f"step_{state.step}")
                saved = (f"after step {state.step}; they are saved in {self.run_dir / 'checkpoints' / f'step_{state.step}'} "
                         f"(sirl train --resume {self.run_dir})")
            raise EvaluationFailed(f"the held-out evaluation failed {saved} ({type(error).__name__}: {error}; the traceback above shows where)") from error

    def checkpoint(self, name: str) -> None:
        """Write checkpoint ``name``; weights that are not all finite are never written (NonFiniteWeights)."""
        processes = self.dist.gather_json(self.state.process_json())  # every process takes part; the first writes
        if self.log:
            self.state.log_elapsed_s = time.time() - self.log.start_time
            save_training_checkpoint(self.run_dir, name, self.model, self.save_policy, self.optimizer, self.schedule, self.state,
                                     processes, to_yaml(self.config))
            if self.config.train.keep_checkpoints:
                prune_checkpoints(self.run_dir, self.config.train.keep_checkpoints)

    def save_policy(self, directory: Path) -> None:
        save_model(self.model, self.tokenizer, directory)
        write_task_record(directory, self.config.task.name, self.config.task.args)  # the model knows its task


def _set_up(
    config: ExperimentConfig, method: Method, run_dir: Path, quiet: bool, resume: bool, force: bool, task: Task, verifier: Verifier,
) -> tuple[_Run, LoadedCheckpoint | None]:
    """The policy, its optimizer and the state that carries over between steps, from the starting policy or,
    with ``resume``, from the run's latest checkpoint (returned beside the run)."""
    torch.manual_seed(config.seed)
    model, tokenizer = policy_from_config(config.model, task.alphabet(), config.seed)
    model.sirl_rollout_dtype = resolve_rollout_dtype(config.rollout.dtype, model)  # what every generate call samples in
    dist = Distributed.from_env(model.device)
    show = not quiet and dist.is_main
    rollout, algo, train = config.rollout, config.algo, config.train
    settings = config.method.of(method.name)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if algo.kl_coef > 0 else None
    if train.gradient_checkpointing:
        enable_checkpointing(base_causal_lm(model))
    micro_batch_tokens = train.micro_batch_tokens or auto_micro_batch_tokens(base_causal_lm(model), train.gradient_checkpointing)
    optimizer = adamw(model, lr=train.lr, weight_decay=train.weight_decay)  # betas (0.9, 0.99); fused for large models
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_constant(s, train.warmup_steps))
    params = SamplingParams(rollout.max_new_tokens, temperature=rollout.temperature, top_p=rollout.top_p, stop=tuple(rollout.stop))
    prompt_format = make_prompt_format(config.prompt, tokenizer, task)
    heldout = heldout_problems(task, config.eval.n_problems, config.eval.seed)
    state = TrainerState(
        random=RandomStreams.seeded(config.seed, dist.rank, model.device),  # each process its own prompts
        memory=MethodMemory.of(settings),
        tokens=TokenCounts(),
        method_state=method.make_state(settings, train, model, dist) if method.make_state else None,  # from the starting policy
    )
    loaded = _resume(run_dir, config, state, model, optimizer, schedule, dist, force, show) if resume else None
    log = RunLog(run_dir, config, resume_step=state.step if resume else None, elapsed_s=state.log_elapsed_s) if dist.is_main else None
    run = _Run(config, method, settings, run_dir, task, verifier, model, tokenizer, dist, ref_model, optimizer, schedule,
               micro_batch_tokens, params, prompt_format, heldout, state, log, show)
    return run, loaded


def _announce(run: _Run, loaded: LoadedCheckpoint | None) -> None:
    """What runs where, on the terminal; the verifier's isolation and the prompt format in the run folder."""
    config, state = run.config, run.state
    if run.show:
        print(f"train: {config.algo.name} on {config.task.name}, {count_parameters(run.model):,} parameters on {run.model.device}, "
              f"{run.dist.world_size} process(es), run folder {run.run_dir}")
        if loaded:
            print(f"resuming from {loaded.path} (step {state.step}, {state.tokens.total:,} generated tokens)")
        print(f"verifier: {run.verifier.isolation.describe()}")  # how model output is run; also in isolation.json
        print(f"prompt format: {describe_format(run.prompt_format)} (the exact text of one is in prompt.json)")
    if run.log:
        run.log.write_json("isolation.json", run.verifier.isolation.to_json())
        run.log.write_json("prompt.json", prompt_record(run.prompt_format, run.heldout[0].prompt if run.heldout else ""))


def _train(
    config: ExperimentConfig, method: Method, run_dir: Path, quiet: bool, resume: bool, force: bool, task: Task, verifier: Verifier,
    stop: StopSignals,
) -> EvalResult:
    run, loaded = _set_up(config, method, run_dir, quiet, resume, force, task, verifier)
    state, log, dist, algo, train = run.state, run.log, run.dist, config.algo, config.train
    _announce(run, loaded)
    if not resume:  # held-out accuracy before the first update
        state.first_eval = state.last_eval = run.evaluate()
        if log:
            log.log(0, {EVAL_ACCURACY: state.last_eval.accuracy, TOKENS_TOTAL: 0})
            log.log_evaluation(0, 0, 0, state.last_eval.rewards)
    start = time.time() - state.train_elapsed_s
    bar = tqdm(range(state.step + 1, train.steps + 1), desc=f"train {algo.name}", disable=not run.show, dynamic_ncols=True,
               bar_format="{desc} step {n_fmt} [{elapsed}{postfix}]", initial=state.step)
    # A resumed run whose last step ended it (a stop came before the end) goes straight to the end.
    finishing = state.step >= train.steps or (resume and _out_of_budget(train, state))
    for step in bar:
        if finishing or _stop_requested(stop, dist):  # a safe point: no step in progress
            break
        state.step = step
        step_start = time.time()
        sampler = run.sampler()
        try:
            # 1. Sample: fresh prompts, and for methods with a repair buffer a share of stored good prefixes.
            drawn, samples = _sample(run)
            # 2. Verify.
            rollouts = verify_trajectories(task, samples, verifier)
            rollout_seconds = time.time() - step_start
            # 3. Credit: the method's rows, advantages and auxiliary losses (its probes count their tokens).
            context = MethodContext(task, run.settings, algo.outcome_advantage, sampler, state.random.method, state.memory, step, state.method_state)
            credit = method.credit(rollouts, context)
            broken = None
        except NonFiniteLogits as error:
            broken = str(error)
        if dist.sum([float(broken is not None)])[0]:  # every process skips together
            _skip_sampling(state, log, step, broken or "another process met non-finite logits", run_dir)
            continue
        # 4. Update; a step with a non-finite loss or gradient is skipped, several in a row stop the run.
        update = _update(run, credit)
        # 5. Account and log; token counts and rewards are summed over processes.
        tokens_before = state.tokens.total
        counts = StepCounts.of(rollouts, sampler.tokens, verifier.take_counts(), credit, algo.ppo_epochs).summed(dist)
        _account(state, counts, start)
        metrics = step_metrics(
            counts, state.tokens, rollouts, credit, update, trained_tokens=state.trained_tokens, skipped_steps=state.skipped_steps,
            lr=run.schedule.get_last_lr()[0], rollout_s=rollout_seconds, step_s=time.time() - step_start, train_elapsed_s=state.train_elapsed_s,
        )
        if method.uses_repair:
            metrics.update(repair_metrics(len(drawn), state.memory))
        if state.skipped_in_row >= MAX_SKIPPED_IN_ROW:
            _stop(state, log, step, metrics, run_dir)
        finishing = step == train.steps or _out_of_budget(train, state)
        if _evaluation_due(train, step, tokens_before, state.tokens.total) or finishing:
            _evaluate_step(run, step, credit, metrics)
        if log:
            log.log(step, metrics)
        # No checkpoint while steps are being skipped: `latest` stays the last one before the trouble.
        if train.checkpoint_every and step % train.checkpoint_every == 0 and not finishing and not state.skipped_in_row:
            _checkpoint_step(run, step)
        bar.set_postfix(reward=f"{metrics[REWARD_MEAN]:.2f}", eval_acc=f"{state.last_eval.accuracy:.1%}",
                        tok_s=f"{metrics[TOKENS_PER_S]:.0f}", eta=_eta(state.train_elapsed_s, step, train, state.tokens.total))
        if finishing:
            break
    bar.close()
    if _stop_requested(stop, dist):
        _stop_at_safe_point(stop, state, log, run_dir, run.checkpoint)
    return _finish(run)


def _sample(run: _Run) -> tuple[list[RepairEntry], list[Trajectory]]:
    """This step's prompts (fresh ones, and for a method with a repair buffer a share of its stored good
    prefixes to continue) and ``rollout.group_size`` sampled responses to each: (the prefixes drawn, the samples)."""
    state, task, rollout = run.state, run.task, run.config.rollout
    drawn = (state.memory.repair.draw(round(run.settings.repair_share * rollout.prompts_per_step), state.random.prompts)
             if run.method.uses_repair else [])
    problems = [task.sample(state.random.prompts, "train") for _ in range(rollout.prompts_per_step - len(drawn))]
    samples = sample_trajectories(
        run.model, run.tokenizer, task, problems + [d.problem for d in drawn], run.params, group_size=rollout.group_size,
        prefixes=[[] for _ in problems] + [d.prefix_ids for d in drawn], generator=state.random.sampling, max_batch=rollout.batch_size,
        prompt_format=run.prompt_format,
    )
    return drawn, samples


def _update(run: _Run, credit: Credit) -> UpdateStats:
    """The PPO-clip epochs on the method's rows, then the schedule's step; counts a skipped (non-finite) step."""
    config, state = run.config, run.state
    algo, train = config.algo, config.train
    additive = algo.normalization == "additive"
    batch = collate_rollouts(credit.rows, credit.token_advantages, run.tokenizer.pad_token_id, reference=credit.reference if additive else None)
    update = policy_update(
        run.model, run.optimizer, batch, algo, norm_length=config.rollout.max_new_tokens, micro_batch_size=train.micro_batch_size,
        micro_batch_tokens=run.micro_batch_tokens, grad_clip=train.grad_clip, generator=state.random.update, dist=run.dist,
        ref_model=run.ref_model, aux_losses=credit.aux_losses,
    )
    run.schedule.step()
    state.skipped_steps += update.skipped
    state.skipped_in_row = state.skipped_in_row + 1 if update.skipped else 0
    return update


def _account(state: TrainerState, counts: StepCounts, start: float) -> None:
    """Add the step's tokens (generated, by kind, and trained) to the run's, and the training time so far."""
    state.tokens = TokenCounts(
        state.tokens.policy + int(counts.policy_tokens), state.tokens.probe + int(counts.probe_tokens), state.tokens.verify + int(counts.verify_tokens)
    )
    state.trained_tokens += int(counts.trained_tokens)
    state.train_elapsed_s = time.time() - start


def _evaluation_due(train: TrainConfig, step: int, tokens_before: int, tokens: int) -> bool:
    """Every train.eval_every steps, and at each multiple of train.eval_every_tokens generated tokens crossed."""
    crossed = bool(train.eval_every_tokens) and tokens // train.eval_every_tokens > tokens_before // train.eval_every_tokens
    return bool(train.eval_every and step % train.eval_every == 0) or crossed


def _evaluate_step(run: _Run, step: int, credit: Credit, metrics: dict) -> None:
    """The held-out evaluation after ``step``, into its metrics, evals.jsonl, and samples of its trajectories."""
    state = run.state
    state.last_eval = run.evaluate()
    metrics[EVAL_ACCURACY] = state.last_eval.accuracy
    if run.log:
        run.log.log_evaluation(step, state.tokens.total, state.trained_tokens, state.last_eval.rewards)
        append_samples(run.log.run_dir / "samples.jsonl", sample_records(step, run.task, run.tokenizer, credit, run.config.train.log_samples))


def _checkpoint_step(run: _Run, step: int) -> None:
    try:
        run.checkpoint(f"step_{step}")
    except NonFiniteWeights as error:  # `latest` keeps naming the last good one; sampling will stop the run
        print(f"train: {error}; {_last_good(run.run_dir)}", flush=True)


def _finish(run: _Run) -> EvalResult:
    """The end: the final evaluation (on eval.final_n_problems where that is another set), the final
    checkpoint, eval.json, the report and the result line."""
    config, state, run_dir = run.config, run.state, run.run_dir
    last_eval = state.last_eval
    if config.eval.final_n_problems and config.eval.final_n_problems != config.eval.n_problems:
        last_eval = run.evaluate(heldout_problems(run.task, config.eval.final_n_problems, config.eval.seed))
    try:
        run.checkpoint("final")
    except NonFiniteWeights as error:
        raise Diverged(f"{error}; {_last_good(run_dir)}") from None
    if run.log:
        run.log.write_json("eval.json", {STEP: state.step, TOKENS_TOTAL: state.tokens.total, **last_eval.to_json()})
        run.log.close()
        write_report_or_warn(run_dir)  # last: a report that fails warns and loses nothing
    if run.dist.is_main:  # the result line, even with --quiet
        first = state.first_eval
        print(f"held-out accuracy {first.accuracy:.1%} (95% CI {first.ci95[0]:.1%}-{first.ci95[1]:.1%}, n={first.n}) "
              f"before training, {last_eval.accuracy:.1%} (95% CI {last_eval.ci95[0]:.1%}-{last_eval.ci95[1]:.1%}, n={last_eval.n}) "
              f"after {state.step} steps and {state.tokens.total:,} generated tokens")
        if run.show:
            print(f"run folder: {run_dir}")
    run.dist.close()
    return last_eval


def _resume(run_dir, config, state, model, optimizer, schedule, dist, force, show):
    """Load the latest complete checkpoint of ``run_dir`` into the run (sirl.checkpoint.resume_training)."""

    def changed(saved: dict) -> None:
        try:  # fields added to sirl after the run started take their defaults, as the run had them
            saved = to_dict(from_dict(ExperimentConfig, saved, ""))
        except ConfigError:  # written by another version of sirl: compare what is there
            pass
        differences = config_differences(saved, config)
        if differences and not force:
            raise CheckpointError(
                f"the config differs from the one {run_dir} was trained with: {'; '.join(differences)}. Resume without "
                f"these overrides, or pass --force to continue with the changed config."
            )
        if differences and show:
            print(f"resuming with a changed config (--force): {'; '.join(differences)}")

    return resume_training(
        run_dir, state, model, optimizer, schedule, rank=dist.rank, world_size=dist.world_size, changed_config=changed,
        eval_from_json=EvalResult.from_json,
    )


def _resume_hint(run_dir: Path) -> str:
    if not (run_dir / "checkpoints" / "latest").is_file():
        return ". Nothing to resume from: start the run again"
    return f". Continue the run with:\n  sirl train --resume {shlex.quote(str(run_dir))}"


def _stop_requested(stop: StopSignals, dist: Distributed) -> bool:
    """Whether any process was asked to stop (every process takes part, so all stop at the same step)."""
    return bool(dist.sum([float(stop.requested is not None)])[0])


def _stop_at_safe_point(stop: StopSignals, state: TrainerState, log: RunLog | None, run_dir: Path, checkpoint) -> None:
    """End the run after a finished step because a signal asked it to: checkpoint that step (unless it is
    saved already, or steps are being skipped: then ``latest`` stays the last good one) with every further
    signal held until the checkpoint is complete, then raise Interrupted with the command that resumes."""
    signum = stop.requested or signal.SIGTERM  # another process of a data-parallel run was asked
    latest = run_dir / "checkpoints" / "latest"
    name = f"step_{state.step}"
    if state.skipped_in_row:
        saved = f"not saved while steps are being skipped; {_last_good(run_dir)}"
    elif latest.is_file() and latest.read_text().strip() == name:
        saved = f"its checkpoint {run_dir / 'checkpoints' / name} was written already"
    else:
        try:
            with stop.holding():
                checkpoint(name)
            saved = f"checkpoint {run_dir / 'checkpoints' / name} written"
        except NonFiniteWeights as error:
            saved = f"not saved ({error}); {_last_good(run_dir)}"
    if log:
        log.close()
    raise Interrupted(signum, f"stopped by {signal_name(signum)} after step {state.step}: {saved}{_resume_hint(run_dir)}")


def _out_of_budget(train: TrainConfig, state: TrainerState) -> bool:
    out_of_tokens = train.max_tokens is not None and state.tokens.total >= train.max_tokens
    out_of_time = train.max_minutes is not None and state.train_elapsed_s / 60 >= train.max_minutes
    return out_of_tokens or out_of_time


def _last_good(run_dir: Path) -> str:
    latest = run_dir / "checkpoints" / "latest"
    if latest.is_file():
        return f"the last good checkpoint is {run_dir / 'checkpoints' / latest.read_text().strip()} (checkpoints/latest)"
    return "no checkpoint had been written"


def _stop(state: TrainerState, log: RunLog | None, step: int, metrics: dict, run_dir: Path) -> None:
    """End the run after MAX_SKIPPED_IN_ROW non-finite steps in a row, naming the checkpoint to go back to."""
    if log:
        log.log(step, metrics)
        log.close()
    raise Diverged(
        f"steps {step - state.skipped_in_row + 1}..{step} all had a non-finite loss, gradient or sampling logit; the run stopped "
        f"at step {step} without saving the model; {_last_good(run_dir)}. Lower train.lr or check the rewards (a verifier "
        f"returning NaN?), then resume or start again."
    )


def _skip_sampling(state: TrainerState, log: RunLog | None, step: int, reason: str, run_dir: Path) -> None:
    """A step whose sampling met non-finite logits: no update, counted like a non-finite loss."""
    state.skipped_steps += 1
    state.skipped_in_row += 1
    metrics = {TOKENS_TOTAL: state.tokens.total, GUARD_SKIPPED_STEPS: state.skipped_steps, GUARD_NONFINITE_LOGITS: 1}
    if state.skipped_in_row >= MAX_SKIPPED_IN_ROW:
        _stop(state, log, step, metrics, run_dir)
    if log:
        log.log(step, metrics)
    print(f"train: step {step} skipped: {reason}", flush=True)


def _eta(elapsed: float, step: int, train: TrainConfig, total_tokens: int) -> str:
    """Time left under whichever limit (steps, tokens, minutes) ends the run first."""
    left = [elapsed / step * (train.steps - step)]
    if train.max_tokens:
        left.append(elapsed / max(total_tokens, 1) * max(train.max_tokens - total_tokens, 0))
    if train.max_minutes:
        left.append(max(train.max_minutes * 60 - elapsed, 0))
    minutes, seconds = divmod(int(min(left)), 60)
    return f"{minutes}:{seconds:02d}"

