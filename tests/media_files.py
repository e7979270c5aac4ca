"""Small real media files for tests: a PNG (Pillow), a WAV (stdlib wave), a minimal MP4 by hand."""
from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

from PIL import Image


def write_png(path: Path, size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 60, 90)) -> bytes:
    """A real PNG with a gradient (so it is not one flat colour); returns its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    for x in range(size[0]):
        image.putpixel((x, 0), (x * 255 // max(size[0] - 1, 1), 0, 0))
    image.save(path, "PNG")
    return path.read_bytes()


def write_wav(path: Path, seconds: float = 0.5, rate: int = 8000, tone: float = 440.0) -> bytes:
    """A mono 16-bit PCM WAV of a sine tone; returns its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * tone * n / rate)))
                      for n in range(int(seconds * rate)))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return path.read_bytes()


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def write_mp4(path: Path, payload_size: int = 4096) -> bytes:
    """A minimal ISO-BMFF file (ftyp + free + mdat boxes): enough to be served as video/mp4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (_box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2mp41") + _box(b"free", b"")
            + _box(b"mdat", bytes(range(256)) * (payload_size // 256)))
    path.write_bytes(data)
    return data
