"""Record rules: ids, the schema's checker, values JSON cannot carry."""
import datetime as dt
import enum
import json
import math

import pytest

from execution_history.errors import InvalidRecord
from execution_history.records import (
    RunRecordSchema,
    check_record,
    dump_record,
    is_valid_execution_id,
    make_json_safe,
    new_execution_id,
    parse_record,
)


def strict_loads(raw):
    """json.loads that rejects NaN/Infinity, like a strict parser."""
    def reject(name):
        raise ValueError(name)
    return json.loads(raw, parse_constant=reject)


def minimal_record(**overrides):
    record = {"execution_id": "exec_20251103_205239_896e054c", "config_name": "dada",
              "timestamp": "2025-11-03T20:52:39+00:00", "status": "completed",
              "items": [{"sequence_number": 1, "stage": 1, "item_type": "user_input_text",
                         "timestamp": "2025-11-03T20:52:40+00:00", "content": "x"}]}
    record.update(overrides)
    return record


@pytest.mark.parametrize("value, ok", [
    ("exec_20251103_205239_896e054c", True),
    ("exec_20251103_205239_896E054C", False),
    ("exec_20251103_205239_896e054", False),
    ("exec_20251103_205239_896e054c\n", False),
    ("exec_../x", False),
    ("../../etc/passwd", False),
    (None, False),
])
def test_execution_id_validator(value, ok):
    assert is_valid_execution_id(value) is ok


def test_new_execution_id_carries_utc_start_time():
    start = dt.datetime(2025, 11, 3, 21, 52, 39, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    new_id = new_execution_id(start)
    assert is_valid_execution_id(new_id)
    assert new_id.startswith("exec_20251103_205239_")


def test_checker_fills_documented_defaults_and_reads_naive_timestamps_as_utc():
    record = check_record(minimal_record(timestamp="2025-11-03T20:52:39"))
    assert record["timestamp"] == "2025-11-03T20:52:39+00:00"
    assert record["user_id"] == "anonymous" and record["session_id"] == "default"
    assert record["items"][0]["metadata"] == {} and record["items"][0]["file_path"] is None


def test_checker_agrees_with_the_marshmallow_schema():
    record = check_record(minimal_record())
    assert RunRecordSchema().validate(record) == {}


@pytest.mark.parametrize("broken", [
    [], {"not": "a run"}, minimal_record(status="weird"), minimal_record(items="nope"),
    minimal_record(timestamp="yesterday"), minimal_record(execution_id="exec_1"),
    minimal_record(items=[{"sequence_number": 1, "stage": 9, "item_type": "x", "timestamp": "2025-01-01"}]),
    minimal_record(items=[{"sequence_number": True, "stage": 1, "item_type": "x", "timestamp": "2025-01-01"}]),
    minimal_record(config_name=None),
])
def test_checker_rejects_what_is_not_a_record(broken):
    with pytest.raises(InvalidRecord):
        check_record(broken)
    assert RunRecordSchema().validate(broken) if isinstance(broken, dict) else True


def test_parse_record_rejects_truncated_bytes_and_foreign_ids():
    raw = dump_record(minimal_record())
    with pytest.raises(InvalidRecord):
        parse_record(raw[: len(raw) // 2])
    with pytest.raises(InvalidRecord):
        parse_record(raw, execution_id="exec_20251103_205239_00000000")
    assert parse_record(raw)["config_name"] == "dada"


class Color(enum.IntEnum):
    RED = 1


class Broken:
    def __str__(self):
        raise RuntimeError("no str for you")


def test_make_json_safe_documented_conversions():
    cyclic = []
    cyclic.append(cyclic)
    value = {
        "surrogate": "ok \ud83d broken",
        "nan": float("nan"), "inf": float("inf"), "ninf": -math.inf, "fine": 1.5,
        "utf8_bytes": "é".encode(), "binary": b"\xff\x00",
        "when": dt.datetime(2025, 1, 2, 3, 4, 5), "day": dt.date(2025, 1, 2),
        "set": {3, 1, 2}, "tuple": (1, "a"), 7: "int key", "enum": Color.RED,
        "broken": Broken(), "cyclic": cyclic,
    }
    safe = make_json_safe(value)
    assert strict_loads(json.dumps(safe)) == safe
    assert safe["surrogate"] == "ok \ufffd broken"
    assert safe["nan"] is None and safe["inf"] is None and safe["ninf"] is None and safe["fine"] == 1.5
    assert safe["utf8_bytes"] == "é" and safe["binary"] == "base64:/wA="
    assert safe["when"] == "2025-01-02T03:04:05+00:00" and safe["day"] == "2025-01-02"
    assert safe["set"] == [1, 2, 3] and safe["tuple"] == [1, "a"] and safe["7"] == "int key"
    assert safe["enum"] == 1 and type(safe["enum"]) is int
    assert safe["broken"].startswith("<") and safe["cyclic"] == ["<recursion>"]


def test_dump_record_is_strict_json():
    with pytest.raises(ValueError):
        dump_record(minimal_record(total_execution_time=float("nan")))
    raw = dump_record(minimal_record(config_name="日本 😀"))
    assert strict_loads(raw.decode("utf-8"))["config_name"] == "日本 😀"


def test_older_files_with_nan_and_lone_surrogates_are_read_safely():
    raw = json.dumps(minimal_record(total_execution_time=float("nan"))).replace('"x"', '"broken \\ud800"')
    record = parse_record(raw.encode())
    assert record["total_execution_time"] is None
    assert record["items"][0]["content"] == "broken \ufffd"
    json.dumps(record, allow_nan=False).encode("utf-8")  # strict and encodable
