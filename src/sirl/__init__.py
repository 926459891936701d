"""sirl: RL for reasoning language models that turns outcome rewards into step-level credit.

The command line is ``sirl`` (sirl.cli); from Python, ``import sirl`` gives what a script needs, the same
objects the commands use (docs/guides/your_model_data_reward.md has a worked example)::

    import sirl

    config = sirl.make_config("arith_prime", algo={"name": "grpo"}, train={"steps": 20})
    result = sirl.run_train(config, "runs/mine")          # sirl train; the final EvalResult
    sirl.run_eval(sirl.make_config(config, model={"path": "runs/mine/checkpoints/final"}))   # sirl eval
    sirl.run_compare(config, sirl.ComparePlan(["grpo", "si"], seeds=2, budget_tokens=200_000), "runs/cmp")

Names are imported when first used, so ``import sirl`` stays cheap (the verifier's worker processes import
sirl's modules too).
"""

from __future__ import annotations

from sirl.importing import lazy_exports

_EXPORTS = {
    # building a config
    "make_config": "sirl.api", "load_config": "sirl.config", "ExperimentConfig": "sirl.config", "ConfigError": "sirl.config",
    # training, evaluating, comparing (sirl train | sft | eval | compare | report)
    "run_train": "sirl.api", "run_sft": "sirl.api", "run_eval": "sirl.api", "run_compare": "sirl.api",
    "ComparePlan": "sirl.compare", "EvalResult": "sirl.evaluate", "write_report": "sirl.report",
    # tasks, rewards, models, methods
    "Task": "sirl.tasks.base", "Problem": "sirl.types", "TASKS": "sirl.tasks", "load_task": "sirl.tasks",
    "RecordsTask": "sirl.tasks.records", "load_model": "sirl.model", "METHODS": "sirl.methods",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports('sirl', globals(), _EXPORTS)
