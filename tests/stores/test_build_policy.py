"""``settings.build``: one builder of record per device type. ``never`` devices fetch,
verify and load what it published (signed, with a public key) and report a missing engine;
``always`` builds here and never replaces a signed engine of the remote store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stores.weed_server import ACCESS_KEY, SECRET_KEY, WeedServer
from trt_provision.cli.main import main

pytestmark = [pytest.mark.s3, pytest.mark.tier1]

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "examples" / "models"


def _manifest(tmp_path: Path, weed: WeedServer, bucket: str, settings: str,
              name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[settings]
{settings}

[remote]
endpoint = "{weed.endpoint}"
bucket = "{bucket}"
prefix = "fleet"
read_timeout_s = 10

[[models]]
name = "demo_cnn"
path = "{MODELS / 'demo_cnn.onnx'}"
profiles = [{{ input = "image", min = [1, 3, 32, 32], opt = [4, 3, 32, 32], max = [8, 3, 32, 32] }}]

[[models]]
name = "dynamic_mlp"
path = "{MODELS / 'dynamic_mlp.onnx'}"
profiles = [{{ input = "features", min = [1, 64], opt = [16, 64], max = [64, 64] }}]
""")
    return path


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACTS_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("ARTIFACTS_SECRET_KEY", SECRET_KEY)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    capsys.readouterr()
    rc = main(argv)
    captured = capsys.readouterr()
    out = captured.out
    return rc, json.loads(out) if out.strip().startswith("{") else out, captured.err


def _outcomes(out: dict[str, Any]) -> dict[str, str]:
    return {r["name"]: r["outcome"] for r in out["results"]}


