"""Reward functions in TRL's signature, ``f(completions, **columns) -> list[float]``, for the rows of
data/records/arith7.jsonl (arith mod 7: a chain of steps ``a op b = r;`` and a final answer ``#r``).

sirl calls each one as TRL's GRPOTrainer does: the completions, and every column of the row as a list
(``answer``, ``solution``, ``difficulty``). Used by examples/train_records.py and the guide
docs/guides/your_model_data_reward.md.
"""

import re

FINAL = re.compile(r"#(\d+)\s*$")


def correct(completions, answer, **kwargs):
    """1 when the completion ends in the final answer ``#r`` with r the row's answer, else 0."""
    found = [FINAL.search(c) for c in completions]
    return [1.0 if m is not None and m.group(1) == a else 0.0 for m, a in zip(found, answer)]


def well_formed(completions, **kwargs):
    """1 when the completion ends in a final answer ``#r`` at all (a format reward), else 0."""
    return [1.0 if FINAL.search(c) else 0.0 for c in completions]
