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
    "RUN_HISTORY_RUNNING_REFRESH": 1,  # seconds between looks at the journals of runs in progress
}

_INTEGER_KEYS = {"RUN_HISTORY_LINK_TTL", "RUN_HISTORY_STALE_AFTER", "RUN_HISTORY_RESCAN_SECONDS",
                 "RUN_HISTORY_RUNNING_REFRESH"}


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
    for key in _INTEGER_KEYS:
        try:
            config[key] = int(config[key])
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a whole number of seconds, not {config[key]!r}") from None
    return config
