"""Data lifecycle: delete (API, page, CLI), prune and retention, through gunicorn where it counts."""
import csv
import dataclasses
import datetime as dt
import io
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from app import create_app
from app.auth import TokenStore
from execution_history import ExecutionTracker, RunNotFound, RunStore
from execution_history.filters import RunQuery
from execution_history.index import RunIndex
from execution_history.lifecycle import LEASE_KEY, PruneCriteria, Retention, delete_run, prune, take_lease
from execution_history.side import LocalSideArea

from .conftest import LiveServer, StepClock, assert_error, store_for

NOW = dt.datetime.now(dt.timezone.utc)


# ---------------------------------------------------------------- helpers


@dataclasses.dataclass
class Backend:
    """A record store as the server and the test see it (S3 joins as another param later)."""

    name: str
    store: RunStore
    env: dict

    def has(self, execution_id: str) -> bool:
        return execution_id in self.store.list_ids()


@pytest.fixture(params=["local", "s3"])
def backend(request, runs_dir):
    if request.param == "local":
        return Backend("local", RunStore(runs_dir), {"RUN_HISTORY_DIR": str(runs_dir)})
    server = request.getfixturevalue("s3_server")
    store = store_for("s3", runs_dir)
    return Backend("s3", store, {**server.env(), "RUN_HISTORY_DIR": str(store.root),
                                 "RUN_HISTORY_SECRET_KEY": "test-secret-shared-by-every-host"})


@pytest.fixture
def tokens(tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    return {"admin": store.create("root", "admin"), "alice": store.create("alice", "researcher"),
            "path": store.path}


def record_run(store, config, started, user="alice", session="s1", status="completed", text="a flower",
               files=()):
    """One finished run that started at *started*, written by the real tracker."""
    with ExecutionTracker(config, "eco", "kids", user_id=user, session_id=session, store=store,
                          clock=StepClock(started)) as run:
        run.log_user_input_text(text)
        for path in files:
            run.log_output_image(file_path=path, loop_iteration=1)
        if status != "completed":
            run.finalize(status)
    return run.execution_id


class Http:
    """A tiny client for a live server: bearer token or a page session (cookies by hand,
    since the session cookie is Secure and urllib keeps those for https only)."""

    def __init__(self, server, token=None):
        self.server, self.token, self.cookies = server, token, {}

    def __call__(self, method, path, data=None):
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if data is not None:
            body = urllib.parse.urlencode(data).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(self.server.url + path, data=body, method=method, headers=headers)
        opener = urllib.request.build_opener(NoRedirect)
        try:
            response = opener.open(request, timeout=30)
        except urllib.error.HTTPError as err:
            response = err
        with response:
            for header in response.headers.get_all("Set-Cookie") or []:
                name, _, rest = header.partition("=")
                self.cookies[name] = rest.split(";", 1)[0]
            return response.status, response.headers, response.read()

    def sign_in(self, token):
        status, _, page = self("GET", "/login")
        csrf = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()
        status, _, _ = self("POST", "/login", {"token": token, "csrf": csrf})
        assert status == 302
        return self


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def error_code(status_body):
    status, headers, body = status_body
    assert headers["Content-Type"].startswith("application/json")
    parsed = json.loads(body)
    assert parsed["request_id"] == headers["X-Request-ID"] and parsed["error"]
    return status, parsed["code"]


def listed(http, query=""):
    status, _, body = http("GET", f"/api/runs?limit=100{query}")
    assert status == 200
    return sorted(e["execution_id"] for e in json.loads(body)["executions"])


def audit_lines(path, *events):
    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line["event"] in events]


