"""Line charts as inline SVG, written by hand: they show without scripts or network, stay sharp at any
zoom and cost a few kilobytes each (a matplotlib PNG of the same chart is ~30 kB of base64)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Protocol

# Tableau 10: distinguishable, and still apart for the common forms of colour blindness.
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f")

WIDTH, HEIGHT = 420, 260
LEFT, RIGHT, BOTTOM = 58, 18, 40
LEGEND_ROW = 16
MAX_MARKERS = 40  # series with at most this many points get a dot (with its value on hover) per point


class Formatter(Protocol):
    """A value as a label: compact by default, with ``decimals`` fixed decimals when asked (ticks that
    would otherwise read alike)."""

    def __call__(self, value: float, decimals: int | None = None) -> str: ...


@dataclass(frozen=True)
class Series:
    """One line: ``ys[i]`` at ``xs[i]``; a non-finite y breaks the line there."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]


def nice_ticks(lo: float, hi: float, target: int = 5, *, integer: bool = False) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten; whole steps of at least 1 when
    ``integer``) covering [lo, hi]; the first and last tick are the axis ends."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"axis range must be finite, got [{lo}, {hi}]")
    if hi <= lo:  # one value: a small range around it
        pad = 1.0 if integer else abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    multiples = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * magnitude for m in multiples if m * magnitude >= raw * (1 - 1e-9))
    if integer:
        step = max(1.0, round(step))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def format_number(value: float, decimals: int | None = None) -> str:
    """Compact tick and hover labels: 250k, 1.2M, 0.35, 12; with ``decimals``, that many fixed decimals."""
    if not math.isfinite(value):
        return str(value)
    if decimals is not None:
        return f"{value:.{decimals}f}"
    size = abs(value)
    if size >= 1e6:
        return f"{value / 1e6:.3g}M"
    if size >= 1e3:
        return f"{value / 1e3:.3g}k"
    return f"{value:.3g}"


def format_percent(value: float, decimals: int | None = None) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value * 100:.3g}%" if decimals is None else f"{value * 100:.{decimals}f}%"


def tick_labels(ticks: Sequence[float], y_format: Formatter) -> list[str]:
    """``y_format``'s labels when they are distinct; else fixed decimals, as few as spell every (evenly
    spaced) tick exactly: 99.500%, 99.525%, 99.550% rather than 99.5%, 99.5%, 99.6%."""
    labels = [y_format(t) for t in ticks]
    if len(set(labels)) == len(labels):
        return labels
    for decimals in range(0, 10):
        labels = [y_format(t, decimals=decimals) for t in ticks]
        values = [float(label.rstrip("%")) for label in labels]
        steps = [b - a for a, b in zip(values, values[1:])]
        if min(steps) > 0 and max(steps) - min(steps) < 1e-9 * max(1.0, max(abs(v) for v in values)):
            break
    return labels


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    y_format: Formatter = format_number,
    stacked: bool = False,
    integer_x: bool = False,
) -> str:
    """An SVG line chart with axes, ticks, grid, a title and a legend (the metric keys). ``stacked`` draws
    the series as areas on top of each other (non-finite values count as 0), for parts of a total;
    ``integer_x`` keeps x ticks on whole numbers (training steps)."""
    if stacked:
        series = _stack(series)
    points = [(x, y) for s in series for x, y in zip(s.xs, s.ys) if math.isfinite(x) and math.isfinite(y)]
    legend, legend_height = _legend([s.label for s in series])
    top = 34 + legend_height
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT + legend_height}" width="{WIDTH}" height="{HEIGHT + legend_height}" '
        f'role="img" aria-label="{escape(title)}" font-family="system-ui, sans-serif" font-size="11">',
        f'<text class="chart-title" x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13" font-weight="600">{escape(title)}</text>',
        legend,
    ]
    if not points:
        parts.append(f'<text x="{WIDTH / 2}" y="{top + 80}" text-anchor="middle" fill="#888">no finite values logged</text></svg>')
        return "".join(parts)
    # x spans exactly the data (no empty margin after the last step); y ends on round ticks.
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    x_ticks = nice_ticks(x_low, x_high, integer=integer_x)
    if x_high > x_low:
        x_ticks = [x for x in x_ticks if x_low - 1e-9 <= x <= x_high + 1e-9]
    else:
        x_low, x_high = x_ticks[0], x_ticks[-1]
    y_ticks = nice_ticks(0.0 if stacked else min(p[1] for p in points), max(p[1] for p in points))
    plot_bottom = HEIGHT + legend_height - BOTTOM
    frame = _Frame(x_low, x_high, y_ticks[0], y_ticks[-1], LEFT, WIDTH - RIGHT, top, plot_bottom)
    parts += _axes(frame, x_ticks, y_ticks, y_format, x_label, y_label)
    for index, s in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        if stacked:
            below = series[index - 1].ys if index else [0.0] * len(s.ys)
            parts.append(_area(frame, s, below, color))
        else:
            parts += _lines(frame, s, color, y_format)
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class _Frame:
    """Data ranges and the pixel box they map onto (y grows downwards in SVG)."""

    x0: float
    x1: float
    y0: float
    y1: float
    left: float
    right: float
    top: float
    bottom: float

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def py(self, y: float) -> float:
        return self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)


