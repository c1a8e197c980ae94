"""SharedTensor arithmetic against float64 torch, in threads and in real processes.

Error bounds: an input is encoded within eps = 2^-21 (half a unit at f = 20); a truncation
adds less than one unit, 2^-20. So for |x|, |y| <= B a product is within
B*eps*2 + eps^2 + 2^-20, and a k-term dot product within k*(2*B*eps) + 2^-20.
"""
import numpy as np
import pytest
import torch

from mpcft.protocols import beaver, fixed, sharing
from mpcft.protocols.context import MPCContext
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.protocols.cost import Cost, open_cost
from mpcft.protocols.truncation import truncate_cost
from mpcft.runtime import run_threads, spawn

from ..devices import to_cpu
from . import programs

F = 20
EPS = 2.0 ** -(F + 1)
ULP = 2.0 ** -F


def data(seed, *shape, scale=4.0):
    return torch.from_numpy(np.random.default_rng(seed).uniform(-scale, scale, shape))


def check_all_operations(results, n, x, y, w, b):
    expect = {
        "add": x + y, "sub": x - y, "neg": -x, "add_public": x + b, "rsub_public": b - x,
        "mul_int": x * 3, "mul_public": x * w[0], "mul": x * y, "mul_broadcast": x * y[:1],
        "square": x * x, "matmul_public": x @ w.T, "rmatmul_public": w @ x.T, "matmul": x @ y.T,
        "sum0": x.sum(0), "sum_all": x.sum(), "mean1": x.mean(1, keepdim=True), "div": x / 4,
        "reshape_t": x.reshape(-1, 2).T, "index": x[1:3, ::2], "cat": torch.cat([x, y], 1),
        "stack": torch.stack([x, y]).permute(1, 0, 2), "unsqueeze_expand": x[0].expand(3, -1),
        "announced_shape": x,
    }
    k, B = x.shape[1], 4.0
    bound = {"matmul": k * 2 * B * EPS + ULP, "matmul_public": k * 2 * B * EPS + ULP,
             "rmatmul_public": k * 2 * B * EPS + ULP, "sum0": x.shape[0] * EPS,
             "sum_all": x.numel() * EPS}
    for rank, (out, costs) in enumerate(results):
        for name, want in expect.items():
            got = out[name]
            assert got.shape == want.shape, name
            err = (got - want).abs().max().item()
            assert err <= bound.get(name, 2 * B * EPS + ULP + EPS), (name, rank, err)
        if rank == n - 1:
            assert (out["reveal_to_last"] - x).abs().max() <= EPS
        else:
            assert out["reveal_to_last"] is None
        numel = x.numel()
        assert costs["mul"] == astuple(beaver.mul_cost(n, numel, numel) + truncate_cost(n, numel))
        m = x.shape[0]
        assert costs["matmul"] == astuple(beaver.matmul_cost(n, numel, numel) + truncate_cost(n, m * m))
        assert costs["open"] == astuple(open_cost(n, numel))
        assert costs["truncate"] == astuple(truncate_cost(n, numel))
        assert costs["share"] == astuple(sharing.share_cost()) == (0, 0)


def astuple(cost: Cost):
    return (cost.rounds, cost.bytes_sent)


def operands():
    x, y = data(1, 5, 6), data(2, 5, 6)
    w, b = data(3, 4, 6), data(4, 6)
    return x, y, w, b


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3, 5])
def test_all_operations_in_threads(n, device):
    args = operands()
    results = to_cpu(run_threads(programs.all_operations, n, *args, device, dealer_handler=CorrelationDealer))
    check_all_operations(results, n, *args)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("n", [2, 3, 5])
def test_all_operations_in_processes_over_tls(n):
    args = operands()
    results = spawn(programs.all_operations, n, *args, dealer_handler=CorrelationDealer, timeout=240)
    check_all_operations(results, n, *args)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("runner", ["threads", "processes"])
def test_batched_attention_product(runner):
    q, k = data(5, 8, 12, 128, 64, scale=1.0), data(6, 8, 12, 64, 128, scale=1.0)
    run = run_threads if runner == "threads" else spawn
    results = run(programs.batched_attention, 3, q, k, dealer_handler=CorrelationDealer)
    want = q @ k
    for scores, cost in results:
        assert (scores - want).abs().max().item() <= 64 * 2 * EPS + ULP
        assert cost == astuple(beaver.matmul_cost(3, q.numel(), k.numel()) + truncate_cost(3, want.numel()))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
def test_fixed_matmul_and_open_many(n, device):
    """fixed.matmul within k |x||y|-scaled encoding error plus one truncation of float64 x @ y,
    at its declared cost; open_many opens several tensors in one round, bit-exact."""
    x, y = data(7, 3, 4, 5), data(8, 5, 6)
    results = to_cpu(run_threads(programs.fixed_matmuls, n, x, y, device, dealer_handler=CorrelationDealer))
    for (product, x_opened), cost, opened_cost in results:
        assert (product - x @ y).abs().max().item() <= 5 * 2 * 4.0 * EPS + ULP
        assert torch.equal(x_opened, torch.round(x * 2 ** F) / 2 ** F)
        assert cost == astuple(fixed.matmul_cost(n, x.numel(), y.numel(), product.numel()))
        assert opened_cost == astuple(open_cost(n, product.numel() + x.numel()))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("batched", [False, True])
