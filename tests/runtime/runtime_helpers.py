"""Helpers of the runtime tests: process bookkeeping, functions for `spawn`, hand-made frames
and a fake peer that speaks the wire protocol by hand."""
import os
import pathlib
import struct
import subprocess
import sys
import threading
import time

import torch

from mpcft.runtime import Session, frames, transport


def descendants(pid=None):
    """{pid: (state, cmdline)} of all live descendants of `pid` (default: this process)."""
    pid = pid or os.getpid()
    parents, info = {}, {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parents[int(entry.name)] = int(fields[1])
        info[int(entry.name)] = (fields[0], cmdline)
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = info[child]
                frontier.append(child)
    return found


def leftover_processes():
    """Descendants other than multiprocessing's fork server (zombies included)."""
    return {pid: v for pid, v in descendants().items()
            if "forkserver" not in v[1] and "resource_tracker" not in v[1]}


def processes_mentioning(text):
    """PIDs of processes anywhere whose command line contains `text`."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def all_to_all(session, size):
    """Every party sends a different tensor to every other; returns checks and counters."""
    sent = {p: torch.arange(size, dtype=torch.int64) * (session.rank + 1) + p for p in session.peers}
    got = session.exchange(sent)
    ok = all(torch.equal(got[p], torch.arange(size, dtype=torch.int64) * (p + 1) + session.rank)
             for p in session.peers)
    gathered = session.all_gather(torch.tensor([session.rank], dtype=torch.int32))
    return {"ok": ok, "gathered": [int(t) for t in gathered], "rounds": session.comm.rounds,
            "bytes_sent": session.comm.bytes_sent, "bytes_received": session.comm.bytes_received,
            "seeds": {p: session.pair_seed(p) for p in session.peers}}


def big_exchange(session, count):
    """Both parties send each other `count` int64 at once."""
    other = session.peers[0]
    got = session.exchange({other: torch.full((count,), session.rank + 1, dtype=torch.int64)})
    return bool((got[other] == other + 1).all()), got[other].dtype, session.comm.bytes_received


def dealer_checks(session):
    """A dealer ping and a seed-derived "random" request."""
    from mpcft.runtime.dealer import expand_seed
    import numpy as np
    ping = session.dealer_request("ping", values=[1, 2, 3])
    (rand,) = session.dealer_request("random", shape=[2, 3])
    mine = np.frombuffer(expand_seed(session.dealer_seed, 1, 48), dtype=np.int64).reshape(2, 3)
    return [t.tolist() for t in ping], bool((rand.numpy() == mine).all()), session.comm.dealer_requests


def raise_on_rank_one(session):
    if session.rank == 1:
        raise ValueError("rank one is unhappy")
    return session.recv(1)


def party_environment(session):
    from mpcft.runtime.local import PARTY_ENVIRONMENT
    return {name: os.environ.get(name) for name, _ in PARTY_ENVIRONMENT}


def thread_count_handler(rank, kind, params, seq, seeds):
    """A dealer handler answering with the thread counts it runs at: Numba's (per thread) and torch's."""
    import numba
    return [torch.tensor([numba.get_num_threads(), torch.get_num_threads()])]


def dealer_thread_counts(session):
    return session.dealer_request("threads")[0].tolist()


def slow_exit(session, marker_dir):
    """Returns at once, but exits slowly: a multiprocessing finalizer (run as the process ends,
    as the resource tracker's unregistrations are) writes a marker after 0.5 s."""
    import multiprocessing.util

    def finish():
        time.sleep(0.5)
        (pathlib.Path(marker_dir) / f"exited-{session.rank}").write_text("clean")
    multiprocessing.util.Finalize(None, finish, exitpriority=1)
    return session.rank


def own_key(session):
    """The key file of this party in the cluster file its session connected with."""
    return str(session.config.party(session.rank).key.name), session.config.tls


def connect_all(config):
    """Session.connect for every rank in threads: ({rank: session}, {rank: exception})."""
    sessions, errors = {}, {}

    def run(rank):
        try:
            sessions[rank] = Session.connect(config, rank)
        except Exception as exc:  # noqa: BLE001 - inspected by the tests
            errors[rank] = exc

    threads = [threading.Thread(target=run, args=(r,)) for r in range(config.world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return sessions, errors


def raw_header(frame_type=3, code=6, shape=(), seq=1, nbytes=0, ndim=None, magic=b"MPCF",
               version=1):
    """A frame header with any field values, unchecked (`ndim` defaults to len(shape))."""
    ndim = len(shape) if ndim is None else ndim
    return (struct.pack("!4sBBBBQQ", magic, version, frame_type, code, ndim, seq, nbytes)
            + b"".join(struct.pack("!Q", d) for d in shape))


def frame_bytes(frame_type, tensor, seq):
    """A valid frame carrying `tensor`, as the wire carries it."""
    code, array = frames.as_wire_array(tensor)
    return frames.encode_header(frame_type, code, array.shape, seq, array.nbytes) + array.tobytes()


class BytesSocket:
    """Stands in for a socket in `transport.read_frame`: reads `data`, then end of file."""

    def __init__(self, data):
        self._data, self._pos = memoryview(bytes(data)), 0

    def recv_into(self, view, nbytes):
        n = min(nbytes, len(view), len(self._data) - self._pos)
        view[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


class FakePeer:
    """Party `rank` of a plaintext cluster played by hand: connects to `target` (an Endpoint)
    with the real hello, then sends whatever frames a test wants."""

    def __init__(self, config, rank, target):
        deadline = time.monotonic() + 30
        self.sock = transport.connect(config, config.party(rank), target, None, deadline)
        self.sock.settimeout(30)
        self.name = target.name
        self.send_seq, self.recv_seq = 1, 1

    def send(self, frame_type, tensor):
        self.sock.sendall(frame_bytes(frame_type, tensor, self.send_seq))
        self.send_seq += 1

    def send_raw(self, data):
        self.sock.sendall(data)

    def recv(self):
        frame = transport.read_frame(self.sock, self.name, 1 << 32, self.recv_seq)
        self.recv_seq += 1
        return frame

    def close(self):
        self.sock.close()


def start_python(code, *args):
    """`python -c code args` with this test folder importable; stdout and stderr piped."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pathlib.Path(__file__).parent)] + sys.path))
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_line(proc, prefix):
    """The first stdout line of `proc` that starts with `prefix`; AssertionError, with the
    process's stderr, if its output ends first."""
    while line := proc.stdout.readline():
        if line.startswith(prefix):
            return line.strip()
    proc.kill()
    raise AssertionError(f"no {prefix!r} line; stderr: {proc.communicate()[1]}")
