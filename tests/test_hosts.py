"""Host and proxy headers through a real gunicorn, sent raw: untrusted hosts are refused with
400 INVALID_HOST on every route, X-Forwarded-* only from the configured number of proxies,
absolute URLs from RUN_HISTORY_PUBLIC_URL when set and never from an untrusted host."""
import http.client
import json
import re

import pytest

from execution_history import ExecutionTracker

from .conftest import LiveServer

ROUTES = ["/api/runs", "/api/runs/stats", "/api/runs/{run}", "/api/runs/{run}/export/csv", "/api/runs/export/xlsx",
          "/api/runs/export/csv/link", "/api/openapi.json", "/api/no-such-route", "/", "/stats", "/runs/{run}",
          "/static/style.css", "/login", "/nowhere"]
PAGES = {"/", "/stats", "/runs/{run}", "/login"}
BAD_HOSTS = ["evil.example", "evil.example:80", "localhost.evil.example", "localhost@evil.example",
             "evil.example/x", "", "127.0.0.1.nip.io", "[::2]", "local host"]


def raw_get(server, path, host, headers=(), method="GET"):
    """A request written by hand, so the Host header is exactly what we say (or absent)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


@pytest.fixture
def one_run(store):
    with ExecutionTracker("dada", store=store) as run:
        run.log_user_input_text("hello")
    for n in range(3):
        with ExecutionTracker("dada", store=store) as other:
            other.log_user_input_text(f"more {n}")
    return run.execution_id


def assert_invalid_host(status, headers, body):
    assert status == 400, body[:300]
    assert headers["Content-Type"].startswith("application/json")
    data = json.loads(body)
    assert data["code"] == "INVALID_HOST" and data["request_id"] == headers["X-Request-ID"]


def test_untrusted_hosts_are_refused_on_every_route(live_server, one_run):
    for route in ROUTES:
        path = route.format(run=one_run)
        for host in BAD_HOSTS:
            status, headers, body = raw_get(live_server, path, host)
            if route in PAGES:  # the app's one rule: pages answer with the HTML error page
                assert status == 400 and headers["Content-Type"].startswith("text/html"), (route, host)
                assert b"This host name is not served here" in body
            else:
                assert_invalid_host(status, headers, body)
            assert b"evil" not in body
        status, _, _ = raw_get(live_server, path, f"localhost:{live_server.port}")
        assert status in (200, 302, 404), path
    # an unknown path is JSON, unless a browser asks for HTML
    status, headers, body = raw_get(live_server, "/nowhere", "evil.example", [("Accept", "text/html")])
    assert status == 400 and headers["Content-Type"].startswith("text/html") and b"evil" not in body
    for host in ("localhost", "127.0.0.1", f"127.0.0.1:{live_server.port}", f"[::1]:{live_server.port}", "LOCALHOST"):
        status, _, body = raw_get(live_server, "/api/runs", host)
        assert status == 200, (host, body[:200])


def urls_of(headers, body):
    """Every absolute URL a list or link response carries (Link header and body)."""
    found = re.findall(r"<([^>]+)>", headers.get("Link", ""))
    data = json.loads(body)
    if "url" in data:
        found.append(data["url"])
    return found


def test_forwarded_headers_are_ignored_without_trusted_proxies(live_server, one_run):
    spoof = [("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Port", "444"),
             ("X-Forwarded-For", "6.6.6.6"), ("Forwarded", "host=evil.example;proto=https")]
    for path in ("/api/runs?limit=1&offset=1", "/api/runs/export/csv/link", f"/api/runs/{one_run}/export/json/link"):
        status, headers, body = raw_get(live_server, path, f"localhost:{live_server.port}", spoof)
        assert status == 200, body[:300]
        urls = urls_of(headers, body)
        assert urls and all(u.startswith(f"http://localhost:{live_server.port}/api/") for u in urls), urls


def test_one_trusted_proxy(runs_dir, tmp_path, one_run):
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log", extra_env={
        "RUN_HISTORY_TRUSTED_PROXIES": "1", "RUN_HISTORY_TRUSTED_HOSTS": "runs.example.org"})
    try:
        proxied = [("X-Forwarded-Host", "runs.example.org"), ("X-Forwarded-Proto", "https"),
                   ("X-Forwarded-For", "10.0.0.7")]
        status, headers, body = raw_get(server, "/api/runs?limit=1", "127.0.0.1", proxied)
        assert status == 200 and urls_of(headers, body)
        assert all(u.startswith("https://runs.example.org/api/runs?") for u in urls_of(headers, body))
        status, headers, body = raw_get(server, "/api/runs/export/csv/link", "127.0.0.1", proxied)
        assert json.loads(body)["url"].startswith("https://runs.example.org/api/download?link=")
        # only the last hop is believed: a client's own X-Forwarded-Host before the proxy's does not count
        status, headers, body = raw_get(server, "/api/runs", "127.0.0.1", [
            ("X-Forwarded-Host", "evil.example, runs.example.org"), ("X-Forwarded-Proto", "https")])
        assert status == 200
        for host in ("evil.example", "runs.example.org, evil.example"):
            assert_invalid_host(*raw_get(server, "/api/runs", "127.0.0.1", [("X-Forwarded-Host", host)]))
        # without the proxy's header the Host itself is checked: localhost is no longer on the list
        assert_invalid_host(*raw_get(server, "/api/runs", "localhost"))
    finally:
        server.stop()


def test_public_url_builds_every_absolute_url(runs_dir, tmp_path, one_run):
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log", extra_env={
        "RUN_HISTORY_PUBLIC_URL": "https://public.example.org/history/"})
    try:
        for host in (f"localhost:{server.port}", "public.example.org"):
            for path in ("/api/runs?limit=1&offset=1", "/api/runs/export/csv/link", f"/api/runs/{one_run}/export/csv/link"):
                status, headers, body = raw_get(server, path, host, [("X-Forwarded-Host", "evil.example")])
                assert status == 200, body[:300]
                urls = urls_of(headers, body)
                assert urls and all(u.startswith("https://public.example.org/history/api/") for u in urls), urls
        assert_invalid_host(*raw_get(server, "/api/runs", "evil.example"))
    finally:
        server.stop()
