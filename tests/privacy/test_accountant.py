"""The accountants against the published anchor, each other, and their own calibration."""
import math

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from mpcft.privacy.accountant import (ACCOUNTANTS, PrivacyAccountant, calibrate_noise_multiplier,
                                      check_privacy_parameters, epsilon)

SIGMA, RATE, STEPS, DELTA = 1.1, 0.01, 1000, 1e-5
ANCHORS = {"rdp": (1.712, 0.005), "prv": (1.526, 0.01), "pld": (1.515, 0.01)}


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_anchor(accountant):
    expected, tolerance = ANCHORS[accountant]
    spent = epsilon(SIGMA, RATE, STEPS, DELTA, accountant)
    print(f"{accountant}: eps = {spent:.4f}")
    assert abs(spent - expected) <= tolerance


def test_opacus_rdp_equals_dp_accounting_rdp():
    step = dp_accounting.PoissonSampledDpEvent(RATE, dp_accounting.GaussianDpEvent(SIGMA))
    google = RdpAccountant()
    google.compose(dp_accounting.SelfComposedDpEvent(step, STEPS))
    assert abs(epsilon(SIGMA, RATE, STEPS, DELTA, "rdp") - google.get_epsilon(DELTA)) <= 1e-3


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_calibration_round_trip(accountant):
    sigma = calibrate_noise_multiplier(3.0, DELTA, RATE, STEPS, accountant)
    spent = epsilon(sigma, RATE, STEPS, DELTA, accountant)
    print(f"{accountant}: sigma = {sigma:.5f} gives eps = {spent:.4f}")
    assert 2.9 <= spent <= 3.0


def test_privacy_accountant_tracks_steps():
    run = PrivacyAccountant(SIGMA, RATE, DELTA)
    assert run.epsilon == 0.0 and run.steps == 0
    run.step()
    run.step(STEPS - 1)
    assert run.steps == STEPS
    assert run.epsilon == run.get_epsilon() == epsilon(SIGMA, RATE, STEPS, DELTA)
    assert run.summary() == {"epsilon": run.epsilon, "delta": DELTA, "noise_multiplier": SIGMA,
                             "sampling_rate": RATE, "steps": STEPS, "accountant": "rdp"}


@pytest.mark.parametrize("keyword, value, option", [
    ("epsilon", 0, "--target-epsilon"), ("epsilon", -1, "--target-epsilon"),
    ("epsilon", math.inf, "--target-epsilon"), ("epsilon", math.nan, "--target-epsilon"),
    ("delta", 0, "--delta"), ("delta", 1, "--delta"), ("delta", -1e-5, "--delta"),
    ("max_grad_norm", 0, "--max-grad-norm"), ("max_grad_norm", -1.0, "--max-grad-norm"),
    ("noise_multiplier", 0, "--noise-multiplier"), ("noise_multiplier", -0.5, "--noise-multiplier"),
    ("sample_rate", 0, "--sample-rate"), ("sample_rate", 1.5, "--sample-rate"),
    ("sample_rate", "0.1", "--sample-rate"),
])
def test_bad_parameters_name_the_option(keyword, value, option):
    with pytest.raises(ValueError, match=f"^{option} must be"):
        check_privacy_parameters(**{keyword: value})


def test_good_parameters_pass():
    check_privacy_parameters(epsilon=3.0, delta=1e-5, max_grad_norm=1.0, noise_multiplier=1.1,
                             sample_rate=1.0)


@pytest.mark.parametrize("call", [
    lambda: epsilon(0.0, RATE, STEPS, DELTA),
    lambda: epsilon(SIGMA, 0.0, STEPS, DELTA),
    lambda: epsilon(SIGMA, RATE, -1, DELTA),
    lambda: epsilon(SIGMA, RATE, 1.5, DELTA),
    lambda: epsilon(SIGMA, RATE, STEPS, 1.0),
    lambda: epsilon(SIGMA, RATE, STEPS, DELTA, "gdp"),
    lambda: calibrate_noise_multiplier(-1.0, DELTA, RATE, STEPS),
    lambda: calibrate_noise_multiplier(3.0, 0.0, RATE, STEPS),
    lambda: calibrate_noise_multiplier(3.0, DELTA, 2.0, STEPS),
    lambda: calibrate_noise_multiplier(3.0, DELTA, RATE, 0),
    lambda: calibrate_noise_multiplier(3.0, DELTA, RATE, STEPS, epsilon_tolerance=0.0),
    lambda: PrivacyAccountant(-1.0, RATE, DELTA),
    lambda: PrivacyAccountant(SIGMA, RATE, DELTA, "moments"),
    lambda: PrivacyAccountant(SIGMA, RATE, DELTA).step(-1),
])
def test_public_functions_refuse_bad_parameters(call):
    with pytest.raises(ValueError):
        call()
