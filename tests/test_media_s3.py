"""Media in the bucket of an S3 store (SeaweedFS): served like local files, through gunicorn; containment on keys."""
from __future__ import annotations

import io
import json
import wave
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from werkzeug.http import parse_options_header

from app import create_app
from execution_history import ExecutionTracker, RunStore
from execution_history.media import open_media, resolve
from execution_history.media_sources import media_root_for
from execution_history.s3media import S3MediaArea

from .conftest import LiveServer, app_config, assert_error, audit_events, free_port, store_for
from .media_files import write_mp4, write_png, write_wav
from .test_media_serving import check_ranges, fetch, seq_of, url
from .s3server import BUCKET

#: file_path -> (item type, Content-Type); all of them objects under <prefix>/media/
SERVED = {
    "exports/media/flower.png": ("output_image", "image/png"),
    "exports/media/tone.wav": ("output_audio", "audio/wav"),
    "exports/media/clip.mp4": ("output_video", "video/mp4"),
}


def upload(client, key: str, data: bytes) -> None:
    client.put_object(Bucket=BUCKET, Key=key, Body=data)


def build_bucket_site(store, tmp_path: Path) -> tuple[str, dict[str, bytes], dict[int, str], Path]:
    """Media objects under the store's media prefix, traps around them, one run naming all of them."""
    made = tmp_path / "made"
    data = {"exports/media/flower.png": write_png(made / "flower.png"),
            "exports/media/tone.wav": write_wav(made / "tone.wav"),
            "exports/media/clip.mp4": write_mp4(made / "clip.mp4")}
    media = f"{store.prefix}/media"
    for path, content in data.items():
        upload(store.client, f"{media}/{path}", content)
    secret_png = write_png(made / "secret.png", color=(1, 2, 3))
    upload(store.client, f"{store.prefix}/outside.png", secret_png)        # beside the records
    upload(store.client, f"{store.prefix}/.side/x.png", secret_png)        # in the side area
    upload(store.client, f"{media}/.hidden.png", secret_png)              # a dotfile
    upload(store.client, f"{media}/exports/.cache/x.png", secret_png)     # under a dot-folder
    upload(store.client, f"{media}/notes.json", b"{}")                    # off the allow-list
    local = tmp_path / "local-media"  # the local media dir comes first: one file only there
    data["exports/media/local.png"] = write_png(local / "exports" / "media" / "local.png", color=(9, 99, 9))
    traps = ["../outside.png", "exports/../../outside.png", "exports/media/../../../outside.png",
             "./exports/media/flower.png", "exports//media/flower.png", ".hidden.png", "exports/.cache/x.png",
             "../.side/x.png", "notes.json", "exports/media/missing.png", f"/{media}/exports/media/flower.png",
             f"s3://{BUCKET}/{store.prefix}/outside.png", f"s3://other-bucket/{media}/exports/media/flower.png",
             "exports/media/flower.png\x00.txt", "exports/media/\nflower.png", ""]
    sequences = {}
    with ExecutionTracker("media", user_id="bob", store=store, journal_dir=tmp_path / "journal") as run:
        run.log_output_text("no file here")
        for path, (item_type, _) in SERVED.items():
            run.log(item_type, None, loop_iteration=1, file_path=path)
        run.log("output_image", None, loop_iteration=1, file_path="exports/media/local.png")
        run.log("output_image", None, loop_iteration=1, file_path=f"s3://{BUCKET}/{media}/exports/media/flower.png")
        for path in traps:
            sequences[run.log("output_image", None, loop_iteration=1, file_path=path)] = path
    return run.execution_id, data, sequences, local


