"""Real TensorRT builds and inference (Tier 2: needs tensorrt, cuda-python and a GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trt_provision._lazy import is_available

pytestmark = pytest.mark.tier2


def _require_trt_gpu() -> None:
    if not (is_available("tensorrt") and is_available("cuda")):
        pytest.skip("tensorrt and cuda-python are needed")
    from trt_provision.runtimes.tensorrt.cuda_buffers import load_cudart

    try:
        err, count = load_cudart().cudaGetDeviceCount()
    except Exception as exc:
        pytest.skip(f"CUDA runtime unusable: {exc}")
    if int(err) != 0 or count < 1:
        pytest.skip("no visible GPU")


class _TrustingGate:
    def validate(self, engine_path: Path, expected: Any) -> Any:
        from trt_provision.identity import compute_identity
        from trt_provision.types import BuildConfig, EngineCacheEntry

        ident = compute_identity(model_name="t", model_hash="0" * 64, config=BuildConfig(),
                                 target=expected)
        return EngineCacheEntry(engine_path=engine_path, sha256="0" * 64, identity=ident)


def _profiles(model: Path) -> tuple[Any, ...]:
    import onnx

    from trt_provision.types import OptimizationProfile

    graph = onnx.load(str(model), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    out = []
    for inp in graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value if d.dim_value > 0 else -1 for d in inp.type.tensor_type.shape.dim]
        lo = tuple(1 if d < 0 else d for d in dims)
        hi = tuple(4 if d < 0 else d for d in dims)
        out.append(OptimizationProfile(inp.name, lo, lo, hi))
    return tuple(out)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_and_infer_demo_models_match_onnxruntime(
    demo_models: dict[str, Path], tmp_path: Path, precision: str
) -> None:
    _require_trt_gpu()
    import onnxruntime as ort

    from trt_provision.runtimes.tensorrt import TensorrtRuntime
    from trt_provision.types import BuildConfig, PrecisionMode

    if not demo_models:
        pytest.skip("no demo models")
    runtime = TensorrtRuntime(gate=_TrustingGate())
    for name, model in demo_models.items():
        config = BuildConfig(precision=PrecisionMode(precision), profiles=_profiles(model),
                             strict_precision_constraints=False)
        staged = tmp_path / f"{name}.{precision}.engine"
        art = runtime.compile_engine(model, config, staged)
        assert art.metadata["device_memory_bytes"] >= 0
        entry = _TrustingGate().validate(staged, runtime.runtime_target(config))
        handle = runtime.deserialize_engine(entry)
        try:
            session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
            feeds = {
                i.name: np.random.default_rng(0).standard_normal(
                    [d if isinstance(d, int) else 2 for d in i.shape]).astype(np.float32)
                for i in session.get_inputs()
            }
            ref = session.run(None, feeds)
            got = runtime.infer(handle, feeds)
            for expected, out in zip(ref, got.values(), strict=True):
                tol = 1e-3 if precision == "fp32" else 5e-2
                np.testing.assert_allclose(out.astype(np.float32), expected, rtol=tol, atol=tol)
        finally:
            runtime.release_engine(handle)
