"""Reading prompt files (JSONL or Parquet) so that bad rows are reported precisely and lose nothing else.

A prompt file is a table of records, one per problem. :func:`read_records` reads it and checks each record
against the fields a task needs (``fields``: name -> expected type). It never stops at the first bad row:

- a row that is not valid JSON, not an object, or whose field is missing, null or of the wrong type is
  *bad*: it is skipped and reported with its file and line (JSONL, CSV) or row number (Parquet);
- a row whose prompt is longer than ``max_prompt_chars`` is *too long*: it is skipped and counted, never
  truncated (a cut prompt is a different problem);
- a line that is not valid UTF-8, or an object that names a field twice, is bad too (never loaded with
  replacement characters or with one of the two values);
- blank lines are not rows; lines end at ``\n`` (a CRLF end and a byte-order mark at the start of any line,
  as files joined with ``cat`` have, are read as if absent); a UTF-16 or UTF-32 file is read when it starts
  with its byte-order mark, and refused with the command that converts it when it does not; a line in
  another encoding than the file's is bad, and its reason names the encoding it most likely is.

When more than ``max_bad_fraction`` of the rows are bad, or no row is left, it raises :class:`DataError`
listing the first bad rows; otherwise it warns with the counts and the first few (once per process:
a file read again says the same), and returns the good rows. Parquet needs pyarrow (``pip install 'sirl[parquet]'``).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

SHOWN = 5
"""Bad rows quoted in an error or warning."""

# Warnings already printed by this process. A prompt file is read again each time its task is built (SFT
# builds two, the verifier's workers one each); its warning says the same every time, so it is printed
# once. Process state on purpose, like the ``warnings`` module's registry.
_printed: set[str] = set()
_silenced = False


def silence_warnings() -> None:
    """Print no prompt-file warning from this process: a verifier worker rebuilds a task that the trainer
    has already built (and warned about) from the same file."""
    global _silenced
    _silenced = True


def _print_once(message: str) -> None:
    if not _silenced and message not in _printed:
        _printed.add(message)
        print(f"warning: {message}", file=sys.stderr)


class DataError(ValueError):
    """A prompt file that cannot be used (too many bad rows, none left, unreadable)."""


@dataclass(frozen=True)
class BadRow:
    where: str
    """``file, line N`` (JSONL, CSV) or ``file, row N`` (Parquet, a ``datasets`` dataset; 1-based)."""
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class Records:
    rows: list[dict[str, Any]]
    """The good rows, in file order, each with ``_where`` (its location, for later messages)."""
    bad: list[BadRow] = field(default_factory=list)
    too_long: list[BadRow] = field(default_factory=list)
    total: int = 0
    """Rows read (good, bad and too long; blank lines are not rows)."""

    def summary(self) -> str:
        return f"{len(self.rows)} of {self.total} rows used, {len(self.bad)} bad, {len(self.too_long)} over-long prompts skipped"


def _type_name(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(t.__name__ for t in types)


def check_record(record: Any, fields: dict[str, type | tuple[type, ...]]) -> str | None:
    """Why ``record`` does not have ``fields`` with their types, or None when it does."""
    if not isinstance(record, dict):
        return f"expected a JSON object with fields {sorted(fields)}, got {type(record).__name__}"
    for name, expected in fields.items():
        if name not in record:
            return f"missing field {name!r} (fields present: {sorted(record)})"
        value = record[name]
        if value is None:
            return f"field {name!r} is null; it must be a {_type_name(expected)}"
        allowed = expected if isinstance(expected, tuple) else (expected,)
        # bool is an int in Python, never what a numeric field means
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            return f"field {name!r} must be a {_type_name(expected)}, got {type(value).__name__} {value!r:.60}"
        if isinstance(value, str) and not value.strip():
            return f"field {name!r} is an empty string"
    return None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses an object naming a field twice (json keeps the last silently)."""
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise _DuplicateKey(key)
        record[key] = value
    return record


# Byte-order marks, the longest first: the UTF-32-LE mark begins with the UTF-16-LE one.
BOMS = [
    (b"\xff\xfe\x00\x00", "UTF-32-LE"),
    (b"\x00\x00\xfe\xff", "UTF-32-BE"),
    (b"\xef\xbb\xbf", "UTF-8"),
    (b"\xff\xfe", "UTF-16-LE"),
    (b"\xfe\xff", "UTF-16-BE"),
]


def _encoding_of(path: Path, data: bytes) -> tuple[str, int]:
    """The file's encoding from its byte-order mark and the mark's length; UTF-8 without one. A file
    that looks like UTF-16 or UTF-32 without a mark (NUL bytes between the ASCII characters of its JSON)
    is refused: guessing its byte order could turn every row into another text."""
    for mark, encoding in BOMS:
        if data.startswith(mark):
            return encoding, len(mark)
    head = data[:400]
    if head and head.count(0) * 4 >= len(head):
        guess = "UTF-32" if b"\x00\x00\x00" in head else "UTF-16"
        raise DataError(
            f"{path}: the file looks like {guess} without a byte-order mark (NUL bytes between its characters); "
            f"prompt files are UTF-8: convert it with `iconv -f {guess}LE -t UTF-8 {path} > fixed.jsonl` "
            f"(or {guess}BE for big-endian), or write it with a byte-order mark"
        )
    return "UTF-8", 0


