"""Opening a store's index: RunIndex for a local folder, S3RunIndex for S3, in the layout's index folder.

Apart from :mod:`execution_history.stores` on purpose: the tracker imports that module,
and pipeline code must load no index module and no SQLite (tests/test_imports.py).
"""
from __future__ import annotations

from typing import Any

from .index import RunIndex
from .s3index import S3RunIndex
from .stores import Layout, is_s3


def open_index(layout: Layout, **options: Any) -> RunIndex:
    """The index of *layout*'s store in its index folder (SQLite; never opened before a fork)."""
    if is_s3(layout.store):
        return S3RunIndex(layout.store, folder=layout.index, journal_dir=layout.journal, **options)
    return RunIndex(layout.store, folder=layout.index, journal_dir=layout.journal, **options)
