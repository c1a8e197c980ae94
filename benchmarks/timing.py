"""Timing helpers shared by the benchmark harnesses: medians of repeated runs."""
import statistics
import time

from mpcft.kernels.threads import set_compute_threads


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


def error_cell(max_error: float | None, off_by_more_than_one: int | None = None) -> str:
    """A table's error cell: the max error ("-" if unchecked), and how many results miss by more
    than 1 where any do."""
    if max_error is None:
        return "-"
    return f"{max_error:.2e}" + (f" ({off_by_more_than_one:,} off by > 1)" if off_by_more_than_one else "")


def one_compute_thread() -> None:
    """One torch and one Numba thread per party, as in the CrypTen reference figures."""
    set_compute_threads(1)


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


WARMUP_STEPS = 2    # the first compiles kernels and records the dealer plan; in the second the
                    # dealer already works ahead, as in every later step of a loop


def measure_warm(session, step, repeat: int):
    """measure_counts of step() after WARMUP_STEPS calls that are not timed."""
    for _ in range(WARMUP_STEPS):
        step()
    return measure_counts(session, step, repeat)


def measure_steps(session, ctx, fn, repeat: int, name: str = "step"):
    """measure_warm of fn() run as mpcft's training and evaluation loops run their work: each
    call in `ctx.step(name)`, which asks the dealer for the step's correlations ahead of their
    use (the dealer having computed them during the previous step, where it had no request to
    answer)."""
    def step():
        with ctx.step(name):
            return fn()
    return measure_warm(session, step, repeat)


def measure_protocol(session, fn, repeat: int):
    """Run fn() `repeat` times at one party: (median seconds, payload bytes sent and rounds of
    the last run, fn's last result)."""
    seconds, counts, result = measure_counts(session, fn, repeat)
    return seconds, counts.bytes_sent, counts.rounds, result
