"""What every fuzz target shares: hypothesis settings, and `case`, which runs one input and
checks the three properties of issue 15 for it.

* Nothing but the project's own error types (and a result) comes out: anything else fails
  the case, and hypothesis shrinks it to a minimal input.
* Nothing hangs: a case that takes longer than CASE_SECONDS fails (receives and handshakes
  run under timeouts and on sockets whose other end is closed, so a hang shows as time).
* Nothing allocates beyond a bound: with `bound=` bytes, the case fails if the memory it
  took went beyond it, measured twice: tracemalloc's peak (Python objects and numpy arrays,
  touched or not) while tracing is on, and the resident set's high-water mark (any memory
  actually used, torch tensors included; Linux: /proc/self/clear_refs resets it per case).

Scale: MPCFT_FUZZ_EXAMPLES (default: each test's CI size, a few hundred), MPCFT_FUZZ_CASE_SECONDS
(default 5), MPCFT_FUZZ_SEED (default: derandomized, the same inputs every run);
`python -m benchmarks.fuzz` runs every target for 10^4 cases and prints the counts.
"""
import collections
import contextlib
import dataclasses
import os
import pathlib
import time
import tracemalloc

from hypothesis import HealthCheck, settings

from mpcft.runtime.errors import MPCRuntimeError

CASE_SECONDS = float(os.environ.get("MPCFT_FUZZ_CASE_SECONDS", "5"))
MIB = 1 << 20
RSS_SLACK = 64 * MIB     # allocator and interpreter noise a case may add to the resident set
_PROC = pathlib.Path("/proc/self")


def fuzz_settings(examples):
    """Hypothesis settings of a fuzz test: `examples` cases in CI, MPCFT_FUZZ_EXAMPLES if set."""
    count = int(os.environ.get("MPCFT_FUZZ_EXAMPLES", examples))
    seeded = "MPCFT_FUZZ_SEED" in os.environ
    return settings(max_examples=count, deadline=None, database=None, derandomize=not seeded,
                    suppress_health_check=list(HealthCheck), print_blob=True)


@dataclasses.dataclass
class Stats:
    """What one target saw: cases run, their outcomes, the slowest case and the most memory."""
    cases: int = 0
    crashes: int = 0
    hangs: int = 0
    over_bound: int = 0
    slowest: float = 0.0
    peak_traced: int = 0        # bytes above the case's start, tracemalloc (if `traced`)
    traced: bool = False        # some case ran with tracemalloc on
    peak_rss: int = 0           # bytes above the case's start, resident set high-water mark
    outcomes: collections.Counter = dataclasses.field(default_factory=collections.Counter)


STATS = collections.defaultdict(Stats)


def _status_bytes(field):
    try:
        for line in (_PROC / "status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_rss_peak():
    """Reset the resident set's high-water mark to the current RSS; False where not possible."""
    try:
        (_PROC / "clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Outcome:
    """What a case ended with: `error` (a project error) or None; set when the case ends."""
    error = None


@contextlib.contextmanager
def case(target, allowed=(MPCRuntimeError,), bound=None):
    """Run one fuzz input of `target` in the with-block: an `allowed` exception (which must
    say something) is a refusal, any other a crash; too slow is a hang; with `bound`, more
    memory than that is a failure. Counts everything in STATS[target]."""
    stats, outcome = STATS[target], Outcome()
    stats.cases += 1
    tracing = tracemalloc.is_tracing()
    stats.traced |= tracing
    if tracing:
        tracemalloc.reset_peak()
        traced_start = tracemalloc.get_traced_memory()[0]
    rss_start = _status_bytes("VmRSS:") if _reset_rss_peak() else None
    start = time.monotonic()
    try:
        yield outcome
        stats.outcomes["accepted"] += 1
    except allowed as exc:
        outcome.error = exc
        stats.outcomes[type(exc).__name__] += 1
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
    except BaseException:
        stats.crashes += 1
        raise
    finally:
        seconds = time.monotonic() - start
        stats.slowest = max(stats.slowest, seconds)
        traced = tracemalloc.get_traced_memory()[1] - traced_start if tracing else 0
        peak = _status_bytes("VmHWM:") if rss_start is not None else None
        rss = max(0, peak - rss_start) if peak is not None else 0
        stats.peak_traced, stats.peak_rss = max(stats.peak_traced, traced), max(stats.peak_rss, rss)
    if seconds > CASE_SECONDS:
        stats.hangs += 1
        raise AssertionError(f"{target}: a case took {seconds:.1f} s (limit {CASE_SECONDS:g} s)")
    if bound is not None and (traced > bound or rss > bound + RSS_SLACK):
        stats.over_bound += 1
        raise AssertionError(f"{target}: a case took {traced} traced / {rss} resident bytes, "
                             f"bound {bound}")


@contextlib.contextmanager
def tracing():
    """tracemalloc on for the block (if it was off), so `case` measures traced peaks."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        yield
    finally:
        if started:
            tracemalloc.stop()