@pytest.fixture
def served(backend, tokens, tmp_path):
    """Three runs (two share a media file, one names a file outside the media dir), and gunicorn."""
    media = tmp_path / "media"
    media.mkdir()
    for name in ("only_a.png", "shared.png", "only_b.png"):
        (media / name).write_bytes(b"\x89PNG " + name.encode())
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"\x89PNG outside")
    start = NOW - dt.timedelta(days=3)
    runs = {
        "a": record_run(backend.store, "dada", start, text="meadow flower", files=["only_a.png", "shared.png",
                                                                                    str(outside), "../outside.png"]),
        "b": record_run(backend.store, "dada", start + dt.timedelta(hours=1), files=["shared.png", "only_b.png"]),
        "c": record_run(backend.store, "stillepost", start + dt.timedelta(hours=2), user="bob", text="meadow"),
    }
    audit = tmp_path / "audit.log"
    server = LiveServer(backend.store.root, tmp_path / "gunicorn.log", extra_env={
        **backend.env, "RUN_HISTORY_TOKENS": str(tokens["path"]), "RUN_HISTORY_AUDIT_LOG": str(audit),
        "RUN_HISTORY_MEDIA_DIR": str(media)})
    yield {"server": server, "runs": runs, "media": media, "outside": outside, "audit": audit,
           "admin": Http(server, tokens["admin"]), "alice": Http(server, tokens["alice"])}
    server.stop()


# ---------------------------------------------------------------- delete


def test_an_admins_delete_removes_the_run_from_every_view_and_the_store(served, backend, tokens):
    admin, runs = served["admin"], served["runs"]
    gone = runs["a"]
    assert listed(admin) == sorted(runs.values()) and listed(admin, "&q=meadow") == sorted([gone, runs["c"]])

    status, headers, body = admin("DELETE", f"/api/runs/{gone}")
    assert (status, body) == (204, b"")

    assert not backend.has(gone) and backend.has(runs["b"])
    assert listed(admin) == sorted([runs["b"], runs["c"]])
    assert listed(admin, "&q=meadow") == [runs["c"]]
    assert listed(admin, f"&ids={gone}") == []
    stats = json.loads(admin("GET", "/api/runs/stats")[2])
    assert stats["total_records"] == 2 and stats["by_config"] == {"dada": 1, "stillepost": 1}
    assert error_code(admin("GET", f"/api/runs/{gone}")) == (404, "NOT_FOUND")
    assert error_code(admin("GET", f"/api/runs/{gone}/export/json")) == (404, "NOT_FOUND")
    bulk = admin("GET", "/api/runs/export/jsonl")
    assert [json.loads(line)["execution_id"] for line in bulk[2].splitlines()] == [runs["c"], runs["b"]]
    rows = list(csv.DictReader(io.StringIO(admin("GET", "/api/runs/export/csv")[2].decode(), newline="")))
    assert [row["execution_id"] for row in rows] == [runs["c"], runs["b"]]
    page = Http(served["server"]).sign_in(tokens["admin"])
    assert page("GET", f"/runs/{gone}")[0] == 404 and page("GET", f"/runs/{runs['b']}")[0] == 200
    assert error_code(admin("DELETE", f"/api/runs/{gone}")) == (404, "NOT_FOUND")  # once only

    # without media=true every media file stays
    assert sorted(p.name for p in served["media"].iterdir()) == ["only_a.png", "only_b.png", "shared.png"]
    [line, again] = audit_lines(served["audit"], "delete")
    assert (line["user"], line["role"], line["execution_id"], line["config"], line["status"]) == \
        ("root", "admin", gone, "dada", 204)
    assert (again["execution_id"], again["status"]) == (gone, 404)


