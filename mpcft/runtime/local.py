"""Several parties on one machine: throw-away clusters, `run_threads` and `spawn`.

`run_threads` runs the parties as threads over in-memory channels (fast; for protocol tests).
`spawn` runs them as separate processes over loopback TCP with mutual TLS and throw-away
certificates (the real transport). Both give each party's result by rank, re-raise the first
failure, and never hang past `timeout`.
"""
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import pathlib
import pickle
import socket
import sys
import tempfile
import threading
import time
import traceback

from . import config as config_module
from . import tls
from .dealer import DealerServer, DealerService
from .errors import MPCTimeoutError, PartyFailed
from .memory import HEAP_ENVIRONMENT
from .session import Session
from .transport import MemoryChannel, Transport


# Idle OpenMP workers (torch's, Numba's) spin for a while after each parallel region; with
# several party processes on shared cores they steal the CPU the protocol needs (a BERT
# block's forward and backward took 7.4 s spinning, 1.65 s passive, on 2 cores). Processes
# started by mpcft get OMP_WAIT_POLICY=PASSIVE unless the user set it.
PASSIVE_OPENMP = ("OMP_WAIT_POLICY", "PASSIVE")
PARTY_ENVIRONMENT = (PASSIVE_OPENMP,) + HEAP_ENVIRONMENT   # see runtime/memory.py


