"""Small real media files for tests: a PNG (Pillow), a WAV (stdlib wave), a playable WebM (VP8 frames from
Pillow's libwebp in a Matroska container written here), a minimal MP4 box structure by hand."""
from __future__ import annotations

import io
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


def _ebml(element_id: int, payload: bytes) -> bytes:
    """One EBML element: its id, its size as an 8-byte vint, its payload."""
    ident = element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")
    return ident + (0x01 << 56 | len(payload)).to_bytes(8, "big") + payload


def _uint(element_id: int, value: int) -> bytes:
    return _ebml(element_id, value.to_bytes(max((value.bit_length() + 7) // 8, 1), "big"))


def vp8_keyframe(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    """A VP8 key frame, encoded by Pillow's libwebp (a lossy WebP holds exactly one, in its ``VP8 `` chunk)."""
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "WEBP", lossless=False, quality=60)
    data = out.getvalue()
    at = data.index(b"VP8 ")
    length = struct.unpack("<I", data[at + 4:at + 8])[0]
    return data[at + 8:at + 8 + length]


def write_webm(path: Path, size: tuple[int, int] = (64, 48), frames: int = 10, frame_ms: int = 100) -> bytes:
    """A real, playable WebM video (Matroska, one VP8 track, *frames* key frames of changing colour)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = _ebml(0x1A45DFA3, _uint(0x4286, 1) + _uint(0x42F7, 1) + _uint(0x42F2, 4) + _uint(0x42F3, 8)
                   + _ebml(0x4282, b"webm") + _uint(0x4287, 2) + _uint(0x4285, 2))
    info = _ebml(0x1549A966, _uint(0x2AD7B1, 1_000_000) + _ebml(0x4D80, b"run-history tests")
                 + _ebml(0x5741, b"run-history tests") + _ebml(0x4489, struct.pack(">d", frames * frame_ms)))
    video = _ebml(0xE0, _uint(0xB0, size[0]) + _uint(0xBA, size[1]))
    tracks = _ebml(0x1654AE6B, _ebml(0xAE, _uint(0xD7, 1) + _uint(0x73C5, 1) + _uint(0x83, 1)
                                     + _ebml(0x86, b"V_VP8") + video))
    blocks = b"".join(  # SimpleBlock: track 1 (vint 0x81), timecode relative to the cluster, key frame flag
        _ebml(0xA3, b"\x81" + struct.pack(">h", n * frame_ms) + b"\x80"
              + vp8_keyframe(size, (n * 25 % 256, 80, 255 - n * 25 % 256)))
        for n in range(frames))
    cluster = _ebml(0x1F43B675, _uint(0xE7, 0) + blocks)
    data = header + _ebml(0x18538067, info + tracks + cluster)
    path.write_bytes(data)
    return data
