"""Calibration data, governed calibration cache, tensor ranges, Q/DQ and FP16 graphs.

Modules, one concern each:

* ``data``      - calibration sources, per-batch validation, ``dataset_digest``
* ``cache``     - the governed calibration cache and ``calibration_key``
* ``ranges``    - activation ranges with ONNX Runtime's calibrators; TensorRT cache text
* ``graph``     - constant/BatchNorm folding and pinned-layer matching
* ``qdq``       - Q/DQ ONNX from ranges
* ``fp16``      - FP16 graph conversion
* ``accuracy``  - converted graph vs FP32, per-sample metrics, the Wilson-bounded gate
* ``verify_engine`` - ``engine_verdict_from_outputs``: a built engine vs the FP32 model
* ``planner``   - ``GovernedCalibrationPlanner`` (the ``CalibrationPlanner`` seam), keys
* ``stages``    - the precision pipeline: spec, splits, ranges, graph, verdict (one module
  each) and the policies that call them (``search``)
* ``precision`` - ``prepare_model_for_precision`` runs the stages;
  ``GovernedPrecisionPipeline`` is the ``PrecisionPipeline`` seam the compiler calls
* ``tensorrt``  - ``tensorrt_calibration_input`` for weakly typed TensorRT builds

Nothing heavy is imported here; ONNX Runtime is imported inside the functions that use it.
"""

from trt_provision.calibration.cache import GovernedCalibrationCache, calibration_key
from trt_provision.calibration.data import CalibrationDataset, dataset_digest
from trt_provision.calibration.planner import GovernedCalibrationPlanner
from trt_provision.calibration.precision import (
    GovernedPrecisionPipeline,
    PreparedModel,
    governed_ranges,
    prepare_model_for_precision,
)
from trt_provision.calibration.qdq import qdq_option_set
from trt_provision.calibration.ranges import (
    TensorRanges,
    parse_trt_calibration_cache,
    write_trt_calibration_cache,
)
from trt_provision.calibration.tensorrt import tensorrt_calibration_input

__all__ = [
    "CalibrationDataset",
    "GovernedCalibrationCache",
    "GovernedCalibrationPlanner",
    "GovernedPrecisionPipeline",
    "PreparedModel",
    "TensorRanges",
    "calibration_key",
    "dataset_digest",
    "governed_ranges",
    "parse_trt_calibration_cache",
    "prepare_model_for_precision",
    "qdq_option_set",
    "tensorrt_calibration_input",
    "write_trt_calibration_cache",
]
