"""Supervised warm start: teach a policy the task's format from reference solutions.

Each step draws a fresh batch of training problems (``task.args`` overridden by ``sft.task_args``, so the
SFT distribution can differ from the RL one), and minimizes the token-mean cross-entropy of the reference
solution and EOS given the prompt. Every ``sft.eval_every`` steps the policy is scored greedily on the fixed
held-out set of the *task* distribution; SFT stops at ``sft.target_accuracy`` (to leave room for RL), at
``sft.max_minutes`` or after ``sft.steps``, and saves a Hugging Face directory (config.json,
model.safetensors, tokenizer files) into the run folder, beside config.yaml and metrics.jsonl.

    sirl sft --config arith_sft --out checkpoints/arith-tiny
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from sirl.config import ExperimentConfig, check_task_args
from sirl.evaluate import EvalResult, EvaluationFailed, evaluate, heldout_problems
from sirl.batch import collate_supervised
from sirl.model import count_parameters, encode_prompt, encode_text, policy_from_config, save_model, supervised_loss
from sirl.interrupt import Interrupted, StopSignals, signal_name
from sirl.runlock import FolderLock, check_new_run_dir, check_not_in_use
from sirl.runlog import RunLog
from sirl.schema import EVAL_ACCURACY, GRAD_NORM, LOSS_SFT, LR
from sirl.tasks import Task, check_model_task, load_task, resolve_task_class, write_task_record
from sirl.verifier import Verifier, verifier_for


@dataclass(frozen=True)
class SFTResult:
    run_dir: Path
    steps: int
    stopped_because: str
    final_eval: EvalResult


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to ``floor`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def run_sft(
    config: ExperimentConfig, run_dir: Path, quiet: bool = False, allow_task_mismatch: bool = False, overwrite: bool = False,
) -> SFTResult:
    """SFT into ``run_dir`` (module docstring). Starting from a model that sirl trained on another task
    is refused unless ``allow_task_mismatch`` (sirl.tasks.check_model_task). A ``run_dir`` that holds a run
    is refused unless ``overwrite``, and one process writes it at a time (sirl.runlock). SIGINT or SIGTERM
    stop SFT after the step in progress with the weights saved in ``run_dir``, raising Interrupted."""
    run_dir = Path(run_dir)
    check_not_in_use(run_dir, "run folder")
    check_new_run_dir(run_dir, overwrite)
    task_class = resolve_task_class(config.task.name)
    task_args = check_task_args(task_class, config.task.args)
    if config.model.path:
        note = check_model_task(config.model.path, config.task.name, task_args, allow_mismatch=allow_task_mismatch)
        if note:
            print(f"note: {note}", file=sys.stderr)
    train_args = check_task_args(task_class, {**task_args, **config.sft.task_args}, key="sft.task_args")
    task = load_task(config.task.name, **task_args)
    train_task = load_task(config.task.name, **train_args)
    with contextlib.ExitStack() as scope:
        stop = scope.enter_context(StopSignals("SFT stops after the step in progress and saves the weights", name="sirl sft"))
        scope.enter_context(FolderLock(run_dir, what="run folder"))
        check_new_run_dir(run_dir, overwrite, delete=overwrite)
        verifier = scope.enter_context(verifier_for(config.verifier, config.task, task))  # its workers stop however SFT ends
        try:
            return _sft(config, run_dir, quiet, task, train_task, verifier, stop)
        except KeyboardInterrupt:  # a second Ctrl-C before the step ended
            raise Interrupted(signal.SIGINT, "stopped at once by a second Ctrl-C; the weights of this SFT run were not saved") from None


def _sft(
    config: ExperimentConfig, run_dir: Path, quiet: bool, task: Task, train_task: Task, verifier: Verifier, stop: StopSignals,
) -> SFTResult:
    torch.manual_seed(config.seed)
    model, tokenizer = policy_from_config(config.model, task.alphabet() + train_task.alphabet(), config.seed)
    device = model.device
    log = RunLog(run_dir, config)
    heldout = heldout_problems(task, config.eval.n_problems, config.eval.seed)
    sft = config.sft
    optimizer = torch.optim.AdamW(model.parameters(), lr=sft.lr, weight_decay=sft.weight_decay, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, sft.warmup_steps, sft.steps))
    rng = random.Random(config.seed)
    if not quiet:  # --quiet prints the result line only
        print(f"sft: {config.task.name}, {count_parameters(model):,} parameters on {device}, run folder {run_dir}")
        print(f"verifier: {verifier.isolation.describe()}")
    log.write_json("isolation.json", verifier.isolation.to_json())

    def save() -> None:
        save_model(model, tokenizer, run_dir)
        write_task_record(run_dir, config.task.name, config.task.args)  # so the model is not used for another task

    def held_out_eval(step: int) -> EvalResult:
        try:
            return evaluate(
                model, tokenizer, task, heldout, max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size,
                verifier=verifier, progress=None if quiet else "sft held-out eval",
            )
        except Exception as error:  # a bug in a task (or in evaluation) must not cost the training done so far
            save()
            log.close()
            raise EvaluationFailed(
                f"the held-out evaluation at SFT step {step} failed ({type(error).__name__}: {error}; the traceback "
                f"above shows where); the weights trained until then are saved in {run_dir}, a model directory that "
                f"--model {run_dir} loads"
            ) from error

    start = time.time()
    stopped_because, accuracy, step = "steps", float("nan"), 0
    last_eval, last_eval_step = None, -1
    bar = tqdm(range(1, sft.steps + 1), desc="sft", disable=quiet, dynamic_ncols=True)
    for step in bar:
        model.train()
        problems = [train_task.sample(rng, "train") for _ in range(sft.batch_size)]
        examples = [
            (encode_prompt(tokenizer, p.prompt), encode_text(tokenizer, train_task.reference_solution(p)) + [tokenizer.eos_token_id])
            for p in problems
        ]
        loss = supervised_loss(model, collate_supervised(examples, tokenizer.pad_token_id))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), sft.grad_clip)
        optimizer.step()
        schedule.step()
        metrics = {LOSS_SFT: loss.item(), GRAD_NORM: grad_norm.item(), LR: schedule.get_last_lr()[0]}
        minutes = (time.time() - start) / 60
        out_of_time = sft.max_minutes is not None and minutes >= sft.max_minutes
        if step % sft.eval_every == 0 or step == sft.steps or out_of_time:
            last_eval, last_eval_step = held_out_eval(step), step
            accuracy = metrics[EVAL_ACCURACY] = last_eval.accuracy
        log.log(step, metrics)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc="-" if last_eval is None else f"{accuracy:.1%}")  # "-": none yet
        if EVAL_ACCURACY in metrics and sft.target_accuracy is not None and accuracy >= sft.target_accuracy:
            stopped_because = f"target accuracy {sft.target_accuracy:.0%} reached"
            break
        if out_of_time:
            stopped_because = f"time budget of {sft.max_minutes} minutes reached"
            break
        if stop.requested:  # after a whole step: save what it trained (SFT has no checkpoints to resume from)
            bar.close()
            with stop.holding():
                save()
            log.close()
            raise Interrupted(stop.requested, f"stopped by {signal_name(stop.requested)}: the weights after SFT step {step} are saved in "
                                              f"{run_dir}, a model directory that --model {run_dir} loads (not evaluated)")
    bar.close()
    final = last_eval if last_eval_step == step else held_out_eval(step)
    save()
    log.write_json("eval.json", final.to_json())
    log.close()
    print(f"sft stopped after {step} steps ({stopped_because}); held-out accuracy {final.accuracy:.1%}; saved {run_dir}")
    return SFTResult(run_dir=run_dir, steps=step, stopped_because=stopped_because, final_eval=final)
