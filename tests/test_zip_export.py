"""The zip export: records and media, manifest.json and SHA256SUMS, checked with zipfile, unzip and sha256sum."""
from __future__ import annotations

import collections
import datetime as dt
import hashlib
import io
import json
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from werkzeug.http import parse_options_header

from app import create_app
from execution_history import ExecutionTracker, RunStore
from execution_history.exporters.zip_writer import write_zip

from .media_files import write_mp4, write_png, write_wav


@pytest.fixture
def site(tmp_path):
    """Two runs with real media (one file named in a script with a space), one lost file, one escape."""
    media = tmp_path / "media"
    originals = {"exports/media/flower.png": write_png(media / "exports/media/flower.png"),
                 "exports/media/tone.wav": write_wav(media / "exports/media/tone.wav"),
                 "exports/media/日本 語.mp4": write_mp4(media / "exports/media/日本 語.mp4"),
                 str(media / "exports/media/flower.png"): None}  # absolute inside: the same file again
    store = RunStore(tmp_path / "runs")
    ids = []
    for config, paths in [("one", ["exports/media/flower.png", "exports/media/tone.wav", "exports/media/gone.png"]),
                          ("two", ["exports/media/日本 語.mp4", str(media / "exports/media/flower.png"),
                                   "../../etc/passwd.png"])]:
        with ExecutionTracker(config, store=store) as run:
            run.log_user_input_text(f"prompt for {config}")
            for path in paths:
                run.log("output_video" if path.endswith(".mp4") else "output_image", None, loop_iteration=1,
                        file_path=path)
        ids.append(run.execution_id)
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(store.root), "RUN_HISTORY_MEDIA_DIR": str(media),
                      "RUN_HISTORY_AUDIT_LOG": str(tmp_path / "audit.log")})
    originals[str(media / "exports/media/flower.png")] = originals["exports/media/flower.png"]
    return app, store, ids, media, originals


def check_with_real_tools(data: bytes, folder: Path) -> dict:
    """zipfile's CRC check, ``unzip -t``, extraction and ``sha256sum -c SHA256SUMS``; returns the manifest."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    folder.mkdir()
    (folder.parent / f"{folder.name}.zip").write_bytes(data)
    test = subprocess.run(["unzip", "-t", f"{folder.name}.zip"], cwd=folder.parent, capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr
    subprocess.run(["unzip", "-q", str(folder.parent / f"{folder.name}.zip"), "-d", str(folder)], check=True)
    sums = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    listed = {line.split("  ", 1)[1] for line in (folder / "SHA256SUMS").read_text().splitlines()}
    extracted = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert listed == extracted - {"SHA256SUMS"}  # every file but itself
    return json.loads((folder / "manifest.json").read_text())


def test_one_run_zip_holds_its_record_media_manifest_and_sums(site, tmp_path):
    app, store, ids, _, originals = site
    client = app.test_client()
    response = client.get(f"/api/runs/{ids[0]}/export/zip")
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/zip"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{ids[0]}.zip"'
    data = response.get_data()
    manifest = check_with_real_tools(data, tmp_path / "one")
    folder = tmp_path / "one" / ids[0]
    assert (folder / "record.json").read_bytes() == client.get(f"/api/runs/{ids[0]}/export/json").get_data()
    assert json.loads((folder / "record.json").read_bytes()) == store.load(ids[0])
    [run] = manifest["runs"]
    assert run["execution_id"] == ids[0]
    assert [(f["sequence_number"], f["path"]) for f in run["files"]] == [
        (2, f"{ids[0]}/media/2_flower.png"), (3, f"{ids[0]}/media/3_tone.wav")]
    for entry in run["files"]:
        assert (tmp_path / "one" / entry["path"]).read_bytes() == originals[entry["file_path"]]
        assert entry["size"] == len(originals[entry["file_path"]])
    assert [(m["sequence_number"], m["file_path"]) for m in run["missing"]] == [(4, "exports/media/gone.png")]
    with Image.open(folder / "media" / "2_flower.png") as image:
        assert image.format == "PNG"


def test_bulk_zip_takes_the_filters_and_keeps_names_safe(site, tmp_path):
    app, store, ids, _, originals = site
    client = app.test_client()
    response = client.get("/api/runs/export/zip?config=two")
    assert response.status_code == 200 and response.headers["X-Total-Count"] == "1"
    manifest = check_with_real_tools(response.get_data(), tmp_path / "two")
    [run] = manifest["runs"]
    assert run["execution_id"] == ids[1]
    assert [f["path"] for f in run["files"]] == [f"{ids[1]}/media/2_日本_語.mp4", f"{ids[1]}/media/3_flower.png"]
    assert [m["file_path"] for m in run["missing"]] == ["../../etc/passwd.png"]  # refused, never read
    everything = client.get("/api/runs/export/zip?order=asc")
    manifest = check_with_real_tools(everything.get_data(), tmp_path / "all")
    assert [r["execution_id"] for r in manifest["runs"]] == ids  # started in this order (timestamp asc)


def test_a_file_that_vanishes_mid_export_is_listed_as_missing(site, tmp_path):
    _, store, ids, media, _ = site
    chunks = write_zip(store.iter_records(ids), bulk=True, media_root=media)
    first = next(chunks)  # run one's record.json has left; its media are not read yet
    assert first.startswith(b"PK\x03\x04")
    (media / "exports/media/tone.wav").unlink()
    data = first + b"".join(chunks)
    manifest = check_with_real_tools(data, tmp_path / "vanished")
    one = manifest["runs"][0]
    assert "exports/media/tone.wav" in [m["file_path"] for m in one["missing"]]
    assert "exports/media/tone.wav" not in [f["file_path"] for f in one["files"]]
    assert len(manifest["runs"]) == 2


def test_the_first_bytes_leave_before_the_archive_is_built(site):
    _, store, ids, media, _ = site
    taken = []

    def records():
        for execution_id in ids:
            taken.append(execution_id)
            yield store.load(execution_id)

    chunks = write_zip(records(), bulk=True, media_root=media)
    assert next(chunks).startswith(b"PK\x03\x04") and taken == ids[:1]
    chunks.close()


def test_zip64_structures_are_written_and_read(site, tmp_path, monkeypatch):
    """Past 4 GiB, offsets and sizes need ZIP64 records; lowering zipfile's limit makes a small archive need them."""
    _, store, ids, media, _ = site
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    data = b"".join(write_zip(store.iter_records(ids), bulk=True, media_root=media))
    monkeypatch.undo()
    assert b"PK\x06\x06" in data[-200:]  # the ZIP64 end of central directory record
    manifest = check_with_real_tools(data, tmp_path / "zip64")
    assert len(manifest["runs"]) == 2


