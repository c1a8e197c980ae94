"""Ghost clipping of Linear layers (mpcft.privacy.ghost) against forming the per-example
gradients and against Opacus: on a sequence model, the ghost squared norms equal ||g_b^T x_b||^2
of the shared factors within the stated fixed-point bound, the clipped sums equal Opacus's
per-sample clipping within 1e-3 relative either way (2 and 3 parties); each route's measured
communication equals its declared cost; the per-layer choice is the cheaper formula's."""
import math

import pytest
import torch

from mpcft.nn import SGD, Linear, Module
from mpcft.nn.functional import cross_entropy
from mpcft.nn.grad_sample import LinearFactors
from mpcft.nn.layers import LayerNorm
from mpcft.privacy import ghost
from mpcft.privacy.dp_sgd import DPOptimizer, norm_shift, row_squares, weighted_rows
from mpcft.protocols import sharing
from mpcft.protocols.context import MPCContext
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import run_threads
from mpcft.tensor import SharedTensor

from .test_dp_sgd import opacus_clipped_sum

LOSS_SCALE = 1 << 10
BATCH, POSITIONS, FEATURES, HIDDEN, LABELS = 6, 6, 12, 24, 2


class TorchNet(torch.nn.Module):
    """Linear over positions, LayerNorm, a narrow Linear, mean over positions: logits."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.fc1, self.norm = torch.nn.Linear(FEATURES, HIDDEN), torch.nn.LayerNorm(HIDDEN)
        self.fc2 = torch.nn.Linear(HIDDEN, LABELS)
        self.double()
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x))).mean(1)


class Net(Module):
    def __init__(self, ctx, model):
        super().__init__(ctx)
        trained = dict(secret=True, requires_grad=True)
        self.fc1 = Linear.from_torch(ctx, model.fc1, **trained)
        self.norm = LayerNorm.from_torch(ctx, model.norm, **trained)
        self.fc2 = Linear.from_torch(ctx, model.fc2, **trained)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x))).mean(1)


def batch(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, POSITIONS, FEATURES, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, LABELS, (BATCH,), generator=gen)


def owned(ctx, value, owner):
    return SharedTensor.from_plain(ctx, value if ctx.rank == owner else None, owner, tuple(value.shape))


def clipped_step(session, x, labels, max_grad_norm, ghost_clipping):
    """One clipped sum under MPC; revealed: the sum * B, the routes taken, and for fc1's weight
    the shared factors and their squared norms by the ghost route and by forming G_b."""
    ctx = MPCContext(session)
    f, n = ctx.frac_bits, ctx.world_size
    net = Net(ctx, TorchNet())
    net.track_per_example()
    dp = DPOptimizer(SGD(net.trainable_parameters(), lr=0.0, momentum=0.0), noise_multiplier=0.0,
                     max_grad_norm=max_grad_norm, expected_batch_size=BATCH, loss_scale=LOSS_SCALE,
                     ghost_clipping=ghost_clipping)
    onehot = torch.nn.functional.one_hot(labels, LABELS).double()
    cross_entropy(net(owned(ctx, x, 0)), owned(ctx, onehot, n - 1), value=False).backward(LOSS_SCALE)
    norms = None
    if ghost_clipping:
        factors = net.fc1.weight.grad_sample
        threshold = max_grad_norm * LOSS_SCALE / BATCH
        shift = norm_shift(threshold, dp.numel, f)
        ghostly = sharing.open_(ctx, ghost.ghost_squared_norms(ctx, [factors], threshold, shift))
        formed = sharing.open_(ctx, row_squares(ctx, factors.materialise(ctx).reshape(BATCH, -1), shift))
        opened = [ctx.fp.decode(sharing.open_(ctx, t)) for t in (factors.x, factors.grad)]
        norms = (ghostly.double() / 2.0 ** (2 * f), formed.double() / 2.0 ** (2 * f), *opened, shift,
                 ghost.gram_balance(threshold, shift, POSITIONS, FEATURES))
    clipped = SharedTensor(ctx, dp.clipped_sum()).reveal() * BATCH
    return clipped, dp.choices, norms


def stated_bound(x, g, shift, balance, frac_bits):
    """The ghost module's bound on the error of ||G_b / 2^k||^2, per example."""
    grams_x, grams_g = x @ x.mT, g @ g.mT
    positions = x.shape[1]
    return (2.0 ** -frac_bits * (grams_x.abs() / 2.0 ** balance + grams_g.abs() * 2.0 ** (balance - 2 * shift)).sum((1, 2))
            + positions ** 2 * 2.0 ** (-2 * frac_bits))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("n", [2, 3])
