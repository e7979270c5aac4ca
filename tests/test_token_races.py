"""The tokens file under concurrent writers: two processes creating and revoking at once never
resurrect a revoked token, threads never corrupt the file; it stays mode 0600."""
import json
import multiprocessing
import stat
import threading

from app.auth import TokenStore, hash_token


def _churn(path, user, rounds, queue):
    """Create a token for *user*, then revoke it, *rounds* times; report what was revoked."""
    store = TokenStore(path)
    revoked = []
    for _ in range(rounds):
        token = store.create(user, "researcher")
        assert store.revoke(user) >= 1
        revoked.append(hash_token(token))
    queue.put(revoked)


def test_two_processes_never_resurrect_a_revoked_token(tmp_path):
    path = tmp_path / "tokens.json"
    TokenStore(path).create("keeper", "admin")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_churn, args=(str(path), user, 60, queue)) for user in ("alice", "bob")]
    for p in procs:
        p.start()
    revoked = [h for _ in procs for h in queue.get(timeout=300)]
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    entries = json.loads(path.read_text())["tokens"]
    assert [e["user"] for e in entries] == ["keeper"]  # every revoked token stays revoked
    assert not set(revoked) & {e["sha256"] for e in entries} and len(revoked) == 120
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_threads_never_corrupt_the_file(tmp_path):
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    made = []
    errors = []

    def work(n):
        try:
            for i in range(25):
                made.append(store.create(f"user{n}", "researcher"))
                store.authenticate(made[-1])
                if i % 5 == 4:
                    store.revoke(f"user{n}")
        except Exception as err:  # reported below, with the file's state
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    entries = json.loads(path.read_text())["tokens"]  # valid JSON: never torn
    assert entries == [] and TokenStore(path).users() == []  # every user's last step was a revoke
    fresh = TokenStore(path)
    token = fresh.create("carol", "admin")
    assert fresh.authenticate(token).user == "carol"


def test_a_live_server_reading_the_file_while_two_processes_churn_it(runs_dir, tmp_path):
    """Through gunicorn: while two processes create and revoke tokens, every request with a
    standing token is served (never a 500 from a torn file, never a 401), and afterwards
    every revoked token is refused."""
    import urllib.error
    import urllib.request

    from .conftest import LiveServer

    path = tmp_path / "tokens.json"
    keeper = TokenStore(path).create("keeper", "admin")
    server = LiveServer(runs_dir, tmp_path / "gunicorn.log", extra_env={"RUN_HISTORY_TOKENS": str(path)})

    def ask(token):
        request = urllib.request.Request(server.url + "/api/runs/stats", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_churn, args=(str(path), user, 40, queue)) for user in ("alice", "bob")]
        for p in procs:
            p.start()
        statuses = []
        while any(p.is_alive() for p in procs) or not statuses:
            statuses.append(ask(keeper))
        assert len(statuses) > 10 and set(statuses) == {200}, sorted(set(statuses))
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        revoked = [h for _ in procs for h in queue.get(timeout=10)]
        assert len(revoked) == 80 and [e["user"] for e in json.loads(path.read_text())["tokens"]] == ["keeper"]
        late = TokenStore(path).create("carol", "researcher")
        TokenStore(path).revoke("carol")
        assert ask(late) == 401 and ask(keeper) == 200
    finally:
        server.stop()
