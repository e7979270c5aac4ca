"""Download links through a real gunicorn: an opaque signed reference, their own expiry fixed
when made, any appended byte refused, and dead with their creator's token."""
import base64
import http.client
import json
import stat
from urllib.parse import quote, urlsplit

import pytest

from app.auth import TokenStore, hash_token
from execution_history import ExecutionTracker

from .conftest import LiveServer


def get(server, path, token=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def setup(runs_dir, store, tmp_path):
    with ExecutionTracker("dada", user_id="alice", store=store) as run:
        run.log_user_input_text("hello")
    tokens = TokenStore(tmp_path / "tokens.json")
    return {"run": run.execution_id, "tokens": tokens, "alice": tokens.create("alice", "researcher"),
            "env": {"RUN_HISTORY_TOKENS": str(tokens.path)}}


def serve(runs_dir, tmp_path, setup, ttl, name):
    return LiveServer(runs_dir, tmp_path / f"{name}.log", extra_env={**setup["env"], "RUN_HISTORY_LINK_TTL": str(ttl)})


def make_link(server, setup, path="/api/runs/export/jsonl/link?config=dada"):
    status, body = get(server, path, setup["alice"])
    assert status == 200, body
    parts = urlsplit(json.loads(body)["url"])
    return f"{parts.path}?{parts.query}", parts.query.removeprefix("link=")


def test_a_links_own_expiry_decides_not_a_later_ttl(runs_dir, tmp_path, setup):
    server = serve(runs_dir, tmp_path, setup, 900, "a")
    try:
        long_lived, _ = make_link(server, setup)
    finally:
        server.stop()
    server = serve(runs_dir, tmp_path, setup, 0, "b")  # shortened to nothing: links made now are dead at once
    try:
        assert get(server, long_lived)[0] == 200  # made with 900 s: still valid
        dead, _ = make_link(server, setup)
        status, body = get(server, dead)
        assert status == 410 and json.loads(body)["code"] == "LINK_EXPIRED"
    finally:
        server.stop()
    server = serve(runs_dir, tmp_path, setup, 10**6, "c")  # lengthened: the dead link stays dead
    try:
        status, body = get(server, dead)
        assert status == 410 and json.loads(body)["code"] == "LINK_EXPIRED"
        assert get(server, long_lived)[0] == 200
    finally:
        server.stop()


def test_tampered_or_extended_links_are_403(runs_dir, tmp_path, setup):
    server = serve(runs_dir, tmp_path, setup, 900, "a")
    try:
        url, token = make_link(server, setup)
        assert get(server, url)[0] == 200
        flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
        for bad in [token + "x", token + quote("é"), token + quote("\u00a0"), token + "%00", token + "=",
                    token + ".", token + "%20", token + quote("🌸"), quote("é") + token, flipped,
                    token.split(".")[0], ("y" if token[0] == "x" else "x") + token[1:], token.replace(".", "..")]:
            status, body = get(server, f"/api/download?link={bad}")
            assert status == 403 and json.loads(body)["code"] == "FORBIDDEN", bad
    finally:
        server.stop()


def test_the_link_is_opaque_and_its_record_is_server_side(runs_dir, tmp_path, setup):
    server = serve(runs_dir, tmp_path, setup, 900, "a")
    try:
        _, token = make_link(server, setup, f"/api/runs/{setup['run']}/export/csv/link")
    finally:
        server.stop()
    digest = hash_token(setup["alice"])
    for part in token.split("."):
        decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        for readable in (digest.encode(), bytes.fromhex(digest), b"alice", b"researcher", setup["run"].encode()):
            assert readable not in decoded
        assert digest not in part and "alice" not in part
    records = list((runs_dir / ".side" / "links").iterdir())
    assert len(records) == 1 and stat.S_IMODE(records[0].stat().st_mode) == 0o600
    record = json.loads(records[0].read_text())
    assert record["token_sha256"] == digest and record["user"] == "alice" and record["execution_id"] == setup["run"]
    assert token.startswith(record["id"] + ".")


def test_a_link_dies_with_its_creators_token(runs_dir, tmp_path, setup):
    server = serve(runs_dir, tmp_path, setup, 900, "a")
    try:
        url, _ = make_link(server, setup)
        assert get(server, url)[0] == 200
        setup["tokens"].revoke("alice")
        status, body = get(server, url)
        assert status == 403 and json.loads(body)["code"] == "FORBIDDEN"
    finally:
        server.stop()
