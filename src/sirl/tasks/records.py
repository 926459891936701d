"""``records``: your own rows (a file, a ``datasets`` dataset, a Hub dataset) scored by reward functions.

Worked example (``rows.jsonl``, one object per line; a reward function in ``my_rewards.py``)::

    {"prompt": "3+4*2=", "answer": "0"}
    {"prompt": "5-6*3=", "answer": "4"}

    # my_rewards.py: a TRL reward function, one reward per completion
    def final_digit(completions, answer, **kwargs):
        return [1.0 if c.rsplit("#", 1)[-1].strip() == a else 0.0 for c, a in zip(completions, answer)]

    sirl train --task records --task.args.path=rows.jsonl --task.args.reward=my_rewards.py:final_digit ...

    prompt      3+4*2=              (the row's prompt column, as the model sees it)
    answer      0                   (the answer column, as text)
    verify("3+4=0;0*2=0;#0")  -> 1.0   (the reward function's 1.0; success_threshold 1)
    steps       one per line, or any named splitter: step_splitter="regex:;" gives [3+4=0;] [0*2=0;] [#0]

**Where rows come from** (``path``; by default :data:`DEFAULT_PATH`, a sample): a JSONL (``.jsonl``/``.json``), CSV (``.csv``) or Parquet
(``.parquet``, needs pyarrow: the parquet extra) file; a directory written by ``datasets``'
``save_to_disk`` (a Dataset, or a DatasetDict whose ``split`` is used); or a Hub dataset name, loaded
with ``datasets.load_dataset(path, split=split)``, from the local cache when ``HF_HUB_OFFLINE=1``.
Rows are read and checked as sirl's prompt files are (sirl.data): a row with a missing, empty or
wrong-typed column is reported by file and line (JSONL, CSV) or row (Parquet, datasets) and skipped, and
the whole source is refused when more than ``max_bad_fraction`` of its rows are bad; nothing is dropped
without being reported.

**Columns**, named by knobs: ``prompt`` (text, or chat messages: a list of ``{"role", "content"}`` ending in
the user's turn), ``answer`` (text or a number; a dotted name reaches into a dict column, and by default
it is ``answer``, or verl's ``reward_model.ground_truth`` when the rows have no ``answer``), ``solution``
(an optional worked solution: what ``sirl sft`` trains on; by default the column ``solution`` where the rows
have one), ``columns`` (the columns passed to TRL reward
functions besides the prompt; all of them by default), ``difficulty`` (an optional integer column for the
reports by difficulty). verl's Parquet layout (``prompt`` as chat messages, ``reward_model.ground_truth``,
``data_source``, ``extra_info``) is read as it is.

A chat prompt is shown as the user's turn of the model's chat template (sirl.prompts), so a conversation
must be that one turn: a row whose messages hold a system message or earlier turns is bad (its reason
says so); a system prompt shared by every row goes in ``prompt.system`` instead.

**Rewards** (``reward``, ``reward_weights``; sirl.tasks.rewards): built-ins (``exact_match``, ``numeric``
within ``tolerance``, ``math_verify``; the answer extracted with ``answer_pattern``), TRL reward functions
and verl ``compute_score`` functions by import path, several combined by weight into one raw reward R.

**The reward scale.** sirl's verifier takes scores in [0, 1] and its methods read a score of 1 as a
success (the step credit localizes failures against successes: sirl.credit, docs/method.md). So
:meth:`RecordsTask.verify` maps R onto that scale with two knobs, ``success_threshold`` (T) and
``reward_floor`` (F < T)::

    score(R) = 1                                  when R >= T   (a success)
             = max(0, (R - F) / (T - F))          when R <  T   (a failure; affine, so the order and the
                                                                 spacing of failures' rewards are kept)

With the defaults (T = 1, F = 0) a reward in [0, 1] is its own score, as every built-in task's is.
Rewards outside [0, 1] are allowed: set T to what counts as solved (a correctness reward of 1 plus a format
bonus of 0.2 gives T = 1 for "correct, with or without the bonus") and F to the lowest reward (-1 for
rewards in [-1, 1]). Differences among successes above T are not seen by the methods: all score 1.

Splits: ``test_path`` (another source) or, for a DatasetDict or Hub dataset, ``test_split`` names the test
rows; without either, a stable hash of the prompt puts ``test_fraction`` of the rows in the test split
(sirl.tasks.base.split_of). The two splits never share a prompt: training rows whose prompt is also a test
row's are left out of training and reported. ``has_ground_truth`` is False: data carries no step labels.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from sirl.credit.steps import resolve_splitter, split_steps
from sirl.data import DataError, check_rows, read_records
from sirl.paths import resolve_path
from sirl.tasks.base import NoGroundTruth, Task, check_split, split_of
from sirl.tasks.rewards import RewardInput, RewardSet, reward_set
from sirl.types import Problem, Span, to_jsonable

DEFAULT_PATH = "data/records/arith7.jsonl"
"""1,000 rows of arith mod 7 (the distribution of checkpoints/arith7-tiny) with answers and solutions."""
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
ANSWER_COLUMNS = ("answer", "reward_model.ground_truth")
"""The answer column when ``answer`` is not given: the first of these the first row has."""
_MISSING = object()


def column_value(record: dict, column: str) -> Any:
    """``record[column]``, where a dotted name reaches into dict columns (``reward_model.ground_truth``);
    :data:`_MISSING` when absent."""
    value: Any = record
    for part in column.split(".") if column not in record else [column]:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def outcome_score(reward: float, success_threshold: float, reward_floor: float) -> float:
    """A raw reward on sirl's [0, 1] scale, 1 meaning a success (module docstring, "The reward scale")."""
    if reward >= success_threshold:
        return 1.0
    return max(0.0, (reward - reward_floor) / (success_threshold - reward_floor))


