"""Elementwise ring ops against Python-int arithmetic mod 2^64, bit-exact."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpcft import kernels as K

from .refs import MOD, as_ints, signed, to_int64

EDGES = [0, 1, -1, 2**62, -2**62, 2**63 - 1, -2**63, 2**32, -2**32 - 1]
int64s = st.one_of(st.sampled_from(EDGES), st.integers(-2**63, 2**63 - 1))
arrays = hnp.arrays(np.int64, hnp.array_shapes(max_dims=3, max_side=5), elements=int64s)


def both_kinds(fn):
    """Run fn on numpy arrays and on torch tensors; the two results must agree."""
    def run(*xs):
        out_np = fn(*xs)
        out_t = fn(*(torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in xs))
        assert isinstance(out_np, np.ndarray) and isinstance(out_t, torch.Tensor)
        np.testing.assert_array_equal(out_np, out_t.numpy())
        return out_np
    return run


@given(st.data())
def test_binary_ops_wrap_like_python_ints(data):
    a = data.draw(arrays)
    b = data.draw(hnp.arrays(np.int64, a.shape, elements=int64s))
    for op, ref in [(K.add, lambda x, y: x + y), (K.sub, lambda x, y: x - y), (K.mul, lambda x, y: x * y)]:
        expect = to_int64(ref(as_ints(a), as_ints(b)))
        np.testing.assert_array_equal(both_kinds(op)(a, b), expect)


@given(arrays, st.integers(-2**70, 2**70))
def test_public_python_int_operand_is_reduced_into_the_ring(a, c):
    np.testing.assert_array_equal(both_kinds(K.mul)(a, c), to_int64(as_ints(a) * c))
    np.testing.assert_array_equal(both_kinds(K.add)(a, c), to_int64(as_ints(a) + c))


@given(arrays)
def test_neg(a):
    np.testing.assert_array_equal(both_kinds(K.neg)(a), to_int64(-as_ints(a)))


@given(arrays, st.integers(0, 63))
def test_shifts(a, s):
    ints = as_ints(a)
    np.testing.assert_array_equal(both_kinds(lambda x: K.lshift(x, s))(a), to_int64(ints * 2**s))
    np.testing.assert_array_equal(both_kinds(lambda x: K.rshift_arith(x, s))(a), to_int64(ints // 2**s))
    unsigned = ints % MOD
    np.testing.assert_array_equal(both_kinds(lambda x: K.rshift_logical(x, s))(a),
                                  to_int64(unsigned // 2**s))
    np.testing.assert_array_equal(both_kinds(lambda x: K.low_bits(x, s))(a), to_int64(unsigned % 2**s))


@given(arrays, st.integers(0, 63))
def test_bit_extraction(a, i):
    expect = to_int64((as_ints(a) % MOD) // 2**i % 2)
    np.testing.assert_array_equal(both_kinds(lambda x: K.bit(x, i))(a), expect)
    np.testing.assert_array_equal(both_kinds(K.msb)(a), (a < 0).astype(np.int64))


@given(st.integers())
def test_to_ring(v):
    assert K.to_ring(v) == signed(v)


def test_bad_inputs_are_rejected_clearly():
    with pytest.raises(TypeError, match="int64"):
        K.add(np.zeros(3, np.int32), np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="int64"):
        K.mul(torch.zeros(3), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="mix"):
        K.add(np.zeros(3, np.int64), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="numpy int64 array or torch int64"):
        K.neg([1, 2, 3])
    with pytest.raises(ValueError, match="shift"):
        K.lshift(np.zeros(3, np.int64), 64)
    with pytest.raises(ValueError, match="shift"):
        K.rshift_arith(torch.zeros(3, dtype=torch.int64), -1)


@settings(deadline=None)     # the first call compiles the Numba kernel
@given(arrays, st.integers(1, 8))
def test_low_bytes_and_their_join_match_python_ints(a, width):
    from mpcft.kernels.ring import join_low_bytes, low_bytes
    x = torch.from_numpy(a)
    packed = low_bytes(x, width)
    values = as_ints(a).reshape(-1).tolist()
    want = [(v % MOD) >> (8 * b) & 0xFF for v in values for b in range(width)]
    assert packed.dtype == torch.uint8 and packed.tolist() == want
    joined = join_low_bytes(packed, width)
    assert [v % MOD for v in joined.tolist()] == [v % (1 << (8 * width)) for v in values]
    into = torch.full((len(values) + 2,), 7, dtype=torch.int64)
    assert join_low_bytes(packed, width, out=into[1:-1]).data_ptr() == into[1:-1].data_ptr()
    assert into[0] == 7 and into[-1] == 7 and into[1:-1].tolist() == joined.tolist()


@settings(deadline=None)
@given(arrays, arrays, st.integers(1, 8), st.sampled_from([1, -1]))
def test_add_and_sub_low_bytes_combine_the_joined_values_in_the_ring(a, b, width, sign):
    from mpcft.kernels.ring import add_low_bytes, low_bytes, sub_low_bytes
    n = min(a.size, b.size)
    x, y = torch.from_numpy(a.reshape(-1)[:n].copy()), torch.from_numpy(b.reshape(-1)[:n].copy())
    want = [(u + sign * ((v % MOD) % (1 << (8 * width)))) % MOD for u, v in zip(as_ints(x.numpy()).tolist(),
                                                                               as_ints(y.numpy()).tolist())]
    out = (add_low_bytes if sign == 1 else sub_low_bytes)(x.clone(), low_bytes(y, width), width)
    assert [v % MOD for v in out.tolist()] == want


def test_low_bytes_refuse_bad_widths_and_outputs():
    from mpcft.kernels.ring import join_low_bytes, low_bytes
    x = torch.arange(6, dtype=torch.int64)
    for width in (0, 9):
        with pytest.raises(ValueError, match="width"):
            low_bytes(x, width)
        with pytest.raises(ValueError, match="width"):
            join_low_bytes(torch.zeros(6, dtype=torch.uint8), width)
    with pytest.raises(ValueError, match="contiguous int64 tensor of 3"):
        join_low_bytes(low_bytes(x[:3], 2), 2, out=torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="contiguous int64 tensor"):
        join_low_bytes(low_bytes(x[:3], 2), 2, out=x[::2])
