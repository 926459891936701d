"""What every config section is built from: fields with a declared range, and the error a config that does not
fit its schema raises. A leaf module (it imports nothing of sirl), so that the shared sections (sirl.config)
and each method's settings (sirl.methods.settings) are declared with the same helpers without importing
each other's neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A preset or override that does not fit the config schema."""


@dataclass(frozen=True)
class Range:
    """The values a numeric field's type allows that a run can also use; None (for an optional field)
    always passes."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: Any) -> bool:
        if value is None:
            return True
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        if self.high is None:
            return f"{'greater than' if self.low_open else 'at least'} {self.low:g}"
        if self.low is None:
            return f"{'less than' if self.high_open else 'at most'} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def ranged(default: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False) -> Any:
    """A field with a default and the range its value must lie in (checked by sirl.config.check_ranges)."""
    return field(default=default, metadata={"range": Range(low, high, low_open, high_open)})
