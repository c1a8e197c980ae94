"""Parties as real processes over loopback TCP with mutual TLS: spawn, mpcft party, mpcft launch."""
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

import runtime_helpers as helpers
from mpcft.runtime import PartyFailed, local_cluster, spawn
from mpcft.runtime.dealer import echo_handler
from mpcft.runtime.errors import PEER_FAILED_STATUS
from mpcft.runtime.local import PARTY_ENVIRONMENT

PROGRAM = str(pathlib.Path(__file__).with_name("party_program.py"))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pathlib.Path(__file__).parent)] + sys.path))


@pytest.fixture(autouse=True)
def no_leftover_processes():
    yield
    deadline = time.monotonic() + 5
    while helpers.leftover_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert helpers.leftover_processes() == {}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3, 5])
def test_all_to_all_between_processes(n):
    results = spawn(helpers.all_to_all, n, 1000, timeout=90)
    for r, res in enumerate(results):
        assert res["ok"] and res["gathered"] == list(range(n)) and res["rounds"] == 2
        assert res["bytes_sent"] == res["bytes_received"] == (n - 1) * (8000 + 4)
        assert all(res["seeds"][p] == results[p]["seeds"][r] for p in res["seeds"])


@pytest.mark.timeout(120)
def test_200_mb_both_ways_at_once_over_tls():
    count = 25_000_000
    results = spawn(helpers.big_exchange, 2, count, timeout=100)
    for ok, dtype, received in results:
        assert ok and str(dtype) == "torch.int64" and received == 8 * count


@pytest.mark.timeout(120)
def test_dealer_between_processes():
    results = spawn(helpers.dealer_checks, 3, dealer_handler=echo_handler, timeout=90)
    for rank, (ping, rand_ok, requests) in enumerate(results):
        assert ping == [[rank, 0], [1, 2, 3]] and rand_ok and requests == 2


@pytest.mark.timeout(120)
def test_failing_rank_is_named_and_all_are_stopped():
    start = time.monotonic()
    with pytest.raises(PartyFailed, match="rank 1 failed: ValueError: rank one is unhappy"):
        spawn(helpers.raise_on_rank_one, 3, timeout=90)
    assert time.monotonic() - start < 30


ECHO = "mpcft.runtime.dealer:echo_handler"


