"""Measuring engines after they are provisioned.

* :mod:`~trt_provision.measure.runner`: ``trt-provision run``: load an engine through the
  engine gate and the memory budget, time it, compare it with ONNX Runtime FP32, record the
  figures beside it;
* :mod:`~trt_provision.measure.selftest`: ``trt-provision selftest``: build, load and compare
  the demo corpus on every typed path the installed TensorRT offers.

(``precision = "auto"`` times its candidates in ``auto_precision``, where it decides.)
Nothing is imported here: each module loads on first use.
"""
