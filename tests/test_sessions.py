"""Sign-in sessions live on the server: through real gunicorn servers sharing one store, a
signed-out or revoked session's raw old cookie signs nobody in, on any host."""
import base64
import http.client
import json
import re

import pytest

from app import create_app
from app.auth import TokenStore

from .conftest import LiveServer


def request(server, method, path, headers=None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def cookie_of(headers):
    return headers["Set-Cookie"].split(";")[0]


def sign_in(server, token):
    """(session cookie, csrf token) after the login form, as a browser does it."""
    _, headers, body = request(server, "GET", "/login")
    csrf = re.search(rb'name="csrf" value="([^"]+)"', body).group(1).decode()
    status, headers, _ = request(server, "POST", "/login", body=f"csrf={csrf}&token={token}", headers={
        "Cookie": cookie_of(headers), "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 302 and headers["Location"] == "/"
    cookie = cookie_of(headers)
    _, _, page = request(server, "GET", "/", {"Cookie": cookie})
    return cookie, re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()


def signed_in(server, cookie):
    status, headers, _ = request(server, "GET", "/stats", {"Cookie": cookie})
    assert status in (200, 302)
    return status == 200


@pytest.fixture
def two_hosts(runs_dir, tmp_path):
    tokens = TokenStore(tmp_path / "tokens.json")
    env = {"RUN_HISTORY_TOKENS": str(tokens.path)}
    servers = [LiveServer(runs_dir, tmp_path / f"gunicorn{n}.log", extra_env=env) for n in range(2)]
    yield tokens, servers
    for server in servers:
        server.stop()


def test_sign_out_ends_the_session_on_every_host(two_hosts, runs_dir):
    tokens, (a, b) = two_hosts
    alice = tokens.create("alice", "researcher")
    cookie, csrf = sign_in(a, alice)
    value = cookie.split("=", 1)[1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}\.[A-Za-z0-9_-]{43}", value)  # an id and a signature, no payload
    for part in value.split("."):
        decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        assert b"alice" not in decoded and b"researcher" not in decoded
    assert signed_in(a, cookie) and signed_in(b, cookie)  # one session, shared by both hosts
    record = json.loads((runs_dir / ".side" / "sessions" / f"{value.split('.')[0]}.json").read_text())
    assert record["user"] == "alice" and record["role"] == "researcher" and record["csrf"] == csrf
    assert record["token_sha256"] and record["created_at"]
    status, headers, _ = request(a, "POST", "/logout", body=f"csrf={csrf}", headers={
        "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 302
    assert not signed_in(a, cookie) and not signed_in(b, cookie)  # the raw old cookie, replayed
    assert not (runs_dir / ".side" / "sessions" / f"{value.split('.')[0]}.json").exists()


def test_revoking_the_token_ends_its_sessions(two_hosts, runs_dir):
    tokens, (a, b) = two_hosts
    alice = tokens.create("alice", "researcher")
    first, _ = sign_in(a, alice)
    second, _ = sign_in(b, alice)
    tokens.create("alice", "researcher")  # another token of hers stays valid
    TokenStore(tokens.path).revoke("alice")
    assert not signed_in(a, first) and not signed_in(b, second)
    bob = tokens.create("bob", "admin")
    cookie, _ = sign_in(a, bob)
    app = create_app({"RUN_HISTORY_DIR": str(runs_dir), "RUN_HISTORY_TOKENS": str(tokens.path)})
    result = app.test_cli_runner().invoke(args=["runs", "token", "revoke", "bob"])
    assert "ended 1 session(s)" in result.output
    assert not signed_in(b, cookie)


def test_a_forged_or_extended_cookie_is_no_session(two_hosts):
    tokens, (a, _) = two_hosts
    cookie, _ = sign_in(a, tokens.create("alice", "admin"))
    name, value = cookie.split("=", 1)
    other_first = ("y" if value[0] == "x" else "x") + value[1:]
    for bad in (value + "x", value[:-1] + ("A" if value[-1] != "A" else "B"), other_first, value.split(".")[0]):
        assert not signed_in(a, f"{name}={bad}")
