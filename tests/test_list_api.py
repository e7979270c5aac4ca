"""GET /api/runs: every filter and sort against a brute-force computation, paging, bad parameters."""
import datetime as dt
import random
import re
import unicodedata
from urllib.parse import urlencode

import pytest

from execution_history import ExecutionTracker
from execution_history.filters import ORDER_BY
from execution_history.records import dump_record

from .conftest import HOSTILE, StepClock, assert_error, store_for, write_raw

#: Every test here runs on the local folder and on S3 (see conftest.pytest_generate_tests).
STORE_KINDS = ("local", "s3")

CONFIGS = ["dada", "stillepost", "bauhaus", "日本語", "café"]
WORDS = ["Blume", "Wiese", "café", "Ärger", "wind", "moon", "Straße", "naïve", "ocean", "robot"]
MODELS = ["gpt-oss:20b", "llama-guard3:8b", "sd3.5-large", None]
TYPES = ["user_input_text", "translation_result", "interception_iteration", "output_text",
         "output_image", "stage3_safety_check", "stage1_blocked"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """One data folder for the whole module: its tests only read."""
    return tmp_path_factory.mktemp("varied") / "pipeline_runs"


@pytest.fixture(scope="module")
def varied_runs(runs_dir, store_kind):
    """90 runs over ten days with every field varied, plus one legacy file with a naive timestamp."""
    store = store_for(store_kind, runs_dir)
    rng = random.Random(42)
    base = dt.datetime(2025, 11, 1, tzinfo=dt.timezone.utc)
    for n in range(90):
        # several runs share a start second (ties) and some share a day
        start = base + dt.timedelta(hours=rng.choice(range(0, 240, 7)), seconds=rng.choice([0, 0, 30]))
        run = ExecutionTracker(rng.choice(CONFIGS), rng.choice(["eco", "fast", None]),
                               rng.choice(["kids", "youth", "adult"]), user_id=rng.choice(["u1", "u2", "anonymous"]),
                               session_id=rng.choice(["s1", "s2"]), store=store, clock=StepClock(start))
        for _ in range(rng.randint(0, 6)):
            words = " ".join(rng.sample(WORDS, 3))
            run.log(rng.choice(TYPES), words if rng.random() < 0.9 else None, model_used=rng.choice(MODELS),
                    stage_iteration=1)
        if n % 15 == 0:
            run.log_output_text(HOSTILE["rtl"] + " " + HOSTILE["emoji"])
        run.finalize(rng.choice(["completed", "completed", "blocked", "failed"]))
    legacy = {"execution_id": "exec_20251103_120000_0000abcd", "config_name": "dada",
              "timestamp": "2025-11-03T12:00:00", "status": "completed", "items": [
                  {"sequence_number": 1, "stage": 1, "item_type": "user_input_text",
                   "timestamp": "2025-11-03T12:00:01", "content": "legacy Blume"}]}
    write_raw(store, "exec_20251103_120000_0000abcd.json", dump_record(legacy))
    return [store.load(i) for i in store.list_ids()]


def fold(text):
    """Case- and accent-insensitive words, as the index's tokenizer sees them."""
    text = unicodedata.normalize("NFKD", text.casefold())
    return re.findall(r"\w+", "".join(ch for ch in text if not unicodedata.combining(ch)))


def ts(value):
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def matches_q(record, q):
    items = [fold(item["content"] or "") for item in record["items"]]
    words = set().union(*items) if items else set()
    for phrase, word in re.findall(r'"([^"]*)"|(\S+)', q):
        tokens = fold(phrase or word)
        if len(tokens) == 1 and not phrase:
            if tokens[0] not in words:
                return False
        elif not any(tokens == toks[i:i + len(tokens)] for toks in items for i in range(len(toks))):
            return False
    return True


def brute_force(records, params):
    """The runs *params* select, in their order, computed the slow obvious way."""
    day = lambda d: dt.datetime.combine(dt.date.fromisoformat(d), dt.time(), dt.timezone.utc)
    selected = []
    for r in records:
        start = ts(r["timestamp"])
        checks = {
            "config": lambda v: r["config_name"] == v,
            "user_id": lambda v: r["user_id"] == v, "session_id": lambda v: r["session_id"] == v,
            "execution_mode": lambda v: r["execution_mode"] == v,
            "safety_level": lambda v: r["safety_level"] == v, "status": lambda v: r["status"] == v,
            "item_type": lambda v: any(i["item_type"] == v for i in r["items"]),
            "model": lambda v: any(i["model_used"] == v for i in r["items"]),
            "date": lambda v: day(v) <= start < day(v) + dt.timedelta(days=1),
            "date_from": lambda v: start >= (day(v) if len(v) == 10 else ts(v)),
            "date_to": lambda v: start < day(v) + dt.timedelta(days=1) if len(v) == 10 else start <= ts(v),
            "q": lambda v: matches_q(r, v),
            "ids": lambda v: r["execution_id"] in v.split(","),
        }
        if all(checks[k](v) for k, v in params.items() if k in checks):
            selected.append(r)
    order_by = params.get("order_by", "timestamp")
    key = {"timestamp": lambda r: ts(r["timestamp"]), "config_name": lambda r: r["config_name"],
           "items_count": lambda r: len(r["items"]),
           # SQLite sorts NULL first
           "total_execution_time": lambda r: (r["total_execution_time"] is not None, r["total_execution_time"] or 0),
           }[order_by]
    reverse = params.get("order", "desc") == "desc"
    return [r["execution_id"] for r in sorted(selected, key=lambda r: (key(r), r["execution_id"]), reverse=reverse)]


def fetch_all(client, params, limit=7):
    """Every page of a listing, following offsets; checks the page arithmetic on the way."""
    ids, offset = [], 0
    while True:
        response = client.get("/api/runs?" + urlencode({**params, "limit": limit, "offset": offset}))
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["returned"] == len(body["executions"]) <= limit
        assert int(response.headers["X-Total-Count"]) == body["total"]
        ids += [e["execution_id"] for e in body["executions"]]
        offset += limit
        if offset >= body["total"]:
            assert ids and len(ids) == body["total"] or body["total"] == 0
            return ids, body


FILTERS = [
    {}, {"config": "dada"}, {"config": "日本語"}, {"config": "café"}, {"user_id": "u1"}, {"session_id": "s2"},
    {"execution_mode": "eco"}, {"safety_level": "kids"}, {"status": "blocked"}, {"status": "failed"},
    {"item_type": "output_image"}, {"item_type": "stage1_blocked"}, {"model": "sd3.5-large"},
    {"date": "2025-11-03"}, {"date_from": "2025-11-05"}, {"date_to": "2025-11-04"},
    {"date_from": "2025-11-03T12:00:00", "date_to": "2025-11-06T06:30:00+00:00"},
    {"date_from": "2025-11-03T13:00:00+01:00"},
    {"q": "blume"}, {"q": "Blume WIESE"}, {"q": "cafe"}, {"q": "ärger strasse"}, {"q": "naive"},
    {"q": '"wind moon"'}, {"q": "مرحبا"}, {"q": "legacy"},
    {"config": "dada", "status": "completed", "q": "blume"},
    {"user_id": "u2", "item_type": "output_text", "date_from": "2025-11-02"},
    {"config": "nothing-like-this"},
]


@pytest.mark.parametrize("params", FILTERS, ids=lambda p: urlencode(p) or "all")
def test_filters_match_brute_force(client, varied_runs, params):
    ids, body = fetch_all(client, params)
    assert ids == brute_force(varied_runs, params)
    assert body["filters"]["config"] == params.get("config")
    echoed = {k: v for k, v in body["filters"].items() if v is not None}
    assert set(echoed) == set(params)
    for key, value in params.items():  # datetimes are echoed as understood: with their UTC offset
        assert echoed[key] == value if len(value) != 19 else ts(echoed[key]) == ts(value)


def test_ids_filter(client, varied_runs):
    wanted = [varied_runs[3]["execution_id"], varied_runs[7]["execution_id"], "exec_20990101_000000_00000000"]
    ids, body = fetch_all(client, {"ids": ",".join(wanted)})
    assert ids == brute_force(varied_runs, {"ids": ",".join(wanted)}) and len(ids) == 2
    assert body["filters"]["ids"] == wanted


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("order_by", ORDER_BY)
def test_sorting_and_paging_never_repeat_or_skip(client, varied_runs, order_by, order):
    params = {"order_by": order_by, "order": order}
    ids, body = fetch_all(client, params, limit=11)
    assert ids == brute_force(varied_runs, params)
    assert len(set(ids)) == len(ids) == len(varied_runs) == body["total"]


def test_summary_fields(client, varied_runs):
    body = client.get("/api/runs?limit=100").get_json()
    by_id = {r["execution_id"]: r for r in varied_runs}
    for summary in body["executions"]:
        record = by_id[summary["execution_id"]]
        expected = {**record, "items_count": len(record["items"]), "last_activity_at": None, "stale": False}
        assert summary == {k: expected[k] for k in summary}
        assert list(summary) == ["execution_id", "config_name", "timestamp", "status", "execution_mode",
                                 "safety_level", "total_execution_time", "items_count", "user_id",
                                 "session_id", "taxonomy_version", "last_activity_at", "stale"]
    legacy = next(e for e in body["executions"] if e["execution_id"] == "exec_20251103_120000_0000abcd")
    assert legacy["timestamp"] == "2025-11-03T12:00:00+00:00"


def test_link_header_keeps_filters(client, varied_runs):
    response = client.get("/api/runs?config=dada&limit=2&offset=2&empty=")
    assert response.status_code == 400  # unknown even when empty
    response = client.get("/api/runs?config=dada&limit=2&offset=2&user_id=")
    links = dict((rel, url) for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', response.headers["Link"]))
    assert set(links) == {"next", "prev"}
    assert "config=dada" in links["next"] and "offset=4" in links["next"] and "limit=2" in links["next"]
    assert "offset=0" in links["prev"] and "user_id" not in links["next"]
    next_page = client.get(links["next"].replace("http://localhost", "")).get_json()
    assert next_page["offset"] == 4 and next_page["filters"]["config"] == "dada"
    last = client.get("/api/runs?config=dada&limit=100").headers.get("Link")
    assert last is None


def test_empty_values_count_as_absent(client, varied_runs):
    body = client.get("/api/runs?config=&limit=&offset=&q=&order=").get_json()
    assert body["total"] == len(varied_runs) and body["limit"] == 20 and body["offset"] == 0


@pytest.mark.parametrize("query, parameter, code", [
    ("limit=abc", "limit", "INVALID_PARAMETER"), ("limit=0", "limit", "INVALID_PARAMETER"),
    ("limit=101", "limit", "INVALID_PARAMETER"), ("limit=1.5", "limit", "INVALID_PARAMETER"),
    ("offset=-1", "offset", "INVALID_PARAMETER"), ("offset=x", "offset", "INVALID_PARAMETER"),
    ("date=2025-13-45", "date", "INVALID_PARAMETER"), ("date=yesterday", "date", "INVALID_PARAMETER"),
    ("date_from=2025-02-30", "date_from", "INVALID_PARAMETER"), ("date_to=soon", "date_to", "INVALID_PARAMETER"),
    ("order_by=password", "order_by", "INVALID_PARAMETER"), ("order=up", "order", "INVALID_PARAMETER"),
    ("status=weird", "status", "INVALID_PARAMETER"), ("ids=exec_1", "ids", "INVALID_PARAMETER"),
    ("ids=exec_../x", "ids", "INVALID_PARAMETER"), ("q=%22%22", "q", "INVALID_PARAMETER"),
    ("q=" + "a" * 501, "q", "INVALID_PARAMETER"), ("config=a&config=b", "config", "INVALID_PARAMETER"),
    ("password=1", "password", "UNKNOWN_PARAMETER"), ("format=csv", "format", "UNKNOWN_PARAMETER"),
])
def test_bad_parameters_are_400_naming_the_parameter(client, query, parameter, code):
    body = assert_error(client.get(f"/api/runs?{query}"), 400, code)
    assert body["parameter"] == parameter
    assert body["allowed"]


def test_q_is_never_fts_syntax(client, varied_runs):
    for hostile in ['blume OR wiese', 'NEAR(a b)', 'col:blume', '*', '"unbalanced', "a AND", "-blume", "^x"]:
        response = client.get("/api/runs?" + urlencode({"q": hostile}))
        assert response.status_code in (200, 400), hostile
        if response.status_code == 200:
            assert [e["execution_id"] for e in response.get_json()["executions"]] == \
                brute_force(varied_runs, {"q": hostile})[:20]
