"""Process memory tuning (mpcft.runtime.memory): applied by the CLI and the launchers' environment,
never by library code. Each case runs in a fresh interpreter and asks glibc where a 64 MiB block
came from (the change in mallinfo2's hblkhd: bytes in mmap()ed blocks)."""
import ctypes
import os
import subprocess
import sys

import pytest

from mpcft.runtime.local import PARTY_ENVIRONMENT
from mpcft.runtime.memory import HEAP_ENVIRONMENT

try:
    ctypes.CDLL("libc.so.6").mallinfo2
except (OSError, AttributeError):
    pytest.skip("needs glibc 2.33+ (mallinfo2)", allow_module_level=True)

MMAPPED_AFTER_64MIB = """
import ctypes, sys
{setup}
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
before = libc.mallinfo2().hblkhd
block = libc.malloc(64 << 20)
print(libc.mallinfo2().hblkhd - before)
"""


def mmapped_bytes(setup="", **environment):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(environment)
    out = subprocess.run([sys.executable, "-c", MMAPPED_AFTER_64MIB.format(setup=setup)], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout.split()[-1])


def test_glibc_maps_large_blocks_by_default():
    assert mmapped_bytes() >= 64 << 20


def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    setup = "from mpcft.runtime.memory import keep_freed_memory\nassert keep_freed_memory()"
    assert mmapped_bytes(setup) == 0


def test_launchers_environment_serves_large_blocks_from_the_heap():
    assert set(HEAP_ENVIRONMENT) <= set(PARTY_ENVIRONMENT)
    assert mmapped_bytes(**dict(HEAP_ENVIRONMENT)) == 0


LIBRARY_USE = """
import tempfile, threading
from mpcft.runtime import DealerServer, Session, config, local_cluster
DealerServer(config.load(local_cluster(tempfile.mkdtemp(), 2, dealer=True)[1]))
cluster = config.load(local_cluster(tempfile.mkdtemp(), 2)[1])
sessions = {}
threads = [threading.Thread(target=lambda r: sessions.update({r: Session.connect(cluster, r)}), args=(r,))
           for r in range(2)]
for t in threads: t.start()
for t in threads: t.join(60)
assert sorted(sessions) == [0, 1]
"""


def test_library_code_leaves_the_allocator_alone():
    """Sessions and the dealer leave the process's allocator as they found it."""
    assert mmapped_bytes(LIBRARY_USE) >= 64 << 20
