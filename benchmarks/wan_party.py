"""One party of a benchmarks.wan workload, run as on its own host:

    mpcft party --config cluster.toml --rank R -m benchmarks.wan_party WORKLOAD --repeat N --out FILE

Runs the workload's harness (its warm-up, then N measured runs) in the session `mpcft party`
set up, and writes {"seconds": median seconds, "counts": the last run's Counts} as JSON to FILE.
"""
import argparse
import dataclasses
import json
import pathlib

from benchmarks.wan import WORKLOADS, run_workload
from mpcft.runtime import init


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=list(WORKLOADS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    args = parser.parse_args(argv)
    with init() as session:
        seconds, counts = run_workload(session, args.workload, args.repeat)
    args.out.write_text(json.dumps({"seconds": seconds, "counts": dataclasses.asdict(counts)}))
    print(f"party {session.rank}: {args.workload} {seconds:.3f} s, {counts.bytes_sent} B sent, "
          f"{counts.rounds} rounds", flush=True)


if __name__ == "__main__":
    main()
