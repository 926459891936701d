"""Train the shipped tiny policy on a records file with TRL-style reward functions, from Python.

    python examples/train_records.py --out runs/records-demo
    python examples/train_records.py --out runs/x train.steps=2 eval.n_problems=8   # any config override

The rows are data/records/arith7.jsonl (prompt, answer, solution, difficulty); the reward is ``correct``
of examples/rewards.py, a TRL reward function (1 for the right final answer, else 0). The method is si with
the free divergence localizer: a failure's tokens up to where it left every success of its group get no
penalty, its error step gets the value it lost. Steps end after each ";" (``step_splitter="regex:;"``).
"""

import argparse
from pathlib import Path

import sirl
from sirl.config import parse_overrides

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/records-demo", help="the run folder")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=2")
    args = parser.parse_args()

    config = sirl.make_config(
        "arith_prime",  # the tiny policy checkpoints/arith7-tiny and its rollout settings
        task={"name": "records", "args": {
            "path": "data/records/arith7.jsonl",
            "reward": f"{HERE / 'rewards.py'}:correct",
            "step_splitter": "regex:;",  # a step ends after each ";", as arith's steps do
            "difficulty": "difficulty",
        }},
        algo={"name": "si"}, method={"localizer": "divergence"},
        train={"steps": 10, "eval_every": 5}, eval={"n_problems": 100},
    )
    config = sirl.make_config(config, **parse_overrides(args.overrides))
    result = sirl.run_train(config, args.out, allow_task_mismatch=True)  # the policy was trained on task arith
    print(f"final held-out accuracy {result.accuracy:.1%} (95% CI {result.ci95[0]:.1%}-{result.ci95[1]:.1%}, n={result.n})")


if __name__ == "__main__":
    main()
