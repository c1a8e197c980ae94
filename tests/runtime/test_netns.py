"""Multi-host run: parties and dealer in separate network namespaces, joined by a bridge.

Each process gets its own namespace with one veth interface (10.231.0.x/24) plugged into a
bridge that lives in a further namespace, so nothing outside the test's namespaces changes.
The same program runs through `mpcft party` / `mpcft dealer` with the usual cluster file.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from mpcft.runtime import local_cluster

PROGRAM = str(pathlib.Path(__file__).with_name("party_program.py"))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pathlib.Path(__file__).parent)] + sys.path))


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def namespaces():
    """Names of three namespaces (party 0, party 1, dealer) with addresses 10.231.0.1-3."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    tag = f"mpcft{os.getpid() % 100000}"
    switch, hosts = f"{tag}-sw", [f"{tag}-h{i}" for i in range(3)]
    created = []
    try:
        try:
            ip("netns", "add", switch)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"`ip netns add` failed: {exc.stderr.decode().strip()}")
        created.append(switch)
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        for i, host in enumerate(hosts):
            ip("netns", "add", host)
            created.append(host)
            ip("-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", f"port{i}",
               "netns", switch)
            ip("-n", host, "addr", "add", f"10.231.0.{i + 1}/24", "dev", "eth0")
            ip("-n", host, "link", "set", "eth0", "up")
            ip("-n", host, "link", "set", "lo", "up")
            ip("-n", switch, "link", "set", f"port{i}", "master", "br0")
            ip("-n", switch, "link", "set", f"port{i}", "up")
        yield hosts
    finally:
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


@pytest.mark.timeout(120)
def test_parties_in_separate_network_namespaces(tmp_path, namespaces):
    addresses = ["10.231.0.1", "10.231.0.2", "10.231.0.3"]
    config, path = local_cluster(tmp_path, 2, dealer=True, hosts=addresses,
                                 ports=[29500, 29500, 29400], timeout=30, connect_timeout=40)
    base = [sys.executable, "-m", "mpcft.cli"]
    commands = [base + ["party", "--config", str(path), "--rank", str(r), PROGRAM, "exchange"]
                for r in range(2)] + [base + ["dealer", "--config", str(path),
                                                "--handler", "mpcft.runtime.dealer:echo_handler"]]
    procs = [subprocess.Popen(["ip", "netns", "exec", ns] + command, env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for ns, command in zip(namespaces, commands)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=90))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for rank in range(2):
        assert procs[rank].returncode == 0, outputs[rank][1]
        result = json.loads(outputs[rank][0].split("RESULT ", 1)[1])
        assert result["ok"] and result["gathered"] == [0, 7]
        assert result["ping"] == [[rank, 0], [rank]]
    assert procs[2].returncode == 0, outputs[2][1]
    # the parties really are on separate hosts: party 0's address is not local to party 1
    local = subprocess.run(["ip", "netns", "exec", namespaces[1], "ip", "-o", "addr"],
                           capture_output=True, text=True, timeout=20).stdout
    assert "10.231.0.2" in local and "10.231.0.1" not in local
