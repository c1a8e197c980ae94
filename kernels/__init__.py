"""Z_2^64 ring arithmetic, fixed-point encoding and secure randomness (no networking).

Values are int64 arrays/tensors read modulo 2^64; every function accepts numpy int64 arrays
and torch int64 tensors alike, so the protocols above are written once.
"""
from .fixed_point import DEFAULT_FRACTIONAL_BITS, FixedPoint
from .matmul import ring_matmul
from .prg import PRG, derive_seed, fresh_seed
from .ring import (RING_BITS, add, bit, check_ring, low_bits, lshift, msb, mul, neg, rshift_arith,
                   rshift_logical, sub, to_ring)

__all__ = [
    "DEFAULT_FRACTIONAL_BITS", "FixedPoint", "PRG", "RING_BITS", "add", "bit", "check_ring",
    "derive_seed", "fresh_seed", "low_bits", "lshift", "msb", "mul", "neg", "ring_matmul",
    "rshift_arith", "rshift_logical", "sub", "to_ring",
]
