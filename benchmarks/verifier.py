"""Per-call overhead of verifier isolation: in-process ``verify`` against the worker pool, for math
(GSM8K-style answers, math-verify) and code (programs in the bubblewrap sandbox).

For each task and mode it times single calls (one completion per ``score`` call: the round trip a lone
verification pays) and reports p50, p99 and the mean in milliseconds, then the throughput of one batch
scored at once, as the trainer does. Inputs are ordinary: the dataset's own worked solutions and
reference programs, half of them made wrong. The target is a p99 under 100 ms per math call in the pool.

    python benchmarks/verifier.py
    python benchmarks/verifier.py --calls 1000 --workers 4

``--soak N`` instead sends N mixed completions (math answers and programs, ordinary and hostile: hangs,
floods, crashes, memory bombs, helpers that start their own session) through the pools in batches, as
the trainer does, and prints the worker, file-descriptor, temp-file and process counts before, during
and after, with what each kind of completion scored:

    python benchmarks/verifier.py --soak 1000
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from sirl.tasks import load_task
from sirl.verifier import Isolation, TaskSpec, Verifier, make_verifier
from sirl.verifier.pool import live_descendants
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


# --- the soak: hostile inputs in bulk, and what they leave behind ------------------------------------
HELPER = "1009.{:03d}"
"""``sleep`` durations of helpers that soak completions start in a session of their own (found by name)."""

MATH_HOSTILE = {
    "power tower": "\\boxed{5^{5^{5^{5^5}}}}",
    "100,000 digits": "A: " + "7" * 100_000,
    "1 MB string": "x" * 1_000_000 + "\nA: 18",
    "nested braces": "\\boxed{" + "{" * 10_000 + "18" + "}" * 10_000 + "}",
    "NUL bytes": "so\x00 the answer\x00\nA: 18\x00",
    "lone surrogates": "\ud800\udfff\udc00 A: \ud83d",
}
CODE_HOSTILE = {
    "infinite loop": "while True:\n    pass\n",
    "sleep": "import time\ntime.sleep(100)\n",
    "exit": "import os\nos._exit(0)\n",
    "exception": "raise RuntimeError('no')\n",
    "memory bomb": "x = bytearray(10**11)\n",
    "output flood": "while True:\n    print('x' * 10000)\n",
    "file flood": "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * 10**6)\n",
    "eq always true": "class A:\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return A()\n",
    "forged result": "print('5')\nprint('0')\ndef add(a, b):\n    return None\n",
    "helper in own session": "import subprocess\nsubprocess.Popen(['sleep', '{helper}'], start_new_session=True)\n"
                             "def add(a, b):\n    return a + b\n",
}


def snapshot(pools, tmp: Path) -> dict[str, int]:
    helpers = 0
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        helpers += len(argv) > 1 and argv[0] == b"sleep" and argv[1].startswith(b"1009.")
    return {
        "workers": sum(len(pool.pool.pids()) for pool in pools if pool.pool is not None),
        "fds": len(os.listdir("/proc/self/fd")),
        "temp entries": len(list(tmp.iterdir())),
        "processes below": len(live_descendants(os.getpid())),
        "escaped helpers": helpers,
    }


def soak(n: int, workers: int, seed: int) -> None:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="sirl-soak-"))
    os.environ["TMPDIR"] = str(tmp)  # the workers' and programs' temp files land here, to be counted
    tempfile.tempdir = None
    math_task = load_task("gsm8k")
    unsafe = bwrap_path() is None  # no sandbox here: programs still run, under limits and the pool's kills
    code_args = {"timeout_s": 1.0, **({"unsafe_exec": True} if unsafe else {})}
    code_task = load_task("code", **code_args)
    gold = math_task.problem(0)  # answer 18
    add = code_task.problem(0)  # def add(a, b)
    fence = lambda program: f"```python\n{program}```"
    kinds = []  # (kind, task, problem, completion, allowed scores)
    for i in range(n):
        if i % 2 == 0:  # math
            if rng.random() < 0.2:
                name = rng.choice(list(MATH_HOSTILE))
                kinds.append((f"math: {name}", "math", gold, MATH_HOSTILE[name], (0.0, 1.0)))
            else:
                right = rng.random() < 0.5
                kinds.append(("math: ordinary", "math", gold, "so A: 18" if right else "so A: 19", (float(right),)))
        else:  # code
            if rng.random() < 0.25:
                name = rng.choice(list(CODE_HOSTILE))
                program = CODE_HOSTILE[name].format(helper=HELPER.format(i % 1000))
                allowed = (0.0, 1.0) if name == "helper in own session" else (0.0,)
                kinds.append((f"code: {name}", "code", add, fence(program), allowed))
            else:
                right = rng.random() < 0.5
                program = "def add(a, b):\n    return a + b\n" if right else "def add(a, b):\n    return a - b\n"
                kinds.append(("code: ordinary", "code", add, fence(program), (float(right),)))
    before = snapshot([], tmp)
    math_pool = make_verifier(math_task, TaskSpec("gsm8k"), isolation="workers", workers=workers, timeout_s=3.0, memory_mb=1024)
    code_pool = make_verifier(code_task, TaskSpec("code", code_args), isolation="workers", workers=workers, timeout_s=5.0, memory_mb=1024)
    pools = [math_pool, code_pool]
    started = snapshot(pools, tmp)
    scored: dict[str, list[float]] = defaultdict(list)
    wrong: Counter = Counter()
    start = time.perf_counter()
    for lo in range(0, n, 64):  # batches, as the trainer sends them
        batch = kinds[lo : lo + 64]
        for which, pool in (("math", math_pool), ("code", code_pool)):
            rows = [k for k in batch if k[1] == which]
            if not rows:
                continue
            for (kind, _, _, _, allowed), score in zip(rows, pool.score([r[2] for r in rows], [r[3] for r in rows])):
                scored[kind].append(score)
                wrong[kind] += score not in allowed
    seconds = time.perf_counter() - start
    during = snapshot(pools, tmp)
    counts = {name: pool.counts for name, pool in (("math", math_pool), ("code", code_pool))}
    for pool in pools:
        pool.close()
    time.sleep(0.2)  # SIGKILLed processes take a moment to disappear
    after = snapshot([], tmp)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {n} completions in {seconds:.1f} s, "
          f"{workers} workers per pool; programs {'WITHOUT a sandbox (no bubblewrap here): limits and kills only' if unsafe else 'in the bubblewrap sandbox'}")
    print(f"\n{'kind':<30}{'n':>6}{'mean score':>12}{'unexpected':>12}")
    for kind in sorted(scored):
        print(f"{kind:<30}{len(scored[kind]):>6}{statistics.fmean(scored[kind]):>12.2f}{wrong[kind]:>12}")
    for name, c in counts.items():
        print(f"{name} pool: {c.calls} calls, {c.timeouts} timeouts, {c.errors} errors")
    print(f"\n{'':<24}{'workers':>9}{'fds':>6}{'temp entries':>14}{'processes below':>17}{'escaped helpers':>17}")
    for label, snap in (("before", before), ("pools started", started), ("after the soak", during), ("after close", after)):
        print(f"{label:<24}{snap['workers']:>9}{snap['fds']:>6}{snap['temp entries']:>14}{snap['processes below']:>17}{snap['escaped helpers']:>17}")
    leaked = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    print("\nleft behind: " + (", ".join(f"{k} +{v}" for k, v in leaked.items()) if leaked else "nothing"))
    os.rmdir(tmp) if not any(tmp.iterdir()) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="single calls timed per row (math)")
    parser.add_argument("--code-calls", type=int, default=60, help="single calls timed per row (code)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--soak", type=int, metavar="N", help="instead: N mixed hostile and ordinary completions, and what they leave behind")
    args = parser.parse_args()
    if args.soak:
        return soak(args.soak, args.workers, args.seed)
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
