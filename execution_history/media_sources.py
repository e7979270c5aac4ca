"""Where an app reads media from: the local media dir, an S3 area, or both in order.

Apart from :mod:`execution_history.media` (the local checks, which every area shares)
because it alone may load ``s3media`` and with it boto3, and only when S3 is configured.
"""
from __future__ import annotations

import os
from typing import Any

from .media import MediaRoot, default_media_root


def media_root_for(configured: str | os.PathLike[str] | None, store: Any = None,
                   endpoint_url: str | None = None) -> MediaRoot:
    """Where the app reads media from (serving, thumbnails, zip exports).

    ``RUN_HISTORY_MEDIA_DIR=s3://bucket/prefix``: that S3 area only (at *endpoint_url*, default
    the store's, else ``RUN_HISTORY_S3_ENDPOINT_URL``). Else the local media dir
    (:func:`default_media_root`), and for an S3 record store then the bucket's
    ``<prefix>/media`` area: a file found locally is served from disk, as on a local store.
    """
    configured = configured or os.environ.get("RUN_HISTORY_MEDIA_DIR") or None
    if configured is not None and os.fspath(configured).startswith("s3://"):
        from .s3media import S3MediaArea  # boto3 only for those who use S3

        return S3MediaArea(os.fspath(configured), endpoint_url or getattr(store, "endpoint_url", None)
                           or os.environ.get("RUN_HISTORY_S3_ENDPOINT_URL") or None)
    local = default_media_root(configured)
    if store is not None and str(getattr(store, "root", "")).startswith("s3://"):
        from .s3media import S3MediaArea

        return (local, S3MediaArea.of_store(store))
    return local
