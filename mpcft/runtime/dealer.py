"""Dealer: a server that hands parties correlated randomness on request.

Each party opens one connection to the dealer (mutual TLS, certificate `dealer` on the dealer's
side, `party-{r}` on the party's). The dealer draws a 32-byte seed per party with `secrets` and
sends it first; then it answers request frames (JSON `{"kind", "params", "seq"}`) by calling

    handler(rank, kind, params, seq, seeds) -> list of tensors

(`seq` counts that party's requests from 0; `seeds` maps rank -> that party's dealer seed, so
a handler may send only what the party cannot expand from its seed). Each party learns only what
the handler returns to it. A handler with a `work_ahead(seeds, busy)` method has it called while
a party's connection has no request waiting; it should return soon after busy() turns True.
The default handler, `protocols.correlations.CorrelationDealer`, answers each correlation at
most once, in the order it counts itself, with pads bound to the correlation's layout, and works
ahead on the next correlation of each layout asked for repeatedly: a party that deviates
(replays, asks ahead, asks for other layouts) learns only its own shares of fresh correlations,
never another party's pads or shares.
A handler's `ValueError` reaches the party as a `DealerError` "refused: <message>"; any other
error as a generic refusal, its details only in the dealer's log; either way the dealer keeps
serving. Requests are at most MAX_REQUEST_BYTES; a party that sends none for
`dealer_idle_timeout` seconds, or whose connection stops, is dropped. The dealer stops when
every party said goodbye (exit status 0), when a party is lost without goodbye
(PEER_FAILED_STATUS), when connection set-up fails (1), or when `stop()` is called, e.g. on
SIGTERM (143).
"""
import hashlib
import importlib
import secrets
import sys
import threading
import time
import traceback

import numpy as np
import torch

from mpcft.kernels.threads import set_compute_threads

from .config import DEFAULT_DEALER_IDLE_TIMEOUT, DEFAULT_TIMEOUT, fixed_seed
from .errors import (PEER_FAILED_STATUS, ConfigError, FrameError, MPCRuntimeError,
                     MPCTimeoutError, PeerError)
from .frames import Expected, FrameType, as_wire_array, json_tensor, tensor_json
from .transport import Acceptor, SendWatchdog, TcpChannel, contexts, warn_fixed_seeds, warn_plaintext

DEFAULT_HANDLER = "mpcft.protocols.correlations:CorrelationDealer"  # the real correlations
MAX_REQUEST_BYTES = 1 << 20         # a party's request frames (JSON) are at most this large
MAX_BUFFERED_REQUESTS = 1 << 24     # request bytes the dealer holds unread per party
REQUEST = Expected(torch.uint8, (None,), FrameType.REQUEST)


def expand_seed(seed, seq, nbytes):
    """`nbytes` pseudorandom bytes from `seed` and request number `seq` (SHAKE-256)."""
    return hashlib.shake_256(seed + seq.to_bytes(8, "big") + b"mpcft-dealer").digest(nbytes)


def echo_handler(rank, kind, params, seq, seeds):
    """Test handler. "ping": [tensor([rank, seq]), tensor(params["values"])];
    "random": one int64 tensor of `params["shape"]` expanded from the party's dealer seed and
    `seq` (the party can recompute it: a check of seed agreement)."""
    if kind == "ping":
        return [torch.tensor([rank, seq]), torch.tensor(params.get("values", []), dtype=torch.int64)]
    if kind == "random":
        shape = [int(d) for d in params["shape"]]
        count = int(np.prod(shape, dtype=np.int64))
        data = np.frombuffer(expand_seed(seeds[rank], seq, 8 * count), dtype=np.int64)
        return [torch.from_numpy(data.copy()).reshape(shape)]
    raise ValueError(f"unknown request kind {kind!r} (default handler knows 'ping', 'random')")


