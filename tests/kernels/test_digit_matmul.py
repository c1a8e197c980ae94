"""Exact matmuls from digit GEMMs: the CUDA routes bit-exact on CPU tensors (CUDA checks skip
without a GPU) and the CPU's int8 route on numpy arrays."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpcft import kernels as K
from mpcft.kernels import digit_matmul as C
from mpcft.kernels.fused import trunc_reconstruct, truncated_product

from .refs import MOD, as_ints, signed, to_int64

EXTREMES = [0, 1, -1, 2**63 - 1, -2**63]
int64s = st.one_of(st.sampled_from(EXTREMES), st.integers(-2**63, 2**63 - 1))
ROUTES = [C.matmul_int8_digits, C.matmul_f64_limbs]
# the value whose balanced digits are all -2^(w-1): products of it reach the accumulation bounds
WORST = {8: signed(-0x8080808080808080), 16: signed(-0x8000800080008000)}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def uniform(shape, seed, extremes=False):
    x = K.PRG(bytes([seed]) * 32).ring(shape)
    if extremes and x.numel():
        flat = x.view(-1)
        flat[:len(EXTREMES)] = torch.tensor(EXTREMES[:flat.numel()])
    return x


def python_matmul(a, b):
    """2-D a @ b mod 2^64 with Python ints."""
    return torch.from_numpy(to_int64(as_ints(a.numpy()).dot(as_ints(b.numpy()))))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([8, 16]), hnp.arrays(np.int64, hnp.array_shapes(max_dims=3, max_side=5), elements=int64s))
def test_balanced_digits_round_trip(width, x):
    digits = C.balanced_digits(torch.from_numpy(x), width)
    assert digits.dtype == C._DIGIT_DTYPES[width] and digits.shape == x.shape + (64 // width,)
    ints = as_ints(digits.numpy())
    rebuilt = sum(ints[..., i] << (width * i) for i in range(64 // width))
    np.testing.assert_array_equal(to_int64(np.asarray(rebuilt % MOD, dtype=object)), x)


@pytest.mark.parametrize("width", [8, 16])
def test_worst_case_value_has_all_digits_at_the_bottom(width):
    digits = C.balanced_digits(torch.tensor([WORST[width]]), width)
    assert (digits == -(1 << (width - 1))).all()


@settings(max_examples=40, deadline=None)
@given(st.data(), st.sampled_from(ROUTES))
def test_2d_products_any_values(data, route):
    m, k, n = (data.draw(st.integers(1, 9), label=x) for x in "mkn")
    a = torch.from_numpy(data.draw(hnp.arrays(np.int64, (m, k), elements=int64s)))
    b = torch.from_numpy(data.draw(hnp.arrays(np.int64, (k, n), elements=int64s)))
    assert torch.equal(route(a, b), python_matmul(a, b))


@settings(max_examples=25, deadline=None)
@given(st.data(), st.sampled_from(ROUTES))
def test_batched_and_broadcast_products(data, route):
    batch_a = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=3), label="batch_a")
    batch_b = data.draw(hnp.broadcastable_shapes(batch_a, min_dims=0, max_dims=2), label="batch_b")
    m, k, n = (data.draw(st.integers(1, 7), label=x) for x in "mkn")
    a, b = uniform(batch_a + (m, k), 1, True), uniform(batch_b + (k, n), 2, True)
    assert torch.equal(route(a, b), K.ring_matmul(a, b))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("shape", [(3, 2049, 2), (2, 16383, 5), (5, 16385, 3), (40, 1000, 33)])
def test_inner_dimension_near_and_across_the_bounds(route, shape):
    m, k, n = shape
    a, b = uniform((m, k), 3, True), uniform((k, n), 4, True)
    assert torch.equal(route(a, b), K.ring_matmul(a, b))


@pytest.mark.parametrize("k", [16383, 16384, 32768])
def test_int8_accumulation_bound_with_worst_case_digits(k):
    """Every digit product is (-128)^2 = 2^14: one int32 GEMM over 4k terms would overflow at
    k = 32768 (shift 3), so the route must split the stacked dimension exactly there."""
    a = torch.full((17, k), WORST[8], dtype=torch.int64)
    b = torch.full((k, 9), WORST[8], dtype=torch.int64)
    want = signed(WORST[8] ** 2 * k)
    assert (C.matmul_int8_digits(a, b) == want).all()


def test_f64_worst_case_limbs_beyond_one_gemm():
    k = (1 << 21) + 8  # shift 3 stacks 4k > 2^23 terms of 2^30: two float64 GEMMs
    a = torch.full((1, k), WORST[16], dtype=torch.int64)
    a[0, ::3] = 1 + (1 << 16) + (1 << 32) + (1 << 48)
    ints = a[0, :3].tolist()
    want = signed(sum(x * x for x in ints[:3]) * (k // 3) + sum(x * x for x in ints[:k % 3]))
    assert C.matmul_f64_limbs(a, a.t()).item() == want


@pytest.mark.parametrize("route, name, terms", [(C.matmul_int8_digits, "_INT8_TERMS", 100),
                                                (C.matmul_f64_limbs, "_F64_TERMS", 37)])
def test_pieces_of_the_stacked_dimension(monkeypatch, route, name, terms):
    """With a tiny per-GEMM bound, every shift is split into several pieces."""
    monkeypatch.setattr(C, name, terms)
    a, b = uniform((5, 70), 5, True), uniform((70, 6), 6, True)
    assert torch.equal(route(a, b), python_matmul(a, b))


@pytest.mark.parametrize("route", ROUTES + [C.ring_matmul_cuda])
def test_attention_shapes(route):
    a, b = uniform((8, 12, 128, 64), 7), uniform((8, 12, 64, 128), 8)
    assert torch.equal(route(a, b), K.ring_matmul(a, b))


@pytest.mark.parametrize("route", ROUTES + [C.ring_matmul_cuda])
def test_vector_and_empty_operands_follow_torch_rules(route):
    a, b, v = uniform((3, 4), 9), uniform((4, 5), 10), uniform((4,), 11)
    assert torch.equal(route(a, v), K.ring_matmul(a, v))
    assert torch.equal(route(v, b), K.ring_matmul(v, b))
    assert route(v, v).shape == () and route(v, v).item() == K.ring_matmul(v, v).item()
    empty = route(torch.zeros((2, 0, 3, 0), dtype=torch.int64), torch.zeros((0, 4), dtype=torch.int64))
    assert empty.shape == (2, 0, 3, 4)
    assert (route(torch.zeros((3, 0), dtype=torch.int64), torch.zeros((0, 4), dtype=torch.int64)) == 0).all()


def test_auto_route_and_cpu_int8_probe():
    assert C.int8_available(torch.device("cpu"))  # torch._int_mm has a CPU kernel since torch 2.3
    a, b = uniform((33, 65), 12), uniform((65, 17), 13)
    for route in C.ROUTES:
        assert torch.equal(C.ring_matmul_cuda(a, b, route=route), K.ring_matmul(a, b))


def test_bad_operands_are_rejected_clearly():
    a = torch.zeros((2, 3), dtype=torch.int64)
    with pytest.raises(ValueError, match="inner 3 != 2"):
        C.ring_matmul_cuda(a, torch.zeros((2, 2), dtype=torch.int64))
    with pytest.raises(ValueError, match="broadcast"):
        C.ring_matmul_cuda(torch.zeros((2, 2, 3), dtype=torch.int64), torch.zeros((3, 3, 2), dtype=torch.int64))
    with pytest.raises(TypeError, match="int64"):
        C.matmul_f64_limbs(a.double(), torch.zeros((3, 2), dtype=torch.int64))
    with pytest.raises(TypeError, match="torch"):
        C.matmul_int8_digits(a.numpy(), torch.zeros((3, 2), dtype=torch.int64))
    with pytest.raises(ValueError, match="at least one dimension"):
        C.matmul_int8_digits(torch.tensor(1), a)
    with pytest.raises(ValueError, match="route"):
        C.ring_matmul_cuda(a, torch.zeros((3, 2), dtype=torch.int64), route="rows")


def test_ring_matmul_dispatch_rejects_mixed_and_unknown_devices():
    a = torch.zeros((2, 3), dtype=torch.int64)
    with pytest.raises(ValueError, match="different devices"):
        K.ring_matmul(a, torch.zeros((3, 2), dtype=torch.int64, device="meta"))
    with pytest.raises(NotImplementedError, match="meta"):
        K.ring_matmul(a.to("meta"), torch.zeros((3, 2), dtype=torch.int64, device="meta"))


# ---- the CPU's int8 route (matmul_int8_cpu) ------------------------------------------------

cpu_int8 = pytest.mark.skipif(not C.int8_available(torch.device("cpu")),
                              reason="torch._int_mm is missing or inexact on this CPU")


@cpu_int8
@settings(max_examples=40, deadline=None)
@given(st.data())
def test_cpu_int8_any_values(data):
    m, k, n = (data.draw(st.integers(1, 9), label=x) for x in "mkn")
    a = data.draw(hnp.arrays(np.int64, (m, k), elements=int64s))
    b = data.draw(hnp.arrays(np.int64, (k, n), elements=int64s))
    want = python_matmul(torch.from_numpy(a), torch.from_numpy(b))
    assert torch.equal(torch.from_numpy(C.matmul_int8_cpu(a, b)), want)


@cpu_int8
def test_cpu_int8_chunks_of_k_accumulate(monkeypatch):
    """With chunks of 5 along K, 23 terms take five full products summed mod 2^64; K = 0 gives 0."""
    monkeypatch.setattr(C, "_CPU_CHUNK", 5)
    a, b = uniform((4, 23), 24, True), uniform((23, 3), 25, True)
    out = np.full((4, 3), 7, np.int64)
    assert C.matmul_int8_cpu(a.numpy(), b.numpy(), out=out) is out
    assert torch.equal(torch.from_numpy(out), python_matmul(a, b))
    assert (C.matmul_int8_cpu(np.zeros((2, 0), np.int64), np.zeros((0, 3), np.int64)) == 0).all()


@cpu_int8
@pytest.mark.parametrize("k", [16383, 16384])
def test_cpu_int8_worst_digits_at_the_int32_bound(k):
    """All digits -128: 8 * 16383 products of 2^14 reach 2^31 - 2^17 in one GEMM; 16384 terms
    take a second chunk."""
    a = torch.full((2, k), WORST[8], dtype=torch.int64)
    b = torch.full((k, 3), WORST[8], dtype=torch.int64)
    b[0, 0] = 1
    assert torch.equal(torch.from_numpy(C.matmul_int8_cpu(a.numpy(), b.numpy())), python_matmul(a, b))


def test_int8_probe_rejects_a_saturating_gemm(monkeypatch):
    """An int8 GEMM that adds digit products in pairs into saturating int16 (vpmaddubsw, on
    CPUs without VNNI or AMX) gets 127 * 127 * 2 wrong: the probe says no."""
    def saturating(x, y):
        products = x.to(torch.int32)[:, :, None] * y.to(torch.int32)[None]
        pairs = products.reshape(x.shape[0], -1, 2, y.shape[1]).sum(2).clamp(-2**15, 2**15 - 1)
        return pairs.sum(1)
    monkeypatch.setattr(torch, "_int_mm", saturating)
    assert not C.int8_available.__wrapped__(torch.device("cpu"))
    monkeypatch.setattr(torch, "_int_mm", lambda x, y: (x.to(torch.int32)[:, :, None] * y.to(torch.int32)[None]).sum(1))
    assert C.int8_available.__wrapped__(torch.device("cpu"))


# ---- CUDA: every ring operation bit-exact against the CPU backend -------------------------

CUDA_SHAPES = [((3, 5), (5, 7)), ((64, 64), (64, 64)), ((100, 300), (300, 50)),
               ((33, 16385), (16385, 17)), ((2, 3, 40, 24), (3, 24, 8)), ((4, 20, 30), (30,)),
               ((8, 12, 128, 64), (8, 12, 64, 128))]


@cuda
@pytest.mark.parametrize("route", ["auto", "int8", "f64"])
@pytest.mark.parametrize("shapes", CUDA_SHAPES, ids=lambda s: f"{s[0]}@{s[1]}")
def test_digit_matmul_matches_cpu(route, shapes):
    if route == "int8" and not C.int8_available(torch.device("cuda")):
        pytest.skip("torch._int_mm does not run on this CUDA device")
    a, b = uniform(shapes[0], 20, True), uniform(shapes[1], 21, True)
    out = K.ring_matmul(a.cuda(), b.cuda(), route=route)
    assert out.device.type == "cuda"
    assert torch.equal(out.cpu(), K.ring_matmul(a, b))


@cuda
def test_digit_matmul_rejects_mixed_devices():
    with pytest.raises(ValueError, match="different devices"):
        K.ring_matmul(uniform((3, 4), 22).cuda(), uniform((4, 2), 23))


@cuda
def test_cuda_elementwise_ops_wrap_like_the_cpu():
    x, y = uniform((4099,), 24, True), uniform((4099,), 25, True)
    y[:len(EXTREMES)] = torch.tensor(EXTREMES[::-1])
    xc, yc = x.cuda(), y.cuda()
    for op in (K.add, K.sub, K.mul):
        assert torch.equal(op(xc, yc).cpu(), op(x, y))
        assert torch.equal(op(xc, 2**63 + 5).cpu(), op(x, 2**63 + 5))
    assert torch.equal(K.neg(xc).cpu(), K.neg(x))
    assert torch.equal(K.msb(xc).cpu(), K.msb(x))
    for s in range(64):
        for op in (K.lshift, K.rshift_arith, K.rshift_logical, K.bit, K.low_bits):
            assert torch.equal(op(xc, s).cpu(), op(x, s)), (op.__name__, s)


@cuda
@pytest.mark.parametrize("bits", [1, 13, 20, 40, 61])
@pytest.mark.parametrize("first", [False, True])
def test_cuda_trunc_reconstruct_matches_the_cpu_kernel(bits, first):
    c, r_top, r_mid = uniform((3, 1000), 26, True), uniform((3, 1000), 27), uniform((3, 1000), 28)
    out = trunc_reconstruct(c.cuda(), r_top.cuda(), r_mid.cuda(), bits, first)
    assert out.device.type == "cuda"
    assert torch.equal(out.cpu(), trunc_reconstruct(c, r_top, r_mid, bits, first))


@cuda
@pytest.mark.parametrize("bits_i, bits_j", [(20, 20), (40, 30), (1, 61)])
@pytest.mark.parametrize("first", [False, True])
def test_cuda_truncated_product_matches_the_cpu_kernel(bits_i, bits_j, first):
    tensors = [uniform((3, 1000), 30 + k, True) for k in range(8)]
    out = truncated_product(*(t.cuda() for t in tensors[:4]), [t.cuda() for t in tensors[4:]], bits_i, bits_j, first)
    assert out.device.type == "cuda"
    assert torch.equal(out.cpu(), truncated_product(*tensors[:4], tensors[4:], bits_i, bits_j, first))
