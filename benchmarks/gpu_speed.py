"""sirl's rollout and grpo step on one GPU, against HF generate (and vLLM where it is installed), with the
share of the GPU's bandwidth bound: one script, a few minutes.

    python benchmarks/gpu_speed.py                          # SmolLM2-135M, 256 rows (32 prompts x 8) x 256 tokens
    python benchmarks/gpu_speed.py --device cpu --tiny      # the same code path on a tiny random Llama, seconds

1. The device: read bandwidth (the sum of a 1 GiB float32 tensor) and bf16 matrix throughput (a 4096 x
   4096 product), best of 5.
2. Rollout: ``--rows / 8`` gsm8k prompts in the chat format x 8 samples of exactly ``--new-tokens``
   tokens: sirl's engine (rollout.dtype=auto: bf16 on a GPU), HF ``generate`` on a bf16 copy of the
   model (``num_return_sequences=8``), and vLLM's ``LLM.generate`` when ``import vllm`` works (bf16,
   ``min_tokens``); tokens per second, best of ``--repeats`` in turn, and each as a share of the rollout's
   roofline bound (benchmarks/bounds.py: weights and attended keys and values read once per decode step,
   2 FLOPs per weight per token).
3. One grpo step as sirl train takes it (bf16 autocast on float32 master weights, fused AdamW, the
   library's micro-batches): rollout, update, total seconds and the step's bound.

Every row runs exactly ``--new-tokens`` tokens (no EOS can end one), so random weights do the same work
as the trained ones: ``--random-weights`` needs only the model folder's config.json and tokenizer files
(4 MB, where the weights are 538 MB), for a machine the weights cannot be copied to; vLLM then gets the
folder too and needs the weights, so it is skipped.

Each result is a JSON line appended to ``--out``; the tables are printed. ``--tiny`` replaces the model by
a 2-layer random Llama and the prompts by random ids, so the script can be checked without a GPU or the
model (tests nothing about speed).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

from common import GROUP, ModelCosts, best_of, gsm8k_chat_prompts

BYTES = {"float32": 4, "bfloat16": 2}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    def run():
        fn()
        sync(device)

    return best_of(run, 1)


def measure_device(device: torch.device, repeats: int) -> tuple[float, float]:
    x = torch.ones(1 << 28, device=device)
    x.sum()
    sync(device)
    read = x.numel() * 4 / min(timed(lambda: x.sum(), device) for _ in range(repeats)) / 1e9
    del x
    n = 4096 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    a @ b
    flops = 2 * n**3 / min(timed(lambda: a @ b, device) for _ in range(repeats)) / 1e9
    return read, flops


def rollout_bound(costs: ModelCosts, rows: int, new_tokens: int, prompt_tokens: float, read_gb_s: float, gflops: float) -> float:
    """Prefill of each prompt once, then every decode step at the mean context; bf16 weights and cache."""
    prefill = (rows / GROUP) * 2 * costs.body_parameters * prompt_tokens / (gflops * 1e9)
    context = prompt_tokens + new_tokens / 2
    step_bytes = costs.weight_bytes(2) + rows * context * costs.kv_bytes_per_token * 2
    step_flops = 2 * costs.parameters * rows + costs.attention_flops_per_pair * rows * context
    return prefill + new_tokens * max(step_bytes / (read_gb_s * 1e9), step_flops / (gflops * 1e9))


def update_bound(costs: ModelCosts, rows: int, new_tokens: int, prompt_tokens: float, read_gb_s: float, gflops: float) -> float:
    tokens = rows / GROUP * prompt_tokens + rows * new_tokens  # each prompt once per group, as sirl computes it
    flops = 3 * (2 * costs.body_parameters * tokens + 2 * costs.head_parameters * rows * new_tokens)
    return flops / (gflops * 1e9) + 7 * 4 * costs.parameters / (read_gb_s * 1e9)


def load(args, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if args.tiny:
        config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1)
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(2, 512, (int(n),), generator=g).tolist() for n in torch.randint(20, 40, (args.rows // GROUP,), generator=g)]
        return model.to(device), None, prompts, 0
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.random_weights:  # the model's shape from its config.json, random weights: the same work, the same speed
        from transformers import AutoConfig

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model), dtype=torch.float32)
    else:
        if not any(Path(args.model).glob("*.safetensors")):
            raise SystemExit(f"{args.model} has no weights (*.safetensors); run `make smollm2`, or pass --random-weights to time "
                             "the model's shape with random weights (config.json and the tokenizer files are enough)")
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    return model.to(device), tokenizer, gsm8k_chat_prompts(tokenizer, args.rows // GROUP), tokenizer.pad_token_id


def rollouts(args, model, tokenizer, prompts, pad_id, device) -> dict[str, float]:
    from sirl.rollout import SamplingParams, generate

    never = model.config.vocab_size + 7  # an EOS id no token has: every row runs the full length
    generator = torch.Generator(device=device).manual_seed(0)
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    ids, mask = ids.to(device), mask.to(device)
    bf16 = copy.deepcopy(model).to(torch.bfloat16).eval()  # HF generate on bf16 weights, as it is run on a GPU

    def sirl():
        generate(model, prompts, SamplingParams(args.new_tokens), eos_ids=[never], pad_id=pad_id, repeats=GROUP, generator=generator)

    def hf():
        with torch.no_grad():
            bf16.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, max_new_tokens=args.new_tokens,
                          min_new_tokens=args.new_tokens, num_return_sequences=GROUP, pad_token_id=pad_id)

    runs = {"sirl": sirl, "HF generate (bf16)": hf}
    try:
        if args.tiny or args.random_weights or device.type != "cuda":
            raise ImportError("vLLM needs a GPU and the model's weights")
        from vllm import LLM, SamplingParams as VllmParams

        llm = LLM(model=args.model, dtype="bfloat16", gpu_memory_utilization=0.5, enforce_eager=False, seed=0)
        vllm_params = VllmParams(n=GROUP, temperature=1.0, top_p=1.0, top_k=-1, max_tokens=args.new_tokens, min_tokens=args.new_tokens,
                                 ignore_eos=True)
        runs["vLLM"] = lambda: llm.generate([{"prompt_token_ids": p} for p in prompts], vllm_params, use_tqdm=False)
    except Exception as error:  # vLLM is optional: its absence is reported, never fatal
        print(f"vLLM: not measured ({type(error).__name__}: {error})")
    for fn in runs.values():
        fn()  # warm-up: kernels, caches
    seconds = {name: float("inf") for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            seconds[name] = min(seconds[name], timed(fn, device))
    del bf16
    return seconds


def grpo_step(args, model, prompts, pad_id, device) -> dict[str, float]:
    import sirl.update as update
    from sirl.batch import PolicyBatch, TokenBatch
    from sirl.config import AlgoConfig, TrainConfig
    from sirl.distributed import Distributed
    from sirl.rollout import SamplingParams, generate

    never = model.config.vocab_size + 7
    start = time.perf_counter()
    out = generate(model, prompts, SamplingParams(args.new_tokens), eos_ids=[never], pad_id=pad_id, repeats=GROUP,
                   generator=torch.Generator(device=device).manual_seed(1))
    sync(device)
    rollout_s = time.perf_counter() - start
    contexts = [prompts[int(i)] for i in out.context_index_B]
    B, width = len(contexts), max(map(len, prompts)) + out.tokens_BT.shape[1]
    ids = torch.full((B, width), pad_id)
    attention = torch.zeros(B, width, dtype=torch.long)
    mask, old = torch.zeros(B, width - 1), torch.zeros(B, width - 1)
    for row, prompt in enumerate(contexts):
        response = out.row_tokens(row)
        ids[row, width - len(prompt) - len(response):] = torch.tensor(prompt + response)
        attention[row, width - len(prompt) - len(response):] = 1
        mask[row, width - len(response) - 1:] = 1
        old[row, width - len(response) - 1:] = out.logp_BT[row, : len(response)]
    adv = (torch.arange(B) % 2 * 2 - 1).float()[:, None] * mask
    batch = PolicyBatch(TokenBatch(ids, attention, mask), old, adv, torch.ones(B))
    optimizer = update.adamw(model, lr=1e-6, weight_decay=0.0)
    start = time.perf_counter()
    update.policy_update(model, optimizer, batch, AlgoConfig(), norm_length=args.new_tokens, micro_batch_size=TrainConfig().micro_batch_size,
                         micro_batch_tokens=update.auto_micro_batch_tokens(model), grad_clip=1.0, generator=torch.Generator().manual_seed(0),
                         dist=Distributed.from_env(device))
    sync(device)
    return {"rollout_s": rollout_s, "update_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer random Llama and random prompts: checks the script, not speed")
    parser.add_argument("--random-weights", action="store_true",
                        help="--model's shape (config.json) with random weights, for a machine the 538 MB of weights cannot reach")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_speed.jsonl"))
    args = parser.parse_args()
    if args.tiny and args.rows == 256:
        args.rows, args.new_tokens = 16, 8
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu --tiny to check the script")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"

    model, tokenizer, prompts, pad_id = load(args, device)
    costs = ModelCosts.of(model.config)
    if device.type == "cuda":
        model.sirl_compute_dtype = torch.bfloat16  # model.dtype=bfloat16, the GPU default
    from sirl.rollout import resolve_rollout_dtype

    model.sirl_rollout_dtype = resolve_rollout_dtype("auto", model)
    read_gb_s, gflops = measure_device(device, 5)
    prompt_tokens = sum(map(len, prompts)) / len(prompts)
    print(f"{name}: read {read_gb_s:.0f} GB/s, bf16 {gflops / 1e3:.1f} TFLOPS; {costs.parameters / 1e6:.1f}M weights; "
          f"{args.rows} rows ({len(prompts)} prompts x {GROUP}) x {args.new_tokens} new tokens, prompts of {prompt_tokens:.0f} tokens; "
          f"sirl samples in {str(model.sirl_rollout_dtype).removeprefix('torch.')}")

    bound = rollout_bound(costs, args.rows, args.new_tokens, prompt_tokens, read_gb_s, gflops)
    seconds = rollouts(args, model, tokenizer, prompts, pad_id, device)
    tokens = args.rows * args.new_tokens
    results = []
    print("\n| engine | s | tokens/s | share of bound | sirl's speedup over it |\n|---|---|---|---|---|")
    for engine, s in seconds.items():
        r = {"label": engine, "device": name, "rows": args.rows, "new_tokens": args.new_tokens, "tiny": args.tiny,
             "random_weights": args.random_weights, "rollout_s": round(s, 3),
             "tokens_per_s": round(tokens / s, 1), "bound_s": round(bound, 4), "share_of_bound": round(bound / s, 3)}
        results.append(r)
        speedup = "" if engine == "sirl" else f"{s / seconds['sirl']:.2f}"
        print(f"| {engine} | {s:.3f} | {tokens / s:.0f} | {bound / s:.2f} | {speedup} |")

    step = grpo_step(args, model, prompts, pad_id, device)
    step_bound = bound + update_bound(costs, args.rows, args.new_tokens, prompt_tokens, read_gb_s, gflops)
    total = step["rollout_s"] + step["update_s"]
    results.append({"label": "sirl grpo step", "device": name, "rows": args.rows, "new_tokens": args.new_tokens, "tiny": args.tiny,
                    "random_weights": args.random_weights,
                    "rollout_s": round(step["rollout_s"], 3), "update_s": round(step["update_s"], 3), "step_s": round(total, 3),
                    "bound_s": round(step_bound, 4), "share_of_bound": round(step_bound / total, 3),
                    "read_gb_s": round(read_gb_s, 1), "bf16_gflops": round(gflops, 1)})
    print(f"\ngrpo step: rollout {step['rollout_s']:.2f} s + update {step['update_s']:.2f} s = {total:.2f} s; "
          f"bound {step_bound:.2f} s (share {step_bound / total:.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
