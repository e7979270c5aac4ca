"""ExportInfo: what a writer may want to know about the export as a whole."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExportInfo:
    """What a writer may want to say about the export as a whole (XML count, XLSX About sheet)."""

    count: int | None = None                                 # runs in a bulk export, if known
    filters: dict[str, Any] = field(default_factory=dict)    # wire filters that selected them
    exported_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
