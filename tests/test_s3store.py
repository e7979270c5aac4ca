"""S3Store and S3SideArea against a real S3 server (SeaweedFS): conditional puts, keys, side area, start-up."""
from __future__ import annotations

import datetime as dt
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app import create_app
from app.recovery import StoreStartupError
from execution_history import ExecutionTracker, RunAlreadyExists, RunNotFound, RunStore, StorageError, stores
from execution_history.records import dump_record
from execution_history.s3store import S3Store

from .conftest import StepClock, app_config, record_every_type, store_for
from .s3server import BUCKET


@pytest.fixture
def s3(s3_server, runs_dir):
    return store_for("s3", runs_dir)


def minimal(execution_id="exec_20250101_000000_0000abcd", **fields):
    return {"execution_id": execution_id, "config_name": "dada", "timestamp": "2025-01-01T00:00:00+00:00",
            "finished_at": "2025-01-01T00:00:01+00:00", "status": "completed", "execution_mode": None,
            "safety_level": None, "user_id": "anonymous", "session_id": "default",
            "total_execution_time": 1.0, "taxonomy_version": "1.1", "items": [], **fields}


def test_seaweedfs_honours_if_none_match_even_when_racing(s3):
    # The contract's "publishing never overwrites" rests on this: 16 writers, one key, one winner.
    barrier = threading.Barrier(16)

    def publish(n):
        barrier.wait()
        try:
            s3.save(minimal(config_name=f"writer{n}"))
            return n
        except RunAlreadyExists:
            return None

    with ThreadPoolExecutor(16) as pool:
        winners = [n for n in pool.map(publish, range(16)) if n is not None]
    assert len(winners) == 1
    assert s3.load("exec_20250101_000000_0000abcd")["config_name"] == f"writer{winners[0]}"


def test_records_have_the_same_bytes_and_key_as_on_disk(s3, runs_dir, tmp_path):
    local = RunStore(tmp_path / "local")
    for store in (local, s3):
        record_every_type(store)
    (local_id,), (s3_id,) = local.list_ids(), s3.list_ids()
    assert local.read_bytes(local_id).replace(local_id.encode(), b"ID") == \
        s3.read_bytes(s3_id).replace(s3_id.encode(), b"ID")
    key = f"{s3.prefix}/{s3_id}.json"
    assert s3.client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == s3.read_bytes(s3_id)


def test_tracker_takes_an_s3_url_as_data_dir(s3, monkeypatch, tmp_path):
    monkeypatch.setenv("RUN_HISTORY_JOURNAL_DIR", str(tmp_path / "journal"))
    with ExecutionTracker("by-url", data_dir=s3.url) as run:
        run.log_user_input_text("Blume")
    assert s3.load(run.execution_id)["items"][0]["content"] == "Blume"
    assert list((tmp_path / "journal").iterdir()) == []  # journal removed once published
    monkeypatch.setenv("RUN_HISTORY_DIR", s3.url)
    with ExecutionTracker("by-env") as run:
        pass
    assert s3.load(run.execution_id)["config_name"] == "by-env"


def test_listing_is_in_key_order_and_never_takes_side_keys_or_foreign_objects(s3):
    for stamp in ["20250301_000000", "20250101_000000", "20250201_000000"]:
        s3.save(minimal(f"exec_{stamp}_0000abcd"))
    s3.side.put("jobs/exec_20250101_000000_00000000.json", b"{}")
    s3.put_raw("notes.txt", b"x")
    s3.put_raw("sub/exec_20250101_000000_0000ffff.json", b"{}")
    s3.put_raw("exec_not_an_id.json", b"{}")
    ids = [f.execution_id for f in s3.iter_listing()]
    assert ids == sorted(ids) and len(ids) == 3
    assert [f.execution_id for f in s3.iter_listing(start_after="exec_20250101_000000_0000abcd")] == ids[1:]
    stats = s3.scan_stats()
    assert stats["total_records"] == 3 and stats["unreadable_records"] == 1
    assert stats["storage_dir"] == s3.url


def test_delete(s3):
    s3.save(minimal())
    assert s3.delete("exec_20250101_000000_0000abcd") is True
    assert s3.delete("exec_20250101_000000_0000abcd") is False
    assert s3.delete("../../etc") is False
    with pytest.raises(RunNotFound):
        s3.load("exec_20250101_000000_0000abcd")


def test_side_area_has_the_local_methods(s3, tmp_path):
    area = s3.side
    assert area.create("leases/a", b"1") is True
    assert area.create("leases/a", b"2") is False
    assert area.get("leases/a") == b"1"
    area.put("leases/a", b"3")
    assert area.get("leases/a") == b"3" and area.size("leases/a") == 1
    big = tmp_path / "big.bin"
    big.write_bytes(b"z" * 3_000_000)
    area.put_file("jobs/big.bin", big)
    with area.open("jobs/big.bin") as handle:
        assert handle.read() == big.read_bytes()
    assert area.list("jobs") == ["jobs/big.bin"] and area.list("leases") == ["leases/a"]
    assert area.delete("leases/a") is True and area.delete("leases/a") is False
    assert area.get("leases/a") is None and area.open("nothing") is None and area.size("nothing") is None
    with pytest.raises(ValueError):
        area.get("../escape")
    barrier = threading.Barrier(8)

    def create(n):
        barrier.wait()
        return area.create("leases/race", str(n).encode())

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(create, range(8))) == 1


def test_app_uses_the_s3_side_area(s3):
    app = create_app(app_config(s3))
    assert app.extensions["run_history"]["side"].base == f"{s3.prefix}/.side"


