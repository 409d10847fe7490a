"""An honest fake RemoteEngineStore: an in-memory bucket that can be down or tampered."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from trt_provision.errors import EngineGateError, StoreError
from trt_provision.seams import EngineGate, EngineStore
from trt_provision.types import EngineCacheEntry, EngineIdentity, RuntimeTarget


@dataclass
class FakeRemote:
    objects: dict[str, dict[str, bytes]] = field(default_factory=dict)
    down: bool = False
    uploads: int = 0
    fetches: int = 0
    # Timing caches by name: (content, the sha256 the uploader recorded for it).
    timing: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    timing_fetches: list[str] = field(default_factory=list)
    timing_uploads: list[str] = field(default_factory=list)
    max_timing_bytes: int = 1 << 20

    def fetch(
        self,
        identity: EngineIdentity,
        local: EngineStore,
        gate: EngineGate,
        expected: RuntimeTarget,
    ) -> EngineCacheEntry | None:
        self.fetches += 1
        obj = self.objects.get(identity.filename)
        if self.down or obj is None:
            return None
        staged = local.staging_path(identity)
        staged.write_bytes(obj["engine"])
        metadata = read_json(obj["json"])
        entry = local.publish(identity, staged, metadata)
        try:
            return gate.validate(entry.engine_path, expected)
        except EngineGateError:
            return None

    def exists(self, identity: EngineIdentity) -> bool:
        if self.down:
            raise StoreError("remote store check failed: down")
        return identity.filename in self.objects

    def upload(self, entry: EngineCacheEntry) -> bool:
        if self.down:
            return False
        if entry.identity.filename in self.objects:
            return False
        self.uploads += 1
        self.objects[entry.identity.filename] = {
            "engine": entry.engine_path.read_bytes(),
            "json": entry.metadata_path.read_bytes(),
        }
        return True


    def fetch_timing_cache(self, name: str, dest: Path) -> bool:
        """As the S3 store: bounded, digest checked, written only where no file is."""
        self.timing_fetches.append(name)
        found = self.timing.get(name)
        if self.down or found is None:
            return False
        data, digest = found
        if len(data) > self.max_timing_bytes or hashlib.sha256(data).hexdigest() != digest:
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tmp-{os.getpid()}-fake-{dest.name}")
        tmp.write_bytes(data)
        try:
            os.link(tmp, dest)
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return True

    def upload_timing_cache(self, name: str, source: Path) -> bool:
        if self.down or not source.exists():
            return False
        data = source.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if not data or self.timing.get(name, (b"", ""))[1] == digest:
            return False  # nothing new to share
        self.timing_uploads.append(name)
        self.timing[name] = (data, digest)
        return True


def read_json(raw: bytes) -> dict[str, object]:
    import json

    data = json.loads(raw)
    if not isinstance(data, dict):
        raise StoreError("bad metadata")
    return data
