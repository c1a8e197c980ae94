"""Privacy accounting for DP-SGD: `steps` rounds of the Poisson-subsampled Gaussian mechanism.

Each step samples every example with probability `sample_rate` and adds Gaussian noise of
std noise_multiplier * clipping norm. The maths is delegated to well-kept libraries: Opacus's
RDP and PRV accountants, and Google's dp_accounting PLD accountant (add-or-remove-one).
Anchor: sigma = 1.1, q = 0.01, 1000 steps, delta = 1e-5 give eps = 1.712 (rdp), 1.526 (prv)
and 1.515 (pld).
"""
import contextlib
import math
import numbers
import warnings

import dp_accounting
from dp_accounting.pld import PLDAccountant
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from scipy.optimize import brentq

ACCOUNTANTS = ("rdp", "prv", "pld")
_OPACUS = {"rdp": RDPAccountant, "prv": PRVAccountant}
# Opacus's orders and larger ones: the bound is the minimum over orders, so more orders only
# tighten it; few noisy steps (large epsilon) have their optimum above Opacus's 63
RDP_ORDERS = RDPAccountant.DEFAULT_ALPHAS + list(range(64, 256, 4)) + list(range(256, 1025, 32))


@contextlib.contextmanager
def _quiet_rdp_orders():
    """Opacus warns when the best order is at the end of its list (during its own calibration
    search, at trial sigmas); the reported epsilon uses RDP_ORDERS instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
        yield

# keyword -> (option as the user types it, rule in words, test)
_RULES = {
    "epsilon": ("--target-epsilon", "a finite number > 0", lambda v: 0 < v < math.inf),
    "delta": ("--delta", "in (0, 1)", lambda v: 0 < v < 1),
    "max_grad_norm": ("--max-grad-norm", "a finite number > 0", lambda v: 0 < v < math.inf),
    "noise_multiplier": ("--noise-multiplier", "a finite number > 0", lambda v: 0 < v < math.inf),
    "sample_rate": ("--sample-rate", "in (0, 1]", lambda v: 0 < v <= 1),
}


def check_privacy_parameters(*, epsilon=None, delta=None, max_grad_norm=None,
                             noise_multiplier=None, sample_rate=None) -> None:
    """Raise ValueError, in one sentence naming the option, for the first value out of range."""
    given = dict(epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm,
                 noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    for name, value in given.items():
        if value is None:
            continue
        option, rule, valid = _RULES[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not valid(value):
            raise ValueError(f"{option} must be {rule}, got {value}")


def _check_accountant(accountant) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"--accountant must be one of {', '.join(ACCOUNTANTS)}, "
                         f"got {accountant!r}")


def _check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"--steps must be a whole number >= 0, got {steps!r}")


def epsilon(noise_multiplier, sample_rate, steps, delta, accountant="rdp") -> float:
    """The epsilon at `delta` after `steps` Poisson-subsampled Gaussian steps (0.0 for no step)."""
    check_privacy_parameters(delta=delta, noise_multiplier=noise_multiplier,
                             sample_rate=sample_rate)
    _check_steps(steps)
    _check_accountant(accountant)
    steps = int(steps)
    if steps == 0:
        return 0.0
    if accountant == "pld":
        step = dp_accounting.PoissonSampledDpEvent(
            sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
        pld = PLDAccountant()
        pld.compose(dp_accounting.SelfComposedDpEvent(step, steps))
        return float(pld.get_epsilon(delta))
    opacus = _OPACUS[accountant]()
    opacus.history = [(noise_multiplier, sample_rate, steps)]
    with _quiet_rdp_orders():
        return float(opacus.get_epsilon(delta, alphas=RDP_ORDERS) if accountant == "rdp"
                     else opacus.get_epsilon(delta))


def calibrate_noise_multiplier(target_epsilon, delta, sample_rate, steps, accountant="rdp",
                               epsilon_tolerance=0.01) -> float:
    """The smallest noise multiplier (to epsilon_tolerance) whose epsilon is <= target_epsilon."""
    check_privacy_parameters(epsilon=target_epsilon, delta=delta, sample_rate=sample_rate)
    _check_steps(steps)
    _check_accountant(accountant)
    if not 0 < epsilon_tolerance < target_epsilon:
        raise ValueError(f"epsilon_tolerance must be in (0, {target_epsilon}), the target "
                         f"epsilon, got {epsilon_tolerance}")
    if steps == 0:
        raise ValueError("--steps must be >= 1 to calibrate the noise multiplier, got 0")
    if accountant == "pld":
        sigma, spent = _solve_pld(target_epsilon, delta, sample_rate, steps, epsilon_tolerance)
    else:
        with _quiet_rdp_orders():
            sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                         sample_rate=sample_rate, steps=steps,
                                         accountant=accountant, epsilon_tolerance=epsilon_tolerance)
        spent = epsilon(sigma, sample_rate, steps, delta, accountant)
    if spent > target_epsilon:
        raise RuntimeError(f"calibration returned sigma = {sigma} with epsilon {spent} above "
                           f"the target {target_epsilon}")
    return float(sigma)


def _solve_pld(target_epsilon, delta, sample_rate, steps, tolerance) -> tuple[float, float]:
    """(sigma, epsilon): Brent's method on log epsilon(log sigma), nearly linear, aiming at
    target - tolerance/2, bracketed above by the RDP calibration (RDP's epsilon bounds PLD's)."""
    goal = target_epsilon - tolerance / 2
    spent = {}  # sigma -> PLD epsilon, for every sigma tried

    def excess(log_sigma):  # decreasing in sigma
        sigma = math.exp(log_sigma)
        spent[sigma] = epsilon(sigma, sample_rate, steps, delta, "pld")
        return math.log(spent[sigma] / goal)

    with _quiet_rdp_orders():
        high = math.log(get_noise_multiplier(target_epsilon=goal, target_delta=delta,
                                             sample_rate=sample_rate, steps=steps,
                                             epsilon_tolerance=tolerance / 2))
    while excess(high) > 0:
        high += math.log(2)
    low = high - math.log(1.25)
    while excess(low) <= 0:
        low -= math.log(1.25)
    brentq(excess, low, high, xtol=tolerance / (20 * target_epsilon))
    return min((sigma, eps) for sigma, eps in spent.items() if eps <= target_epsilon)


class PrivacyAccountant:
    """The privacy spent by a DP-SGD run so far; epsilon is recomputed only when steps change."""

    def __init__(self, noise_multiplier, sample_rate, delta, accountant="rdp"):
        check_privacy_parameters(delta=delta, noise_multiplier=noise_multiplier,
                                 sample_rate=sample_rate)
        _check_accountant(accountant)
        self.noise_multiplier = noise_multiplier
        self.sample_rate = sample_rate
        self.delta = delta
        self.accountant = accountant
        self._steps = 0
        self._cached = (0, 0.0)  # (steps, epsilon)

    def step(self, n=1) -> None:
        _check_steps(n)
        self._steps += n

    @property
    def steps(self) -> int:
        return self._steps

    def get_epsilon(self) -> float:
        if self._cached[0] != self._steps:
            self._cached = (self._steps, epsilon(self.noise_multiplier, self.sample_rate,
                                                 self._steps, self.delta, self.accountant))
        return self._cached[1]

    @property
    def epsilon(self) -> float:
        return self.get_epsilon()

    def summary(self) -> dict:
        return {"epsilon": self.get_epsilon(), "delta": self.delta,
                "noise_multiplier": self.noise_multiplier, "sampling_rate": self.sample_rate,
                "steps": self._steps, "accountant": self.accountant}
