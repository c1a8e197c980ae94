"""Time on LAN, metro and WAN links predicted from loopback measurements, and a check of that
model on bandwidth-shaped links between network namespaces.

    python -m benchmarks.wan [--parties 2] [--repeat 2] [--only multiply lora ...]
                             [--validate RATE_MBIT ...] [--validate-repeat 1]

Model, for a link of rate B bit/s and round-trip time RTT:

    predicted s = loopback s + rounds x RTT + 8 x ON_LINK x busiest-direction bytes / B

- loopback s stands for the compute: it is the measured loopback time itself (max over parties
  of the median run), so it also holds the loopback transfer (TLS encryption and copies, which
  a real link needs too) and the waits of one party for another's compute; nothing is
  subtracted.
- rounds: the protocol's communication rounds; each costs one RTT (a dealer request-reply is a
  full round trip; an exchange, where both ends send at once, needs one one-way latency, so
  the term is an upper estimate for exchanges and ignores TCP slow start after idle).
- bytes: every host (party or dealer) sits on its own full-duplex link of rate B. The busiest
  direction of any host's link sets the transfer time: party p sends its wire bytes to peers
  plus its dealer requests, and receives its peers' wire bytes plus the dealer's replies
  (`dealer_bytes_received`); the dealer sends the sum of all replies. Inter-party and dealer
  traffic into one party share that party's link, so they add up there.
- ON_LINK: what crosses the link per byte of payload: mpcft's AES-GCM records (256 KiB + 20
  bytes; mpcft.runtime.records) in TCP segments of 1448 bytes that take 1514 bytes on
  Ethernet (TCP with timestamps, IPv4, Ethernet headers; MTU 1500). ACKs on the reverse
  direction are not counted.

What the model leaves out: it adds compute and transfer, where a run overlaps some of them
(faster than predicted where compute is a large share); and it lets each link carry its bytes
whenever it is free, where a dealer reply that the protocol waits for (a step's first ones,
as in the bare multiply, whose step asks for them as it starts) holds up the round after it
(slower than predicted).

Validation (--validate, root and iproute2 with tc): the parties and the dealer each on a host
of benchmarks.netns.Hosts, every link shaped to the same rate both ways (tc tbf,
Hosts.shape), started as on separate machines (`mpcft party --config cluster.toml --rank R
-m benchmarks.wan_party WORKLOAD ...` and `mpcft dealer`); the measured step beside the
model's prediction from the loopback row, with the namespaces' RTT measured over TCP.
"""
import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from benchmarks.netns import Hosts, HostsUnavailable
from benchmarks.timing import markdown_table
from mpcft.runtime import Counts
from mpcft.runtime.records import RECORD_BYTES, RECORD_OVERHEAD


@dataclasses.dataclass(frozen=True)
class Link:
    rate_mbit: float
    rtt_ms: float


LINKS = {  # the link profiles of the table
    "LAN": Link(rate_mbit=10_000, rtt_ms=0.2),
    "metro": Link(rate_mbit=1_000, rtt_ms=5.0),
    "WAN": Link(rate_mbit=100, rtt_ms=20.0),
}
ON_LINK = (RECORD_BYTES + RECORD_OVERHEAD) / RECORD_BYTES * 1514 / 1448  # per payload byte: records, TCP/IP, Ethernet


def busiest_direction_bytes(counts: list) -> int:
    """Payload bytes on the busiest direction of any host's link, for one run whose counts by
    party are `counts` (mpcft.runtime.Counts): party p sends wire_bytes_sent + dealer_bytes_sent
    and receives wire_bytes_received + dealer_bytes_received; the dealer receives every
    party's dealer_bytes_sent and sends every party's dealer_bytes_received."""
    directions = [c.wire_bytes_sent + c.dealer_bytes_sent for c in counts]
    directions += [c.wire_bytes_received + c.dealer_bytes_received for c in counts]
    directions += [sum(c.dealer_bytes_sent for c in counts), sum(c.dealer_bytes_received for c in counts)]
    return max(directions)


def predicted_seconds(loopback_s: float, rounds: int, link_bytes: int, link: Link) -> float:
    """The model (module docstring): loopback s + rounds x RTT + 8 x ON_LINK x bytes / rate."""
    return loopback_s + rounds * link.rtt_ms / 1e3 + 8 * ON_LINK * link_bytes / (link.rate_mbit * 1e6)


@dataclasses.dataclass
class Measured:
    """One workload's run: seconds (max over parties of the median) and the last run's counts by party."""
    seconds: float
    counts: list

    @property
    def rounds(self) -> int:
        return max(c.rounds for c in self.counts)

    @property
    def link_bytes(self) -> int:
        return busiest_direction_bytes(self.counts)

    def predict(self, link: Link) -> float:
        return predicted_seconds(self.seconds, self.rounds, self.link_bytes, link)


def _multiply(session, repeat):
    from benchmarks import bench_arithmetic
    return bench_arithmetic.party(session, "multiply 10^6", repeat)


def _matmul(session, repeat):
    from benchmarks import bench_arithmetic
    return bench_arithmetic.party(session, "matmul 1024x1024 @ 1024x1024", repeat)