def test_deletes_are_refused_to_researchers_and_for_runs_in_progress(served, backend):
    admin, alice, runs = served["admin"], served["alice"], served["runs"]
    assert error_code(alice("DELETE", f"/api/runs/{runs['a']}")) == (403, "FORBIDDEN")  # even her own run
    assert error_code(alice("DELETE", f"/api/runs/{runs['c']}")) == (403, "FORBIDDEN")
    assert error_code(Http(served["server"])("DELETE", f"/api/runs/{runs['a']}")) == (401, "UNAUTHORIZED")
    assert error_code(admin("DELETE", "/api/runs/exec_20990101_000000_00000000")) == (404, "NOT_FOUND")
    assert error_code(admin("DELETE", "/api/runs/exec_..%2Fx")) == (404, "NOT_FOUND")
    assert error_code(admin("DELETE", f"/api/runs/{runs['a']}?media=perhaps")) == (400, "INVALID_PARAMETER")
    assert error_code(admin("DELETE", f"/api/runs/{runs['a']}?force=1")) == (400, "UNKNOWN_PARAMETER")
    with ExecutionTracker("live", user_id="alice", store=backend.store) as run:
        run.log_user_input_text("still typing")
        assert error_code(admin("DELETE", f"/api/runs/{run.execution_id}")) == (409, "RUN_IN_PROGRESS")
    assert backend.has(run.execution_id)  # it finished, untouched
    assert sorted(backend.store.list_ids()) == sorted([*runs.values(), run.execution_id])
    refused = audit_lines(served["audit"], "delete")
    assert [(line["user"], line["status"]) for line in refused] == [
        ("alice", 403), ("alice", 403), (None, 401), ("root", 404), ("root", 404), ("root", 400), ("root", 400),
        ("root", 409)]


def test_media_true_deletes_only_the_files_no_other_run_names(served, backend):
    admin, runs, media = served["admin"], served["runs"], served["media"]
    assert admin("DELETE", f"/api/runs/{runs['a']}?media=true")[0] == 204
    # only_a.png went; shared.png is named by run b; the file outside the media dir is never touched
    assert sorted(p.name for p in media.iterdir()) == ["only_b.png", "shared.png"]
    assert served["outside"].read_bytes() == b"\x89PNG outside"
    assert admin("DELETE", f"/api/runs/{runs['b']}?media=true")[0] == 204
    assert sorted(p.name for p in media.iterdir()) == []
    assert [line["media_deleted"] for line in audit_lines(served["audit"], "delete")] == [1, 2]


def test_the_run_page_has_a_confirmed_delete_button_for_admins(served, backend, tokens):
    runs = served["runs"]
    page = Http(served["server"]).sign_in(tokens["admin"])
    html = page("GET", f"/runs/{runs['b']}")[2].decode()
    form = re.search(r'<form class="delete-run" method="post" action="([^"]+)">(.*?)</form>', html, re.S)
    assert form.group(1) == f"/runs/{runs['b']}/delete" and 'name="confirm" value="yes" required' in form.group(2)
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.group(2)).group(1)
    assert page("POST", form.group(1), {"csrf": csrf})[0] == 400  # not confirmed
    assert page("POST", form.group(1), {"confirm": "yes"})[0] == 403  # no CSRF token
    assert backend.has(runs["b"])
    status, headers, _ = page("POST", form.group(1), {"csrf": csrf, "confirm": "yes"})
    assert (status, headers["Location"]) == (303, "/")
    assert not backend.has(runs["b"]) and page("GET", f"/runs/{runs['b']}")[0] == 404
    researcher = Http(served["server"]).sign_in(tokens["alice"])
    html = researcher("GET", f"/runs/{runs['a']}")[2].decode()
    assert "delete-run" not in html
    csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # the sign-out form's
    assert researcher("POST", f"/runs/{runs['a']}/delete", {"csrf": csrf, "confirm": "yes"})[0] == 403
    assert backend.has(runs["a"])


def test_with_access_control_off_deletes_are_refused(client, store):
    execution_id = record_run(store, "dada", NOW)
    assert_error(client.delete(f"/api/runs/{execution_id}"), 403, "FORBIDDEN")
    assert execution_id in store.list_ids()
    assert "delete-run" not in client.get(f"/runs/{execution_id}").get_data(as_text=True)


