"""SecureFedAvg with real aggregator processes (`mpcft launch`, TLS mesh, dealer) against Flower's
own FedAvg arithmetic; dropped, corrupted and missing clients; an aggregator killed mid-run."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from mpcft.federated.strategy import REPLY_KEY, AggregatorError, Aggregators, SecureFedAvg
from mpcft.federated.updates import Round, UpdateSpec, seal_update
from mpcft.runtime import tls
from mpcft.runtime.local import free_ports

CLIENTS, TIMEOUT = 5, 60
SHAPES = {"head.weight": (3, 16), "head.bias": (3,), "lora.a": (4, 16)}


class Nodes(Grid):
    """Flower's Grid as far as a strategy's sampling asks it: which nodes are connected."""

    def __init__(self, count):
        self.nodes = list(range(1, count + 1))

    def get_node_ids(self):
        return self.nodes

    run = property(lambda self: None)
    set_run = create_message = push_messages = pull_messages = send_and_receive = None


@pytest.fixture()
def cluster(tmp_path, monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)    # what Flower sets in a ServerApp's process
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    certs = tls.make_certs(tmp_path / "certs", 2, dealer=True, owners=[f"client-{k}" for k in range(CLIENTS)])
    tls.make_cert(tls.load_ca(tls.default_ca_dir(certs)), "flower-server", certs)
    ports = free_ports(2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpcft.cli", "launch", "-n", "2", "--dealer", "--certs", str(certs), "--timeout",
         str(TIMEOUT), "-m", "mpcft.federated.aggregator", "--listen", ",".join(f"127.0.0.1:{p}" for p in ports),
         "--server-timeout", str(TIMEOUT)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    links = Aggregators.connect([("127.0.0.1", p) for p in ports], certs, timeout=TIMEOUT, connect_timeout=90)
    yield certs, links, proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def global_arrays(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g, dtype=torch.float64) * 0.1 for n, s in SHAPES.items()}


def replies(strategy, messages, certs, arrays, counts, broken=()):
    """Each client k trains to arrays + u_k (u_k random, norm ~1) on counts[k] examples."""
    config = messages[0].content["config"]
    spec = UpdateSpec.of({n: v.numpy() for n, v in arrays.items()})
    round_ = Round(config["mpcft-federation"], config["server-round"], spec, config["mpcft-secret-counts"],
                   config["mpcft-frac-bits"])
    out, plain = [], []
    strategy.updates = {}
    for k, msg in enumerate(messages):
        if k in broken and broken[k] == "error":
            out.append(Message(Error(code=0, reason="client crashed"), reply_to=msg))
            continue
        g = torch.Generator().manual_seed(100 + k)
        update = {n: torch.randn(s, generator=g, dtype=torch.float64) * (k + 1) * 0.05 for n, s in SHAPES.items()}
        sealed = seal_update(update, counts[k], round_, f"client-{k}", certs, 2)
        if broken.get(k) == "corrupt":
            sealed[1] = sealed[1][:-5] + bytes(5)
        out.append(Message(RecordDict({REPLY_KEY: ConfigRecord({"client": f"client-{k}", "sealed": sealed}),
                                       "metrics": MetricRecord({"num-examples": counts[k], "train_loss": 1.0})}),
                           reply_to=msg))
        if k not in broken:
            strategy.updates[k] = update
            trained = {n: arrays[n] + update[n] for n in SHAPES}
            plain.append(RecordDict({"arrays": ArrayRecord(trained), "metrics": MetricRecord({"num-examples": counts[k]})}))
    return out, aggregate_arrayrecords(plain, "num-examples")


def round_trip(strategy, certs, server_round, counts, broken={}):
    arrays = global_arrays(server_round)
    messages = list(strategy.configure_train(server_round, ArrayRecord(dict(arrays)),
                                             ConfigRecord(), Nodes(CLIENTS)))
    out, fedavg = replies(strategy, messages, certs, arrays, counts, broken)
    new, metrics = strategy.aggregate_train(server_round, out)
    return new, fedavg, metrics


@pytest.mark.timeout(300)
def test_secure_fedavg_equals_flower_fedavg_and_survives_client_faults(cluster):
    certs, links, proc = cluster
    counts = [10, 200, 35, 1, 64]
    public = SecureFedAvg(links, min_clients=2, fraction_evaluate=0.0, min_train_nodes=CLIENTS,
                          min_available_nodes=CLIENTS)
    new, fedavg, metrics = round_trip(public, certs, 1, counts)
    for name in SHAPES:            # Flower's FedAvg keeps float32 arrays; the shares give 2^-16
        assert np.abs(new[name].numpy() - fedavg[name].numpy()).max() < 1e-4
    assert metrics["clients"] == CLIENTS

    secret = SecureFedAvg(links, secret_counts=True, min_clients=2, fraction_evaluate=0.0,
                          min_train_nodes=CLIENTS, min_available_nodes=CLIENTS)
    new, fedavg, _ = round_trip(secret, certs, 1, counts)
    for name in SHAPES:
        assert np.abs(new[name].numpy() - fedavg[name].numpy()).max() < 1e-3

    # clipped in MPC (values clamped to [-C, C], then norms): as the same clipping in plaintext
    clip = 1.0
    clipped = SecureFedAvg(links, clipping_norm=clip, min_clients=2, fraction_evaluate=0.0,
                           min_train_nodes=CLIENTS, min_available_nodes=CLIENTS)
    new, _, _ = round_trip(clipped, certs, 1, counts)
    flat = {k: torch.cat([u[n].clamp(-clip, clip).reshape(-1) for n in sorted(SHAPES)]) for k, u in clipped.updates.items()}
    factors = {k: min(1.0, clip / float(v.norm())) for k, v in flat.items()}
    assert min(factors.values()) < 0.5 and max(factors.values()) == 1.0
    for name in SHAPES:
        want = global_arrays(1)[name] + sum(counts[k] / sum(counts) * factors[k] * clipped.updates[k][name].clamp(-clip, clip)
                                            for k in range(CLIENTS))
        assert np.abs(new[name].numpy() - want.numpy()).max() < 1e-3

    # capped weights (McMahan et al. 2018) with secret n_k: min(n_k, cap) / (cap D), the same clipping
    capped = SecureFedAvg(links, weighting="capped", weight_cap=50, expected_weight=3.5, secret_counts=True,
                          clipping_norm=clip, min_clients=2, fraction_evaluate=0.0, min_train_nodes=CLIENTS,
                          min_available_nodes=CLIENTS)
    new, _, _ = round_trip(capped, certs, 1, counts)
    for name in SHAPES:
        want = global_arrays(1)[name] + sum(min(counts[k], 50) / (50 * 3.5) * factors[k]
                                            * capped.updates[k][name].clamp(-clip, clip) for k in range(CLIENTS))
        assert np.abs(new[name].numpy() - want.numpy()).max() < 1e-3

    # a crashed client and a corrupted part: the round completes with the other three
    new, fedavg, metrics = round_trip(public, certs, 2, counts, {1: "error", 3: "corrupt"})
    assert metrics["clients"] == 3
    assert "client-3" in public.history[-1]["rejected"] and public.history[-1]["failed"] == 1
    for name in SHAPES:
        assert np.abs(new[name].numpy() - fedavg[name].numpy()).max() < 1e-4

    # fewer usable updates than min_clients: the round is skipped, the global model kept
    strict = SecureFedAvg(links, min_clients=5, fraction_evaluate=0.0, min_train_nodes=CLIENTS,
                          min_available_nodes=CLIENTS)
    new, _, _ = round_trip(strict, certs, 3, counts, {0: "error"})
    assert new is None and "fewer than the minimum 5" in strict.history[-1]["skipped"]

    # an aggregator killed: the server's next round fails within the timeout, naming it,
    # and the launcher stops the other parties and the dealer
    os.kill(int(_rank_pid(proc.pid, "1")), signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(AggregatorError, match="aggregator"):
        round_trip(public, certs, 4, counts)
    assert time.monotonic() - started < TIMEOUT + 10
    assert proc.wait(TIMEOUT + 10) != 0


def _rank_pid(launcher_pid, rank):
    """pid of the `mpcft party ... --rank RANK ... mpcft.federated.aggregator` process."""
    for entry in os.listdir("/proc"):
        try:
            args = open(f"/proc/{entry}/cmdline", "rb").read().decode().split("\0")
        except (OSError, ValueError):
            continue
        if "mpcft.federated.aggregator" in args and "--rank" in args and args[args.index("--rank") + 1] == rank:
            return entry
    raise AssertionError(f"no party of rank {rank} found")
