"""Planted files the CLI must refuse without an internal error, a hang or an unbounded read:
an engine that is a symlink loop, and FIFOs or device links as the files ``keys verify`` and
``keys sign`` read.

The CLI runs in a subprocess whose address space is capped, so an unbounded read of
``/dev/zero`` ends in MemoryError (an internal error) instead of eating the machine; the
subprocess timeout is only a hang guard.
"""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from reliability._support import DEMO_MANIFEST, ROOT, engine_of
from trt_provision.trust import generate_keypair, sign_engine

pytestmark = pytest.mark.tier1

HANG_GUARD_S = 120  # only a hang (the bug) gets near it
ADDRESS_SPACE = 4 << 30  # plenty for the CLI; an unbounded read of /dev/zero hits it


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trt_provision", *args],
        capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=ROOT,
        preexec_fn=_cap_memory,
    )


def _plant(path: Path, kind: str) -> None:
    """Replace ``path`` by a FIFO or a symlink to a device."""
    if os.path.lexists(path):
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(kind)


def test_engine_that_is_a_symlink_loop_is_refused_not_an_internal_error(
    cache_copy: Path,
) -> None:
    """Path.resolve raised RuntimeError on the loop: exit 3 from verify and provision."""
    engine = engine_of(cache_copy, "demo_cnn")
    engine.unlink()
    engine.symlink_to(engine.name)  # points at itself

    proc = _cli("verify", "--cache-dir", str(cache_copy))
    assert proc.returncode == 1, proc.stderr
    assert "engine symlink loops" in proc.stdout
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr

    proc = _cli("provision", str(DEMO_MANIFEST), "--cache-dir", str(cache_copy),
                "--runtime", "onnxruntime", "--no-remote", "-q")
    assert proc.returncode == 0, proc.stderr
    assert engine.is_file() and not engine.is_symlink()  # rebuilt in its place


@pytest.fixture
def signed_engine(cache_copy: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(engine, private key, public key) of a signed demo engine."""
    private = tmp_path / "keys" / "fleet.key"
    public, _ = generate_keypair(private)
    engine = engine_of(cache_copy, "demo_cnn")
    sign_engine(engine, private)
    return engine, private, public


def test_keys_verify_accepts_the_untouched_engine(signed_engine: tuple[Path, Path, Path]) -> None:
    engine, _, public = signed_engine
    proc = _cli("keys", "verify", str(engine), "--public-key", str(public))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK ")


@pytest.mark.parametrize("suffix", [".sig", ".json", ""], ids=["sig", "json", "engine"])
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_keys_verify_refuses_a_fifo_or_device_without_blocking_or_reading_it_whole(
    signed_engine: tuple[Path, Path, Path], suffix: str, kind: str
) -> None:
    """The .sig and .json were read whole and the engine hashed with no type check: a FIFO
    blocked for ever, /dev/zero filled memory."""
    engine, _, public = signed_engine
    planted = engine.with_name(engine.name + suffix)
    _plant(planted, kind)
    proc = _cli("keys", "verify", str(engine), "--public-key", str(public))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout.startswith("BAD ")
    assert "not a regular file" in proc.stdout
    assert str(planted) in proc.stdout


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_keys_sign_refuses_metadata_that_is_a_fifo_or_device(
    signed_engine: tuple[Path, Path, Path], kind: str
) -> None:
    engine, private, _ = signed_engine
    meta = engine.with_name(engine.name + ".json")
    _plant(meta, kind)
    proc = _cli("keys", "sign", str(engine), "--key", str(private))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: StoreError: cannot sign: metadata sidecar is not a regular")
    assert str(meta) in line


def _loop_model(directory: Path) -> Path:
    """A model whose weights live in ``w.bin`` (external data)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = directory / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    return path


@pytest.mark.parametrize("loop", ["model", "external data", "cache_dir"])
def test_symlink_loop_named_by_a_manifest_is_a_user_error(tmp_path: Path, loop: str) -> None:
    """Path.resolve raised RuntimeError on a loop in the model path, its external-data
    location or the manifest's cache_dir: exit 3. Now exit 1 naming the path."""
    model = _loop_model(tmp_path)
    settings = ""
    if loop == "model":
        model.unlink()
        model.symlink_to(model.name)
        named = model
    elif loop == "external data":
        (tmp_path / "w.bin").unlink()
        (tmp_path / "w.bin").symlink_to("w.bin")
        named = model
    else:
        (tmp_path / "lp").symlink_to("lp")
        settings = f'[settings]\ncache_dir = "{tmp_path / "lp"}"\n\n'
        named = tmp_path / "lp"
    manifest = tmp_path / "m.toml"
    manifest.write_text(f'{settings}[[models]]\nname = "m"\npath = "{model}"\n')
    args = ["provision", str(manifest), "--runtime", "onnxruntime", "--no-remote", "-q"]
    if loop != "cache_dir":
        args += ["--cache-dir", str(tmp_path / "cache")]
    proc = _cli(*args)
    assert proc.returncode == 1, proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    assert str(named) in proc.stderr


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "directory"])
def test_onnx_engine_whose_external_data_is_not_a_regular_file_is_refused(
    tmp_path: Path, kind: str
) -> None:
    """The location stays inside the cache but is no regular file. ONNX Runtime 1.32
    refuses it itself ("Random-access reads require a regular file"); the gate does not
    rely on the installed ONNX Runtime for that, as for locations that leave the cache."""
    import hashlib

    from onnx import TensorProto, helper

    from trt_provision.errors import EngineGateError
    from trt_provision.gates.engine_gate import DefaultEngineGate
    from trt_provision.stores.local import LocalEngineStore
    from trt_provision.types import EngineIdentity, PrecisionMode, RuntimeTarget

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[weight],
    )
    payload = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    target = RuntimeTarget("ortcpu", "1.20.1", "cpu-avx2", "host")
    identity = EngineIdentity(
        model_name="ortmodel", model_sha256=hashlib.sha256(b"m").hexdigest(),
        precision=PrecisionMode.FP32, runtime=target.runtime,
        runtime_version=target.runtime_version, target=target.target,
        platform=target.platform, options_digest="abcdefabcdef",
    )
    store = LocalEngineStore(tmp_path / "cache")
    store.ensure_writable()
    staged = store.staging_path(identity)
    staged.write_bytes(payload.SerializeToString())
    engine = store.publish(identity, staged, {}).engine_path
    gate = DefaultEngineGate(cache_root=store.root)
    data = engine.parent / "weights.bin"
    data.write_bytes(b"\0" * 16)
    gate.validate(engine, target)  # control: a regular file there passes
    data.unlink()
    if kind == "fifo":
        os.mkfifo(data)
    elif kind == "directory":
        data.mkdir()
    else:
        if os.geteuid() != 0:
            pytest.skip("a device node inside the cache needs root")
        inside = store.root / "zero"  # /dev/zero's device numbers, inside the cache
        os.mknod(inside, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
        data.symlink_to(inside)
    with pytest.raises(EngineGateError, match="not a regular file"):
        gate.validate(engine, target)