def load_handler(spec):
    """The function named by "package.module:function"."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"handler must be given as module:function, got {spec!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load dealer handler {spec!r}: {exc}") from None


class DealerService:
    """Seeds and request loop, independent of the transport (TCP server or in-memory)."""

    def __init__(self, handler, world_size, timeout=DEFAULT_TIMEOUT,
                 idle_timeout=DEFAULT_DEALER_IDLE_TIMEOUT, log=None, fixed_seeds=None):
        """A class as `handler` is instantiated once per dealer: handlers may keep state.
        A wait for a request lasts `timeout` s and is renewed while the party's connection is
        healthy, for at most `idle_timeout` s in all; `log` (default: sys.stderr) gets the
        details of internal errors; `fixed_seeds` (tests only) derives the parties' seeds
        from that public value (ClusterConfig.insecure_fixed_seeds)."""
        self.handler = handler() if isinstance(handler, type) else handler
        self.seeds = {rank: secrets.token_bytes(32) if fixed_seeds is None else
                      fixed_seed(fixed_seeds, "dealer", rank) for rank in range(world_size)}
        self.timeout, self.idle_timeout, self._log = timeout, idle_timeout, log

    def serve(self, rank, channel):
        """Send party `rank` its seed, answer its requests until it says goodbye.
        Raises PeerError if the party is lost first, MPCTimeoutError if it stays idle too long."""
        channel.send(FrameType.SEED, np.frombuffer(self.seeds[rank], np.uint8), "seed agreement")
        seq, work_ahead = 0, getattr(self.handler, "work_ahead", None)
        while (request := self._next_request(rank, channel, seq)) is not None:
            self._answer(rank, channel, seq, request)
            seq += 1
            if work_ahead is not None and not channel.pending:
                self._work_ahead(work_ahead, rank, channel)

    def _next_request(self, rank, channel, seq):
        """Party `rank`'s request #`seq` as a dict, or None once it said goodbye."""
        step = f"dealer waiting for request #{seq} from party {rank}"
        idle_until = time.monotonic() + self.idle_timeout
        while True:
            try:
                _, tensor, _ = channel.recv(step, min(self.timeout, self.idle_timeout), REQUEST)
                break
            except MPCTimeoutError:
                if time.monotonic() >= idle_until:
                    raise MPCTimeoutError(f"{step}: none came within {self.idle_timeout:g} s "
                                          f"(dealer_idle_timeout)") from None
                if not channel.receiving:
                    raise PeerError(f"{step}: the connection stopped receiving") from None
            except PeerError:
                if channel.goodbye_received:
                    return None
                raise
        request = tensor_json(tensor, channel.name, step)
        if not isinstance(request, dict) or request.get("seq") != seq:
            raise FrameError(f"{step}: malformed or out-of-order request from party {rank}")
        return request

    def _answer(self, rank, channel, seq, request):
        """Send the handler's tensors, or a refusal: a ValueError's message as "refused: ...",
        any other error as a generic one (its details go to the dealer's log only)."""
        kind, params = request.get("kind"), request.get("params", {})
        step = f"dealer answering request #{seq} of party {rank}"
        try:
            if not isinstance(kind, str) or not isinstance(params, dict):
                raise ValueError("a request needs a string `kind` and an object of `params`")
            tensors = list(self.handler(rank, kind, params, seq, self.seeds))
            for tensor in tensors:
                as_wire_array(tensor)
        except ValueError as exc:
            channel.send(FrameType.RESPONSE, json_tensor({"error": f"refused: {exc}"}), step)
            return
        except Exception:  # noqa: BLE001 - the party gets a refusal, the log the details
            self._say(f"request #{seq} {kind!r} of party {rank} failed:\n{traceback.format_exc()}")
            channel.send(FrameType.RESPONSE, json_tensor(
                {"error": f"the dealer could not answer request #{seq} (internal error)"}), step)
            return
        channel.send(FrameType.RESPONSE, json_tensor({"count": len(tensors)}), step)
        for tensor in tensors:
            channel.send(FrameType.TENSOR, tensor, step)

    def _work_ahead(self, work_ahead, rank, channel):
        """The handler's work_ahead(seeds, busy) while party `rank` sends no request; its
        errors go to the log only (the request that needs the work will report them)."""
        try:
            work_ahead(self.seeds, lambda: channel.pending or not channel.receiving)
        except Exception:  # noqa: BLE001 - logged; serving goes on
            self._say(f"working ahead after party {rank}'s request failed:\n{traceback.format_exc()}")

    def _say(self, message):
        log = sys.stderr if self._log is None else self._log
        log.write(f"mpcft dealer: {message}\n")
        log.flush()


