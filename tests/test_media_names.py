"""Hostile media file names (controls, noncharacters, very long, formula text): zip export, file route, run page.

The names are real files on disk (Linux allows every character but ``/`` and NUL in a name);
each one is served, bundled under a safe archive name (zipfile, ``unzip -t``, ``sha256sum -c``)
and shown on the run page without widening it.
"""
from __future__ import annotations

import json
import os

import pytest
from lxml import html as lxml_html
from werkzeug.http import parse_options_header

from app import create_app
from execution_history import ExecutionTracker, RunStore
from execution_history.media import MAX_NAME

from .hostile_records import C0, C1, NONCHARACTERS
from .media_files import write_png, write_wav
from .test_zip_export import check_with_real_tools

#: File names a pipeline may write: every C0/C1 control but NUL (and "/"), noncharacters, formula
#: text, bidi overrides, a name of 250 bytes without a break, quotes and separators of a header.
HOSTILE_NAMES = {
    "controls": "".join(c for c in C0 + C1 if c not in "\x00/") + ".png",
    "noncharacters": "".join(NONCHARACTERS[:8]) + "\ufffe\uffff.png",
    "formula": '=HYPERLINK("http://example.invalid","click").png',
    "formula_plus": "+49 170 1234567;@SUM(A1:A9).wav",
    "bidi": "abc\u202egnp.exe\u202c.png",
    "long": "B" * 246 + ".png",  # 250 bytes: a file system's longest name, no space anywhere
    "header": 'a"; filename="evil.html\r\nX-Injected: 1.png',
    "newline_sums": "line\nbreak\\back.png",  # would need sha256sum's escaped format if kept
}


@pytest.fixture
def named(tmp_path):
    media = tmp_path / "media"
    data = {}
    for key, name in HOSTILE_NAMES.items():
        path = media / "exports" / "media" / name
        data[key] = write_wav(path) if name.endswith(".wav") else write_png(path, size=(32, 24))
    store = RunStore(tmp_path / "runs")
    with ExecutionTracker("names", store=store) as run:
        run.log_user_input_text("hostile file names")
        seqs = {key: run.log("output_audio" if name.endswith(".wav") else "output_image", None, loop_iteration=1,
                             file_path=f"exports/media/{name}") for key, name in HOSTILE_NAMES.items()}
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(store.root), "RUN_HISTORY_MEDIA_DIR": str(media),
                      "RUN_HISTORY_AUDIT_LOG": str(tmp_path / "audit.log")})
    return app, store, run.execution_id, seqs, data


def test_hostile_names_are_served_with_a_safe_header(named):
    app, _, execution_id, seqs, data = named
    client = app.test_client()
    for key, seq in seqs.items():
        response = client.get(f"/api/runs/{execution_id}/items/{seq}/file")
        assert response.status_code == 200 and response.get_data() == data[key], key
        header = response.headers["Content-Disposition"]
        assert header.isascii() and "\r" not in header and "\n" not in header and "X-Injected" not in header.split(";")[0]
        kind, params = parse_options_header(header)
        assert kind == "inline" and params["filename"].endswith((".png", ".wav")), (key, header)
        assert all(ch.isprintable() and ch not in '/\\"' for ch in params["filename"]), (key, params)
        assert len(params["filename"]) <= MAX_NAME
        response.close()


def test_hostile_names_make_a_valid_zip(named, tmp_path):
    app, store, execution_id, seqs, data = named
    response = app.test_client().get(f"/api/runs/{execution_id}/export/zip")
    assert response.status_code == 200
    manifest = check_with_real_tools(response.get_data(), tmp_path / "out")  # zipfile, unzip -t, sha256sum -c
    [run] = manifest["runs"]
    assert run["missing"] == []
    by_seq = {f["sequence_number"]: f for f in run["files"]}
    for key, seq in seqs.items():
        entry = by_seq[seq]
        assert entry["file_path"] == f"exports/media/{HOSTILE_NAMES[key]}"  # the record's text, kept in the manifest
        name = entry["path"].split("/")[-1]
        assert entry["path"] == f"{execution_id}/media/{name}" and name.startswith(f"{seq}_")
        assert all(ch.isprintable() for ch in name) and "\\" not in name and len(name.encode()) <= 255
        assert (tmp_path / "out" / entry["path"]).read_bytes() == data[key]
    assert len({f["path"] for f in run["files"]}) == len(seqs)
    record = json.loads((tmp_path / "out" / execution_id / "record.json").read_bytes())
    assert record == store.load(execution_id)


def test_hostile_names_are_shown_visibly_on_the_run_page(named):
    app, _, execution_id, seqs, _ = named
    doc = lxml_html.fromstring(app.test_client().get(f"/runs/{execution_id}").get_data(as_text=True))
    captions = {int(li.get("id").split("-")[1]): li.xpath(".//figcaption[@class='file']/code")[0].text_content()
                for li in doc.xpath("//li[@class='item']") if li.xpath(".//figure")}
    assert sorted(captions) == sorted(seqs.values())  # every file found and shown inline
    for key, seq in seqs.items():
        shown = captions[seq]
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or 0x202A <= ord(ch) <= 0x202E for ch in shown), (
            key, shown)
        assert shown.startswith("exports/media/") and shown.endswith((".png", ".wav"))
    assert "\u2408\u2409\u240a" in captions[seqs["controls"]] and "[U+0085]" in captions[seqs["controls"]]
    assert captions[seqs["bidi"]] == "exports/media/abc[U+202E]gnp.exe[U+202C].png"  # no reordering trick
    assert captions[seqs["formula"]] == 'exports/media/=HYPERLINK("http://example.invalid","click").png'


def test_a_long_name_folder_does_not_break_the_names(tmp_path):
    """A long hostile name in a folder of long names: the archive name is cut, keeps its extension, stays unique."""
    media = tmp_path / "media"
    names = ["C" * 240 + f"{n}.png" for n in range(3)]
    for name in names:
        write_png(media / name)
    store = RunStore(tmp_path / "runs")
    with ExecutionTracker("long", store=store) as run:
        for name in names + names[:1]:
            run.log_output_image(file_path=name, loop_iteration=1)
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(store.root), "RUN_HISTORY_MEDIA_DIR": str(media)})
    manifest = check_with_real_tools(app.test_client().get(f"/api/runs/{run.execution_id}/export/zip").get_data(),
                                     tmp_path / "out")
    paths = [f["path"] for f in manifest["runs"][0]["files"]]
    assert len(set(paths)) == 4 and all(p.endswith(".png") and len(os.path.basename(p).encode()) <= 255 for p in paths)
