"""Secret-shared multiply and matmul between real party processes on loopback (mutual TLS).

    python -m benchmarks.bench_arithmetic [--parties 2 3] [--repeat 5] [--plaintext] [--offline]

One compute thread per party (as CrypTen gets in bench_side_by_side). Per operation: median
wall time of the whole protocol (Beaver exchange + truncation, dealer requests included; after
warm-up steps, each run a step that asks the dealer ahead, timing.measure_steps),
payload bytes each party sends, rounds, and max error against float64 torch; beside the
plaintext float64 torch time in the same run. CrypTen is measured beside mpcft in the same run
by benchmarks.bench_side_by_side.

--offline adds the online phase alone: the same runs with every correlation generated ahead
(protocols.sources.write_offline, from the plan of a run with the dealer) and read from each
party's file (FileCorrelations), so neither the dealer's work nor its corrections' transfer
share the parties' time, as preprocessing-model tools report an online phase.
"""
import argparse
import os
import tempfile

import torch

from benchmarks.timing import error_cell, markdown_table, measure_steps, median_seconds, one_compute_thread
from mpcft.protocols.context import MPCContext
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.protocols.sources import DealerCorrelations, FileCorrelations, RecordingCorrelations, write_offline
from mpcft.runtime import spawn
from mpcft.tensor import SharedTensor

WIDE = 1024   # the wide multiply's operands: uniform in [-WIDE, WIDE)

OPERATIONS = {  # name: (shape of x, shape of y, operation, operand bound: None for N(0, 1))
    "multiply 10^6": ((1_000_000,), (1_000_000,), lambda x, y: x * y, None),
    f"multiply 10^6, x and y in [-{WIDE}, {WIDE})": ((1_000_000,), (1_000_000,), lambda x, y: x * y, WIDE),
    "matmul 128x768 @ 768x768": ((128, 768), (768, 768), lambda x, y: x @ y, None),
    "matmul 1024x1024 @ 1024x1024": ((1024, 1024), (1024, 1024), lambda x, y: x @ y, None),
}


def operands(name):
    """The public benchmark operands (not secret): N(0, 1), or uniform in [-bound, bound)."""
    shape_x, shape_y, _, bound = OPERATIONS[name]
    gen = torch.Generator().manual_seed(0)
    if bound is None:
        return tuple(torch.randn(shape, generator=gen, dtype=torch.float64) for shape in (shape_x, shape_y))
    return tuple((torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound for shape in (shape_x, shape_y))


def off_by_more_than_one(got: torch.Tensor, expected: torch.Tensor) -> int:
    """How many results miss by more than 1.0: a truncation that failed, not fixed-point rounding."""
    return int(((got - expected).abs() > 1).sum())


def party(session, name, repeat, correlations=None):
    """Median seconds, bytes sent, rounds, max error, how many results miss by more than 1, and
    Counts of `repeat` runs after the warm-up steps (correlations: the context's source,
    default the dealer)."""
    one_compute_thread()
    ctx = MPCContext(session, correlations=correlations)
    x, y = operands(name)
    op = OPERATIONS[name][2]
    X = SharedTensor.from_plain(ctx, x if ctx.rank == 0 else None, 0, shape=x.shape)
    Y = SharedTensor.from_plain(ctx, y if ctx.rank == session.world_size - 1 else None,
                                session.world_size - 1, shape=y.shape)
    seconds, counts, Z = measure_steps(session, ctx, lambda: op(X, Y), repeat)
    got, expected = Z.reveal(), op(x, y)
    error = (got - expected).abs().max().item()
    return seconds, counts.bytes_sent, counts.rounds, error, off_by_more_than_one(got, expected), counts


def party_with_plan(session, name, repeat):
    """party() with the dealer, and the plan of the correlations it asked for (for --offline)."""
    recording = RecordingCorrelations(DealerCorrelations(session))
    return party(session, name, repeat, recording), recording.plan


def party_from_files(session, name, repeat, directory):
    """party() with this party's correlations read from write_offline's file in `directory`."""
    rank = session.rank
    return party(session, name, repeat, FileCorrelations(os.path.join(directory, f"party-{rank}.corr"), rank))


def online_seconds(name, parties, repeat, tls, plan) -> float:
    """The slowest party's median of party() with every correlation of `plan` generated ahead."""
    with tempfile.TemporaryDirectory(prefix="mpcft-offline-") as directory:
        write_offline(plan, parties, directory)
        return max(r[0] for r in spawn(party_from_files, parties, name, repeat, directory, tls=tls, timeout=600))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parties", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--plaintext", action="store_true",
                        help="INSECURE plaintext channels (to compare with engines that have no TLS)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--offline", action="store_true",
                        help="also time the online phase alone, correlations generated ahead into files")
    args = parser.parse_args()
    rows = []
    for name in OPERATIONS:
        x, y = operands(name)
        torch.set_num_threads(1)
        plain = median_seconds(lambda: OPERATIONS[name][2](x, y), args.repeat)
        for n in args.parties:
            results, plans = zip(*spawn(party_with_plan, n, name, args.repeat, dealer_handler=CorrelationDealer,
                                        dealer_threads=1, tls=not args.plaintext, timeout=600))
            seconds = max(r[0] for r in results)
            sent = max(r[1] for r in results)
            rounds = results[0][2]
            error = error_cell(max(r[3] for r in results), results[0][4])
            rows.append([name, n, f"{seconds:.4f}", f"{sent / 1e6:.2f}", rounds, error, f"{plain:.4f}"])
            if args.offline:
                rows[-1].insert(3, f"{online_seconds(name, n, args.repeat, not args.plaintext, plans[0]):.4f}")
            print(rows[-1], flush=True)
    print(f"\nchannels: {'PLAINTEXT (insecure)' if args.plaintext else 'mutual TLS 1.3'}\n")
    online = ["online s (correlations from files)"] if args.offline else []
    print(markdown_table(["operation", "parties", "mpcft s"] + online
                         + ["MB sent/party", "rounds", "max error", "plaintext torch s"], rows))


if __name__ == "__main__":
    main()
