"""`mpcft federated` end to end: Flower's simulation (Ray), aggregator processes, a failing
client, client-level DP; and its refusals of bad options before anything starts."""
import json
import math
import subprocess
import sys
import time

import pytest

from mpcft.privacy.accountant import epsilon
from tests.refusals import assert_refused_in_one_line


def federated(args, cwd, timeout):
    return subprocess.run([sys.executable, "-m", "mpcft.cli", "federated", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.timeout(600)
def test_dp_fedavg_run_completes_without_a_failing_client(tmp_path):
    out = tmp_path / "run"
    done = federated(["--clients", "3", "--rounds", "2", "--mode", "head", "--seq-len", "16", "--fail-clients", "2",
                      "--dp", "--noise-multiplier", "0.8", "--clipping-norm", "1.0", "--out", str(out)],
                     tmp_path, 560)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["used"], r["failed"]) for r in summary["rounds_detail"]] == [(2, 1), (2, 1)]
    assert len(summary["accuracy"]) == 3 and all(0 <= a <= 1 for a in summary["accuracy"])
    privacy = summary["privacy"]
    assert summary["weighting"] == "uniform" and privacy["sampling_rate"] == 1.0
    assert math.isclose(privacy["epsilon"], epsilon(0.8, 1.0, 2, 1e-5), rel_tol=1e-9)
    assert f"epsilon {privacy['epsilon']:.3f}" in done.stdout
    assert (out / "accuracy.png").stat().st_size > 1000
    assert "served 2 rounds" in (out / "aggregators.log").read_text()


@pytest.mark.parametrize("args,message", [
    (["--clients", "1"], "--clients must be at least 2"),
    (["--dp", "--clipping-norm", "1"], "exactly one of --noise-multiplier and --target-epsilon"),
])
def test_bad_options_are_refused_in_one_line(tmp_path, args, message):
    started = time.monotonic()
    assert_refused_in_one_line(federated(args, tmp_path, 120), "federated", message, tmp_path, started)
