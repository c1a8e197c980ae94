"""DP-SGD under MPC against Opacus on the same model and batch: the clipped summed gradient
(before noise) within 1e-3 relative with 2 and 3 parties; a whole step's noise has the
calibrated standard deviation; an empty batch gives noise only; options are checked."""
import math

import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer as OpacusDPOptimizer

from mpcft.nn import SGD, Linear, Module
from mpcft.nn.functional import cross_entropy
from mpcft.nn.layers import LayerNorm
from mpcft.privacy.dp_sgd import DPOptimizer
from mpcft.protocols.context import MPCContext
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import run_threads
from mpcft.tensor import SharedTensor

LOSS_SCALE = 1 << 10
BATCH, FEATURES, HIDDEN, LABELS = 6, 12, 16, 3


def torch_model(seed: int = 0) -> torch.nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.LayerNorm(HIDDEN),
                                torch.nn.Linear(HIDDEN, LABELS)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    return model


def batch(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, FEATURES, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, LABELS, (BATCH,), generator=gen)
    return x, labels


class Net(Module):
    """The torch model's layers under MPC, all parameters secret and trained."""

    def __init__(self, ctx, model):
        super().__init__(ctx)
        trained = dict(secret=True, requires_grad=True)
        self.fc1 = Linear.from_torch(ctx, model[0], **trained)
        self.norm = LayerNorm.from_torch(ctx, model[1], **trained)
        self.fc2 = Linear.from_torch(ctx, model[2], **trained)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)))


def opacus_clipped_sum(model, x, labels, max_grad_norm) -> tuple[torch.Tensor, torch.Tensor]:
    """Opacus's sum of per-sample clipped gradients (flattened in parameter order) and the norms."""
    model = GradSampleModule(model, loss_reduction="mean")
    optimizer = OpacusDPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0,
                                  max_grad_norm=max_grad_norm, expected_batch_size=len(x))
    torch.nn.functional.cross_entropy(model(x), labels).backward()
    norms = torch.stack([p.grad_sample.reshape(len(x), -1).norm(dim=1) for p in model.parameters()], 1).norm(dim=1)
    optimizer.clip_and_accumulate()
    return torch.cat([p.summed_grad.reshape(-1) for p in model.parameters()]), norms


def share_batch(ctx, x, labels):
    n = ctx.world_size
    onehot = torch.nn.functional.one_hot(labels, LABELS).double()
    xs = SharedTensor.from_plain(ctx, x if ctx.rank == 0 else None, 0, tuple(x.shape))
    ys = SharedTensor.from_plain(ctx, onehot if ctx.rank == n - 1 else None, n - 1, tuple(onehot.shape))
    return xs, ys


def mpc_dp(session, model, x, labels, max_grad_norm, noise_multiplier, lr, expected_batch, empty=False):
    """One DP-SGD step under MPC; revealed (clipped sum * B_exp, weights before, after, norm range)."""
    ctx = MPCContext(session)
    net = Net(ctx, model)
    net.track_per_example()
    dp = DPOptimizer(SGD(net.trainable_parameters(), lr=lr, momentum=0.0), noise_multiplier=noise_multiplier,
                     max_grad_norm=max_grad_norm, expected_batch_size=expected_batch, loss_scale=LOSS_SCALE)
    if not empty:
        xs, ys = share_batch(ctx, x, labels)
        cross_entropy(net(xs), ys, value=False).backward(LOSS_SCALE)
    before = torch.cat([p.tensor().reveal().reshape(-1) for p in dp.params])
    clipped = SharedTensor(ctx, dp.clipped_sum()).reveal() * expected_batch
    dp.step()
    after = torch.cat([p.tensor().reveal().reshape(-1) for p in dp.params])
    return clipped, before, after, dp.norm_range(len(x)), dp.sensitivity


@pytest.mark.timeout(180)
@pytest.mark.parametrize("n", [2, 3])
def test_clipped_sum_equals_opacus_per_sample_clipping(n):
    model, (x, labels) = torch_model(), batch()
    _, norms = opacus_clipped_sum(torch_model(), x, labels, 1.0)
    max_grad_norm = float(norms.median())            # about half of the examples are clipped
    expected, _ = opacus_clipped_sum(torch_model(), x, labels, max_grad_norm)
    results = run_threads(mpc_dp, n, model, x, labels, max_grad_norm, 0.0, 0.0, BATCH,
                          dealer_handler=CorrelationDealer, timeout=170)
    clipped, _, _, norm_range, _ = results[0]
    error = (clipped - expected).norm() / expected.norm()
    print(f"n={n}: C={max_grad_norm:.3f}, norms {norms.numpy().round(3)}, relative error {error:.2e}, "
          f"norms within contract up to {norm_range:.0f} C")
    assert (norms > max_grad_norm).sum() >= 2 and (norms < max_grad_norm).sum() >= 2
    assert error < 1e-3
    assert norm_range > 100


@pytest.mark.timeout(180)
def test_a_step_adds_noise_of_the_calibrated_deviation():
    model, (x, labels) = torch_model(), batch()
    sigma, max_grad_norm, lr, expected_batch = 2.0, 0.5, 1.0, 4.0
    results = run_threads(mpc_dp, 2, model, x, labels, max_grad_norm, sigma, lr, expected_batch,
                          dealer_handler=CorrelationDealer, timeout=170)
    clipped, before, after, _, sensitivity = results[0]
    noise = (before - after) * expected_batch / lr - clipped         # w' = w - lr (sum + z) / B_exp
    assert 1 < sensitivity / max_grad_norm < 1.01
    std = float(noise.std())
    print(f"noise std {std:.4f}, calibrated {sigma * sensitivity:.4f} over {noise.numel()} coordinates")
    assert abs(std / (sigma * sensitivity) - 1) < 4 / math.sqrt(2 * noise.numel())
    assert abs(float(noise.mean())) < 4 * sigma * sensitivity / math.sqrt(noise.numel())


@pytest.mark.timeout(120)
def test_an_empty_batch_gives_noise_only():
    model, (x, labels) = torch_model(), batch()
    results = run_threads(mpc_dp, 2, model, x, labels, 1.0, 1.0, 1.0, 4.0, True,
                          dealer_handler=CorrelationDealer)
    clipped, before, after, _, sensitivity = results[0]
    assert torch.equal(clipped, torch.zeros_like(clipped))
    moved = (before - after) * 4.0
    assert abs(float(moved.std()) / sensitivity - 1) < 0.3


def bad_options(session, options):
    ctx = MPCContext(session)
    net = Net(ctx, torch_model())
    DPOptimizer(SGD(net.trainable_parameters(), lr=0.1), **options)


@pytest.mark.parametrize("options, words", [
    (dict(noise_multiplier=-1.0, max_grad_norm=1.0, expected_batch_size=4), "noise_multiplier"),
    (dict(noise_multiplier=1.0, max_grad_norm=0.0, expected_batch_size=4), "max_grad_norm"),
    (dict(noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=0), "expected_batch_size"),
    (dict(noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4, noise_source="x"), "noise_source"),
])
def test_bad_options_are_refused(options, words):
    with pytest.raises(ValueError, match=words):
        run_threads(bad_options, 2, options, dealer_handler=CorrelationDealer)
