"""One grpo step of a real model on the CPU, as `sirl train` takes it: rollout and update seconds, peak RSS.

    python benchmarks/grpo_step_memory.py --model models/smollm2-135m-instruct --rows 64 --new-tokens 256 \
        --label after --out benchmarks/results/grpo_step_memory.jsonl

``--rows / --group`` gsm8k training prompts in the model's chat format, ``--group`` samples each (TRL's
grouping in trl_side_by_side.py), every row sampled for exactly ``--new-tokens`` tokens (EOS is not
allowed to end a row, so every run does the same work); then one PPO-clip update (sirl.update) over all
rows with +-1 advantages. The policy is set up as `sirl train` sets it up: float32 master weights, forward
passes in ``--dtype`` (model.dtype), sampling in ``--rollout-dtype`` (rollout.dtype), the library's
optimizer and automatic micro-batches. Library calls an older sirl lacks are skipped, so the same script
measures an older commit: run it from a worktree of that commit with ``PYTHONPATH=<worktree>/src`` (its
rows then say which calls it had). One line of JSON per run is appended to ``--out``; ``--table`` prints
them as a table.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

import torch

from common import add_step_arguments, gsm8k_chat_prompts, peak_rss_gb


def run(args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import sirl.rollout as rollout
    import sirl.update as update
    from sirl.batch import PolicyBatch, TokenBatch
    from sirl.config import AlgoConfig, TrainConfig
    from sirl.distributed import Distributed

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.dtype != "float32":
        model.sirl_compute_dtype = getattr(torch, args.dtype)  # autocast on float32 master weights (sirl.model)
    if hasattr(rollout, "resolve_rollout_dtype"):
        model.sirl_rollout_dtype = rollout.resolve_rollout_dtype(args.rollout_dtype, model)
    sampled_dtype = str(getattr(model, "sirl_rollout_dtype", getattr(model, "sirl_compute_dtype", torch.float32))).removeprefix("torch.")
    if args.rows % args.group:
        raise SystemExit(f"--rows {args.rows} is not a multiple of --group {args.group}")
    prompts = gsm8k_chat_prompts(tokenizer, args.rows // args.group)
    loaded_gb = peak_rss_gb()

    start = time.perf_counter()
    out = rollout.generate(model, prompts, rollout.SamplingParams(args.new_tokens, temperature=1.0), eos_ids=[len(tokenizer) + 7],
                           pad_id=tokenizer.pad_token_id, repeats=args.group, generator=torch.Generator().manual_seed(0))
    rollout_s = time.perf_counter() - start
    rollout_gb = peak_rss_gb()

    contexts = [prompts[int(i)] for i in out.context_index_B]
    width = max(len(p) for p in prompts) + out.tokens_BT.shape[1]
    B = len(contexts)
    ids = torch.full((B, width), tokenizer.pad_token_id)
    attention = torch.zeros(B, width, dtype=torch.long)
    mask = torch.zeros(B, width - 1)
    old = torch.zeros(B, width - 1)
    for row, prompt in enumerate(contexts):
        response = out.row_tokens(row)
        sequence = prompt + response
        ids[row, width - len(sequence):] = torch.tensor(sequence)  # left padding, as sirl's collate does
        attention[row, width - len(sequence):] = 1
        mask[row, width - len(response) - 1:] = 1
        old[row, width - len(response) - 1:] = out.logp_BT[row, : len(response)]
    adv = (torch.arange(B) % 2 * 2 - 1).float()[:, None] * mask
    batch = PolicyBatch(TokenBatch(ids, attention, mask), old, adv, torch.ones(B))
    if hasattr(update, "adamw"):
        optimizer = update.adamw(model, lr=1e-6, weight_decay=0.0)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.99))
    kwargs = dict(norm_length=args.new_tokens, micro_batch_size=TrainConfig().micro_batch_size, grad_clip=1.0,
                  generator=torch.Generator().manual_seed(0), dist=Distributed.from_env(torch.device("cpu")))
    if "micro_batch_tokens" in inspect.signature(update.policy_update).parameters:  # the newer code's default
        kwargs["micro_batch_tokens"] = update.auto_micro_batch_tokens(model)
    start = time.perf_counter()
    stats = update.policy_update(model, optimizer, batch, AlgoConfig(), **kwargs)
    update_s = time.perf_counter() - start
    return {
        "label": args.label, "rows": B, "new_tokens": args.new_tokens, "group": args.group, "sequence_tokens": width, "threads": args.threads,
        "dtype": args.dtype, "rollout_dtype": sampled_dtype, "micro_batch_tokens": kwargs.get("micro_batch_tokens"),
        "fused_adamw": bool(optimizer.defaults.get("fused")), "rollout_s": round(rollout_s, 2), "update_s": round(update_s, 2),
        "step_s": round(rollout_s + update_s, 2), "rollout_tokens_per_s": round(B * args.new_tokens / rollout_s, 1),
        "peak_rss_gb_loaded": round(loaded_gb, 2), "peak_rss_gb_rollout": round(rollout_gb, 2), "peak_rss_gb": round(peak_rss_gb(), 2),
        "grad_norm": round(stats.grad_norm, 4), "clip_frac": round(stats.clip_frac, 4), "skipped": stats.skipped,
    }


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    head = "| code | rows x new tokens | threads | dtype | rollout s | update s | step s | rollout tok/s | peak RSS GB |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['label']} | {r['rows']} x {r['new_tokens']} | {r['threads']} | {r.get('dtype', 'float32')} | {r['rollout_s']} | "
                     f"{r['update_s']} | {r['step_s']} | {r['rollout_tokens_per_s']} | {r['peak_rss_gb']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser, rows=64, new_tokens=256)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16", help="model.dtype: the update's compute dtype")
    parser.add_argument("--rollout-dtype", choices=["auto", "float32", "bfloat16"], default="auto", help="rollout.dtype")
    parser.add_argument("--label", default="after")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grpo_step_memory.jsonl"))
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.out))
        return
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
