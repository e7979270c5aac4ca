"""Access control: tokens, ownership, temporary links, the audit trail, hardening."""
import datetime as dt
import json
import multiprocessing
import re
from urllib.parse import urlsplit

import pytest

from app import create_app
from app.auth import TokenStore, hash_token
from execution_history import ExecutionTracker

from .conftest import LiveServer, StepClock, assert_error


@pytest.fixture
def tokens(tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    return {"admin": store.create("root", "admin"), "alice": store.create("alice", "researcher"),
            "bob": store.create("bob", "researcher"), "path": store.path}


@pytest.fixture
def owned(store):
    """Runs of alice (3), bob (2) and anonymous (1)."""
    ids = {}
    start = dt.datetime(2025, 11, 3, tzinfo=dt.timezone.utc)
    for n, user in enumerate(["alice", "alice", "alice", "bob", "bob", "anonymous"]):
        with ExecutionTracker(f"cfg{n % 2}", user_id=user, store=store,
                              clock=StepClock(start + dt.timedelta(hours=n))) as run:
            run.log_user_input_text(f"secret words of {user}")
        ids.setdefault(user, []).append(run.execution_id)
    return ids


@pytest.fixture
def auth_app(runs_dir, tokens, tmp_path):
    return create_app({"TESTING": True, "RUN_HISTORY_DIR": str(runs_dir), "RUN_HISTORY_TOKENS": str(tokens["path"]),
                       "RUN_HISTORY_AUDIT_LOG": str(tmp_path / "audit.log")})


@pytest.fixture
def api(auth_app, tokens):
    client = auth_app.test_client()

    def get(url, who=None, **kwargs):
        headers = kwargs.pop("headers", {})
        if who:
            headers["Authorization"] = f"Bearer {tokens[who]}"
        return client.get(url, headers=headers, **kwargs)

    get.client = client
    return get


def audit_lines(app):
    return [json.loads(line) for line in app.extensions["run_history"]["audit"].path.read_text().splitlines()]


ROUTES = ["/api/runs", "/api/runs/stats", "/api/runs/{run}", "/api/runs/{run}/export/csv", "/api/runs/export/csv",
          "/api/runs/{run}/export/json/link", "/api/runs/export/xml/link", "/api/openapi.json",
          "/api/schema/execution_record.xsd", "/api/no-such-route"]


@pytest.mark.parametrize("route", ROUTES)
def test_every_api_route_needs_a_token(api, owned, route):
    url = route.format(run=owned["alice"][0])
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic YWxpY2U6eA=="},
                    {"Authorization": "Bearer"}):
        response = api(url, headers=headers)
        assert_error(response, 401, "UNAUTHORIZED")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert api(url, "admin").status_code == (404 if "no-such" in route else 200)


def test_auth_off_by_default(client, owned):
    assert client.get("/api/runs").status_code == 200


def test_tokens_are_stored_hashed(tokens):
    text = tokens["path"].read_text()
    for who in ("admin", "alice", "bob"):
        assert tokens[who] not in text and hash_token(tokens[who]) in text


def ids_of(response):
    return sorted(e["execution_id"] for e in response.get_json()["executions"])


def test_admin_sees_everything(api, owned):
    assert ids_of(api("/api/runs", "admin")) == sorted(i for ids in owned.values() for i in ids)
    assert api("/api/runs/stats", "admin").get_json()["total_records"] == 6


