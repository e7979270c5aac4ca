"""Streaming through a real gunicorn: long downloads outlive the worker timeout, failures cut."""
import csv
import http.client
import io
import socket
import time

import pytest

from execution_history import ExecutionTracker

from .conftest import LiveServer


def slow_get(server, path, bufsize=64 * 1024, pause=0.025):
    """GET with a small receive buffer, reading slowly (the server blocks on a full socket)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.sock = socket.create_connection(("127.0.0.1", server.port))
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
    conn.request("GET", path)
    response = conn.getresponse()
    parts = []
    started = time.monotonic()
    try:
        while chunk := response.read(bufsize):
            parts.append(chunk)
            time.sleep(pause)
    finally:
        conn.close()
    return response, b"".join(parts), time.monotonic() - started


def test_long_download_is_not_cut_by_the_worker_timeout(store, runs_dir, tmp_path):
    big = "Stille Post " * 8000  # ~100 KB per item
    for n in range(50):
        with ExecutionTracker(f"big{n % 3}", store=store) as run:
            for _ in range(3):
                run.log_output_text(big)
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log", extra_args=("--timeout", "1", "--workers", "1"))
    try:
        response, data, seconds = slow_get(server, "/api/runs/export/csv?shape=items")
    finally:
        server.stop()
    assert response.status == 200
    assert seconds > 3, "the download must outlast the 1 s worker timeout for this test to mean anything"
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    assert len(rows) == 150 and all(row["content"] == big for row in rows)
    assert "WORKER TIMEOUT" not in server.log_path.read_text()


def test_failure_after_the_first_byte_cuts_the_download(runs_dir, tmp_path, store, recorded_runs):
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log", app="tests.fault_app:app")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/api/runs/export/csv", headers={"X-Request-ID": "cut-42"})
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
        with pytest.raises(http.client.IncompleteRead):
            response.read()
        conn.close()
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "cut-42" in log and "simulated failure" in log
