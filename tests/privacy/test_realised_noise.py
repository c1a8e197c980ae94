"""The noise a real DP training step hands its optimizer (the CLI's trainer on the built-in
data, 2 parties in threads, benchmarks.dp_realised_noise): at every trained coordinate it is the
calibrated N(0, (sigma C')^2) with the dealer, sqrt(n / (n - t)) times that with the parties'
own shares; the weights move by exactly lr times the velocity that carries it."""
import math

import pytest

from benchmarks.dp_realised_noise import measure
from mpcft.finetune.config import FinetuneConfig


@pytest.mark.timeout(300)
@pytest.mark.parametrize("source", ["dealer", "parties"])
def test_a_real_steps_noise_is_the_calibrated_gaussian(tmp_path, source):
    config = FinetuneConfig(dp=True, noise_multiplier=1.5, dp_noise=source, mode="lora", out=str(tmp_path))
    (row,) = measure(config, parties=2, steps=1)
    tolerance = 5 / math.sqrt(2 * row["coordinates"])            # 5 standard errors of a std ratio
    print(row)
    assert row["coordinates"] > 1000
    assert abs(row["ratio"] / row["expected"] - 1) < tolerance
    assert row["expected"] == (math.sqrt(2) if source == "parties" else 1.0)
    assert abs(row["mean"]) < 5 / math.sqrt(row["coordinates"])
    assert row["ks_p"] > 1e-4
    assert row["residual"] < 1e-4


def test_a_replayed_draw_is_the_noise_opacus_adds():
    """The paired baseline (mpcft.finetune.plaintext.Replay, benchmarks.dp_paired): Opacus's
    DPOptimizer adds the MPC run's noise z for its step, by mpcft parameter name, in place of
    its own draw, and then divides by the expected batch size."""
    import torch
    from mpcft.finetune.config import FinetuneConfig
    from mpcft.finetune.plaintext import _dp_optimizer

    f64 = dict(dtype=torch.float64)
    w, b = torch.nn.Parameter(torch.zeros(3, 4, **f64)), torch.nn.Parameter(torch.zeros(3, **f64))
    samples = {w: torch.full((2, 3, 4), 0.1, **f64), b: torch.full((2, 3), 0.1, **f64)}  # norms below C: unclipped
    z_w, z_b = torch.arange(12.0, **f64).reshape(3, 4), torch.tensor([5.0, 6.0, 7.0], **f64)
    draws = [{"head.weight": z_w, "head.bias": z_b}] * 2
    sgd = torch.optim.SGD([w, b], lr=1.0)
    optimizer = _dp_optimizer(sgd, FinetuneConfig(max_grad_norm=100.0), 1.0, 4.0,
                              {id(w): "head_w", id(b): "head_b"}, draws)
    for step in range(2):
        for p, sample in samples.items():
            p.grad_sample = sample.clone()
        optimizer.step()
        optimizer.zero_grad()
    # two steps of lr 1: w = -2 (sum of the two examples' gradients + z) / B_exp
    assert torch.allclose(w.detach(), -2 * (0.2 + z_w) / 4) and torch.allclose(b.detach(), -2 * (0.2 + z_b) / 4)