def _source_rows(path: str, split: str) -> tuple[str, list[tuple[str, Any, str | None]] | None, Path | None]:
    """(the source's label, its rows as ``(location, record, error)`` for a ``datasets`` source or None for a
    file, the file's path or None) for ``path``: a file, a ``save_to_disk`` directory, or a Hub dataset name."""
    local = resolve_path(path)
    if local.is_file():
        if local.suffix not in FILE_SUFFIXES:
            raise DataError(f"{local}: a records file is JSONL (.jsonl, .json), CSV (.csv) or Parquet (.parquet), not {local.suffix or 'a file without a suffix'}")
        return str(local), None, local
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: not a file; reading a `datasets` directory or a Hub dataset needs datasets: pip install 'sirl[datasets]'") from None
    if local.is_dir():
        try:
            loaded = datasets.load_from_disk(str(local))
        except Exception as error:  # datasets raises FileNotFoundError or its own types for a folder it did not write
            raise DataError(f"{local}: a directory, but not one written by datasets' save_to_disk ({type(error).__name__}: {error})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"{local}: a DatasetDict without the split {split!r}; its splits are {sorted(loaded)} (knob 'split')")
            loaded = loaded[split]
        label = f"{local} [{split}]"
    else:
        try:
            loaded = datasets.load_dataset(path, split=split)
        except Exception as error:  # offline and not cached, no such dataset, no such split: its message says which
            raise DataError(
                f"{path}: no such file or directory (looked in {Path.cwd()} and the project), and datasets could not load it as a Hub "
                f"dataset with split {split!r} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                "offline (HF_HUB_OFFLINE=1) it must be in the local Hugging Face cache"
            ) from None
        label = f"{path} [{split}]"
    return label, [(f"{label}, row {i}", row, None) for i, row in enumerate(loaded, start=1)], None


class RecordsTask(Task):
    name = "records"
    description = "your rows (JSONL, CSV, Parquet, a datasets dataset or Hub name) scored by reward functions (TRL, verl, built-in)"
    has_ground_truth = False

    def __init__(
        self,
        path: str = DEFAULT_PATH,
        prompt: str = "prompt",
        answer: str | None = None,
        solution: str | None = None,
        columns: list[str] | None = None,
        reward: str | list[str] = "math_verify",
        reward_weights: list[float] | None = None,
        answer_pattern: str | None = None,
        tolerance: float = 1e-6,
        success_threshold: float = 1.0,
        reward_floor: float = 0.0,
        step_splitter: str = "lines",
        difficulty: str | None = None,
        test_path: str | None = None,
        split: str = "train",
        test_split: str | None = None,
        test_fraction: float = 0.2,
        max_bad_fraction: float = 0.01,
    ):
        if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        if not reward_floor < success_threshold:
            raise ValueError(f"reward_floor={reward_floor} must be below success_threshold={success_threshold} (the scale maps [floor, threshold] onto [0, 1])")
        if test_path is not None and test_split is not None:
            raise ValueError("give test_path (another source of test rows) or test_split (a split of the same dataset), not both")
        resolve_splitter(step_splitter)  # an unknown name or a bad pattern is an error now, not at the first step
        self.path, self.prompt_column, self.answer_column, self.solution_column = path, prompt, answer, solution
        self.extra_columns, self.difficulty_column = columns, difficulty
        self.success_threshold, self.reward_floor = float(success_threshold), float(reward_floor)
        self.step_splitter, self.test_fraction, self.max_bad_fraction = step_splitter, float(test_fraction), max_bad_fraction
        self.rewards: RewardSet = reward_set(reward, reward_weights, answer_pattern=answer_pattern, tolerance=tolerance)

        rows = self._read(path, split)
        if test_path is not None or test_split is not None:
            test_rows = self._read(test_path or path, test_split or split)
            test_prompts = {row.prompt for row in test_rows}
            shared = [row for row in rows if row.prompt in test_prompts]
            if shared:
                print(f"warning: records: {len(shared)} of {len(rows)} training rows have a prompt that is also a test row's and are "
                      f"left out of training (the first: {shared[0].meta['where']})", flush=True)
            self.problems = [row for row in rows if row.prompt not in test_prompts] + test_rows
            self._by_split = {"train": list(range(len(rows) - len(shared))), "test": list(range(len(rows) - len(shared), len(self.problems)))}
        else:
            self.problems = rows
            self._by_split = {"train": [], "test": []}
            for index, row in enumerate(rows):
                self._by_split[split_of(row.prompt, self.test_fraction)].append(index)

    # --- reading -------------------------------------------------------------------------------------
    def _read(self, path: str, split: str) -> list[Problem]:
        label, raw, file = _source_rows(path, split)
        answer_column = self.answer_column
        prompt_column = self.prompt_column

        solution_column = self.solution_column

        def check(record: dict) -> str | None:
            nonlocal answer_column, solution_column
            if solution_column is None and "solution" in record:  # by default, a column named "solution" when there is one
                solution_column = "solution"
            if answer_column is None:  # chosen from the first good row, then the same for every row
                found = [c for c in ANSWER_COLUMNS if column_value(record, c) is not _MISSING]
                if not found:
                    raise DataError(f"{label}: the rows have no 'answer' column and no verl 'reward_model.ground_truth'; name the answer "
                                    f"column with task.args.answer=COLUMN (a dotted name reaches into a dict column); columns: {sorted(record)}")
                answer_column = found[0]
            return self._check_row(record, answer_column, solution_column)

        fields = {prompt_column: (str, list)}
        if raw is None:  # a file: read as sirl's prompt files are
            records = read_records(file, fields, max_bad_fraction=self.max_bad_fraction, check=check)
        else:
            records = check_rows(label, raw, fields, max_bad_fraction=self.max_bad_fraction, check=check)
        return [self._problem(record, answer_column, solution_column, i) for i, record in enumerate(records.rows)]

    def _check_row(self, record: dict, answer_column: str, solution_column: str | None) -> str | None:
        """Why a row cannot be used (a column missing, empty, of the wrong type, an answer the built-in
        rewards cannot read, a conversation sirl cannot show), or None."""
        prompt = record[self.prompt_column]
        if isinstance(prompt, list):
            reason = _check_messages(prompt, self.prompt_column)
            if reason:
                return reason
        answer = column_value(record, answer_column)
        if answer is _MISSING or answer is None:
            return f"the answer column {answer_column!r} is {'missing' if answer is _MISSING else 'null'}"
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float, list)):
            return f"the answer column {answer_column!r} must be text, a number or a list, got {type(answer).__name__} {answer!r:.60}"
        reason = self.rewards.check_answer(_answer_text(answer))
        if reason:
            return f"column {answer_column!r}: {reason}"
        for column, kind in ((solution_column, str), (self.difficulty_column, int)):
            if column is None:
                continue
            value = column_value(record, column)
            if value is _MISSING:
                return f"column {column!r} is missing (the {'reference solutions' if kind is str else 'difficulty'}, knob {'solution' if kind is str else 'difficulty'!r})"
            if value is None or isinstance(value, bool) or not isinstance(value, kind) or (kind is str and not value.strip()):
                return f"column {column!r} must be {'non-empty text' if kind is str else 'an integer'}, got {value!r:.60}"
        for column in self._columns(record):
            if column_value(record, column) is _MISSING:
                return f"column {column!r} (knob 'columns') is missing; columns: {sorted(k for k in record if k != '_where')}"
            try:
                to_jsonable(column_value(record, column))
            except TypeError as error:
                return f"column {column!r} holds a value reward functions cannot be given ({error}); leave it out with the knob 'columns'"
        return None

    def _columns(self, record: dict) -> list[str]:
        """The columns given to TRL reward functions: the knob's, or every column but the prompt."""
        if self.extra_columns is not None:
            return list(self.extra_columns)
        return [c for c in record if c not in (self.prompt_column, "_where")]

    def _problem(self, record: dict, answer_column: str, solution_column: str | None, index: int) -> Problem:
        prompt = record[self.prompt_column]
        ground_truth = column_value(record, answer_column)
        meta = {
            "index": index,
            "where": record["_where"],
            "messages": prompt if isinstance(prompt, list) else None,
            "ground_truth": ground_truth,
            "solution": column_value(record, solution_column) if solution_column else None,
            "columns": {c: column_value(record, c) for c in self._columns(record)},
            "data_source": record.get("data_source"),
            "extra_info": record.get("extra_info"),
        }
        if self.difficulty_column:
            meta["difficulty"] = column_value(record, self.difficulty_column)
        text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        return Problem(prompt=text, answer=_answer_text(ground_truth), meta=meta)

    # --- the task interface --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.problems)

    def indices(self, split: str) -> list[int]:
        """Positions in :attr:`problems` of a split's rows, in source order."""
        check_split(split)
        return list(self._by_split[split])

    def sample(self, rng: random.Random, split: str) -> Problem:
        check_split(split)
        indices = self._by_split[split]
        if not indices:
            raise ValueError(
                f"{self.path}: no {split} rows ({len(self.problems)} rows, test_fraction={self.test_fraction}); "
                "use more rows, another test_fraction, or name the test rows with test_path / test_split"
            )
        return self.problems[indices[rng.randrange(len(indices))]]

    def raw_reward(self, problem: Problem, completion: str) -> float:
        """The weighted sum of the reward functions, before the scale of :meth:`verify`."""
        meta = problem.meta
        sample = RewardInput(
            prompt=meta["messages"] if meta.get("messages") is not None else problem.prompt, completion=completion, answer=problem.answer,
            ground_truth=meta.get("ground_truth"), data_source=meta.get("data_source"), extra_info=meta.get("extra_info"),
            columns=meta.get("columns") or {},
        )
        return self.rewards.score(sample)

    def verify(self, problem: Problem, completion: str) -> float:
        return outcome_score(self.raw_reward(problem, completion), self.success_threshold, self.reward_floor)

    def split_steps(self, completion: str) -> list[Span]:
        return split_steps(completion, self.step_splitter)

    def first_error(self, problem: Problem, completion: str) -> int | None:
        raise NoGroundTruth("records have no ground-truth step labels: only the reward of a whole completion is known")

    def reference_solution(self, problem: Problem) -> str:
        solution = problem.meta.get("solution")
        if solution is None:
            raise ValueError(
                f"{self.path}: no reference solutions; sirl sft and few-shot prompts need them: name the column with task.args.solution=COLUMN"
            )
        return solution

    def alphabet(self, n_samples: int = 0, seed: int = 0) -> str:
        """Every character of the rows' prompts, answers and solutions, plus the verification format."""
        chars = set(self.verify_query + self.verdict_none + "[]0123456789\n")
        for problem in self.problems:
            chars.update(problem.prompt, problem.answer, problem.meta.get("solution") or "")
        return "".join(sorted(chars))


def _answer_text(value: Any) -> str:
    """A row's answer as text: text as is, a whole float without its ".0", anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value)


def _check_messages(messages: list, column: str) -> str | None:
    """Why a chat prompt cannot be shown as one user turn, or None."""
    if not messages or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages):
        return f"column {column!r} must be text or chat messages (a list of {{'role', 'content'}} objects), got {messages!r:.80}"
    roles = [m["role"] for m in messages]
    if roles != ["user"]:
        return (f"column {column!r} is a conversation of roles {roles}; sirl shows a problem as one user turn of the chat template, so "
                "the prompt must be that turn alone (a system prompt shared by every row goes in prompt.system)")
    if not messages[0]["content"].strip():
        return f"column {column!r}: the user's turn is empty"
    return None