@pytest.fixture(scope="module")
def site(s3_server, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("s3media")
    store = store_for("s3", tmp_path / "runs")
    execution_id, data, traps, local = build_bucket_site(store, tmp_path)
    audit = tmp_path / "audit.log"
    server = LiveServer(store.root, tmp_path / "gunicorn.log", extra_env={
        "RUN_HISTORY_MEDIA_DIR": str(local), "RUN_HISTORY_AUDIT_LOG": str(audit),
        "RUN_HISTORY_SECRET_KEY": "test-secret-shared-by-every-host"})
    yield server, store, execution_id, data, traps, audit
    server.stop()


@pytest.mark.parametrize("file_path", sorted(SERVED))
def test_bucket_media_are_served_with_their_type(site, file_path):
    server, store, execution_id, data, _, _ = site
    status, headers, body = fetch(server, url(execution_id, seq_of(store, execution_id, file_path)))
    assert status == 200 and body == data[file_path]
    assert headers["Content-Type"] == SERVED[file_path][1] and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Accept-Ranges"] == "bytes" and headers["ETag"] and headers["Last-Modified"]
    assert int(headers["Content-Length"]) == len(body)
    disposition, params = parse_options_header(headers["Content-Disposition"])
    assert disposition == "inline" and params["filename"] == Path(file_path).name
    if file_path.endswith(".png"):
        assert Image.open(io.BytesIO(body)).size == (64, 48)
    if file_path.endswith(".wav"):
        with wave.open(io.BytesIO(body)) as sound:
            assert sound.getnframes() == 4000 and sound.getframerate() == 8000


def test_an_s3_url_inside_the_media_prefix_and_a_local_file_are_served_too(site):
    server, store, execution_id, data, _, _ = site
    media_url = f"s3://{BUCKET}/{store.prefix}/media/exports/media/flower.png"
    status, _, body = fetch(server, url(execution_id, seq_of(store, execution_id, media_url)))
    assert status == 200 and body == data["exports/media/flower.png"]
    status, _, body = fetch(server, url(execution_id, seq_of(store, execution_id, "exports/media/local.png")))
    assert status == 200 and body == data["exports/media/local.png"]


def test_range_requests_on_bucket_media_get_206_with_those_bytes(site):
    server, store, execution_id, data, _, _ = site
    path = "exports/media/clip.mp4"
    check_ranges(server, url(execution_id, seq_of(store, execution_id, path)), data[path])


def test_bucket_media_etag_and_last_modified_give_304_and_head_has_no_body(site):
    server, store, execution_id, data, _, _ = site
    target = url(execution_id, seq_of(store, execution_id, "exports/media/flower.png"))
    _, headers, _ = fetch(server, target)
    status, again, body = fetch(server, target, headers={"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b"" and again["ETag"] == headers["ETag"]
    status, _, body = fetch(server, target, headers={"If-Modified-Since": headers["Last-Modified"]})
    assert status == 304 and body == b""
    status, head, body = fetch(server, target, method="HEAD")
    assert status == 200 and body == b"" and int(head["Content-Length"]) == len(data["exports/media/flower.png"])
    assert head["ETag"] == headers["ETag"]


def test_keys_outside_the_media_prefix_and_missing_objects_are_404(site):
    server, _, execution_id, _, traps, _ = site
    for seq, path in traps.items():
        status, headers, body = fetch(server, url(execution_id, seq))
        assert status == 404 and headers["Content-Type"] == "application/json", path
        assert json.loads(body)["code"] == "NOT_FOUND"


def test_bucket_media_200_and_206_are_audited_304_is_not(site):
    server, store, execution_id, data, _, audit = site
    target = url(execution_id, seq_of(store, execution_id, "exports/media/tone.wav"))
    _, headers, _ = fetch(server, target, headers={"X-Request-ID": "s3-full"})
    fetch(server, target, headers={"Range": "bytes=0-9", "X-Request-ID": "s3-part"})
    fetch(server, target, headers={"If-None-Match": headers["ETag"], "X-Request-ID": "s3-cached"})
    ours = lambda lines: [e for e in lines if e.get("event") == "media" and e["request_id"].startswith("s3-")]  # noqa: E731
    lines = ours(audit_events(audit, until=lambda lines: len(ours(lines)) >= 2))
    assert [(e["request_id"], e["status"], e["bytes"]) for e in lines] == [
        ("s3-full", 200, len(data["exports/media/tone.wav"])), ("s3-part", 206, 10)]


# ---------------------------------------------------------------- in process


def test_zip_export_and_thumbnail_read_bucket_media(s3_server, tmp_path):
    store = store_for("s3", tmp_path / "runs")
    execution_id, data, traps, local = build_bucket_site(store, tmp_path)
    client = create_app(app_config(store, local)).test_client()
    response = client.get(f"/api/runs/{execution_id}/export/zip")
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(response.get_data()))
    manifest = json.loads(archive.read("manifest.json"))
    (run,) = manifest["runs"]
    files = {f["file_path"]: archive.read(f["path"]) for f in run["files"]}
    assert {path: files[path] for path in SERVED} == {path: data[path] for path in SERVED}
    assert files["exports/media/local.png"] == data["exports/media/local.png"]
    assert {m["file_path"] for m in run["missing"]} == {p for p in traps.values() if p}
    thumbnail = client.get(f"/api/runs/{execution_id}/thumbnail")
    assert thumbnail.status_code == 200 and thumbnail.mimetype == "image/webp"
    assert Image.open(io.BytesIO(thumbnail.get_data())).format == "WEBP"


def test_a_zip_export_job_reads_bucket_media_too(s3_server, tmp_path):
    """The job's writer gets the app's media sources (local dir, then the bucket), like a direct zip."""
    from .test_zip_export import finished_job

    store = store_for("s3", tmp_path / "runs")
    execution_id, data, _, local = build_bucket_site(store, tmp_path)
    client = create_app(app_config(store, local)).test_client()
    response = client.post("/api/exports", json={"format": "zip", "filters": {"ids": execution_id}})
    assert response.status_code == 202, response.get_json()
    download = finished_job(client, response.get_json()["id"])
    archive = zipfile.ZipFile(io.BytesIO(download.get_data()))
    assert archive.testzip() is None
    (run,) = json.loads(archive.read("manifest.json"))["runs"]
    files = {f["file_path"]: archive.read(f["path"]) for f in run["files"]}
    assert {path: files[path] for path in [*SERVED, "exports/media/local.png"]} == {
        path: data[path] for path in [*SERVED, "exports/media/local.png"]}


def test_an_s3_media_dir_whose_endpoint_is_down_is_a_json_503(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    store = RunStore(tmp_path / "runs")  # records on disk, media in a bucket that does not answer
    with ExecutionTracker("media", store=store, journal_dir=tmp_path / "journal") as run:
        run.log_output_image(file_path="exports/media/flower.png", loop_iteration=1)
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(store.root), "RUN_HISTORY_MEDIA_DIR": "s3://runs/media",
                      "RUN_HISTORY_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    client = app.test_client()
    response = client.get(url(run.execution_id, 1))
    assert_error(response, 503, "STORE_UNAVAILABLE")
    page = client.get(f"/runs/{run.execution_id}")  # the page still renders, the file shown as missing
    assert page.status_code == 200 and "File not found" in page.get_data(as_text=True)


def test_an_object_replaced_while_it_is_read_fails_the_read(s3_server, tmp_path):
    store = store_for("s3", tmp_path / "runs")
    area = S3MediaArea.of_store(store)
    key = f"{store.prefix}/media/clip.mp4"
    upload(store.client, key, b"A" * 2_000_000)
    media, handle = open_media("clip.mp4", area)
    with handle:
        assert media.size == 2_000_000 and handle.read(10) == b"A" * 10
        upload(store.client, key, b"B" * 2_000_000)
        handle.seek(1_500_000)  # past the buffer: a new ranged GET, conditional on the ETag seen first
        with pytest.raises(OSError, match="changed while it was read"):
            handle.read(10)


@pytest.mark.parametrize("file_path, key", [
    ("exports/media/flower.png", "p/media/exports/media/flower.png"),
    ("日本 語.png", "p/media/日本 語.png"),
    (f"s3://{BUCKET}/p/media/a/b.wav", "p/media/a/b.wav"),
    ("../x.png", None), ("a/../b.png", None), ("./a.png", None), ("a//b.png", None), ("a/.b/c.png", None),
    (".x.png", None), ("a.json", None), ("a.png/", None), ("/p/media/a.png", None), ("a\x00.png", None),
    ("a\r.png", None), (f"s3://{BUCKET}/p/other/a.png", None), (f"s3://{BUCKET}/p/mediax/a.png", None),
    ("s3://other/p/media/a.png", None), ("x" * 1100 + ".png", None), (None, None), (42, None), ("", None),
])
def test_containment_is_decided_on_the_key_text(file_path, key):
    area = S3MediaArea(f"s3://{BUCKET}/p/media", client=object())  # no request is made for any of these
    assert area.key_for(file_path) == key


def test_media_root_for_picks_local_then_bucket(s3_server, tmp_path):
    local = RunStore(tmp_path / "runs")
    assert media_root_for(str(tmp_path), local) == tmp_path  # a local store: the local dir, unchanged
    s3 = store_for("s3", tmp_path / "runs")
    chain = media_root_for(str(tmp_path), s3)
    assert chain[0] == tmp_path and chain[1].url == f"{s3.url}/media"
    assert media_root_for("s3://runs/elsewhere", local).url == "s3://runs/elsewhere"
    assert resolve("exports/media/none.png", chain) is None
