"""Record rules: ids, the schema's checker, values JSON cannot carry, the one record shape."""
import datetime as dt
import enum
import json
import math

import pytest

from execution_history import records
from execution_history.errors import InvalidRecord, StorageError
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


def _item_case(name, value):
    item = dict(minimal_record()["items"][0], **({} if value is _ABSENT else {name: value}))
    if value is _ABSENT:
        item.pop(name, None)
    return minimal_record(items=[item])


_ABSENT = object()


@pytest.mark.parametrize("make, name, value, outcome", [
    # each branch of the compiled check, for a record field and an item field
    (minimal_record, "config_name", _ABSENT, "missing field 'config_name'"),
    (minimal_record, "config_name", None, "'config_name' is null"),
    (minimal_record, "config_name", 7, "'config_name' has the wrong type"),
    (minimal_record, "execution_mode", None, None),
    (minimal_record, "execution_mode", ["a"], "'execution_mode' has the wrong type"),
    (minimal_record, "total_execution_time", 3, None),  # an int is a float here
    (minimal_record, "total_execution_time", "3", "'total_execution_time' has the wrong type"),
    (minimal_record, "used_seed", True, "'used_seed' has the wrong type"),  # a bool is no integer
    (minimal_record, "timestamp", "yesterday", "'timestamp' is not an ISO 8601 timestamp"),
    (_item_case, "stage", _ABSENT, "item 1: missing field 'stage'"),
    (_item_case, "stage", 1.0, "item 1: 'stage' has the wrong type"),
    (_item_case, "metadata", None, "item 1: 'metadata' is null"),
    (_item_case, "metadata", [], "item 1: 'metadata' has the wrong type"),
    (_item_case, "content", None, None),
    (_item_case, "execution_time", 0.5, None),
    (_item_case, "timestamp", 20251103, "item 1: 'timestamp' has the wrong type"),
])
def test_checker_branches(make, name, value, outcome):
    record = make(**({} if value is _ABSENT else {name: value})) if make is minimal_record else make(name, value)
    if make is minimal_record and value is _ABSENT:
        record.pop(name)
    if outcome is None:
        checked = check_record(record)
        where = checked["items"][0] if make is _item_case else checked
        assert where[name] == value
    else:
        with pytest.raises(InvalidRecord) as err:
            check_record(record)
        assert outcome in str(err.value)


def test_checker_fills_defaults_and_leaves_an_optional_field_without_one_absent():
    record = check_record(minimal_record())
    assert "used_seed" not in record  # only older files carry it
    item = record["items"][0]
    assert item["stage_iteration"] is None and item["execution_time"] is None and item["metadata"] == {}
    assert record["taxonomy_version"] == "1.0" and record["execution_mode"] is None


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


@pytest.mark.parametrize("number", ["18446744073709551615", "18446744073709551616", "-9223372036854775808",
                                    "-9223372036854775809", "1" + "0" * 30, "-" + "9" * 25, "1" + "0" * 400,
                                    "9" * 5000, "0", "-0", "7"])
def test_a_file_read_leniently_holds_the_integers_a_strict_read_gives(number):
    """Integers beyond 64 bits in a file that also needs the lenient read (a NaN): the values
    orjson's strict read gives (a float; null past the float range), so that every export can
    still write them (orjson refuses a bigger int: the CSV, JSON and XLSX exports broke)."""
    from execution_history.exporters.cells import metadata_text
    from execution_history.exporters.csv_writer import write_csv
    from execution_history.exporters.json_writer import dump_json

    template = json.dumps(minimal_record(items=[{"sequence_number": 1, "stage": 1, "item_type": "user_input_text",
                                                 "timestamp": "2025-11-03T20:52:40+00:00",
                                                 "metadata": {"seed": "N"}}]))
    strict = template.replace('"N"', number).replace('"x"', '"ok"')
    lenient_raw = template.replace('"N"', number).replace('"status"', '"total_execution_time": NaN, "status"')
    record = parse_record(lenient_raw.encode())
    try:
        expected = parse_record(strict.encode())["items"][0]["metadata"]["seed"]
    except InvalidRecord:  # past the float range: orjson refuses the file, the lenient read says null
        expected = None
    assert record["items"][0]["metadata"]["seed"] == expected
    assert type(record["items"][0]["metadata"]["seed"]) is type(expected)
    metadata_text(record["items"][0]["metadata"])
    dump_json(record)
    assert b"".join(write_csv([record], shape="items"))


