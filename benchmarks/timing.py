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
    """One torch and one Numba thread per party, as in the CrypTen reference figures."""
    import numba
    import torch
    torch.set_num_threads(1)
    numba.set_num_threads(1)


def measure_protocol(session, fn, repeat: int):
    """Run fn() `repeat` times at one party: (median seconds, payload bytes sent and rounds of
    the last run, fn's last result)."""
    times = []
    for _ in range(repeat):
        before = session.comm.snapshot()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        delta = session.comm.snapshot() - before
    return statistics.median(times), delta.bytes_sent, delta.rounds, result
