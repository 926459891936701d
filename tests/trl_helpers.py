"""TRL runs from checkpoints/arith7-tiny for tests/test_integration_trl.py, and one process of its
two-process run when executed as a script (``python tests/trl_helpers.py OUT``, with RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT in the environment): the worker imports only this module, not the tests."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import torch
import trl
from transformers import AutoModelForCausalLM, AutoTokenizer

from sirl.integrations.trl import CreditGRPOTrainer
from sirl.tasks.arith import ArithTask
from sirl.types import Problem

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "checkpoints" / "arith7-tiny"
TASK = ArithTask(min_ops=8, max_ops=12, modulus=7)


def arith_reward(completions, answer, **kwargs):
    return [TASK.verify(Problem("", a), c) for c, a in zip(completions, answer)]


def arith_dataset(n: int, seed: int = 0):
    from datasets import Dataset

    rng = random.Random(seed)
    problems = [TASK.sample(rng, "train") for _ in range(n)]
    return Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in problems])


def grpo_config(out: Path, **overrides) -> trl.GRPOConfig:
    settings = dict(
        output_dir=str(out), per_device_train_batch_size=16, num_generations=8, max_completion_length=96, learning_rate=1e-4,
        max_steps=2, use_cpu=True, bf16=False, logging_steps=1, report_to=[], save_strategy="no", temperature=1.0, beta=0.0,
        seed=0, dataloader_num_workers=0, lr_scheduler_type="constant", disable_tqdm=True, gradient_checkpointing=False,
    )
    return trl.GRPOConfig(**{**settings, **overrides})


def make_trainer(out: Path, trainer_class=CreditGRPOTrainer, config_overrides=None, **credit):
    model = AutoModelForCausalLM.from_pretrained(POLICY, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(POLICY)
    return trainer_class(model=model, reward_funcs=arith_reward, args=grpo_config(out, **(config_overrides or {})),
                         train_dataset=arith_dataset(32), processing_class=tokenizer, **credit)


class RankRecorder(CreditGRPOTrainer):
    """Saves each process's completion ids, the gathered rewards, its advantages and its pool of good prefixes (rank<k>.pt)."""

    def token_advantages(self, completion_ids, rewards_per_func, group_size, width, **kwargs):
        advantages_BT, metrics = super().token_advantages(completion_ids, rewards_per_func, group_size, width, **kwargs)
        pool = [(e.example, e.prefix_ids) for e in self.good_prefixes.entries]
        torch.save({"ids": completion_ids, "rewards": rewards_per_func.sum(1), "advantages": advantages_BT, "metrics": metrics, "pool": pool},
                   Path(self.args.output_dir) / f"rank{self.accelerator.process_index}.pt")
        return advantages_BT, metrics


def two_process_worker(out: Path) -> None:
    """One step of 6 completions per process in groups of 4, so that group 1 has two rows on each process."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    trainer = make_trainer(out, RankRecorder, config_overrides={"per_device_train_batch_size": 6, "num_generations": 4, "max_steps": 1},
                           credit="divergence", step_splitter="regex:;", repair_share=0.25)  # the pool is kept on both
    assert trainer.accelerator.num_processes == 2
    trainer.train()
    torch.distributed.destroy_process_group()
    # The results are written. Leave without the interpreter's teardown: freeing the trainer's distributed
    # objects there can wait forever in a gloo destructor on a peer that has already exited.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # the test asks a worker that has not finished in time for its stacks
    two_process_worker(Path(sys.argv[1]))
