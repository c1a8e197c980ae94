"""Timing helpers shared by the benchmark harnesses: medians of repeated runs."""
import statistics
import time


def median_seconds(fn, repeat: int = 7, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def one_compute_thread() -> None:
    """One torch and one Numba thread per party, as in the CrypTen reference figures. Numba
    first: starting its OpenMP threading layer resets OpenMP's thread count, which torch (and
    mpcft's kernels, through torch.get_num_threads()) would then use instead of one."""
    import numba
    import torch
    numba.set_num_threads(1)
    torch.set_num_threads(1)


def measure_counts(session, fn, repeat: int):
    """Run fn() `repeat` times at one party: (median seconds, the last run's
    mpcft.runtime.Counts (payload and wire bytes, rounds, dealer traffic), fn's last result)."""
    times = []
    for _ in range(repeat):
        before = session.comm.snapshot()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        delta = session.comm.snapshot() - before
    return statistics.median(times), delta.total, result


def measure_protocol(session, fn, repeat: int):
    """Run fn() `repeat` times at one party: (median seconds, payload bytes sent and rounds of
    the last run, fn's last result)."""
    seconds, counts, result = measure_counts(session, fn, repeat)
    return seconds, counts.bytes_sent, counts.rounds, result
