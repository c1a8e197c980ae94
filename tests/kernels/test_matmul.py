"""Ring matrix products against Python-int matrix products mod 2^64, bit-exact."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpcft import kernels as K
from mpcft.kernels import digit_matmul, matmul
from mpcft.kernels.shapes import BroadcastError, broadcast_shapes

from .refs import as_ints, to_int64

int64s = st.one_of(st.sampled_from([0, 1, -1, 2**63 - 1, -2**63]), st.integers(-2**63, 2**63 - 1))
ROUTES = ["auto", "rows", "tiles", "int8"]


HERE = [r for r in ROUTES if r != "int8" or digit_matmul.int8_available(torch.device("cpu"))]


def usable(route):
    """Skip a test of the "int8" route where torch._int_mm is not exact on this CPU."""
    if route == "int8" and not digit_matmul.int8_available(torch.device("cpu")):
        pytest.skip("torch._int_mm is missing or inexact on this CPU: no int8 route")


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Python-int product with matmul broadcasting, reduced mod 2^64."""
    ai, bi = as_ints(a), as_ints(b)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    ai = np.broadcast_to(ai, batch + a.shape[-2:]).reshape(-1, *a.shape[-2:])
    bi = np.broadcast_to(bi, batch + b.shape[-2:]).reshape(-1, *b.shape[-2:])
    out = np.stack([x.dot(y) for x, y in zip(ai, bi)]) if len(ai) else np.empty((0,), object)
    return to_int64(out).reshape(batch + (a.shape[-2], b.shape[-1]))


def uniform(shape, seed):
    return K.PRG(bytes([seed]) * 32).ring_numpy(shape)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.sampled_from(HERE), st.sampled_from([1, 2]))
def test_2d_products_any_values(data, route, threads):
    m, k, n = (data.draw(st.integers(1, 9), label=x) for x in "mkn")
    a = data.draw(hnp.arrays(np.int64, (m, k), elements=int64s))
    b = data.draw(hnp.arrays(np.int64, (k, n), elements=int64s))
    expect = reference(a, b)
    np.testing.assert_array_equal(K.ring_matmul(a, b, route=route, threads=threads), expect)
    out_t = K.ring_matmul(torch.from_numpy(a), torch.from_numpy(b), route=route, threads=threads)
    np.testing.assert_array_equal(out_t.numpy(), expect)


@settings(max_examples=30, deadline=None)
@given(st.data(), st.sampled_from(HERE))
def test_batched_and_broadcast_products(data, route):
    batch_a = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=3), label="batch_a")
    batch_b = data.draw(hnp.broadcastable_shapes(batch_a, min_dims=0, max_dims=2), label="batch_b")
    m, k, n = (data.draw(st.integers(1, 7), label=x) for x in "mkn")
    a = uniform(batch_a + (m, k), 1)
    b = uniform(batch_b + (k, n), 2)
    np.testing.assert_array_equal(K.ring_matmul(a, b, route=route, threads=2), reference(a, b))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("shape", [(3, 4096, 2), (2, 4096, 5), (5, 1000, 3)])
def test_long_inner_dimension(route, shape):
    usable(route)
    m, k, n = shape
    a, b = uniform((m, k), 3), uniform((k, n), 4)
    np.testing.assert_array_equal(K.ring_matmul(a, b, route=route), reference(a, b))


@pytest.mark.parametrize("route", ROUTES)
def test_attention_shapes_against_a_numpy_reference(route):
    """8x12x128x64 @ 8x12x64x128 checked against numpy's own wrapping int64 einsum."""
    usable(route)
    a, b = uniform((8, 12, 128, 64), 5), uniform((8, 12, 64, 128), 6)
    expect = np.einsum("bhmk,bhkn->bhmn", a, b)
    np.testing.assert_array_equal(K.ring_matmul(a, b, route=route, threads=2), expect)
    # and a few entries against Python ints
    ai, bi = as_ints(a[3, 7]), as_ints(b[3, 7])
    np.testing.assert_array_equal(expect[3, 7, :4, :4], to_int64(ai[:4].dot(bi[:, :4])))


@pytest.mark.parametrize("route", ROUTES)
def test_large_2d_product_odd_shape(route):
    usable(route)
    a, b = uniform((129, 770), 7), uniform((770, 257), 8)
    np.testing.assert_array_equal(K.ring_matmul(a, b, route=route, threads=2),
                                  np.einsum("mk,kn->mn", a, b))


def test_auto_route_takes_int8_for_large_products_where_the_cpu_has_amx(monkeypatch):
    usable("int8")
    used = []
    monkeypatch.setattr(matmul, "matmul_int8_cpu", lambda a, b, out: used.append(a.shape) or
                        digit_matmul.matmul_int8_cpu(a, b, out=out))
    monkeypatch.setattr(matmul, "amx_int8", lambda: True)
    a, b = uniform((2, 256, 384), 12), uniform((384, 256), 13)
    np.testing.assert_array_equal(K.ring_matmul(a, b), reference(a, b))
    assert used == [(512, 384)]             # a's batch folded into rows, one product
    K.ring_matmul(uniform((256, 128), 14), uniform((128, 256), 15))     # K = 128: "tiles"
    K.ring_matmul(uniform((64, 768), 16), uniform((768, 768), 17))      # 64 rows: "tiles"
    K.ring_matmul(uniform((256, 768), 16), uniform((768, 64), 17))      # 64 columns: "rows"
    assert used == [(512, 384)]
    monkeypatch.setattr(matmul, "amx_int8", lambda: False)
    K.ring_matmul(a, b)
    assert used == [(512, 384)]


def test_int8_route_refused_where_int8_gemms_are_inexact(monkeypatch):
    monkeypatch.setattr(matmul, "int8_available", lambda device: False)
    with pytest.raises(ValueError, match="int8.*exact"):
        K.ring_matmul(uniform((3, 4), 18), uniform((4, 2), 19), route="int8")


def test_vector_operands_follow_torch_rules():
    a, b, v = uniform((3, 4), 9), uniform((4, 5), 10), uniform((4,), 11)
    np.testing.assert_array_equal(K.ring_matmul(a, v), reference(a, v[:, None])[:, 0])
    np.testing.assert_array_equal(K.ring_matmul(v, b), reference(v[None], b)[0])


def test_bad_operands_are_rejected_clearly():
    a = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match="inner 3 != 2"):
        K.ring_matmul(a, np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="broadcast"):
        K.ring_matmul(np.zeros((2, 2, 3), np.int64), np.zeros((3, 3, 2), np.int64))
    with pytest.raises(TypeError, match="int64"):
        K.ring_matmul(a.astype(np.float64), np.zeros((3, 2), np.int64))
    with pytest.raises(TypeError, match="two numpy"):
        K.ring_matmul(a, torch.zeros((3, 2), dtype=torch.int64))
    with pytest.raises(ValueError, match="route"):
        K.ring_matmul(a, np.zeros((3, 2), np.int64), route="magic")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=4), st.lists(st.integers(0, 3), max_size=4))
def test_broadcast_shapes_follows_torch(a, b):
    try:
        expected = tuple(torch.broadcast_shapes(a, b))
    except RuntimeError:
        with pytest.raises(BroadcastError, match="do not broadcast"):
            broadcast_shapes(a, b)
    else:
        assert broadcast_shapes(a, b) == expected