def test_researcher_sees_only_their_runs(api, owned):
    assert ids_of(api("/api/runs", "alice")) == sorted(owned["alice"])
    assert ids_of(api("/api/runs?q=secret", "alice")) == sorted(owned["alice"])
    assert ids_of(api("/api/runs?user_id=bob", "alice")) == []
    stats = api("/api/runs/stats", "alice").get_json()
    assert stats["total_records"] == 3 and sum(stats["by_config"].values()) == 3
    assert api(f"/api/runs/{owned['alice'][0]}", "alice").status_code == 200
    assert_error(api(f"/api/runs/{owned['bob'][0]}", "alice"), 403, "FORBIDDEN")
    assert_error(api(f"/api/runs/{owned['bob'][0]}/export/csv", "alice"), 403, "FORBIDDEN")
    assert_error(api("/api/runs/exec_20990101_000000_00000000", "alice"), 404, "NOT_FOUND")
    bulk = api("/api/runs/export/jsonl", "alice")
    assert bulk.headers["X-Total-Count"] == "3"
    assert sorted(json.loads(line)["execution_id"] for line in bulk.get_data().splitlines()) == sorted(owned["alice"])


def link_of(response):
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    parts = urlsplit(body["url"])
    assert parts.scheme == "http" and parts.path == "/api/download"
    return f"{parts.path}?{parts.query}", dt.datetime.fromisoformat(body["expires_at"])


def test_links_download_without_a_token_until_they_expire(api, auth_app, owned):
    url, expires = link_of(api(f"/api/runs/{owned['alice'][0]}/export/json/link", "alice"))
    assert dt.timedelta(minutes=14) < expires - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(minutes=15)
    response = api(url)
    assert response.status_code == 200 and response.get_json()["execution_id"] == owned["alice"][0]
    assert response.headers["Content-Disposition"] == f'attachment; filename="{owned["alice"][0]}.json"'
    signer = auth_app.extensions["run_history"]["links"]
    real_clock = signer.clock
    signer.clock = lambda: real_clock() + 15 * 60 + 1  # move the clock, do not sleep
    assert_error(api(url), 410, "LINK_EXPIRED")


def test_tampered_links_are_403(api, owned):
    url, _ = link_of(api("/api/runs/export/csv/link?config=cfg0", "alice"))
    token = url.split("link=")[1]
    other_first = ("y" if token[0] == "x" else "x") + token[1:]  # never the token itself
    for bad in [token[:-2] + ("AA" if not token.endswith("AA") else "BB"), token + "x", other_first, "nonsense"]:
        assert_error(api(f"/api/download?link={bad}"), 403, "FORBIDDEN")
    assert_error(api("/api/download"), 400, "INVALID_PARAMETER")


def test_a_link_carries_its_creators_scope_whoever_uses_it(api, owned):
    url, _ = link_of(api("/api/runs/export/jsonl/link", "alice"))
    for presenter in (None, "bob", "admin"):
        data = api(url, presenter).get_data()
        assert sorted(json.loads(line)["execution_id"] for line in data.splitlines()) == sorted(owned["alice"])
    assert_error(api(f"/api/runs/{owned['bob'][0]}/export/csv/link", "alice"), 403, "FORBIDDEN")
    url, _ = link_of(api("/api/runs/export/csv/link?user_id=bob", "alice"))
    assert api(url).get_data().decode().strip().count("\r\n") == 0  # the header alone


def test_links_refuse_bad_requests_when_made(api, owned):
    assert_error(api("/api/runs/export/txt/link", "alice"), 400, "INVALID_FORMAT")
    assert_error(api("/api/runs/export/csv/link?limit=0", "alice"), 400, "INVALID_PARAMETER")
    assert_error(api("/api/runs/exec_20990101_000000_00000000/export/csv/link", "alice"), 404, "NOT_FOUND")


