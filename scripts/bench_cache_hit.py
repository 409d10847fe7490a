"""All-hit provisioning of large engines vs the hashing floor measured in the same run.

Floor = total bytes / (cores x OpenSSL SHA-256 rate of one core). Target: <= 1.1x the floor.
Also times `sha256sum -c` over the same files for reference.

Run: python scripts/bench_cache_hit.py [--files 20] [--mib 100] [--dir DIR]; `--smoke`: two
1 MiB engines, one timed run, nothing written (the test suite runs it).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_doc import machine_line, update_section

from trt_provision.compiler import EngineCompiler
from trt_provision.gates.engine_gate import DefaultEngineGate
from trt_provision.host import probe_host
from trt_provision.runtimes.onnxruntime import OnnxRuntimeRuntime
from trt_provision.stores.local import LocalEngineStore
from trt_provision.types import BackboneSpec, EngineCompileRequest


def single_core_sha256_rate(nbytes: int) -> float:
    buf = os.urandom(nbytes)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        hashlib.sha256(buf).digest()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def make_corpus(root: Path, files: int, mib: int) -> tuple[list[BackboneSpec], EngineCompiler]:
    models = root / "models"
    models.mkdir(parents=True)
    cache = root / "cache"
    host = probe_host()
    gate = DefaultEngineGate(cache_root=cache)
    runtime = OnnxRuntimeRuntime(host=host, gate=gate)
    store = LocalEngineStore(cache)
    compiler = EngineCompiler(runtime=runtime, store=store, gate=gate, host=host)
    backbones = []
    chunk = os.urandom(8 << 20)
    for i in range(files):
        node = helper.make_node("Identity", ["x"], ["y"], name=f"n{i}")
        graph = helper.make_graph([node], f"g{i}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        path = models / f"m{i}.onnx"
        onnx.save(helper.make_model(graph), str(path))
        backbone = BackboneSpec(f"m{i}", path)
        identity, _, _ = compiler.identity_for(backbone)
        staged = store.staging_path(identity)
        with open(staged, "wb") as fh:
            remaining = mib << 20
            while remaining:
                piece = chunk[: min(len(chunk), remaining)]
                fh.write(bytes([i % 256]) + piece[1:])
                remaining -= len(piece)
        store.publish(identity, staged, {})
        backbones.append(backbone)
    return backbones, compiler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run, print only")
    args = parser.parse_args()
    runs_wanted = 5
    if args.smoke:
        args.files, args.mib, args.no_doc, runs_wanted = 2, 1, True, 1
    root = Path(tempfile.mkdtemp(prefix="bench-cache-", dir=args.dir))
    try:
        backbones, compiler = make_corpus(root, args.files, args.mib)
        total = args.files * (args.mib << 20)
        cores = os.cpu_count() or 1
        rate = single_core_sha256_rate((4 if args.smoke else 256) << 20)
        floor = total / (cores * rate)
        request = EngineCompileRequest(tuple(backbones))
        compiler.compile_engines_for_corpus(request)  # warm the page cache
        runs = []
        for _ in range(runs_wanted):
            t0 = time.perf_counter()
            summary = compiler.compile_engines_for_corpus(request)
            runs.append(time.perf_counter() - t0)
            assert summary.reused == args.files, summary.to_dict()
        best, median = min(runs), statistics.median(runs)
        sums = sorted(str(p) for p in (root / "cache").rglob("*.sha256"))
        sha_runs = []
        if shutil.which("sha256sum"):
            # Sidecars hold bare file names, so sha256sum runs in each model directory.
            t0 = time.perf_counter()
            for s in sums:
                subprocess.run(["sha256sum", "-c", "--quiet", Path(s).name], cwd=Path(s).parent, check=True)
            sha_runs.append(time.perf_counter() - t0)
        ratio = median / floor
        lines = [
            "## All-hit provisioning vs the hashing floor",
            "",
            f"Measured on: {machine_line()}. {args.files} engines x {args.mib} MiB = "
            f"{total / 2**30:.2f} GiB of random bytes with valid sidecars, page cache warm.",
            "",
            "| figure | value |",
            "|---|---|",
            f"| OpenSSL SHA-256, one core (hashlib) | {rate / 2**20:.0f} MiB/s |",
            f"| hashing floor = bytes / ({cores} cores x one-core rate) | {floor:.3f} s |",
            f"| all-hit `provision` ({runs_wanted} runs: best / median) | {best:.3f} s / {median:.3f} s |",
            f"| median / floor (target <= 1.10) | **{ratio:.2f}x** |",
        ]
        if sha_runs:
            lines.append(f"| `sha256sum -c` over the same files (sequential) | {sha_runs[0]:.3f} s "
                         f"({sha_runs[0] / median:.1f}x slower than provision) |")
        lines += ["", "Rerun: `python scripts/bench_cache_hit.py` (`--files`, `--mib`, `--dir`)."]
        body = "\n".join(lines)
        print(body)
        if not args.no_doc:
            update_section("cache-hit", body)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
