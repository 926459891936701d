"""sirl against TRL's GRPOTrainer on the same model, prompts, grouping, lengths and learning rate, one step each.

    python benchmarks/trl_side_by_side.py                     # 8 x 128 and 64 x 256, 1 and 2 threads
    python benchmarks/trl_side_by_side.py --sizes 8x128 --threads 1 --trl-dtypes float32

For every size (rows x new tokens) and thread count, each trainer takes one GRPO step in a process of its
own (so each peak RSS is its own): ``rows / 8`` gsm8k training prompts in the chat format x 8 samples, each
of exactly ``new tokens`` tokens (TRL: ``min_new_tokens``; sirl: no EOS), learning rate 1e-6, no KL term.
sirl's side is benchmarks/grpo_step_memory.py, set up as `sirl train` is (float32 master weights, bf16
autocast, rollout.dtype=auto). TRL runs as shipped (its GRPOConfig defaults: gradient checkpointing, the
non-fused AdamW), once in float32 and once with ``bf16=True`` (autocast on CPU) unless ``--trl-dtypes``
says otherwise. The seconds are the step's (sampling and update; TRL's reward and logging overhead
included, model loading not). Every result is appended to ``--out`` as one JSON line with ``label``,
``rows``, ``new_tokens``, ``threads`` and ``step_s``, and the table is printed with sirl's time as a share
of each TRL run's.

On the 2-core CPU this was prepared on, the default plan takes about 40 minutes (most of it TRL at
64 x 256); run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import add_step_arguments, peak_rss_gb

HERE = Path(__file__).resolve().parent


def trl_step(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    sys.path.insert(0, str(HERE.parent / "src"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    # The same prompts as sirl's side: decoded back to text, which the chat template then wraps again.
    from sirl.tasks import load_task

    task = load_task("gsm8k")
    questions = [task.problem(i).prompt.strip() for i in task.indices("train")[: args.rows // args.group]]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in questions])
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = GRPOConfig(
        output_dir=str(Path(args.out).parent / "trl-tmp"), per_device_train_batch_size=args.rows, num_generations=args.group,
        max_completion_length=args.new_tokens, generation_kwargs={"min_new_tokens": args.new_tokens}, learning_rate=1e-6,
        max_steps=1, use_cpu=True, bf16=args.trl_dtype == "bfloat16", logging_steps=1, report_to=[], save_strategy="no", temperature=1.0,
        beta=0.0, dataloader_num_workers=0, seed=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [float(i % 2) for i in range(len(completions))],
                          args=config, train_dataset=dataset, processing_class=tokenizer)
    loaded = peak_rss_gb()
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"label": f"TRL GRPOTrainer ({args.trl_dtype})", "rows": args.rows, "new_tokens": args.new_tokens, "group": args.group,
            "threads": args.threads, "dtype": args.trl_dtype, "step_s": round(seconds, 2), "peak_rss_gb_loaded": round(loaded, 2),
            "peak_rss_gb": round(peak_rss_gb(), 2)}


def run_setting(args, rows: int, new_tokens: int, threads: int) -> list[dict]:
    common = ["--model", args.model, "--rows", str(rows), "--new-tokens", str(new_tokens), "--threads", str(threads), "--group", str(args.group)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    results = []
    sirl_out = Path(args.out).with_suffix(".sirl.jsonl")
    print(f"[{rows} x {new_tokens}, {threads} thread(s)] sirl", flush=True)
    subprocess.run([args.sirl_python, str(HERE / "grpo_step_memory.py"), *common, "--label", "sirl", "--out", str(sirl_out)],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    results.append(json.loads(sirl_out.read_text().splitlines()[-1]))
    for dtype in args.trl_dtypes:
        print(f"[{rows} x {new_tokens}, {threads} thread(s)] TRL {dtype}", flush=True)
        trl = subprocess.run([args.trl_python, str(Path(__file__).resolve()), *common, "--out", args.out, "--trl-side", "--trl-dtype", dtype],
                             check=True, capture_output=True, text=True, env=env)
        results.append(json.loads(next(line for line in trl.stdout.splitlines() if line.startswith("RESULT "))[7:]))
    with open(args.out, "a") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    return results


def print_table(results: list[dict]) -> None:
    print("| trainer | rows x new tokens | threads | step s | rollout s | update s | peak RSS GB | sirl's share of its time |")
    print("|---|---|---|---|---|---|---|---|")
    sirl = {(r["rows"], r["new_tokens"], r["threads"]): r["step_s"] for r in results if r["label"] == "sirl"}
    for r in results:
        key = (r["rows"], r["new_tokens"], r["threads"])
        share = "" if r["label"] == "sirl" or key not in sirl else f"{sirl[key] / r['step_s']:.2f}"
        print(f"| {r['label']} | {r['rows']} x {r['new_tokens']} | {r['threads']} | {r['step_s']} | {r.get('rollout_s', '')} | "
              f"{r.get('update_s', '')} | {r['peak_rss_gb']} | {share} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser, rows=8, new_tokens=128)
    parser.add_argument("--sizes", nargs="+", default=["8x128", "64x256"], help="rows x new tokens of each setting (ROWSxTOKENS)")
    parser.add_argument("--threads-list", dest="threads_list", nargs="+", type=int, default=[1, 2], metavar="THREADS",
                        help="thread counts to run every size at (--threads is used by the side processes)")
    parser.add_argument("--trl-dtypes", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"])
    parser.add_argument("--out", default="benchmarks/results/trl_side_by_side.jsonl")
    parser.add_argument("--sirl-python", default=sys.executable)
    parser.add_argument("--trl-python", default=sys.executable, help="a Python with TRL 1.16 (sirl's .venv has it)")
    parser.add_argument("--trl-side", action="store_true", help=argparse.SUPPRESS)  # the TRL process itself
    parser.add_argument("--trl-dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_side:
        print("RESULT " + json.dumps(trl_step(args)))
        return
    results = []
    for size in args.sizes:
        rows, new_tokens = (int(x) for x in size.lower().split("x"))
        if rows % args.group:
            raise SystemExit(f"--sizes {size}: {rows} rows are not a multiple of the group of {args.group}")
        for threads in args.threads_list:
            results += run_setting(args, rows, new_tokens, threads)
    print_table(results)


if __name__ == "__main__":
    main()
