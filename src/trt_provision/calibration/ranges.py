"""Per-tensor activation ranges, computed once on the CPU with ONNX Runtime's calibrators.

Why not ``quantize_static(calibrate_method=Entropy)`` directly: it forwards only a few
calibrator options (symmetric, moving average, percentile...) and never ``num_bins`` /
``num_quantized_bins``, so the entropy calibrator runs with 128 histogram bins and 128
quantized bins. With as many quantized bins as histogram bins the KL search has exactly one
candidate threshold, the full range: entropy silently becomes min-max. Here the calibrator is
created directly with a real histogram (``CalibrationSpec.num_bins``, 2048 by default) and
255 quantized bins (the int8 levels of a symmetric range), min-max is fed one batch at a
time; histogram methods get all batches in one pass (see ``compute_activation_ranges``).

From the ranges come the ONNX Runtime Q/DQ model (``qdq.py``) and a TensorRT calibration
cache (``write_trt_calibration_cache``) for TensorRT builds that skip on-device calibration.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trt_provision.calibration.data import Batch
from trt_provision.errors import CalibrationCacheError, EngineBuildError
from trt_provision.types import CalibrationSpec

__all__ = [
    "NUM_QUANTIZED_BINS",
    "TensorRanges",
    "compute_activation_ranges",
    "compute_ranges_for_algorithms",
    "entropy_threshold",
    "parse_trt_calibration_cache",
    "range_params",
    "range_params_for",
    "trt_version_tag",
    "write_trt_calibration_cache",
]

logger = logging.getLogger(__name__)

NUM_QUANTIZED_BINS = 255  # symmetric int8: levels -127..127 over the two-sided histogram
INT8_MAX = 127.0
_TRT_LINE_RE = re.compile(r"(?P<name>.+): (?P<hex>[0-9a-fA-F]{1,8})")
_TRT_HEADER_RE = re.compile(r"TRT-(?P<ver>[0-9]+)-(?P<algo>[A-Za-z0-9]+)")


def _ort_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:  # e.g. onnxruntime-gpu installed under another name
        import onnxruntime

        return str(onnxruntime.__version__)


def range_params(spec: CalibrationSpec) -> dict[str, Any]:
    """The parameters that change the computed ranges (they enter the calibration key)."""
    params: dict[str, Any] = {"calibrator": f"onnxruntime-{_ort_version()}"}
    if spec.algorithm == "entropy":
        params.update(num_bins=spec.num_bins, num_quantized_bins=NUM_QUANTIZED_BINS)
    elif spec.algorithm == "percentile":
        params.update(num_bins=spec.num_bins, percentile=spec.percentile, symmetric=True)
    params["max_batches"] = spec.max_batches
    # Ranges come from the calibration split only, so the split scheme is part of the key.
    from trt_provision.calibration.splits import SPLIT_SCHEME

    params["split"] = SPLIT_SCHEME + ("+evaluation" if spec.evaluation_data else "")
    return params


def range_params_for(spec: CalibrationSpec, algorithm: str) -> dict[str, Any]:
    """``range_params`` of one concrete algorithm (``auto`` computes several)."""
    import dataclasses

    return range_params(dataclasses.replace(spec, algorithm=algorithm))


@dataclass(frozen=True)
class TensorRanges:
    """Activation range ``(low, high)`` per tensor name, with how they were computed."""

    algorithm: str
    ranges: Mapping[str, tuple[float, float]]
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, (lo, hi) in self.ranges.items():
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise ValueError(f"invalid range for tensor {name!r}: ({lo}, {hi})")

    def amax(self, name: str) -> float:
        lo, hi = self.ranges[name]
        return max(abs(lo), abs(hi))

    def to_json(self) -> bytes:
        body = {
            "algorithm": self.algorithm,
            "params": dict(self.params),
            "ranges": {k: [v[0], v[1]] for k, v in sorted(self.ranges.items())},
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TensorRanges:
        try:
            raw = json.loads(data.decode("utf-8"))
            ranges = {str(k): (float(v[0]), float(v[1])) for k, v in raw["ranges"].items()}
            return cls(algorithm=str(raw["algorithm"]), ranges=ranges,
                       params=dict(raw.get("params", {})))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError,
                AttributeError) as exc:
            raise CalibrationCacheError(f"calibration ranges payload is malformed: {exc}") from exc


class _BatchReader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of batches."""

    def __init__(self, batches: list[Batch]) -> None:
        self._batches = batches
        self._next = 0

    def get_next(self) -> dict[str, Any] | None:
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return dict(self._batches[self._next - 1])

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:  # protocol completeness
        return None


