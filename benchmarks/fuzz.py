"""The fuzz targets of tests/fuzz at full size (issue 15): 10^4 hypothesis examples each.

    python -m benchmarks.fuzz [--examples 10000] [--case-seconds 5] [--only NAME ...]

Each target runs in its own process (so that its peak RSS is its own) with the same test
function CI runs, at `--examples` instead of its CI size (MPCFT_FUZZ_EXAMPLES); inputs are
derandomized, the same every run. Prints a markdown table: inputs run (some tests run two
inputs per example), crashes (inputs that raised an exception other than the project's error
types: hypothesis then stops generating and shrinks the first, so any crash ends a target
early, its count including the shrinking), hangs (an input slower than --case-seconds),
inputs over their memory bound, the slowest input, the largest memory one input took above
its start (tracemalloc peak where the target traces, "-" elsewhere; resident set high-water mark), the
process's peak RSS, and seconds.
"""
import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import time
import traceback

from benchmarks.timing import markdown_table

# target name (as tests/fuzz/harness.case counts it) -> (module, test function)
TARGETS = {
    "frames: parser": ("test_frames", "test_parser_refuses_with_frame_errors_only_and_bounded_memory"),
    "frames: socket": ("test_frames", "test_live_reader_fails_its_channel_at_once"),
    "handshake: acceptor": ("test_handshake", "test_acceptor_accepts_valid_hellos_and_refuses_the_rest_in_one_line"),
    "handshake: connecting": ("test_handshake", "test_connecting_side_raises_only_project_errors_on_any_answer"),
    "handshake: seeds": ("test_handshake", "test_seed_agreement_takes_32_byte_seeds_or_fails_at_once"),
    "dealer: requests": ("test_dealer", "test_dealer_answers_or_refuses_every_request_within_its_limit"),
    "cluster TOML": ("test_cluster_toml", "test_cluster_file_is_refused_in_one_line_or_fully_usable"),
    "sealed: envelope": ("test_sealed_files", "test_open_sealed_refuses_every_altered_file"),
    "sealed: owner shares": ("test_sealed_files", "test_owner_files_are_refused_or_load_exactly_what_they_declare"),
    "csv/tsv": ("test_csv", "test_read_labelled_refuses_in_one_line_or_returns_labelled_texts"),
}


def run_one(name):
    """In the child: run target `name`, print its counts as one JSON line."""
    module, function = TARGETS[name]
    test = getattr(importlib.import_module(f"tests.fuzz.{module}"), function)
    from tests.fuzz import harness
    start, failure = time.monotonic(), None
    try:
        test()
    except BaseException as exc:  # noqa: BLE001 - the finding is reported, not raised
        failure = "".join(traceback.format_exception_only(type(exc), exc))[-2000:]
    seconds = time.monotonic() - start
    stats = harness.STATS[name]
    print(json.dumps({"cases": stats.cases, "crashes": stats.crashes, "hangs": stats.hangs,
                      "over_bound": stats.over_bound, "slowest": stats.slowest,
                      "peak_traced": stats.peak_traced if stats.traced else None,
                      "peak_rss": stats.peak_rss,
                      "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "seconds": seconds, "failure": failure, "outcomes": dict(stats.outcomes)}))


def mib(n):
    return f"{n / (1 << 20):.1f}"


def kib(n):
    return "-" if n is None else f"{n / 1024:.0f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--case-seconds", type=float, default=5.0)
    parser.add_argument("--only", nargs="*", choices=sorted(TARGETS), default=None)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        return run_one(args.run)
    env = dict(os.environ, MPCFT_FUZZ_EXAMPLES=str(args.examples),
               MPCFT_FUZZ_CASE_SECONDS=str(args.case_seconds))
    rows, failures = [], []
    for name in args.only or TARGETS:
        done = subprocess.run([sys.executable, "-m", "benchmarks.fuzz", "--run", name], env=env,
                              capture_output=True, text=True)
        try:
            result = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            failures.append(f"{name}: exit {done.returncode}\n{done.stderr[-3000:]}")
            rows.append([name, "-", "died", "-", "-", "-", "-", "-", "-", "-"])
            continue
        if result["failure"]:
            failures.append(f"{name}: {result['failure']}")
        rows.append([name, result["cases"], result["crashes"], result["hangs"], result["over_bound"],
                     f"{result['slowest']:.3f}", kib(result["peak_traced"]), mib(result["peak_rss"]),
                     mib(result["max_rss"]), f"{result['seconds']:.0f}"])
        print(f"{name}: {result['outcomes']}", file=sys.stderr, flush=True)
    print(markdown_table(["target", "inputs", "crashes", "hangs", "over bound", "slowest input s",
                          "peak traced KiB/input", "peak RSS MiB/input", "process max RSS MiB", "s"],
                         rows))
    for failure in failures:
        print("\n" + failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
