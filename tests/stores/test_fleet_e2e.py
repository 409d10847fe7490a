"""Two devices sharing one SeaweedFS store, through the compiler and the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from stores.weed_server import ACCESS_KEY, SECRET_KEY, WeedServer
from trt_provision.cli.main import main
from trt_provision.compiler import EngineCompiler
from trt_provision.compose import wire
from trt_provision.config import load_manifest
from trt_provision.stores.s3 import remote_store_from_settings
from trt_provision.types import EngineCompileRequest

pytestmark = [pytest.mark.s3, pytest.mark.tier1]

ROOT = Path(__file__).resolve().parents[2]


def _manifest(tmp_path: Path, weed: WeedServer, bucket: str, extra_settings: str = "") -> Path:
    models = ROOT / "examples" / "models"
    text = f"""
[settings]
{extra_settings}

[remote]
endpoint = "{weed.endpoint}"
bucket = "{bucket}"
prefix = "fleet"
read_timeout_s = 10

[defaults]
precision = "fp32"

[[models]]
name = "demo_cnn"
path = "{models / 'demo_cnn.onnx'}"
profiles = [{{ input = "image", min = [1, 3, 32, 32], opt = [4, 3, 32, 32], max = [8, 3, 32, 32] }}]

[[models]]
name = "two_inputs"
path = "{models / 'two_inputs.onnx'}"
profiles = [{{ input = "token_ids", min = [1, 16], opt = [8, 16], max = [32, 16] }},
            {{ input = "mask", min = [1, 16], opt = [8, 16], max = [32, 16] }}]