def test_cli_exports_zip_for_one_run_and_with_filters(site, tmp_path):
    app, store, ids, _, _ = site
    runner = app.test_cli_runner()
    result = runner.invoke(args=["runs", "export", ids[0], "--format", "zip", "-o", str(tmp_path / "cli-one.zip")])
    assert result.exit_code == 0, result.output
    manifest = check_with_real_tools((tmp_path / "cli-one.zip").read_bytes(), tmp_path / "cli-one")
    assert [r["execution_id"] for r in manifest["runs"]] == [ids[0]] and len(manifest["runs"][0]["files"]) == 2
    result = runner.invoke(args=["runs", "export", "--all", "--config", "two", "--format", "ZIP",
                                 "-o", str(tmp_path / "cli-two.zip")])
    assert result.exit_code == 0, result.output
    manifest = check_with_real_tools((tmp_path / "cli-two.zip").read_bytes(), tmp_path / "cli-two")
    assert [r["execution_id"] for r in manifest["runs"]] == [ids[1]] and manifest["filters"]["config"] == "two"


def test_zip_export_is_audited_like_other_exports(site, tmp_path):
    app, _, ids, _, _ = site
    response = app.test_client().get(f"/api/runs/{ids[0]}/export/zip")
    size = len(response.get_data())
    response.close()
    bulk = app.test_client().get("/api/runs/export/zip?config=two")
    bulk_size = len(bulk.get_data())
    bulk.close()
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [(e["event"], e["format"], e.get("execution_id"), e["bytes"], e["rows"]) for e in lines] == [
        ("export", "zip", ids[0], size, 1), ("export", "zip", None, bulk_size, 1)]
    assert lines[1]["filters"]["config"] == "two" and lines[1]["status"] == 200


def test_a_record_of_any_shape_still_makes_a_valid_archive(tmp_path):
    record = {"execution_id": "../../evil", "items": [
        {"sequence_number": 1, "item_type": "output_image", "file_path": "a/../../b\n.png"},
        {"sequence_number": 1, "item_type": "output_image", "file_path": None}]}
    data = b"".join(write_zip([record, record], media_root=tmp_path, info=None))
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert all(".." not in name and not name.startswith("/") for name in names)
    manifest = check_with_real_tools(data, tmp_path / "odd")
    assert [r["record"]["path"] for r in manifest["runs"]] == ["evil/record.json", "evil_2/record.json"]
    assert dt.datetime.fromisoformat(manifest["exported_at"]).tzinfo is not None


class PartialArchive(io.RawIOBase):
    """A seekable view of a streamed archive of which only the head and the tail were kept (zeros between)."""

    def __init__(self, head: bytes, tail: bytes, length: int) -> None:
        super().__init__()
        self.head, self.tail, self.length, self.pos = head, tail, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: self.length}[whence] + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        size = min(len(buffer), self.length - self.pos)
        tail_start = self.length - len(self.tail)
        data = bytearray(size)
        for n in range(size):  # slow per byte, but only headers and small entries are read
            at = self.pos + n
            data[n] = self.head[at] if at < len(self.head) else self.tail[at - tail_start] if at >= tail_start else 0
        buffer[:size] = data
        self.pos += size
        return size


