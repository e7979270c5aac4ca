"""The CSV writer's fast path writes the bytes of the plain rule: every text cell of every
``iter_item_rows`` row through ``neutralize``, the stdlib csv writer, CRLF. The writer builds
its lines with str methods (csv_writer.csv_line), not the csv module: the property test holds
the two to the same text for any cells."""
from __future__ import annotations

import csv
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from execution_history import RunStore
from execution_history.exporters.cells import ITEM_COLUMNS, RUN_COLUMNS, iter_item_rows, neutralize, run_row
from execution_history.exporters.csv_writer import csv_line, write_csv

from .hostile_records import write_hostile_runs


def reference(records: list[dict], shape: str, raw: bool) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(ITEM_COLUMNS if shape == "items" else RUN_COLUMNS)
    for record in records:
        rows = iter_item_rows(record) if shape == "items" else [run_row(record)]
        writer.writerows(row if raw else [neutralize(v) if type(v) is str else v for v in row] for row in rows)
    return buffer.getvalue().encode("utf-8")


def test_fast_path_writes_the_bytes_of_the_plain_rule(tmp_path):
    store = RunStore(tmp_path)
    records = [store.load(i) for i in write_hostile_runs(tmp_path, 60)]
    # run columns that trigger too, and a run without items (one row, item columns empty)
    records.append({**records[0], "config_name": "=cmd|' /C calc'!A0", "user_id": "+49", "session_id": "@s",
                    "items": []})
    records.append({**records[1], "execution_mode": "-x", "status": "\tcompleted"})
    for shape in ("items", "runs"):
        for raw in (False, True):
            written = b"".join(write_csv(iter(records), shape=shape, raw=raw))
            assert written == reference(records, shape, raw), (shape, raw)
    neutralized = b"".join(write_csv(iter(records), shape="items"))
    assert b"'=cmd" in neutralized and b",'+49," in neutralized  # the rule did apply
    parsed = list(csv.reader(io.StringIO(neutralized.decode("utf-8"), newline="")))
    assert len(parsed) == 1 + sum(max(1, len(r["items"])) for r in records)


def stdlib_line(values: list, raw: bool) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(
        values if raw else [neutralize(v) if type(v) is str else v for v in values])
    return buffer.getvalue()


#: Text made of what CSV quoting and neutralizing look at, mixed with wide characters
#: (each string kind: Latin-1, BMP, astral) and noncharacters.
_TEXT = st.text(alphabet=st.sampled_from(list('",\r\n\'=+-@\t ;a\x00\x85\u2028\ufeff\uffff\U0001f338é')))
_CELL = st.one_of(_TEXT, st.text(), st.none(), st.integers(), st.integers(min_value=2**63),
                  st.floats(allow_nan=False), st.booleans())


@settings(max_examples=400, deadline=None, database=None)
@given(st.lists(_CELL, min_size=2, max_size=24), st.booleans())
def test_csv_line_is_the_stdlib_writer_line(values, raw):
    assert csv_line(values, raw) + "\r\n" == stdlib_line(values, raw)


def test_csv_line_edge_cells():
    cases = [["", ""], ['"', ","], ["\r", "\n"], ["'", "'x"], ["=1,2", '+"q"'], ["\t\n", "-"],
             [None, 0], [1e100, -0.0], [float("inf"), 10**30], [True, False], ["\ufeff=x", "\U0001f338\r"]]
    for values in cases:
        for raw in (False, True):
            assert csv_line(values, raw) + "\r\n" == stdlib_line(values, raw), (values, raw)


def test_files_the_two_json_readers_differ_on_export_as_the_plain_rule():
    """Files orjson refuses or reads its own way (lone surrogate escapes, NaN, 1e400, integers
    beyond 64 bits, duplicate keys) export the bytes of the csv module over the parsed record."""
    from execution_history.records import parse_record

    item = ('{"sequence_number": 1, "stage": 1, "item_type": "user_input_text", "timestamp": '
            '"2025-11-03T20:52:40+00:00", "content": "first", "content": "=second\\ud800", "metadata": '
            '{"seed": %s, "seed": 1, "big": %s}}')
    run = ('{"execution_id": "exec_20251103_205239_896e054c", "config_name": "da,da", "timestamp": '
           '"2025-11-03T20:52:39+00:00", "status": "completed", "total_execution_time": %s, "items": [%s]}')
    cases = [("1.5", "1", "18446744073709551616"), ("NaN", "2", "-9223372036854775809"),
             ("1e400", "3", "1" + "0" * 30), ("-Infinity", "4", "9" * 400), ("2", "5", "7")]
    records = [parse_record((run % (total, item % (seed, big))).encode()) for total, seed, big in cases]
    assert {r["items"][0]["content"] for r in records} == {"=second\ufffd"}
    for shape in ("items", "runs"):
        for raw in (False, True):
            assert b"".join(write_csv(iter(records), shape=shape, raw=raw)) == reference(records, shape, raw)
