"""The centered-cosine bar: held at min_cosine for outputs judged by cosine alone, and at
CLASSIFIER_MIN_CENTERED_COSINE for logits whose top-1 agreement the gate also checks."""

from __future__ import annotations

import pytest

from trt_provision.calibration.accuracy import (
    CLASSIFIER_MIN_CENTERED_COSINE,
    AccuracyGate,
    AccuracyReport,
    OutputAccuracy,
)

pytestmark = pytest.mark.tier0

GATE = AccuracyGate(min_cosine=0.99, min_top1_agreement=0.95)


def _report(centered: float, top1: float | None) -> AccuracyReport:
    out = OutputAccuracy("y", 0.1, 0.01, 0.9999, 64, top1_agreement=top1, rows=8,
                         centered_cosine=centered)
    return AccuracyReport((out,), batches=2, data="validation")


def test_regression_output_dominated_by_an_offset_is_refused() -> None:
    assert GATE.failures(_report(0.98, None))


def test_classifier_logits_with_agreeing_labels_pass_a_centered_cosine_above_the_bar() -> None:
    assert GATE.failures(_report(0.98, 1.0)) == []


def test_classifier_logits_that_are_noise_are_refused_even_with_agreeing_labels() -> None:
    failures = GATE.failures(_report(CLASSIFIER_MIN_CENTERED_COSINE - 0.1, 1.0))
    assert failures and "centered cosine" in failures[0]
