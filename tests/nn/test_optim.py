"""SGD and AdamW on shares against the same updates in float64 torch, and their declared costs."""
import pytest
import torch

from mpcft.nn import SGD, AdamW
from mpcft.nn.module import Parameter
from mpcft.nn.optim import adamw_cost, sgd_cost
from mpcft.finetune.plaintext import AdamW as PlainAdamW
from mpcft.protocols import sharing
from mpcft.protocols.context import MPCContext
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import run_threads
from mpcft.tensor import SharedTensor

SCALE = 1 << 10   # gradients arrive loss-scaled, as from mpcft.nn.Classifier


def problem(seed=0, steps=4):
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(5, 7, generator=gen, dtype=torch.float64), torch.randn(7, generator=gen, dtype=torch.float64)]
    # gradients over 6 orders of magnitude, some beyond the clip
    grads = [[torch.randn(w.shape, generator=gen, dtype=torch.float64)
              * 10.0 ** torch.randint(-5, 1, w.shape, generator=gen) for w in weights] for _ in range(steps)]
    grads[0][0][0, :3] = torch.tensor([3.0, -2.5, 0.0])
    return weights, grads


def run_optimizer(session, name, weights, grads, options):
    ctx = MPCContext(session)
    params = [Parameter(ctx, w) for w in weights]
    optimizer = (AdamW if name == "adamw" else SGD)(params, grad_scale=SCALE, **options)
    costs = []
    for step in grads:
        for p, g in zip(params, step):
            encoded = ctx.fp.encode(g * SCALE) if ctx.rank == 0 else None
            p.grad = SharedTensor(ctx, sharing.share(ctx, encoded, 0, p.shape))
        before = session.comm.snapshot()
        optimizer.step()
        delta = session.comm.snapshot() - before
        costs.append((delta.rounds, delta.bytes_sent))
        optimizer.zero_grad()
    return [ctx.fp.decode(sharing.open_(ctx, p.data)) for p in params], costs


def plaintext(name, weights, grads, options):
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    optimizer = PlainAdamW(params, **options) if name == "adamw" else torch.optim.SGD(params, **options)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach() for p in params]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("name,options", [
    ("sgd", dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("adamw", dict(lr=1e-2)),
    ("adamw", dict(lr=1e-3, weight_decay=0.1, eps=1e-4, clip=0.5)),
])
def test_optimizer_matches_torch(n, name, options):
    """Weights after 4 steps within 1e-3 of the step size (lr), and costs as declared."""
    weights, grads = problem()
    got, costs = run_threads(run_optimizer, n, name, weights, grads, options, dealer_handler=CorrelationDealer)[0]
    want = plaintext(name, weights, grads, options)
    lr = options["lr"]
    for g, w in zip(got, want):
        assert (g - w).abs().max() < 1e-3 * lr + 4e-6, ((g - w).abs().max(), lr)
    numel = sum(w.numel() for w in weights)
    if name == "adamw":
        declared = adamw_cost(n, numel, options.get("clip", 1.0), options.get("eps", 1e-4), grad_scale=SCALE)
        assert all(c == (declared.rounds, declared.bytes_sent) for c in costs)
    else:
        declared = sgd_cost(n, numel, momentum=True, weight_decay="weight_decay" in options, grad_scale=SCALE)
        assert all(c == (declared.rounds, declared.bytes_sent) for c in costs[1:])


def test_adamw_update_is_bounded_by_lr_even_for_huge_gradients():
    """Clipping is the range contract: gradients of 1e6 (far beyond any squaring's range)
    still give an update of at most lr per coordinate, never a wrapped value."""
    weights = [torch.zeros(50, dtype=torch.float64)]
    grads = [[torch.linspace(-1e6, 1e6, 50, dtype=torch.float64)]]
    got, _ = run_threads(run_optimizer, 2, "adamw", weights, grads, dict(lr=0.01),
                         dealer_handler=CorrelationDealer)[0]
    assert got[0].abs().max() <= 0.01 * 1.001
    assert torch.equal(got[0].sign(), -grads[0][0].sign())


def test_adamw_rejects_an_eps_below_its_fixed_point_range():
    with pytest.raises(ValueError, match="eps"):
        adamw_cost(2, 10, clip=1.0, eps=1e-6)