def _flat_histograms(calibrator: Any) -> None:
    """Give ``calibrator`` a histogram collector that accepts batches of different sizes.

    ONNX Runtime's collector stacks each tensor's per-batch outputs with ``np.asarray`` and
    only then flattens them; batches of different sizes (a source whose rows are not a
    multiple of the opt batch ends in a shorter one) fail there with "inhomogeneous shape".
    Flattening each output first and concatenating gives the same values in the same order,
    so the histogram is the one a homogeneous stack would have given.
    """
    import numpy as np
    from onnxruntime.quantization.calibrate import HistogramCollector

    class _FlatCollector(HistogramCollector):  # type: ignore[misc]
        def collect(self, name_to_arr: Mapping[str, Any]) -> Any:
            flat = {name: (np.concatenate([np.asarray(a).reshape(-1) for a in arrays])
                           if isinstance(arrays, list) and arrays else arrays)
                    for name, arrays in name_to_arr.items()}
            return super().collect(flat)

    calibrator.collector = _FlatCollector(
        method=calibrator.method, symmetric=calibrator.symmetric,
        num_bins=calibrator.num_bins, num_quantized_bins=calibrator.num_quantized_bins,
        percentile=calibrator.percentile, scenario=calibrator.scenario)


def compute_activation_ranges(
    model_path: Path, batches: Iterable[Batch], spec: CalibrationSpec, workdir: Path
) -> TensorRanges:
    """Run ``model_path`` over ``batches`` on the CPU and return per-tensor ranges."""
    import numpy as np
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    method = {
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
    }[spec.algorithm]
    options: dict[str, Any] = {}
    if spec.algorithm == "entropy":
        options = {"num_bins": spec.num_bins, "num_quantized_bins": NUM_QUANTIZED_BINS}
    elif spec.algorithm == "percentile":
        options = {"num_bins": spec.num_bins, "percentile": spec.percentile, "symmetric": True}
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    logger.info(
        "computing activation ranges",
        extra={"event": "calibration.ranges.start", "algorithm": spec.algorithm,
               "model": str(model_path)},
    )
    count = 0
    # The calibrators print progress to stdout; a library must not.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            calibrator = create_calibrator(
                model_path,
                None,
                augmented_model_path=str(workdir / "augmented_for_calibration.onnx"),
                calibrate_method=method,
                providers=["CPUExecutionProvider"],
                extra_options=options,
            )
        except Exception as exc:  # ORT raises ValueError / Fail / InvalidGraph...
            raise EngineBuildError(
                f"cannot prepare the model for calibration: {type(exc).__name__}: {exc}",
                model=str(model_path),
            ) from exc
        if spec.algorithm == "minmax":
            # min-max merges per call: one batch at a time, bounded memory.
            for batch in batches:
                try:
                    calibrator.collect_data(_BatchReader([batch]))
                except Exception as exc:
                    raise CalibrationCacheError(
                        f"calibration inference failed: {type(exc).__name__}: {exc}",
                        batch=count, model=str(model_path),
                    ) from exc
                count += 1
        else:
            # Histograms are built in one call over all batches: ONNX Runtime's histogram
            # merge re-bins by the first batch's bin width and explodes when a tensor is
            # near zero on the first batch and not later. Memory grows with the dataset
            # (bound it with max_batches).
            reader = _BatchReader(list(batches))
            count = len(reader)
            if count:
                _flat_histograms(calibrator)
                try:
                    calibrator.collect_data(reader)
                except Exception as exc:
                    raise CalibrationCacheError(
                        f"calibration inference failed: {type(exc).__name__}: {exc}",
                        batches=count, model=str(model_path),
                    ) from exc
        if count == 0:
            raise CalibrationCacheError("calibration dataset is empty", model=str(model_path))
        if spec.algorithm == "entropy":
            bounds = {
                name: entropy_threshold(hist[0], hist[1], float(hist[2]), float(hist[3]))
                for name, hist in calibrator.collector.histogram_dict.items()
            }
        else:
            tensors = calibrator.compute_data()
            # min-max returns shape-(1,) arrays, histogram methods 0-d ones
            bounds = {
                name: (float(np.min(tensors[name].range_value[0])),
                       float(np.max(tensors[name].range_value[1])))
                for name in tensors
            }
    ranges: dict[str, tuple[float, float]] = {}
    for name, (lo_f, hi_f) in bounds.items():
        if math.isfinite(lo_f) and math.isfinite(hi_f):
            ranges[name] = (min(lo_f, hi_f), max(lo_f, hi_f))
    elapsed = time.perf_counter() - started
    logger.info(
        "computed activation ranges in %.2f s",
        elapsed,
        extra={"event": "calibration.ranges.finish", "tensors": len(ranges), "batches": count,
               "seconds": round(elapsed, 3)},
    )
    params = range_params(spec)
    params["batches"] = count
    return TensorRanges(algorithm=spec.algorithm, ranges=ranges, params=params)


