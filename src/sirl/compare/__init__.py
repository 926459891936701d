"""``sirl compare``: methods side by side, from the same starting policy, at an equal budget of generated tokens.

Every (method, seed) pair is one ``sirl train`` run of the same resolved config (``base.yaml`` in the
comparison folder), differing only in ``algo.name`` and ``seed``, stopped once it has generated
``budget_tokens`` tokens with every kind counted: policy samples, probes and self-verification. A run
stops at the end of the step that crosses the budget, so no run exceeds it by more than one step's tokens.
Held-out accuracy is measured on one fixed problem set at every multiple of ``eval_every_tokens`` (so every
method's curve lies on the same token grid) and, at the end, on ``final_problems`` problems. The starting
policy is evaluated once on that final set, by difficulty, for the table's first row. Curves come from the
periodic evaluations and the tables from the final ones; every plot says which set it shows. A run's final
figure is the mean of its last ``final_evaluations`` evaluations, problem by problem (then all of them are
on the final set). With ``learning_rates``, each method first runs once per rate on ``lr_seed`` and the
table's seeds use its best.

The comparison folder::

    base.yaml             the training config every run shares
    compare.json          what was asked (methods, seeds, budget, ...); a rerun must ask the same
    commands.jsonl        every `sirl compare` call on the folder: its command line, time and sirl commit
    runs/<method>/seed<k> the `sirl train` run folders
    runs/<method>/lr<r>/seed<lr_seed>  the learning-rate runs
    logs/<method>-seed<k>.log
    logs/load.jsonl       the machine's load average before, during and after the runs (beside wall-clock)
    start/eval.json       the starting policy on the final evaluation set
    results.json results.md accuracy_vs_tokens.png accuracy_vs_time.png probes_per_failure.png
    accuracy_by_difficulty.png

A killed comparison continues where it stopped when rerun with the same folder: finished runs (eval.json)
are kept, interrupted ones resume from their latest checkpoint (which gives the same numbers as a run never
stopped, see sirl.checkpoint), and runs never started start. A finished run keeps only its final
checkpoint. The summary is computed from the run folders
only, so rerunning on a finished folder just rewrites it. Ctrl-C or SIGTERM stop a comparison cleanly: each
run in progress stops after its step with a checkpoint (sirl.interrupt), and rerunning continues it.
One process at a time writes a comparison folder (sirl.runlock). A part of the report that fails is named
in results.md with its error, and the rest is written all the same.

    sirl compare --task arith --methods grpo,si --seeds 3 --budget-tokens 500000 --out runs/cmp
    sirl compare --plan benchmarks/compare_cpu.yaml --task arith --out runs/compare-arith

The package, in the order data flows: :mod:`~sirl.compare.plan` (what runs: the plan, its runs and their
folders, plan files), :mod:`~sirl.compare.runner` (the runs as processes, load samples, the folder's lock,
stops), :mod:`~sirl.compare.stats` (means over seeds, paired bootstrap differences, tokens to reach),
:mod:`~sirl.compare.summary` (the folder read into the typed records of :mod:`~sirl.compare.records`, whose
JSON is results.json) and :mod:`~sirl.compare.render` (results.md and the plots).

Names are imported from their module when first used, so that reading a plan (sirl.cli builds the flags of
``sirl compare`` from it) does not import the summary's and the runner's dependencies.
"""

from __future__ import annotations

from sirl.importing import lazy_exports

_NAMES = {
    "plan": ("HARD_LEVEL", "REFERENCE", "ComparePlan", "RunSpec", "load_plan", "lr_runs", "read_plan_file", "read_plan_json", "run_dir"),
    "runner": ("load_sample", "run_comparison", "tokens_done"),
    "stats": ("MeanStd", "PairedDifference", "Reach", "RunCurve", "first_crossing", "paired_difference", "tokens_to_reach"),
    "records": ("BareReport", "ComparisonSummary", "FinalFigure", "MethodSummary", "read_results"),
    "summary": ("band_differences", "chosen_learning_rates", "figure_by_difficulty", "final_figure", "method_settings", "summarize",
                "summarize_or_report"),
    "render": ("plot_comparison", "results_markdown", "write_outputs"),
}
_EXPORTS = {name: f"sirl.compare.{module}" for module, names in _NAMES.items() for name in names}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports('sirl.compare', globals(), _EXPORTS)
