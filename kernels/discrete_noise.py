"""Exact discrete Laplace and discrete Gaussian samplers in integer arithmetic (ring kernels for DP).

The algorithms are those of Canonne, Kamath & Steinke 2020, "The Discrete Gaussian for
Differential Privacy": Algorithm 1 (Bernoulli(exp(-gamma)) for rational gamma, from
Bernoulli(p) trials of rational p only), Algorithm 2 (discrete Laplace with rational scale t/s)
and Algorithm 3 (discrete Gaussian for rational sigma^2 by rejection from the discrete Laplace
with scale floor(sigma)+1). Every random choice is a uniform integer taken from 62-bit words of
the project's AES-CTR PRG by rejection, and every comparison is between integers, so the output
distribution is exactly the stated one (no floating point, hence no Mironov 2012 leak).

The loops run in Numba over a buffer of words drawn in bulk. When the buffer runs out in the
middle of a draw, the kernel reports where that draw started; the driver keeps the words from
there on, appends fresh ones and replays the draw, so the draws are those of one unbroken stream
(same seed, same draws; no draw is discarded because it needed many words, which would bias it).

Parameters are exact rationals. sigma^2 = n/d and the Laplace scale t/s are taken from an int
or a fractions.Fraction as given; a float is rounded *up* (more noise, never less) onto a
power-of-two grid: sigma^2 to d = 2^k with d*(floor(sigma)+1)^2 <= 2^30 (relative change below
1e-7, and below 2^-30 for sigma >= 2^15), the scale to s = 2^k with t about 2^40.
Overflow bounds, checked (ValueError): for the Gaussian d*T^2 <= 2^55 and 2*n*d < 2^62 with
T = floor(sigma)+1 (so sigma < 2^27.5 with d = 1); for the Laplace s < 2^62 and
t <= (2^62 - 1) // 8001 (about 2^49), so that u + t*v overflows only if the geometric v exceeds
8000 (probability below e^-8000; the sampler then raises).
The acceptance test of Algorithm 3 needs (|y|*d*T - n)^2 and 2*n*d*T^2, up to 2^124: they are
held as two int64 limbs (hi * 2^62 + lo). A Laplace proposal with |y| > 2^62/(d*T) (at least
128 T, probability below e^-127) has acceptance probability below e^-8000; the sampler then
runs the first floor(gamma_min) Bernoulli(exp(-1)) trials of Algorithm 1 exactly and, in the
event (probability below e^-8000) that all of them succeed, raises instead of deviating.
"""
import math
from fractions import Fraction

import numba
import numpy as np

_LIMIT = 1 << 62
_M62 = _LIMIT - 1
_M31 = (1 << 31) - 1
_EXHAUSTED = -1  # the word buffer ran out: replay the draw with more words
_OVERFLOW = -2   # an event of probability < e^-8000: refuse rather than deviate
_WORDS = 1 << 20  # PRG words (8 bytes each) drawn per refill, at least
_LAPLACE_T_MAX = _M62 // 8001   # Laplace numerators t above this overflow u + t*v with v <= 8000
# words drawn ahead per draw: a little above the measured means (Laplace 7-10, Gaussian 14-24)
_LAPLACE_WORDS, _GAUSSIAN_WORDS = 12, 26


# ---------------------------------------------------------------- integer primitives (Numba)

@numba.njit(cache=True, inline="always")
def _word(words, pos):
    p = pos[0]
    if p >= words.size:
        return -1
    pos[0] = p + 1
    return words[p] & _M62


@numba.njit(cache=True)
def _bitlen(x):
    n = 0
    while x > 0:
        x >>= 1
        n += 1
    return n


@numba.njit(cache=True)
def _below(b, words, pos):
    """Uniform in [0, b) for 1 <= b <= 2^62 by masking and rejection; -1 if exhausted."""
    if b == 1:
        return 0
    mask = (1 << _bitlen(b - 1)) - 1
    while True:
        w = _word(words, pos)
        if w < 0:
            return -1
        if (w & mask) < b:
            return w & mask


@numba.njit(cache=True)
def _bern_exp_le1(num, den, words, pos):
    """Bernoulli(exp(-num/den)) for 0 <= num <= den < 2^62 (CKS Algorithm 1, gamma <= 1).

    K counts successes of Bernoulli(gamma/K) = Bernoulli(gamma) * Bernoulli(1/K); exp(-gamma)
    is the probability that the first failure comes at an odd K.
    """
    k = 1
    while True:
        u = _below(den, words, pos)
        if u < 0:
            return -1
        if u >= num:  # Bernoulli(num/den) failed
            break
        v = _below(k, words, pos)
        if v < 0:
            return -1
        if v != 0:  # Bernoulli(1/k) failed
            break
        k += 1
    return k & 1


