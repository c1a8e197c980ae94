"""`mpcft federated` end to end: Flower's simulation (Ray), aggregator processes, a failing
client, client-level DP; and its refusals of bad options before anything starts."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from mpcft.federated.aggregation import aggregate_sensitivity
from mpcft.privacy.accountant import epsilon
from tests.refusals import assert_refused_in_one_line


def federated(args, cwd, timeout):
    return subprocess.run([sys.executable, "-m", "mpcft.cli", "federated", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.timeout(600)
def test_dp_fedavg_run_goes_on_without_a_failing_client_and_after_an_aggregator_is_killed(tmp_path):
    """Client 2 fails in every round; aggregator 1 is killed (SIGKILL) once the server has linked
    to it, so round 1 ends without an aggregate on every side and round 2 runs on a fresh session."""
    out = tmp_path / "run"
    run = subprocess.Popen([sys.executable, "-m", "mpcft.cli", "federated", "--clients", "3", "--rounds", "2",
                            "--mode", "head", "--seq-len", "16", "--fail-clients", "2", "--dp", "--noise-multiplier",
                            "0.8", "--clipping-norm", "1.0", "--out", str(out)], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline, pid = time.monotonic() + 300, None
        while pid is None and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            log = (out / "aggregators.log").read_text() if (out / "aggregators.log").exists() else ""
            pid = next((int(m) for m in re.findall(r"aggregator 1 \(pid (\d+)\): the Flower server connected", log)),
                       None)
        assert pid is not None, log
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=500)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 0, stdout[-3000:] + stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    first, second = summary["rounds_detail"]
    assert first["aggregator_failed"] and "aggregator" in first["skipped"] and "used" not in first
    assert (second["used"], second["failed"], sorted(second["clients"])) == (2, 1, ["client-0", "client-1"])
    assert summary["aggregator_sessions"] == 2
    assert len(summary["accuracy"]) == 3 and all(0 <= a <= 1 for a in summary["accuracy"])
    privacy = summary["privacy"]
    assert summary["weighting"] == "uniform" and privacy["sampling_rate"] == 1.0
    assert math.isclose(privacy["epsilon"], epsilon(0.8, 1.0, 2, 1e-5), rel_tol=1e-9)
    assert f"epsilon {privacy['epsilon']:.3f}" in stdout
    assert (out / "accuracy.png").stat().st_size > 1000
    log = (out / "aggregators.log").read_text()
    assert "rank 1 exited with status -9; stopping the others" in log       # the broken session ended
    assert "served 1 round" in log                                          # the second session served


@pytest.mark.timeout(600)
def test_capped_dp_fedavg_and_local_dp_sgd_print_the_accountants_epsilons(tmp_path):
    """--weighting capped under --dp: weights min(n_k, cap) / (cap D), D = q sum_k min(n_k / cap, 1)
    from the partition sizes; the noise is calibrated to one client's reach C'(r) / (r D). With
    local DP-SGD (Opacus) each client reports the accountant's example-level epsilon over all the
    steps it has taken (q = 1 / ceil(n_k / B), ceil(n_k / B) steps per round it took part in)."""
    out = tmp_path / "run"
    done = federated(["--clients", "3", "--rounds", "2", "--mode", "head", "--seq-len", "16", "--partition",
                      "dirichlet", "--fraction-train", "0.5", "--min-clients", "2", "--dp", "--noise-multiplier",
                      "0.8", "--clipping-norm", "1.0", "--weighting", "capped", "--weight-cap", "40",
                      "--local-noise-multiplier", "1.2", "--local-max-grad-norm", "2.0", "--batch-size", "16",
                      "--out", str(out)], tmp_path, 560)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    privacy, rows = summary["privacy"], summary["client_rows"]
    assert summary["weighting"] == privacy["weighting"] == "capped" and privacy["weight_cap"] == 40
    assert [r["used"] for r in summary["rounds_detail"]] == [2, 2] and privacy["sampling_rate"] == 2 / 3
    assert math.isclose(privacy["expected_weight"], 2 / 3 * sum(min(n / 40, 1) for n in rows), rel_tol=1e-12)
    numel = 3 * 384 + 3                 # the head of MiniLM for the built-in set's three labels
    assert math.isclose(privacy["sensitivity"], aggregate_sensitivity(1.0, numel, 16, privacy["expected_weight"], 40),
                        rel_tol=1e-12)
    assert math.isclose(privacy["epsilon"], epsilon(0.8, 2 / 3, 2, 1e-5), rel_tol=1e-9)
    assert f"epsilon {privacy['epsilon']:.3f}" in done.stdout
    rounds_taken, latest = {}, {}
    for info in summary["rounds_detail"]:
        assert sorted(info["local_epsilon"]) == sorted(info["clients"])
        for client in info["clients"]:
            rounds_taken[client] = rounds_taken.get(client, 0) + 1
            per_round = math.ceil(rows[int(client.rsplit("-", 1)[1])] / 16)
            want = epsilon(1.2, 1 / per_round, rounds_taken[client] * per_round, 1e-5)
            assert math.isclose(info["local_epsilon"][client], want, rel_tol=1e-9), (client, info)
            latest[client] = want
    assert summary["local_privacy"]["epsilon"] == pytest.approx(latest, rel=1e-9)
    assert f"local DP-SGD: epsilon up to {max(latest.values()):.3f}" in done.stdout


@pytest.mark.parametrize("args,message", [
    (["--clients", "1"], "--clients must be at least 2"),
    (["--dp", "--clipping-norm", "1"], "exactly one of --noise-multiplier and --target-epsilon"),
    (["--dp", "--noise-multiplier", "1", "--weighting", "examples"], "--dp needs --weighting uniform or capped"),
    (["--dp", "--noise-multiplier", "1", "--secret-counts"], "--secret-counts under --dp needs --weighting capped"),
    (["--weighting", "capped"], "--weighting capped and --weight-cap go together"),
    (["--weight-cap", "10"], "--weighting capped and --weight-cap go together"),
    (["--weighting", "capped", "--weight-cap", "10"], "--weighting capped needs --clipping-norm"),
    (["--weighting", "capped", "--weight-cap", "10", "--aggregation", "plain"],
     "--weighting capped needs --aggregation mpc"),
    (["--weighting", "capped", "--weight-cap", "0", "--clipping-norm", "1"], "--weight-cap must be between 1 and"),
    (["--weighting", "capped", "--weight-cap", "16777216", "--clipping-norm", "100"], "beyond the fixed point's range"),
    (["--local-noise-multiplier", "1"], "--local-noise-multiplier and --local-max-grad-norm go together"),
    (["--local-noise-multiplier", "-1", "--local-max-grad-norm", "1"], "--local-noise-multiplier must be a finite"),
])
def test_bad_options_are_refused_in_one_line(tmp_path, args, message):
    started = time.monotonic()
    assert_refused_in_one_line(federated(args, tmp_path, 120), "federated", message, tmp_path, started)
