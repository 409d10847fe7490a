"""Calibration data, governed calibration cache, tensor ranges, Q/DQ and FP16 graphs."""