@numba.njit(cache=True)
def _mul(a, b):
    """a*b for 0 <= a, b < 2^62 as limbs (hi, lo): a*b = hi*2^62 + lo, 0 <= lo < 2^62."""
    a1, a0 = a >> 31, a & _M31
    b1, b0 = b >> 31, b & _M31
    mid = a1 * b0 + a0 * b1
    low = ((mid & _M31) << 31) + a0 * b0
    return a1 * b1 + (mid >> 31) + (low >> 62), low & _M62


@numba.njit(cache=True)
def _below2(hi, lo, words, pos):
    """Uniform (uh, ul) below hi*2^62 + lo (> 0), two words a try; uh = -1 if exhausted."""
    if hi == 0:
        return 0, _below(lo, words, pos)
    mask = (1 << _bitlen(hi)) - 1
    while True:
        w1 = _word(words, pos)
        w0 = _word(words, pos)
        if w0 < 0:
            return -1, 0
        uh = w1 & mask
        if uh < hi or (uh == hi and w0 < lo):
            return uh, w0


@numba.njit(cache=True)
def _bern_exp_big(nh, nl, qh, ql, words, pos):
    """Bernoulli(exp(-N/Q)) for limb pairs N, Q (CKS Algorithm 1, any gamma >= 0)."""
    while nh > qh or (nh == qh and nl >= ql):  # gamma >= 1: one Bernoulli(exp(-1)) per unit
        b = _bern_exp_le1(1, 1, words, pos)
        if b <= 0:
            return b
        nh, nl = nh - qh, nl - ql
        if nl < 0:
            nh, nl = nh - 1, nl + _LIMIT
    k = 1
    while True:
        uh, ul = _below2(qh, ql, words, pos)
        if uh < 0 or ul < 0:
            return -1
        if not (uh < nh or (uh == nh and ul < nl)):
            break
        v = _below(k, words, pos)
        if v < 0:
            return -1
        if v != 0:
            break
        k += 1
    return k & 1


# ---------------------------------------------------------------- the samplers (Numba)

@numba.njit(cache=True)
def _laplace_one(t, s, words, pos):
    """(status, y): y with P(y) proportional to exp(-|y| s/t) (CKS Algorithm 2)."""
    while True:
        u = _below(t, words, pos)
        if u < 0:
            return -1, 0
        d = _bern_exp_le1(u, t, words, pos)
        if d < 0:
            return -1, 0
        if d == 0:
            continue
        v = 0
        while True:
            a = _bern_exp_le1(1, 1, words, pos)
            if a < 0:
                return -1, 0
            if a == 0:
                break
            v += 1
        if v > (_M62 - u) // t:
            return _OVERFLOW, 0
        y = (u + t * v) // s
        b = _word(words, pos)
        if b < 0:
            return -1, 0
        b &= 1
        if b == 1 and y == 0:
            continue
        return 0, (1 - 2 * b) * y


@numba.njit(cache=True)
def _laplace_kernel(words, out, start, t, s):
    pos = np.zeros(1, np.int64)
    for i in range(start, out.size):
        p0 = pos[0]
        status, y = _laplace_one(t, s, words, pos)
        if status < 0:
            return i, p0, status
        out[i] = y
    return out.size, pos[0], 0


@numba.njit(cache=True)
def _gauss_kernel(words, out, start, n, d, t, x_max, g_min, qh, ql):
    """CKS Algorithm 3 for sigma^2 = n/d, proposal scale t: accept y with probability
    exp(-(|y| - sigma^2/t)^2 / (2 sigma^2)) = exp(-(|y| d t - n)^2 / (2 n d t^2))."""
    pos = np.zeros(1, np.int64)
    dt = d * t
    for i in range(start, out.size):
        p0 = pos[0]
        while True:
            status, y = _laplace_one(t, 1, words, pos)
            if status < 0:
                return i, p0, status
            x = abs(y)
            if x > x_max:  # gamma > g_min: the first g_min steps of Algorithm 1, exactly
                c = 1
                for _ in range(g_min):
                    c = _bern_exp_le1(1, 1, words, pos)
                    if c <= 0:
                        break
                if c < 0:
                    return i, p0, -1
                if c == 1:
                    return i, p0, _OVERFLOW
                continue
            nh, nl = _mul(abs(x * dt - n), abs(x * dt - n))
            c = _bern_exp_big(nh, nl, qh, ql, words, pos)
            if c < 0:
                return i, p0, -1
            if c == 1:
                out[i] = y
                break
    return out.size, pos[0], 0


# ---------------------------------------------------------------- drivers and parameters

