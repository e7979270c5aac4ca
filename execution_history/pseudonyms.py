"""Pseudonymized exports: user and session ids replaced by keyed HMAC pseudonyms.

``user_id`` ``alice`` becomes ``u_`` + the first 12 hex digits of HMAC-SHA256(secret key,
``alice``), ``session_id`` the same with ``s_``: stable for one key (two exports can be
joined on them), not reversible without it. Only these two fields are rewritten, in the
records and in the filters an export reports (the XLSX About sheet); item content and
metadata are free text and stay as they are.

The transform works on records before any writer sees them, so every format (and the
export jobs, links and CLI that share the writers) gets it alike.
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a type only: execution_history/exporters/__init__.py imports this module
    from .exporters.info import ExportInfo

#: The export option that asks for pseudonyms (a parameter of every export route).
OPTION = "pseudonymize"
#: Field -> pseudonym prefix.
PREFIXES = {"user_id": "u_", "session_id": "s_"}
#: What a pseudonymized download's file name gains before its extension.
FILE_SUFFIX = "_pseudonymized"
DIGITS = 12


def pseudonym(secret_key: str, value: str, prefix: str) -> str:
    """*prefix* + the first 12 hex digits of HMAC-SHA256(*secret_key*, *value*)."""
    digest = hmac.new(secret_key.encode("utf-8"), value.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return prefix + digest.hexdigest()[:DIGITS]


def pseudonymize_fields(data: dict[str, Any], secret_key: str) -> dict[str, Any]:
    """A copy of *data* (a record or wire filters) with its user and session ids replaced; null stays null."""
    changed = dict(data)
    for name, prefix in PREFIXES.items():
        value = changed.get(name)
        if value is not None:
            changed[name] = pseudonym(secret_key, value if isinstance(value, str) else str(value), prefix)
    return changed


def iter_pseudonymized(records: Iterable[dict[str, Any]], secret_key: str) -> Iterator[dict[str, Any]]:
    """*records* with their user and session ids replaced, one at a time (flat memory)."""
    for record in records:
        yield pseudonymize_fields(record, secret_key)


def prepare_export(records: Iterable[dict[str, Any]], info: ExportInfo | None, options: dict[str, Any],
                   secret_key: str | None) -> tuple[Iterable[dict[str, Any]], ExportInfo | None, dict[str, Any], bool]:
    """What the writer gets for an export with these *options*: (records, info, the writer's own
    options, whether pseudonymized). The one place the ``pseudonymize`` option is applied.

    :raises ValueError: if pseudonyms are asked for without a secret key (never exported in clear).
    """
    options = dict(options)
    if not options.pop(OPTION, False):
        return records, info, options, False
    if not secret_key:
        raise ValueError("a pseudonymized export needs the app's secret key")
    if info is not None:
        info = replace(info, filters=pseudonymize_fields(info.filters, secret_key))
    return iter_pseudonymized(records, secret_key), info, options, True
