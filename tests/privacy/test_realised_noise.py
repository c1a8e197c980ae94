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