def test_ghost_norms_and_clipped_sums_equal_formed_and_opacus(n):
    x, labels = batch()
    _, norms = opacus_clipped_sum(TorchNet(), x, labels, 1.0)
    max_grad_norm = float(norms.median())          # about half of the examples are clipped
    expected, _ = opacus_clipped_sum(TorchNet(), x, labels, max_grad_norm)
    assert (norms > max_grad_norm).sum() >= 2 and (norms < max_grad_norm).sum() >= 2
    measured = {}
    for ghost_clipping in (True, False):
        clipped, choices, measured[ghost_clipping] = run_threads(clipped_step, n, x, labels, max_grad_norm, ghost_clipping,
                                                 dealer_handler=CorrelationDealer, timeout=280)[0]
        error = float((clipped - expected).norm() / expected.norm())
        print(f"n={n} ghost_clipping={ghost_clipping}: routes {choices}, relative error {error:.2e}")
        assert error < 1e-3
        # fc1.weight [24 x 12] over 6 positions: ghost; its bias, LayerNorm, the narrow fc2: formed
        assert choices == (["ghost"] + ["formed"] * 5 if ghost_clipping else ["formed"] * 6)
    ghostly, formed, xs, gs, shift, balance = measured[True]
    exact = (gs.mT @ xs).square().sum((1, 2)) / 2.0 ** (2 * shift)          # ||G_b / 2^k||^2 of the shares
    bound = stated_bound(xs, gs, shift, balance, 20)
    formed_bound = math.sqrt(HIDDEN * FEATURES) * 2.0 ** -20 * (1 + 2.0 ** -shift) * 2 * exact.sqrt() * 1.01
    print(f"ghost error {(ghostly - exact).abs().max():.2e} (bound {bound.min():.2e}), formed error "
          f"{(formed - exact).abs().max():.2e}; relative {((ghostly - exact) / exact).abs().max():.1e}")
    assert ((ghostly - exact).abs() <= bound).all()
    assert ((formed - exact).abs() <= formed_bound + 2.0 ** -30).all()


def route_costs(session, shape, weights, shift):
    """Measured (rounds, bytes sent, dealer bytes) of each route on random factors of `shape`."""
    ctx = MPCContext(session)
    batch_size, positions, in_features, out_features = shape
    gen = torch.Generator().manual_seed(3)
    x = owned(ctx, torch.randn(batch_size, positions, in_features, generator=gen, dtype=torch.float64), 0).share
    g = owned(ctx, torch.randn(batch_size, positions, out_features, generator=gen, dtype=torch.float64) * 0.1,
              ctx.world_size - 1).share
    weight = owned(ctx, weights, 0).share
    factors = LinearFactors(x, g)

    def measured(fn):
        before = session.comm.snapshot()
        out = fn()
        delta = session.comm.snapshot() - before
        return out, (delta.rounds, delta.bytes_sent, delta.dealer_bytes_received)

    def formed_route():
        rows = factors.materialise(ctx).reshape(batch_size, -1)
        row_squares(ctx, rows, shift)
        return weighted_rows(ctx, weight, rows, 4)

    _, norm = measured(lambda: ghost.ghost_squared_norms(ctx, [factors], 10.0, shift))
    sums, total = measured(lambda: ghost.ghost_weighted_sums(ctx, [factors], weight, 4))
    formed_sums, formed = measured(formed_route)
    same = ctx.fp.decode(sharing.open_(ctx, sums[0].reshape(-1) - formed_sums))
    return norm, total, formed, float(same.abs().max())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("shape, shift", [((3, 5, 7, 4), 2), ((2, 4, 3, 6), 0)])