"""
    path = tmp_path / f"fleet-{len(list(tmp_path.glob('fleet-*.toml')))}.toml"
    path.write_text(text)
    return path


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACTS_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("ARTIFACTS_SECRET_KEY", SECRET_KEY)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    rc = main(argv)
    out = capsys.readouterr().out
    return rc, json.loads(out) if out.strip().startswith("{") else out


def test_second_device_fetches_instead_of_building(
    tmp_path: Path, weed: WeedServer, bucket: str, creds: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    manifest_path = _manifest(tmp_path, weed, bucket)
    outcomes = []
    for device in ("a", "b"):
        manifest = load_manifest(manifest_path)
        settings = manifest.settings.__class__(
            **{**manifest.settings.__dict__, "cache_dir": tmp_path / device}
        )
        wired = wire(settings, use_remote=False)
        remote = remote_store_from_settings(settings.remote)
        assert remote is not None
        compiler = EngineCompiler(
            runtime=wired.runtime, store=wired.store, gate=wired.gate, host=wired.host,
            remote=remote,
        )
        wired.store.ensure_writable()
        summary = compiler.compile_engines_for_corpus(
            EngineCompileRequest(backbones=manifest.backbones)
        )
        outcomes.append((summary.built, summary.fetched))
    assert outcomes == [(2, 0), (0, 2)]
    assert SECRET_KEY not in caplog.text


def test_push_pull_with_signatures_through_the_cli(
    tmp_path: Path, weed: WeedServer, bucket: str, creds: None,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    key = tmp_path / "keys" / "fleet.key"
    assert main(["keys", "generate", str(key)]) == 0
    capsys.readouterr()
    builder = _manifest(tmp_path, weed, bucket)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")

    rc, out = _run(["provision", str(builder), "--cache-dir", a, "--no-remote", "--json"], capsys)
    assert rc == 0 and out["built"] == 2
    rc, out = _run(["push", str(builder), "--cache-dir", a, "--sign-key", str(key), "--json"],
                   capsys)
    assert rc == 0 and [r["status"] for r in out["results"]] == ["uploaded", "uploaded"]
    rc, out = _run(["push", str(builder), "--cache-dir", a, "--json"], capsys)
    assert rc == 0 and {r["status"] for r in out["results"]} == {"already-present"}

    device = _manifest(
        tmp_path, weed, bucket, f'trust = "require"\npublic_key = "{key}.pub"'
    )
    rc, out = _run(["pull", str(device), "--cache-dir", b, "--json"], capsys)
    assert rc == 0 and [r["status"] for r in out["results"]] == ["fetched", "fetched"]
    rc, out = _run(["pull", str(device), "--cache-dir", b, "--json"], capsys)
    assert rc == 0 and {r["status"] for r in out["results"]} == {"present"}
    rc, out = _run(["provision", str(device), "--cache-dir", b, "--no-remote", "--json"], capsys)
    assert rc == 0 and (out["built"], out["reused"]) == (0, 2)

    rc, out = _run(["cache", "ls", "--cache-dir", b, "--json"], capsys)
    assert rc == 0 and len(out["engines"]) == 2 and all(e["signed"] for e in out["engines"])
    engines = [e["engine"] for e in out["engines"]]
    rc, out = _run(["keys", "verify", *engines, "--public-key", f"{key}.pub", "--json"], capsys)
    assert rc == 0 and all(r["ok"] for r in out["results"])
    rc, out = _run(["cache", "gc", str(device), "--cache-dir", b, "--json"], capsys)
    assert rc == 0 and out["items"] == []

    # A device trusting another key refuses both engines and reports it.
    other = tmp_path / "keys" / "other.key"
    assert main(["keys", "generate", str(other)]) == 0
    capsys.readouterr()
    stranger = _manifest(
        tmp_path, weed, bucket, f'trust = "require"\npublic_key = "{other}.pub"'
    )
    with caplog.at_level(logging.WARNING):
        rc, out = _run(["pull", str(stranger), "--cache-dir", str(tmp_path / "c"), "--json"],
                       capsys)
    assert rc == 1 and {r["status"] for r in out["results"]} == {"not-available"}
    assert SECRET_KEY not in caplog.text


def test_cache_clear_needs_yes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cache").mkdir()  # a --cache-dir that does not exist is a typo, refused
    cache = str(tmp_path / "cache")
    assert main(["cache", "clear", "--cache-dir", cache]) == 1
    assert "--yes" in capsys.readouterr().err
    assert main(["cache", "clear", "--cache-dir", cache, "--yes"]) == 0


def test_fleet_provision_through_the_composition_root(
    tmp_path: Path, weed: WeedServer, bucket: str, creds: None,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    """Builder signs and uploads; a device with only the public key fetches, no build."""
    from trt_provision.trust import generate_keypair, signature_path

    generate_keypair(tmp_path / "fleet.key")
    builder = _manifest(tmp_path, weed, bucket, f'signing_key = "{tmp_path / "fleet.key"}"\n'
                        f'public_key = "{tmp_path / "fleet.key.pub"}"')
    device = _manifest(tmp_path, weed, bucket, f'public_key = "{tmp_path / "fleet.key.pub"}"')
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    rc, out = _run(["provision", str(builder), "--cache-dir", a, "--json"], capsys)
    assert rc == 0 and (out["built"], out["fetched"]) == (2, 0)
    rc, out = _run(["provision", str(device), "--cache-dir", b, "--json"], capsys)
    assert rc == 0 and (out["built"], out["fetched"]) == (0, 2), out
    for result in out["results"]:
        assert signature_path(Path(result["engine"])).is_file()
    rc, out = _run(["provision", str(device), "--cache-dir", b, "--json"], capsys)
    assert rc == 0 and out["reused"] == 2
    # A device trusting another key refuses the fleet's engines and builds its own.
    generate_keypair(tmp_path / "other.key")
    stranger = _manifest(tmp_path, weed, bucket, f'public_key = "{tmp_path / "other.key.pub"}"')
    rc, out = _run(["provision", str(stranger), "--cache-dir", str(tmp_path / "c"), "--json"], capsys)
    assert rc == 0 and (out["built"], out["fetched"]) == (2, 0)
    assert SECRET_KEY not in caplog.text
