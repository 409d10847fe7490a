"""Bounded fuzzing (hypothesis): filename parsing, manifests, sidecars, the engine gate with
forged sidecars, calibration cache blobs and batches, and CLI arguments. Only typed errors
(TrtProvisionError subclasses) may come out; the CLI answers 0, 1 or 2 and writes nothing
outside its temp directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reliability._support import DEMO_MANIFEST, ROOT, engine_of, sidecars
from trt_provision.calibration.cache import MAGIC, decode_blob
from trt_provision.calibration.data import InputSpec, validate_batch
from trt_provision.cli.main import main as cli_main
from trt_provision.config import load_manifest
from trt_provision.errors import (
    CalibrationCacheError,
    EngineGateError,
    InvalidNameError,
    TrtProvisionError,
)
from trt_provision.gates.engine_gate import DefaultEngineGate
from trt_provision.identity import _FILENAME_RE, parse_engine_filename
from trt_provision.integrity import parse_sha256_sidecar, read_metadata
from trt_provision.types import RuntimeTarget

pytestmark = pytest.mark.tier1

# The gate lets InvalidNameError (not an EngineGateError) escape when the metadata identity
# carries an unsafe model name; test_security.py holds the strict regression test. Remove it
# from here once the gate wraps it.
GATE_ERRORS: tuple[type[Exception], ...] = (EngineGateError,)

FUZZ = settings(max_examples=200, deadline=None, database=None)

# ----------------------------------------------------------------- filenames

_name_chars = string.ascii_letters + string.digits + "._-+/\\\x00 "


@FUZZ
@given(st.one_of(st.text(), st.text(alphabet=_name_chars, max_size=120)))
def test_parse_engine_filename_only_raises_invalid_name(text: str) -> None:
    try:
        parsed = parse_engine_filename(text)
    except InvalidNameError:
        return
    assert "/" not in text and "\\" not in text and "\x00" not in text
    assert ".." not in parsed.model_name


@FUZZ
@given(st.from_regex(_FILENAME_RE, fullmatch=True))
def test_wellformed_filenames_parse_to_safe_fields(text: str) -> None:
    try:
        parsed = parse_engine_filename(text)
    except InvalidNameError:
        return  # refusing a name is always allowed
    for value in parsed.to_dict().values():
        assert "/" not in value and "\x00" not in value
    assert parsed.model_name not in ("", ".", "..")


# ----------------------------------------------------------------- manifests

_KEYS = [
    "settings", "defaults", "models", "remote", "name", "path", "version", "precision",
    "workspace_mib", "profiles", "input", "min", "opt", "max", "cache_dir", "runtime",
    "calibration", "data", "trust", "public_key", "max_engine_mib", "memory_budget_mib",
    "timing_cache_path", "plugins", "bucket", "endpoint", "unknown",
]
_scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(["fp32", "fp16", "int8", "mixed", "../../etc/passwd", "a/b", "..", "",
                     "models/demo_cnn.onnx", "onnxruntime", "x" * 70, "demo_cnn"]),
    st.text(max_size=20),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _toml(doc: dict[str, Any]) -> str:
    lines = []
    for key, value in doc.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                lines.append(f"[[{key}]]")
                lines.extend(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in item.items())
        else:
            lines.append(f"{json.dumps(key)} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


_documents = st.dictionaries(
    st.sampled_from(["settings", "defaults", "models", "remote", "extra"]),
    st.one_of(_values, st.lists(st.dictionaries(st.sampled_from(_KEYS), _values, max_size=6),
                                min_size=1, max_size=3)),
    max_size=4,
)
_DEMO_TEXT = DEMO_MANIFEST.read_text()


@st.composite
def _mutated_demo(draw: st.DrawFn) -> str:
    text = _DEMO_TEXT
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = min(len(text), i + draw(st.integers(0, 8)))
        text = text[:i] + draw(st.text(alphabet="[]=\"'.,#\n 0123456789-xyz/", max_size=6)) + text[j:]
    return text


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("manifests")
    shutil.copytree(ROOT / "examples" / "models", root / "models")
    return root


@FUZZ
@given(text=st.one_of(_documents.map(_toml), _mutated_demo(), st.text(max_size=200)))
def test_load_manifest_only_raises_typed_errors(manifest_dir: Path, text: str) -> None:
    path = manifest_dir / "fuzz.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        manifest = load_manifest(path)
    except TrtProvisionError:
        return
    for backbone in manifest.backbones:
        assert "/" not in backbone.name and ".." not in backbone.name


# ----------------------------------------------------------------- sidecars


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode),
                 st.builds(lambda h, n, sep: f"{h}{sep}{n}\n".encode(),
                           st.text(alphabet="0123456789abcdefABCDEF", min_size=60, max_size=66),
                           st.sampled_from(["e.engine", "../e.engine", "f.engine", ""]),
                           st.sampled_from(["  ", " *", " ", "\t"]))))
def test_sha256_sidecar_parse_only_raises_gate_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    sidecar = tmp_path_factory.getbasetemp() / "fuzz-e.engine.sha256"
    sidecar.write_bytes(data)
    try:
        digest = parse_sha256_sidecar(sidecar, "e.engine")
    except EngineGateError:
        return
    assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


@FUZZ
@given(st.one_of(st.binary(max_size=300),
                 st.dictionaries(st.sampled_from(["format", "engine", "sha256", "identity",
                                                  "size_bytes", "x"]), _json_values,
                                 max_size=6).map(lambda d: json.dumps(d).encode())))
def test_read_metadata_only_raises_gate_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    engine = tmp_path_factory.getbasetemp() / "fuzz-m.engine"
    engine.with_name(engine.name + ".json").write_bytes(data)
    try:
        meta = read_metadata(engine)
    except EngineGateError:
        return
    assert isinstance(meta, dict) and meta["engine"] == engine.name


@pytest.fixture(scope="module")
def gate_case(tmp_path_factory: pytest.TempPathFactory, pristine_cache: Path) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("gatefuzz") / "cache"
    shutil.copytree(pristine_cache, root)
    yield root


@st.composite
def _forged_metadata(draw: st.DrawFn, real: dict[str, Any]) -> bytes:
    data = json.loads(json.dumps(real))
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(["top", "identity"]))
        target = data if section == "top" or not isinstance(data.get("identity"), dict) else data["identity"]
        key = draw(st.sampled_from([*sorted(target), "version_compatible"]))
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(_json_values)
    return json.dumps(data).encode()


@FUZZ
@given(data=st.data())
def test_gate_with_forged_sidecars_refuses_or_is_right(gate_case: Path, data: st.DataObject) -> None:
    engine = engine_of(gate_case, "dynamic_mlp")
    sha, meta = sidecars(engine)
    real_sha = sha.read_bytes()
    real_meta = meta.read_bytes()
    actual = hashlib.sha256(engine.read_bytes()).hexdigest()
    try:
        new_meta = data.draw(st.one_of(_forged_metadata(json.loads(real_meta)),
                                       st.just(real_meta), st.binary(max_size=200)))
        new_sha = data.draw(st.one_of(
            st.just(real_sha),
            st.binary(max_size=100),
            st.text(alphabet="0123456789abcdef", min_size=64, max_size=64).map(
                lambda h: f"{h}  {engine.name}\n".encode()),
        ))
        sha.write_bytes(new_sha)
        meta.write_bytes(new_meta)
        parsed = parse_engine_filename(engine.name)
        target = RuntimeTarget(parsed.runtime, parsed.runtime_version, parsed.target, parsed.platform)
        try:
            entry = DefaultEngineGate(cache_root=gate_case).validate(engine, target)
        except GATE_ERRORS:
            return
        assert entry.sha256 == actual
        assert parse_sha256_sidecar(sha, engine.name) == actual
    finally:
        sha.write_bytes(real_sha)
        meta.write_bytes(real_meta)


# ----------------------------------------------------------------- calibration


@FUZZ
@given(st.one_of(st.binary(max_size=300),
                 st.binary(max_size=200).map(lambda b: MAGIC + b),
                 st.dictionaries(st.sampled_from(["key", "algorithm", "dataset_version",
                                                  "payload_kind", "created_by",
                                                  "format_version", "x"]),
                                 _json_values, max_size=7).map(
                     lambda d: MAGIC + json.dumps(d).encode() + b"\npayload")))
def test_calibration_blob_decode_only_raises_cache_error(blob: bytes) -> None:
    try:
        _header, payload = decode_blob(blob)
    except CalibrationCacheError:
        return
    assert blob.endswith(payload)


_DTYPES = ["float32", "float16", "float64", "int8", "uint8", "int32", "int64", "bool"]


@st.composite
def _batch_case(draw: st.DrawFn) -> tuple[dict[str, Any], list[InputSpec]]:
    specs = []
    batch: dict[str, Any] = {}
    for i in range(draw(st.integers(1, 3))):
        rank = draw(st.integers(0, 3))
        shape = tuple(draw(st.one_of(st.none(), st.integers(1, 4))) for _ in range(rank))
        specs.append(InputSpec(f"in{i}", draw(st.sampled_from(_DTYPES)), shape))
    names = [s.name for s in specs] + ["extra"]
    for name in draw(st.lists(st.sampled_from(names), unique=True, max_size=4)):
        dtype = draw(st.sampled_from([*_DTYPES, "complex64", "object", "str"]))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
        size = int(np.prod(shape)) if shape else 1
        values = draw(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True,
                                                   width=32),
                                         st.integers(-(2**40), 2**40)),
                               min_size=size, max_size=size))
        if dtype == "str":
            batch[name] = np.array([str(v) for v in values]).reshape(shape)
        elif dtype == "object":
            batch[name] = np.array(values, dtype=object).reshape(shape)
        else:
            with np.errstate(all="ignore"):
                arr = np.array(values, dtype=np.float64)
                if np.dtype(dtype).kind in "iub":
                    arr = np.nan_to_num(arr, nan=0, posinf=0, neginf=0).clip(-100, 100)
                batch[name] = arr.astype(dtype).reshape(shape)
    return batch, specs


@FUZZ
@given(_batch_case())
def test_validate_batch_only_raises_cache_error(case: tuple[dict[str, Any], list[InputSpec]]) -> None:
    batch, specs = case
    try:
        out = validate_batch(batch, specs, 0)
    except CalibrationCacheError:
        return
    for spec in specs:
        array = out[spec.name]
        assert array.dtype == np.dtype(spec.dtype) and array.ndim == spec.rank
        if array.dtype.kind == "f":
            assert bool(np.isfinite(array).all())


# ----------------------------------------------------------------- CLI arguments

_SUBCOMMANDS = [
    ["provision"], ["compile"], ["verify"], ["inspect"], ["probe"], ["cache", "ls"],
    ["cache", "gc"], ["cache", "clear"], ["keys", "generate"], ["keys", "sign"],
    ["keys", "verify"], ["push"], ["pull"], ["nonsense"], [],
    # well-formed starts, so that the flags after them reach the subcommands
    ["provision", "demo.toml"], ["provision", "demo.toml", "--dry-run"], ["verify", "--json"],
    ["inspect", "e.engine"], ["compile", "models/two_inputs.onnx"],
    ["compile", "models/two_inputs.onnx", "out"], ["cache", "ls", "--json"],
    ["cache", "gc", "demo.toml"], ["keys", "generate", "key.pem"],
    ["keys", "sign", "e.engine", "--sign-key", "key.pem"], ["push", "demo.toml"],
    ["pull", "demo.toml"],
]
_FLAGS = [
    "--json", "--dry-run", "--force-rebuild", "--no-remote", "--remote", "--cache-dir",
    "--runtime", "--max-temp", "-v", "-vv", "-q", "--fp16", "--int8", "--mixed", "--fp32",
    "--workspace", "--min-shapes", "--opt-shapes", "--max-shapes", "--name", "--config",
    "--calibration-data", "--apply", "--yes", "--force", "--public-key", "--sign-key",
    "--help", "--version",
]


def _values_in(root: Path) -> list[str]:
    return [
        "onnxruntime", "auto", "tensorrt", "-1", "0", "nan", "inf", "1e400", "4096",
        "image:1x3x32x32", "image:0x3", "x:1x", ":", "../../escape", "..", ".", "cache",
        "sub/dir", "demo.toml", "models/demo_cnn.onnx", "missing.onnx", "key.pem",
        "demo_cnn", "../x/../y", "", " ", "/dev/null",
        str(root / "cwd" / "demo.toml"), str(root / "cache"), str(root / "out"),
    ]


@pytest.fixture
def cli_root(tmp_path: Path, pristine_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "fuzzroot"
    cwd = root / "cwd"
    cwd.mkdir(parents=True)
    shutil.copytree(ROOT / "examples" / "models", cwd / "models")
    shutil.copyfile(DEMO_MANIFEST, cwd / "demo.toml")
    shutil.copytree(pristine_cache, root / "cache")
    engine = next((root / "cache").glob("*/*.engine"))
    shutil.copyfile(engine, cwd / "e.engine")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("TRT_PROVISION_CACHE_DIR", str(root / "cache"))
    monkeypatch.delenv("ARTIFACTS_BUCKET", raising=False)
    return root


# .cache holds the real-model test data, fetched by tests that may run meanwhile on another
# xdist worker.
_SKIP = {".venv", ".git", ".hypothesis", ".pytest_cache", ".ruff_cache", ".mypy_cache",
         "__pycache__", ".cache"}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP and not d.endswith(".egg-info")]
        for name in filenames:
            p = os.path.join(dirpath, name)
            try:
                st_ = os.lstat(p)
            except OSError:
                continue
            out[p] = (st_.st_mtime_ns, st_.st_size)
    return out


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cli_arguments_exit_0_1_2_and_write_only_inside_temp(
    cli_root: Path, data: st.DataObject, capsys: pytest.CaptureFixture[str]
) -> None:
    values = _values_in(cli_root)
    argv = list(data.draw(st.sampled_from(_SUBCOMMANDS)))
    argv += data.draw(st.lists(st.one_of(st.sampled_from(_FLAGS), st.sampled_from(values)),
                               max_size=6))
    event(f"exit {_check_cli(cli_root, argv, capsys)}")


# Arguments a random run once found to end in an internal error; kept so that every run
# tries them, whatever sequence the derandomized search draws.
_FOUND = [
    ["provision", "models/demo_cnn.onnx"],
    ["provision", "models/demo_cnn.onnx", "--dry-run"],
    ["push", "models/demo_cnn.onnx"],
    ["pull", "models/demo_cnn.onnx"],
    ["cache", "gc", "models/demo_cnn.onnx"],
    ["cache", "gc", "e.engine"],
    ["provision", "e.engine", "--json"],
    ["provision", "/dev/null"],
    ["provision", "cache"],
]


@pytest.mark.parametrize("argv", _FOUND, ids=" ".join)
def test_cli_arguments_found_by_fuzzing(
    cli_root: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _check_cli(cli_root, argv, capsys) == 1


def _check_cli(cli_root: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> int:
    """Run the CLI once; assert it answered 0, 1 or 2 and wrote only where it was told."""
    outside = {
        "repo": _tree(ROOT),
        "siblings": sorted(os.listdir(cli_root.parent)),
        "tmp": sorted(os.listdir(tempfile.gettempdir())),
    }
    code = cli_main(argv)
    captured = capsys.readouterr()
    assert code in (0, 1, 2), (argv, code, captured.err[-2000:])
    assert "Traceback" not in captured.err
    assert _tree(ROOT) == outside["repo"], argv
    # A path the user typed (an output dir, --cache-dir, a key file) may be created where it
    # points, even outside the fuzz root: that is the command doing what it was told. Any
    # other new entry beside the fuzz root is a write that escaped.
    named = {(Path.cwd() / a).resolve() for a in argv if a and not a.startswith("-")}
    new_siblings = set(os.listdir(cli_root.parent)) - set(outside["siblings"])
    assert not {n for n in new_siblings if (cli_root.parent / n).resolve() not in named}, argv
    new_tmp = set(os.listdir(tempfile.gettempdir())) - set(outside["tmp"])
    assert not {n for n in new_tmp if "trt" in n or n.startswith(".tmp-")}, argv
    return code
