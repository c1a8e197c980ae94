"""mpcft and CrypTen 0.4.1 side by side, both measured in this run, alternately per workload.

    python -m benchmarks.bench_side_by_side [--parties 2 3] [--repeat 3] [--plaintext]
        [--only multiply multiply-wide matmul softmax block] [--crypten-venv DIR] [--crypten-compat DIR]

mpcft: the party functions of bench_arithmetic (multiply 10^6 of N(0, 1) operands and of
operands uniform in [-1024, 1024), matmul 1024^3), bench_nonlinear
(softmax on 8x12x128x128 logits in [-15, 15]) and bench_block (a BERT block's forward +
backward, every weight trained) under `spawn`, dealer at one thread, each measured run after
two warm-up runs (CrypTen's too) and in a step that asks the dealer ahead for its correlations
(as training runs), mutual TLS unless --plaintext: the slowest party's median seconds, the most
payload bytes a party sends, party 0's rounds, and each engine's max error against float64
torch, with how many results miss by more than 1 where any do (the wide multiply: CrypTen's
truncation fails where the shares' sum wraps around the ring). CrypTen:
benchmarks.bench_crypten.crypten_figures (its own counts of bytes and rounds, see that
module); the CrypTen columns stay empty, after one line saying why, where CrypTen is not
installed. For each workload and party count the two run one
after the other, mpcft first on even rows and CrypTen first on odd ones, so that the machine's
load falls on both. Speed-up: CrypTen seconds / mpcft seconds.
"""
import argparse
import os

from benchmarks import bench_arithmetic, bench_block, bench_nonlinear
from benchmarks.bench_crypten import WORKLOADS, CryptenRunFailed, crypten_figures, locate_crypten
from benchmarks.timing import error_cell, markdown_table
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import spawn

# the arithmetic workloads: bench_crypten names each as bench_arithmetic.OPERATIONS does
ARITHMETIC = {workload: WORKLOADS[workload] for workload in ("multiply", "multiply-wide", "matmul")}


def mpcft_figures(workload, parties, repeat, tls) -> dict:
    """seconds (slowest party's median), bytes_per_party (most payload bytes a party sends),
    rounds (party 0's), max_error (None for the block, whose harness checks none) and, for the
    arithmetic, off_by_more_than_one (how many results miss by more than 1; else None)."""
    options = dict(dealer_handler=CorrelationDealer, dealer_threads=1, tls=tls)
    if workload in ARITHMETIC:
        results = spawn(bench_arithmetic.party, parties, ARITHMETIC[workload], repeat, timeout=600, **options)
    elif workload == "softmax":
        results = spawn(bench_nonlinear.party, parties, "softmax", repeat, timeout=1200, **options)
    else:
        results = spawn(bench_block.party_block, parties, bench_block.block_model(), repeat, timeout=1800, **options)
    return {"seconds": max(r[0] for r in results), "bytes_per_party": max(r[1] for r in results),
            "rounds": results[0][2], "max_error": None if workload == "block" else max(r[3] for r in results),
            "off_by_more_than_one": results[0][4] if workload in ARITHMETIC else None}


def crypten_cells(workload, parties, repeat, args):
    """CrypTen's four cells (seconds, MB a party, rounds, error) and its seconds (None when
    absent or failed)."""
    try:
        figures = crypten_figures(workload, parties, repeat, args.crypten_venv, args.crypten_compat)
    except CryptenRunFailed as failure:
        print(f"CrypTen failed: {failure}", flush=True)
        return ["failed"] * 4, None
    if figures is None:
        return ["-"] * 4, None
    print(f"  CrypTen {workload}, {parties} parties: {figures}", flush=True)
    return [f"{figures['seconds']:.3f}", f"{figures['bytes_per_party'] / 1e6:.1f}", figures["rounds"],
            error_cell(figures["max_error"], figures["off_by_more_than_one"])], figures["seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parties", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plaintext", action="store_true",
                        help="INSECURE plaintext channels for mpcft (CrypTen's gloo has no TLS)")
    parser.add_argument("--only", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--crypten-venv", help="CrypTen's virtual environment (see benchmarks.bench_crypten)")
    parser.add_argument("--crypten-compat", help="directory of crypten_compat.py (see benchmarks.bench_crypten)")
    args = parser.parse_args()
    if min(args.parties) < 2 or args.repeat < 1:
        parser.error("each --parties count must be at least 2 and --repeat at least 1")
    crypten = locate_crypten(args.crypten_venv, args.crypten_compat)
    load_before = os.getloadavg()
    rows = []
    for workload in args.only:
        for n in args.parties:
            if len(rows) % 2:
                crypten_row, crypten_seconds = crypten_cells(workload, n, args.repeat, args)
                mpcft = mpcft_figures(workload, n, args.repeat, tls=not args.plaintext)
            else:
                mpcft = mpcft_figures(workload, n, args.repeat, tls=not args.plaintext)
                crypten_row, crypten_seconds = crypten_cells(workload, n, args.repeat, args)
            print(f"  mpcft {workload}, {n} parties: {mpcft}", flush=True)
            speed_up = f"{crypten_seconds / mpcft['seconds']:.1f}x" if crypten_seconds else "-"
            rows.append([WORKLOADS[workload], n, f"{mpcft['seconds']:.3f}", f"{mpcft['bytes_per_party'] / 1e6:.1f}",
                         mpcft["rounds"], error_cell(mpcft["max_error"], mpcft["off_by_more_than_one"]),
                         *crypten_row, speed_up])
    crypten_setup = (f"CrypTen {crypten.version}: TTP provider, gloo over loopback TCP (no TLS), bytes and "
                     f"rounds as CrypTen counts them (see benchmarks/bench_crypten.py)" if crypten else
                     "CrypTen: not measured")
    print(f"\nmpcft channels: {'PLAINTEXT (insecure)' if args.plaintext else 'mutual TLS 1.3'}; {crypten_setup}; "
          f"one compute thread per party; {os.cpu_count()} CPUs, load average "
          f"{load_before[0]:.1f} before and {os.getloadavg()[0]:.1f} after\n")
    print(markdown_table(["workload", "parties", "mpcft s", "mpcft MB/party", "mpcft rounds", "mpcft max error",
                          "CrypTen s", "CrypTen MB/party", "CrypTen rounds", "CrypTen max error",
                          "speed-up (CrypTen s / mpcft s)"], rows))


if __name__ == "__main__":
    main()
