"""sirl against TRL's GRPOTrainer on the same model, batch, lengths and learning rate, in one run.

    python benchmarks/trl_side_by_side.py --rows 16 --new-tokens 128 \
        --sirl-python .venv/bin/python --trl-python .venv-trl/bin/python

Each side runs in its own process (TRL in its own environment, installed with ``-c constraints.txt`` so it
uses the same torch): one GRPO step of ``--rows`` completions (``--rows / 8`` gsm8k prompts x 8 samples
for TRL, which needs groups; ``--rows`` prompts x 1 for sirl, whose step cost does not depend on the
grouping) of exactly ``--new-tokens`` tokens each (TRL: ``min_new_tokens``; sirl: no EOS), learning rate
1e-6, float32, ``--threads`` CPU threads, chat prompts. It reports the seconds of the step (sampling and
update; TRL's reward and logging overhead is included, model loading is not) and the peak RSS of each
process, and appends both to ``--out``. sirl's side is benchmarks/grpo_step_memory.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import add_step_arguments, peak_rss_gb


def trl_step(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with open(Path(__file__).resolve().parents[1] / "data/gsm8k/test.jsonl") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line)["question"])
    group = 8
    prompts = rows[: args.rows // group]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in prompts])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = GRPOConfig(
        output_dir=str(Path(args.out).parent / "trl-tmp"), per_device_train_batch_size=args.rows, num_generations=group,
        max_completion_length=args.new_tokens, generation_kwargs={"min_new_tokens": args.new_tokens}, learning_rate=1e-6,
        max_steps=1, use_cpu=True, bf16=False, logging_steps=1, report_to=[], save_strategy="no", temperature=1.0, beta=0.0,
        dataloader_num_workers=0, seed=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [float(i % 2) for i in range(len(completions))],
                          args=config, train_dataset=dataset, processing_class=tokenizer)
    loaded = peak_rss_gb()
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"label": "TRL GRPOTrainer", "rows": args.rows, "new_tokens": args.new_tokens, "threads": args.threads,
            "step_s": round(seconds, 1), "peak_rss_gb_loaded": round(loaded, 2),
            "peak_rss_gb": round(peak_rss_gb(), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser, rows=16, new_tokens=128)
    parser.add_argument("--out", default="benchmarks/results/trl_side_by_side.jsonl")
    parser.add_argument("--sirl-python", default=".venv/bin/python")
    parser.add_argument("--trl-python", default=".venv-trl/bin/python")
    parser.add_argument("--trl-side", action="store_true", help=argparse.SUPPRESS)  # the TRL process itself
    args = parser.parse_args()
    if args.trl_side:
        print("RESULT " + json.dumps(trl_step(args)))
        return
    common = ["--model", args.model, "--rows", str(args.rows), "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
    here = Path(__file__).resolve().parent
    results = []
    sirl_out = Path(args.out).with_suffix(".sirl.jsonl")
    subprocess.run([args.sirl_python, str(here / "grpo_step_memory.py"), *common, "--label", "sirl", "--out", str(sirl_out)], check=True)
    results.append(json.loads(sirl_out.read_text().splitlines()[-1]))
    trl = subprocess.run([args.trl_python, str(Path(__file__).resolve()), *common, "--out", args.out, "--trl-side"],
                         check=True, capture_output=True, text=True)
    results.append(json.loads(next(line for line in trl.stdout.splitlines() if line.startswith("RESULT "))[7:]))
    with open(args.out, "a") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    print("| trainer | rows x new tokens | threads | step s | peak RSS GB |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['label']} | {r['rows']} x {r['new_tokens']} | {r['threads']} | {r['step_s']} | {r['peak_rss_gb']} |")


if __name__ == "__main__":
    main()
