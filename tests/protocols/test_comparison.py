"""Comparison, ReLU and max against float64 torch: exact (no approximation error) results."""
import pytest
import torch

from mpcft.kernels import FixedPoint
from mpcft.protocols.comparison import clamp_cost, max_along_cost, sign_cost
from mpcft.protocols.correlations import CorrelationDealer
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
        assert torch.equal(out["relu"], xe.clamp(min=0))
        assert torch.equal(out["maximum"], torch.maximum(xe, ye))
        assert torch.equal(out["max_along"], xe.max(-1, keepdim=True).values)
        assert torch.equal(out["max_dim0"], xe.max(0, keepdim=True).values)
        lo, hi = (FP.decode(FP.encode(torch.tensor(b, dtype=torch.float64))) for b in programs.clamp_bounds(x))
        assert torch.equal(out["clamp"], xe.clamp(lo, hi))
        numel = x.numel()
        assert costs["sign"] == astuple(sign_cost(n, numel, bits))
        assert costs["relu"] == astuple(sign_cost(n, numel, bits, with_product=True))
        assert costs["clamp"] == astuple(clamp_cost(n, numel, bits))
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


def test_rounds_formula():
    assert sign_cost(2, 1000).rounds == 6                 # 62 bits: 16 digits, 4 tree levels
    assert sign_cost(2, 1000, bits=31).rounds == 5        # 8 digits
    assert sign_cost(2, 64, with_product=True).bytes_sent == 8 * (64 * 2 + (2 * (8 + 7) + 2 * (4 + 3) + 2 * (2 + 1) + 2 * (1 + 0)) + 1)
