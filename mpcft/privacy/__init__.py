"""Differential privacy inside MPC: DP-SGD on shares, noise mechanisms, accounting, sampling.

Threat model. MPC hides each owner's data from the other parties during training; DP bounds
what the *released model* tells anyone about one training example: (epsilon, delta)-DP with
respect to adding or removing one example, for whoever receives the model (the output party,
users of the published weights). The compute parties additionally know the Poisson schedule
(which examples each step used: they drew it jointly), so for them amplification by sampling
does not hold: a run reports `epsilon_for_the_parties`, the guarantee of each inclusion being a
Gaussian mechanism without sampling, for the most often sampled example. The noise:
- dp_noise "dealer" (default): drawn by the dealer, hidden from any n-1 parties; a dealer that
  colludes with the model's recipient can remove it (the dealer is trusted as for triples);
- dp_noise "parties": each party draws a share; any t colluding parties, even with the
  dealer, still face noise of the full variance (protocols/noise.py).
Noise is the exact discrete Gaussian sampled with integers from AES-CTR (kernels/discrete_noise),
calibrated to a bound on the computed (fixed-point) clipped contributions (dp_sgd).
The per-step training loss is not covered and is not revealed under --dp unless asked.
"""
from .accountant import ACCOUNTANTS, PrivacyAccountant, calibrate_noise_multiplier, epsilon
from .dp_sgd import DPOptimizer
from .mechanisms import analytic_gaussian_sigma, gaussian_mechanism, gaussian_sigma, laplace_mechanism
from .sampling import joint_seed, poisson_plan, poisson_schedule

__all__ = ["ACCOUNTANTS", "DPOptimizer", "PrivacyAccountant", "analytic_gaussian_sigma", "calibrate_noise_multiplier",
           "epsilon", "gaussian_mechanism", "gaussian_sigma", "joint_seed", "laplace_mechanism", "poisson_plan",
           "poisson_schedule"]
