"""The README's deployment form, as a user runs it on several hosts (here all on loopback):
Flower's own SuperLink, SuperNodes and `flwr run` with the app `mpcft flower-app` writes, and
the aggregators as `mpcft party ... -m mpcft.federated.aggregator` plus `mpcft dealer`. In the
second round one client's SuperNode (with its ClientApp process) is killed with SIGKILL while
it trains: the round completes with the other two within the round's timeout."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mpcft.data.files import BUILTIN_LABELS, builtin_dataset
from mpcft.runtime.local import free_ports, local_cluster

CLIENTS = 3
VICTIM = CLIENTS - 1          # the client killed in round 2 (it holds more rows, so it trains for longer)
TIMEOUT = 50                  # seconds a round may take (the run config's timeout)
BIN = os.path.dirname(sys.executable)


def start(command, log, env, cwd):
    return subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True)


def write_csv(path, texts, labels):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["sentence", "label"]] + [[t, BUILTIN_LABELS[l]] for t, l in zip(texts, labels)])


@pytest.mark.skipif(shutil.which("flower-superlink", path=BIN) is None, reason="Flower's CLI is not installed")
@pytest.mark.timeout(900)
def test_flower_deployment_with_mpcft_aggregators_and_a_client_killed_mid_round(tmp_path):
    mpcft = [sys.executable, "-m", "mpcft.cli"]
    env = dict(os.environ, FLWR_HOME=str(tmp_path / "flwr-home"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    certs = tmp_path / "certs"
    owners = sum((["--owner", f"client-{k}"] for k in range(CLIENTS)), [])
    subprocess.run(mpcft + ["certs", "--out", str(certs), "-n", "2", "--dealer", "--flower-server", *owners],
                   check=True, capture_output=True)
    _, cluster = local_cluster(tmp_path, 2, dealer=True, certs=certs)
    texts, labels, _ = builtin_dataset(size=390)
    for k in range(CLIENTS):
        extra = slice(90, 390 if k == VICTIM else 90)
        write_csv(tmp_path / f"client-{k}.csv", texts[k:60:CLIENTS] + texts[extra],
                  labels[k:60:CLIENTS] + labels[extra])
    write_csv(tmp_path / "test.csv", texts[60:90], labels[60:90])
    listen = free_ports(2)
    link, *nodes = free_ports(1 + CLIENTS)
    procs = []
    try:
        procs.append(start(mpcft + ["dealer", "--config", str(cluster)], tmp_path / "dealer.log", env, tmp_path))
        for rank in range(2):
            procs.append(start(mpcft + ["party", "--config", str(cluster), "--rank", str(rank), "-m",
                                        "mpcft.federated.aggregator", "--listen", f"127.0.0.1:{listen[rank]}",
                                        "--server-timeout", "300"], tmp_path / f"aggregator-{rank}.log", env, tmp_path))
        procs.append(start([f"{BIN}/flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                            "--port", str(link)], tmp_path / "superlink.log", env, tmp_path))
        for k in range(CLIENTS):
            config = f'client="client-{k}" train="{tmp_path / f"client-{k}.csv"}" certs="{certs}"'
            procs.append(start([f"{BIN}/flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
                                "--node-config", config, "--port", str(nodes[k])], tmp_path / f"node-{k}.log",
                               env, tmp_path))
        (tmp_path / "flwr-home").mkdir()
        (tmp_path / "flwr-home" / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
        settings = {"aggregators": f"127.0.0.1:{listen[0]},127.0.0.1:{listen[1]}", "certs": str(certs),
                    "num-server-rounds": "2", "mode": "head", "seq-len": "16", "min-clients": str(CLIENTS - 1),
                    "min-available-clients": str(CLIENTS), "clipping-norm": "5.0", "timeout": str(TIMEOUT),
                    "test": str(tmp_path / "test.csv"), "out": str(tmp_path / "out")}
        subprocess.run(mpcft + ["flower-app", "--out", str(tmp_path / "app")]
                       + sum((["--set", f"{k}={v}"] for k, v in settings.items()), []),
                       check=True, capture_output=True, env=env)
        time.sleep(3)
        run = subprocess.Popen([f"{BIN}/flwr", "run", str(tmp_path / "app"), "--stream"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path, start_new_session=True)
        procs.append(run)
        victim, training = tmp_path / f"node-{VICTIM}.log", f"client-{VICTIM}: round 2: training"
        deadline = time.monotonic() + 400
        while training not in victim.read_text() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert training in victim.read_text(), victim.read_text()[-3000:]
        os.killpg(procs[4 + VICTIM].pid, signal.SIGKILL)         # the SuperNode and its ClientApp process
        killed = time.monotonic()
        assert "Sent successfully" not in victim.read_text().split(training)[1]   # killed before it replied
        output, _ = run.communicate(timeout=TIMEOUT + 120)
        logs = "".join(p.read_text() for p in sorted(tmp_path.glob("*.log")))
        assert run.returncode == 0, output[-3000:] + logs[-3000:]
        assert time.monotonic() - killed < TIMEOUT + 60              # the round's timeout bounds the wait
        assert "round 1: 3 clients aggregated" in output and "round 2: 2 clients aggregated" in output, output[-3000:]
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert len(summary["accuracy"]) == 3 and summary["accuracy"][1] > summary["accuracy"][0]
        assert [(r["sampled"], r["used"]) for r in summary["rounds_detail"]] == [(CLIENTS, CLIENTS), (CLIENTS, 2)]
        assert [sorted(r["clients"]) for r in summary["rounds_detail"]] == \
            [[f"client-{k}" for k in range(CLIENTS)], ["client-0", "client-1"]]
        for rank in range(2):
            assert procs[1 + rank].wait(60) == 0
            assert "served 2 rounds" in (tmp_path / f"aggregator-{rank}.log").read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
