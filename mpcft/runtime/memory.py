"""Process memory tuning for large share tensors: one home for the allocator's settings.

Protocols allocate and free many multi-megabyte temporaries. glibc serves blocks above its mmap
threshold (128 kB, rising by itself to at most 32 MB) with fresh mappings, returned to the OS on
free, so every operation pays a page fault per 4 KiB touched: measured here, `1 - 2*x` on 10^6
int64 took 8.2 ms instead of 1.1 ms. Blocks up to MMAP_THRESHOLD come from the heap and up to
TRIM_THRESHOLD of freed heap is kept. Library code never applies them: the CLI calls
keep_freed_memory() for its own process, and the launchers start parties and dealers with
HEAP_ENVIRONMENT, which glibc reads at start (elsewhere both are inert).
"""
import ctypes
import ctypes.util

MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 1 << 31
HEAP_ENVIRONMENT = (("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD)),
                    ("MALLOC_TRIM_THRESHOLD_", str(TRIM_THRESHOLD)))

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """The thresholds above for the calling process (glibc's mallopt); True if applied."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