def _softmax(session, repeat):
    from benchmarks import bench_nonlinear
    return bench_nonlinear.party(session, "softmax", repeat)


def _block(session, repeat):
    from benchmarks import bench_block
    return bench_block.party_block(session, bench_block.block_model(), repeat)


def _lora_step(session, repeat):
    from benchmarks import bench_block
    from mpcft.encoder import default_model_path, load_encoder, quiet_transformers
    quiet_transformers()
    _, encoder = load_encoder(default_model_path())
    return bench_block.party_step(session, encoder, "lora", 1, repeat)


WORKLOADS = {  # key: (table name, party function of the harness; its result starts with seconds, ends with Counts)
    "multiply": ("multiply 10^6", _multiply),
    "matmul": ("matmul 1024x1024 @ 1024x1024", _matmul),
    "softmax": ("softmax 8x12x128x128", _softmax),
    "block": ("BERT block 256/4 heads, seq 64, batch 4 (fwd+bwd)", _block),
    "lora": ("MiniLM LoRA step, 1 MPC layer, batch 8, seq 64", _lora_step),
}


def run_workload(session, key: str, repeat: int):
    """At one party: workload `key`'s harness (its warm-up steps, `repeat` measured
    runs); returns (median seconds, the last run's Counts)."""
    result = WORKLOADS[key][1](session, repeat)
    return result[0], result[-1]


def on_loopback(key: str, parties: int, repeat: int) -> Measured:
    """`key` between spawned party processes on loopback (mutual TLS, dealer at one thread)."""
    from mpcft.protocols.correlations import CorrelationDealer
    from mpcft.runtime import spawn
    results = spawn(run_workload, parties, key, repeat, dealer_handler=CorrelationDealer,
                    dealer_threads=1, timeout=3600)
    return Measured(max(seconds for seconds, _ in results), [counts for _, counts in results])


ECHO_SERVER = """
import socket, sys
server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
connection, _ = server.accept()
connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while byte := connection.recv(1):
    connection.sendall(byte)
"""
ECHO_CLIENT = """
import socket, statistics, sys, time
for attempt in range(100):
    try:
        connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
        break
    except ConnectionRefusedError:
        time.sleep(0.05)
connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
times = []
for _ in range(int(sys.argv[3])):
    start = time.perf_counter()
    connection.sendall(b"x")
    connection.recv(1)
    times.append(time.perf_counter() - start)
print(statistics.median(times) * 1e3)
"""


def tcp_rtt_ms(hosts: Hosts, client: int, server: int, count: int = 200, port: int = 29600) -> float:
    """Median round trip (ms) of one byte over TCP from host `client` to host `server` and back:
    what a protocol message sees (ping is not installed everywhere)."""
    echo = hosts.popen(server, [sys.executable, "-c", ECHO_SERVER, str(port)])
    try:
        out = subprocess.run(hosts.command(client, [sys.executable, "-c", ECHO_CLIENT, hosts.addresses[server],
                                                    str(port), str(count)]),
                             capture_output=True, text=True, timeout=60, check=True).stdout
    finally:
        echo.kill()
        echo.wait()
    return float(out)


@dataclasses.dataclass
class ShapedRun:
    rate_mbit: float
    rtt_ms: float
    measured: Measured


