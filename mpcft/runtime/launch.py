"""`mpcft launch`: start N local parties (and the dealer) on loopback, torchrun-style.

Each party runs `mpcft party --config <the generated cluster file> --rank R <script> args`
(or `... -m <module> args`): the program sees the environment variables RANK, WORLD_SIZE,
LOCAL_RANK and MPCFT_CLUSTER, gets its session from `mpcft.runtime.init()`, and a runtime
error it lets out ends it with one line and an exit status (runtime.errors.failure_report).
Output lines are prefixed with "[rank r]" / "[dealer]". If any process exits non-zero, the
others get SIGTERM, then SIGKILL after a grace period, and the launcher exits with that
status; Ctrl-C or SIGTERM stops all.
"""
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from .errors import PEER_FAILED_STATUS
from .local import PARTY_ENVIRONMENT, local_cluster
from .session import ENV_CLUSTER, ENV_RANK, ENV_WORLD_SIZE


def _stream(proc, label, lock, out):
    for line in iter(proc.stdout.readline, b""):
        with lock:
            out.write(f"[{label}] {line.decode(errors='replace')}")
            out.flush()
    proc.stdout.close()


def _is_terminal(out) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


class _FreshLines:
    """A terminal that another process may have left mid-line (a progress bar redrawn with
    "\\r"): each line written (the launcher writes whole lines) first clears that line, as
    tqdm.write does; the bar redraws itself below."""

    def __init__(self, out):
        self.out = out

    def write(self, line: str) -> None:
        self.out.write("\r\x1b[K" + line)

    def flush(self) -> None:
        self.out.flush()


def _stop_all(procs, grace):
    for proc in procs.values():
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for proc in procs.values():
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs.values():
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def launch(world_size, program, dealer=False, handler=None, tls=True, timeout=60.0,
           connect_timeout=60.0, certs=None, grace=5.0, out=None, passthrough_rank=None, fixed_seeds=None,
           rank_arguments=None):
    """Run `program` (["script.py", args...] or ["-m", "module", args...]) as `world_size`
    parties; returns the exit status (0 when every process succeeded).

    passthrough_rank: that rank writes straight to this terminal (progress bars), unprefixed.
    rank_arguments: {rank: [args]} appended to that rank's program only (a party's own inputs).
    fixed_seeds: 32 bytes every seed of the run is derived from (tests of reproducibility
    only: INSECURE, see ClusterConfig.insecure_fixed_seeds).
    """
    out = out or sys.stdout
    if passthrough_rank is not None and _is_terminal(out):
        out = _FreshLines(out)             # not onto that rank's progress bar line
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="mpcft-launch-") as tmp:
        _, path = local_cluster(tmp, world_size, dealer=dealer, tls_enabled=tls, timeout=timeout,
                                connect_timeout=connect_timeout, certs=certs, fixed_seeds=fixed_seeds)
        base = dict(os.environ, PYTHONUNBUFFERED="1", WORLD_SIZE=str(world_size))
        for name, value in PARTY_ENVIRONMENT:
            base.setdefault(name, value)
        base[ENV_CLUSTER], base[ENV_WORLD_SIZE] = str(path), str(world_size)
        commands = {}
        if dealer:
            commands["dealer"] = ([sys.executable, "-m", "mpcft.cli", "dealer", "--config",
                                   str(path)] + (["--handler", handler] if handler else []), base)
        for rank in range(world_size):
            env = dict(base, LOCAL_RANK=str(rank))
            env[ENV_RANK] = str(rank)
            commands[f"rank {rank}"] = ([sys.executable, "-m", "mpcft.cli", "party", "--config", str(path),
                                         "--rank", str(rank)] + list(program)
                                        + list((rank_arguments or {}).get(rank, [])), env)
        procs, streams = {}, []
        stop = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            for label, (command, env) in commands.items():
                if label == f"rank {passthrough_rank}":
                    procs[label] = subprocess.Popen(command, env=env, start_new_session=True)
                    continue
                procs[label] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, start_new_session=True)
                streams.append(threading.Thread(target=_stream, args=(procs[label], label, lock, out),
                                                daemon=True))
                streams[-1].start()
            status = _supervise(procs, stop, grace, lock, out)
        except KeyboardInterrupt:
            status = 130
            _say(lock, out, "interrupted; stopping all processes")
        finally:
            _stop_all(procs, grace)
            signal.signal(signal.SIGTERM, previous)
            for thread in streams:
                thread.join(5.0)
    return status


def _say(lock, out, message):
    with lock:
        out.write(f"mpcft launch: {message}\n")
        out.flush()


def _root_cause(procs, label, code, grace):
    """A process stopped because a peer failed (PEER_FAILED_STATUS): wait up to `grace` for
    the one that failed on its own and name that one instead."""
    deadline = time.monotonic() + grace
    while code == PEER_FAILED_STATUS and time.monotonic() < deadline:
        for other, proc in procs.items():
            if proc.poll() not in (None, 0, PEER_FAILED_STATUS):
                return other, proc.returncode
        time.sleep(0.05)
    return label, code


def _supervise(procs, stop, grace, lock, out):
    parties = [label for label in procs if label != "dealer"]
    while True:
        if stop.is_set():
            _say(lock, out, "SIGTERM; stopping all processes")
            return 143
        for label, proc in procs.items():
            code = proc.poll()
            if code not in (None, 0):
                label, code = _root_cause(procs, label, code, grace)
                _say(lock, out, f"{label} exited with status {code}; stopping the others")
                return code if code > 0 else 128 - code
        if all(procs[label].poll() == 0 for label in parties):
            dealer = procs.get("dealer")
            if dealer is not None:
                try:
                    dealer.wait(grace)
                except subprocess.TimeoutExpired:
                    _say(lock, out, "dealer did not stop after all parties finished")
                    return 1
                return dealer.returncode
            return 0
        time.sleep(0.05)
