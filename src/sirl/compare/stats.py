"""The statistics of a comparison: means over seeds, paired bootstrap differences, and the tokens a method
needs to reach the reference's accuracy. Pure functions of numbers (no folders, no plan).

Both intervals are percentile bootstraps (Efron & Tibshirani 1993, ch. 13) that resample what two methods
share in pairs: the seeds (a seed fixes a run's prompts and sampling stream, and every method starts from
the same policy) and, for accuracy differences, the held-out problems (the same for every run).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MeanStd:
    """A figure over seeds: its finite ``values``, their mean and sample standard deviation. No value: mean
    and std None; one value has no spread, so its std is None (shown as nothing), never a zero-width bar."""

    mean: float | None
    std: float | None
    values: list[float]

    @classmethod
    def of(cls, values: Sequence[float | None]) -> MeanStd:
        finite = [v for v in values if v is not None and math.isfinite(v)]
        if not finite:
            return cls(None, None, [])
        return cls(statistics.mean(finite), statistics.stdev(finite) if len(finite) > 1 else None, finite)


def on_grid(xs: Sequence[float], ys: Sequence[float], grid: Sequence[float]) -> list[float]:
    """Piecewise-linear ``ys(xs)`` at ``grid``, held flat past the ends (xs ascending): numpy.interp."""
    return np.interp(np.asarray(grid, dtype=np.float64), np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)).tolist()


@dataclass(frozen=True)
class PairedDifference:
    """Mean accuracy of method A minus method B, with a 95% bootstrap interval, over the ``seeds`` both ran
    and ``problems`` held-out problems."""

    mean: float
    ci95: list[float]
    """[low, high]."""
    seeds: list[int]
    problems: int

    @property
    def no_difference(self) -> bool:
        """The interval holds 0."""
        return not (self.ci95[0] > 0 or self.ci95[1] < 0)


def paired_difference(a: dict[int, list[float]], b: dict[int, list[float]], n_boot: int = 4000, seed: int = 0) -> PairedDifference | None:
    """Mean accuracy of method A minus method B with a 95% bootstrap interval that resamples both sources of
    variation, pairing what the methods share: the seeds both have (a seed fixes a run's prompts and
    sampling stream; both methods start from the same policy), and the held-out problems (the same for
    every run). ``a[seed]`` is one run's reward per final held-out problem. None without a common seed."""
    seeds = sorted(set(a) & set(b))
    lengths = {len(a[s]) for s in seeds} | {len(b[s]) for s in seeds}
    if not seeds or len(lengths) != 1 or lengths == {0}:  # no common seed, or runs without per-problem rewards
        return None
    diff_SP = np.array([a[s] for s in seeds], dtype=np.float64) - np.array([b[s] for s in seeds], dtype=np.float64)
    rng = np.random.default_rng(seed)
    S, P = diff_SP.shape
    draws = np.empty(n_boot)
    for i in range(n_boot):  # seeds and problems drawn with replacement, together
        draws[i] = diff_SP[rng.integers(0, S, S)][:, rng.integers(0, P, P)].mean()
    low, high = np.quantile(draws, [0.025, 0.975])
    return PairedDifference(float(diff_SP.mean()), [float(low), float(high)], seeds, P)


@dataclass(frozen=True)
class RunCurve:
    """One finished run, as the summary uses it: accuracy and trained tokens on the generated-token grid,
    its final figure and the per-problem rewards behind it."""

    accuracy: list[float]
    trained_tokens: list[float] | None
    final_accuracy: float
    rewards: list[float]


def first_crossing(grid: Sequence[float], curve: Sequence[float], target: float) -> float | None:
    """The first x where the piecewise-linear ``curve(grid)`` reaches ``target``; None if it never does."""
    reached = np.flatnonzero(np.asarray(curve, dtype=np.float64) >= target - 1e-12)
    if not reached.size:
        return None
    i = int(reached[0])
    if i == 0:
        return float(grid[0])
    before, value = curve[i - 1], curve[i]  # before is below the target, so value > before
    return grid[i - 1] + (target - before) / (value - before) * (grid[i] - grid[i - 1])


