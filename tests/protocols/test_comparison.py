"""Comparison, ReLU and max against float64 torch: exact (no approximation error) results."""
import pytest
import torch

from mpcft.kernels import FixedPoint
from mpcft.protocols import comparison
from mpcft.protocols.binary import and_products_cost
from mpcft.protocols.comparison import (TREE_GROUPS, Select, clamp_cost, digit_bits_for, max_along_cost,
                                        select_times_cost, sign_cost, sign_gate_cost, threshold_scale_cost,
                                        tree_group_for)
from mpcft.protocols.correlations import CorrelationDealer, correction_bytes
from mpcft.runtime import run_threads, spawn

from ..devices import to_cpu
from . import programs

FP = FixedPoint()


def astuple(cost):
    return (cost.rounds, cost.bytes_sent)


def inputs(shape, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale
    x.view(-1)[:4] = torch.tensor([0.0, -FP.resolution, FP.resolution, -0.0])
    return x


def check(results, x, y, bits, n):
    xe, ye = FP.decode(FP.encode(x)), FP.decode(FP.encode(y))   # the encoded values, compared exactly
    for out, costs in results:
        assert torch.equal(out["sign"], (xe < 0).long())
        # SignGate: the comparison's bit times values truncated afterwards, locally
        assert torch.equal(out["gate_bit"], out["sign"])
        for gated, value, shift in zip(out["gated"], (FP.encode(y) << programs.GATES[0], FP.encode(x)), programs.GATES):
            # a truncation's contract: |y - v / 2^m| < 3/2, and the gate's 0 exactly
            assert ((gated << shift) - out["sign"] * value).abs().max() < 3 * 2 ** (shift - 1)
            assert (gated[out["sign"] == 0] == 0).all()
        assert torch.equal(out["relu"], xe.clamp(min=0))
        assert torch.equal(out["maximum"], torch.maximum(xe, ye))
        assert torch.equal(out["max_along"], xe.max(-1, keepdim=True).values)
        assert torch.equal(out["max_dim0"], xe.max(0, keepdim=True).values)
        lo, hi = (FP.decode(FP.encode(torch.tensor(b, dtype=torch.float64))) for b in programs.clamp_bounds(x))
        assert torch.equal(out["clamp"], xe.clamp(lo, hi))
        t = torch.stack([FP.decode(FP.encode(torch.tensor(v, dtype=torch.float64))) for v in programs.threshold_values(x)])
        below = (xe[None] < t.reshape((-1,) + (1,) * x.ndim)).long()
        assert torch.equal(out["below"], below) and torch.equal(out["x_below"], xe * below)
        numel = x.numel()
        assert costs["sign"] == astuple(sign_cost(n, numel, bits))
        assert costs["below"] == astuple(sign_cost(n, len(t) * numel, bits, factor=numel))
        assert costs["relu"] == astuple(sign_cost(n, numel, bits, factor=numel))
        assert costs["clamp"] == astuple(clamp_cost(n, numel, bits))
        gate = sign_gate_cost(n, numel, bits, programs.GATES)
        assert (costs["gate"][0] + costs["gate_truncate"][0], costs["gate"][1] + costs["gate_truncate"][1]) == astuple(gate)
        assert costs["max_along"] == astuple(max_along_cost(n, numel, x.shape[-1], bits))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("bits,scale", [(62, 1e6), (62, 3.0), (31, 1000.0), (5, 2.0**-16)])
def test_comparisons_in_threads(n, bits, scale, device):
    x, y = inputs((7, 45), scale, 1), inputs((7, 45), scale, 2)
    check(to_cpu(run_threads(programs.comparisons, n, x, y, bits, device, dealer_handler=CorrelationDealer)), x, y, bits, n)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("n", [2, 3])
def test_comparisons_in_processes(n):
    x, y = inputs((16, 70), 100.0, 3), inputs((16, 70), 100.0, 4)
    check(spawn(programs.comparisons, n, x, y, 62, dealer_handler=CorrelationDealer), x, y, 62, n)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("digit_bits", [1, 4, 5, 6, 8])
def test_every_digit_width(n, digit_bits):
    check_signs(n, digit_bits, 5)


def check_signs(n, digit_bits, seed, bits=30):
    """sign_bit and select_negative of `bits`-bit inputs against plaintext, and sign_bit's cost."""
    x = inputs((9, 40), 100.0, seed)
    xe = FP.decode(FP.encode(x))
    for s, negative, cost in run_threads(programs.signs_with_digits, n, x, bits, digit_bits,
                                         dealer_handler=CorrelationDealer):
        assert torch.equal(s, (xe < 0).long()) and torch.equal(negative, xe.clamp(max=0))
        assert cost == astuple(sign_cost(n, x.numel(), bits, digit_bits))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3, 5])
