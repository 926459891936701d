"""Reward functions of the ``records`` task: built-ins by name, a user's functions by import path.

A reward function scores one completion of one row. Three forms are accepted, each named by a string:

- a **built-in**, by name (:data:`BUILTINS`), comparing the completion's final answer with the row's answer:

      exact_match   1 when the extracted answer text equals the answer (both stripped), else 0
      numeric       1 when both read as numbers ("$1,000", "2.5", "-3", "1/2") within ``tolerance``
                    (absolute) of each other, else 0
      math_verify   1 when math-verify finds them equal as mathematical expressions (``\\frac{1}{2}`` and
                    0.5, ``x^2+1`` and ``1+x^2``), else 0

  The answer is extracted with ``answer_pattern`` (a regular expression: the text of its last match, its
  first group when it has one) or, without one, by GSM8K's rules (sirl.tasks.gsm8k.extract_answer: the
  last ``#### x``, else the last line ``A: x``, else the last ``\\boxed{x}``, else the last number).
  ``math_verify`` without a pattern reads the whole completion, as math-verify is meant to (it finds the
  boxed or final answer itself).
- a **TRL reward function** ``f(completions, **kwargs) -> list[float]`` by import path
  (``my_rewards.py:accuracy`` or ``package.module:accuracy``), called as TRL's GRPOTrainer calls it, on a
  batch of one: ``prompts=[prompt]``, ``completions=[completion]`` and every other column of the row as a
  one-element list (``answer=[...]``, ``solution=[...]``, ...). A prompt given as chat messages makes the
  completion one too (``[{"role": "assistant", "content": text}]``), as TRL does for conversational data.
  ``completion_ids`` and ``trainer_state`` are not passed: the completion is scored from its text. A
  function that returns ``[None]`` gives no reward for the sample; it adds nothing to the weighted sum
  (TRL's ``nansum``), and a sample for which every function returns None is an error.
- a **verl reward function** ``compute_score(data_source, solution_str, ground_truth, extra_info=None)``
  by import path, recognised by its ``solution_str`` parameter and called with the row's ``data_source``,
  ``ground_truth`` and ``extra_info``; it returns a number, or a dict whose ``"score"`` is one (verl's
  convention).

Several functions combine into one reward, the weighted sum ``sum_i w_i r_i`` (TRL's ``reward_weights``;
1 each by default). A function that raises, or returns anything but one finite number per completion (a
string, NaN, a list of the wrong length), makes :meth:`RewardSet.score` raise: under sirl's verifier
(sirl.verifier) the sample scores 0 and is counted in ``verify/errors``; one that hangs is stopped at the
verifier's deadline and counted in ``verify/timeouts``. Nothing here catches a function's error.

This module imports no model code.
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig
from math_verify import parse as mv_parse
from math_verify import verify as mv_verify

from sirl.importing import load_module_file
from sirl.paths import resolve_path
from sirl.tasks.gsm8k import extract_answer, normalize_answer


@dataclass(frozen=True)
class RewardInput:
    """What a reward function sees of one sample: the row and the completion."""

    prompt: str | list
    """The row's prompt as the data gives it: text, or chat messages (a list of role/content dicts)."""
    completion: str
    answer: str
    """The row's answer as text ("" when the data has none)."""
    ground_truth: Any = None
    """The answer as the data gives it (verl's ``reward_model.ground_truth`` may be a list or a number)."""
    data_source: str | None = None
    extra_info: Any = None
    columns: Mapping[str, Any] = field(default_factory=dict)
    """Every column of the row but the prompt, as TRL passes them to its reward functions."""


RewardFn = Callable[[RewardInput], float | None]
"""One completion's reward, or None for "no reward for this sample" (TRL)."""


# --- built-ins -----------------------------------------------------------------------------------
def extracted_answer(completion: str, answer_pattern: str | None) -> str | None:
    """The final answer in ``completion``: the last match of ``answer_pattern`` (its first group when it has
    one), or without a pattern GSM8K's rules (:func:`sirl.tasks.gsm8k.extract_answer`); None when absent."""
    if answer_pattern is None:
        return extract_answer(completion)
    last = None
    for last in re.finditer(answer_pattern, completion):
        pass
    if last is None:
        return None
    return last.group(1) if last.re.groups else last.group(0)


def read_number(text: str) -> Fraction | None:
    """``text`` as an exact number ("$1,000" -> 1000, "2.5", "-3", "1/2", "1e3"), None when it is not one."""
    try:
        return Fraction(normalize_answer(text).replace(" ", ""))
    except (ValueError, ZeroDivisionError):
        return None


