"""A small generator of hostile record files: every kind of text breakage a record can hold.

The suite's own stand-in for the realistic corpus in ``../shared/corpus`` (which the tests
must not need): noncharacters, C0/C1 controls, lone surrogate escapes that reached a file
(records.py reads them as U+FFFD), bidi overrides, emoji sequences, line separators,
markup, formula prefixes, texts over Excel's cell limit, hostile metadata keys.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import random
import socket
import stat
from pathlib import Path

#: Every Unicode noncharacter: U+FDD0-U+FDEF and the last two code points of each plane.
NONCHARACTERS = [chr(cp) for cp in range(0xFDD0, 0xFDF0)] + [
    chr(plane << 16 | low) for plane in range(17) for low in (0xFFFE, 0xFFFF)]
C0 = [chr(cp) for cp in range(0x20)]
C1 = [chr(cp) for cp in range(0x7F, 0xA0)]
#: Text pieces of each kind; a hostile string is a shuffle of several.
PIECES = {
    "noncharacters": "".join(NONCHARACTERS),
    "fffe": "broken LLM output \ufffe\uffff end",
    "c0": "".join(C0),
    "c1": "".join(C1),
    "bidi": "abc \u202e evil \u202c \u2066x\u2069 مرحبا שלום",
    "emoji": "🌸 👩‍🔬 👨‍👩‍👧 🏳️‍🌈",
    "combining": "e\u0301 a\u0308\u0308\u0308 Z\u0336",
    "line_breaks": "a\r\nb\nc\rd\u0085e\u2028f\u2029g",
    "markup": "<x a='1'>&amp; ]]> <!-- --> &#0; &#xFFFE;</x>",
    "formula": "=HYPERLINK(\"http://x\")",
    "formula_plus": "+1",
    "formula_minus": "-1",
    "formula_at": "@SUM(A1)",
    "bom_pua": "\ufeff\ue000\U0010fffd\U000f0000",
    "replacement": "\ufffd already",
    "plain": "Eine Blume auf der Wiese",
}


def hostile_text(rng: random.Random) -> str:
    """A few hostile pieces in random order."""
    return " | ".join(rng.sample(list(PIECES.values()), k=rng.randint(2, 5)))


def _item(rng: random.Random, number: int, start: dt.datetime) -> dict:
    text = hostile_text(rng)
    return {
        "sequence_number": number, "stage": rng.randint(0, 4),
        "stage_iteration": rng.choice([None, 1, 8]), "loop_iteration": rng.choice([None, 1, 2]),
        "item_type": rng.choice(["user_input_text", "interception_iteration", "output_text", "pipeline_error"]),
        "timestamp": (start + dt.timedelta(seconds=number)).isoformat(),
        "content": rng.choice([text, text, None, "", PIECES["noncharacters"]]),
        "file_path": rng.choice([None, "exports/media/ü\ufffe.png"]),
        "model_used": rng.choice([None, "gpt-oss:20b", "m\ufffem"]), "backend_used": rng.choice([None, "ollama"]),
        "execution_time": rng.choice([None, 0.25, 1e-9, 12345.678]),
        "metadata": {"k": hostile_text(rng), hostile_text(rng): [1, None, hostile_text(rng)],
                     "nested": {"\uffff": "\ufdd0"}},
    }


def write_hostile_runs(runs_dir: Path, count: int, seed: int = 7, long_every: int = 10) -> list[str]:
    """Write *count* hostile record files into *runs_dir*; returns their ids (in creation order).

    Every third file spells a lone surrogate as a JSON escape (``"\\ud800"``), as files
    written by other tools may; every *long_every*-th holds a text over Excel's cell limit.
    """
    rng = random.Random(seed)
    start = dt.datetime(2025, 11, 3, 20, 0, tzinfo=dt.timezone.utc)
    ids = []
    for n in range(count):
        began = start + dt.timedelta(minutes=n)
        execution_id = f"exec_{began:%Y%m%d_%H%M%S}_{rng.getrandbits(32):08x}"
        items = [_item(rng, number, began) for number in range(1, rng.randint(1, 6) + 1)]
        if long_every and n % long_every == 0:
            items[0]["content"] = ("Stille Post \ufffe🌸\x00 " * 3000)[:40_000]
        record = {
            "execution_id": execution_id, "config_name": rng.choice(["dada", "stillepost", "cfg \ufffe\x01"]),
            "timestamp": began.isoformat(), "finished_at": (began + dt.timedelta(seconds=10)).isoformat(),
            "status": rng.choice(["completed", "failed", "blocked"]), "execution_mode": "eco",
            "safety_level": "kids", "user_id": rng.choice(["anonymous", "u\ufdd0\x7f"]),
            "session_id": "s\u202e1", "total_execution_time": 10.2, "taxonomy_version": "1.0", "items": items,
        }
        text = json.dumps(record, ensure_ascii=True)  # every character as an escape: surrogates fit in
        if n % 3 == 0:  # a lone surrogate that reached the file
            text = text.replace('"session_id": "s\\u202e1"', '"session_id": "s\\ud800\\udfff\\udc00x"', 1)
        (runs_dir / f"{execution_id}.json").write_text(text, encoding="ascii")
        ids.append(execution_id)
    return ids


def xlsx_expected(text: str) -> str:
    """What the contract says an XLSX cell shows of *text* (a short one): C0 controls but
    tab/LF/CR as control pictures, noncharacters and surrogates as U+FFFD, the rest kept."""
    out = []
    for ch in text:
        cp = ord(ch)
        if cp < 0x20 and ch not in "\t\n\r":
            out.append(chr(0x2400 + cp))
        elif 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE or 0xD800 <= cp <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)


#: The kinds of file that are not regular files, each named like a record (API.md: counted unreadable).
SPECIAL_KINDS = ("fifo", "socket", "directory", "dangling symlink", "symlink to a fifo", "symlink to a device",
                 "device")


def make_special_file(path: Path, kind: str) -> bool:
    """Make a file of *kind* (one of SPECIAL_KINDS) at *path*; False if this host cannot (a
    device needs root)."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        here = os.getcwd()
        os.chdir(path.parent)  # a relative name: AF_UNIX paths are limited to ~108 bytes
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(path.name)  # the socket file stays after close
        finally:
            os.chdir(here)
    elif kind == "directory":
        path.mkdir()
    elif kind == "dangling symlink":
        os.symlink(path.parent / "nowhere", path)
    elif kind == "symlink to a fifo":
        target = path.with_name(path.name + ".fifo")
        os.mkfifo(target)
        os.symlink(target, path)
    elif kind == "symlink to a device":
        os.symlink("/dev/null", path)
    else:
        try:
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            return False
    return True


def make_special_files(root: Path) -> list[str]:
    """One of each kind of non-regular file, each named exec_<valid id>.json; their ids."""
    made = []
    for n, kind in enumerate(SPECIAL_KINDS):
        execution_id = f"exec_20250101_00000{n}_0000beef"
        if make_special_file(root / f"{execution_id}.json", kind):
            made.append(execution_id)
    return made
