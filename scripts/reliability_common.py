"""Shared pieces of the reliability drivers: running the CLI in a child process and
checking a cache independently of the code under test."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO_MANIFEST = ROOT / "examples" / "demo.toml"
DEMO_MODELS = ("demo_cnn", "dynamic_mlp", "two_inputs")
TEMP_PREFIX = ".tmp-"


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "trt_provision", *args]


def child_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TENSORRT_CACHE_DIR", None)
    env["TRT_PROVISION_CACHE_DIR"] = str(cache_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(cache_dir: Path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(*args),
        env=child_env(cache_dir),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def provision_json(cache_dir: Path, *extra: str) -> tuple[int, dict[str, Any] | None, str]:
    proc = run_cli(cache_dir, "provision", str(DEMO_MANIFEST), "--json", "--no-remote", *extra)
    try:
        data = json.loads(proc.stdout) if proc.returncode == 0 else None
    except json.JSONDecodeError:
        data = None
    return proc.returncode, data, proc.stderr


@dataclass
class CacheAudit:
    """What an independent look at a cache found (nothing here trusts the product)."""

    accepted_wrong_bytes: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)


def _onnx_parses(data: bytes) -> bool:
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception:
        return False
    return len(model.graph.node) > 0


def audit_cache(cache_dir: Path) -> CacheAudit:
    """Run the product's gate over every engine, then check each accepted one by hand:
    its bytes must hash to the digest in its sidecars and parse as a whole ONNX model."""
    from trt_provision.gates.engine_gate import DefaultEngineGate
    from trt_provision.identity import parse_engine_filename
    from trt_provision.types import RuntimeTarget

    audit = CacheAudit()
    gate = DefaultEngineGate(cache_root=cache_dir)
    for model_dir in sorted(p for p in cache_dir.iterdir() if p.is_dir()) if cache_dir.is_dir() else []:
        for path in sorted(model_dir.iterdir()):
            if path.name.startswith(TEMP_PREFIX):
                audit.temp_files.append(str(path))
                continue
            if not path.name.endswith(".engine"):
                continue
            parsed = parse_engine_filename(path.name)
            own = RuntimeTarget(parsed.runtime, parsed.runtime_version, parsed.target, parsed.platform)
            try:
                gate.validate(path, own)
            except Exception:
                audit.refused.append(path.name)
                continue
            audit.accepted.append(path.name)
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            claimed = path.with_name(path.name + ".sha256").read_text().split()[0]
            meta = json.loads(path.with_name(path.name + ".json").read_text())
            if digest != claimed or meta.get("sha256") != digest or not _onnx_parses(data):
                audit.accepted_wrong_bytes.append(path.name)
    return audit


PRECISION_MANIFEST = ROOT / "examples" / "precision.toml"
CALIBRATED_MODELS = ("demo_cnn",)  # two_inputs is fp16 (judged on data, no cache)
CALIBRATION_DIR = ".calibration"
_CALIB_MAGIC = b"TRTPCAL\n"


@dataclass
class CalibrationAudit:
    """An independent look at the calibration caches of a cache directory.

    ``complete`` maps a blob name to its header key (the ``.sha256`` commit mark is present
    and matches, the header parses, the ``.dataset_sha256`` sidecar names the header's
    dataset version); ``incomplete`` lists blobs without their commit mark (a reader must
    recalibrate); ``inconsistent`` lists blobs whose commit mark is present but does not
    describe them (a half cache that looks committed)."""

    complete: dict[str, str] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)
    inconsistent: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)


def _calib_header(data: bytes) -> dict[str, Any] | None:
    if not data.startswith(_CALIB_MAGIC):
        return None
    end = data.find(b"\n", len(_CALIB_MAGIC))
    if end < 0:
        return None
    try:
        header = json.loads(data[len(_CALIB_MAGIC) : end])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    key = header.get("key") if isinstance(header, dict) else None
    if not isinstance(key, str) or len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        return None
    return header


def audit_calibration(cache_dir: Path) -> CalibrationAudit:
    audit = CalibrationAudit()
    directory = cache_dir / CALIBRATION_DIR
    if not directory.is_dir():
        return audit
    for path in sorted(directory.iterdir()):
        name = path.name
        if name.startswith("."):
            audit.temp_files.append(name)
            continue
        if not name.endswith(".calib"):
            continue
        sha = path.with_name(name + ".sha256")
        if not sha.exists():
            audit.incomplete.append(name)
            continue
        data = path.read_bytes()
        parts = sha.read_text(errors="replace").split()
        header = _calib_header(data)
        dataset = path.with_name(name + ".dataset_sha256")
        dataset_text = dataset.read_text(errors="replace").strip() if dataset.exists() else None
        if (
            len(parts) != 2
            or parts != [hashlib.sha256(data).hexdigest(), name]
            or header is None
            or dataset_text != header.get("dataset_version")
        ):
            audit.inconsistent.append(name)
            continue
        audit.complete[name] = header["key"]
    return audit


def engine_metadata(engine_path: str | Path) -> dict[str, Any]:
    path = Path(engine_path)
    return json.loads(path.with_name(path.name + ".json").read_text())