def test_coarse_comparisons(n):
    # resolution k: the bit is exact but for x - y in [0, (n-1) 2^k); maxima are inputs, within
    # (n-1) 2^k of the maximum per level
    k, bits = 12, 32
    band = (n - 1) << k
    gen = torch.Generator().manual_seed(7 + n)
    x = torch.randint(-(1 << 30), 1 << 30, (12, 33), generator=gen)
    y = x - torch.randint(-2 * band, 2 * band, x.shape, generator=gen)   # many pairs near the band
    y[0] = torch.randint(-(1 << 30), 1 << 30, (33,), generator=gen)
    d = x - y
    for (s, top, best), cost in run_threads(programs.coarse_maxima, n, FP.decode(x), FP.decode(y), bits, k,
                                            dealer_handler=CorrelationDealer):
        assert torch.equal(s[d < 0], torch.ones_like(s[d < 0])) and not s[d >= band].any()
        assert ((s == 0) | (s == 1)).all()
        assert torch.equal(top, torch.where(s == 1, y, x)) and (top >= torch.maximum(x, y) - band).all()
        assert ((best == x).any(-1, keepdim=True)).all()
        levels = (x.shape[-1] - 1).bit_length()
        assert (best >= x.max(-1, keepdim=True).values - levels * band).all()
        assert cost == astuple(max_along_cost(n, x.numel(), x.shape[-1], bits, k))
        assert max_along_cost(n, x.numel(), x.shape[-1], bits, k).bytes_sent < max_along_cost(
            n, x.numel(), x.shape[-1], bits).bytes_sent


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
def test_select_multiplies_later_values_by_the_bit(n):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(3000, generator=gen, dtype=torch.float64) * 5
    x[:4] = torch.tensor([0.0, -2.0 ** -16, 2.0 ** -16, 1e-3])          # near 0: coarse band
    ys = [torch.randn(3000, generator=gen, dtype=torch.float64) * 100, torch.full((3000,), -7.5, dtype=torch.float64)]
    bit, products, costs = run_threads(programs.select_times, n, x, ys, 10, dealer_handler=CorrelationDealer)[0]
    assert set(bit.unique().tolist()) <= {0, 1}
    exact = (FP.encode(x) < 0).long()
    assert torch.equal(bit[exact == 1], exact[exact == 1])                 # coarse: x in [0, (n-1) 2^10) may be 1
    assert (bit != exact).sum() <= 4
    for y, product, cost in zip(ys, products, costs):
        assert torch.equal(product, FP.encode(y) * bit)                    # exact: no truncation
        assert cost == astuple(select_times_cost(n, 3000))
    assert select_times_cost(n, 3000).bytes_sent == 8 * 3000 * (n - 1)     # half a Beaver product


def test_select_times_is_refused_beyond_its_pairs_and_for_other_shapes():
    def program(session):
        from mpcft.protocols.context import MPCContext
        ctx = MPCContext(session)
        x = programs.owned(ctx, torch.ones(5, dtype=torch.float64), 0).share
        select = Select(ctx, x, 20, later=1)
        with pytest.raises(ValueError, match="compared shape"):
            select.times(x[:4])
        select.times(x)
        with pytest.raises(ValueError, match="no pair left"):
            select.times(x)
    run_threads(program, 2, dealer_handler=CorrelationDealer)


def test_sign_gates_and_select_layouts():
    # "sign" plus, per gate m, its mask's r_top and r_mid and their products with beta, the
    # top bit's two in ceil((m + 1) / 8) bytes (read times 2^(63 - m)), r_mid's in 8
    sign = {"shape": [5, 7], "bits": 14, "digit_bits": 4}
    assert correction_bytes("sign", sign) == 8 * 35 + 8 * (4 * 16 + 1)     # beta; planes and r's bit
    assert correction_bytes("sign_gates", dict(sign, gates=[36, 5])) == correction_bytes("sign", sign) + 35 * (
        2 * (5 + 8) + 2 * (1 + 8))
    # "select": plus a * beta, its factor a broadcasting to the shape, and a_k * beta per later pair
    for factor in ([5, 7], [1, 7], [7], []):
        for later in (0, 1, 3):
            assert correction_bytes("select", dict(sign, factor=factor, later=later)) == (
                correction_bytes("sign", sign) + 8 * 35 * (1 + later))
    for factor in ([5, 8], [6, 1], [2, 5, 7]):
        with pytest.raises(ValueError, match="broadcast|do not combine"):
            correction_bytes("select", dict(sign, factor=factor, later=0))
    for later in (-1, 9, True, None):
        with pytest.raises(ValueError):
            correction_bytes("select", dict(sign, factor=[7], later=later))
    for gates in ([], [0], [62], [True], 36, [36] * 65):
        with pytest.raises(ValueError):
            correction_bytes("sign_gates", dict(sign, gates=gates))