def start_party(config_path, rank, *args):
    return subprocess.Popen([sys.executable, "-m", "mpcft.cli", "party", "--config",
                             str(config_path), "--rank", str(rank), PROGRAM, *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_dealer(config_path):
    return subprocess.Popen([sys.executable, "-m", "mpcft.cli", "dealer", "--config",
                             str(config_path), "--handler", ECHO], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(procs, timeout):
    outputs = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
                p.communicate()
            raise
        outputs[name] = (proc.returncode, out, err)
    return outputs


@pytest.mark.timeout(120)
def test_party_killed_mid_exchange_every_survivor_errors_within_timeout(tmp_path):
    config, path = local_cluster(tmp_path, 4, timeout=8, connect_timeout=40)
    procs = {r: start_party(path, r, "kill", "2") for r in range(4)}
    exited, deadline = {}, time.monotonic() + 60
    while len(exited) < 4 and time.monotonic() < deadline:
        for rank, proc in procs.items():
            if rank not in exited and proc.poll() is not None:
                exited[rank] = time.time()
        time.sleep(0.02)
    outputs = finish(procs, 5)
    assert outputs[2][0] == -9
    killed_at = float(outputs[2][1].split("KILLING ", 1)[1])
    for rank in (0, 1, 3):
        code, out, err = outputs[rank]
        assert code == PEER_FAILED_STATUS, err
        assert f"mpcft party {rank}: PeerError:" in err and "party " in err, err
        assert exited[rank] - killed_at < config.timeout


@pytest.mark.timeout(120)
def test_start_in_reverse_order_with_dealer(tmp_path):
    config, path = local_cluster(tmp_path, 3, dealer=True, timeout=30, connect_timeout=40)
    procs = {}
    for rank in (2, 1, 0):
        procs[rank] = start_party(path, rank, "exchange")
        time.sleep(1.0)
    procs["dealer"] = start_dealer(path)
    outputs = finish(procs, 90)
    for rank in range(3):
        code, out, err = outputs[rank]
        assert code == 0, err
        result = json.loads(out.split("RESULT ", 1)[1])
        assert result["ok"] and result["gathered"] == [0, 7, 14]
        assert result["ping"] == [[rank, 0], [rank]] and result["rounds"] == 2
    assert outputs["dealer"][0] == 0, outputs["dealer"][2]


def run_cli(*args, timeout=90):
    return subprocess.run([sys.executable, "-m", "mpcft.cli", *args], env=ENV, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.timeout(120)
def test_launch_with_dealer_prefixes_output_and_sets_rank(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(pathlib.Path(PROGRAM).read_text())
    done = run_cli("launch", "-n", "3", "--dealer", "--handler", ECHO, str(script), "exchange")
    assert done.returncode == 0, done.stdout + done.stderr
    for rank in range(3):
        line = next(l for l in done.stdout.splitlines() if l.startswith(f"[rank {rank}] RESULT"))
        result = json.loads(line.split("RESULT ", 1)[1])
        assert result["rank"] == rank and result["ok"] and result["ping"] == [[rank, 0], [rank]]
    assert helpers.processes_mentioning(str(script)) == []


@pytest.mark.timeout(240)
def test_launch_stops_everybody_when_one_rank_dies(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(pathlib.Path(PROGRAM).read_text())
    start = time.monotonic()
    done = run_cli("launch", "-n", "3", "--timeout", "120", "--insecure-plaintext", str(script),
                   "kill", "1")
    assert done.returncode != 0
    assert time.monotonic() - start < 90        # well before the survivors' 120 s timeout (start-up included)
    assert "stopping the others" in done.stdout
    assert "WITHOUT TLS" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr     # the survivors stop with one line
    assert helpers.processes_mentioning(str(script)) == []


@pytest.mark.timeout(60)
def test_certs_command_writes_ca_party_and_dealer_certificates(tmp_path):
    done = run_cli("certs", "--out", str(tmp_path / "c"), "-n", "2", "--dealer", "--host", "10.0.0.7")
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["ca.pem", "dealer-key.pem", "dealer.pem", "party-0-key.pem",
                     "party-0.pem", "party-1-key.pem", "party-1.pem"]
    from cryptography import x509
    cert = x509.load_pem_x509_certificate((tmp_path / "c" / "party-1.pem").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=party-1"
    assert "10.0.0.7" in str(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName))


@pytest.mark.timeout(120)
def test_party_processes_get_passive_openmp_workers_and_heap_thresholds_and_the_caller_keeps_its_environment():
    """Spinning OpenMP workers of one party would steal the cores the others need; mmap()ed
    share buffers would fault in on every use (runtime/memory.py). spawn sets neither in the
    caller's environment, and leaves a variable the caller set as it is."""
    before = dict(os.environ)
    wanted = {name: os.environ.get(name, value) for name, value in PARTY_ENVIRONMENT}
    assert wanted["OMP_WAIT_POLICY"] == "PASSIVE"
    assert spawn(helpers.party_environment, 2, timeout=90) == [wanted, wanted]
    assert dict(os.environ) == before


@pytest.mark.timeout(120)
def test_the_dealer_computes_at_its_thread_count_in_the_threads_that_serve_parties():
    """Numba's thread count is per thread: a dealer set to one thread must not run its kernels on more."""
    counts = spawn(helpers.dealer_thread_counts, 2, dealer_handler=helpers.thread_count_handler, dealer_threads=1,
                   timeout=90)
    assert counts == [[1, 1], [1, 1]]


@pytest.mark.timeout(120)
def test_processes_that_delivered_their_results_exit_by_themselves(tmp_path):
    """spawn kills only what is still running after EXIT_GRACE: a party whose exit takes 0.5 s
    (its finalizers, such as the resource tracker's) ends in order, not killed halfway."""
    assert spawn(helpers.slow_exit, 2, str(tmp_path), timeout=90) == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exited-0", "exited-1"]


@pytest.mark.timeout(120)
def test_a_session_knows_its_cluster_config():
    assert spawn(helpers.own_key, 2, timeout=90) == [("party-0-key.pem", True), ("party-1-key.pem", True)]