def test_cli_delete_with_media(runs_dir, store, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "x.png").write_bytes(b"png")
    execution_id = record_run(store, "dada", NOW, files=["x.png"])
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(runs_dir), "RUN_HISTORY_MEDIA_DIR": str(media),
                      "RUN_HISTORY_AUDIT_LOG": str(tmp_path / "audit.log")})
    result = app.test_cli_runner().invoke(args=["runs", "delete", execution_id, "--media"])
    assert result.exit_code == 0, result.output
    assert store.list_ids() == [] and list(media.iterdir()) == []
    shown = app.test_cli_runner().invoke(args=["runs", "audit", "--event", "delete"])
    [line] = [json.loads(text) for text in shown.output.splitlines()]
    assert (line["event"], line["role"], line["execution_id"], line["config"], line["media_deleted"]) == \
        ("delete", "cli", execution_id, "dada", 1)
    assert app.test_client().get("/api/runs").get_json()["total"] == 0
    [line] = audit_lines(tmp_path / "audit.log", "delete")
    assert (line["execution_id"], line["role"], line["media_deleted"]) == (execution_id, "cli", 1)
    result = app.test_cli_runner().invoke(args=["runs", "delete", execution_id])
    assert result.exit_code == 1 and "NOT_FOUND" in result.output


# ---------------------------------------------------------------- prune and retention


@pytest.fixture
def aged(store):
    """Finished runs that started 100, 100, 40 and 1 days ago."""
    return {
        "old_dada": record_run(store, "dada", NOW - dt.timedelta(days=100)),
        "old_stille_failed": record_run(store, "stillepost", NOW - dt.timedelta(days=100, hours=-1), status="failed"),
        "mid_dada_failed": record_run(store, "dada", NOW - dt.timedelta(days=40), status="failed"),
        "new_dada": record_run(store, "dada", NOW - dt.timedelta(days=1)),
    }


def flask_cli(runs_dir, audit, *args):
    """The real `flask --app wsgi runs ...` in a process of its own."""
    import os
    import subprocess
    import sys

    from .conftest import PROJECT

    env = {**os.environ, "RUN_HISTORY_DIR": str(runs_dir), "RUN_HISTORY_AUDIT_LOG": str(audit)}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "runs", *args], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout.splitlines(), done.stderr


def test_prune_deletes_exactly_the_selected_finished_runs(runs_dir, store, aged, tmp_path):
    audit = tmp_path / "audit.log"
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log", extra_env={"RUN_HISTORY_AUDIT_LOG": str(audit)})
    http = Http(server)
    try:
        with ExecutionTracker("live", store=store, clock=StepClock(NOW - dt.timedelta(days=200))) as running:
            running.log_user_input_text("still typing")
            code, out, err = flask_cli(runs_dir, audit, "prune", "--older-than", "30d", "--dry-run")
            assert code == 0, err
            assert out == [aged["old_dada"], aged["old_stille_failed"], aged["mid_dada_failed"],
                           "Would delete 3 run(s)."]
            assert len(store.list_ids()) == 4 and not audit.exists()  # a dry run deletes and audits nothing

            code, out, err = flask_cli(runs_dir, audit, "prune", "--older-than", "30d", "--config", "dada",
                                       "--status", "failed")
            assert (code, out) == (0, [aged["mid_dada_failed"], "Deleted 1 run(s)."]), err
            assert listed(http) == sorted([aged["old_dada"], aged["old_stille_failed"], aged["new_dada"],
                                           running.execution_id])

            code, out, err = flask_cli(runs_dir, audit, "prune", "--older-than", "90d")
            assert (code, out) == (0, [aged["old_dada"], aged["old_stille_failed"], "Deleted 2 run(s)."]), err
            assert listed(http) == sorted([aged["new_dada"], running.execution_id])  # in progress: never pruned
        assert listed(http, "&status=completed") == sorted([aged["new_dada"], running.execution_id])
        assert json.loads(http("GET", "/api/runs/stats")[2])["total_records"] == 2
        assert sorted(store.list_ids()) == sorted([aged["new_dada"], running.execution_id])
        lines = audit_lines(audit, "prune")
        assert [line["execution_id"] for line in lines] == [aged["mid_dada_failed"], aged["old_dada"],
                                                            aged["old_stille_failed"]]
        assert lines[0]["filters"] == {"older_than_days": 30, "config": "dada", "status": "failed"}
        assert [(line["role"], line["config"]) for line in lines] == [("cli", "dada"), ("cli", "dada"),
                                                                      ("cli", "stillepost")]
        # runs audit shows them
        code, out, _ = flask_cli(runs_dir, audit, "audit", "--event", "prune")
        assert [json.loads(line) for line in out] == lines
        assert flask_cli(runs_dir, audit, "audit", "--event", "delete")[1] == []
    finally:
        server.stop()