def _reach(runs: list[RunCurve], target: float, grid: list[float]) -> tuple[float | None, float | None]:
    """Generated and trained tokens at which the mean curve of ``runs`` first reaches ``target``."""
    curve = np.mean([r.accuracy for r in runs], axis=0).tolist()
    generated = first_crossing(grid, curve, target)
    if generated is None or any(r.trained_tokens is None for r in runs):
        return generated, None
    trained = np.mean([r.trained_tokens for r in runs], axis=0).tolist()
    return generated, on_grid(grid, trained, [generated])[0]


@dataclass(frozen=True)
class Reach:
    """The tokens a method needs to reach ``target`` (the reference's final accuracy) as ratios to the tokens
    the reference needs, on both budget axes, with 95% intervals over the ``seeds`` both ran. A ratio or an
    interval end of None: not reached within the budget (an interval None: the reference itself did not
    cross in most resamples)."""

    target: float
    generated_tokens: float | None
    generated_ratio: float | None
    generated_ratio_ci95: list[float | None] | None
    trained_ratio: float | None
    trained_ratio_ci95: list[float | None] | None
    seeds: list[int]


def tokens_to_reach(method: dict[int, RunCurve], reference: dict[int, RunCurve], grid: list[float],
                    n_boot: int = 2000, seed: int = 0) -> Reach | None:
    """The tokens a method needs to reach the reference's final accuracy (the mean of its runs' final
    figures), as ratios to the tokens the reference itself needs, on both budget axes (generated and
    trained tokens), with 95% bootstrap intervals that resample the seeds both ran, paired. Each estimate
    reads where the mean accuracy curve first crosses the target; a resample in which the method never
    gets there within the budget counts as an infinite ratio ("not reached"), so an interval can be open
    above. None without a common seed."""
    seeds = sorted(set(method) & set(reference))
    if not seeds:
        return None

    def estimate(chosen: list[int]) -> tuple[float | None, float | None, float | None]:
        target = statistics.fmean(reference[s].final_accuracy for s in chosen)
        mine = _reach([method[s] for s in chosen], target, grid)
        theirs = _reach([reference[s] for s in chosen], target, grid)
        ratios = [None if r is None or r <= 0 else (math.inf if m is None else m / r) for m, r in zip(mine, theirs)]
        return mine[0], ratios[0], ratios[1]

    generated, generated_ratio, trained_ratio = estimate(seeds)
    rng = np.random.default_rng(seed)
    draws = [estimate([seeds[i] for i in rng.integers(0, len(seeds), len(seeds))])[1:] for _ in range(n_boot)]
    generated_ci, trained_ci = (_percentile_interval([d[axis] for d in draws], n_boot) for axis in (0, 1))
    return Reach(
        target=statistics.fmean(reference[s].final_accuracy for s in seeds),
        generated_tokens=generated,
        generated_ratio=_finite(generated_ratio),
        generated_ratio_ci95=generated_ci and [_finite(v) for v in generated_ci],
        trained_ratio=_finite(trained_ratio),
        trained_ratio_ci95=trained_ci and [_finite(v) for v in trained_ci],
        seeds=seeds,
    )


def _percentile_interval(values: list[float | None], n_boot: int) -> list[float] | None:
    """The 2.5th and 97.5th percentiles (the lower neighbours) of the resamples that have a ratio; None when
    fewer than half have one (the reference itself did not cross in most resamples)."""
    values = [v for v in values if v is not None]
    if len(values) < n_boot // 2:
        return None
    return [float(v) for v in np.quantile(np.asarray(values, dtype=np.float64), [0.025, 0.975], method="lower")]


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: "not reached" is None."""
    return None if value is None or math.isinf(value) else value
