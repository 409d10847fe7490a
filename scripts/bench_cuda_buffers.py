"""H2D+D2H throughput of the CUDA buffer path against a plain-copy ceiling, same process.

For each size the script measures, on one GPU:

* ``path``: ``CudaBuffers.copy_in`` (stage a pageable numpy array into pinned memory, then
  ``cudaMemcpyAsync`` H2D) + ``copy_out`` (``cudaMemcpyAsync`` D2H) + stream sync: what
  ``TensorrtRuntime.infer`` does around ``execute_async_v3``;
* ``path_transfer``: the same without the staging copy (data already in pinned memory);
* ``infer_pageable``, ``infer_zero_copy``, ``infer_zero_copy_copied_out``: the whole
  ``TensorrtRuntime`` inference call (names/shape/dtype checks, ``set_input_shape``, H2D,
  ``execute_async_v3``, D2H, sync) on an identity stand-in engine whose ``execute_async_v3``
  queues one device-to-device copy from input to output on the handle's stream (no TensorRT
  is needed). ``infer_pageable`` passes an ordinary numpy array and gets copied outputs (the
  ``infer`` defaults); ``infer_zero_copy`` runs ``infer_staged(copy_outputs=False)`` after the
  caller wrote into ``input_views``; the last one copies the outputs out of pinned memory;
* ``ceiling``: synchronous ``cudaMemcpy`` H2D + D2H between pinned and device buffers
  allocated outside the path; and, when torch is importable, ``torch_pinned``: a pinned
  tensor copied to the GPU and back.

Throughput counts bytes moved in both directions (2 x size) over the median iteration time.

    PYTHONPATH=src python scripts/bench_cuda_buffers.py [--sizes 1 16 64 256] [--json out.json]

``--smoke`` (1 MiB, 3 iterations per case; the Tier-2 suite runs it on a GPU) checks that
the path and the stand-in engine still work. A round trip that does not match is exit 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from trt_provision.identity import compute_identity
from trt_provision.runtimes.tensorrt import TensorrtOptions, TensorrtRuntime
from trt_provision.runtimes.tensorrt.cuda_buffers import CudaBuffers, load_cudart
from trt_provision.types import BuildConfig, EngineCacheEntry, RuntimeTarget

MIB = 1 << 20


def _median_seconds(fn: Callable[[], object], iterations: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _iterations(size_mib: int) -> int:
    return max(5, min(200, 2048 // max(size_mib, 1)))


class _IdentityContext:
    """Execution context of the stand-in engine: output = input, by one D2D copy."""

    def __init__(self, rt: Any, nbytes: int) -> None:
        self._rt = rt
        self._nbytes = nbytes
        self._shape: tuple[int, ...] = (nbytes,)
        self._addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self._shape = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._shape

    def set_tensor_address(self, name: str, address: int) -> bool:
        self._addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        count = int(np.prod(self._shape))
        (err,) = self._rt.cudaMemcpyAsync(self._addresses["y"], self._addresses["x"], count,
                                          kind, stream_handle)
        return int(err) == 0


class _IdentityEngine:
    num_io_tensors = 2

    def __init__(self, rt: Any, nbytes: int) -> None:
        self._rt = rt
        self._nbytes = nbytes

    def get_tensor_name(self, index: int) -> str:
        return ("x", "y")[index]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == "x" else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> str:
        return "UINT8"

    def is_shape_inference_io(self, name: str) -> bool:
        return False

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1,)  # dynamic: the loader reads the range from profile 0

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        return ((1,), (self._nbytes,), (self._nbytes,))

    def create_execution_context(self) -> _IdentityContext:
        return _IdentityContext(self._rt, self._nbytes)


class _IdentityTrt:
    """The few ``tensorrt`` module names ``TensorrtRuntime`` touches to load and run."""

    __version__ = "0.0.0"  # a stand-in, not a TensorRT release

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class TensorIOMode:
        INPUT = "INPUT"

    def __init__(self, rt: Any, nbytes: int) -> None:
        self._engine = _IdentityEngine(rt, nbytes)
        outer = self

        class Runtime:
            engine_host_code_allowed = False

            def __init__(self, logger: Any) -> None:
                self.logger = logger

            def deserialize_cuda_engine(self, data: bytes) -> _IdentityEngine:
                return outer._engine

        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype: str) -> type[np.uint8]:
        return np.uint8

    # The loader registers TensorRT's plugins before any deserialize (runtimes/tensorrt/
    # _process.py, ensure_plugins); the stand-in engine has none to register.
    @staticmethod
    def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
        return True

    @staticmethod
    def get_plugin_registry() -> Any:
        return None


class _TrustingGate:
    def validate(
        self, engine_path: Path, expected: RuntimeTarget, *, known_sha256: str | None = None
    ) -> EngineCacheEntry:
        ident = compute_identity(model_name="identity", model_hash="0" * 64,
                                 config=BuildConfig(), target=expected)
        return EngineCacheEntry(engine_path=engine_path, sha256="0" * 64, identity=ident)


def bench_runtime(rt: Any, size_mib: int, data: np.ndarray[Any, Any], iters: int,
                  workdir: Path) -> dict[str, Any]:
    """The whole ``TensorrtRuntime`` inference call on the identity stand-in engine."""
    nbytes = data.nbytes
    runtime = TensorrtRuntime(gate=_TrustingGate(), options=TensorrtOptions(optional_plugins=()),
                              trt_module=_IdentityTrt(rt, nbytes), cuda_module=rt)
    engine_path = workdir / f"identity-{size_mib}.engine"
    engine_path.write_bytes(b"identity")
    handle = runtime.deserialize_engine(
        _TrustingGate().validate(engine_path, runtime.runtime_target(BuildConfig())))
    result: dict[str, Any] = {}
    try:
        out = runtime.infer(handle, {"x": data})
        result["infer_round_trip_ok"] = bool(np.array_equal(out["y"], data))
        result["infer_pageable_s"] = _median_seconds(
            lambda: runtime.infer(handle, {"x": data}), iters)

        views = runtime.input_views(handle, {"x": (nbytes,)})
        views["x"][:] = data[::-1]  # the caller produces its input straight into pinned memory
        staged = runtime.infer_staged(handle, copy_outputs=False)
        result["zero_copy_round_trip_ok"] = bool(np.array_equal(staged["y"], data[::-1]))
        buffers = handle._buffers
        copies_before = buffers.host_copies if buffers is not None else -1
        result["infer_zero_copy_s"] = _median_seconds(
            lambda: runtime.infer_staged(handle, copy_outputs=False), iters)
        result["zero_copy_host_copies"] = (
            buffers.host_copies - copies_before if buffers is not None else -1)
        result["infer_zero_copy_copied_out_s"] = _median_seconds(
            lambda: runtime.infer_staged(handle), iters)
    finally:
        runtime.release_engine(handle)
    return result


def bench_size(rt: Any, size_mib: int, workdir: Path,
               iterations: int | None = None) -> dict[str, Any]:
    nbytes = size_mib * MIB
    data = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
    iters = iterations or _iterations(size_mib)
    buffers = CudaBuffers(rt)
    buffers.allocate("x", nbytes)

    def path() -> None:
        buffers.copy_in("x", data)
        buffers.copy_out("x", nbytes)
        buffers.synchronize()

    def path_transfer() -> None:
        buffers.upload("x", nbytes)
        buffers.copy_out("x", nbytes)
        buffers.synchronize()

    result: dict[str, Any] = {"size_mib": size_mib, "iterations": iters}
    result["path_s"] = _median_seconds(path, iters)
    out = buffers.host_view("x", np.uint8, (nbytes,)).copy()
    result["round_trip_ok"] = bool(np.array_equal(out, data))
    result["path_transfer_s"] = _median_seconds(path_transfer, iters)
    buffers.release()
    result.update(bench_runtime(rt, size_mib, data, iters, workdir))

    # Ceiling: plain synchronous copies between separately allocated pinned/device memory.
    helper = CudaBuffers(rt)
    ceiling_buf = helper.allocate("c", nbytes)
    h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost

    def ceiling() -> None:
        helper._check("cudaMemcpy", rt.cudaMemcpy(ceiling_buf.device_ptr, ceiling_buf.host_ptr,
                                                  nbytes, h2d))
        helper._check("cudaMemcpy", rt.cudaMemcpy(ceiling_buf.host_ptr, ceiling_buf.device_ptr,
                                                  nbytes, d2h))

    result["ceiling_s"] = _median_seconds(ceiling, iters)
    helper.release()

    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None and torch.cuda.is_available():
        host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
        dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")

        def torch_copy() -> None:
            dev.copy_(host, non_blocking=True)
            host.copy_(dev, non_blocking=True)
            torch.cuda.synchronize()

        result["torch_pinned_s"] = _median_seconds(torch_copy, iters)

    for key in [k for k in result if k.endswith("_s")]:
        result[key.replace("_s", "_gbps")] = round(2 * nbytes / result[key] / 1e9, 2)
    ceiling_gbps = max(result["ceiling_gbps"], result.get("torch_pinned_gbps", 0.0))
    result["path_vs_ceiling"] = round(result["path_gbps"] / ceiling_gbps, 3)
    result["transfer_vs_ceiling"] = round(result["path_transfer_gbps"] / ceiling_gbps, 3)
    for key in ("infer_pageable", "infer_zero_copy", "infer_zero_copy_copied_out"):
        result[f"{key}_vs_ceiling"] = round(result[f"{key}_gbps"] / ceiling_gbps, 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1, 16, 64, 256])
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help="1 MiB, 3 iterations per case")
    args = parser.parse_args(argv)
    iterations = None
    if args.smoke:
        args.sizes, iterations = [1], 3
    rt = load_cudart()
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_size(rt, size, Path(tmp), iterations) for size in args.sizes]
    header = ("size MiB", "path GB/s", "transfer-only GB/s", "cudaMemcpy GB/s",
              "torch pinned GB/s", "path/ceiling", "transfer/ceiling", "round trip")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        row = (r["size_mib"], r["path_gbps"], r["path_transfer_gbps"], r["ceiling_gbps"],
               r.get("torch_pinned_gbps", "-"), r["path_vs_ceiling"], r["transfer_vs_ceiling"],
               "ok" if r["round_trip_ok"] else "MISMATCH")
        print("| " + " | ".join(str(x) for x in row) + " |")
    header2 = ("size MiB", "infer pageable GB/s", "infer zero-copy GB/s",
              "zero-copy, outputs copied GB/s", "pageable/ceiling", "zero-copy/ceiling",
              "zero-copy copied out/ceiling", "host copies (zero-copy)", "round trips")
    print()
    print("| " + " | ".join(header2) + " |")
    print("|" + "---|" * len(header2))
    for r in results:
        ok = r["infer_round_trip_ok"] and r["zero_copy_round_trip_ok"]
        row2 = (r["size_mib"], r["infer_pageable_gbps"], r["infer_zero_copy_gbps"],
               r["infer_zero_copy_copied_out_gbps"], r["infer_pageable_vs_ceiling"],
               r["infer_zero_copy_vs_ceiling"], r["infer_zero_copy_copied_out_vs_ceiling"],
               r["zero_copy_host_copies"], "ok" if ok else "MISMATCH")
        print("| " + " | ".join(str(x) for x in row2) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    matched = all(r["round_trip_ok"] and r["infer_round_trip_ok"] and r["zero_copy_round_trip_ok"]
                  for r in results)
    return 0 if matched else 1


if __name__ == "__main__":
    raise SystemExit(main())
