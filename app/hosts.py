"""Which Host a request may name, which proxies to believe, and absolute URLs that never echo
an untrusted host (RUN_HISTORY_PUBLIC_URL, _TRUSTED_HOSTS, _TRUSTED_PROXIES; API.md 5).

Built on werkzeug's own tools: ``ProxyFix`` believes exactly ``RUN_HISTORY_TRUSTED_PROXIES``
hops of ``X-Forwarded-For/-Proto/-Host/-Port`` (none by default, so a client cannot claim
https or another host), and ``werkzeug.sansio.utils.host_is_trusted`` checks the Host (after
ProxyFix, the forwarded one). A request naming another host gets 400 ``INVALID_HOST`` on
every route, before anything else runs.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, current_app, request, url_for
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.sansio.utils import host_is_trusted

from execution_history.errors import InvalidHost

from . import extensions


def trusted_host_list(app: Flask) -> list[str]:
    """RUN_HISTORY_TRUSTED_HOSTS as a list, plus the host of RUN_HISTORY_PUBLIC_URL if set."""
    hosts = [h.strip().lower() for h in str(app.config["RUN_HISTORY_TRUSTED_HOSTS"] or "").split(",") if h.strip()]
    public = public_url(app)
    if public:
        hosts.append(urlsplit(public).hostname or "")
        if ":" in hosts[-1]:  # an IPv6 literal: urlsplit drops the brackets
            hosts[-1] = f"[{hosts[-1]}]"
    return hosts


def public_url(app: Flask) -> str | None:
    """RUN_HISTORY_PUBLIC_URL without a trailing slash, or None.

    :raises ValueError: if it is set but not an http(s) URL with a host.
    """
    value = (app.config.get("RUN_HISTORY_PUBLIC_URL") or "").strip()
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"RUN_HISTORY_PUBLIC_URL must be an http(s) URL such as https://runs.example.org, "
                         f"not {value!r}")
    return value.rstrip("/")


def is_trusted(host: str, trusted: list[str]) -> bool:
    """Whether a ``host[:port]`` is one of *trusted* (any port).

    werkzeug's ``host_is_trusted`` checks the names; IPv6 literals (``[::1]``) are compared
    here, because werkzeug cuts a trusted entry at its first ``:`` and so never matches one.
    """
    if host.startswith("["):
        literal = host[:host.index("]") + 1] if "]" in host else host
        return literal.lower() in trusted
    return host_is_trusted(host, [h for h in trusted if not h.startswith("[")] or ["\x00"])


def configure(app: Flask) -> None:
    """Install ProxyFix (if proxies are trusted) and the host check, first among the checks."""
    public_url(app)  # a bad setting stops the app at start-up, not at the first link
    extensions.add(app, trusted_hosts=trusted_host_list(app))
    hops = app.config["RUN_HISTORY_TRUSTED_PROXIES"]
    if hops < 0:
        raise ValueError("RUN_HISTORY_TRUSTED_PROXIES must be 0 or more")
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)  # type: ignore[method-assign]
    app.before_request(check_host)


def check_host() -> None:
    """before_request: 400 INVALID_HOST unless the request names a trusted host."""
    host = request.host.lower()  # werkzeug's: "" if the header holds characters no host name has
    if not host or not is_trusted(host, extensions.get_trusted_hosts()):
        raise InvalidHost("This host name is not served here")


def external_url(path: str) -> str:
    """The absolute URL of *path* (``/api/...``, query included): from RUN_HISTORY_PUBLIC_URL
    when set, else from the request's own (checked, trusted) scheme and host."""
    base = public_url(current_app) or f"{request.scheme}://{request.host}{request.script_root}"
    return base + path


def external_url_for(endpoint: str, **values: object) -> str:
    """``url_for(endpoint, **values)`` as an absolute URL built like :func:`external_url`."""
    return external_url(url_for(endpoint, **values)[len(request.script_root):])