def entropy_threshold(
    hist: Any, edges: Any, observed_min: float, observed_max: float,
    num_quantized_bins: int = NUM_QUANTIZED_BINS,
) -> tuple[float, float]:
    """KL-divergence threshold search over ONNX Runtime's symmetric histogram.

    The same search as ONNX Runtime's ``get_entropy_threshold`` (candidate windows centred
    on zero, outliers folded into the edge bins, window merged into ``num_quantized_bins``
    and expanded back over its non-empty bins, smoothed KL), with each candidate computed
    by array operations instead of Python loops over bins: seconds per tensor become
    milliseconds at 2048 bins.
    """
    import numpy as np

    hist = np.asarray(hist, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    nbins = hist.size
    zero = nbins // 2
    half = num_quantized_bins // 2
    if zero <= half or hist.sum() == 0:
        return observed_min, observed_max
    cumsum = np.concatenate(([0.0], np.cumsum(hist)))
    best, best_i = np.inf, zero
    eps = 1e-4
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, nbins)
        window = hist[start:end]
        p = window.copy()
        p[0] += cumsum[start]
        p[-1] += cumsum[nbins] - cumsum[end]
        size = window.size
        step = size // num_quantized_bins
        # merge into quantized bins; the last one takes the remainder
        cut = step * num_quantized_bins
        merged = window[:cut].reshape(num_quantized_bins, step).sum(axis=1)
        merged[-1] += window[cut:].sum()
        nonzero = (p != 0).astype(np.float64)
        counts = nonzero[:cut].reshape(num_quantized_bins, step).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_bin = np.where(counts > 0, merged / counts, 0.0)
        # Expanded over the whole block, remainder bins left empty, and truncated to
        # integers: as ONNX Runtime's search does (it stores q in an int64 array).
        q = np.zeros(size)
        q[:cut] = np.floor(np.repeat(per_bin, step))
        div = _smoothed_kl(p, q, eps)
        if div < best:
            best, best_i = div, i
    start, end = zero - best_i, min(zero + best_i + 1, nbins)
    lo, hi = float(edges[start]), float(edges[end])
    return max(lo, observed_min), min(hi, observed_max)


def _smoothed_kl(p: Any, q: Any, eps: float) -> float:
    """KL(p || q) after moving ``eps`` mass onto empty bins (inf when impossible)."""
    import numpy as np

    def smooth(d: Any) -> Any:
        zeros = d == 0
        n_zero = int(zeros.sum())
        n_nonzero = d.size - n_zero
        if n_nonzero == 0:
            return None
        take = eps * n_zero / n_nonzero
        if take >= 1.0:
            return None
        return d + eps * zeros - take * (~zeros)

    ps, qs = smooth(p), smooth(q)
    if ps is None or qs is None:
        return float("inf")
    ps = ps / ps.sum()
    qs = qs / qs.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(ps > 0, ps * np.log(ps / qs), 0.0)
    return float(terms.sum())


