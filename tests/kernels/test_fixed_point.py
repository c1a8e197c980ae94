"""Fixed-point encoding: round trip within 2^-(f+1), clear errors instead of silent wrap."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mpcft.kernels import DEFAULT_FRACTIONAL_BITS, FixedPoint


@pytest.mark.parametrize("frac_bits", [0, 12, 16, DEFAULT_FRACTIONAL_BITS, 24, 32])
def test_round_trip_error_is_at_most_half_an_ulp(frac_bits):
    fp = FixedPoint(frac_bits)
    x = np.concatenate([np.linspace(-1000, 1000, 20001), [0.0, fp.resolution / 2, -fp.max_abs * 0.99]])
    for encoded in (fp.encode(x), fp.encode(torch.from_numpy(x))):
        err = np.abs(np.asarray(fp.decode(encoded)) - x)
        assert err.max() <= 2.0 ** -(frac_bits + 1) * (1 + 1e-9) + abs(x).max() * 2**-52


@given(st.floats(-2.0**40, 2.0**40, allow_nan=False))
def test_encode_rounds_to_nearest(x):
    fp = FixedPoint(20)
    encoded = int(fp.encode(torch.tensor([x], dtype=torch.float64))[0])
    assert abs(encoded - x * 2**20) <= 0.5
    assert int(fp.encode(np.array([x]))[0]) == encoded


def test_negative_values_are_twos_complement():
    fp = FixedPoint(20)
    assert int(fp.encode([-1.0])[0]) == -(1 << 20)
    assert fp.encode(np.array([-0.5])).dtype == np.int64


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_are_rejected(bad):
    with pytest.raises(ValueError, match="NaN or infinite"):
        FixedPoint().encode([1.0, bad])
    with pytest.raises(ValueError, match="NaN or infinite"):
        FixedPoint().encode(np.array([bad]))


def test_out_of_range_is_rejected_not_wrapped():
    fp = FixedPoint(20)
    assert fp.max_abs == 2.0**42
    fp.encode([2.0**42 * 0.999])
    with pytest.raises(ValueError, match="out of the fixed-point range"):
        fp.encode([2.0**42])
    with pytest.raises(ValueError, match="out of the fixed-point range"):
        fp.encode(np.array([-1e300]))


def test_bad_types_and_parameters():
    with pytest.raises(ValueError, match="frac_bits"):
        FixedPoint(41)
    with pytest.raises(TypeError):
        FixedPoint().decode(np.zeros(3))
    with pytest.raises(TypeError):
        FixedPoint().encode(torch.zeros(2, dtype=torch.complex64))


def test_integer_and_float32_inputs_encode_exactly():
    fp = FixedPoint(20)
    assert fp.encode(torch.tensor([3], dtype=torch.int32)).tolist() == [3 << 20]
    assert fp.encode(np.array([0.25], np.float32)).tolist() == [1 << 18]
