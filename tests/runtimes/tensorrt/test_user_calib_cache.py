"""trtexec --calib on the weakly typed TensorRT path: the user's cache is what the implicit
calibrator's read_calibration_cache hands the builder; nothing is calibrated or written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from trt_rig import PROFILE, Rig

from trt_provision.calibration.tensorrt import tensorrt_calibration_input
from trt_provision.runtimes.tensorrt import TensorrtOptions
from trt_provision.types import BuildConfig, CalibrationInput, CalibrationSpec, PrecisionMode

pytestmark = pytest.mark.tier1

USER_CACHE = b"TRT-100300-EntropyCalibration2\ninput: 3c23d70a\nout: 3d4ccccd\n"


def test_user_cache_is_handed_to_the_implicit_calibrator(
    make_rig: Callable[..., Rig], tmp_path: Path
) -> None:
    user = tmp_path / "user.cache"
    user.write_bytes(USER_CACHE)
    read: list[bytes | None] = []
    written: list[bytes] = []

    def provide(model: Path, config: BuildConfig, trt_version: str) -> CalibrationInput:
        data = tensorrt_calibration_input(model, config, tmp_path / "calib",
                                          trt_version=trt_version)
        assert data is not None

        def read_cache() -> bytes | None:
            read.append(data.read_cache())
            return read[-1]

        def write_cache(blob: Any) -> None:
            written.append(bytes(blob))
            data.write_cache(blob)

        return CalibrationInput(batches=data.batches, read_cache=read_cache,
                                write_cache=write_cache)

    rig = make_rig("10.3.0", options=TensorrtOptions(
        optional_plugins=(), int8_quantization="implicit", calibration=provide))
    cfg = BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,),
                      calibration=CalibrationSpec(trt_cache=str(user)))
    meta = rig.build(cfg).metadata
    assert read == [USER_CACHE]
    assert meta["calibration"] == {"batches": 0}
    assert not rig.state.calibration_fed and not written