class DealerServer:
    """The dealer process of a cluster: `DealerServer(config, handler).run()` -> exit status."""

    def __init__(self, cluster_config, handler=DEFAULT_HANDLER, log=sys.stderr, threads=None):
        """threads: compute threads for the handler, torch's and Numba's (default: their choice)."""
        if cluster_config.dealer is None:
            raise ConfigError("the cluster file has no [dealer] section")
        self._threads = threads
        if threads:
            set_compute_threads(threads)
        if isinstance(handler, str):
            handler = load_handler(handler)
        self.config = cluster_config
        self.service = DealerService(handler, cluster_config.world_size, cluster_config.timeout,
                                     cluster_config.dealer_idle_timeout, log,
                                     cluster_config.insecure_fixed_seeds)
        self._log = log
        self._lock = threading.Lock()
        self._channels = {}
        self._finished = {}             # rank -> None (goodbye) or error message
        self._stopped = threading.Event()
        self._changed = threading.Event()
        self._watchdog = None

    def _serve(self, rank, sock):
        if self._threads:       # Numba's count is per thread: this one computes correlations
            set_compute_threads(self._threads)
        channel = TcpChannel(sock, f"party {rank}", min(self.config.max_frame_bytes,
                                                        MAX_REQUEST_BYTES),
                             self._watchdog, min(self.config.max_buffered_bytes,
                                                 MAX_BUFFERED_REQUESTS))
        with self._lock:
            self._channels[rank] = channel
        outcome = None
        try:
            self.service.serve(rank, channel)
        except MPCRuntimeError as exc:
            outcome = str(exc)
        except Exception as exc:  # noqa: BLE001 - never a silent end: the dealer stops with it
            self._say(f"serving party {rank} failed:\n{traceback.format_exc()}")
            outcome = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            channel.abort("dealer finished")
            with self._lock:
                self._finished[rank] = outcome
            self._changed.set()

    def _on_accept(self, rank, sock):
        threading.Thread(target=self._serve, args=(rank, sock), name=f"mpcft-dealer-{rank}",
                         daemon=True).start()

    def run(self):
        """Serve until all parties said goodbye (0), a party was lost (1) or stop() (143)."""
        me = self.config.dealer
        if not self.config.tls:
            warn_plaintext("dealer")
        if self.config.insecure_fixed_seeds is not None:
            warn_fixed_seeds("dealer")
        server_ctx, _ = contexts(self.config, me)
        self._watchdog = SendWatchdog(self.config.timeout)
        world = range(self.config.world_size)
        acceptor = Acceptor(self.config, me, world, server_ctx,
                            time.monotonic() + self.config.connect_timeout, self._on_accept)
        status = None
        try:
            waiter = threading.Thread(target=self._wait_for_parties, args=(acceptor,), daemon=True)
            waiter.start()
            while status is None:
                self._changed.wait(0.2)
                self._changed.clear()
                with self._lock:
                    lost = {r: e for r, e in self._finished.items() if e is not None}
                    done = len(self._finished) == len(world)
                if self._stopped.is_set():
                    status = 143 if not done else 0
                    self._say("stopped")
                elif lost:
                    for rank, error in sorted(lost.items()):
                        self._say(error if rank < 0 else f"lost party {rank}: {error}")
                    status = PEER_FAILED_STATUS if all(rank >= 0 for rank in lost) else 1
                elif done:
                    status = 0
        finally:
            acceptor.stop()
            with self._lock:
                channels = list(self._channels.values())
            for channel in channels:
                channel.abort("dealer shut down")
            self._watchdog.stop()
        return status

    def _wait_for_parties(self, acceptor):
        try:
            acceptor.wait()
        except MPCRuntimeError as exc:
            with self._lock:
                self._finished.setdefault(-1, str(exc))
            self._changed.set()

    def stop(self):
        """Ask `run` to shut down (safe from a signal handler)."""
        self._stopped.set()
        self._changed.set()

    def _say(self, message):
        if self._log is not None:
            self._log.write(f"mpcft dealer: {message}\n")
            self._log.flush()
