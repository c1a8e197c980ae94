"""`mpcft finetune --dp` end to end (real party processes, TLS, dealer), and its options
refused in one line before any party starts."""
import json
import subprocess
import sys
import time

import pytest

from mpcft.privacy.accountant import epsilon

from .refusals import assert_refused_in_one_line


def finetune(tmp_path, *options, timeout=850):
    return subprocess.run([sys.executable, "-m", "mpcft.cli", "finetune", *options], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(900)
def test_dp_finetune_reaches_its_target_epsilon_and_hides_the_loss(tmp_path):
    out = tmp_path / "run"
    done = finetune(tmp_path, "--dp", "--target-epsilon", "3", "--mode", "lora", "--max-train", "32",
                    "--batch-size", "8", "--seq-len", "16", "--epochs", "2", "--plaintext-baseline", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    q, steps = summary["sampling_rate"], summary["steps"]
    assert (q, steps) == (0.25, 8) and summary["expected_batch_size"] == 8
    assert 2.9 <= summary["epsilon"] <= 3.0
    assert summary["epsilon"] == pytest.approx(epsilon(summary["noise_multiplier"], q, steps, 1e-5), abs=1e-3)
    assert summary["epsilon_for_the_parties"] > summary["epsilon"]
    assert summary["dp_noise"] == "dealer" and summary["accountant"] == "rdp"
    assert summary["delta"] == 1e-5 and summary["max_grad_norm"] == 1.0
    assert 0 <= summary["accuracy"] <= 1 and (out / "model").is_dir()
    assert 0 <= summary["opacus_accuracy"] <= 1 and "plaintext_accuracy" not in summary
    assert "loss=hidden" in done.stdout and "eps=" in done.stdout
    assert not (out / "training.png").exists()       # no loss was revealed, none is plotted
    assert "Traceback" not in done.stderr and "UserWarning" not in done.stderr


@pytest.mark.timeout(900)
def test_dp_finetune_with_party_noise_among_three_parties(tmp_path):
    out = tmp_path / "run"
    done = finetune(tmp_path, "--parties", "3", "--dp", "--noise-multiplier", "1.0", "--dp-noise", "parties",
                    "--dp-colluders", "2", "--mode", "head", "--max-train", "30", "--batch-size", "10",
                    "--dp-reveal-loss", "--accountant", "prv", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parties"] == 3 and summary["noise_multiplier"] == 1.0 and summary["accountant"] == "prv"
    assert summary["dp_noise"].startswith("parties (withstands 2 colluders")
    assert summary["epsilon"] == pytest.approx(epsilon(1.0, summary["sampling_rate"], summary["steps"], 1e-5, "prv"),
                                               rel=1e-3)
    assert "--dp-reveal-loss opens each step's training loss" in done.stderr
    assert (out / "training.png").exists()


BAD = [
    (["--dp"], "--dp needs one of --target-epsilon E or --noise-multiplier S"),
    (["--target-epsilon", "1"], "--target-epsilon needs --dp"),
    (["--dp", "--target-epsilon", "-1"], "--target-epsilon must be > 0, got -1.0"),
    (["--dp", "--target-epsilon", "1", "--noise-multiplier", "1"], "--dp needs one of"),
    (["--dp", "--noise-multiplier", "1", "--delta", "1.5"], "--delta must be in (0, 1), got 1.5"),
    (["--dp", "--noise-multiplier", "1", "--max-grad-norm", "0"], "--max-grad-norm must be > 0, got 0.0"),
    (["--dp", "--noise-multiplier", "1", "--dp-colluders", "1"], "--dp-colluders needs --dp-noise parties"),
    (["--dp", "--noise-multiplier", "1", "--dp-noise", "parties", "--dp-colluders", "2"], "must be in [1, 1] for 2"),
    # sigma 1e4 over the built-in set's expected batch of 8: beyond the exact sampler's range,
    # known from the examples counted before the parties start
    (["--dp", "--noise-multiplier", "10000"], "--dp: noise std 1e+04 x --max-grad-norm 1 over an expected batch"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv, message", BAD)
def test_bad_dp_options_get_one_line_before_any_party_starts(tmp_path, argv, message):
    start = time.monotonic()
    done = finetune(tmp_path, *argv, timeout=100)
    assert_refused_in_one_line(done, "finetune", message, tmp_path, start)
