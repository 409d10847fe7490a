"""An honest fake RemoteEngineStore: an in-memory bucket that can be down or tampered."""

from __future__ import annotations

from dataclasses import dataclass, field

from trt_provision.errors import EngineGateError, StoreError
from trt_provision.seams import EngineGate, EngineStore
from trt_provision.types import EngineCacheEntry, EngineIdentity, RuntimeTarget


@dataclass
class FakeRemote:
    objects: dict[str, dict[str, bytes]] = field(default_factory=dict)
    down: bool = False
    uploads: int = 0
    fetches: int = 0

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


def read_json(raw: bytes) -> dict[str, object]:
    import json

    data = json.loads(raw)
    if not isinstance(data, dict):
        raise StoreError("bad metadata")
    return data
