"""The side area: atomic create-if-absent, replace, safe keys, special files ignored."""
import multiprocessing
import os

import pytest

from execution_history.side import LocalSideArea


@pytest.fixture
def side(tmp_path):
    return LocalSideArea(tmp_path / ".side")


def test_create_put_get_delete_list(side):
    assert side.get("jobs/a.json") is None and side.list("jobs") == []
    assert side.create("jobs/a.json", b"one") is True
    assert side.create("jobs/a.json", b"two") is False and side.get("jobs/a.json") == b"one"
    side.put("jobs/a.json", b"three")
    side.put("jobs/b.json", b"four")
    assert side.get("jobs/a.json") == b"three" and side.list("jobs") == ["jobs/a.json", "jobs/b.json"]
    assert side.delete("jobs/a.json") is True and side.delete("jobs/a.json") is False
    assert side.list("jobs") == ["jobs/b.json"]
    assert oct(side.path_for("jobs/b.json").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "jobs/../../x", ".hidden", "jobs/.x", "a//b",
                                 "jobs/x y", "jobs/ü"])
def test_bad_keys_are_refused(side, key):
    with pytest.raises(ValueError):
        side.get(key)


def test_a_fifo_is_not_read(side):
    side.put("jobs/real.json", b"x")
    os.mkfifo(side.path_for("jobs/fifo.json"))
    assert side.get("jobs/fifo.json") is None  # never blocks
    assert side.list("jobs") == ["jobs/real.json"]


def _claim(root, key, results):
    results.put(LocalSideArea(root).create(key, str(os.getpid()).encode()))


def test_exactly_one_of_many_processes_claims_a_key(tmp_path):
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path / ".side"), "leases/x", results)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    assert sorted(results.get(timeout=5) for _ in procs) == [False] * 7 + [True]


def test_put_file_open_and_size(side, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(b"x" * 300_000)
    side.put_file("jobs/big.bin", source)
    assert side.size("jobs/big.bin") == 300_000 and side.size("jobs/none") is None
    with side.open("jobs/big.bin") as handle:
        assert handle.read() == source.read_bytes()
    assert side.open("jobs/none") is None