def test_measured_communication_equals_the_declared_costs(n, shape, shift):
    weights = torch.tensor([0.5, 1.0, 0.25])[:shape[0]] * 16
    results = run_threads(route_costs, n, shape, weights, shift, dealer_handler=CorrelationDealer)
    declared = {"norm": (ghost.ghost_norm_cost(n, *shape, 10.0, shift), ghost.ghost_norm_dealer_bytes(*shape, 10.0, shift)),
                "sum": (ghost.ghost_sum_cost(n, *shape, 4), ghost.ghost_sum_dealer_bytes(*shape, 4)),
                "formed": (ghost.formed_cost(n, *shape, shift, 4),
                           ghost.formed_dealer_bytes(*shape, shift, 4))}
    for k, (name, (cost, dealer)) in enumerate(declared.items()):
        got = [result[k] for result in results]
        assert all(g[:2] == (cost.rounds, cost.bytes_sent) for g in got), name
        assert sum(g[2] for g in got) == dealer, name      # each party receives its runs
    assert all(result[3] < 1e-4 for result in results)     # both routes' weighted sums agree
    assert ghost.ghost_cost(n, *shape, 10.0, shift, 4) == declared["norm"][0] + declared["sum"][0]


@pytest.mark.parametrize("shape, expected", [
    ((8, 64, 384, 384), True),      # a MiniLM attention or output projection ("top", "all")
    ((8, 64, 384, 1536), True),     # MiniLM's intermediate dense
    ((8, 64, 384, 8), False),       # LoRA A (rank 8)
    ((8, 64, 8, 384), False),       # LoRA B
    ((8, 64, 384, 3), False),       # a head over all positions
])
def test_the_choice_is_the_cheaper_formula(shape, expected):
    threshold, shift, extra_bits = 1.0 / 8, 4, 0          # C = 1 over a batch of 8, norm_shift's 4
    for n in (2, 3):
        ghostly = ghost.ghost_cost(n, *shape, threshold, shift, extra_bits)
        formed = ghost.formed_cost(n, *shape, shift, extra_bits)
        assert (ghost.prefer_ghost(n, *shape, threshold, shift, extra_bits)
                == (ghostly.bytes_sent < formed.bytes_sent) == expected)


def twice(session, x1, x2, factors):
    """A Linear used twice in one forward: its per-example weight gradients, formed directly or
    from the factors of the two uses joined along the positions."""
    ctx = MPCContext(session)
    layer = Linear(ctx, torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4), None,
                   secret=True, requires_grad=True)
    layer.track_per_example()
    layer.weight.grad_sample_factors = factors
    y = layer(owned(ctx, x1, 0)) * layer(owned(ctx, x2, 0))
    y.sum().backward(1)
    sample = layer.weight.grad_sample
    return ctx.fp.decode(sharing.open_(ctx, sample.materialise(ctx) if factors else sample.share))


def test_factors_of_a_layer_used_twice_join_along_positions():
    gen = torch.Generator().manual_seed(4)
    x1, x2 = (torch.randn(2, 5, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    formed = run_threads(twice, 2, x1, x2, False, dealer_handler=CorrelationDealer)[0]
    joined = run_threads(twice, 2, x1, x2, True, dealer_handler=CorrelationDealer)[0]
    assert formed.shape == (2, 3, 4)
    assert (formed - joined).abs().max() < 1e-4
