"""Fixed-point encoding of real numbers into Z_2^64.

A real x is encoded as round(x * 2^f) mod 2^64 (f fractional bits, round to nearest, ties
to even) and decoded as the centred int64 value divided by 2^f; the round trip is within
2^-(f+1) for every representable x.

Default f = 20. CrypTen uses 16 bits: a resolution of 1.5e-5, at which the 1e-3..1e-4
gradients of attention weights, multiplied by learning rates, lose most of their digits (its
query/key weight gradients come out with errors above 100%). f = 20 gives a resolution of
9.5e-7 while a product of two encoded values, which carries 2f = 40 fractional bits before
truncation, may still reach |x * y| < 2^(62 - 2f) = 2^22 (about 4.2e6), enough for sums of
hundreds of products of activations of magnitude ~100. Encoded values themselves must stay
below 2^62 in magnitude (the range of the project's truncation): |x| < 2^(62 - f).
"""
import math

import numpy as np
import torch

DEFAULT_FRACTIONAL_BITS = 20
_VALUE_BITS = 62  # encoded magnitudes stay below 2^62: the exact range of truncation


class FixedPoint:
    """Encoder/decoder for reals with `frac_bits` fractional bits in Z_2^64."""

    def __init__(self, frac_bits: int = DEFAULT_FRACTIONAL_BITS):
        if not 0 <= frac_bits <= 40:
            raise ValueError(f"frac_bits must be in [0, 40], got {frac_bits}")
        self.frac_bits = frac_bits
        self.scale = 1 << frac_bits
        self.max_abs = float(2 ** (_VALUE_BITS - frac_bits))

    def __repr__(self):
        return f"FixedPoint(frac_bits={self.frac_bits})"

    def encode(self, x, device=None):
        """round(x * 2^f) as int64; numpy in -> numpy out, anything else -> torch tensor.

        Raises ValueError on NaN, infinity or |x| >= 2^(62-f) instead of wrapping silently.
        """
        if isinstance(x, np.ndarray):
            xf = x.astype(np.float64, copy=False)
            self._check_range(np.isfinite(xf).all(), np.abs(xf).max(initial=0.0))
            return np.rint(xf * self.scale).astype(np.int64)
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x, dtype=torch.float64)
        if x.dtype.is_complex or not (x.dtype.is_floating_point or x.dtype in _TORCH_INTS):
            raise TypeError(f"cannot encode a tensor of dtype {x.dtype}")
        xf = x.to(device=device, dtype=torch.float64)
        finite = bool(torch.isfinite(xf).all()) if xf.numel() else True
        self._check_range(finite, float(xf.abs().max()) if xf.numel() else 0.0)
        return torch.round(xf * self.scale).to(torch.int64)

    def decode(self, x):
        """The centred value of int64 ring elements divided by 2^f, as float64."""
        if isinstance(x, np.ndarray):
            if x.dtype != np.int64:
                raise TypeError(f"decode expects int64, got {x.dtype}")
            return x.astype(np.float64) / self.scale
        if not isinstance(x, torch.Tensor) or x.dtype != torch.int64:
            raise TypeError("decode expects a numpy int64 array or torch int64 tensor")
        return x.to(torch.float64) / self.scale

    def _check_range(self, finite: bool, largest: float) -> None:
        if not finite:
            raise ValueError("cannot encode NaN or infinite values in fixed point")
        if largest >= self.max_abs:
            raise ValueError(
                f"value {largest:.6g} is out of the fixed-point range: |x| must be below "
                f"2^{_VALUE_BITS - self.frac_bits} = {self.max_abs:.6g} with {self.frac_bits} fractional bits")

    @property
    def resolution(self) -> float:
        """The smallest positive representable value, 2^-f."""
        return math.ldexp(1.0, -self.frac_bits)


_TORCH_INTS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)
