"""Per-call overhead of verifier isolation: in-process ``verify`` against the worker pool, for math
(GSM8K-style answers, math-verify) and code (programs in the bubblewrap sandbox).

For each task and mode it times single calls (one completion per ``score`` call: the round trip a lone
verification pays) and reports p50, p99 and the mean in milliseconds, then the throughput of one batch
scored at once, as the trainer does. Inputs are ordinary: the dataset's own worked solutions and
reference programs, half of them made wrong. The target is a p99 under 100 ms per math call in the pool.

    python benchmarks/verifier.py
    python benchmarks/verifier.py --calls 1000 --workers 4
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

from sirl.tasks import load_task
from sirl.verifier import Isolation, TaskSpec, Verifier, make_verifier
from sirl.verifier.sandbox import bwrap_path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def math_inputs(n: int, rng: random.Random):
    task = load_task("gsm8k")
    rows = [task.problem(i) for i in rng.sample(range(len(task)), n)]
    texts = [task.reference_solution(p) if i % 2 else task.reference_solution(p).rsplit("####", 1)[0] + "#### 7.5" for i, p in enumerate(rows)]
    return task, rows, texts


def code_inputs(n: int, rng: random.Random):
    task = load_task("code")
    rows = [task.problem(rng.randrange(len(task))) for _ in range(n)]
    texts = [task.reference_solution(p) if i % 2 else "def nothing():\n    return None\n" for i, p in enumerate(rows)]
    return task, rows, texts


def measure(verifier: Verifier, problems, texts, repeats: int) -> tuple[list[float], float]:
    """Milliseconds per single-completion call, and completions per second of one batch call."""
    verifier.score(problems[:2], texts[:2])  # warm caches and imports
    single = []
    for i in range(repeats):
        j = i % len(texts)
        start = time.perf_counter()
        verifier.score([problems[j]], [texts[j]])
        single.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    verifier.score(problems, texts)
    return single, len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="single calls timed per row (math)")
    parser.add_argument("--code-calls", type=int, default=60, help="single calls timed per row (code)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(f"{platform.processor() or platform.machine()}, {args.workers} workers, "
          f"bubblewrap {'at ' + bwrap_path() if bwrap_path() else 'missing'}")
    rows = []
    workloads = [("math (gsm8k)", "gsm8k", math_inputs(200, rng), args.calls)]
    if bwrap_path():
        workloads.append(("code (sandbox)", "code", code_inputs(40, rng), args.code_calls))
    for label, name, (task, problems, texts), repeats in workloads:
        in_process = Verifier(task, Isolation("in_process", programs=task.program_isolation()))
        with make_verifier(task, TaskSpec(name), isolation="workers", workers=args.workers, timeout_s=10.0) as pool:
            for mode, verifier in (("in process", in_process), ("pool", pool)):
                single, throughput = measure(verifier, problems, texts, repeats)
                rows.append((label, mode, statistics.median(single), percentile(single, 99), statistics.fmean(single), throughput, len(texts)))
            assert pool.counts.timeouts == pool.counts.errors == 0, pool.counts
    print(f"\n{'task':<16}{'mode':<12}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'batch/s':>10}  batch")
    for label, mode, p50, p99, mean, throughput, n in rows:
        print(f"{label:<16}{mode:<12}{p50:>9.2f}{p99:>9.2f}{mean:>9.2f}{throughput:>10.1f}  {n}")


if __name__ == "__main__":
    main()
