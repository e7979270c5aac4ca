"""Resolving an item's file_path in the media dir: only allow-listed regular files inside it."""
import os

import pytest

from execution_history.media import resolve


@pytest.fixture
def media(tmp_path):
    root = tmp_path / "media"
    (root / "exports" / "media").mkdir(parents=True)
    (root / "exports" / "media" / "flower.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / ".index").mkdir()
    (root / ".index" / "x.png").write_bytes(b"secret")
    (root / ".secret.png").write_bytes(b"secret")
    (tmp_path / "outside.png").write_bytes(b"outside")
    os.symlink(tmp_path / "outside.png", root / "link-out.png")
    os.symlink(root / "exports" / "media" / "flower.png", root / "link-in.png")
    os.mkfifo(root / "fifo.png")
    (root / "dir.png").mkdir()
    (root / "notes.txt").write_text("not media")
    return root


def test_a_media_file_inside_resolves(media):
    found = resolve("exports/media/flower.png", media)
    assert found.path == media / "exports" / "media" / "flower.png" and found.mimetype == "image/png"
    assert found.inline and found.size == 8
    assert resolve(str(media / "exports/media/flower.png"), media).path == found.path  # absolute inside
    assert resolve("link-in.png", media).path == found.path  # a symlink that stays inside


@pytest.mark.parametrize("path", ["../outside.png", "exports/../../outside.png", "/etc/passwd", "link-out.png",
                                  "fifo.png", "dir.png", "notes.txt", ".secret.png", ".index/x.png", "missing.png",
                                  "", None, 42, "exports/media/flower.png\x00.txt", "%2e%2e/outside.png"])
def test_everything_else_is_refused(media, path):
    assert resolve(path, media) is None