def test_audit_lines_for_exports_links_and_link_uses(api, auth_app, owned):
    response = api("/api/runs/export/csv?config=cfg0", "alice", headers={"X-Request-ID": "audit-1"})
    size = len(response.get_data())
    url, _ = link_of(api(f"/api/runs/{owned['alice'][1]}/export/xml/link", "alice"))
    used = api(url).get_data()  # the line is written when the download ends
    api(f"/api/runs/{owned['bob'][0]}/export/csv", "alice")
    lines = audit_lines(auth_app)
    assert [line["event"] for line in lines] == ["export", "link_created", "link_used", "export"]
    export, created, use, refused = lines
    assert export["user"] == "alice" and export["role"] == "researcher" and export["request_id"] == "audit-1"
    assert export["rows"] == 2 and export["bytes"] == size and export["status"] == 200 and export["complete"]
    assert export["filters"] == {"config": "cfg0"} and export["format"] == "csv"
    assert export["route"] == "/api/runs/export/<fmt>" and export["client"] == "127.0.0.1"
    assert created["execution_id"] == owned["alice"][1] and created["status"] == 200
    assert use["rows"] == 1 and use["bytes"] == len(used) and use["user"] == "alice"
    assert refused["status"] == 403 and refused["execution_id"] == owned["bob"][0]
    for line in lines:
        assert set(line) >= {"time", "event", "user", "role", "request_id", "client", "route", "format",
                             "rows", "bytes", "status"}
        dt.datetime.fromisoformat(line["time"])
    text = auth_app.extensions["run_history"]["audit"].path.read_text()
    assert url.split("link=")[1] not in text


def test_audit_cli_filters_by_user_and_time(api, auth_app, owned):
    api("/api/runs/export/csv", "alice")
    api("/api/runs/export/csv", "bob")
    runner = auth_app.test_cli_runner()
    result = runner.invoke(args=["runs", "audit", "--user", "bob"])
    assert [json.loads(line)["user"] for line in result.output.splitlines()] == ["bob"]
    result = runner.invoke(args=["runs", "audit", "--since", "2999-01-01"])
    assert result.exit_code == 0 and result.output == ""


def _export_many(runs_dir, audit, count):
    app = create_app({"RUN_HISTORY_DIR": runs_dir, "RUN_HISTORY_AUDIT_LOG": audit})
    client = app.test_client()
    for _ in range(count):
        assert client.get("/api/runs/export/jsonl").get_data().count(b"\n") == 6


def test_concurrent_exports_from_several_processes_leave_valid_json_lines(runs_dir, owned, tmp_path):
    audit = tmp_path / "shared-audit.log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_export_many, args=(str(runs_dir), str(audit), 40)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    lines = audit.read_text().splitlines()
    assert len(lines) == 160
    assert all(json.loads(line)["rows"] == 6 and json.loads(line)["complete"] for line in lines)


def test_token_cli_prints_the_token_alone_on_its_last_line(runs_dir, tmp_path):
    app = create_app({"RUN_HISTORY_DIR": str(runs_dir), "RUN_HISTORY_TOKENS": str(tmp_path / "t.json")})
    result = app.test_cli_runner().invoke(args=["runs", "token", "create", "carol", "--role", "researcher"])
    token = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", token)
    principal = TokenStore(tmp_path / "t.json").authenticate(token)
    assert (principal.user, principal.role) == ("carol", "researcher")


def test_pages_need_a_sign_in_with_csrf(auth_app, tokens, owned):
    client = auth_app.test_client()
    response = client.get("/stats")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    page = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert_error_page = client.post("/login", data={"token": tokens["alice"]})
    assert assert_error_page.status_code == 403  # no CSRF token
    assert client.post("/login", data={"token": "wrong", "csrf": csrf}).status_code == 401
    response = client.post("/login?next=//evil.example/x", data={"token": tokens["alice"], "csrf": csrf})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and tokens["alice"] not in cookie
    html = client.get("/").get_data(as_text=True)
    assert all(i in html for i in owned["alice"]) and not any(i in html for i in owned["bob"])
    assert client.get(f"/runs/{owned['bob'][0]}").status_code == 403
    download = client.get(f"/download/run/{owned['alice'][0]}/json")
    assert download.status_code == 303 and download.headers["Location"].startswith("/api/download?link=")
    assert client.get(download.headers["Location"]).get_json()["execution_id"] == owned["alice"][0]


