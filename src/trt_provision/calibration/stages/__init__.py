"""The precision pipeline as stages, one module each, each a function of the previous
stage's DTO: ``spec`` (resolved once from the BuildConfig) -> ``splits`` (the data, keyed
and split) -> ``ranges`` (per algorithm, governed cache) -> ``graph`` (Q/DQ or FP16 for the
consumer, chosen on validation) -> ``verdict`` (the gate on the judging split, confirmed on
test). ``search`` holds the policies that call stages (algorithm choice, sensitivity
search). :func:`trt_provision.calibration.precision.prepare_model_for_precision` runs them.
"""
