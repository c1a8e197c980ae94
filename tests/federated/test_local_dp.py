"""Local DP-SGD in the clients (Opacus's per-example gradients, clipping and accountant; mpcft's
exact noise): the noise's deviation, the accountant's record and the refusals of bad settings."""
import math

import pytest
import torch
from opacus import GradSampleModule

from mpcft.federated.local_dp import ExactNoiseDPOptimizer, check_local_dp, private_fit
from mpcft.privacy.mechanisms import RESOLUTION


def test_a_step_adds_noise_of_deviation_sigma_times_the_rounded_clip_bound():
    """An empty Poisson batch: the step's gradient is the noise alone over the expected batch size,
    of deviation sigma (C + sqrt(d) r) / B (the sum rounded onto the grid r moves by < sqrt(d) r)."""
    module = torch.nn.Linear(200, 10, dtype=torch.float64)
    GradSampleModule(module, loss_reduction="sum")
    sigma, clip, batch = 1.5, 0.5, 4
    optimizer = ExactNoiseDPOptimizer(torch.optim.SGD(module.parameters(), lr=1.0), noise_multiplier=sigma,
                                      max_grad_norm=clip, expected_batch_size=batch)
    for p in module.parameters():
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
    optimizer.step()
    noise = torch.cat([p.grad.flatten() for p in module.parameters()]) * batch
    expected = sigma * (clip + math.sqrt(noise.numel()) * RESOLUTION)
    assert abs(float(noise.std()) / expected - 1) < 0.1          # 2010 samples: about 6 standard errors
    assert torch.equal(torch.round(noise / RESOLUTION) * RESOLUTION, noise)   # on the grid: integer draws


def test_private_fit_clips_and_records_opacus_steps():
    """With no noise to speak of, one step moves a Linear layer by at most lr per value (AdamW's
    first step), the accountant records (sigma, 1 / ceil(n / B), epochs ceil(n / B))."""
    g = torch.Generator().manual_seed(0)
    features, labels = torch.randn(37, 20, generator=g) * 50, torch.randint(0, 3, (37,), generator=g)
    module = torch.nn.Linear(20, 3)
    loss, history = private_fit(module, lambda model, idx: model(features[idx]), labels, noise_multiplier=1e-3,
                                max_grad_norm=1.0, batch_size=8, epochs=2, lr=1e-2)
    assert history == [(1e-3, 1 / 5, 10)] and math.isfinite(loss)
    assert not any(hasattr(p, "grad_sample") for p in module.parameters())    # Opacus's hooks removed
    assert not module._forward_hooks and not module._backward_hooks


@pytest.mark.parametrize("sigma,clip,message", [
    (0.0, 1.0, "--local-noise-multiplier must be a finite number > 0"),
    (math.nan, 1.0, "--local-noise-multiplier must be a finite number > 0"),
    (1.0, -1.0, "--local-max-grad-norm must be a finite number > 0"),
    (1.0, math.inf, "--local-max-grad-norm must be a finite number > 0"),
    (200.0, 1.0, "the exact sampler's range"),
])
def test_bad_local_dp_settings_are_refused(sigma, clip, message):
    with pytest.raises(ValueError, match=message):
        check_local_dp(sigma, clip)