def _guess_bytes(raw: bytes) -> str | None:
    """The encoding a line that is not UTF-8 JSON most likely is, from its bytes, or None: a byte-order mark it
    starts with, NUL bytes between its characters (UTF-16 or UTF-32: a part of another encoding appended to
    the file), or letters of the Windows code page (Latin-1's superset: each non-ASCII byte alone, beside an
    ASCII letter, and a letter there, as in ``caf\xe9``; stray bytes are named by nothing)."""
    for mark, encoding in BOMS:
        if encoding != "UTF-8" and raw.startswith(mark):
            return encoding
    if raw and raw.count(0) * 4 >= len(raw):
        return "UTF-32" if b"\x00\x00\x00" in raw else "UTF-16"
    high = [m.start() for m in re.finditer(rb"[\x80-\xff]", raw)]
    if not high:
        return None
    try:
        raw.decode("utf-8")
        return None
    except UnicodeDecodeError:
        pass
    try:
        text = raw.decode("cp1252")  # one character per byte: positions agree
    except UnicodeDecodeError:
        return None
    def letter_beside(i: int) -> bool:
        return any(0 <= j < len(raw) and chr(raw[j]).isascii() and chr(raw[j]).isalpha() for j in (i - 1, i + 1))
    if all(text[i].isalpha() and letter_beside(i) and i + 1 not in high for i in high):
        return "Windows-1252"
    return None


def _guess_text(line: str, encoding: str) -> str | None:
    """The encoding a line of a UTF-16 file read by its mark most likely is, when it is not JSON: the other
    byte order (a part written big-endian appended to a little-endian file, or the reverse) when the line
    starts with a swapped mark or reads as text once each character's two bytes are swapped."""
    if not encoding.startswith("UTF-16"):
        return None
    other = "UTF-16-BE" if encoding == "UTF-16-LE" else "UTF-16-LE"
    if line.startswith("\ufffe"):
        return other
    swapped = line.encode("utf-16-le", "surrogatepass")
    swapped = bytes(b for pair in zip(swapped[1::2], swapped[::2]) for b in pair).decode("utf-16-le", "replace")
    printable = sum(c.isascii() and c.isprintable() for c in swapped)
    return other if printable >= 0.9 * len(swapped) > sum(c.isascii() for c in line) else None


def _hint(guess: str | None) -> str:
    if guess is None:
        return ""
    return (f"; the line looks like {guess}, not the file's encoding (a part in another encoding appended to it?): prompt "
            f"files are UTF-8, convert that part with `iconv -f {guess.upper()} -t UTF-8`")


def _jsonl_rows(path: Path) -> list[tuple[str, Any, str | None]]:
    """(location, record or None, error or None) for each non-blank line.

    Lines end at ``\n`` only (a ``\r`` before it is dropped): ``str.splitlines()`` would also split at
    U+2028, U+2029, U+0085 and the other separators that a JSON string may hold unescaped (as
    ``json.dumps(..., ensure_ascii=False)`` writes them), turning one good row into two bad ones. A UTF-8
    file is decoded line by line, so a line with invalid bytes is one bad row, not a silently altered one;
    a UTF-16 or UTF-32 file with a byte-order mark is decoded whole, and refused if it does not decode.
    Every line's leading byte-order mark is dropped (files joined with ``cat`` keep each one's), and a line
    that does not decode or is not JSON names the encoding it most likely is (:func:`_guess_bytes`)."""
    data = path.read_bytes()
    encoding, skip = _encoding_of(path, data)
    if encoding == "UTF-8":
        lines: list[bytes | str] = list(data[skip:].split(b"\n"))
    else:
        try:
            lines = list(data[skip:].decode(encoding.lower().replace("-", "_")).split("\n"))
        except UnicodeDecodeError as error:
            raise DataError(
                f"{path}: the file starts with a {encoding} byte-order mark but is not valid {encoding} "
                f"(at byte {error.start + skip}: {error.reason}); prompt files should be UTF-8: convert it with "
                f"`iconv -f {encoding} -t UTF-8 {path} > fixed.jsonl`"
            ) from None
    out = []
    for number, raw in enumerate(lines, start=1):
        where = f"{path}, line {number}"
        if isinstance(raw, bytes):
            raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                if raw.strip():
                    out.append((where, None, f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at byte {error.start + 1} of the "
                                             f"line: {error.reason}){_hint(_guess_bytes(raw))}"))
                continue
        else:
            line = raw
        line = line.removesuffix("\r").lstrip("\ufeff")
        if not line.strip():
            continue
        try:
            out.append((where, json.loads(line, object_pairs_hook=_unique_keys), None))
        except json.JSONDecodeError as error:
            guess = _guess_bytes(raw) if isinstance(raw, bytes) else _guess_text(line, encoding)
            out.append((where, None, f"not valid JSON ({error.msg} at column {error.colno}){_hint(guess)}"))
        except _DuplicateKey as error:
            out.append((where, None, f"field {error.args[0]!r} appears twice in one object; each field may appear once"))
    return out


