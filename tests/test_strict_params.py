"""Strict parameters through a real gunicorn: ASCII digits only, dates YYYY-MM-DD only,
datetimes exactly as API.md 3; everything else is the contract's JSON 400 (a path id: 404)."""
import http.client
import json
from urllib.parse import quote, urlencode

import pytest

from execution_history import ExecutionTracker

ARABIC_ID = "exec_" + "".join(chr(0x660 + int(d)) if d.isdigit() else d for d in "20251103_205239") + "_896e054c"
BAD = [("limit", "５"), ("limit", "1_0"), ("limit", "+5"), ("limit", " 5"), ("limit", "5 "), ("limit", "٥"),
       ("limit", "0x5"), ("limit", "5.0"), ("limit", "-1"), ("offset", "1_0"), ("offset", "+0"), ("offset", "１"),
       ("offset", " 0"), ("date", "2025-W45-1"), ("date", "2025-307"), ("date", "20251103"), ("date", "2025-11-3"),
       ("date", "２０２５-11-03"), ("date", "2025-11-03T00:00"), ("date_from", "2025-W45-1"), ("date_from", "20251103"),
       ("date_from", "2025-307"), ("date_to", "2025-11-03T20"), ("date_to", "2025-11-03 20:52"),
       ("date_to", "2025-11-03T20:52:39.1234567"), ("date_from", "2025-11-03T20:52:39+0100"),
       ("date_from", "2025-11-03T20:52z"), ("date_from", "2025-11-03T２0:52"), ("date_from", "20251103T205239Z"),
       ("date_from", "2025-11-03T20:52:39+01"), ("ids", ARABIC_ID), ("ids", "exec_20251103_205239_896E054C")]
GOOD = [("limit", "5"), ("offset", "0"), ("date", "2025-11-03"), ("date_from", "2025-11-03"),
        ("date_from", "2025-11-03T20:52"), ("date_from", "2025-11-03T20:52:39"), ("date_to", "2025-11-03T20:52:39.5"),
        ("date_to", "2025-11-03T20:52:39.123456Z"), ("date_from", "2025-11-03T20:52:39+01:00"),
        ("date_from", "2025-11-03T20:52-05:30"), ("ids", "exec_20251103_205239_896e054c")]


def get(server, path):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


@pytest.fixture
def served(live_server, store):
    with ExecutionTracker("dada", store=store) as run:
        run.log_user_input_text("x")
    return live_server


def test_loose_values_are_400_everywhere(served):
    for name, value in BAD:
        for route in ("/api/runs", "/api/runs/export/csv", "/api/runs/export/json/link"):
            status, ctype, body = get(served, f"{route}?{urlencode({name: value})}")
            assert status == 400 and ctype.startswith("application/json"), (route, name, value, body[:200])
            data = json.loads(body)
            assert data["code"] == "INVALID_PARAMETER" and data["parameter"] == name, (name, value)
    for name, value in GOOD:
        status, _, body = get(served, f"/api/runs?{urlencode({name: value})}")
        assert status == 200, (name, value, body[:200])


def test_an_id_with_other_scripts_digits_is_404_in_the_path(served):
    for path in (f"/api/runs/{quote(ARABIC_ID)}", f"/api/runs/{quote(ARABIC_ID)}/export/json"):
        status, ctype, body = get(served, path)
        assert status == 404 and json.loads(body)["code"] == "NOT_FOUND"
