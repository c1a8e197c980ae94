"""Soak: a long 3-party `mpcft finetune` run over TLS (Financial PhraseBank, several epochs) with
each process's resident memory, open files and threads sampled every 10 s, to show they stay
flat: growth after warm-up is (median of the last 10 % of samples) / (median of the samples
just after warm-up) - 1, per process, and under 5 % is the bar.

    python -m benchmarks.soak --minutes 60            # the figures in RESULTS.md

The run is stopped (SIGTERM: every process exits) when the time is up if it has not finished.
"""
import argparse
import json
import os
import pathlib
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


def growth(values: list, warmup: int) -> float:
    """Median of the last 10 % over the median of the 10 % after warm-up, minus one."""
    after = values[warmup:]
    if len(after) < 10:
        return float("nan")
    tenth = max(1, len(after) // 10)
    return statistics.median(after[-tenth:]) / statistics.median(after[:tenth]) - 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to run (default 60)")
    parser.add_argument("--warmup-minutes", type=float, default=5.0, help="samples ignored at the start (default 5)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--train", default=str(PHRASEBANK), help="training file (default: Financial PhraseBank)")
    parser.add_argument("--out", default=None, help="folder for the samples (default: a temporary one)")
    args = parser.parse_args(argv)
    if not pathlib.Path(args.train).is_file():
        print(f"benchmarks.soak: {args.train} not found (../shared/data beside the checkout)", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="mpcft-soak-"))
    command = [sys.executable, "-m", "mpcft.cli", "finetune", "--parties", "3", "--train", args.train,
               "--mode", "lora", "--seq-len", "64", "--epochs", "20", "--checkpoint-every", "100",
               "--out", str(out / "run")]
    launcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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
    (out / "samples.json").write_text(json.dumps(samples))
    warmup = int(args.warmup_minutes * 60 / args.interval)
    minutes = (time.monotonic() - started) / 60
    print(f"soak: {minutes:.0f} min of 3-party LoRA fine-tuning over TLS on {pathlib.Path(args.train).name}, "
          f"{'finished' if finished else 'stopped at the time limit'} (exit {status}); samples every "
          f"{args.interval:g} s, growth measured after {args.warmup_minutes:g} min; samples in {out / 'samples.json'}")
    print("\n| process | samples | RSS after warm-up | RSS at end | RSS growth | open files (min-max) | "
          "threads (min-max) |")
    print("|---|---|---|---|---|---|---|")
    for label in sorted(samples):
        points = samples[label]
        rss = [p["rss_mb"] for p in points]
        tenth = max(1, len(rss[warmup:]) // 10)
        files, threads = [p["files"] for p in points[warmup:]], [p["threads"] for p in points[warmup:]]
        if not files:
            continue
        print(f"| {label} | {len(points)} | {statistics.median(rss[warmup:warmup + tenth]):.0f} MB | "
              f"{statistics.median(rss[-tenth:]):.0f} MB | {100 * growth(rss, warmup):+.1f} % | "
              f"{min(files)}-{max(files)} | {min(threads)}-{max(threads)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
