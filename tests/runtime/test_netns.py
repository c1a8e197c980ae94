"""Multi-host run: parties and dealer in separate network namespaces, joined by a bridge.

Each process gets its own namespace with one veth interface (10.231.0.x/24) plugged into a
bridge that lives in a further namespace, so nothing outside the test's namespaces changes.
The same program runs through `mpcft party` / `mpcft dealer` with the usual cluster file.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks.netns import Hosts, HostsUnavailable
from mpcft.runtime import local_cluster

PROGRAM = str(pathlib.Path(__file__).with_name("party_program.py"))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pathlib.Path(__file__).parent)] + sys.path))


@pytest.fixture
def namespaces():
    """Names of three namespaces (party 0, party 1, dealer) with addresses 10.231.0.1-3."""
    try:
        with Hosts(3) as hosts:
            yield hosts.names
    except HostsUnavailable as exc:
        pytest.skip(str(exc))


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
