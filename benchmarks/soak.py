"""Soak: a long 3-party `mpcft finetune` run over TLS (Financial PhraseBank, several epochs) with
each process's resident memory, open files and threads sampled every 10 s, to show they stay
flat: growth after warm-up is (median of the second half of the samples after warm-up) /
(median of the first half) - 1, per process, and under 5 % is the bar. Halves, not the first
and last tenths: a process whose memory swings (the dealer's prefetched answers, up to 1 GiB
ahead) would otherwise be judged by the phase of its swing at two moments; the tenths' figure
and the range after warm-up are printed beside it.

    python -m benchmarks.soak --minutes 60 --max-train 400    # the figures in RESULTS.md

`--max-train` keeps the epochs short enough that an hour covers several of them (each epoch
is a new pass of the schedule and of the dealer's prefetch plan); the progress reached (step,
epoch) is read from party 0's progress bar in OUT/launcher.log.

The run is stopped (SIGTERM: every process exits) when the time is up if it has not finished.
"""
import argparse
import json
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.faults import children

PHRASEBANK = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "financial_phrasebank" \
    / "sentences_allagree.csv"


def roles(pid):
    """{pid: "rank R" or "dealer"} of the launcher's processes."""
    found = {}
    for child, cmd in children(pid).items():
        words = cmd.split()
        found[child] = "dealer" if "dealer" in words else f"rank {words[words.index('--rank') + 1]}"
    return found


def sample(pid) -> dict | None:
    """RSS (MB), open files and threads of process `pid`; None once it has gone."""
    try:
        status = (pathlib.Path("/proc") / str(pid) / "status").read_text()
        files = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "files": files, "threads": int(fields["Threads"])}


def growth(values: list, warmup: int, part: int = 2) -> float:
    """Median of the last 1/part of the samples after warm-up over the median of the first
    1/part, minus one (part 2: the halves, the bar's figure; 10: the tenths)."""
    after = values[warmup:]
    if len(after) < 10:
        return float("nan")
    share = max(1, len(after) // part)
    return statistics.median(after[-share:]) / statistics.median(after[:share]) - 1


def reached(log: pathlib.Path, epochs: int) -> str:
    """"step K of N (E epochs)" from the last progress-bar update in the launcher's log."""
    updates = re.findall(r"(\d+)/(\d+) \[", log.read_text(errors="replace"))
    if not updates:
        return "no training step reached"
    step, total = map(int, updates[-1])
    return f"step {step} of {total} ({step * epochs / total:.1f} of {epochs} epochs)"


def print_table(samples: dict, warmup: int) -> None:
    """The soak's table: per process, RSS growth and ranges, open files and threads."""
    print("\n| process | samples | RSS after warm-up | RSS at end | RSS growth (halves) | growth (tenths) | "
          "RSS range after warm-up | open files (min-max) | threads (min-max) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label in sorted(samples):
        points = samples[label]
        rss = [p["rss_mb"] for p in points]
        tenth = max(1, len(rss[warmup:]) // 10)
        files, threads = [p["files"] for p in points[warmup:]], [p["threads"] for p in points[warmup:]]
        if not files:
            continue
        print(f"| {label} | {len(points)} | {statistics.median(rss[warmup:warmup + tenth]):.0f} MB | "
              f"{statistics.median(rss[-tenth:]):.0f} MB | {100 * growth(rss, warmup):+.1f} % | "
              f"{100 * growth(rss, warmup, 10):+.1f} % | {min(rss[warmup:]):.0f}-{max(rss[warmup:]):.0f} MB | "
              f"{min(files)}-{max(files)} | {min(threads)}-{max(threads)} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to run (default 60)")
    parser.add_argument("--warmup-minutes", type=float, default=5.0, help="samples ignored at the start (default 5)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--train", default=str(PHRASEBANK), help="training file (default: Financial PhraseBank)")
    parser.add_argument("--max-train", type=int, default=400,
                        help="training examples (0: the whole file; default 400, several epochs an hour)")
    parser.add_argument("--epochs", type=int, default=50, help="passes over them (default 50)")
    parser.add_argument("--out", default=None, help="folder for the samples (default: a temporary one)")
    parser.add_argument("--table", metavar="SAMPLES", default=None,
                        help="only print the table of an earlier run's samples.json")
    args = parser.parse_args(argv)
    if args.table:
        print_table(json.loads(pathlib.Path(args.table).read_text()), int(args.warmup_minutes * 60 / args.interval))
        return 0
    if not pathlib.Path(args.train).is_file():
        print(f"benchmarks.soak: {args.train} not found (../shared/data beside the checkout)", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="mpcft-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mpcft.cli", "finetune", "--parties", "3", "--train", args.train,
               "--mode", "lora", "--seq-len", "64", "--epochs", str(args.epochs), "--max-train", str(args.max_train),
               "--checkpoint-every", "100", "--out", str(out / "run")]
    log = open(out / "launcher.log", "w")
    launcher = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    started, samples = time.monotonic(), {}
    while launcher.poll() is None and time.monotonic() - started < args.minutes * 60:
        for pid, label in roles(launcher.pid).items():
            if (point := sample(pid)) is not None:
                samples.setdefault(label, []).append(dict(point, t=round(time.monotonic() - started, 1)))
        time.sleep(args.interval)
    finished = launcher.poll() is not None
    if not finished:
        launcher.send_signal(signal.SIGTERM)
    status = launcher.wait(60)
    log.close()
    (out / "samples.json").write_text(json.dumps(samples))
    warmup = int(args.warmup_minutes * 60 / args.interval)
    minutes = (time.monotonic() - started) / 60
    print(f"soak: {minutes:.0f} min of 3-party LoRA fine-tuning over TLS on {pathlib.Path(args.train).name}, "
          f"{'finished' if finished else 'stopped at the time limit'} (exit {status}); samples every "
          f"{args.interval:g} s, growth measured after {args.warmup_minutes:g} min; samples in {out / 'samples.json'}")
    print(f"progress: {reached(out / 'launcher.log', args.epochs)}")
    print_table(samples, warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
