"""gunicorn settings for the run-history service (`gunicorn -c gunicorn.conf.py wsgi:app`).

gthread workers: the worker's main thread keeps telling the arbiter it is alive while a
request thread streams, so a long export is never cut by `timeout` (a sync worker is
killed after `timeout` seconds of one response and the client gets a short file).
Each setting can be overridden on the command line or with GUNICORN_CMD_ARGS.
"""
import os

bind = [os.environ.get("RUN_HISTORY_BIND", "127.0.0.1:17801")]  # loopback unless told otherwise
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gthread, with a read deadline per request and JSON for the errors gunicorn answers itself
# (app/gunicorn_worker.py): a client trickling its headers is cut after
# RUN_HISTORY_REQUEST_READ_TIMEOUT seconds (default 15) instead of holding a thread forever.
worker_class = "app.gunicorn_worker.JSONThreadWorker"
# Enough threads that a handful of slow clients never starve the others. A worker holding
# worker_connections connections stops accepting, so another worker takes the next one
# instead of queueing it behind slow ones; the room above `threads` is for kept-alive
# connections (at `threads` gthread turns keep-alive off and closes every connection on its
# main thread, lingering up to 2 s: long enough to be taken for a hung worker).
threads = 16
worker_connections = 2 * threads
timeout = 30            # a worker silent this long is restarted; streaming does not count
graceful_timeout = 30
keepalive = 5
preload_app = False     # the app (and any SQLite connection) is built after the fork
# gunicorn believes X-Forwarded-Proto from 127.0.0.1 by default; the app decides instead
# (ProxyFix, as many hops as RUN_HISTORY_TRUSTED_PROXIES says), so gunicorn believes none.
forwarded_allow_ips = ""
secure_scheme_headers: dict[str, str] = {}
# gunicorn's own limits (8190 is the most limit_request_line allows); what passes them is
# the app's to judge, and what does not is answered as JSON by the worker (414, 431, 400).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = "-"
# The path without its query string, and no request header at all (no referer, no user
# agent, no cookie): a token, a link signature or a session cookie may ride in any of them
# and must never reach a log line.
access_log_format = '%(h)s %(l)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)s'
logger_class = "app.access_log.RedactingLogger"  # long path segments redacted too (app/access_log.py)
errorlog = "-"


def post_worker_init(worker):
    """After the fork: start the app's background work (retention) in this worker at once."""
    from app.lifecycle import start_background

    start_background(worker.wsgi)
