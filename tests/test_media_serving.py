"""GET/HEAD /api/runs/<id>/items/<seq>/file: real files through a real gunicorn; escapes refused unread."""
from __future__ import annotations

import builtins
import http.client
import io
import json
import os
import wave
from pathlib import Path

import pytest
from PIL import Image
from werkzeug.http import parse_options_header

from app import create_app
from app.auth import TokenStore
from execution_history import ExecutionTracker, RunStore

from .conftest import LiveServer, assert_error
from .media_files import write_mp4, write_png, write_wav, write_webm

SERVED = {  # file_path -> (item type, Content-Type, inline)
    "exports/media/flower.png": ("output_image", "image/png", True),
    "exports/media/tone.wav": ("output_audio", "audio/wav", True),
    "exports/media/clip.mp4": ("output_video", "video/mp4", True),
    "exports/media/clip.webm": ("output_video", "video/webm", True),
    "exports/media/model.glb": ("output_3d", "model/gltf-binary", False),
    "exports/media/日本 語.png": ("output_image", "image/png", True),
}


def escapes(root: Path) -> list[str]:
    """file_path values a hostile record may hold; every one must be refused."""
    return ["../outside/secret.png", "exports/../../outside/secret.png", "%2e%2e/outside/secret.png",
            str(root.parent / "outside" / "secret.png"), "link-out.png", "fifo.png", "dir.png", ".hidden.png",
            "exports/.cache/x.png", "tokens.json", "pipeline_runs/.index/runs.sqlite3", ".run_history_secret",
            "audit.log", "exports/media/missing.png", "exports/media/flower.png\x00.txt", "/etc/passwd", "",
            "dir-link/secret.png", "exports/media/flower.png/..", "exports/media/flower.png.txt",
            "exports/media/%2e%2e/%2e%2e/%2e%2e/outside/secret.png", "exports/media/..%2f..%2f..%2foutside%2fsecret.png",
            "exports/media/link-in-to-dotdir.png", "exports//media/../../../outside/secret.png"]


def build_site(root: Path) -> tuple[RunStore, str, dict[str, bytes], dict[int, str]]:
    """A media root holding real media, the service's own files and traps; one run naming all of them."""
    media = root / "exports" / "media"
    data = {"exports/media/flower.png": write_png(media / "flower.png"),
            "exports/media/tone.wav": write_wav(media / "tone.wav"),
            "exports/media/clip.mp4": write_mp4(media / "clip.mp4"),
            "exports/media/clip.webm": write_webm(media / "clip.webm", size=(160, 120), frames=20),
            "exports/media/日本 語.png": write_png(media / "日本 語.png", color=(10, 120, 30))}
    (media / "model.glb").write_bytes(b"glTF\x02\x00\x00\x00" + bytes(64))
    data["exports/media/model.glb"] = (media / "model.glb").read_bytes()
    (root.parent / "outside").mkdir()
    write_png(root.parent / "outside" / "secret.png")
    os.symlink(root.parent / "outside" / "secret.png", root / "link-out.png")
    os.symlink(root.parent / "outside", root / "dir-link")  # a folder on the way leads out
    os.symlink(root / "exports" / ".cache" / "x.png", media / "link-in-to-dotdir.png")  # inside, but a dot-folder
    os.mkfifo(root / "fifo.png")
    (root / "dir.png").mkdir()
    write_png(root / ".hidden.png")
    write_png(root / "exports" / ".cache" / "x.png")
    (root / "tokens.json").write_text('{"tokens": []}')
    (root / "audit.log").write_text("")
    store = RunStore(root / "pipeline_runs")
    traps = {}
    with ExecutionTracker("media", user_id="bob", store=store) as run:
        run.log_output_text("no file here")
        for path, (item_type, _, _) in SERVED.items():
            run.log(item_type, None, loop_iteration=1, file_path=path)
        for path in escapes(root):
            traps[run.log("output_image", None, loop_iteration=1, file_path=path)] = path
    (root / ".run_history_secret").write_text("s3cret")  # what create_app would generate
    return store, run.execution_id, data, traps


def seq_of(store: RunStore, execution_id: str, file_path: str) -> int:
    return next(i["sequence_number"] for i in store.load(execution_id)["items"] if i["file_path"] == file_path)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("media") / "root"
    root.mkdir()
    store, execution_id, data, traps = build_site(root)
    server = LiveServer(store.root, root.parent / "gunicorn.log",
                        extra_env={"RUN_HISTORY_MEDIA_DIR": str(root), "RUN_HISTORY_AUDIT_LOG": str(root / "audit.log")})
    yield server, store, execution_id, data, traps
    server.stop()


