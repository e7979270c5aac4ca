"""XML: well-formed XML 1.0 for any content, valid against schema/execution_record.xsd.

Written incrementally with lxml's ``xmlfile``: one record's element tree at a time.
:func:`read_records` decodes an export back into records (the format is documented in
the XSD): text XML 1.0 cannot carry is base64 of its UTF-8 with ``encoding="base64"``,
nulls are empty elements with ``null="true"``, item metadata is JSON text.
"""
from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator
from importlib import resources
from typing import Any

from lxml import etree

from ..records import EXPORT_RUN_FIELDS, ITEM_FIELDS, OPTIONAL_RUN_FIELDS, RunItemSchema, RunRecordSchema
from .info import ExportInfo

FORMAT_VERSION = "1.0"
#: Characters outside XML 1.0's Char production (lone surrogates never reach here).
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

#: The run's elements in <metadata> (records.py owns the lists); OPTIONAL_RUN_FIELDS are written
#: only when the record has them (older files), after these.
RUN_FIELDS = EXPORT_RUN_FIELDS
_INTEGERS = frozenset({"items_count", "sequence_number", "stage", "stage_iteration", "loop_iteration", "used_seed"})
_DOUBLES = frozenset({"total_execution_time", "execution_time"})
_KNOWN_RUN = frozenset(RunRecordSchema().fields)
_KNOWN_ITEM = frozenset(RunItemSchema().fields)


def xsd_bytes() -> bytes:
    """The XSD every export validates against (also served at /api/schema/execution_record.xsd)."""
    return resources.files("execution_history").joinpath("schema/execution_record.xsd").read_bytes()


def _add(parent: etree._Element, name: str, value: Any) -> None:
    element = etree.SubElement(parent, name)
    if value is None:
        element.set("null", "true")
    elif isinstance(value, str):
        if _NOT_XML.search(value):
            element.set("encoding", "base64")
            element.text = base64.b64encode(value.encode("utf-8")).decode("ascii")
        else:
            element.text = value
    elif isinstance(value, float):
        element.text = repr(value)
    else:
        element.text = str(value)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def record_element(record: dict[str, Any]) -> etree._Element:
    """One ``<execution_record>`` element."""
    root = etree.Element("execution_record")
    meta = etree.SubElement(root, "metadata")
    for name in RUN_FIELDS:
        _add(meta, name, len(record["items"]) if name == "items_count" else record[name])
    for name in OPTIONAL_RUN_FIELDS:
        if name in record:
            _add(meta, name, record[name])
    extra = {k: v for k, v in record.items() if k not in _KNOWN_RUN}
    if extra:
        _add(meta, "extra_fields", _json(extra))
    items = etree.SubElement(root, "items", count=str(len(record["items"])))
    for item in record["items"]:
        element = etree.SubElement(items, "item", sequence=str(item["sequence_number"]),
                                   stage=str(item["stage"]), type=_NOT_XML.sub("\ufffd", item["item_type"]))
        for name in ITEM_FIELDS:
            _add(element, name, _json(item[name]) if name == "metadata" else item[name])
        extra = {k: v for k, v in item.items() if k not in _KNOWN_ITEM}
        if extra:
            _add(element, "extra_fields", _json(extra))
    return root


class _Chunks:
    """A file-like sink for ``xmlfile`` whose contents are taken out between records."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def write_xml(records: Iterable[dict[str, Any]], *, bulk: bool = False,
              info: ExportInfo | None = None) -> Iterator[bytes]:
    """The record (bulk: ``<execution_records count="N">`` around them), streamed."""
    info = info or ExportInfo()
    sink = _Chunks()
    with etree.xmlfile(sink, encoding="utf-8") as xf:
        xf.write_declaration()
        if not bulk:
            for record in records:
                xf.write(record_element(record))
            xf.flush()
            yield sink.take()
            return
        attributes = {"format_version": FORMAT_VERSION, "exported_at": info.exported_at.isoformat()}
        if info.count is not None:
            attributes["count"] = str(info.count)
        with xf.element("execution_records", attributes):
            xf.write("\n")
            for record in records:
                xf.write(record_element(record), "\n")
                xf.flush()
                if len(sink.parts) > 64:
                    yield sink.take()
    yield sink.take()


# ---------------------------------------------------------------- reading back


def _value(element: etree._Element) -> Any:
    if element.get("null") == "true":
        return None
    text = element.text or ""
    if element.get("encoding") == "base64":
        return base64.b64decode(text).decode("utf-8")
    if element.tag in _INTEGERS:
        return int(text)
    if element.tag in _DOUBLES:
        return float(text)
    return text


def _fields(element: etree._Element, skip: str = "") -> dict[str, Any]:
    data: dict[str, Any] = {}
    for child in element:
        if child.tag == "extra_fields":
            data.update(json.loads(_value(child)))
        elif child.tag != skip:
            data[child.tag] = _value(child)
    return data


def read_records(xml: bytes) -> list[dict[str, Any]]:
    """Decode an XML export (one record or bulk) back into records."""
    root = etree.fromstring(xml, parser=etree.XMLParser(huge_tree=True))
    elements = [root] if root.tag == "execution_record" else list(root)
    records = []
    for element in elements:
        record = _fields(element.find("metadata"), skip="items_count")
        record["items"] = []
        for item_element in element.find("items"):
            item = _fields(item_element)
            item["metadata"] = json.loads(item["metadata"])
            record["items"].append(item)
        records.append(record)
    return records
