"""gunicorn's side through real sockets: slow clients do not starve the others, a request
trickled forever is cut, and what gunicorn refuses itself is answered as JSON."""
import http.client
import json
import socket
import threading
import time

import pytest

from .conftest import LiveServer


def raw(server, data, timeout=60):
    """Send *data* on a fresh connection; (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.fixture(scope="module")
def refusing_server(tmp_path_factory):
    """One gunicorn (on an empty folder) for every refused request: a refusal changes nothing."""
    root = tmp_path_factory.mktemp("refusals")
    (root / "runs").mkdir()
    server = LiveServer(root / "runs", root / "gunicorn.log")
    yield server
    server.stop()


@pytest.mark.parametrize("name, data, status", [
    ("request line too long", b"GET /api/runs?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
    ("too many fields", b"GET /api/runs HTTP/1.1\r\nHost: localhost\r\n" + b"".join(
        b"X-F%d: 1\r\n" % n for n in range(150)) + b"\r\n", 431),
    ("field too large", b"GET /api/runs HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
    ("garbage request line", b"GARBAGE\r\n\r\n", 400),
    ("bad header name", b"GET /api/runs HTTP/1.1\r\nHost: localhost\r\nBad Header: x\r\n\r\n", 400),
    ("bad http version", b"GET /api/runs HTTP/9.9\r\nHost: localhost\r\n\r\n", 400),
])
def test_what_gunicorn_refuses_is_json(refusing_server, name, data, status):
    got, headers, body = raw(refusing_server, data)
    assert got == status, (name, body[:200])
    assert headers["Content-Type"] == "application/json"
    parsed = json.loads(body)
    assert parsed["code"] in ("INVALID_PARAMETER", "REQUEST_TOO_LARGE") and parsed["error"]
    assert parsed["request_id"] == headers["X-Request-ID"]


def test_a_refused_request_line_with_a_secret_is_not_logged(live_server):
    secret = "SeCrEt-link-" + "z" * 40
    status, _, body = raw(live_server, f"GET /api/download?link={secret}{'a' * 9000} HTTP/1.1\r\n\r\n".encode())
    assert status == 414 and secret.encode() not in body
    status, _, body = raw(live_server, f"GET /api/download?link={secret} HTTP/1.1\r\nBad Header: {secret}\r\n\r\n".encode())
    assert status == 400 and secret.encode() not in body
    live_server.stop()
    assert secret not in live_server.log_path.read_text()


def trickle(port, stop, opened):
    """A client that sends its request head one byte at a time, slowly, until told to stop."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"GET /api/runs HTTP/1.1\r\nHost: localhost\r\n")
        opened.release()
        while not stop.is_set():
            try:
                sock.sendall(b"X")
            except OSError:  # cut by the server
                return
            stop.wait(0.2)


def test_a_normal_request_is_served_while_ten_clients_trickle(live_server):
    stop = threading.Event()
    opened = threading.Semaphore(0)
    clients = [threading.Thread(target=trickle, args=(live_server.port, stop, opened)) for _ in range(10)]
    for client in clients:
        client.start()
    try:
        for _ in clients:
            assert opened.acquire(timeout=30)
        time.sleep(1)  # let every trickler's first bytes reach a worker thread (not an assertion on time)
        for _ in range(5):
            conn = http.client.HTTPConnection("127.0.0.1", live_server.port, timeout=30)
            conn.request("GET", "/api/runs/stats")
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["total_records"] == 0
            conn.close()
        assert all(client.is_alive() for client in clients)  # they were still trickling meanwhile
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=60)


def test_a_request_trickled_forever_is_cut(runs_dir, tmp_path):
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log", extra_env={"RUN_HISTORY_REQUEST_READ_TIMEOUT": "1"})
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(b"GET /api/runs HTTP/1.1\r\nHost: localhost\r\n")
            cut = False
            for _ in range(600):  # bounded: at most a minute of trickling
                try:
                    sock.sendall(b"X")
                    time.sleep(0.1)
                    sock.setblocking(False)
                    try:
                        cut = sock.recv(1) == b""
                    except BlockingIOError:
                        pass
                    finally:
                        sock.setblocking(True)
                except OSError:
                    cut = True
                if cut:
                    break
            assert cut, "the server must close a connection whose request never ends"
    finally:
        server.stop()