def test_ring_beaver_products_are_exact(n, batched):
    from mpcft.kernels import PRG, fresh_seed, ring_matmul
    prg = PRG(fresh_seed())
    if batched:
        x, y = prg.ring((2, 3, 5, 7)), prg.ring((3, 7, 4))
        want, formula = ring_matmul(x, y), beaver.matmul_cost
    else:
        x, y = prg.ring((6, 1, 5)), prg.ring((4, 5))  # broadcasting
        want, formula = x * y, beaver.mul_cost
    results = run_threads(programs.ring_products, n, x, y, batched, dealer_handler=CorrelationDealer)
    for z, cost in results:
        assert torch.equal(z, want)
        assert cost == astuple(formula(n, x.numel(), y.numel()))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("grads", [(True, True), (True, False), (False, True)])
def test_a_product_whose_masks_serve_its_backward_is_exact(n, grads):
    from mpcft.kernels import PRG, fresh_seed, ring_matmul
    prg = PRG(fresh_seed())
    x, y, g = prg.ring((2, 3, 5, 7)), prg.ring((2, 3, 7, 4)), prg.ring((2, 3, 5, 4))
    results = run_threads(programs.products_with_grads, n, x, y, g, *grads, dealer_handler=CorrelationDealer)
    for (z, gx, gy), forward, backward in results:
        assert torch.equal(z, ring_matmul(x, y))
        assert torch.equal(gx, ring_matmul(g, y.mT.contiguous())) if grads[0] else gx is None
        assert torch.equal(gy, ring_matmul(x.mT.contiguous(), g)) if grads[1] else gy is None
        assert forward == astuple(beaver.matmul_cost(n, x.numel(), y.numel()))
        assert backward == astuple(beaver.MatmulWithGrads.backward_cost(n, g.numel()))   # g alone is opened


def test_a_product_with_grads_refuses_other_batches_and_a_second_backward():
    from mpcft.protocols.correlations import correction_bytes
    with pytest.raises(ValueError, match="same batch"):
        correction_bytes("matmul_grads", {"shape_a": [2, 5, 7], "shape_b": [7, 4], "grad_a": 1, "grad_b": 1})
    # dealer bytes: A B, then C B^T and A^T C where asked
    base = {"shape_a": [5, 7], "shape_b": [7, 4]}
    assert [correction_bytes("matmul_grads", dict(base, grad_a=a, grad_b=b)) for a, b in ((0, 0), (1, 0), (1, 1))] == [
        8 * 20, 8 * (20 + 35), 8 * (20 + 35 + 28)]

    def program(session):
        ctx = MPCContext(session)
        x = programs.owned(ctx, torch.ones(5, 7, dtype=torch.float64), 0).share
        product = beaver.MatmulWithGrads(ctx, x, x.mT.contiguous(), True, False)
        product.backward(product.out)
        with pytest.raises(RuntimeError, match="once"):
            product.backward(product.out)
    run_threads(program, 2, dealer_handler=CorrelationDealer)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3, 5])
def test_one_masked_factor_serves_several_products_exactly(n):
    from mpcft.kernels import PRG, fresh_seed
    prg = PRG(fresh_seed())
    x, y, z = prg.ring((6, 5)), prg.ring((6, 5)), prg.ring((6, 1))        # z broadcasts: a row factor
    results = run_threads(programs.masked_factor_products, n, x, y, z, dealer_handler=CorrelationDealer)
    for (xy, xx, xz), costs in results:
        assert torch.equal(xy, x * y) and torch.equal(xx, x * x) and torch.equal(xz, x * z)
        # the first use opens x and y; the square is then local; z alone is opened
        assert costs == [astuple(open_cost(n, 60)), (0, 0), astuple(open_cost(n, 6))]
        assert sum(c[1] for c in costs) == beaver.masked_factor_cost(n, 30, [30, 0, 6]).bytes_sent


def test_masked_factor_misuse_and_layouts_are_refused():
    from mpcft.protocols.correlations import correction_bytes
    base = {"shape": [6, 5], "factors": [[6, 5], [6, 1]], "square": 1}
    assert correction_bytes("factor_products", base) == 8 * 30 * 3      # a^2, a b_1, a b_2
    for bad in ({"factors": [[6, 4]]}, {"factors": [], "square": 0}, {"factors": [[6, 5]] * 9},
                {"factors": [[-1]]}, {"factors": "x"}, {"square": 2}):
        with pytest.raises(ValueError):
            correction_bytes("factor_products", dict(base, **bad))

    def program(session):
        ctx = MPCContext(session)
        x = programs.owned(ctx, torch.ones(6, 5, dtype=torch.float64), 0).share
        factor = beaver.MaskedFactor(ctx, x, [(6, 1)])
        with pytest.raises(ValueError, match="no square"):
            factor.square()
        with pytest.raises(ValueError, match="in order"):
            factor.times(x)
        factor.times(x[:, :1].contiguous())
        with pytest.raises(ValueError, match="in order"):
            factor.times(x[:, :1].contiguous())
    run_threads(program, 2, dealer_handler=CorrelationDealer)
