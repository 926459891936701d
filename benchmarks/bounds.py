"""This machine's bounds and what a grpo step of SmolLM2-135M would take at them, beside what sirl and TRL take.

    python benchmarks/bounds.py                # bounds, and the steps recorded in results/trl_side_by_side.jsonl
    python benchmarks/bounds.py --rollout      # also time sirl's engine against HF generate at batch 8 and 64

1. The machine, at each of ``--threads``: read bandwidth (the sum of a 1 GiB float32 tensor) and matrix
   throughput (a 2048 x 2048 product in float32 and bf16), best of ``--repeats``.
2. The bounds (a roofline: a piece of work takes at least its bytes over the bandwidth and at least its
   FLOPs over the throughput; Williams, Waterman and Patterson 2009). FLOPs per token are 2 per weight
   forward and 6 forward and backward (Kaplan et al. 2020, section 2.1), plus attention; bytes are the
   weights read once per decode step plus the keys and values each row attends to. For a decode step at
   batch 8 and 64, for a rollout (prefill of each prompt once, then every step), and for an update at
   8 x 128 and 64 x 256: with every row computed whole (TRL's work) and with each prompt computed once
   per group (sirl's), plus the optimizer's pass over weights, gradients and two moments.
3. Steps measured by trl_side_by_side.py (the newest line of each trainer, size and thread count in
   ``--results``) beside their bound, each as a share of it (bound time / measured time: 1.0 is the bound).
4. With ``--rollout``: sirl's engine (bf16, rollout.dtype=auto) and HF ``generate`` (float32 weights, as
   loaded, and a bf16 copy) on ``rows / 8`` gsm8k prompts x 8 samples of ``--new-tokens`` tokens, timed in
   turn in this process, best of ``--rollout-repeats``; tokens per second, sirl's speedup and each as a
   share of the rollout bound. Appended to ``--rollout-out``.

On a quiet 2-core machine the default run takes about a minute; ``--rollout`` adds about 10 minutes at
1 and 2 threads, most of it HF generate at batch 64.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from common import GROUP, ModelCosts, best_of, gsm8k_chat_prompts

BYTES = {"float32": 4, "bfloat16": 2}


@dataclass(frozen=True)
class Machine:
    threads: int
    read_gb_s: float
    gflops: dict[str, float]  # by dtype name

    def seconds(self, flops: float, bytes_: float, dtype: str) -> float:
        """The roofline bound of work of ``flops`` FLOPs moving ``bytes_`` bytes, in ``dtype`` arithmetic."""
        return max(flops / (self.gflops[dtype] * 1e9), bytes_ / (self.read_gb_s * 1e9))


def measure_machine(threads: int, repeats: int) -> Machine:
    torch.set_num_threads(threads)
    x = torch.ones(1 << 28)  # 1 GiB of float32
    read = x.numel() * 4 / best_of(lambda: x.sum(), repeats) / 1e9
    del x
    gflops = {}
    for name in BYTES:
        a, b = (torch.randn(2048, 2048).to(getattr(torch, name)) for _ in range(2))
        a @ b  # oneDNN builds its kernel on the first call
        gflops[name] = 2 * 2048**3 / best_of(lambda: a @ b, repeats) / 1e9
    return Machine(threads, read, gflops)


@dataclass(frozen=True)
class Workload:
    rows: int
    new_tokens: int
    prompt_tokens: float  # mean prompt length
    group: int = GROUP


def decode_step_bound(m: Machine, costs: ModelCosts, batch: int, context: float, dtype: str) -> float:
    flops = 2 * costs.parameters * batch + costs.attention_flops_per_pair * batch * context
    bytes_ = costs.weight_bytes(BYTES[dtype]) + batch * context * costs.kv_bytes_per_token * BYTES[dtype]
    return m.seconds(flops, bytes_, dtype)


def rollout_bound(m: Machine, costs: ModelCosts, w: Workload, dtype: str) -> float:
    """Each prompt's prefill once (2 FLOPs per decoder weight per token, causal attention), then
    ``new_tokens`` decode steps of all rows at the mean context (the cost is linear in the context)."""
    prompts = w.rows / w.group
    prefill_flops = prompts * (2 * costs.body_parameters * w.prompt_tokens + costs.attention_flops_per_pair * w.prompt_tokens**2 / 2)
    prefill = m.seconds(prefill_flops, costs.weight_bytes(BYTES[dtype]), dtype)
    return prefill + w.new_tokens * decode_step_bound(m, costs, w.rows, w.prompt_tokens + w.new_tokens / 2, dtype)


def update_flops(costs: ModelCosts, w: Workload, shared_prompt: bool) -> float:
    """Forward and backward (3 forward passes' worth) of the decoder over the tokens computed, of the head over
    the scored positions, and of causal attention."""
    P, N, R = w.prompt_tokens, w.new_tokens, w.rows
    if shared_prompt:  # each prompt once per group, its keys and values shared by the group's rows
        tokens = R / w.group * P + R * N
        pairs = R / w.group * P**2 / 2 + R * N * (P + N / 2)
    else:
        tokens = R * (P + N)
        pairs = R * (P + N) ** 2 / 2
    return 3 * (2 * costs.body_parameters * tokens + 2 * costs.head_parameters * R * N + costs.attention_flops_per_pair * pairs)


def update_bound(m: Machine, costs: ModelCosts, w: Workload, dtype: str, shared_prompt: bool) -> float:
    # AdamW reads weights, gradients and two moments and writes three of them: 7 float32 passes.
    optimizer = 7 * 4 * costs.parameters / (m.read_gb_s * 1e9)
    return m.seconds(update_flops(costs, w, shared_prompt), 0, dtype) + optimizer


def newest(path: Path) -> list[dict]:
    """The newest line of each (label, rows, new tokens, threads) in a JSON-lines file, in first-seen order."""
    if not path.is_file():
        return []
    found: dict[tuple, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            found[(r["label"], r["rows"], r["new_tokens"], r["threads"])] = r
    return list(found.values())


def measure_rollout(args, machines: dict[int, Machine], costs: ModelCosts) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sirl.rollout import SamplingParams, generate, resolve_rollout_dtype

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    model.sirl_rollout_dtype = resolve_rollout_dtype("auto", model)
    sirl_dtype = str(model.sirl_rollout_dtype).removeprefix("torch.")
    bf16_model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).eval()
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for rows in args.batches:
            prompts = gsm8k_chat_prompts(tokenizer, rows // GROUP)
            width = max(map(len, prompts))
            ids = torch.full((len(prompts), width), tokenizer.pad_token_id)
            mask = torch.zeros_like(ids)
            for i, p in enumerate(prompts):
                ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1

            def sirl():
                generate(model, prompts, SamplingParams(args.new_tokens), eos_ids=[len(tokenizer) + 7], pad_id=tokenizer.pad_token_id,
                         repeats=GROUP, generator=torch.Generator().manual_seed(0))

            def hf(m):
                with torch.no_grad():
                    m.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, max_new_tokens=args.new_tokens,
                               min_new_tokens=args.new_tokens, num_return_sequences=GROUP, pad_token_id=tokenizer.pad_token_id)

            runs = {"sirl": sirl, "HF generate float32": lambda: hf(model), "HF generate bf16": lambda: hf(bf16_model)}
            seconds = {name: float("inf") for name in runs}
            for _ in range(args.rollout_repeats):  # in turn, so that a busy spell slows each alike
                for name, fn in runs.items():
                    seconds[name] = min(seconds[name], best_of(fn, 1))
            w = Workload(rows, args.new_tokens, sum(map(len, prompts)) / len(prompts))
            for name, s in seconds.items():
                dtype = "float32" if name.endswith("float32") else ("bfloat16" if name.endswith("bf16") else sirl_dtype)
                bound = rollout_bound(machines[threads], costs, w, dtype)
                results.append({
                    "label": name, "rows": rows, "new_tokens": args.new_tokens, "threads": threads, "dtype": dtype, "rollout_s": round(s, 3),
                    "tokens_per_s": round(rows * args.new_tokens / s, 1), "bound_s": round(bound, 3), "share_of_bound": round(bound / s, 3),
                    "sirl_speedup": round(s / seconds["sirl"], 2),
                })
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/trl_side_by_side.jsonl"))
    parser.add_argument("--rollout", action="store_true", help="time sirl's engine and HF generate (section 4)")
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 64])
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per row of the --rollout measurement")
    parser.add_argument("--rollout-repeats", type=int, default=2, help="timed runs of each engine (best kept)")
    parser.add_argument("--rollout-out", type=Path, default=Path("benchmarks/results/rollout_bounds.jsonl"))
    parser.add_argument("--prompt-tokens", type=float, default=None, help="mean prompt length (default: measured on gsm8k)")
    args = parser.parse_args()

    from transformers import AutoConfig, AutoTokenizer

    costs = ModelCosts.of(AutoConfig.from_pretrained(args.model))
    prompt_tokens = args.prompt_tokens or (lambda p: sum(map(len, p)) / len(p))(gsm8k_chat_prompts(AutoTokenizer.from_pretrained(args.model), 64))
    machines = {t: measure_machine(t, args.repeats) for t in args.threads}

    print("## The machine\n\n| threads | read GB/s | float32 GFLOPS | bf16 GFLOPS |\n|---|---|---|---|")
    for m in machines.values():
        print(f"| {m.threads} | {m.read_gb_s:.1f} | {m.gflops['float32']:.0f} | {m.gflops['bfloat16']:.0f} |")
    print(f"\nSmolLM2-135M: {costs.parameters / 1e6:.1f}M weights ({costs.body_parameters / 1e6:.1f}M in the decoder, "
          f"{costs.head_parameters / 1e6:.1f}M in the head), {costs.kv_bytes_per_token * 2 / 1024:.1f} KiB of bf16 keys and values "
          f"per token; gsm8k chat prompts average {prompt_tokens:.0f} tokens.")

    print("\n## Bounds\n\n| work | threads | float32 s | bf16 s |\n|---|---|---|---|")
    for t, m in machines.items():
        for batch in (8, 64):
            context = prompt_tokens + 64
            row = [decode_step_bound(m, costs, batch, context, d) for d in BYTES]
            print(f"| decode step, batch {batch}, context {context:.0f} | {t} | {row[0] * 1e3:.1f} ms | {row[1] * 1e3:.1f} ms |")
        for rows, new in ((8, 128), (64, 256)):
            w = Workload(rows, new, prompt_tokens)
            r = [rollout_bound(m, costs, w, d) for d in BYTES]
            print(f"| rollout {rows} x {new} | {t} | {r[0]:.2f} ({rows * new / r[0]:.0f} tok/s) | {r[1]:.2f} ({rows * new / r[1]:.0f} tok/s) |")
            for shared, who in ((False, "every row whole (TRL's work)"), (True, "prompt once per group (sirl's)")):
                u = [update_bound(m, costs, w, d, shared) for d in BYTES]
                print(f"| update {rows} x {new}, {who} | {t} | {u[0]:.1f} | {u[1]:.1f} |")

    steps = newest(args.results)
    if steps:
        print(f"\n## Steps measured ({args.results})\n")
        print("| trainer | rows x new tokens | threads | step s | bound s | share of bound | rollout s (share) | update s (share) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in steps:
            if r["threads"] not in machines:
                continue
            m, w = machines[r["threads"]], Workload(r["rows"], r["new_tokens"], prompt_tokens, r.get("group", GROUP))
            sirl = r["label"] == "sirl"
            dtype = r.get("rollout_dtype", "float32") if sirl else r.get("dtype", "float32")
            update_dtype = r.get("dtype", "float32")
            rb = rollout_bound(m, costs, w, dtype if dtype in BYTES else "float32")
            ub = update_bound(m, costs, w, update_dtype if update_dtype in BYTES else "float32", shared_prompt=sirl)
            parts = "| |"
            if "rollout_s" in r and "update_s" in r:
                parts = f"| {r['rollout_s']} ({rb / r['rollout_s']:.2f}) | {r['update_s']} ({ub / r['update_s']:.2f}) |"
            print(f"| {r['label']} | {r['rows']} x {r['new_tokens']} | {r['threads']} | {r['step_s']} | {rb + ub:.1f} | "
                  f"{(rb + ub) / r['step_s']:.2f} {parts}")

    if args.rollout:
        results = measure_rollout(args, machines, costs)
        args.rollout_out.parent.mkdir(parents=True, exist_ok=True)
        with args.rollout_out.open("a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
        print(f"\n## Rollout: sirl's engine and HF generate, {args.new_tokens} new tokens a row, {GROUP} samples per prompt\n")
        print("| engine | rows | threads | dtype | s | tokens/s | bound s | share of bound | sirl's speedup over it |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['label']} | {r['rows']} | {r['threads']} | {r['dtype']} | {r['rollout_s']} | {r['tokens_per_s']} | {r['bound_s']} | "
                  f"{r['share_of_bound']} | {r['sirl_speedup'] if r['label'] != 'sirl' else ''} |")


if __name__ == "__main__":
    main()
