"""Expected calibration error and temperature scaling on logits whose calibration is known by construction."""

import numpy as np

from stagekit.metrics.calibration import expected_calibration_error, fit_temperature, log_probabilities


def _calibrated_logits(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): calibrated at temperature 1 by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, classes))
    p = np.exp(log_probabilities(logits))
    target = (p.cumsum(1) < rng.random((n, 1))).sum(1)
    return logits, target


def test_ece_is_zero_when_confidence_equals_accuracy_and_the_gap_otherwise():
    p = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(p, np.array([0, 0, 0, 1])) == 0.0  # 75 % sure, 75 % right
    assert np.isclose(expected_calibration_error(p, np.array([0, 0, 1, 1])), 0.25)  # 75 % sure, 50 % right


def test_temperature_recovers_how_far_the_logits_were_sharpened():
    logits, target = _calibrated_logits(20000, 4, 0)
    assert abs(fit_temperature(logits, target) - 1.0) < 0.05
    sharpened = logits * 3.0  # an overconfident model: the same predictions, three times as sure
    t = fit_temperature(sharpened, target)
    assert abs(t - 3.0) < 0.15
    before = expected_calibration_error(np.exp(log_probabilities(sharpened)), target)
    after = expected_calibration_error(np.exp(log_probabilities(sharpened, t)), target)
    assert after < before / 3 and after < 0.02
    assert (log_probabilities(sharpened, t).argmax(1) == sharpened.argmax(1)).all()  # predictions unchanged


def test_one_binary_logit_is_scaled_like_two_classes():
    logits, target = _calibrated_logits(20000, 2, 1)
    margin = (logits[:, 1] - logits[:, 0])[:, None]  # the same model as a single logit
    assert np.allclose(log_probabilities(margin), log_probabilities(logits))
    assert abs(fit_temperature(margin * 0.5, target) - 0.5) < 0.05  # underconfident: T below 1
