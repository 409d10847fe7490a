"""Benchmark the calibration pipeline on the ONNX Runtime CPU path.

For a generated small CNN and any models given with ``--model``: INT8 (Q/DQ) vs FP32
latency, accuracy of INT8 against FP32 (cosine, relative error) on held-out batches,
calibration wall time; and ``dataset_digest`` throughput vs plain sha256 of the same bytes.

    python scripts/bench_calibration.py \\
        --model path/to/ch_PP-OCRv4_det_infer.onnx:3x320x320:paddle

Results go to the "calibration" section of ``_docs/benchmarks.md`` (``--no-doc`` to skip).
``--smoke``: the generated CNN only, ONNX Runtime consumer, batch 1, few runs, 16 MiB
digested, nothing written (the test suite runs it).

``--model PATH:CxHxW[:imagenet|paddle]`` takes an image model with one NCHW float input; its
calibration data are synthetic document-like images (lines of dark glyph-like characters on a
light page), normalised as the model expects (PaddleOCR models: ``paddle``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trt_provision.calibration.data import dataset_digest
from trt_provision.calibration.precision import prepare_model_for_precision
from trt_provision.errors import AccuracyGateError
from trt_provision.types import BuildConfig, CalibrationSpec, PrecisionMode

MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def make_small_cnn(path: Path, size: int = 64) -> Path:
    """Four conv blocks (Conv+BN+Relu), pooling and a classifier head: a ResNet-ish toy."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    prev, channels = "input", 3
    for i, width in enumerate((32, 64, 64, 128)):
        w = rng.standard_normal((width, channels, 3, 3)).astype(np.float32)
        w *= np.float32(np.sqrt(2.0 / (channels * 9)))
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.ones(width, np.float32), f"g{i}"),
            numpy_helper.from_array(rng.standard_normal(width).astype(np.float32) * 0.1,
                                    f"b{i}"),
            numpy_helper.from_array(np.zeros(width, np.float32), f"m{i}"),
            numpy_helper.from_array(np.ones(width, np.float32), f"v{i}"),
        ]
        stride = 2 if i else 1
        nodes += [
            helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], name=f"conv{i}",
                             pads=[1, 1, 1, 1], strides=[stride, stride]),
            helper.make_node("BatchNormalization", [f"c{i}", f"g{i}", f"b{i}", f"m{i}",
                                                    f"v{i}"], [f"n{i}"], name=f"bn{i}"),
            helper.make_node("Relu", [f"n{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        prev, channels = f"r{i}", width
    fc = (rng.standard_normal((channels, 10)) * np.sqrt(1.0 / channels)).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fcb")]
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _glyph_alphabet(rng: np.random.Generator, count: int = 40) -> list[np.ndarray]:
    """5x7 dot-matrix "characters" built from strokes (bars and diagonals)."""
    glyphs = []
    for _ in range(count):
        g = np.zeros((7, 5), np.float32)
        for _ in range(int(rng.integers(2, 5))):
            kind = int(rng.integers(0, 3))
            if kind == 0:
                g[:, int(rng.integers(0, 5))] = 1
            elif kind == 1:
                g[int(rng.integers(0, 7)), :] = 1
            else:
                r0 = int(rng.integers(0, 3))
                g[np.arange(r0, r0 + 5), np.arange(5)] = 1
        glyphs.append(g)
    return glyphs


def document_images(count: int, batch: int, shape: tuple[int, int, int], seed: int,
                    norm: str = "imagenet") -> list[np.ndarray]:
    """Light pages with lines of dark glyph-like characters, normalised, NCHW float32.

    ``norm``: "imagenet" (mean/std of ImageNet) or "paddle" ((x - 0.5) / 0.5, as PaddleOCR's
    detector and classifier expect).
    """
    rng = np.random.default_rng(seed)
    glyphs = _glyph_alphabet(rng)
    c, h, w = shape
    mean, std = (MEAN, STD) if norm == "imagenet" else (np.float32(0.5), np.float32(0.5))
    out = []
    for _ in range(count):
        pages = np.empty((batch, c, h, w), np.float32)
        for b in range(batch):
            page = np.full((h, w), rng.uniform(0.75, 1.0), np.float32)
            y = int(rng.integers(1, max(2, h // 16)))
            while True:
                s = int(rng.integers(1, max(2, min(4, h // 12))))  # glyph scale
                gh, gw = 7 * s, 5 * s
                if y + gh >= h:
                    break
                x = int(rng.integers(1, max(2, w // 4)))
                end = int(rng.integers(w // 2, w))
                ink = rng.uniform(0.0, 0.35)
                while x + gw < end:
                    if rng.random() >= 0.15:  # else a space
                        g = np.kron(glyphs[int(rng.integers(0, len(glyphs)))],
                                    np.ones((s, s), np.float32))
                        page[y:y + gh, x:x + gw][g > 0] = ink
                    x += gw + s
                y += gh + int(rng.integers(s * 3, s * 12))
            page += rng.normal(0, 0.02, page.shape).astype(np.float32)
            page = np.clip(page, 0, 1)
            tint = rng.uniform(0.9, 1.0, size=(c, 1, 1)).astype(np.float32)
            pages[b] = page[None] * tint
        pages = (pages - (mean[:, :c] if isinstance(mean, np.ndarray) else mean))
        pages /= std[:, :c] if isinstance(std, np.ndarray) else std
        out.append(pages.astype(np.float32))
    return out


def latency_ms(paths: Sequence[Path], feed: dict[str, np.ndarray], runs: int,
               threads: int) -> list[float]:
    """Median latency of each model; runs are interleaved so load changes hit all alike."""
    import onnxruntime as ort

    sessions = []
    for path in paths:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(5):
            sess.run(None, feed)
        sessions.append(sess)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for sess, acc in zip(sessions, times, strict=True):
            t0 = time.perf_counter()
            sess.run(None, feed)
            acc.append((time.perf_counter() - t0) * 1000)
    return [statistics.median(t) for t in times]


def bench_model(name: str, model: Path, input_name: str, shape: tuple[int, int, int],
                batches: Sequence[int], calib_batches: int, runs: int, threads: int, algorithm: str,
                work: Path, *, norm: str = "imagenet", calib_batch: int = 1,
                min_cosine: float | None = None,
                consumer: str = "onnxruntime-cpu") -> list[dict[str, Any]]:
    data = document_images(calib_batches, calib_batch, shape, seed=1, norm=norm)
    npy = work / f"{name}.calib.npy"
    np.save(npy, np.stack(data))
    config = BuildConfig(
        precision=PrecisionMode.INT8,
        calibration=CalibrationSpec(source=str(npy), algorithm=algorithm),
        fp16_pinned_keywords=("router", "kan"),
        min_cosine=min_cosine,
    )
    t0 = time.perf_counter()
    try:
        prepared = prepare_model_for_precision(model, config, work / f"{name}.work",
                                               calibration_cache_dir=work / "cache",
                                               consumer=consumer)
    except AccuracyGateError as exc:  # report the numbers of the refused graph anyway
        print(f"{name} ({consumer}): {exc}; measuring with allow_inaccurate", flush=True)
        config = dataclasses.replace(config, allow_inaccurate=True)
        prepared = prepare_model_for_precision(model, config, work / f"{name}.work",
                                               calibration_cache_dir=work / "cache",
                                               consumer=consumer)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    prepare_model_for_precision(model, config, work / f"{name}.work2",
                                calibration_cache_dir=work / "cache", consumer=consumer)
    reused = time.perf_counter() - t0
    meta = prepared.metadata
    accuracy = meta["accuracy"]
    acc = accuracy["test"]["outputs"]
    cal = meta["calibration"]
    chosen = cal["chosen_algorithm"]

    def val_cosine(algo: str) -> str:
        entry = cal["algorithms"].get(algo)
        if entry is None:
            return "-"
        outs = entry["validation"]["outputs"].values()
        top1 = [o["top1_agreement"] for o in outs if "top1_agreement" in o]
        text = f"{min(o['cosine'] for o in outs):.4f}"
        return text + (f" / {min(top1):.2f}" if top1 else "") + ("" if entry["passes_gate"]
                                                               else " ✗")

    # The float graph after the consumer's rewrites (same ops as FP32, fewer of them): shows
    # how much of the speed-up comes from the rewrites alone.
    rewritten = work / f"{name}.work" / f"qdq-{chosen}" / "rewritten.onnx"
    rows = []
    for batch in batches:
        feed = {input_name: document_images(1, batch, shape, seed=99, norm=norm)[0]}
        paths = [model, prepared.model_path] + ([rewritten] if rewritten.exists() else [])
        times = latency_ms(paths, feed, runs, threads)
        top1 = [o["top1_agreement"] for o in acc.values() if "top1_agreement" in o]
        rows.append({
            "name": name, "shape": f"{batch}x{'x'.join(map(str, shape))}",
            "fp32_ms": times[0], "int8_ms": times[1], "speedup": times[0] / times[1],
            "fp32_rewritten_ms": times[2] if len(times) > 2 else float("nan"),
            "cosine": min(o["cosine"] for o in acc.values()),
            "top1": min(top1) if top1 else float("nan"),
            "max_rel": max(o["max_rel_error"] for o in acc.values()),
            "verdict": accuracy["verdict"],
            "splits": "/".join(str(accuracy["splits"][k]["batches"])
                               for k in ("calibration", "validation", "test")),
            "chosen": chosen,
            "val": {a: val_cosine(a) for a in ("minmax", "percentile", "entropy")},
            "calib_s": cal["params"].get("seconds", float("nan")),
            "prepare_s": first, "reuse_s": reused, "tensors": cal["tensors"],
            "dq_nodes": meta["quantization"]["dequantize_nodes"], "algorithm": algorithm,
            "batches": cal["batches"], "consumer": consumer,
            "kept_float": len(meta["quantization"]["kept_float_for_accuracy"]),
            "rewrites": ", ".join(f"{k} {v}" for k, v in
                                  meta["quantization"].get("rewrites", {}).items() if v),
        })
    return rows


def bench_digest(total_mib: int, batch_mib: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    per = batch_mib * (1 << 20) // 4
    batches = [{"x": rng.standard_normal(per, dtype=np.float32)}
               for _ in range(total_mib // batch_mib)]
    best_d, best_h = float("inf"), float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        dataset_digest(batches)
        best_d = min(best_d, time.perf_counter() - t0)
        t0 = time.perf_counter()
        h = hashlib.sha256()
        for b in batches:
            h.update(b["x"].data)
        h.hexdigest()
        best_h = min(best_h, time.perf_counter() - t0)
    return {"mib": total_mib, "digest_mib_s": total_mib / best_d,
            "sha256_mib_s": total_mib / best_h, "ratio": best_h / best_d}


def render(rows: Sequence[dict[str, Any]], digest: dict[str, float], threads: int,
           sources: Sequence[str], args: argparse.Namespace) -> str:
    import onnxruntime as ort

    lines = [
        "# Calibration benchmarks (ONNX Runtime CPU strategy)",
        "",
        "Generated by `scripts/bench_calibration.py`. INT8 = Q/DQ graph from governed "
        f"calibration (algorithm {args.algorithm}: min-max, percentile and entropy from one "
        "pass, the best on the validation split), per-channel int8 weights, pinned layers "
        "unquantized,",
        "with the Q/DQ option set of the consumer: `onnxruntime-cpu` (uint8 asymmetric "
        "activations, shared Q/DQ pairs, removable activations dropped, after its graph "
        "rewrites: hard-swish chains fused into HardSwish, constant Mul/Add folded into "
        "convolutions) or `tensorrt` "
        "(int8 symmetric activations, float biases, dedicated Q/DQ pairs, Relu/Clip kept) - "
        "the latter is built for TensorRT and shown here on the CPU only for comparison.",
        "Calibration data are split 60/20/20 by batch into calibration / validation / test "
        "(column *splits*, in batches). Columns *minmax*, *percentile*, *entropy*: worst "
        "validation cosine / top-1 agreement of each algorithm's graph (✗: fails the "
        f"gate, min cosine {args.min_cosine}, top-1 0.95); *chosen*: the algorithm kept; "
        "*cosine* / *top-1* / *verdict*: the chosen graph on the untouched test split. "
        "*kept float*: layers the sensitivity search kept in higher precision.",
        f"Latency: median of {args.runs} runs, ORT_ENABLE_ALL, {threads} intra-op thread(s), "
        "FP32 and INT8 runs interleaved; *FP32 rewr.* is the FP32 graph after the "
        "`onnxruntime-cpu` rewrites (no quantization). Relative error = max |diff| / "
        "max |reference|.",
        "",
        f"Host: {platform.machine()} {platform.processor() or ''} ({os.cpu_count()} cores), "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__}.",
        "",
        "| model | consumer | input | FP32 ms | INT8 ms | speed-up | FP32 rewr. ms | splits | "
        "minmax | percentile | entropy | chosen | cosine | top-1 | max rel err | verdict | "
        "kept float | calibration s | first prepare s | reuse s | DQ nodes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['consumer']} | {r['shape']} | {r['fp32_ms']:.2f} | "
            f"{r['int8_ms']:.2f} | {r['speedup']:.2f}x | "
            + ("-" if r["fp32_rewritten_ms"] != r["fp32_rewritten_ms"]
               else f"{r['fp32_rewritten_ms']:.2f}")
            + f" | {r['splits']} | {r['val']['minmax']} | {r['val']['percentile']} | "
            f"{r['val']['entropy']} | {r['chosen']} | {r['cosine']:.5f} | "
            + ("-" if r["top1"] != r["top1"] else f"{r['top1']:.3f}")
            + f" | {r['max_rel']:.4f} | {r['verdict']} | {r['kept_float']} | "
            f"{r['calib_s']:.2f} | {r['prepare_s']:.2f} | {r['reuse_s']:.2f} | "
            f"{r['dq_nodes']} |"
        )
    lines += [
        "",
        "calibration s: ranges computed with ONNX Runtime's calibrator over "
        + ", ".join(sorted({f"{r['name']}: {r['batches']} batches" for r in rows}))
        + " (the calibration split). first prepare: preprocess + digest + one statistics "
        "pass + three Q/DQ graphs + validation and test checks (+ sensitivity search); "
        "reuse: the same with the three governed caches hit.",
        "",
        "Graph rewrites of the `onnxruntime-cpu` rows: "
        + "; ".join(sorted({f"{r['name']}: {r['rewrites']}" for r in rows
                           if r["consumer"] == "onnxruntime-cpu" and r["rewrites"]}))
        + ".",
        "",
        "## Dataset digest throughput",
        "",
        f"`dataset_digest` over {digest['mib']:.0f} MiB of float32 batches: "
        f"{digest['digest_mib_s']:.0f} MiB/s; plain `hashlib.sha256` of the same bytes: "
        f"{digest['sha256_mib_s']:.0f} MiB/s; ratio {digest['ratio']:.2f}x (target >= 0.8x).",
        "",
        "## Models",
        "",
    ]
    lines += [f"- {s}" for s in sources]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[],
                        help="PATH:CxHxW[:imagenet|paddle] of an NCHW image model (repeatable)")
    parser.add_argument("--source", action="append", default=[],
                        help="where a --model came from (one line each, for the report)")
    parser.add_argument("--batch", type=int, action="append", default=[],
                        help="batch of the latency runs (repeatable; default 1 and 8)")
    parser.add_argument("--calib-batches", type=int, default=20)
    parser.add_argument("--calib-batch-size", type=int, default=1,
                        help="images per calibration batch of the --model models")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--algorithm", default="auto",
                        choices=["auto", "entropy", "minmax", "percentile"])
    parser.add_argument("--min-cosine", type=float, default=0.99,
                        help="accuracy gate; below it the sensitivity search keeps layers float")
    parser.add_argument("--consumer", action="append", default=[],
                        choices=["onnxruntime-cpu", "tensorrt"],
                        help="Q/DQ option set(s) to measure (default: both)")
    parser.add_argument("--digest-mib", type=int, default=512)
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, print only")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.consumer, args.batch = [], ["onnxruntime-cpu"], [1]
        args.runs, args.digest_mib, args.no_doc, args.calib_batches = 3, 16, True, 5
    logging.basicConfig(level=logging.WARNING)
    consumers = args.consumer or ["onnxruntime-cpu", "tensorrt"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cnn = make_small_cnn(work / "small_cnn.onnx")
        models: list[tuple[str, Path, str, tuple[int, int, int], str, int]] = [
            ("small_cnn_generated", cnn, "input", (3, 64, 64), "imagenet", 8)]
        for spec in args.model:
            parts = spec.split(":")
            norm = parts.pop() if parts[-1].isalpha() else "imagenet"
            dims = parts.pop()
            path_s = ":".join(parts)
            shape = tuple(int(d) for d in dims.split("x"))
            path = Path(path_s)
            model = onnx.load(str(path), load_external_data=False)
            inits = {t.name for t in model.graph.initializer}
            input_name = next(i.name for i in model.graph.input if i.name not in inits)
            models.append((path.stem, path, input_name, shape,  # type: ignore[arg-type]
                           norm, args.calib_batch_size))
        for name, path, input_name, shape, norm, calib_batch in models:
            for consumer in consumers:
                (work / consumer).mkdir(exist_ok=True)
                found = bench_model(
                    name, path, input_name, shape, args.batch or [1, 8], args.calib_batches,
                    args.runs, args.threads, args.algorithm, work / consumer, norm=norm,
                    calib_batch=calib_batch, min_cosine=args.min_cosine, consumer=consumer)
                rows += found
                for row in found:
                    print(row, flush=True)
    digest = bench_digest(args.digest_mib, 16)
    print(digest, flush=True)
    report = render(rows, digest, args.threads, args.source, args)
    if not args.no_doc:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _bench_doc import update_section

        # One heading level down: the section lives inside benchmarks.md.
        update_section("calibration", "\n".join(
            "#" + line if line.startswith("#") else line for line in report.splitlines()))
    else:
        sys.stdout.write(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