def on_shaped_hosts(key: str, parties: int, repeat: int, rate_mbit: float, folder: pathlib.Path,
                    timeout: float = 1800) -> ShapedRun:
    """`key` with party r on host r and the dealer on host `parties`, every host's link shaped
    to `rate_mbit` both ways, each process started as on its own machine (mpcft party / mpcft
    dealer with a cluster file and certificates)."""
    from mpcft.runtime import local_cluster
    repo = pathlib.Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    with Hosts(parties + 1, tag=f"mpwan{os.getpid() % 10000}") as hosts:
        _, config = local_cluster(folder, parties, dealer=True, hosts=hosts.addresses, ports=[29500] * (parties + 1),
                                  timeout=600, connect_timeout=120)
        for host in range(parties + 1):
            hosts.shape(host, rate_mbit)
        rtt_ms = tcp_rtt_ms(hosts, 0, 1)
        cli = [sys.executable, "-m", "mpcft.cli"]
        outputs = [folder / f"party-{r}.json" for r in range(parties)]
        procs = [hosts.popen(r, cli + ["party", "--config", str(config), "--rank", str(r), "-m",
                                       "benchmarks.wan_party", key, "--repeat", str(repeat), "--out", str(outputs[r])],
                             cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for r in range(parties)]
        procs.append(hosts.popen(parties, cli + ["dealer", "--config", str(config), "--threads", "1"],
                                 cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        deadline, failures = time.monotonic() + timeout, []
        for name, proc in zip([f"party {r}" for r in range(parties)] + ["dealer"], procs):
            try:
                out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                out = proc.communicate()[0] + f"\n[killed after {timeout:g} s]"
            if proc.returncode != 0:
                failures.append(f"{name} (status {proc.returncode}):\n{out[-3000:]}")
        if failures:
            raise RuntimeError(f"the shaped run of {key} at {rate_mbit} Mbit/s failed:\n" + "\n".join(failures))
    results = [json.loads(path.read_text()) for path in outputs]
    measured = Measured(max(r["seconds"] for r in results), [Counts(**r["counts"]) for r in results])
    return ShapedRun(rate_mbit, rtt_ms, measured)


def table(rows: dict) -> str:
    """Markdown table of {(key, parties): Measured}, predictions for every profile of LINKS."""
    header = ["workload", "parties", "rounds", "MB/party", "dealer MB/party", "busiest link MB", "loopback s"]
    header += [f"{name} s ({link.rate_mbit:g} Mbit/s, {link.rtt_ms:g} ms)" for name, link in LINKS.items()]
    body = []
    for (key, parties), m in rows.items():
        body.append([WORKLOADS[key][0], parties, m.rounds, f"{max(c.bytes_sent for c in m.counts) / 1e6:.1f}",
                     f"{max(c.dealer_bytes_received for c in m.counts) / 1e6:.1f}", f"{m.link_bytes / 1e6:.1f}",
                     f"{m.seconds:.2f}"] + [f"{m.predict(link):.2f}" for link in LINKS.values()])
    return markdown_table(header, body)


def validation_table(loopback: Measured, runs: list) -> str:
    """Markdown table: each shaped run beside the prediction from the `loopback` measurement."""
    body = []
    for run in runs:
        predicted = loopback.predict(Link(run.rate_mbit, run.rtt_ms))
        body.append([f"{run.rate_mbit:g}", f"{run.rtt_ms:.3f}", f"{run.measured.link_bytes / 1e6:.1f}",
                     f"{run.measured.seconds:.2f}", f"{predicted:.2f}", f"{run.measured.seconds / predicted:.2f}"])
    return markdown_table(["rate Mbit/s", "TCP RTT ms", "busiest link MB", "measured s", "predicted s",
                           "measured / predicted"], body)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parties", type=int, nargs="+", default=[2])
    parser.add_argument("--repeat", type=int, default=2, help="measured runs per workload on loopback (default 2)")
    parser.add_argument("--only", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS),
                        help="workloads of the table (default: all)")
    parser.add_argument("--validate", type=float, nargs="*", default=[], metavar="RATE_MBIT",
                        help="also run one workload on links shaped to each rate (root, iproute2 with tc)")
    parser.add_argument("--validate-workload", choices=list(WORKLOADS), default="lora")
    parser.add_argument("--validate-repeat", type=int, default=1, help="measured runs per shaped rate (default 1)")
    args = parser.parse_args(argv)
    if any(rate <= 0 for rate in args.validate):
        parser.error("--validate rates must be positive (Mbit/s)")
    keys = list(dict.fromkeys(args.only + ([args.validate_workload] if args.validate else [])))
    rows = {}
    for key in keys:
        for parties in args.parties:
            rows[key, parties] = on_loopback(key, parties, args.repeat)
            m = rows[key, parties]
            print(f"{key}, {parties} parties: {m.seconds:.2f} s, {m.rounds} rounds, busiest link "
                  f"{m.link_bytes / 1e6:.1f} MB", flush=True)
    print(f"\nPredicted s = loopback s + rounds x RTT + 8 x {ON_LINK:.4f} x busiest link MB / rate, every host "
          "(parties, dealer) on its own full-duplex link. Loopback s stands for compute: it is the measured loopback "
          "time itself (max over parties of the median run), loopback transfer and waits included. MB/party: "
          "payload a party sends (max over parties); dealer MB/party: the dealer's replies to the party that "
          "receives most (each party receives the corrections of its own run, about 1/n); busiest link MB: payload on the "
          f"busiest direction of any host's link (a party's peer and dealer traffic in, or the dealer's out); "
          f"{ON_LINK:.4f}: AES-GCM records, TCP/IP and Ethernet headers per payload byte.\n")
    print(table({k: v for k, v in rows.items() if k[0] in args.only}))
    for parties in args.parties if args.validate else []:
        runs = []
        with tempfile.TemporaryDirectory(prefix="mpcft-wan-") as tmp:
            for rate in args.validate:
                try:
                    run = on_shaped_hosts(args.validate_workload, parties, args.validate_repeat, rate,
                                          pathlib.Path(tmp) / f"rate-{rate:g}")
                except HostsUnavailable as exc:
                    print(f"benchmarks.wan: cannot shape links here: {exc}", file=sys.stderr)
                    return 2
                runs.append(run)
                print(f"shaped {rate:g} Mbit/s: {run.measured.seconds:.2f} s (RTT {run.rtt_ms:.3f} ms)", flush=True)
        loopback = rows[args.validate_workload, parties]
        print(f"\nValidation: {WORKLOADS[args.validate_workload][0]}, {parties} parties, each party and the dealer "
              f"in its own network namespace, every link shaped both ways (tc tbf), median of "
              f"{args.validate_repeat} after a warm-up; predicted from the loopback row ({loopback.seconds:.2f} s, "
              f"{loopback.rounds} rounds) and the RTT measured over TCP between the parties' namespaces.\n")
        print(validation_table(loopback, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
