"""The HTML run report: ``write_report(run_dir)`` turns a run folder's logs into one self-contained
report.html (curves, the final evaluation and a step-by-step trajectory viewer). It reads the files a run
writes and imports nothing from training, so it works on any run folder, finished or not, copied off a
cluster or still running.

    sirl report runs/my-run            # or: from sirl.report import write_report
"""

from __future__ import annotations

import sys
from pathlib import Path

from sirl.report.page import advantage_color, render
from sirl.report.runfiles import ReportError, Run, Sample, load_run

__all__ = ["ReportError", "Run", "Sample", "advantage_color", "load_run", "render", "write_report", "write_report_or_warn"]


def write_report(run_dir: Path | str, out: Path | str | None = None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``) and return its path.
    Raises :class:`ReportError` when the folder is not a run folder or a log line is malformed."""
    run = load_run(Path(run_dir))
    path = Path(out) if out is not None else run.path / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(run), encoding="utf-8")
    tmp.replace(path)  # a reader (a browser refreshing it) never sees half a file
    return path


def write_report_or_warn(run_dir: Path | str) -> Path | None:
    """``write_report`` at the end of a training run, where everything else is saved already: a report
    that fails (a bug here, a full disk) must not turn a finished run into a failed one, so any error
    becomes a warning that says how to retry."""
    try:
        return write_report(run_dir)
    except Exception as error:  # noqa: BLE001 - deliberate: reported, never silent, and the run is kept
        print(
            f"warning: could not write the run report {Path(run_dir) / 'report.html'} ({type(error).__name__}: {error}); "
            f"the run is saved; retry with `sirl report {run_dir}`",
            file=sys.stderr,
        )
        return None
