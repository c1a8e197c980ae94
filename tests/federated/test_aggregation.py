"""secure_fedavg against plaintext FedAvg on random updates, 2 and 3 aggregators, every weighting."""
import math

import pytest
import torch

from mpcft.federated.aggregation import (aggregate_sensitivity, capped_scale, check_capped, noise_variance,
                                         secure_fedavg, sensitivity)
from mpcft.protocols.context import MPCContext
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import run_threads

K, D = 6, 700
CAP, EXPECTED = 50, 4.5       # the cap and D = q W of the capped weighting
SCALES = torch.tensor([0.05, 0.3, 1.0, 2.5, 8.0, 0.8], dtype=torch.float64)
COUNTS = [12, 250, 3, 40, 1, 77]


def updates(seed=0, integers=False):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(K, D, generator=g, dtype=torch.float64) * SCALES[:, None]
    return u.round() if integers else u


def reference(u, weighting, secret, clip):
    w = torch.tensor(COUNTS, dtype=torch.float64)
    w = torch.full((K,), 1.0 / K, dtype=torch.float64) if weighting == "uniform" else w / w.sum()
    if clip is not None:       # values clamped to [-C, C] first (see aggregation's contract)
        u = u.clamp(-clip, clip)
    c = torch.ones(K, dtype=torch.float64) if clip is None else (clip / u.norm(dim=1)).clamp(max=1)
    return (w[:, None] * c[:, None] * u).sum(0)


def aggregate(session, u, weighting, secret, clip, noise_multiplier=0.0, counts=COUNTS):
    """Party 0 holds the updates, the others zero shares (the inputs' sharing is tested apart);
    capped weights with the cap CAP and D = EXPECTED."""
    ctx = MPCContext(session)
    x = ctx.fp.encode(u)
    if secret:
        x = torch.cat([x, torch.tensor(counts)[:, None]], 1)
    own = x if ctx.rank == 0 else torch.zeros_like(x)
    capped = dict(weight_cap=CAP, expected_weight=EXPECTED) if weighting == "capped" else {}
    share = secure_fedavg(ctx, own, counts=None if secret or weighting == "uniform" else counts,
                          weighting=weighting, clipping_norm=clip, noise_multiplier=noise_multiplier, **capped)
    return ctx.fp.decode(sum(session.all_gather(share)))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("parties", [2, 3])
@pytest.mark.parametrize("weighting,secret,clip", [("examples", False, None), ("examples", True, None),
                                                   ("examples", False, 3.0), ("examples", True, 3.0),
                                                   ("uniform", False, None), ("uniform", False, 3.0)])
def test_secure_fedavg_equals_plaintext_fedavg(parties, weighting, secret, clip):
    u = updates(parties)
    got = run_threads(aggregate, parties, u, weighting, secret, clip, dealer_handler=CorrelationDealer,
                      timeout=250)[0]
    want = reference(u, weighting, secret, clip)
    # fixed point: a few 2^-16 per value from the truncations; relative 1e-4 from the clip factor
    # (inv_sqrt) and from the reciprocal of sum n_k (secret weights)
    bound = 8 * 2.0 ** -16 + 3e-4 * float(want.abs().max()) * (clip is not None or secret)
    assert float((got - want).abs().max()) < bound


@pytest.mark.timeout(120)
def test_integer_updates_are_averaged_to_within_the_truncation_error():
    u = updates(7, integers=True)
    got = run_threads(aggregate, 2, u, "uniform", False, None, dealer_handler=CorrelationDealer, timeout=100)[0]
    want = u.mean(0)
    assert float((got - want).abs().max()) <= K * 2.0 ** -16 + 2.0 ** -24
    assert torch.equal(torch.round(got * K), torch.round(want * K))   # the sums themselves are exact


