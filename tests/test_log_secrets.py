"""No token, token hash, link signature or session cookie reaches a log line (the audit log or
gunicorn's access and error log), whatever parameter or header a client puts it in."""
import http.client
import json
import re
from urllib.parse import quote, urlsplit

from app.auth import TokenStore, hash_token
from execution_history import ExecutionTracker

from .conftest import LiveServer


def request(server, method, path, headers=None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def sign_in(server, token):
    """The session cookie of a page sign-in (CSRF form, as a browser does it)."""
    status, headers, body = request(server, "GET", "/login")
    csrf = re.search(rb'name="csrf" value="([^"]+)"', body).group(1).decode()
    cookie = headers["Set-Cookie"].split(";")[0]
    status, headers, _ = request(server, "POST", "/login", body=f"csrf={csrf}&token={token}", headers={
        "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 302
    return headers["Set-Cookie"].split(";")[0]


def test_secrets_in_any_parameter_or_header_never_reach_a_log(runs_dir, tmp_path, store):
    with ExecutionTracker("dada", user_id="alice", store=store) as run:
        run.log_user_input_text("hello")
    tokens = TokenStore(tmp_path / "tokens.json")
    alice = tokens.create("alice", "researcher")
    audit = tmp_path / "audit.log"
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log", extra_env={
        "RUN_HISTORY_TOKENS": str(tokens.path), "RUN_HISTORY_AUDIT_LOG": str(audit)})
    auth = {"Authorization": f"Bearer {alice}"}
    try:
        status, _, body = request(server, "GET", "/api/runs/export/csv/link?config=dada", auth)
        link = json.loads(body)["url"]
        signature = urlsplit(link).query.split("link=", 1)[1]
        cookie = sign_in(server, alice)
        cookie_value = cookie.split("=", 1)[1]
        secrets = {"token": alice, "token hash": hash_token(alice), "link": signature, "cookie": cookie_value}
        for name in ("access_token", "token", "link", "session", "config", "api_key"):
            for secret in secrets.values():
                for route in ("/api/runs/export/csv", f"/api/runs/{run.execution_id}/export/json",
                              "/api/runs/export/xml/link", "/api/download", "/api/runs"):
                    request(server, "GET", f"{route}?{name}={quote(secret)}", auth)
        for secret in secrets.values():
            for headers in ({"Authorization": f"Bearer {secret}"}, {"Cookie": f"session={secret}"},
                            {**auth, "X-Request-ID": secret}, {**auth, "User-Agent": secret},
                            {**auth, "Referer": f"http://127.0.0.1/?link={secret}"},
                            {**auth, "X-Forwarded-For": secret}, {**auth, "X-Api-Key": secret}):
                request(server, "GET", "/api/runs/export/csv", headers)
                request(server, "GET", f"/api/runs/export/{quote(secret)}", headers)  # in the path: the format
                request(server, "GET", f"/api/runs/{quote(secret)}/export/csv", headers)  # and the id
        status, _, _ = request(server, "GET", "/api/download?link=" + signature)
        assert status == 200
        status, _, _ = request(server, "GET", "/", {"Cookie": cookie})
        assert status == 200
    finally:
        server.stop()
    logs = {"gunicorn": server.log_path.read_text(), "audit": audit.read_text()}
    assert "/api/download" in logs["gunicorn"] and '"event": "link_used"' in logs["audit"].replace('":"', '": "')
    for log_name, text in logs.items():
        for secret_name, secret in secrets.items():
            assert secret not in text and quote(secret) not in text, f"{secret_name} in the {log_name} log"
    lines = [json.loads(line) for line in logs["audit"].splitlines()]
    # filters: validated filter parameters only (a secret given as a filter value is redacted)
    assert {json.dumps(line.get("filters")) for line in lines} <= {
        "null", "{}", '{"config": "dada"}', '{"config": "[redacted]"}'}