def fetch(server, path, method="GET", headers=None):
    """One request on its own connection: (status, headers, body). The timeout only guards a hang."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def url(execution_id, seq):
    return f"/api/runs/{execution_id}/items/{seq}/file"


@pytest.mark.parametrize("file_path", sorted(SERVED))
def test_media_is_served_with_its_type(site, file_path):
    server, store, execution_id, data, _ = site
    _, mimetype, inline = SERVED[file_path]
    status, headers, body = fetch(server, url(execution_id, seq_of(store, execution_id, file_path)))
    assert status == 200 and body == data[file_path]
    assert headers["Content-Type"] == mimetype and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Accept-Ranges"] == "bytes" and headers["ETag"] and headers["Last-Modified"]
    assert int(headers["Content-Length"]) == len(body)
    # werkzeug's parser prefers RFC 6266 filename* (the stdlib's email parser reads only the ASCII fallback)
    disposition, params = parse_options_header(headers["Content-Disposition"])
    assert disposition == ("inline" if inline else "attachment")
    assert params["filename"] == Path(file_path).name.replace(" ", "_")
    if mimetype == "image/png":
        assert Image.open(io.BytesIO(body)).size == Image.open(io.BytesIO(data[file_path])).size
    if mimetype == "audio/wav":
        with wave.open(io.BytesIO(body)) as sound:
            assert sound.getnframes() == 4000 and sound.getframerate() == 8000


def check_ranges(server, target, whole):
    """A middle range and a suffix range are 206 with those bytes; a range past the end is a JSON 416."""
    status, headers, body = fetch(server, target, headers={"Range": "bytes=100-1099"})
    assert status == 206 and body == whole[100:1100]
    assert headers["Content-Range"] == f"bytes 100-1099/{len(whole)}" and headers["Content-Length"] == "1000"
    status, headers, body = fetch(server, target, headers={"Range": "bytes=-16"})
    assert status == 206 and body == whole[-16:]
    status, headers, body = fetch(server, target, headers={"Range": f"bytes={len(whole)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(whole)}"
    assert json.loads(body)["code"] == "RANGE_NOT_SATISFIABLE"


@pytest.mark.parametrize("path", ["exports/media/clip.mp4", "exports/media/clip.webm", "exports/media/tone.wav"])
def test_range_requests_get_206_with_those_bytes(site, path):
    server, store, execution_id, data, _ = site
    check_ranges(server, url(execution_id, seq_of(store, execution_id, path)), data[path])


REAL = ["exports/media/flower.png", "exports/media/tone.wav", "exports/media/clip.webm"]


@pytest.mark.parametrize("path", REAL)
def test_etag_and_last_modified_give_304(site, path):
    server, store, execution_id, data, _ = site
    target = url(execution_id, seq_of(store, execution_id, path))
    _, headers, _ = fetch(server, target)
    status, again, body = fetch(server, target, headers={"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b"" and again["ETag"] == headers["ETag"]
    status, _, body = fetch(server, target, headers={"If-Modified-Since": headers["Last-Modified"]})
    assert status == 304 and body == b""
    status, _, body = fetch(server, target, headers={"If-None-Match": '"something-else"'})
    assert status == 200 and body == data[path]


@pytest.mark.parametrize("path", REAL)
def test_head_sends_the_headers_without_a_body(site, path):
    server, store, execution_id, data, _ = site
    status, headers, body = fetch(server, url(execution_id, seq_of(store, execution_id, path)), method="HEAD")
    assert status == 200 and body == b""
    assert headers["Content-Type"] == SERVED[path][1] and int(headers["Content-Length"]) == len(data[path])
    assert headers["Accept-Ranges"] == "bytes" and headers["ETag"] and headers["Last-Modified"]


def test_every_escape_is_a_404(site):
    server, _, execution_id, _, traps = site
    for seq in traps:  # the FIFO among them: a server that opened it would hang here
        status, headers, body = fetch(server, url(execution_id, seq))
        assert status == 404 and headers["Content-Type"] == "application/json", traps[seq]
        assert json.loads(body)["code"] == "NOT_FOUND"


@pytest.mark.parametrize("seq", ["1", "..%2f..%2f1", "%2e%2e", "1.0", "-1", "+2", "999", "%D9%A1", "0x1", " 2",
                                 "99999999999999999999"])
def test_a_bad_sequence_number_or_an_item_without_a_file_is_a_404(site, seq):
    server, _, execution_id, _, _ = site
    status, headers, body = fetch(server, url(execution_id, seq).replace(" ", "%20"))
    assert status == 404 and json.loads(body)["code"] == "NOT_FOUND"


@pytest.mark.parametrize("execution_id", ["exec_20990101_000000_00000000", "exec_..", "..%2f..%2fetc"])
def test_an_unknown_run_is_a_404(site, execution_id):
    server, *_ = site
    status, _, body = fetch(server, url(execution_id, 1))
    assert status == 404 and json.loads(body)["code"] == "NOT_FOUND"


# ---------------------------------------------------------------- in process: spies, audit, scope


@pytest.fixture
def media_app(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    store, execution_id, data, traps = build_site(root)
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(store.root), "RUN_HISTORY_MEDIA_DIR": str(root),
                      "RUN_HISTORY_AUDIT_LOG": str(root / "audit.log")})
    return app, store, execution_id, root, traps


def test_refused_paths_are_never_opened(media_app, monkeypatch):
    app, _, execution_id, root, traps = media_app
    opened = []
    real_os_open, real_open = os.open, builtins.open

    def spy_os_open(path, *args, **kwargs):
        opened.append(os.path.realpath(path))
        return real_os_open(path, *args, **kwargs)

    def spy_open(path, *args, **kwargs):
        if isinstance(path, (str, bytes, os.PathLike)):
            opened.append(os.path.realpath(path))
        return real_open(path, *args, **kwargs)

    client = app.test_client()
    client.get("/api/runs")  # the index is built before spying: its own files are not media reads
    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(builtins, "open", spy_open)
    for seq in traps:
        response = client.get(url(execution_id, seq))
        assert_error(response, 404, "NOT_FOUND")
    monkeypatch.undo()
    targets = {os.path.realpath(root / p) for p in traps.values() if p and "\x00" not in p}
    targets |= {os.path.realpath(root.parent / "outside" / "secret.png")}
    assert not targets & set(opened), sorted(targets & set(opened))


def audit_lines(root):
    return [json.loads(line) for line in (root / "audit.log").read_text().splitlines() if '"media"' in line]


def test_200_and_206_are_audited_304_is_not(media_app):
    app, store, execution_id, root, _ = media_app
    client = app.test_client()
    seq = seq_of(store, execution_id, "exports/media/clip.mp4")
    size = (root / "exports" / "media" / "clip.mp4").stat().st_size
    first = client.get(url(execution_id, seq), headers={"X-Request-ID": "full"})
    first.get_data()
    first.close()
    partial = client.get(url(execution_id, seq), headers={"Range": "bytes=0-9", "X-Request-ID": "part"})
    partial.get_data()
    partial.close()
    client.get(url(execution_id, seq), headers={"If-None-Match": first.headers["ETag"]}).close()
    client.get(url(execution_id, 9999)).close()
    lines = audit_lines(root)
    assert [(e["request_id"], e["status"], e["bytes"], e["sequence_number"]) for e in lines] == [
        ("full", 200, size, seq), ("part", 206, 10, seq)]
    assert all(e["event"] == "media" and e["execution_id"] == execution_id and e["complete"] for e in lines)


def test_media_is_scoped_like_the_run(media_app):
    app, store, execution_id, root, _ = media_app
    tokens = TokenStore(root.parent / "tokens.json")
    alice, bob = tokens.create("alice", "researcher"), tokens.create("bob", "researcher")
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(store.root), "RUN_HISTORY_MEDIA_DIR": str(root),
                      "RUN_HISTORY_TOKENS": str(tokens.path)})
    client = app.test_client()
    target = url(execution_id, seq_of(store, execution_id, "exports/media/flower.png"))
    assert_error(client.get(target), 401, "UNAUTHORIZED")
    assert_error(client.get(target, headers={"Authorization": f"Bearer {alice}"}), 403, "FORBIDDEN")
    response = client.get(target, headers={"Authorization": f"Bearer {bob}"})
    assert response.status_code == 200 and response.mimetype == "image/png"
    response.close()


def test_the_pages_sign_in_session_loads_media(media_app):
    import re

    app, store, execution_id, root, _ = media_app
    tokens = TokenStore(root.parent / "tokens.json")
    alice, bob = tokens.create("alice", "researcher"), tokens.create("bob", "researcher")
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(store.root), "RUN_HISTORY_MEDIA_DIR": str(root),
                      "RUN_HISTORY_TOKENS": str(tokens.path)})
    target = url(execution_id, seq_of(store, execution_id, "exports/media/flower.png"))
    for token, status in [(bob, 200), (alice, 403)]:
        client = app.test_client()
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
        assert client.post("/login", data={"token": token, "csrf": csrf}).status_code == 302
        response = client.get(target)
        assert response.status_code == status
        response.close()
        assert client.get(f"/runs/{execution_id}").status_code == status
        assert_error(client.get("/api/runs"), 401, "UNAUTHORIZED")  # the session opens media only
    tokens.revoke("alice")  # the last client's session dies with its token
    assert_error(client.get(target), 401, "UNAUTHORIZED")
