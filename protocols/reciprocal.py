"""Reciprocal, inverse square root and logarithm of positive shared values.

Range reduction with comparisons against public powers of two, then Newton iterations:
  b_j = [x >= 2^j] for the thresholds of the declared range (one batched comparison, which
  also makes every x b_j local: comparison.below_thresholds);
  one-hot o_j = b_j - b_{j+1} of the binary exponent e, so a public function of e is a
  local linear combination sum_j o_j * g(j), with no truncation (o_j has scale 1), and so is
  x g(e) = sum_j (x o_j) g(j);
  m = x * 2^-(e+1) lies in [1/2, 1) (or [1/4, 1) with every other threshold), where the
  iterations converge from a quadratic guess (m^2 is local: it costs no round).
reciprocal: 1/m by y <- y (2 - m y) from a quadratic guess. For at most 8,192 values (row
  sums), thresholds every binary order, m in [1/2, 1), guess error 0.010, 2 iterations:
  -> 1.0e-4 -> 1.0e-8; beyond, every other order, m in [1/4, 1), error 0.075, 3 iterations:
  -> 5.6e-3 -> 3.1e-5 -> 1e-9 (fewer comparison bytes per value, 2 rounds more).
inv_sqrt: with even exponents, m = x * 4^-e' in [1/4, 1), 1/sqrt(m) by y <- y (3 - m y^2) / 2
  from a quadratic of relative error 0.024, 2 iterations: 0.024 -> 8.9e-4 -> 1.2e-6.
Every iterate, m and every intermediate come out of a truncation, so their products are
local (truncation.FusedTruncations): an iteration costs 2 truncation rounds and no Beaver one.
m itself is formed exactly (x 2^-top at 2f + g bits: _reduced). The result, y times the
interval's 2^-top (2^-top/2 and a public multiplier for inv_sqrt), takes a Beaver product
with the one-hot's scale and a truncation; for few values (_final_shifts: LayerNorm's rows,
cross-entropy, DP norms) the last iterate is instead truncated by a shift per interval that
the thresholds' bits select locally (comparison.ThresholdScale): 2 rounds fewer.
log: log(x) = log(m) + (e+1) ln 2, log(m) by a degree-8 polynomial on [1/2, 1) (m exact too).
Accuracy contract: relative error below 1e-4 for x in [lo, hi] given by the caller (the
comparisons need |x - 2^j| < 2^(bits - f)); results outside [lo, hi] are clamped to the
nearest end's exponent. Reveals nothing but the output shares.
"""
import math

import numpy as np
import torch

from mpcft.kernels import DEFAULT_FRACTIONAL_BITS

from . import fixed
from .comparison import (ROUND_BYTES, ThresholdScale, below_thresholds, sign_bit, sign_cost,
                         threshold_scale_cost)
from .cost import RING_BYTES, Cost
from .truncation import VALID_BITS, FusedTruncations, truncate_cost, truncations_cost


def _exponent_onehot(ctx, x: torch.Tensor, thresholds: list, bits: int, final_shifts: list | None = None):
    """Arithmetic one-hot [len(thresholds)+1, *shape] of the interval of x among thresholds,
    x times it (local: comparison.below_thresholds) and, with final_shifts, the
    comparison.ThresholdScale that scales the result by a power of two per interval (else None)."""
    if not final_shifts:
        below, x_below = below_thresholds(ctx, x, thresholds, bits)       # [x < t_j], x [x < t_j]
        scale = None
    else:
        scale = ThresholdScale(ctx, x, thresholds, bits, final_shifts)
        below, x_below = scale.below, scale.x_below
    ones = ctx.public(1, below[:1].shape, frac_bits=0)
    at_least = torch.cat([ones, ones - below])          # b_j = [x >= t_j], with b_{-1} = 1
    x_at_least = torch.cat([x[None], x[None] - x_below])
    return _onehot(at_least), _onehot(x_at_least), scale