@pytest.mark.parametrize("bad", ["0d", "-3d", "abc", "30 days", "٣d"])
def test_prune_refuses_a_bad_age(app, aged, bad):
    result = app.test_cli_runner().invoke(args=["runs", "prune", "--older-than", bad])
    assert result.exit_code == 2 and "--older-than" in result.output
    assert len(app.extensions["run_history"]["store"].list_ids()) == 4


def test_retention_prunes_when_gunicorn_starts(runs_dir, store, aged, tmp_path):
    import time

    audit = tmp_path / "audit.log"
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log", extra_env={
        "RUN_HISTORY_AUDIT_LOG": str(audit), "RUN_HISTORY_RETENTION_DAYS": "30"})
    try:
        side = LocalSideArea(runs_dir / ".side")
        # a wait for the first prune to finish (its runs gone, its lease given back), not a speed check
        deadline = time.monotonic() + 60
        while (len(store.list_ids()) > 1 or side.get(LEASE_KEY) is not None) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.list_ids() == [aged["new_dada"]]
        assert listed(Http(server)) == [aged["new_dada"]]
        lines = audit_lines(audit, "prune")
        assert sorted(line["execution_id"] for line in lines) == sorted(
            [aged["old_dada"], aged["old_stille_failed"], aged["mid_dada_failed"]])  # each once, by one worker
        assert {(line["user"], line["role"]) for line in lines} == {("retention", "system")}
        # (the lease was given back: the wait above ended; another worker may hold it now, briefly)
    finally:
        server.stop()


@pytest.mark.parametrize("side_kind", ["local", "s3"])
def test_the_lease_lets_one_process_prune_and_is_taken_over_when_expired(store, aged, tmp_path, side_kind, request):
    if side_kind == "local":
        side = LocalSideArea(tmp_path / "side")
    else:  # the lease of several hosts sharing an S3 store: its side area on SeaweedFS
        from execution_history.s3store import S3SideArea

        from .s3server import BUCKET

        request.getfixturevalue("s3_server")  # its credentials first
        s3_store = store_for("s3", tmp_path / "lease")
        side = S3SideArea(s3_store.client, BUCKET, f"{s3_store.prefix}/.side")
    assert take_lease(side, "host-a", NOW, seconds=60)
    assert not take_lease(side, "host-b", NOW + dt.timedelta(seconds=59), seconds=60)
    assert json.loads(side.get(LEASE_KEY))["holder"] == "host-a"
    assert take_lease(side, "host-b", NOW + dt.timedelta(seconds=61), seconds=60)  # host-a died
    assert json.loads(side.get(LEASE_KEY))["holder"] == "host-b"
    side.put(LEASE_KEY, b"not json")
    assert take_lease(side, "host-c", NOW)

    index = RunIndex(store)
    retention = Retention(store, index, side, 30)
    assert retention.run_once() is None and len(store.list_ids()) == 4  # host-c holds it
    side.delete(LEASE_KEY)
    assert retention.run_once() == [aged["old_dada"], aged["old_stille_failed"], aged["mid_dada_failed"]]
    assert store.list_ids() == [aged["new_dada"]] and side.get(LEASE_KEY) is None
    with pytest.raises(ValueError):
        Retention(store, index, side, 0)