# ---------------------------------------------------------------- TensorRT calibration cache


def trt_version_tag(trt_version: str) -> str:
    """TensorRT's version number in cache headers: 8.6.1 -> 8601, 10.3.0 -> 100300."""
    parts = [int(p) for p in re.findall(r"[0-9]+", trt_version)[:3]]
    while len(parts) < 3:
        parts.append(0)
    major, minor, patch = parts
    if major >= 10:
        return str(major * 10000 + minor * 100 + patch)
    return str(major * 1000 + minor * 100 + patch)


def write_trt_calibration_cache(
    ranges: TensorRanges, trt_version: str, algorithm: str = "EntropyCalibration2"
) -> bytes:
    """TensorRT calibration-cache text: a header, then ``name: <scale as f32 bits, hex>``.

    The scale is ``amax / 127`` (symmetric int8), written as the big-endian hex of its IEEE
    float32 bits. The header's version must match the TensorRT that reads the cache.
    """
    lines = [f"TRT-{trt_version_tag(trt_version)}-{algorithm}"]
    for name in sorted(ranges.ranges):
        if "\n" in name or ": " in name:
            continue  # cannot be represented in the line format
        # A zero-range tensor (constant zero) gets scale 1.0, as ONNX Runtime's quantizer
        # does: scale 0 would divide by zero in every consumer of the cache.
        scale = ranges.amax(name) / INT8_MAX
        if struct.unpack(">f", struct.pack(">f", scale))[0] == 0.0:
            scale = 1.0  # also a range so small its float32 scale underflows to zero
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return ("\n".join(lines) + "\n").encode()