def test_security_headers_and_request_limits(client, auth_app, owned):
    response = client.get("/")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY" and response.headers["Referrer-Policy"] == "no-referrer"
    big = auth_app.test_client().post("/login", data="x" * (70 * 1024), content_type="application/x-www-form-urlencoded")
    assert big.status_code == 413


def test_no_token_or_signature_reaches_a_log_line(runs_dir, tokens, owned, tmp_path):
    audit = tmp_path / "audit.log"
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log", extra_env={
        "RUN_HISTORY_TOKENS": str(tokens["path"]), "RUN_HISTORY_AUDIT_LOG": str(audit)})
    import urllib.request

    def get(path, token=None):
        request = urllib.request.Request(server.url + path, headers={"Authorization": f"Bearer {token}"} if token else {})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    try:
        link = json.loads(get("/api/runs/export/csv/link", tokens["alice"]))["url"]
        signature = link.split("link=")[1]
        assert get(urlsplit(link).path + "?" + urlsplit(link).query)
        get("/api/runs", tokens["admin"])
    finally:
        server.stop()
    for text in (server.log_path.read_text(), audit.read_text()):
        for secret in (tokens["alice"], tokens["admin"], signature):
            assert secret not in text
    assert "/api/download" in server.log_path.read_text()


def test_refused_links_are_audited(api, auth_app, owned):
    url, _ = link_of(api("/api/runs/export/csv/link", "alice"))
    assert_error(api(url[:-3] + "AAA"), 403, "FORBIDDEN")
    lines = audit_lines(auth_app)
    assert [(line["event"], line["status"]) for line in lines] == [("link_created", 200), ("link_used", 403)]
    assert url.split("link=")[1][:-3] not in auth_app.extensions["run_history"]["audit"].path.read_text()


@pytest.mark.parametrize("target", ["//evil.example/x", "/%09/evil.example", "/\t/evil.example", "/\\evil.example",
                                    "https://evil.example/", "javascript:alert(1)", " /x"])
def test_sign_in_never_redirects_off_site(auth_app, tokens, target):
    client = auth_app.test_client()
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
    response = client.post("/login", query_string={"next": target}, data={"token": tokens["alice"], "csrf": csrf})
    assert response.status_code == 302 and response.headers["Location"] == "/"


def test_unauthorized_exports_and_head_requests_are_audited(api, auth_app, owned):
    assert_error(api(f"/api/runs/{owned['alice'][0]}/export/csv"), 401, "UNAUTHORIZED")
    head = api.client.head("/api/runs/export/csv", headers={"Authorization": f"Bearer {tokens_of(auth_app)}"})
    assert head.status_code == 200 and head.get_data() == b""
    head.close()  # what every WSGI server does with a response, read or not
    lines = audit_lines(auth_app)
    assert [(line["event"], line["status"], line["user"]) for line in lines] == [("export", 401, None),
                                                                                 ("export", 200, "root")]
    assert lines[0]["execution_id"] == owned["alice"][0] and lines[1]["complete"] is False


def tokens_of(app):
    """An admin token added to the app's tokens file."""
    return app.extensions["run_history"]["tokens"].create("root", "admin")


def test_a_link_dies_with_the_token_it_was_made_with(api, auth_app, tokens, owned):
    url, _ = link_of(api("/api/runs/export/jsonl/link", "bob"))
    assert api(url).status_code == 200
    TokenStore(tokens["path"]).revoke("bob")
    assert_error(api(url), 403, "FORBIDDEN")


def test_non_ascii_secrets_are_refused_not_a_500(api, owned):
    """compare_digest refuses non-ASCII text: a hostile token, CSRF value or filter must still get its status."""
    assert_error(api("/api/runs", headers={"Authorization": "Bearer ʇǝɯɐ"}), 401, "UNAUTHORIZED")
    assert api("/api/runs/export/json/link?user_id=ʇǝɯɐ+ʇᴉs&config=\U000ddd8ao", "alice").status_code == 200
    assert api("/api/runs?user_id=ʇǝɯɐ", "admin").status_code == 200
