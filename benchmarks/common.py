"""Helpers shared by the benchmark scripts: resumable `sirl train` runs and reading their logs; the one-step
benchmarks' arguments, prompts, timing and a decoder's costs per token."""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def add_step_arguments(parser: argparse.ArgumentParser, rows: int, new_tokens: int) -> None:
    """What the one-step benchmarks (grpo_step_memory.py, trl_side_by_side.py) share: the model directory,
    the batch (rows sampled for exactly --new-tokens each, --group samples per prompt) and the CPU threads."""
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--new-tokens", type=int, default=new_tokens)
    parser.add_argument("--group", type=int, default=GROUP, help="samples per prompt (rows / group prompts)")
    parser.add_argument("--threads", type=int, default=1)


GROUP = 8
"""Samples per prompt in the step benchmarks, as TRL's side needs (num_generations) and sirl trains."""


def gsm8k_chat_prompts(tokenizer, n: int) -> list[list[int]]:
    """Token ids of the first ``n`` gsm8k training problems as the user turn of the model's chat template,
    with the assistant header after it (what sirl's chat prompt format and TRL's conversational prompts give)."""
    from sirl.tasks import load_task

    task = load_task("gsm8k")
    problems = [task.problem(i) for i in task.indices("train")[:n]]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p.prompt.strip()}], add_generation_prompt=True) for p in problems]
    return [list(p["input_ids"]) if not isinstance(p, list) else p for p in prompts]


@dataclass(frozen=True)
class ModelCosts:
    """What one token costs a decoder, from its config (Kaplan et al. 2020, "Scaling laws", section 2.1:
    a forward pass is 2 FLOPs per weight per token plus attention; training is 3 forward passes' worth)."""

    body_parameters: int  # weights of the decoder layers (embedding lookups are free)
    head_parameters: int  # the output projection, applied only where logits are needed
    kv_bytes_per_token: int  # keys and values of one token over all layers, per byte of the cache dtype
    attention_flops_per_pair: int  # q.k and p.v over all layers for one (query, key) pair

    @property
    def parameters(self) -> int:
        return self.body_parameters + self.head_parameters

    def weight_bytes(self, dtype_bytes: int) -> int:
        return self.parameters * dtype_bytes

    @classmethod
    def of(cls, config) -> "ModelCosts":
        hidden, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        attention = hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden  # q, k, v, o
        mlp = 3 * hidden * inter  # gate, up, down
        return cls(
            body_parameters=layers * (attention + mlp),
            head_parameters=config.vocab_size * hidden,
            kv_bytes_per_token=2 * layers * kv_heads * head_dim,
            attention_flops_per_pair=4 * layers * heads * head_dim,
        )


def best_of(fn, repeats: int) -> float:
    """The shortest of ``repeats`` timed calls of ``fn`` in seconds (a busy machine only ever adds time)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def train_run(run_dir: Path, overrides: list[str], label: str) -> Path:
    """Run `sirl train` into ``run_dir`` unless it already finished there (eval.json exists); an
    interrupted run is started again from scratch. ``overrides`` are CLI arguments."""
    if (run_dir / "eval.json").is_file():
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    print(f"[{label}] {run_dir}", flush=True)
    subprocess.run([sys.executable, "-m", "sirl.cli", "train", "--out", str(run_dir), "--quiet", *overrides], check=True)
    return run_dir


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_eval(run_dir: Path) -> dict:
    return json.loads((run_dir / "eval.json").read_text())