def _onehot(at_least: torch.Tensor) -> torch.Tensor:
    """o_j = b_j - b_{j+1} (b past the last threshold is 0)."""
    return at_least - torch.cat([at_least[1:], torch.zeros_like(at_least[:1])])


def _final_shifts(numel: int, tops: list, frac_bits: int, lifted: int = 0, divisor: int = 1,
                  multiplier: float = 1.0):
    """(shifts, e) where the result's final scaling by 2^(-top / divisor) of x's interval goes
    through comparison.ThresholdScale: the last iterate, at 2f + lifted fractional bits and
    below 2^(2f + lifted + 1), times round(multiplier 2^e), truncated by f + lifted + e +
    top / divisor. Else None: where its about 4 T + 2 dealer values per value cost more than
    the two rounds it saves (a Beaver product and its truncation; a round priced at
    ROUND_BYTES), or the shifts or the product would leave the ring's range. e = 0 for the
    multiplier 1."""
    if numel * (4 * (len(tops) - 1) + 2) * RING_BYTES > 2 * ROUND_BYTES:
        return None
    f = frac_bits
    e = 0 if multiplier == 1 else min(20, VALID_BITS - 1 - (2 * f + lifted + 1) - math.ceil(math.log2(multiplier)),
                                      VALID_BITS - 1 - (f + lifted) - max(tops) // divisor)
    shifts = [f + lifted + e + t // divisor for t in tops]
    if e < 0 or min(shifts) < 1 or max(shifts) >= VALID_BITS:
        return None
    return shifts, e


def _scale_sum(ctx, onehot: torch.Tensor, values) -> torch.Tensor:
    """sum_j onehot_j * values_j for public reals: local (onehot has scale 1)."""
    enc = ctx.fp.encode(torch.tensor(values, dtype=torch.float64)).to(onehot.device)
    return (onehot * enc.reshape((-1,) + (1,) * (onehot.ndim - 1))).sum(0)


def _reduced(ctx, x_onehot: torch.Tensor, tops: list) -> tuple:
    """(x 2^-top of x's interval at 2f + g fractional bits, f + g) with g = max(0, max(tops) - f):
    the powers of two exactly, also below 2^-f, where f-bit encodings would round them (to 0
    for top > f + 1)."""
    shift = _reduced_shift(tops, ctx.frac_bits)
    powers = torch.tensor([1 << (shift - t) for t in tops], dtype=torch.int64, device=x_onehot.device)
    return (x_onehot * powers.reshape((-1,) + (1,) * (x_onehot.ndim - 1))).sum(0), shift


def _range_exponents(lo: float, hi: float, step: int) -> list:
    """Exponents j (multiples of step) with 2^j covering [lo, hi]."""
    first = step * math.floor(math.log2(lo) / step)
    last = step * math.ceil(math.log2(hi) / step)
    return list(range(first + step, last, step))


def _range_tops(lo: float, hi: float, step: int) -> tuple:
    """(thresholds' exponents, tops): interval k holds x in [2^(exps[k-1]), 2^(exps[k])), and
    x 2^-tops[k] lies in [2^-step, 1) there."""
    exps = _range_exponents(lo, hi, step)
    return exps, [exps[0]] + [j + step for j in exps]


def reciprocal(ctx, x: torch.Tensor, lo: float = 1e-2, hi: float = 1e4, bits: int = 40) -> torch.Tensor:
    """1/x for x in [lo, hi]."""
    step, iterations, guess = _reciprocal_plan(x.numel())
    exps, tops = _range_tops(lo, hi, step)
    f, final = ctx.frac_bits, _final_shifts(x.numel(), tops, ctx.frac_bits)
    at_the_end = final is not None
    onehot, x_onehot, scaled = _exponent_onehot(ctx, x, [2.0 ** j for j in exps], bits, final[0] if at_the_end else None)
    scales = [2.0 ** -t for t in tops]
    pairs = [p for y in range(1, 2 * iterations, 2) for p in ((0, y), (y, y + 1))]
    newton = _Newton(ctx, _reduced(ctx, x_onehot, tops), guess, [f] * (2 * iterations - at_the_end), pairs)
    for y in range(1, 2 * iterations, 2):       # y <- 2y - (m y) y
        (m_y,) = newton.truncate(newton.product(0, y))
        last = newton.lifted(y, 2) - newton.product(y, m_y)
        if y + 2 < 2 * iterations or not at_the_end:
            newton.truncate(last)
    if at_the_end:                              # y 2^-top, truncated by f + top
        return scaled.truncate(last)
    return fixed.mul(ctx, newton.outputs[-1], _scale_sum(ctx, onehot, scales))


class _Newton:
    """Newton iterations on m = raw / 2^raw_shift (reduced: _reduced) from the guess
    y0 = c0 + c1 m + c2 m^2, each value a truncation output (truncation.FusedTruncations), so
    that every product of two of them, m^2 included, is local and an iteration costs only its
    truncation rounds. Truncation 0 is m, 1 is y0, then `shifts` in order; `pairs` are the
    products the iterations take."""

    def __init__(self, ctx, reduced: tuple, guess, shifts: list, pairs: list):
        self.ctx, f = ctx, ctx.frac_bits
        self.f, e = f, _GUESS_BITS
        raw, raw_shift = reduced
        self.fused = FusedTruncations(ctx, raw.shape, [raw_shift, f + e] + shifts, [(0, 0)] + pairs)
        (m,) = self.fused.truncate({0: raw})
        self.outputs = [m]
        c0, c1, c2 = guess            # y0 at 2f + e fractional bits, truncated by f + e
        self.truncate(self.fused.product(0, 0) * round(c2 * 2.0 ** e) + m * round(c1 * 2.0 ** (f + e))
                      + fixed.ring_constant(ctx, c0, 2 * f + e))

    def truncate(self, *raws) -> list:
        """Truncate the next values together (one round); their indices."""
        first = len(self.outputs)
        self.outputs += self.fused.truncate({first + k: raw for k, raw in enumerate(raws)})
        return list(range(first, len(self.outputs)))

    def product(self, i: int, j: int):
        return self.fused.product(i, j)

    def lifted(self, i: int, factor: int):
        """factor * output i at 2f fractional bits, to add to products of two outputs."""
        return self.outputs[i] * (factor << self.f)


def _relative_fit(f, a: float, b: float, degree: int = 2) -> list:
    """Coefficients (increasing powers) of a polynomial close to f on [a, b] in relative error,
    near minimax: least squares reweighted towards the largest errors."""
    t = np.linspace(a, b, 2001)
    powers, weights = np.vander(t, degree + 1, increasing=True), np.ones_like(t)
    for _ in range(50):
        coeffs = np.linalg.lstsq(powers * (weights / f(t))[:, None], weights, rcond=None)[0]
        error = np.abs(powers @ coeffs / f(t) - 1)
        weights = weights * (1 + error / (2 * error.max()))
    return [float(c) for c in coeffs]


_GUESS_BITS = 12           # fractional bits the guess's coefficients keep beyond f
# (thresholds every `step` binary orders, Newton iterations, guess on [2^-step, 1)): a binary
# order per threshold and 2 iterations for at most ROW_WISE_UP_TO values (softmax sums,
# cross-entropy: 2 rounds fewer), where the extra comparisons' bytes cost less than the
# rounds; every other order and 3 iterations beyond, where they would not
ROW_WISE_UP_TO = 1 << 13
_RECIPROCAL_PLANS = {True: (1, 2, _relative_fit(lambda t: 1 / t, 0.5, 1.0)),
                     False: (2, 3, _relative_fit(lambda t: 1 / t, 0.25, 1.0))}


def _reciprocal_plan(numel: int) -> tuple:
    return _RECIPROCAL_PLANS[numel <= ROW_WISE_UP_TO]


def inv_sqrt(ctx, x: torch.Tensor, lo: float = 1e-4, hi: float = 1e4, bits: int = 40,
             multiplier: float = 1.0) -> torch.Tensor:
    """multiplier / sqrt(x) for x in [lo, hi] (the public multiplier costs nothing extra)."""
    exps, tops = _range_tops(lo, hi, 2)                 # x * 2^-top in [1/4, 1)
    if not multiplier > 0:
        raise ValueError(f"inv_sqrt's multiplier must be positive, got {multiplier}")
    # the last iterate (at 2f + 1 bits, below 2^(2f + 2)) times the multiplier at e more bits
    f, final = ctx.frac_bits, _final_shifts(x.numel(), tops, ctx.frac_bits, 1, 2, multiplier)
    at_the_end = final is not None
    onehot, x_onehot, scaled = _exponent_onehot(ctx, x, [2.0 ** j for j in exps], bits, final[0] if at_the_end else None)
    pairs = [p for y in range(1, 3 * _RSQRT_ITERATIONS, 3) for p in ((y, y), (0, y), (y + 1, y + 2))]
    shifts = [f, f, f + 1] * _RSQRT_ITERATIONS
    newton = _Newton(ctx, _reduced(ctx, x_onehot, tops), _RSQRT_GUESS, shifts[:len(shifts) - at_the_end], pairs)
    for y in range(1, 3 * _RSQRT_ITERATIONS, 3):       # y <- (3y - (m y) y^2) / 2, in two rounds
        y_squared, m_y = newton.truncate(newton.product(y, y), newton.product(0, y))
        last = newton.lifted(y, 3) - newton.product(y_squared, m_y)
        if y + 3 < 3 * _RSQRT_ITERATIONS or not at_the_end:
            newton.truncate(last)
    if at_the_end:                              # multiplier y 2^-top/2, truncated by f + 1 + e + top/2
        return scaled.truncate(last * round(multiplier * 2.0 ** final[1]))
    root_scale = _scale_sum(ctx, onehot, [multiplier * 2.0 ** (-t / 2) for t in tops])
    return fixed.mul(ctx, newton.outputs[-1], root_scale)


def count_reciprocal(ctx, counts: torch.Tensor, most: int) -> torch.Tensor:
    """1/k at f fractional bits for shares of integers k in [1, most] (scale 1), exactly the
    encoding of 1/k: telescoping, 1/k = 1/most - sum_{j=2..most} [k < j] (1/j - 1/(j-1)), the
    bits [k < j] from one batched comparison of k - j over bit_length(most) bits. k = 0 gives
    1. For small counts (tokens per sentence) it replaces reciprocal's range reduction and
    Newton iterations (17 rounds) by one comparison (3 rounds for most = 64). Reveals nothing.
    Cost: count_reciprocal_cost()."""
    if most < 2:
        return ctx.public(1.0, counts.shape)
    encoded = ctx.fp.encode(torch.tensor([1.0 / j for j in range(1, most + 1)], dtype=torch.float64))
    steps = (encoded[1:] - encoded[:-1]).to(counts.device).reshape((-1,) + (1,) * counts.ndim)
    below = sign_bit(ctx, torch.stack([counts + ctx.public(-j, counts.shape, frac_bits=0)
                                       for j in range(2, most + 1)]), most.bit_length())   # [k < j]
    return ctx.public(1.0 / most, counts.shape) - (below * steps).sum(0)


def count_reciprocal_cost(n: int, numel: int, most: int) -> Cost:
    return sign_cost(n, (most - 1) * numel, most.bit_length()) if most >= 2 else Cost(0, 0)


_RSQRT_ITERATIONS = 2
_RSQRT_GUESS = _relative_fit(lambda t: 1 / np.sqrt(t), 0.25, 1.0)
_LOG_DEGREE = 8
_LOG_COEFFS = np.polynomial.polynomial.polyfit(np.linspace(0.5, 1.0, 2001) - 0.75,
                                               np.log(np.linspace(0.5, 1.0, 2001)), _LOG_DEGREE)


def log(ctx, x: torch.Tensor, lo: float = 1e-4, hi: float = 1e4, bits: int = 40) -> torch.Tensor:
    """Natural logarithm for x in [lo, hi]; absolute error ~1e-5 + 2^-(f+1) / x (encoding of x)."""
    exps, tops = _range_tops(lo, hi, 1)
    onehot, x_onehot, _ = _exponent_onehot(ctx, x, [2.0 ** j for j in exps], bits)
    offset = _scale_sum(ctx, onehot, [t * math.log(2.0) for t in tops])
    raw, shift = _reduced(ctx, x_onehot, tops)                       # m at f + shift bits
    m = raw + fixed.ring_constant(ctx, -0.75, ctx.frac_bits + shift)
    return fixed.polynomial(ctx, m, shift, list(_LOG_COEFFS)) + offset


def _thresholds(lo: float, hi: float, step: int) -> int:
    return len(_range_exponents(lo, hi, step))


def _reduced_shift(tops: list, frac_bits: int) -> int:
    """The shift _reduced returns: f + max(0, max(tops) - f)."""
    return frac_bits + max(0, max(tops) - frac_bits)


def _newton_cost(n: int, numel: int, thresholds: int, bits: int, tops: list, rounds: list, final,
                 frac_bits: int) -> Cost:
    """The range reduction's comparison, truncations of m and y0, `rounds` (the shifts of the
    values truncated per round), the final product with the scale, or with `final`
    (_final_shifts) the ThresholdScale's truncation in place of the last round and that product."""
    total = truncate_cost(n, numel, _reduced_shift(tops, frac_bits)) + truncate_cost(n, numel, frac_bits + _GUESS_BITS)
    for shifts in rounds[:-1]:
        total = total + truncations_cost(n, [(numel, m) for m in shifts])
    if final is not None:
        return threshold_scale_cost(n, numel, thresholds, final[0], bits) + total
    return (sign_cost(n, thresholds * numel, bits, factor=numel) + total
            + truncations_cost(n, [(numel, m) for m in rounds[-1]]) + fixed.mul_cost(n, numel, numel, frac_bits=frac_bits))


def reciprocal_cost(n: int, numel: int, lo: float = 1e-2, hi: float = 1e4, bits: int = 40,
                    frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    step, iterations, _ = _reciprocal_plan(numel)
    exps, tops = _range_tops(lo, hi, step)
    final = _final_shifts(numel, tops, frac_bits)
    return _newton_cost(n, numel, len(exps), bits, tops, [[frac_bits], [frac_bits]] * iterations, final, frac_bits)


def inv_sqrt_cost(n: int, numel: int, lo: float = 1e-4, hi: float = 1e4, bits: int = 40, multiplier: float = 1.0,
                  frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    exps, tops = _range_tops(lo, hi, 2)
    final = _final_shifts(numel, tops, frac_bits, 1, 2, multiplier)
    f = frac_bits
    return _newton_cost(n, numel, len(exps), bits, tops, [[f, f], [f + 1]] * _RSQRT_ITERATIONS, final, f)


def log_cost(n: int, numel: int, lo: float = 1e-4, hi: float = 1e4, bits: int = 40,
             frac_bits: int = DEFAULT_FRACTIONAL_BITS) -> Cost:
    _, tops = _range_tops(lo, hi, 1)
    return (sign_cost(n, _thresholds(lo, hi, 1) * numel, bits, factor=numel)
            + fixed.polynomial_cost(n, numel, _LOG_DEGREE, _reduced_shift(tops, frac_bits), frac_bits))