def _words(prg, count: int) -> np.ndarray:
    """At least `count` PRG words, a whole number of AES blocks (2 words), so that successive
    refills continue the stream without skipping the rest of a block."""
    return prg.ring_numpy(max(_WORDS, count) + (max(_WORDS, count) & 1))


def _run(kernel, prg, shape, words_per_draw, *params):
    out = np.empty(shape, dtype=np.int64)
    flat = out.reshape(-1)
    count, done = flat.size, 0
    words = _words(prg, words_per_draw * count) if count else None
    while done < count:
        done, used, status = kernel(words, flat, done, *params)
        if status == _OVERFLOW:
            raise RuntimeError("an event of probability below e^-8000 occurred in the sampler; "
                               "it refuses to deviate from the exact distribution")
        if done < count:  # out of words mid-draw: keep the draw's words, append fresh ones
            words = np.concatenate([words[used:], _words(prg, words_per_draw * (count - done))])
    return out


def _rational(value, name) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction, np.integer, np.floating)):
        raise TypeError(f"{name} must be an int, float or fractions.Fraction, got {type(value).__name__}")
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    value = Fraction(value)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _round_up(value: Fraction, bits: int) -> Fraction:
    """value rounded up onto the grid 2^-bits."""
    return Fraction(-((-value.numerator << bits) // value.denominator), 1 << bits)


def laplace_scale_fraction(scale_t) -> Fraction:
    """The exact rational scale that discrete_laplace uses for `scale_t` (floats rounded up)."""
    is_float = isinstance(scale_t, (float, np.floating))
    scale = _rational(scale_t, "the discrete Laplace scale")
    if is_float:
        scale = _round_up(scale, max(0, 40 - math.ceil(scale).bit_length()))
    if scale.numerator > _LAPLACE_T_MAX or scale.denominator >= _LIMIT:
        raise ValueError(f"the discrete Laplace scale {scale} needs a numerator of at most "
                         f"{_LAPLACE_T_MAX} and a denominator below 2^62; pass a float below "
                         f"{_LAPLACE_T_MAX} to have it rounded up onto a 2^-k grid")
    return scale


def variance_fraction(sigma_squared) -> Fraction:
    """The exact rational sigma^2 that discrete_gaussian uses (floats rounded up; bounds checked)."""
    is_float = isinstance(sigma_squared, (float, np.floating))
    var = _rational(sigma_squared, "sigma^2")
    if is_float:
        t = math.isqrt(math.floor(var)) + 1
        var = _round_up(var, max(0, 30 - (t * t).bit_length()))
    n, d = var.numerator, var.denominator
    t = math.isqrt(n // d) + 1
    if d * t * t > 1 << 55 or 2 * n * d >= _LIMIT:
        raise ValueError(f"sigma^2 = {var} is outside the sampler's exact int64 range: it needs "
                         "d*(floor(sigma)+1)^2 <= 2^55 and 2*n*d < 2^62 for sigma^2 = n/d "
                         "(sigma below about 1.9e8; pass a float to have the denominator chosen)")
    return var


def discrete_laplace(prg, scale_t, shape) -> np.ndarray:
    """int64 draws with P(x) = (e^(1/t) - 1)/(e^(1/t) + 1) * exp(-|x|/t), exactly, from `prg`.

    t = scale_t: an int, a Fraction (exact) or a float (rounded up to a 2^-k grid, about 40
    significant bits). Variance 2 e^(-1/t) / (1 - e^(-1/t))^2.
    """
    scale = laplace_scale_fraction(scale_t)
    return _run(_laplace_kernel, prg, shape, _LAPLACE_WORDS, scale.numerator, scale.denominator)


def discrete_gaussian(prg, sigma_squared, shape) -> np.ndarray:
    """int64 draws with P(x) proportional to exp(-x^2 / (2 sigma^2)), exactly, from `prg`.

    sigma_squared: an int, a Fraction (exact, within the bounds in the module docstring) or a
    float (rounded up, relative change below 1e-7). Its variance is slightly below sigma^2 for
    small sigma (CKS Prop. 19) and equal to it within e^-(2 pi^2 sigma^2) relative for sigma >= 1.
    """
    var = variance_fraction(sigma_squared)
    n, d = var.numerator, var.denominator
    t = math.isqrt(n // d) + 1
    x_max = _LIMIT // (d * t)
    g_min = math.floor(Fraction(((x_max + 1) * d * t - n) ** 2, 2 * n * d * t * t))
    qh, ql = divmod(2 * n * d * t * t, _LIMIT)
    return _run(_gauss_kernel, prg, shape, _GAUSSIAN_WORDS, n, d, t, x_max, min(g_min, 1 << 62), qh, ql)
