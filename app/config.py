"""Configuration: defaults as plain constants, and reading the RUN_HISTORY_* environment."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

#: Every setting, with its default. Each is read from the environment variable of the same
#: name; an explicit mapping passed to ``create_app`` wins over both.
DEFAULTS: dict[str, Any] = {
    "RUN_HISTORY_DIR": None,           # None: RUN_HISTORY_DIR unset -> exports/pipeline_runs
    "RUN_HISTORY_TOKENS": None,        # path of the tokens file; None: access control off
    "RUN_HISTORY_SECRET_KEY": None,    # None: generated once and kept beside the data folder
    "RUN_HISTORY_LINK_TTL": 900,       # seconds a download link stays valid
    "RUN_HISTORY_AUDIT_LOG": None,     # None: audit.log in the data folder's parent
    "RUN_HISTORY_STALE_AFTER": 600,    # seconds without an item before a running run is stale
    "RUN_HISTORY_RESCAN_SECONDS": 60,  # full stat check of every file (catches in-place edits)
    "RUN_HISTORY_FOLDER_WATCH": 1,     # 0: keep the index in step by listing the folder, no inotify
    "RUN_HISTORY_RUNNING_REFRESH": 1,  # seconds between looks at the journals of runs in progress
    "RUN_HISTORY_NAIVE_TIMEZONE": "UTC",   # IANA zone of naive timestamps in older record files
    "RUN_HISTORY_MEDIA_DIR": None,     # None: the working directory the app was started in
    "RUN_HISTORY_EXPORT_TTL": 86400,   # seconds an export job's file is kept after it finished
    "RUN_HISTORY_EXPORT_WORKERS": 1,   # export jobs run at once per host
    "RUN_HISTORY_EXPORT_STALE_AFTER": 15,  # seconds without a heartbeat before a job's worker counts as dead
    "RUN_HISTORY_PUBLIC_URL": None,    # e.g. https://runs.example.org: absolute URLs are built from it
    "RUN_HISTORY_TRUSTED_HOSTS": "localhost,127.0.0.1,[::1]",  # Host headers accepted (comma-separated)
    "RUN_HISTORY_TRUSTED_PROXIES": 0,  # how many proxies' X-Forwarded-* headers to believe
    "RUN_HISTORY_INDEX_DIR": None,     # None: <data dir>/.index if writable, else a per-user cache folder
    "RUN_HISTORY_JOURNAL_DIR": None,   # None: <data dir>/.journal for a local store, else per-user cache
    "RUN_HISTORY_S3_ENDPOINT_URL": None,   # a non-AWS S3 endpoint (SeaweedFS, MinIO, Ceph)
    "RUN_HISTORY_RETENTION_DAYS": None,    # None: keep runs forever; N: prune finished runs older than N days
    "RUN_HISTORY_RECORD_CACHE_MB": 4,  # checked records kept per process (execution_history/record_cache.py); 0: off
}

_INTEGER_KEYS = {"RUN_HISTORY_LINK_TTL", "RUN_HISTORY_STALE_AFTER", "RUN_HISTORY_RESCAN_SECONDS",
                 "RUN_HISTORY_RUNNING_REFRESH", "RUN_HISTORY_EXPORT_TTL", "RUN_HISTORY_EXPORT_WORKERS",
                 "RUN_HISTORY_EXPORT_STALE_AFTER", "RUN_HISTORY_FOLDER_WATCH",
                 "RUN_HISTORY_TRUSTED_PROXIES", "RUN_HISTORY_RECORD_CACHE_MB"}
#: Whole numbers that may also be unset (None).
_OPTIONAL_INTEGER_KEYS = {"RUN_HISTORY_RETENTION_DAYS"}


def load_config(explicit: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Defaults, then the environment, then *explicit* (tests, embedding apps).

    :raises ValueError: if a numeric setting is not a whole number.
    """
    environ = os.environ if environ is None else environ
    config = dict(DEFAULTS)
    for key in DEFAULTS:
        if environ.get(key):
            config[key] = environ[key]
    config.update(explicit or {})
    for key in _INTEGER_KEYS | _OPTIONAL_INTEGER_KEYS:
        if config[key] is None and key in _OPTIONAL_INTEGER_KEYS:
            continue
        try:
            config[key] = int(config[key])
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a whole number, not {config[key]!r}") from None
    return config
