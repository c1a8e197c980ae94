"""Worker threads for kernels that split work across cores.

The number of threads follows torch.get_num_threads(), so `torch.set_num_threads(1)` (one
compute thread per party) applies to every kernel but Numba's parallel loops, whose count
is per calling thread (set_compute_threads sets both). Pools are cached per size: a resource
cache that holds no data.
"""
from concurrent.futures import ThreadPoolExecutor

import numba
import torch

_POOLS: dict[int, ThreadPoolExecutor] = {}


def num_threads(requested: int | None = None) -> int:
    return max(1, requested or torch.get_num_threads())


def set_compute_threads(threads: int) -> None:
    """torch's threads (process-wide) and the calling thread's Numba threads (thread-local:
    call it again in each thread that runs kernels). For the CLI, launchers and servers;
    Numba first, since starting its OpenMP layer can reset the count torch then uses."""
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    torch.set_num_threads(threads)


def run_parallel(fn, tasks, threads: int) -> None:
    """Apply fn to every task, on `threads` workers (inline when one is enough)."""
    tasks = list(tasks)
    if threads <= 1 or len(tasks) <= 1:
        for task in tasks:
            fn(task)
        return
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="mpcft-kernel")
    list(_POOLS[threads].map(fn, tasks))