def _math_parse(text: str, whole_completion: bool = False) -> list:
    """math-verify's reading of an answer (or, ``whole_completion``, of a completion, where it finds the boxed
    or final answer itself). An answer without ``$`` is read as LaTeX inside ``$...$`` (plain text is read
    by its Python-syntax reader, which takes ``1+x^2`` for 1), else as an expression. Its signal-based
    timeout is off (it works on a main thread only); the verifier's deadline bounds the call from outside,
    as for gsm8k (sirl.tasks.gsm8k)."""
    both = [LatexExtractionConfig(), ExprExtractionConfig()]
    if whole_completion or "$" in text:
        return mv_parse(text, extraction_config=both, parsing_timeout=None, raise_on_error=False)
    return (mv_parse(f"${text}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=None, raise_on_error=False)
            or mv_parse(text, extraction_config=[ExprExtractionConfig()], parsing_timeout=None, raise_on_error=False))


class Builtin:
    """A built-in reward: ``name``, its function of a :class:`RewardInput`, and a check of a row's answer
    (why it cannot be scored against, or None) run when the data is read, so a bad answer is a bad row."""

    def __init__(self, name: str, answer_pattern: str | None = None, tolerance: float = 1e-6):
        self.name, self.answer_pattern, self.tolerance = name, answer_pattern, tolerance

    def __call__(self, sample: RewardInput) -> float:
        return getattr(self, f"_{self.name}")(sample)

    def check_answer(self, answer: str) -> str | None:
        if self.name == "numeric" and read_number(answer) is None:
            return f"the answer {answer!r:.60} is not a number, which the numeric reward needs"
        if self.name == "math_verify" and not _math_parse(answer):
            return f"math-verify cannot read the answer {answer!r:.60}"
        if self.name == "exact_match" and not answer.strip():
            return "the answer is empty"
        return None

    def _exact_match(self, sample: RewardInput) -> float:
        found = extracted_answer(sample.completion, self.answer_pattern)
        return float(found is not None and found.strip() == sample.answer.strip())

    def _numeric(self, sample: RewardInput) -> float:
        found = extracted_answer(sample.completion, self.answer_pattern)
        value, gold = (read_number(found) if found is not None else None), read_number(sample.answer)
        return float(value is not None and gold is not None and abs(float(value - gold)) <= self.tolerance)

    def _math_verify(self, sample: RewardInput) -> float:
        text = sample.completion if self.answer_pattern is None else extracted_answer(sample.completion, self.answer_pattern)
        if text is None:
            return 0.0
        gold, found = _math_parse(sample.answer), _math_parse(text, whole_completion=self.answer_pattern is None)
        if not gold or not found:
            return 0.0
        return float(mv_verify(gold, found, timeout_seconds=None, raise_on_error=False))


BUILTINS = ("exact_match", "numeric", "math_verify")


# --- a user's functions --------------------------------------------------------------------------
def import_object(spec: str, what: str = "reward function") -> Any:
    """The object named by ``file.py:name`` or ``package.module:name``."""
    module_part, _, name = spec.rpartition(":")
    if not module_part or not name:
        raise ValueError(f"{what} {spec!r} must be a built-in ({', '.join(BUILTINS)}) or an import path 'file.py:function' / 'package.module:function'")
    if module_part.endswith(".py"):
        path = resolve_path(module_part).resolve()  # as data paths are found: the working directory, then the project
        if not path.is_file():
            raise FileNotFoundError(f"{what} file {module_part!r} (from {spec!r}) does not exist")
        module = load_module_file(path, f"sirl_user_reward_{path.stem}")
    else:
        module = importlib.import_module(module_part)
    try:
        return getattr(module, name)
    except AttributeError:
        raise ValueError(f"{module_part!r} has no attribute {name!r} (from {what} {spec!r})") from None


def _accepted(fn: Callable, offered: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``offered`` that ``fn`` accepts (all of them when it takes ``**kwargs``)."""
    parameters = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return offered
    return {k: v for k, v in offered.items() if k in parameters}


def _one_number(value: Any, source: str) -> float | None:
    """``value`` as a finite float (None passes through); ValueError naming ``source`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"reward function {source} returned {value!r:.80} for a completion, not a finite number")
    return float(value)


def trl_reward(fn: Callable, source: str) -> RewardFn:
    """A TRL reward function ``f(completions, **kwargs) -> list[float]`` called on a batch of one (module docstring)."""

    def score(sample: RewardInput) -> float | None:
        conversational = isinstance(sample.prompt, list)
        completion = [{"role": "assistant", "content": sample.completion}] if conversational else sample.completion
        offered = {"prompts": [sample.prompt], "completions": [completion], **{k: [v] for k, v in sample.columns.items()}}
        result = fn(**_accepted(fn, offered))
        if not isinstance(result, (list, tuple)) or len(result) != 1:
            raise ValueError(f"reward function {source} returned {result!r:.80} for one completion; a TRL reward function returns a list with one reward per completion")
        return _one_number(result[0], source)

    return score


def verl_reward(fn: Callable, source: str) -> RewardFn:
    """A verl ``compute_score(data_source, solution_str, ground_truth, extra_info)`` (module docstring)."""

    def score(sample: RewardInput) -> float:
        offered = {"data_source": sample.data_source, "solution_str": sample.completion, "ground_truth": sample.ground_truth,
                   "extra_info": sample.extra_info}
        result = fn(**_accepted(fn, offered))
        if isinstance(result, dict):
            if "score" not in result:
                raise ValueError(f"reward function {source} returned a dict without a 'score' ({sorted(result)[:5]}); verl reads its 'score'")
            result = result["score"]
        value = _one_number(result, source)
        if value is None:
            raise ValueError(f"reward function {source} returned None; a verl compute_score returns a number")
        return value

    return score


def load_reward(spec: str, answer_pattern: str | None = None, tolerance: float = 1e-6) -> tuple[RewardFn, Builtin | None]:
    """The reward function ``spec`` names, and the built-in itself when it is one (for its answer check)."""
    if spec in BUILTINS:
        builtin = Builtin(spec, answer_pattern, tolerance)
        return builtin, builtin
    fn = import_object(spec)
    if not callable(fn):
        raise ValueError(f"reward function {spec!r} is a {type(fn).__name__}, not a function")
    parameters = inspect.signature(fn).parameters
    if "solution_str" in parameters:
        return verl_reward(fn, spec), None
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    if "completions" in parameters or takes_kwargs:
        return trl_reward(fn, spec), None
    raise ValueError(
        f"reward function {spec!r} takes ({', '.join(parameters)}): give a TRL reward function f(completions, **kwargs) -> "
        "list[float] or a verl compute_score(data_source, solution_str, ground_truth, extra_info)"
    )


@dataclass(frozen=True)
class RewardSet:
    """Named reward functions and their weights: one sample's reward is ``sum_i w_i r_i`` over the functions
    that give one (a TRL function may return None)."""

    names: tuple[str, ...]
    functions: tuple[RewardFn, ...]
    weights: tuple[float, ...]
    builtins: tuple[Builtin, ...] = ()

    def score(self, sample: RewardInput) -> float:
        total, given = 0.0, 0
        for name, fn, weight in zip(self.names, self.functions, self.weights, strict=True):
            value = fn(sample)
            if value is not None:
                total, given = total + weight * value, given + 1
        if not given:
            raise ValueError(f"every reward function ({', '.join(self.names)}) returned None for this completion")
        return total

    def check_answer(self, answer: str) -> str | None:
        """Why a row's answer cannot be scored by the built-ins in use, or None."""
        for builtin in self.builtins:
            reason = builtin.check_answer(answer)
            if reason is not None:
                return reason
        return None


def reward_set(specs: str | list[str], weights: list[float] | None = None, *, answer_pattern: str | None = None,
               tolerance: float = 1e-6) -> RewardSet:
    """The :class:`RewardSet` of ``specs`` (one name or import path, or a list) with ``weights`` (1 each by default)."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise ValueError(f"no reward function given; name a built-in ({', '.join(BUILTINS)}) or an import path 'file.py:function'")
    if weights is None:
        weights = [1.0] * len(specs)
    if len(weights) != len(specs):
        raise ValueError(f"{len(weights)} reward_weights for {len(specs)} reward functions {specs}; give one weight per function")
    if any(not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) for w in weights):
        raise ValueError(f"reward_weights must be finite numbers, got {weights}")
    if answer_pattern is not None:
        try:
            re.compile(answer_pattern)
        except re.error as error:
            raise ValueError(f"answer_pattern {answer_pattern!r} is not a valid regular expression ({error})") from None
    loaded = [load_reward(spec, answer_pattern, tolerance) for spec in specs]
    return RewardSet(tuple(specs), tuple(fn for fn, _ in loaded), tuple(float(w) for w in weights),
                     tuple(builtin for _, builtin in loaded if builtin is not None))