def test_a_file_past_4_gib_makes_a_zip64_archive(tmp_path):
    """A real 4 GiB + 1 MiB (sparse) file: its entry and every offset after it need ZIP64."""
    media = tmp_path / "media"
    media.mkdir()
    big_size = 4 * 2**30 + 2**20
    with open(media / "big.mp4", "wb") as handle:
        handle.truncate(big_size)
    small = write_png(media / "small.png")
    record = {"execution_id": "exec_20251103_205239_896e054c", "items": [
        {"sequence_number": 1, "item_type": "output_video", "file_path": "big.mp4"},
        {"sequence_number": 2, "item_type": "output_image", "file_path": "small.png"}]}
    head, last, kept, length = b"", collections.deque(), 0, 0  # the archive itself is never kept whole
    for chunk in write_zip([record], media_root=media):
        if len(head) < 65536:
            head += chunk[:65536 - len(head)]
        last.append(chunk)
        kept += len(chunk)
        while kept - len(last[0]) >= 4 * 2**20:  # the last 4 MiB or more: small entries and directories
            kept -= len(last.popleft())
        length += len(chunk)
    assert length > big_size
    archive = zipfile.ZipFile(PartialArchive(head, b"".join(last), length))
    entries = {info.filename: info for info in archive.infolist()}
    prefix = record["execution_id"]
    assert entries[f"{prefix}/media/1_big.mp4"].file_size == big_size
    assert entries[f"{prefix}/media/2_small.png"].header_offset > 2**32
    assert archive.read(f"{prefix}/media/2_small.png") == small  # found through the ZIP64 records, CRC checked
    manifest = json.loads(archive.read("manifest.json"))
    assert [f["size"] for f in manifest["runs"][0]["files"]] == [big_size, len(small)]
    sums = dict(reversed(line.split("  ", 1)) for line in archive.read("SHA256SUMS").decode().splitlines())
    assert sums[f"{prefix}/media/2_small.png"] == hashlib.sha256(small).hexdigest()


def finished_job(client, job_id):
    """The download of a job, once the executor (started by the POST, in this process) has done it."""
    deadline = time.monotonic() + 60
    while (state := client.get(f"/api/exports/{job_id}").get_json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    assert state["state"] == "done", state
    return client.get(f"/api/exports/{job_id}/download")


def test_bulk_zip_as_an_export_job_bundles_the_same_media(site, tmp_path, monkeypatch):
    """The media dir set in the app's config only (no environment variable) reaches the job's writer too."""
    monkeypatch.delenv("RUN_HISTORY_MEDIA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # a writer that fell back to the working directory would find nothing
    app, store, ids, _, originals = site
    client = app.test_client()
    response = client.post("/api/exports", json={"format": "zip", "filters": {"config": "one"}})
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    download = finished_job(client, job["id"])
    assert download.status_code == 200 and download.headers["Content-Type"] == "application/zip"
    manifest = check_with_real_tools(download.get_data(), tmp_path / "job")
    direct = check_with_real_tools(client.get("/api/runs/export/zip?config=one").get_data(), tmp_path / "direct")
    assert [r["execution_id"] for r in manifest["runs"]] == [ids[0]]
    assert manifest["runs"] == direct["runs"]  # the same records, files, hashes and missing files as the direct export
    assert [f["file_path"] for f in manifest["runs"][0]["files"]] == ["exports/media/flower.png",
                                                                       "exports/media/tone.wav"]


def test_a_pseudonymized_zip_job_is_the_pseudonymized_direct_export(site, tmp_path):
    app, store, ids, _, _ = site
    client = app.test_client()
    response = client.post("/api/exports", json={"format": "zip", "filters": {"config": "two"},
                                                 "options": {"pseudonymize": True}})
    assert response.status_code == 202, response.get_json()
    download = finished_job(client, response.get_json()["id"])
    assert download.status_code == 200
    name = parse_options_header(download.headers["Content-Disposition"])[1]["filename"]
    assert name.startswith("runs_") and name.endswith("_pseudonymized.zip")
    check_with_real_tools(download.get_data(), tmp_path / "job")
    direct = client.get("/api/runs/export/zip?config=two&pseudonymize=true")
    check_with_real_tools(direct.get_data(), tmp_path / "direct")
    job_record = json.loads((tmp_path / "job" / ids[1] / "record.json").read_bytes())
    assert job_record == json.loads((tmp_path / "direct" / ids[1] / "record.json").read_bytes())
    assert job_record["user_id"].startswith("u_") and job_record["user_id"] != store.load(ids[1])["user_id"]
