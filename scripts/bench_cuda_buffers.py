"""H2D+D2H throughput of the CUDA buffer path against a plain-copy ceiling, same process.

For each size the script measures, on one GPU:

* ``path``: ``CudaBuffers.copy_in`` (stage a pageable numpy array into pinned memory, then
  ``cudaMemcpyAsync`` H2D) + ``copy_out`` (``cudaMemcpyAsync`` D2H) + stream sync: what
  ``TensorrtRuntime.infer`` does around ``execute_async_v3``;
* ``path_transfer``: the same without the staging copy (data already in pinned memory);
* ``ceiling``: synchronous ``cudaMemcpy`` H2D + D2H between pinned and device buffers
  allocated outside the path; and, when torch is importable, ``torch_pinned``: a pinned
  tensor copied to the GPU and back.

Throughput counts bytes moved in both directions (2 x size) over the median iteration time.

    PYTHONPATH=src python scripts/bench_cuda_buffers.py [--sizes 1 16 64 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from trt_provision.runtimes.tensorrt.cuda_buffers import CudaBuffers, load_cudart

MIB = 1 << 20


def _median_seconds(fn: Callable[[], None], iterations: int, warmup: int = 2) -> float:
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


def bench_size(rt: Any, size_mib: int) -> dict[str, Any]:
    nbytes = size_mib * MIB
    data = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
    iters = _iterations(size_mib)
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
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1, 16, 64, 256])
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    rt = load_cudart()
    results = [bench_size(rt, size) for size in args.sizes]
    header = ("size MiB", "path GB/s", "transfer-only GB/s", "cudaMemcpy GB/s",
              "torch pinned GB/s", "path/ceiling", "transfer/ceiling", "round trip")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        row = (r["size_mib"], r["path_gbps"], r["path_transfer_gbps"], r["ceiling_gbps"],
               r.get("torch_pinned_gbps", "-"), r["path_vs_ceiling"], r["transfer_vs_ceiling"],
               "ok" if r["round_trip_ok"] else "MISMATCH")
        print("| " + " | ".join(str(x) for x in row) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