def test_prune_with_a_running_status_prunes_nothing(store, aged):
    assert prune(store, RunIndex(store), PruneCriteria(1, status="running")) == []
    assert len(store.list_ids()) == 4


def test_store_delete_and_index_forget(store, aged):
    index = RunIndex(store)
    assert index.count(RunQuery()) == 4
    gone = aged["old_dada"]
    # forget alone drops the rows at once (the file still there shows it is the index's doing)
    index.forget([gone, "exec_20990101_000000_00000000"])  # unknown ids are fine
    assert index.count(RunQuery()) == 3 and gone not in index.iter_ids(RunQuery(limit=None))
    assert store.delete(gone) is True and store.delete(gone) is False
    assert gone not in store.list_ids()
    with pytest.raises(RunNotFound):
        store.delete("exec_../x")


def test_a_retention_below_one_day_stops_the_app(runs_dir):
    with pytest.raises(ValueError, match="RUN_HISTORY_RETENTION_DAYS"):
        create_app({"TESTING": True, "RUN_HISTORY_DIR": str(runs_dir), "RUN_HISTORY_RETENTION_DAYS": 0})


class Stop(BaseException):
    """Ends a retention loop in a test (the loop carries on after any Exception)."""


def test_retention_prunes_again_every_interval(store, aged, tmp_path):
    naps = []

    def sleep(seconds):
        naps.append(seconds)
        if len(naps) == 1:  # an hour on, a run has grown old enough
            record_run(store, "dada", NOW - dt.timedelta(days=31))
            return
        raise Stop

    retention = Retention(store, RunIndex(store), LocalSideArea(tmp_path / "side"), 30, sleep=sleep)
    with pytest.raises(Stop):
        retention._loop()
    assert naps == [3600.0, 3600.0]
    assert store.list_ids() == [aged["new_dada"]]  # the three old ones at first, the one grown old after


def test_a_leftover_journal_cannot_bring_a_deleted_run_back(store):
    from execution_history import journal

    with ExecutionTracker("dada", store=store) as run:
        run.log_user_input_text("a flower")
        leftover = journal.journal_path(store, run.execution_id).read_bytes()
    # the pipeline died after publishing, before removing its journal
    path = journal.journal_path(store, run.execution_id)
    path.write_bytes(leftover)
    set_aside = path.with_name(f".bad-{path.name}")  # what recovery keeps of a journal it could not read
    set_aside.write_bytes(leftover)
    deleted = delete_run(store, RunIndex(store), run.execution_id)
    assert deleted.config_name == "dada" and not path.exists() and not set_aside.exists()
    assert journal.recover(store) == [] and store.list_ids() == []


