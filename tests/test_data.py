"""Prompt files with bad rows: each reported with its file and line, nothing else lost."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sirl.data import DataError, read_records
from sirl.tasks.gsm8k import GSM8KTask

FIELDS = {"question": str, "answer": str}
GOOD = {"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}


def jsonl(path, rows, newline="\n", bom=False):
    text = newline.join(row if isinstance(row, str) else json.dumps(row) for row in rows) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def collect():
    messages = []
    return messages, messages.append


@pytest.mark.parametrize(
    "bad, reason",
    [
        ('{"question": "What is 2+2?", "answer": ', "not valid JSON"),
        ({"question": "What is 2+2?"}, "missing field 'answer'"),
        ({"question": "What is 2+2?", "answer": None}, "field 'answer' is null"),
        ({"question": "What is 2+2?", "answer": 4}, "field 'answer' must be a str, got int"),
        ({"question": ["What is 2+2?"], "answer": "#### 4"}, "field 'question' must be a str, got list"),
        ({"question": "  ", "answer": "#### 4"}, "field 'question' is an empty string"),
        (["a", "list"], "expected a JSON object"),
    ],
)
def test_one_bad_row_in_200_is_reported_with_file_and_line_and_skipped(tmp_path, bad, reason):
    rows = [GOOD] * 150 + [bad] + [GOOD] * 49
    path = jsonl(tmp_path / "p.jsonl", rows)
    messages, warn = collect()
    records = read_records(path, FIELDS, max_bad_fraction=0.01, warn=warn)
    assert len(records.rows) == 199 and records.total == 200
    assert len(records.bad) == 1 and str(records.bad[0]).startswith(f"{path}, line 151: {reason}")
    assert len(messages) == 1 and "199 of 200 rows used, 1 bad" in messages[0] and "line 151" in messages[0]


def test_too_many_bad_rows_stop_with_the_first_ones_listed(tmp_path):
    rows = [GOOD] * 97 + ["not json", {"question": "q"}, {"question": "q", "answer": None}]
    path = jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError) as error:
        read_records(path, FIELDS, max_bad_fraction=0.01)
    text = str(error.value)
    assert "3 of 100 rows are bad, over max_bad_fraction=0.01" in text
    assert "line 98: not valid JSON" in text and "line 99: missing field 'answer'" in text and "line 100: field 'answer' is null" in text
    assert "max_bad_fraction" in text
    # the same file passes with a higher threshold, keeping every good row
    assert len(read_records(path, FIELDS, max_bad_fraction=0.05, warn=lambda m: None).rows) == 97


def test_bom_and_crlf_are_read_as_if_absent(tmp_path):
    plain = read_records(jsonl(tmp_path / "a.jsonl", [GOOD, GOOD]), FIELDS)
    odd = read_records(jsonl(tmp_path / "b.jsonl", [GOOD, GOOD], newline="\r\n", bom=True), FIELDS)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "_where"} for r in rs.rows]
    assert strip(odd) == strip(plain) and not odd.bad
    assert odd.rows[0]["question"] == "What is 2+2?"


def test_an_empty_file_is_a_clear_error(tmp_path):
    for name, content in [("empty.jsonl", b""), ("blank.jsonl", b"\n\n  \n"), ("bom.jsonl", b"\xef\xbb\xbf")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=rf"{name} is empty: no rows"):
            read_records(tmp_path / name, FIELDS)


def test_over_long_prompts_are_skipped_and_counted_never_truncated(tmp_path):
    long = {"question": "x" * 501 + "?", "answer": "#### 1"}
    path = jsonl(tmp_path / "p.jsonl", [GOOD, long, GOOD])
    messages, warn = collect()
    records = read_records(path, FIELDS, prompt_field="question", max_prompt_chars=500, warn=warn, max_bad_fraction=0.0)
    assert [r["question"] for r in records.rows] == [GOOD["question"]] * 2  # the long one is gone, not cut
    assert not records.bad and len(records.too_long) == 1 and "line 2" in str(records.too_long[0])
    assert "1 over-long prompts skipped" in messages[0]
    with pytest.raises(DataError, match="no usable rows"):
        read_records(jsonl(tmp_path / "q.jsonl", [long]), FIELDS, prompt_field="question", max_prompt_chars=500)


def test_parquet_rows_are_checked_like_jsonl_with_row_numbers(tmp_path):
    path = tmp_path / "p.parquet"
    table = pa.table({"question": ["a?", None, "c?"] + ["d?"] * 197, "answer": ["#### 1", "#### 2", "#### 3"] + ["#### 4"] * 197})
    pq.write_table(table, path)
    messages, warn = collect()
    records = read_records(path, FIELDS, warn=warn)
    assert len(records.rows) == 199 and [str(b) for b in records.bad] == [f"{path}, row 2: field 'question' is null; it must be a str"]
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_records(tmp_path / "broken.parquet", FIELDS)


def test_gsm8k_reads_a_file_with_a_few_bad_rows_and_parquet(tmp_path, capsys):
    rows = [dict(GOOD, question=f"What is {i}+{i}?") for i in range(199)] + [{"question": "q?", "answer": "no gold line"}]
    task = GSM8KTask(path=str(jsonl(tmp_path / "g.jsonl", rows)))
    assert len(task) == 199
    assert "line 200: field 'answer' must end in a line '#### N'" in capsys.readouterr().err
    pq.write_table(pa.Table.from_pylist(rows[:199]), tmp_path / "g.parquet")
    assert len(GSM8KTask(path=str(tmp_path / "g.parquet"))) == 199
    with pytest.raises(DataError, match="max_bad_fraction=0"):
        GSM8KTask(path=str(tmp_path / "g.jsonl"), max_bad_fraction=0.0)


# --- rows that are never lost, errors that are never silent -----------------------------------------
# json.dumps escapes the ASCII control characters (\x0b, \x1c, \r ...) but with ensure_ascii=False writes
# these three as they are, and str.splitlines() splits at each of them.
@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_a_line_separator_inside_a_string_keeps_the_row_whole(tmp_path, separator):
    odd = {"question": f"What is 2+2?{separator}Think.", "answer": "#### 4"}
    rows = [GOOD] * 100 + [odd] + [GOOD] * 99 + ['{"question": "q"}']  # one truly bad row, after it
    path = tmp_path / "p.jsonl"
    path.write_bytes("\n".join(json.dumps(r, ensure_ascii=False) if isinstance(r, dict) else r for r in rows).encode() + b"\n")
    messages, warn = collect()
    records = read_records(path, FIELDS, warn=warn)
    assert records.total == 201 and len(records.rows) == 200
    assert records.rows[100]["question"] == odd["question"]
    assert [str(b) for b in records.bad] == [f"{path}, line 201: missing field 'answer' (fields present: ['question'])"]


def test_invalid_utf8_is_a_bad_row_reported_by_line(tmp_path):
    lines = [json.dumps(GOOD).encode()] * 150 + [b'{"question": "What is \xff\xfe?", "answer": "#### 4"}'] + [json.dumps(GOOD).encode()] * 49
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    messages, warn = collect()
    records = read_records(path, FIELDS, warn=warn)
    assert len(records.rows) == 199 and "\ufffd" not in "".join(r["question"] for r in records.rows)
    assert [str(b) for b in records.bad] == [f"{path}, line 151: not valid UTF-8 (byte 0xff at byte 23 of the line: invalid start byte)"]
    assert "line 151: not valid UTF-8" in messages[0]


def test_a_field_named_twice_is_a_bad_row(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", [GOOD] * 150 + ['{"question": "What is 1?", "answer": "#### 1", "answer": "#### 2"}'] + [GOOD] * 49)
    records = read_records(path, FIELDS, warn=lambda m: None)
    assert len(records.rows) == 199
    assert [str(b) for b in records.bad] == [f"{path}, line 151: field 'answer' appears twice in one object; each field may appear once"]
    nested = jsonl(tmp_path / "n.jsonl", ['{"question": "q?", "answer": "#### 1", "meta": {"a": 1, "a": 2}}'])
    with pytest.raises(DataError, match="field 'a' appears twice"):
        read_records(nested, FIELDS)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
def test_utf16_and_utf32_files_with_a_byte_order_mark_are_read(tmp_path, encoding):
    rows = [dict(GOOD, question=f"What is {i}+{i}? \u00e9\u2028") for i in range(300)]
    text = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n"
    bom = {"utf-16": "", "utf-32": ""}.get(encoding, "\ufeff")  # the plain codecs write their own mark
    path = tmp_path / "p.jsonl"
    path.write_bytes((bom + text).encode(encoding))
    records = read_records(path, FIELDS)
    assert [r["question"] for r in records.rows] == [r["question"] for r in rows] and not records.bad


@pytest.mark.parametrize("encoding, named", [("utf-16-le", "UTF-16"), ("utf-16-be", "UTF-16"), ("utf-32-le", "UTF-32")])
def test_a_utf16_file_without_a_mark_is_refused_naming_its_encoding_and_the_fix(tmp_path, encoding, named):
    path = tmp_path / "p.jsonl"
    path.write_bytes("\n".join(json.dumps(GOOD) for _ in range(300)).encode(encoding))
    with pytest.raises(DataError, match=f"looks like {named} without a byte-order mark.*iconv -f {named}") as error:
        read_records(path, FIELDS)
    assert "rows are bad" not in str(error.value)


def test_a_file_whose_mark_lies_is_refused_naming_the_encoding(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xff\xfe" + json.dumps(GOOD).encode("utf-16-le") + b"\x00\xd8")  # a lone high surrogate at the end
    with pytest.raises(DataError, match=r"UTF-16-LE byte-order mark but is not valid UTF-16-LE.*iconv -f UTF-16-LE -t UTF-8"):
        read_records(path, FIELDS)


def test_a_files_warning_is_printed_once_per_process_and_never_by_verifier_workers(tmp_path, capfd):
    from sirl.verifier import TaskSpec, VerifierPool

    rows = [dict(GOOD, question=f"What is {i}+{i}?") for i in range(199)] + [{"question": "q?", "answer": "no gold line"}]
    path = str(jsonl(tmp_path / "g.jsonl", rows))
    GSM8KTask(path=path)
    GSM8KTask(path=path)  # SFT builds the task twice; a run builds it again for its verifier
    with VerifierPool(TaskSpec("gsm8k", {"path": path}), workers=2, timeout_s=5, memory_mb=1024) as pool:
        pool.wait_ready()
    assert capfd.readouterr().err.count("line 200: field 'answer' must end in a line") == 1