# ---------------------------------------------------------------- one record shape


def test_field_lists_are_the_schemas_fields_in_file_order():
    run_fields = [name for name in RunRecordSchema().fields if name not in ("items", *records.OPTIONAL_RUN_FIELDS)]
    assert list(records.RUN_FIELDS) == run_fields
    assert set(RunRecordSchema().fields) == {*records.RUN_FIELDS, *records.OPTIONAL_RUN_FIELDS, "items"}
    assert list(records.ITEM_FIELDS) == list(records.RunItemSchema().fields)
    assert sorted(records.ITEM_ROW_FIELDS) == sorted(records.ITEM_FIELDS)
    assert set(records.SUMMARY_FIELDS) - {records.ITEMS_COUNT} <= set(records.RUN_FIELDS)
    assert set(records.ITEM_ROW_RUN_FIELDS) <= set(records.RUN_FIELDS)
    assert [n for n in records.EXPORT_RUN_FIELDS if n != records.ITEMS_COUNT] == list(records.RUN_FIELDS)


def test_build_record_keys_in_contract_order_and_duration_from_the_timestamps():
    header = {"execution_id": "exec_20251103_205239_896e054c", "config_name": "dada",
              "timestamp": "2025-11-03T21:52:39.250000+01:00", "user_id": "u7", "taxonomy_version": "1.1"}
    record = records.build_record(header, [], "completed", "2025-11-03T20:52:49+00:00")
    assert list(record) == [*records.RUN_FIELDS, "items"]
    assert record["total_execution_time"] == 9.75 and record["execution_mode"] is None
    running = records.build_record(header, [], "running", None)
    assert running["finished_at"] is None and running["total_execution_time"] is None
    early = records.build_record(header, [], "failed", "2025-11-03T20:00:00+00:00")  # a clock set back
    assert early["total_execution_time"] == 0.0


class RefusingStore:
    """A local store that refuses every save (the tracker keeps its journal) and remembers what it was given."""

    def __init__(self, store):
        self.root, self.offered = store.root, []

    def save(self, record):
        self.offered.append(dump_record(record))
        raise StorageError("Run could not be saved", reason="refused for the test")


def test_tracker_and_journal_recovery_write_the_same_bytes(store, tmp_path):
    from execution_history import ExecutionTracker, journal

    from .conftest import StepClock

    refusing = RefusingStore(store)
    with ExecutionTracker("stillepost", "eco", "kids", user_id="u7", store=refusing, journal_dir=tmp_path / "j",
                          clock=StepClock(dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc))) as run:
        run.log_user_input_text("Eine Blume 🌸", metadata={"lang": "de"})
        run.log_interception_iteration(1, "A flower", model_used="gpt-oss:20b", backend_used="ollama",
                                       execution_time=0.8)
        run.log_output_image(file_path="exports/media/flower.png", loop_iteration=1)
    assert len(refusing.offered) == 1  # finalize tried once, and the journal stayed
    assert journal.recover(store, tmp_path / "j") == [run.execution_id]
    assert store.read_bytes(run.execution_id) == refusing.offered[0]


def test_summary_of_a_record_is_what_the_list_answers(client, store, recorded_runs):
    listed = client.get("/api/runs?limit=100").get_json()["executions"]
    assert sorted(e["execution_id"] for e in listed) == sorted(recorded_runs)
    for entry in listed:
        assert list(entry) == [*records.SUMMARY_FIELDS, "last_activity_at", "stale"]
        assert {k: entry[k] for k in records.SUMMARY_FIELDS} == records.summary_of(store.load(entry["execution_id"]))