def test_media_true_deletes_bucket_media_only_that_run_names(s3_server, runs_dir, tokens, tmp_path):
    """An S3 store with media in its bucket (<prefix>/media/<file_path>, SeaweedFS, gunicorn):
    ?media=true deletes the objects only the run names, never a shared one or one outside the media prefix."""
    from .s3server import BUCKET

    store = store_for("s3", runs_dir)
    client = store.client
    media_prefix = f"{store.prefix}/media"
    for name in ("only_a.png", "shared.png", "only_b.png"):
        client.put_object(Bucket=BUCKET, Key=f"{media_prefix}/exports/media/{name}", Body=b"\x89PNG " + name.encode())
    client.put_object(Bucket=BUCKET, Key=f"{store.prefix}/outside.png", Body=b"\x89PNG outside")
    start = NOW - dt.timedelta(days=3)
    run_a = record_run(store, "dada", start, files=["exports/media/only_a.png", "exports/media/shared.png",
                                                    "../outside.png", f"s3://{BUCKET}/{store.prefix}/outside.png"])
    run_b = record_run(store, "dada", start + dt.timedelta(hours=1),
                       files=["exports/media/shared.png", f"s3://{BUCKET}/{media_prefix}/exports/media/only_b.png"])
    local_media = tmp_path / "local-media"  # empty: every file is in the bucket
    local_media.mkdir()
    audit = tmp_path / "audit.log"
    server = LiveServer(store.root, tmp_path / "gunicorn.log", extra_env={
        **s3_server.env(), "RUN_HISTORY_DIR": str(store.root), "RUN_HISTORY_SECRET_KEY": "test-secret-s3-media",
        "RUN_HISTORY_TOKENS": str(tokens["path"]), "RUN_HISTORY_AUDIT_LOG": str(audit),
        "RUN_HISTORY_MEDIA_DIR": str(local_media)})
    try:
        admin = Http(server, tokens["admin"])

        def media_keys():
            listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{media_prefix}/").get("Contents", [])
            return sorted(obj["Key"].rsplit("/", 1)[1] for obj in listed)

        assert media_keys() == ["only_a.png", "only_b.png", "shared.png"]
        assert admin("DELETE", f"/api/runs/{run_a}?media=true")[0] == 204
        assert media_keys() == ["only_b.png", "shared.png"]  # shared.png: run b names it too
        outside = client.get_object(Bucket=BUCKET, Key=f"{store.prefix}/outside.png")["Body"].read()
        assert outside == b"\x89PNG outside"  # outside the media prefix: never touched
        assert admin("DELETE", f"/api/runs/{run_b}?media=true")[0] == 204  # by key and by s3:// URL
        assert media_keys() == []
        assert store.list_ids() == []
        assert [line["media_deleted"] for line in audit_lines(audit, "delete")] == [1, 2]
    finally:
        server.stop()


def test_a_bucket_media_area_deletes_only_media_objects_under_its_prefix(s3_server, runs_dir):
    from execution_history.media import AreaObject, delete_media, media_locations
    from execution_history.s3media import S3MediaArea

    from .s3server import BUCKET

    store = store_for("s3", runs_dir)
    area = S3MediaArea.of_store(store)
    store.client.put_object(Bucket=BUCKET, Key=f"{store.prefix}/media/a.png", Body=b"png")
    [found] = media_locations("a.png", area)
    assert found == AreaObject(f"s3://{BUCKET}/{store.prefix}/media/a.png", None)  # named on the text alone
    for refused in ("../a.png", ".side/x.png", "a.json", f"s3://{BUCKET}/{store.prefix}/a.png", "/abs/a.png"):
        assert media_locations(refused, area) == []
    for outside in (f"s3://{BUCKET}/{store.prefix}/a.png", f"s3://{BUCKET}/{store.prefix}/media/.side/a.png",
                    f"s3://other/{store.prefix}/media/a.png"):
        with pytest.raises(ValueError):
            area.remove(outside)
    assert delete_media(found) is True and delete_media(found) is False  # gone: reported once


def test_deleting_a_runs_media_deletes_its_cached_thumbnail_too(runs_dir, store, tmp_path):
    from .media_files import write_png

    media = tmp_path / "media"
    media.mkdir()
    write_png(media / "child.png")
    execution_id = record_run(store, "dada", NOW, files=["child.png"])
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(runs_dir), "RUN_HISTORY_MEDIA_DIR": str(media),
                      "RUN_HISTORY_AUDIT_LOG": str(tmp_path / "audit.log")})
    response = app.test_client().get(f"/api/runs/{execution_id}/thumbnail")
    assert response.status_code == 200 and response.mimetype == "image/webp"
    cached = list((runs_dir / ".thumbnails").glob("*.webp"))
    assert len(cached) == 1
    result = app.test_cli_runner().invoke(args=["runs", "delete", execution_id, "--media"])
    assert result.exit_code == 0, result.output
    assert list(media.iterdir()) == [] and list((runs_dir / ".thumbnails").glob("*.webp")) == []
