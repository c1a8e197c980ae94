"""Autograd on SharedTensors against torch autograd, with 2 and 3 parties.

A small expression uses every differentiable SharedTensor operation (add, sub, products with
public reals and integers, shared x shared products and matmul, sum, mean, reshape, permute,
indexing); the leaves' gradients must agree with torch's within 1e-4. `no_grad()` records
nothing, and a graph is freed by its backward pass."""
import pytest
import torch

from mpcft.autograd import no_grad
from mpcft.protocols.context import MPCContext
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import run_threads
from mpcft.tensor import SharedTensor

W = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], dtype=torch.float64)


def expression(x, y):
    """The same expression for torch tensors and SharedTensors."""
    z = (x @ y.T) * 0.5 - x[:, :2].sum(1, keepdim=True) * 3      # [4, 4]
    u = (z.reshape(2, 8).permute(1, 0) * y[:, :2].reshape(8, 1)).mean(0)  # [2]
    v = (x * y).sum(0) @ W.T                                       # [2]: public matmul
    return (u * v + z[0, :2]).sum()


def inputs():
    gen = torch.Generator().manual_seed(3)
    return (torch.randn(4, 3, generator=gen, dtype=torch.float64),
            torch.randn(4, 3, generator=gen, dtype=torch.float64))


def program(session, x, y):
    ctx = MPCContext(session)
    X = SharedTensor.from_plain(ctx, x if ctx.rank == 0 else None, 0, tuple(x.shape), requires_grad=True)
    Y = SharedTensor.from_plain(ctx, y if ctx.rank == 1 else None, 1, tuple(y.shape), requires_grad=True)
    out = expression(X, Y)
    out.backward()
    try:
        out.backward()
        twice = None
    except RuntimeError as exc:
        twice = str(exc)
    with no_grad():
        untracked = expression(X, Y)
    return (out.reveal(), X.grad.reveal(), Y.grad.reveal(), twice,
            untracked.requires_grad, untracked.grad_fn)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
def test_shared_tensor_gradients_match_torch(n):
    x, y = inputs()
    tx, ty = x.clone().requires_grad_(), y.clone().requires_grad_()
    want = expression(tx, ty)
    want.backward()
    for value, gx, gy, twice, requires_grad, grad_fn in run_threads(program, n, x, y,
                                                                       dealer_handler=CorrelationDealer):
        assert abs(value.item() - want.item()) < 1e-4
        assert (gx - tx.grad).abs().max() < 1e-4
        assert (gy - ty.grad).abs().max() < 1e-4
        assert twice is not None and "second time" in twice
        assert not requires_grad and grad_fn is None


def test_gradients_only_for_fixed_point_tensors():
    class Ctx:
        frac_bits = 20
    with pytest.raises(TypeError, match="fixed-point"):
        SharedTensor(Ctx(), torch.zeros(3, dtype=torch.int64), frac_bits=0, requires_grad=True)