def test_never_fetches_what_the_builder_published_and_reports_the_rest_missing(
    tmp_path: Path, weed: WeedServer, bucket: str, creds: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trt_provision.trust import generate_keypair

    generate_keypair(tmp_path / "fleet.key")
    pub = tmp_path / "fleet.key.pub"
    builder = _manifest(tmp_path, weed, bucket, f'build = "always"\nsigning_key = '
                        f'"{tmp_path / "fleet.key"}"\npublic_key = "{pub}"', "builder")
    device = _manifest(tmp_path, weed, bucket, f'build = "never"\npublic_key = "{pub}"',
                       "device")
    dev = str(tmp_path / "device")

    # Nothing published yet: the dry run and the run both say missing, naming the target.
    rc, out, _ = _run(["provision", str(device), "--cache-dir", dev, "--dry-run", "--json"],
                      capsys)
    assert rc == 1 and set(_outcomes(out).values()) == {"missing"}
    assert out["missing"] == 2 and out["build"] == "never"
    rc, out, err = _run(["provision", str(device), "--cache-dir", dev], capsys)
    assert rc == 1
    assert "missing 2" in out and 'settings.build = "never"' in out and "builder of record" in out
    assert "cpu-" in out  # the target that must build it
    assert "not provisioned: demo_cnn (missing), dynamic_mlp (missing)" in err
    assert not list(Path(dev).rglob("*.engine"))

    # The builder of record publishes one model (signed).
    rc, out, _ = _run(["provision", str(builder), "--cache-dir", str(tmp_path / "b"),
                       "--json"], capsys)
    assert rc == 0 and out["built"] == 2
    # Take one back out of the bucket: the device then fetches one and misses one.
    from trt_provision.config import load_manifest
    from trt_provision.stores.s3 import remote_store_from_settings

    remote = remote_store_from_settings(load_manifest(device).settings.remote)
    assert remote is not None
    mlp = next(r for r in out["results"] if r["name"] == "dynamic_mlp")["filename"]
    client = remote.client()
    for suffix in ("", ".sha256", ".json", ".sig"):
        client.delete_object(Bucket=bucket, Key=f"fleet/engines/dynamic_mlp/{mlp}{suffix}")

    # The report asks the remote store too (one HEAD per engine, nothing downloaded).
    rc, out, _ = _run(["report", str(device), "--cache-dir", str(tmp_path / "b"), "--remote",
                       "--json"], capsys)
    assert rc == 0 and out["remote_checked"] is True
    on_remote = {e["model"]: e["on_remote"] for e in out["engines"]}
    assert on_remote == {"demo_cnn": True, "dynamic_mlp": False}
    assert {e["signature"]["state"] for e in out["engines"]} == {"verified"}
    rc, out, _ = _run(["report", str(device), "--cache-dir", dev, "--remote", "--json"],
                      capsys)
    assert {c["model"]: (c["state"], c["on_remote"]) for c in out["matrix"]} == {
        "demo_cnn": ("missing", True), "dynamic_mlp": ("missing", False)}

    rc, out, _ = _run(["provision", str(device), "--cache-dir", dev, "--dry-run", "--json"],
                      capsys)
    assert rc == 1 and _outcomes(out) == {"demo_cnn": "planned", "dynamic_mlp": "missing"}
    notes = {r["name"]: r["notes"] for r in out["results"]}
    assert notes["demo_cnn"] == ["would be fetched: the remote store has it"]
    rc, out, _ = _run(["provision", str(device), "--cache-dir", dev, "--dry-run"], capsys)
    assert "FETCH" in out and "MISSING" in out
    rc, out, _ = _run(["provision", str(device), "--cache-dir", dev, "--json"], capsys)
    assert rc == 1 and _outcomes(out) == {"demo_cnn": "fetched", "dynamic_mlp": "missing"}
    assert out["built"] == 0

    # The fetched, signed engine is reused from then on; building is refused up front.
    rc, out, _ = _run(["provision", str(device), "--cache-dir", dev, "--json"], capsys)
    assert _outcomes(out)["demo_cnn"] == "reused"
    rc, _, err = _run(["provision", str(device), "--cache-dir", dev, "--force-rebuild"], capsys)
    assert rc == 1 and 'settings.build = "never"' in err


def test_never_refuses_an_unsigned_local_engine_when_the_manifest_has_a_key(
    tmp_path: Path, weed: WeedServer, bucket: str, creds: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trt_provision.trust import generate_keypair

    generate_keypair(tmp_path / "fleet.key")
    local = _manifest(tmp_path, weed, bucket, "", "local")
    device = _manifest(tmp_path, weed, bucket,
                       f'build = "never"\npublic_key = "{tmp_path / "fleet.key.pub"}"', "dev")
    dev = str(tmp_path / "dev-cache")
    rc, out, _ = _run(["provision", str(local), "--cache-dir", dev, "--no-remote", "--json"],
                      capsys)
    assert rc == 0 and out["built"] == 2
    rc, out, _ = _run(["provision", str(device), "--cache-dir", dev, "--no-remote", "--json"],
                      capsys)
    assert rc == 1 and set(_outcomes(out).values()) == {"missing"}
    # The same cache under the default policy reuses them: only "never" asks for a signer.
    rc, out, _ = _run(["provision", str(local), "--cache-dir", dev, "--no-remote", "--json"],
                      capsys)
    assert rc == 0 and out["reused"] == 2


def test_always_builds_here_and_never_replaces_a_signed_remote_engine(
    tmp_path: Path, weed: WeedServer, bucket: str, creds: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trt_provision.trust import generate_keypair

    generate_keypair(tmp_path / "fleet.key")
    generate_keypair(tmp_path / "other.key")
    first = _manifest(tmp_path, weed, bucket, f'signing_key = "{tmp_path / "fleet.key"}"',
                      "first")
    second = _manifest(tmp_path, weed, bucket, f'build = "always"\nsigning_key = '
                       f'"{tmp_path / "other.key"}"', "second")
    rc, out, _ = _run(["provision", str(first), "--cache-dir", str(tmp_path / "a"), "--json"],
                      capsys)
    assert rc == 0 and out["built"] == 2
    from trt_provision.config import load_manifest
    from trt_provision.stores.s3 import remote_store_from_settings

    remote = remote_store_from_settings(load_manifest(first).settings.remote)
    assert remote is not None
    client = remote.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    before = {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}
    # "fallback" would fetch these; "always" builds its own and leaves the bucket alone.
    rc, out, _ = _run(["provision", str(second), "--cache-dir", str(tmp_path / "b"), "--json"],
                      capsys)
    assert rc == 0 and (out["built"], out["fetched"]) == (2, 0)
    after = {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}
    assert after == before
    rc, out, _ = _run(["provision", str(second), "--cache-dir", str(tmp_path / "b"),
                       "--dry-run", "--json"], capsys)
    assert rc == 0 and set(_outcomes(out).values()) == {"reused"}
