"""Run history for AI pipelines: the tracker, the record store and their errors."""
from .errors import (
                     ExecutionHistoryError,
                     ExportTooLarge,
                     Forbidden,
                     FormatNotImplemented,
                     InvalidFormat,
                     InvalidParameter,
                     InvalidRecord,
                     LinkExpired,
                     RunAlreadyExists,
                     RunNotFound,
                     StorageError,
                     Unauthorized,
                     UnknownParameter,
)
from .records import is_valid_execution_id, new_execution_id
from .storage import RunStore, resolve_data_dir
from .taxonomy import TAXONOMY, TAXONOMY_VERSION, ItemType
from .tracker import ExecutionTracker

__version__ = "0.1.0"

__all__ = [
    "ExecutionHistoryError", "ExecutionTracker", "ExportTooLarge", "Forbidden", "FormatNotImplemented",
    "InvalidFormat", "InvalidParameter", "InvalidRecord", "ItemType", "LinkExpired",
    "RunAlreadyExists", "RunNotFound", "RunStore", "StorageError", "TAXONOMY", "TAXONOMY_VERSION",
    "Unauthorized", "UnknownParameter", "is_valid_execution_id", "new_execution_id", "resolve_data_dir",
]
