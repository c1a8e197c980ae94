"""Loopback transport benchmark: throughput, CPU per byte and round-trip latency, TLS vs plaintext.

    python -m benchmarks.bench_transport [--runs 5]

Two processes (`mpcft.runtime.spawn`). Throughput: party 0 sends one int64 tensor of the given
size, party 1 answers with 8 bytes once it holds all of it; GB/s = size / time (1 GB = 1e9 B).
CPU: both processes' CPU time (all threads: encryption, the reader thread, the kernel's socket
work) over the measured runs of 16 MB frames (protocol messages are of that order), in ms per
100 MB moved. Latency: round trip of an 8-byte tensor. Receivers state the dtype and shape they
expect, as protocol steps do (frames are then read straight into place). Medians over the
runs; prints a markdown table.
"""
import argparse
import statistics
import time

import torch

from mpcft.runtime import spawn

SIZES_MB = (1, 16, 200)
CPU_MB = 16


def measure(session, runs, pings):
    peer = 1 - session.rank
    ack = torch.zeros(1, dtype=torch.int64)
    acked = dict(dtype=torch.int64, shape=ack.shape)
    throughput = {}
    for mb in SIZES_MB:
        data = torch.zeros(mb * 1_000_000 // 8, dtype=torch.int64)
        times = []
        for run in range(runs + 1):               # first run warms up
            if run == 1:
                cpu = time.process_time()
            start = time.perf_counter()
            if session.rank == 0:
                session.send(peer, data)
                session.recv(peer, **acked)
            else:
                session.recv(peer, dtype=data.dtype, shape=data.shape)
                session.send(peer, ack)
            times.append(time.perf_counter() - start)
        throughput[mb] = data.nbytes / statistics.median(times[1:]) / 1e9
        if mb == CPU_MB:
            cpu_per_100mb = (time.process_time() - cpu) / (runs * data.nbytes) * 1e8 * 1e3
    rtts = []
    for _ in range(pings):
        start = time.perf_counter()
        if session.rank == 0:
            session.send(peer, ack)
            session.recv(peer, **acked)
        else:
            session.recv(peer, **acked)
            session.send(peer, ack)
        rtts.append(time.perf_counter() - start)
    return throughput, cpu_per_100mb, statistics.median(rtts) * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per size (median)")
    parser.add_argument("--pings", type=int, default=200, help="round trips for the latency (median)")
    args = parser.parse_args()
    rows = []
    for tls in (True, False):
        results = spawn(measure, 2, args.runs, args.pings, tls=tls, timeout=600)
        (throughput, _, rtt), cpu = results[0], sum(r[1] for r in results)
        rows.append(("mutual TLS 1.3, AES-GCM records" if tls else "plaintext (--insecure-plaintext)",
                     throughput, cpu, rtt))
    print("| transport | " + " | ".join(f"{mb} MB (GB/s)" for mb in SIZES_MB)
          + f" | CPU ms per 100 MB ({CPU_MB} MB frames, both ends) | 8 B round trip (µs) |")
    print("|---|" + "---:|" * (len(SIZES_MB) + 2))
    for name, throughput, cpu, rtt in rows:
        print(f"| {name} | " + " | ".join(f"{throughput[mb]:.2f}" for mb in SIZES_MB)
              + f" | {cpu:.1f} | {rtt:.0f} |")


if __name__ == "__main__":
    main()