def _stack(series: Sequence[Series]) -> list[Series]:
    """Cumulative sums, so series i is drawn from the top of series i-1."""
    stacked, total = [], None
    for s in series:
        ys = [y if math.isfinite(y) else 0.0 for y in s.ys]
        total = ys if total is None else [a + b for a, b in zip(total, ys)]
        stacked.append(Series(s.label, s.xs, total))
    return stacked


def _legend(labels: list[str]) -> tuple[str, int]:
    """Swatch and label per series, wrapped into rows under the title; returns (svg, its height)."""
    items, x, row = [], LEFT, 0
    for index, label in enumerate(labels):
        width = 22 + 6.2 * len(label) + 14
        if x + width > WIDTH - RIGHT and x > LEFT:
            x, row = LEFT, row + 1
        y = 38 + row * LEGEND_ROW
        color = PALETTE[index % len(PALETTE)]
        items.append(
            f'<rect x="{x}" y="{y - 8}" width="16" height="4" rx="1" fill="{color}"/>'
            f'<text x="{x + 22}" y="{y - 3}">{escape(label)}</text>'
        )
        x += width
    return f'<g class="legend">{"".join(items)}</g>', (row + 1) * LEGEND_ROW if labels else 0


def _axes(
    frame: _Frame, x_ticks: list[float], y_ticks: list[float], y_format: Formatter, x_label: str, y_label: str
) -> list[str]:
    parts = ['<g class="axes" stroke-width="1">']
    for y, label in zip(y_ticks, tick_labels(y_ticks, y_format)):
        py = frame.py(y)
        parts.append(f'<line x1="{frame.left}" x2="{frame.right}" y1="{py:.1f}" y2="{py:.1f}" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{frame.left - 6}" y="{py + 3.5:.1f}" text-anchor="end" fill="#444">{escape(label)}</text>')
    for x, label in zip(x_ticks, tick_labels(x_ticks, format_number)):
        px = frame.px(x)
        parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{frame.bottom}" y2="{frame.bottom + 4}" stroke="#666"/>')
        parts.append(f'<text x="{px:.1f}" y="{frame.bottom + 16}" text-anchor="middle" fill="#444">{escape(label)}</text>')
    parts.append(
        f'<line x1="{frame.left}" x2="{frame.right}" y1="{frame.bottom}" y2="{frame.bottom}" stroke="#666"/>'
        f'<line x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" y2="{frame.bottom}" stroke="#666"/>'
        f'<text x="{(frame.left + frame.right) / 2}" y="{frame.bottom + 32}" text-anchor="middle" fill="#222">{escape(x_label)}</text>'
        f'<text transform="translate(13 {(frame.top + frame.bottom) / 2}) rotate(-90)" text-anchor="middle" fill="#222">{escape(y_label)}</text>'
        "</g>"
    )
    return parts


def _lines(frame: _Frame, s: Series, color: str, y_format: Formatter) -> list[str]:
    """One polyline per run of finite points (a NaN leaves a gap), and hoverable dots on short series."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(s.xs, s.ys):
        if math.isfinite(x) and math.isfinite(y):
            runs[-1].append((x, y))
        elif runs[-1]:
            runs.append([])
    parts = [f'<g class="series" fill="none" stroke="{color}" stroke-width="1.8" stroke-linejoin="round">']
    for run in runs:
        if len(run) > 1:
            coords = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in run)
            parts.append(f'<polyline points="{coords}"/>')
    finite = [p for run in runs for p in run]
    if len(finite) <= MAX_MARKERS:
        for x, y in finite:
            parts.append(
                f'<circle cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="2.6" fill="{color}" stroke="none">'
                f"<title>{escape(s.label)} = {escape(y_format(y))} at {escape(format_number(x))}</title></circle>"
            )
    parts.append("</g>")
    return parts


def _area(frame: _Frame, s: Series, below: Sequence[float], color: str) -> str:
    upper = [f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in zip(s.xs, s.ys)]
    lower = [f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in reversed(list(zip(s.xs, below)))]
    last = format_number(s.ys[-1] - below[-1]) if s.ys else ""
    return (
        f'<polygon class="series" points="{" ".join(upper + lower)}" fill="{color}" fill-opacity="0.75" stroke="{color}">'
        f"<title>{escape(s.label)}: {last} at the end</title></polygon>"
    )
