"""The method: localize failed trajectories, correct them, reuse what was found."""

from sirl.internalize.localize import Localization, PrefixBook, certified_prefix_steps, localize, prefix_ids
from sirl.internalize.repair import RepairBuffer, RepairEntry, VerificationExample, VerificationExamples

__all__ = [
    "Localization", "PrefixBook", "RepairBuffer", "RepairEntry", "VerificationExample", "VerificationExamples",
    "certified_prefix_steps", "localize", "prefix_ids",
]