def free_ports(count, host="127.0.0.1"):
    """`count` distinct TCP ports that were free a moment ago on `host`."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def local_cluster(directory, world_size, dealer=False, tls_enabled=True, timeout=60.0,
                  connect_timeout=60.0, hosts=None, ports=None, certs=None, fixed_seeds=None):
    """Write a cluster file (and, with TLS, throw-away certificates) into `directory`.

    `hosts`: one address per party (plus one for the dealer last), default 127.0.0.1 for all;
    `ports`: likewise, default free loopback ports; `certs`: an existing certificate folder
    (`mpcft certs` layout) instead of new certificates; `fixed_seeds`: 32 bytes every seed is
    derived from (tests only: insecure_fixed_seeds). Returns (ClusterConfig, file path).
    """
    directory = pathlib.Path(directory)
    count = world_size + (1 if dealer else 0)
    hosts = list(hosts or ["127.0.0.1"] * count)
    ports = list(ports or free_ports(count))
    if tls_enabled:
        cert_dir = pathlib.Path(certs).absolute() if certs else tls.make_certs(
            directory / "certs", world_size, dealer=dealer, hosts=sorted(set(hosts)), days=7)
    else:
        cert_dir = None

    def endpoint(rank, i):
        name = "dealer" if rank is None else f"party-{rank}"
        cert = key = None
        if cert_dir is not None:
            cert, key = cert_dir / f"{name}.pem", cert_dir / f"{name}-key.pem"
        return config_module.Endpoint(rank, hosts[i], ports[i], cert, key)

    config = config_module.ClusterConfig(
        tuple(endpoint(r, r) for r in range(world_size)),
        endpoint(None, world_size) if dealer else None,
        cert_dir / "ca.pem" if cert_dir is not None else None, tls_enabled, float(timeout),
        float(connect_timeout), insecure_fixed_seeds=fixed_seeds)
    path = config_module.dump(config, directory / "cluster.toml")
    return config_module.load(path), path


def memory_transports(world_size, dealer_service=None):
    """In-memory transports for all ranks; with a DealerService, also the dealer's channel ends
    as {rank: channel} (serve them with `dealer_service.serve`)."""
    ends = [dict() for _ in range(world_size)]
    for a in range(world_size):
        for b in range(a + 1, world_size):
            ends[a][b], ends[b][a] = MemoryChannel.pair(f"party {a}", f"party {b}")
    dealer_ends, party_dealer = {}, [None] * world_size
    if dealer_service is not None:
        for rank in range(world_size):
            party_dealer[rank], dealer_ends[rank] = MemoryChannel.pair(f"party {rank}", "dealer")
    return [Transport("memory", ends[r], party_dealer[r]) for r in range(world_size)], dealer_ends


def run_threads(fn, world_size, *args, dealer_handler=None, timeout=60, step_timeout=None):
    """Run `fn(session, *args)` for every rank in threads over in-memory channels.

    Returns the results by rank; re-raises the first exception raised by any rank (the
    others are then aborted); raises MPCTimeoutError if ranks are still running after
    `timeout` s. `step_timeout` (default `timeout`) bounds each send/receive/dealer request.
    With `dealer_handler`, an in-memory dealer serves.
    """
    service = DealerService(dealer_handler, world_size) if dealer_handler is not None else None
    transports, dealer_ends = memory_transports(world_size, service)
    results, errors, lock = [None] * world_size, [], threading.Lock()

    def party(rank):
        session = None
        try:
            session = Session(rank, world_size, transports[rank], timeout=step_timeout or timeout)
            results[rank] = fn(session, *args)
            session.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            with lock:
                errors.append(exc)
            transports[rank].close(graceful=False)

    def dealer(rank, channel):
        try:
            service.serve(rank, channel)
        except Exception:   # the party sees the failure as a closed dealer channel
            channel.abort("dealer failed")

    threads = [threading.Thread(target=party, args=(r,), name=f"mpcft-rank-{r}", daemon=True)
               for r in range(world_size)]
    threads += [threading.Thread(target=dealer, args=item, name=f"mpcft-dealer-{item[0]}",
                                 daemon=True) for item in dealer_ends.items()]
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        for transport in transports:
            transport.close(graceful=False)
        for channel in dealer_ends.values():
            channel.abort()
        raise MPCTimeoutError(f"run_threads: {', '.join(stuck)} still running after {timeout:g} s")
    if errors:
        raise errors[0]
    return results


def _spawned_party(path, rank, fn, args, conn):
    try:
        with Session.connect(path, rank) as session:
            result = fn(session, *args)
        conn.send_bytes(pickle.dumps(("ok", result)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send_bytes(pickle.dumps(("error", f"{type(exc).__name__}: {exc}",
                                      traceback.format_exc())))
        sys.exit(1)


def _spawned_dealer(path, handler, threads):
    sys.exit(DealerServer(config_module.load(path), handler, threads=threads).run())


@contextlib.contextmanager
def _party_environment():
    """PARTY_ENVIRONMENT's variables that the caller has not set, in os.environ only while
    processes start: the caller's environment is left as it was."""
    added = {name: value for name, value in PARTY_ENVIRONMENT if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def spawn(fn, world_size, *args, dealer_handler=None, tls=True, timeout=120, step_timeout=None,
          dealer_threads=None):
    """Run `fn(session, *args)` for every rank in its own process over loopback TCP.

    Mutual TLS with throw-away certificates unless `tls=False`; `fn` and `dealer_handler` must
    be importable module-level functions; results come back pickled, by rank, once every
    process has exited (those still running EXIT_GRACE s after the results are killed). If a
    rank fails, every process is killed and `PartyFailed` names the rank and its error.
    `step_timeout` (default: `timeout`) bounds each protocol step; `dealer_threads` sets the
    dealer's torch threads (1 for benchmarks that give every process one core's worth).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "numpy", "mpcft.runtime"])
    step_timeout = step_timeout or timeout
    with tempfile.TemporaryDirectory(prefix="mpcft-spawn-") as tmp:
        _, path = local_cluster(tmp, world_size, dealer=dealer_handler is not None,
                                tls_enabled=tls, timeout=step_timeout,
                                connect_timeout=min(timeout, 60.0))
        procs, pipes = {}, {}
        try:
            with _party_environment():     # read by the fork server when the first start starts it
                for rank in range(world_size):
                    receiver, sender = context.Pipe(duplex=False)
                    procs[rank] = context.Process(target=_spawned_party, name=f"mpcft-rank-{rank}",
                                                  args=(str(path), rank, fn, args, sender))
                    procs[rank].start()
                    sender.close()
                    pipes[rank] = receiver
                if dealer_handler is not None:
                    procs["dealer"] = context.Process(target=_spawned_dealer, name="mpcft-dealer",
                                                      args=(str(path), dealer_handler, dealer_threads))
                    procs["dealer"].start()
            results = _collect(procs, pipes, world_size, time.monotonic() + timeout, timeout)
            _let_exit(procs.values(), EXIT_GRACE)
            return results
        finally:
            for proc in procs.values():
                if proc.is_alive():
                    proc.kill()
            for proc in procs.values():
                proc.join()
            for pipe in pipes.values():
                pipe.close()


EXIT_GRACE = 10.0    # seconds the processes of a finished run get to exit on their own


def _let_exit(procs, grace: float) -> None:
    """Wait up to `grace` s in all for processes that have delivered their results to exit by
    themselves (their resources released in order), before spawn kills what is left."""
    deadline = time.monotonic() + grace
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))


_CONSEQUENCES = ("PeerError", "MPCTimeoutError")  # what the survivors of a failure report


def _root_cause(rank, message, pipes, results, world_size, grace=2.0):
    """A rank failed: wait briefly for the others' reports and name the root cause, not a
    survivor that merely saw its peer go away (both arrive within moments, in any order)."""
    failures = [(rank, message)]
    end = time.monotonic() + grace
    while message[1].startswith(_CONSEQUENCES) and time.monotonic() < end:
        others = [r for r in range(world_size) if r not in results and r != rank
                  and all(r != f for f, _ in failures)]
        ready = multiprocessing.connection.wait([pipes[r] for r in others], end - time.monotonic())
        if not ready:
            break
        for other in others:
            if pipes[other].poll():
                try:
                    report = pickle.loads(pipes[other].recv_bytes())
                except EOFError:
                    continue
                if report[0] != "ok":
                    failures.append((other, report))
        rank, message = next(((r, m) for r, m in failures if not m[1].startswith(_CONSEQUENCES)),
                             failures[0])
    return PartyFailed(rank, message[1], message[2])


def _collect(procs, pipes, world_size, deadline, timeout):
    results = {}
    while len(results) < world_size:
        waiting = [pipes[r] for r in range(world_size) if r not in results]
        sentinels = [p.sentinel for p in procs.values()]
        ready = multiprocessing.connection.wait(waiting + sentinels,
                                                max(0.0, deadline - time.monotonic()))
        if not ready:
            missing = ", ".join(str(r) for r in range(world_size) if r not in results)
            raise MPCTimeoutError(f"spawn: ranks {missing} did not finish within {timeout:g} s")
        for rank in range(world_size):
            if rank in results or not pipes[rank].poll():
                continue
            try:
                message = pickle.loads(pipes[rank].recv_bytes())
            except EOFError:
                message = None
            if message is None or message[0] != "ok":
                if message is None:
                    procs[rank].join(1.0)
                    raise PartyFailed(rank, f"process died (exit code {procs[rank].exitcode})")
                raise _root_cause(rank, message, pipes, results, world_size)
            results[rank] = message[1]
        for name, proc in procs.items():
            if proc.exitcode not in (None, 0) and (name == "dealer" or not pipes[name].poll()):
                if name != "dealer" and name in results:
                    continue
                raise PartyFailed(name, f"process exited with code {proc.exitcode}")
    dealer = procs.get("dealer")
    if dealer is not None:
        dealer.join(max(0.0, deadline - time.monotonic()))
        if dealer.exitcode != 0:
            raise PartyFailed("dealer", f"process exited with code {dealer.exitcode}")
    return [results[r] for r in range(world_size)]
