"""Shares of discrete-Gaussian and discrete-Laplace noise that no party knows, for DP on shares.

gaussian_noise(ctx, shape, variance) returns shares of z with z ~ N_Z(0, variance) in ring
units (the exact discrete Gaussian, kernels/discrete_noise.py), from one of two sources:
- "dealer" (default): a "dp_noise" correlation. The dealer draws z from a key that is the sum
  of the parties' pads, so any n-1 parties hold uniform shares independent of z. The dealer
  knows z, as it knows every Beaver triple: the same trust (a dealer colluding with a party
  can already learn everything), so exact variance costs nothing extra.
  Cost: no party-to-party bytes, 8 numel bytes from the dealer, about 1/n to each party (noise_cost).
- "parties": party i adds its own z_i ~ N_Z(0, variance / (n - t)) from a fresh OS-seeded PRG.
  Any t colluding parties, even with the dealer, still face the n - t honest draws, whose sum
  has variance `variance` (it is N_Z(0, variance) exactly when t = n - 1, and within the
  statistical distance of Canonne, Kamath & Steinke 2020, Thm. 23, of it otherwise); the
  total variance is n / (n - t) times `variance`. Cost: nothing sent.
laplace_noise(ctx, shape, scale): the same for the discrete Laplace; with "parties", every
party draws the full scale (the honest party's draw alone gives the guarantee), n times the
variance.
Reveals nothing: the output is additive shares.
"""
import math

import torch

from mpcft.kernels import PRG, fresh_seed
from mpcft.kernels.discrete_noise import (discrete_gaussian, discrete_laplace, laplace_scale_fraction,
                                          variance_fraction)

from .cost import FREE, RING_BYTES, Cost

NOISE_SOURCES = ("dealer", "parties")


def gaussian_noise(ctx, shape, variance, source: str = "dealer", colluders: int | None = None) -> torch.Tensor:
    """This party's share of N_Z(0, variance) noise of `shape`; variance in ring units^2 (an
    int, Fraction or float; floats are rounded up). colluders: t for source "parties"
    (default n - 1, the most any coalition short of everyone can be)."""
    shape = tuple(int(s) for s in shape)
    if source == "dealer":
        exact = variance_fraction(variance)
        correlation = ctx.correlation("dp_noise", shape=list(shape), variance_num=exact.numerator,
                                      variance_den=exact.denominator)
        (noise,) = correlation.derived()
        return noise
    if source == "parties":
        n = ctx.world_size
        t = n - 1 if colluders is None else colluders
        if not 1 <= t <= n - 1:
            raise ValueError(f"colluders must be in [1, {n - 1}] for {n} parties, got {t}")
        per_party = variance_fraction(variance) / (n - t)
        share_variance = variance_fraction(math.nextafter(float(per_party), math.inf))  # >= per_party
        draws = discrete_gaussian(PRG(fresh_seed()), share_variance, shape)
        return torch.from_numpy(draws).to(ctx.device)
    raise ValueError(f"noise source must be one of {NOISE_SOURCES}, got {source!r}")


def laplace_noise(ctx, shape, scale, source: str = "dealer") -> torch.Tensor:
    """This party's share of discrete Laplace noise of `shape`, P(z) ~ exp(-|z| / scale), scale
    in ring units (int, Fraction or float rounded up)."""
    shape = tuple(int(s) for s in shape)
    exact = laplace_scale_fraction(scale)
    if source == "dealer":
        correlation = ctx.correlation("dp_laplace", shape=list(shape), scale_num=exact.numerator,
                                      scale_den=exact.denominator)
        return correlation.derived()[0]
    if source == "parties":
        return torch.from_numpy(discrete_laplace(PRG(fresh_seed()), exact, shape)).to(ctx.device)
    raise ValueError(f"noise source must be one of {NOISE_SOURCES}, got {source!r}")


def noise_cost(n: int, numel: int, source: str = "dealer") -> tuple[Cost, int]:
    """(party-to-party cost, dealer bytes to all parties: each receives its run, about 1/n)
    of gaussian_noise and laplace_noise."""
    return FREE, (numel * RING_BYTES if source == "dealer" else 0)