@pytest.mark.timeout(200)
def test_dp_noise_has_the_calibrated_deviation_and_sensitivity_bounds_one_client():
    """sigma C' / K around the clipped uniform average; one client moved arbitrarily far moves
    the noiseless average by at most C' / K (the sensitivity the noise is calibrated to)."""
    u, clip, sigma = updates(3), 1.0, 2.0
    got = run_threads(aggregate, 2, u, "uniform", False, clip, sigma, dealer_handler=CorrelationDealer,
                      timeout=180)[0]
    noise = got - reference(u, "uniform", False, clip)
    expected = sigma * sensitivity(clip, D, 16) / K
    assert abs(float(noise.std()) / expected - 1) < 0.1          # D = 700 samples: 5 standard errors
    assert float(noise_variance(sigma, clip, D, 16)) == pytest.approx((sigma * sensitivity(clip, D, 16) * 2 ** 16) ** 2,
                                                                      rel=1e-9)
    moved = u.clone()
    moved[4] *= 1e3
    a = run_threads(aggregate, 2, u, "uniform", False, clip, dealer_handler=CorrelationDealer, timeout=100)[0]
    b = run_threads(aggregate, 2, moved, "uniform", False, clip, dealer_handler=CorrelationDealer, timeout=100)[0]
    assert float((a - b).norm()) <= 2 * sensitivity(clip, D, 16) / K


def capped_reference(u, counts, clip):
    w = torch.tensor([min(n, CAP) for n in counts], dtype=torch.float64) / (CAP * EXPECTED)
    u = u.clamp(-clip, clip)
    return ((w * (clip / u.norm(dim=1)).clamp(max=1))[:, None] * u).sum(0)



@pytest.mark.timeout(300)
@pytest.mark.parametrize("parties", [2, 3])
@pytest.mark.parametrize("secret", [False, True])
def test_capped_weights_equal_plaintext_and_bound_one_clients_influence(parties, secret):
    """min(n_k, cap) / (cap D) weights (McMahan et al. 2018) against plaintext; then with
    worst-case updates (far beyond the clip norm, the client at or above the cap, claiming
    MAX_COUNT examples when n_k is secret): removing one client moves the noiseless aggregate
    by at most the bound the noise is calibrated to, C'(r) / (r D), changing it by twice that."""
    u, clip = updates(parties), 3.0
    got = run_threads(aggregate, parties, u, "capped", secret, clip, dealer_handler=CorrelationDealer,
                      timeout=250)[0]
    want = capped_reference(u, COUNTS, clip)
    assert float((got - want).abs().max()) < 8 * 2.0 ** -16 + 3e-4 * float(want.abs().max())

    worst = torch.sign(updates(parties + 10)) * 1e3        # every value at +-1000: norm far beyond C
    counts = [1 << 24 if secret else 10 ** 6] + COUNTS[1:]
    full, removed, changed = (
        run_threads(aggregate, parties, x, "capped", secret, clip, 0.0, c, dealer_handler=CorrelationDealer,
                    timeout=250)[0]
        for x, c in ((worst, counts), (worst[1:], counts[1:]),
                     (torch.cat([-worst[:1], worst[1:]]), counts)))
    bound = aggregate_sensitivity(clip, D, 16, EXPECTED, CAP)
    assert float((full - removed).norm()) <= bound
    assert float((full - changed).norm()) <= 2 * bound
    assert float((full - removed).norm()) > 0.99 * clip / EXPECTED       # the client counted at its full weight


@pytest.mark.timeout(200)
def test_capped_dp_noise_has_the_calibrated_deviation():
    """The noise of the capped aggregate has deviation sigma C'(r) / (r D): sigma times the bound
    on one client's influence checked above (so the accountant's epsilon for sigma holds)."""
    u, clip, sigma = updates(5), 1.0, 2.0
    got = run_threads(aggregate, 2, u, "capped", False, clip, sigma, dealer_handler=CorrelationDealer,
                      timeout=180)[0]
    noise = got - capped_reference(u, COUNTS, clip)
    expected = sigma * aggregate_sensitivity(clip, D, 16, EXPECTED, CAP)
    assert abs(float(noise.std()) / expected - 1) < 0.1          # D = 700 samples: 5 standard errors


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="weighting"):
        secure_fedavg(None, torch.zeros(2, 3, dtype=torch.int64), weighting="median")
    with pytest.raises(ValueError, match="uniform weights"):
        secure_fedavg(None, torch.zeros(2, 3, dtype=torch.int64), weighting="examples", counts=[1, 2],
                      clipping_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="need a clipping norm"):
        check_capped(8, None, 2, 16)
    with pytest.raises(ValueError, match="weight cap must be an integer"):
        check_capped(0, 1.0, 2, 16)
    with pytest.raises(ValueError, match="beyond the fixed point's range"):
        check_capped(1 << 20, 10.0, 100, 16)
    assert math.isfinite(sensitivity(1.0, 10, 16))
    assert capped_scale(1) == (0, 1.0) and capped_scale(50) == (6, 50 / 64) and capped_scale(64) == (6, 1.0)