def parse_trt_calibration_cache(data: bytes) -> TensorRanges:
    """Read a TensorRT calibration cache back into symmetric ranges (legacy caches)."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise CalibrationCacheError("TensorRT calibration cache is not ASCII text") from exc
    lines = [line for line in text.splitlines() if line.strip()]
    header = _TRT_HEADER_RE.fullmatch(lines[0].strip()) if lines else None
    if header is None:
        raise CalibrationCacheError(
            "not a TensorRT calibration cache (expected a 'TRT-<version>-<algorithm>' header)"
        )
    ranges: dict[str, tuple[float, float]] = {}
    for number, line in enumerate(lines[1:], start=2):
        match = _TRT_LINE_RE.fullmatch(line.rstrip())
        if match is None:
            raise CalibrationCacheError(
                "malformed TensorRT calibration cache line", line=number
            )
        (scale,) = struct.unpack(">f", bytes.fromhex(match.group("hex").zfill(8)))
        if not math.isfinite(scale) or scale < 0:
            raise CalibrationCacheError(
                "TensorRT calibration cache holds an invalid scale", line=number
            )
        amax = scale * INT8_MAX
        ranges[match.group("name")] = (-amax, amax)
    return TensorRanges(
        algorithm=f"trt:{header.group('algo')}", ranges=ranges,
        params={"trt_version_tag": header.group("ver")},
    )


HISTOGRAM_ALGORITHMS: tuple[str, ...] = ("percentile", "entropy")


def _percentile_from_signed(
    hist: Any, edges: Any, percentile: float
) -> tuple[float, float]:
    """Symmetric percentile range from ONNX Runtime's signed, zero-centred histogram.

    The histogram spans ``[-t, t]`` with an even bin count, so folding it at zero gives the
    histogram of ``|x|`` that ONNX Runtime's percentile calibrator builds (at half the
    resolution); the threshold is the edge where its CDF reaches ``percentile``.
    """
    import numpy as np

    hist = np.asarray(hist, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    zero = hist.size // 2
    folded = hist[zero:] + hist[:zero][::-1]
    total = folded.sum()
    if total == 0:
        return 0.0, 0.0
    cdf = np.cumsum(folded) / total
    index = min(int(np.searchsorted(cdf, percentile / 100.0)), folded.size - 1)
    threshold = float(edges[zero + index + 1])
    return -threshold, threshold


def compute_ranges_for_algorithms(
    model_path: Path, batches: list[Batch], spec: CalibrationSpec, algorithms: list[str],
    workdir: Path,
) -> tuple[dict[str, TensorRanges], dict[str, str]]:
    """Ranges of several algorithms from one pass of collected statistics.

    min-max, percentile and entropy all come from one histogram pass (the collector keeps
    each tensor's exact min and max next to its histogram). Where the histograms cannot be
    built (a tensor spanning most of the float32 range: numpy's "Too many bins for data
    range") the histogram algorithms fall back to min-max, each with a note saying why.
    Returns the ranges and the notes per algorithm.
    """
    import dataclasses

    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    notes: dict[str, str] = {}
    wanted = [a for a in algorithms if a in HISTOGRAM_ALGORITHMS]
    if not wanted:
        minmax = compute_activation_ranges(
            model_path, batches, dataclasses.replace(spec, algorithm="minmax"), workdir)
        return {"minmax": minmax}, notes
    if not batches:
        raise CalibrationCacheError("calibration dataset is empty", model=str(model_path))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    histograms: dict[str, Any] | None = None
    failure = ""
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            calibrator = create_calibrator(
                model_path, None,
                augmented_model_path=str(workdir / "augmented_for_statistics.onnx"),
                calibrate_method=CalibrationMethod.Entropy,
                providers=["CPUExecutionProvider"],
                extra_options={"num_bins": spec.num_bins,
                               "num_quantized_bins": NUM_QUANTIZED_BINS},
            )
        except Exception as exc:  # ORT raises ValueError / Fail / InvalidGraph...
            raise EngineBuildError(
                f"cannot prepare the model for calibration: {type(exc).__name__}: {exc}",
                model=str(model_path),
            ) from exc
        _flat_histograms(calibrator)
        try:
            calibrator.collect_data(_BatchReader(list(batches)))
            histograms = dict(calibrator.collector.histogram_dict)
        except (ValueError, FloatingPointError, OverflowError, MemoryError) as exc:
            failure = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # an inference failure is the data's or model's problem
            raise CalibrationCacheError(
                f"calibration inference failed: {type(exc).__name__}: {exc}",
                batches=len(batches), model=str(model_path),
            ) from exc
    out: dict[str, TensorRanges] = {}
    seconds = round(time.perf_counter() - started, 3)
    if histograms is None:
        minmax = compute_activation_ranges(
            model_path, batches, dataclasses.replace(spec, algorithm="minmax"),
            workdir / "minmax")
        for algo in algorithms:
            if algo != "minmax":
                notes[algo] = f"histograms could not be built ({failure}); min-max used instead"
                logger.warning(
                    "%s calibration is not possible on %s (%s); falling back to min-max",
                    algo, model_path.name, failure,
                    extra={"event": "calibration.ranges.fallback", "algorithm": algo},
                )
            out[algo] = TensorRanges(
                "minmax", minmax.ranges,
                {**range_params_for(spec, "minmax"), "batches": len(batches),
                 **({"fallback_from": algo, "note": notes[algo]} if algo != "minmax" else {})})
        return out, notes
    for algo in algorithms:
        bounds: dict[str, tuple[float, float]] = {}
        for name, hist in histograms.items():
            lo, hi = float(hist[2]), float(hist[3])
            if algo == "entropy":
                lo, hi = entropy_threshold(hist[0], hist[1], lo, hi)
            elif algo == "percentile":
                # Clamped to what was observed: a symmetric range on a Relu output would
                # let the CPU quantizer drop the Relu while its Q/DQ passes negatives.
                p_lo, p_hi = _percentile_from_signed(hist[0], hist[1], spec.percentile)
                lo, hi = max(p_lo, lo), min(p_hi, hi)
            if math.isfinite(lo) and math.isfinite(hi):
                bounds[name] = (min(lo, hi), max(lo, hi))
        params = {**range_params_for(spec, algo), "batches": len(batches),
                  "one_pass_seconds": seconds}
        out[algo] = TensorRanges(algo, bounds, params)
    return out, notes
