"""Thumbnails: Pillow-made WebPs, cached on disk under a cap; broken or huge images refused cleanly."""
import io
import os
import struct
import zlib

import pytest
from PIL import Image

from app import create_app
from execution_history import ExecutionTracker, RunStore
from execution_history.media import resolve
from execution_history.thumbnails import THUMBNAIL_SIZE, ThumbnailCache

from .conftest import assert_error
from .media_files import write_png


def png_header_only(width, height):
    """A PNG that claims width x height pixels but holds none (a decompression bomb's header)."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@pytest.fixture
def gallery(tmp_path):
    media = tmp_path / "media"
    write_png(media / "big.png", size=(800, 600))
    good = (media / "big.png").read_bytes()
    (media / "truncated.png").write_bytes(good[: len(good) // 2])
    (media / "bomb.png").write_bytes(png_header_only(30_000, 30_000))
    (media / "text.png").write_bytes(b"not an image at all")
    store = RunStore(tmp_path / "runs")
    ids = {}
    for name in ["big", "truncated", "bomb", "text", None]:
        with ExecutionTracker(f"thumb-{name}", store=store) as run:
            run.log_output_text("words")
            if name:
                run.log_output_image(file_path=f"{name}.png", loop_iteration=1)
        ids[name] = run.execution_id
    app = create_app({"TESTING": True, "RUN_HISTORY_DIR": str(store.root), "RUN_HISTORY_MEDIA_DIR": str(media)})
    return app.test_client(), store, media, ids


def test_a_thumbnail_is_a_small_webp_of_the_first_image(gallery):
    client, store, media, ids = gallery
    response = client.get(f"/api/runs/{ids['big']}/thumbnail")
    assert response.status_code == 200 and response.mimetype == "image/webp"
    with Image.open(io.BytesIO(response.get_data())) as image:
        assert image.format == "WEBP" and image.size == (THUMBNAIL_SIZE, THUMBNAIL_SIZE * 3 // 4)
    cached = list((store.root / ".thumbnails").glob("*.webp"))
    assert len(cached) == 1 and cached[0].read_bytes() == response.get_data()
    again = client.get(f"/api/runs/{ids['big']}/thumbnail", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304
    write_png(media / "big.png", size=(200, 400))  # a changed file gets a new thumbnail
    os.utime(media / "big.png", ns=(1, 1))
    changed = client.get(f"/api/runs/{ids['big']}/thumbnail")
    with Image.open(io.BytesIO(changed.get_data())) as image:
        assert image.size == (THUMBNAIL_SIZE // 2, THUMBNAIL_SIZE)


@pytest.mark.parametrize("name", ["truncated", "bomb", "text", None])
def test_broken_huge_or_missing_images_are_a_404_never_a_500(gallery, name):
    client, store, _, ids = gallery
    assert_error(client.get(f"/api/runs/{ids[name]}/thumbnail"), 404, "NOT_FOUND")
    assert not list((store.root / ".thumbnails").glob("*.webp"))


def test_the_cache_keeps_under_its_cap_evicting_the_oldest(tmp_path):
    media = tmp_path / "media"
    cache = ThumbnailCache(tmp_path / "cache", max_bytes=1)
    made = []
    for n in range(3):
        write_png(media / f"{n}.png", size=(300 + n, 200))
        found = resolve(f"{n}.png", media)
        with open(found.path, "rb") as handle:
            assert cache.get(found, handle)
        made.append(cache.folder / (cache.key(found) + ".webp"))
    assert [path.exists() for path in made] == [False, False, True]  # only the newest stays
    cache.max_bytes = 10**9
    for n, path in enumerate(made[:2]):
        found = resolve(f"{n}.png", media)
        with open(found.path, "rb") as handle:
            cache.get(found, handle)
        os.utime(cache.folder / (cache.key(found) + ".webp"), ns=(n + 1, n + 1))  # oldest first
    sizes = sorted(p.stat().st_size for p in cache.folder.glob("*.webp"))
    cache.max_bytes = sum(sizes) - 1
    assert cache.evict() == 1 and not made[0].exists() and made[1].exists() and made[2].exists()