def test_missing_bucket_stops_the_app_and_creates_nothing(s3_server):
    config = app_config(S3Store("s3://no-such-bucket/p"))
    with pytest.raises(StoreStartupError, match="bucket does not exist.*No bucket is created"):
        create_app(config)
    assert "no-such-bucket" not in [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]


def test_refused_credentials_stop_the_app(s3, monkeypatch):
    import execution_history.s3store as s3store

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.setattr(s3store, "_clients", {})
    with pytest.raises(StoreStartupError, match="credentials refused"):
        create_app(app_config(s3))


def test_s3_needs_a_shared_secret_key(s3):
    config = {**app_config(s3), "RUN_HISTORY_SECRET_KEY": None}
    with pytest.raises(StoreStartupError, match="RUN_HISTORY_SECRET_KEY"):
        create_app(config)


def test_an_endpoint_that_does_not_answer_at_start_is_503_quickly_not_a_dead_server(monkeypatch):
    from .conftest import assert_error, free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    config = app_config(S3Store("s3://runs/p"))
    config["RUN_HISTORY_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    client = create_app(config).test_client()  # a worker restarted during an outage comes up
    response = client.get("/api/runs")
    assert_error(response, 503, "STORE_UNAVAILABLE")
    assert int(response.headers["Retry-After"]) > 0
    assert time.monotonic() - started < 30  # connect timeout and retries are bounded


def test_a_long_run_whose_key_sorts_before_seen_keys_is_listed_within_2s(s3):
    app = create_app(app_config(s3))
    client = app.test_client()
    old_start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=5)  # far past the lookback window
    long_run = ExecutionTracker("long", store=s3, clock=StepClock(old_start))
    with ExecutionTracker("newer", store=s3):
        pass
    client.get("/api/runs")  # the index has now seen a key later than the long run's
    assert client.get("/api/runs?status=completed").get_json()["total"] == 1
    long_run.finalize()
    deadline = time.monotonic() + 2
    while client.get("/api/runs?config=long&status=completed").get_json()["total"] != 1:
        assert time.monotonic() < deadline, "a run whose key sorts early was not listed within 2 s"
        time.sleep(0.05)


def test_deleted_record_leaves_the_other_hosts_index(s3, tmp_path):
    first, second = (create_app({**app_config(s3), "RUN_HISTORY_INDEX_DIR": str(tmp_path / f"i{n}")})
                     for n in (1, 2))
    with ExecutionTracker("doomed", store=s3) as run:
        pass
    for app in (first, second):
        app.test_client().get("/api/runs")
    assert s3.delete(run.execution_id)
    deadline = time.monotonic() + 2
    while second.test_client().get("/api/runs").get_json()["total"] != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_state_folder_is_per_store_and_user(s3, runs_dir):
    assert stores.state_dir(s3) != stores.state_dir(RunStore(runs_dir))
    assert stores.layout_for(s3).index.is_relative_to(stores.state_dir(s3))


def test_bytes_written_by_older_code_are_served_as_they_are(s3):
    legacy = {"execution_id": "exec_20251103_120000_0000abcd", "config_name": "dada",
              "timestamp": "2025-11-03T12:00:00", "status": "completed", "items": []}
    s3.put_raw("exec_20251103_120000_0000abcd.json", dump_record(legacy))
    client = create_app(app_config(s3)).test_client()
    assert client.get("/api/runs/exec_20251103_120000_0000abcd").get_json()["timestamp"] == "2025-11-03T12:00:00+00:00"


def test_bad_location_raises_storage_errors_not_boto_errors(s3):
    with pytest.raises(StorageError):
        S3Store("s3://no-such-bucket/x").check()


def test_a_run_in_progress_is_listed_and_shown_by_a_host_sharing_its_journal_folder(s3):
    client = create_app({**app_config(s3), "RUN_HISTORY_RUNNING_REFRESH": 0}).test_client()
    run = ExecutionTracker("live", store=s3)
    run.log_user_input_text("so far")
    assert client.get("/api/runs?status=running").get_json()["total"] == 1
    assert client.get(f"/api/runs/{run.execution_id}").get_json()["status"] == "running"
    run.finalize()
    assert s3.load(run.execution_id)["items"][0]["content"] == "so far"


def test_the_clients_timeouts_and_retries_are_the_documented_ones_or_the_variables(monkeypatch):
    from execution_history.s3store import client_config

    for name in ("RUN_HISTORY_S3_CONNECT_TIMEOUT", "RUN_HISTORY_S3_READ_TIMEOUT", "AWS_MAX_ATTEMPTS",
                 "AWS_RETRY_MODE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")  # no max_attempts from a user's ~/.aws/config
    config = client_config()
    # connect 2 s, read 5 s, one retry (two attempts in all), as README says
    assert (config.connect_timeout, config.read_timeout) == (2.0, 5.0)
    assert config.retries == {"total_max_attempts": 2, "mode": "standard"}
    monkeypatch.setenv("RUN_HISTORY_S3_CONNECT_TIMEOUT", "0.5")
    monkeypatch.setenv("RUN_HISTORY_S3_READ_TIMEOUT", "30")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    config = client_config()
    assert (config.connect_timeout, config.read_timeout) == (0.5, 30.0)
    assert config.retries == {"total_max_attempts": 4, "mode": "adaptive"}
    for bad in ("abc", "0", "-1", "inf", "nan"):
        monkeypatch.setenv("RUN_HISTORY_S3_READ_TIMEOUT", bad)
        with pytest.raises(ValueError, match="RUN_HISTORY_S3_READ_TIMEOUT must be a positive number"):
            client_config()
