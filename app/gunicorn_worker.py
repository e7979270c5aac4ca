"""The gunicorn worker: gthread, plus a deadline for reading a request and JSON for the errors
gunicorn answers itself (``worker_class = "app.gunicorn_worker.JSONThreadWorker"``).

- gthread waits up to 5 s for a new connection's first byte without tying up a thread, but
  once a byte came, the thread reads the rest of the request head blocking: a client
  trickling its headers keeps the thread as long as it likes. Here every recv() of a
  request shares one deadline (``RUN_HISTORY_REQUEST_READ_TIMEOUT`` seconds after the
  thread took the connection, default 15); past it the connection is closed like a client
  that went away. (A reverse proxy in front, README, buffers whole requests anyway.)
- A request gunicorn refuses before the app sees it (a request line over 8190 bytes: 414;
  too many or too large header fields: 431; a malformed request line or header: 400)
  is answered in the contract's JSON shape, ``{"error", "code", "request_id"}``, instead of
  gunicorn's HTML page, and without echoing the request (it may hold a token).
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
import weakref
from typing import Any

from gunicorn import util
from gunicorn.http.errors import NoMoreData
from gunicorn.workers import gthread

#: Seconds a thread may spend receiving one request (head and body) before it gives up.
READ_TIMEOUT = float(os.environ.get("RUN_HISTORY_REQUEST_READ_TIMEOUT", "15"))
#: API codes of the statuses gunicorn answers itself (as app/errors.py names werkzeug's).
_CODES = {400: "INVALID_PARAMETER", 403: "FORBIDDEN", 413: "REQUEST_TOO_LARGE", 414: "REQUEST_TOO_LARGE",
          417: "INVALID_PARAMETER", 431: "REQUEST_TOO_LARGE", 500: "INTERNAL_ERROR", 501: "INVALID_PARAMETER"}

_deadlines: weakref.WeakKeyDictionary[socket.socket, float] = weakref.WeakKeyDictionary()


class _DeadlineSocket(socket.socket):
    """An accepted socket whose recv() keeps to the deadline of the request being read.

    No slots of its own, so an accepted socket can take this class in place.
    """

    __slots__ = ()

    def recv(self, bufsize: int, flags: int = 0) -> bytes:  # type: ignore[override]
        deadline = _deadlines.get(self)
        if deadline is None:
            return super().recv(bufsize, flags)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NoMoreData(b"")  # gunicorn closes it quietly, as for a client that left
        previous = self.gettimeout()
        self.settimeout(remaining)
        try:
            return super().recv(bufsize, flags)
        except TimeoutError:
            raise NoMoreData(b"") from None
        finally:
            self.settimeout(previous)


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's error answer, as the contract's JSON (*mesg* echoes the request: left out)."""
    request_id = uuid.uuid4().hex
    body = json.dumps({"error": reason, "code": _CODES.get(status_int, "INVALID_PARAMETER"),
                       "request_id": request_id}).encode("utf-8")
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\nCache-Control: no-store\r\n"
            "X-Content-Type-Options: nosniff\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


# gunicorn's Worker.handle_error writes its answer with util.write_error: ours instead.
util.write_error = write_json_error


class JSONThreadWorker(gthread.ThreadWorker):
    """gthread with a read deadline per request and JSON error answers."""

    def accept(self, listener: Any) -> None:
        """Accept as gthread does, with the accepted socket able to keep a deadline."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as err:
            if err.errno not in (gthread.errno.EAGAIN, gthread.errno.ECONNABORTED, gthread.errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        client_sock.setblocking(True)
        if type(client_sock) is socket.socket:  # not a TLS socket: those keep their class
            client_sock.__class__ = _DeadlineSocket
        self.enqueue_req(gthread.TConn(self.cfg, client_sock, client_addr, listener.getsockname()))

    def handle(self, conn: Any) -> Any:
        """Handle a connection's next request, reading it within READ_TIMEOUT (plus gthread's
        own wait for the first byte, which does not hold a thread's attention)."""
        _deadlines[conn.sock] = time.monotonic() + gthread.DEFAULT_WORKER_DATA_TIMEOUT + READ_TIMEOUT
        try:
            return super().handle(conn)
        finally:
            _deadlines.pop(conn.sock, None)
