"""A Transformer block's forward + backward with 2 to 5 parties, opening all-to-all or through kings.

    python -m benchmarks.bench_parties [--parties 2 3 4 5] [--opening all king] [--repeat 2]

The block and inputs of bench_block (BERT, hidden 256, 4 heads, seq 64, batch 4, every weight
trained), in processes over loopback TCP with mutual TLS, one compute thread per party, the
dealer at one thread, a warm-up run first. "all": each party sends every share it opens to the
n-1 others, (n-1) N elements per opening; "king" (MPCContext(opening="king")): reduce-scatter
then all-gather, 2 (n-1) ceil(N / n) elements and twice the rounds. So total traffic of all
parties grows as n (n-1) against 2 (n-1): king / all -> 2 / n.
"""
import argparse

from benchmarks import bench_block
from benchmarks.bench_block import block_model
from benchmarks.timing import markdown_table
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.protocols.cost import OPENINGS
from mpcft.runtime import spawn


def party_block(session, model, opening, repeat):
    """bench_block's party_block with the context's opening mode: (median s, bytes sent, rounds)."""
    return bench_block.party_block(session, model, repeat, opening)[:3]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parties", type=int, nargs="+", default=[2, 3, 4, 5])
    parser.add_argument("--opening", nargs="+", choices=OPENINGS, default=list(OPENINGS))
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if min(args.parties) < 2 or args.repeat < 1:
        parser.error("--parties takes counts of at least 2, --repeat at least 1")
    model = block_model()
    rows = []
    for n in args.parties:
        runs = {}
        for opening in args.opening:
            runs[opening] = spawn(party_block, n, model, opening, args.repeat, dealer_handler=CorrelationDealer,
                                  dealer_threads=1, timeout=3600)
            print(n, opening, runs[opening], flush=True)
        total = {opening: sum(sent for _, sent, _ in results) for opening, results in runs.items()}
        for opening, results in runs.items():
            ratio = opening == "king" and "all" in total
            rows.append([n, opening, f"{max(s for s, _, _ in results):.2f}",
                         f"{max(sent for _, sent, _ in results) / 1e6:.1f}", f"{total[opening] / 1e6:.1f}",
                         results[0][2], f"{total['king'] / total['all']:.3f}" if ratio else "",
                         f"{2 / n:.3f}" if ratio else ""])
    print()
    print(markdown_table(["parties", "opening", "s", "MB sent/party", "total MB (all parties)", "rounds",
                          "total king / total all", "2/n"], rows))

if __name__ == "__main__":
    main()