def test_rounds_formula():
    big = 1 << 20                                         # 4-bit digits
    assert tree_group_for(big, 16) == 2                   # many values: pairs, the fewest mask products
    assert sign_cost(2, big).rounds == 6                  # 62 bits: 16 digits, 4 tree levels
    assert sign_cost(2, big, bits=31).rounds == 5         # 8 digits
    assert sign_cost(2, 1000).rounds == 4                 # few values: 8-bit digits, 8 of them, 3 a level
    assert sign_cost(2, 1000, bits=32).rounds == 3        # 4 digits, one level of 4
    assert tree_group_for(196_608, 3) == 3                # the row maximum's: 5 products a value for a round
    assert digit_bits_for(8, 12) == 4                     # 3 digits in one level: the narrowest
    assert digit_bits_for(1 << 20, 14) == 4
    # c in 63 bits a value, packed; the factor in 64; 16 digits joined 4 a level: 27 then 6
    # masked words opened (eq_0..eq_2 and lt_1..lt_3 of each group, eq_3 too except in the lowest); p
    assert sign_cost(2, 64, digit_bits=4, factor=64).bytes_sent == 64 * 63 // 8 + 8 * (64 + 27 + 6 + 1)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
def test_and_products_of_many_bits_in_one_round(n):
    gen = torch.Generator().manual_seed(n)
    words = torch.randint(-(1 << 62), 1 << 62, (5, 7), generator=gen)
    monomials = [[0], [0, 1], [1, 2, 3], [0, 1, 2, 3, 4], [4, 2]]
    for z, cost in run_threads(programs.many_ands, n, words, monomials, dealer_handler=CorrelationDealer):
        for got, monomial in zip(z, monomials):
            want = words[monomial[0]].clone()
            for k in monomial[1:]:
                want &= words[k]
            assert torch.equal(got, want)
        assert cost == astuple(and_products_cost(n, 7, 5))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("group", TREE_GROUPS)
@pytest.mark.parametrize("digit_bits", [1, 4, 7])
def test_every_tree_grouping(monkeypatch, n, group, digit_bits):
    """The digit tree joined G blocks a level (30, 8 and 5 digits) against plaintext, its cost declared."""
    monkeypatch.setattr(comparison, "tree_group_for", lambda numel, digits: group)
    check_signs(n, digit_bits, 6)
    if digit_bits == 1:         # 62 digits: over a hundred masked words a level
        check_signs(n, digit_bits, 7, bits=62)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3, 5])
def test_threshold_scale_truncates_by_the_intervals_shift(n):
    gen = torch.Generator().manual_seed(n)
    x = torch.exp(torch.rand(400, generator=gen, dtype=torch.float64) * 9 - 3)     # 0.05 .. 400
    x[:3] = torch.tensor([1.0, 4.0, 64.0])                                           # on thresholds
    v = (torch.rand(400, generator=gen, dtype=torch.float64) * 2 - 1) * 2.0 ** 30    # raw ring values
    thresholds, shifts = [1.0, 4.0, 16.0, 64.0], [3, 20, 22, 24, 30]
    below, x_below, out, cost = run_threads(programs.threshold_scale, n, x, v, thresholds, shifts,
                                            dealer_handler=CorrelationDealer)[0]
    xe = FP.decode(FP.encode(x))
    want_below = (xe[None] < torch.tensor(thresholds, dtype=torch.float64)[:, None]).long()
    assert torch.equal(below, want_below) and torch.equal(x_below, xe * want_below)
    interval = (1 - want_below).sum(0)
    shift = torch.tensor(shifts)[interval]
    assert ((out << shift) - FP.encode(v)).abs().lt(3 * 2 ** (shift - 1)).all()     # truncation's contract
    assert cost == astuple(threshold_scale_cost(n, 400, len(thresholds), shifts, 32))


def test_select_scales_layout():
    # "select" plus r_top, an r_mid per shift and, per threshold, beta r_top (in max(m) + 1
    # bits), beta r_mid_(j-1) and beta r_mid_j (8 bytes)
    select = {"shape": [3, 5], "bits": 20, "digit_bits": 4, "factor": [5], "later": 0}
    scales = dict({k: v for k, v in select.items() if k != "later"}, shifts=[20, 22, 30, 40])
    assert correction_bytes("select_scales", scales) == correction_bytes("select", select) + (
        5 * 6 + 4 * 5 * 8 + 15 * 6 + 2 * 15 * 8)
    for shape, factor, shifts in (([3, 5], [1, 5], [20] * 4), ([3, 5], [5], [20] * 3), ([15], [15], [20] * 16),
                                  ([3, 5], [5], [20, 0, 20, 20])):
        with pytest.raises(ValueError):
            correction_bytes("select_scales", dict(scales, shape=shape, factor=factor, shifts=shifts))
