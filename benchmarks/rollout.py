"""Rollout engine vs transformers ``generate``: generated tokens per second on the same model and batch.

Two workloads, each a batch of ``--prompts`` arith prompts x ``--group`` samples at temperature 1:
- ``rl``: the RL rollout as it happens in training: responses stop at EOS (generate pads finished rows
  until the longest is done; the engine drops them), one prefill per prompt for the engine, and
  ``num_return_sequences`` for generate.
- ``fixed``: every row decodes exactly ``--max-new-tokens`` tokens (EOS ignored): pure decoding speed.
Each measurement is repeated (``--repeats``, interleaved) and the median is reported, since a shared
CPU is noisy.

    python benchmarks/rollout.py                                   # shipped arith policy, CPU
    python benchmarks/rollout.py --size base --device cuda          # a larger random model on a GPU
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import torch

from sirl.evaluate import heldout_problems
from sirl.model import SIZE_PRESETS, build_model, encode_prompt, load_model
from sirl.rollout import SamplingParams, generate
from sirl.rollout.engine import FastBackend, HFBackend
from sirl.tasks.arith import ArithTask
from sirl.tokenizer import build_char_tokenizer


def hf_generate(model, contexts, group, max_new_tokens, eos, pad, fixed):
    width = max(map(len, contexts))
    ids = torch.full((len(contexts), width), pad)
    mask = torch.zeros_like(ids)
    for i, c in enumerate(contexts):
        ids[i, width - len(c) :] = torch.tensor(c)
        mask[i, width - len(c) :] = 1
    out = model.generate(
        input_ids=ids.to(model.device), attention_mask=mask.to(model.device), do_sample=True, temperature=1.0, top_k=0,
        max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens if fixed else 0,
        num_return_sequences=group, eos_token_id=eos, pad_token_id=pad,
    )[:, width:]
    if fixed:
        return out.numel()
    is_eos = out == eos
    ended_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return int((~ended_before).sum())


def engine(model, backend_cls, contexts, group, max_new_tokens, eos, pad, fixed):
    out = generate(
        model, contexts, SamplingParams(max_new_tokens, temperature=1.0), eos_ids=[] if fixed else [eos], pad_id=pad,
        repeats=group, backend=backend_cls(model),
    )
    return int(out.mask_BT.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="checkpoints/arith-tiny", help="a model directory (ignored with --size)")
    parser.add_argument("--size", choices=sorted(SIZE_PRESETS), help="a random Llama of this size preset instead")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.size:
        tokenizer = build_char_tokenizer(ArithTask().alphabet())
        model = build_model(tokenizer, "llama", SIZE_PRESETS[args.size], 512, seed=0)
        name = f"random llama '{args.size}'"
    else:
        model, tokenizer = load_model(args.model)
        name = args.model
    model = model.to(args.device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    task = ArithTask()
    problems = heldout_problems(task, args.prompts, seed=random.randrange(1000))
    contexts = [encode_prompt(tokenizer, p.prompt) for p in problems]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    runners = {
        "engine (fast backend)": lambda fixed: engine(model, FastBackend, contexts, args.group, args.max_new_tokens, eos, pad, fixed),
        "engine (HF backend)": lambda fixed: engine(model, HFBackend, contexts, args.group, args.max_new_tokens, eos, pad, fixed),
        "transformers generate": lambda fixed: hf_generate(model, contexts, args.group, args.max_new_tokens, eos, pad, fixed),
    }
    batch = args.prompts * args.group
    print(f"model: {name}, {n_params:,} parameters, {args.device}; batch {batch} = {args.prompts} prompts x {args.group}; "
          f"max_new_tokens {args.max_new_tokens}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print()
    print("| workload | method | tokens/s (median) | tokens/s (best) | tokens per batch | speedup vs generate (median) |")
    print("|---|---|---:|---:|---:|---:|")
    with torch.no_grad():
        for workload, fixed in (("rl", False), ("fixed", True)):
            rates: dict[str, list[float]] = {key: [] for key in runners}
            counts: dict[str, int] = {}
            for key, run in runners.items():  # warm-up
                run(fixed)
            for _ in range(args.repeats):
                for key, run in runners.items():
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    counts[key] = run(fixed)
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    rates[key].append(counts[key] / (time.perf_counter() - start))
            baseline = statistics.median(rates["transformers generate"])
            for key in runners:
                rate = statistics.median(rates[key])
                print(f"| {workload} | {key} | {rate:,.0f} | {max(rates[key]):,.0f} | {counts[key]:,} | {rate / baseline:.2f}x |")


if __name__ == "__main__":
    main()