def _parquet_rows(path: Path) -> list[tuple[str, Any, str | None]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'sirl[parquet]' (or pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a damaged file; the message says which
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None
    return [(f"{path}, row {i}", record, None) for i, record in enumerate(table.to_pylist(), start=1)]


def _csv_rows(path: Path) -> list[tuple[str, Any, str | None]]:
    """One record per CSV row, keyed by the header (the first row); every value is text. A row is located
    by the line it starts on (a quoted value may span lines); a row with more or fewer values than the
    header has is bad, as is a file that is not UTF-8."""
    import csv
    import io

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not valid UTF-8 (at byte {error.start}: {error.reason}); CSV prompt files are UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))  # lines end at \n or \r\n only, as the csv module expects
    out: list[tuple[str, Any, str | None]] = []
    try:
        header = next(reader)
    except StopIteration:
        return out
    except csv.Error as error:
        raise DataError(f"{path}, line 1: not a CSV header ({error})") from None
    start = reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return out
        except csv.Error as error:
            out.append((f"{path}, line {start}", None, f"not valid CSV ({error})"))
            start = reader.line_num + 1
            continue
        where, start = f"{path}, line {start}", reader.line_num + 1
        if not any(v.strip() for v in values):
            continue  # a blank line is not a row
        if len(values) != len(header):
            out.append((where, None, f"{len(values)} values for the header's {len(header)} columns {header}"))
        else:
            out.append((where, dict(zip(header, values)), None))


def read_records(
    path: str | Path,
    fields: dict[str, type | tuple[type, ...]],
    *,
    prompt_field: str | None = None,
    max_prompt_chars: int | None = None,
    max_bad_fraction: float = 0.01,
    check: Callable[[dict[str, Any]], str | None] | None = None,
    warn: Any = None,
) -> Records:
    """Read and check a JSONL (``.jsonl``/``.json``), CSV (``.csv``) or Parquet (``.parquet``) prompt file
    (module docstring). ``check(record)``, run on rows whose fields are right, may name a task-specific
    problem (a row is then bad)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    readers = {".parquet": _parquet_rows, ".csv": _csv_rows}
    raw = readers.get(path.suffix, _jsonl_rows)(path)
    return check_rows(path, raw, fields, prompt_field=prompt_field, max_prompt_chars=max_prompt_chars,
                      max_bad_fraction=max_bad_fraction, check=check, warn=warn)


def check_rows(
    source: str | Path,
    raw: list[tuple[str, Any, str | None]],
    fields: dict[str, type | tuple[type, ...]],
    *,
    prompt_field: str | None = None,
    max_prompt_chars: int | None = None,
    max_bad_fraction: float = 0.01,
    check: Callable[[dict[str, Any]], str | None] | None = None,
    warn: Any = None,
) -> Records:
    """:func:`read_records` on rows already read from ``source`` (a file, a ``datasets`` dataset): each
    ``(location, record or None, error or None)``, checked and reported the same way."""
    path = source
    if not 0 <= max_bad_fraction <= 1:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction!r}")
    if not raw:
        raise DataError(f"{path} is empty: no rows (a JSONL file has one JSON object per line)")
    records = Records(rows=[], total=len(raw))
    for where, record, error in raw:
        reason = error or check_record(record, fields)
        if reason is None and check is not None:
            reason = check(record)
        if reason is not None:
            records.bad.append(BadRow(where, reason))
        elif prompt_field is not None and max_prompt_chars is not None and len(record[prompt_field]) > max_prompt_chars:
            records.too_long.append(BadRow(where, f"prompt of {len(record[prompt_field])} characters, over max_prompt_chars={max_prompt_chars}"))
        else:
            records.rows.append({**record, "_where": where})
    listing = "; ".join(str(b) for b in records.bad[:SHOWN])
    if len(records.bad) > max_bad_fraction * records.total:
        raise DataError(
            f"{path}: {len(records.bad)} of {records.total} rows are bad, over max_bad_fraction={max_bad_fraction:g}; "
            f"the first: {listing}. Fix the file, or raise the task's max_bad_fraction to skip them."
        )
    if not records.rows:
        raise DataError(f"{path}: no usable rows ({records.summary()}); the first over-long: {records.too_long[0] if records.too_long else '-'}")
    if records.bad or records.too_long:
        warn = warn or _print_once
        message = f"{path}: {records.summary()}"
        if records.bad:
            message += f"; bad: {listing}"
        if records.too_long:
            message += f"; over-long: {records.too_long[0]}"
        warn(message)
    return records
