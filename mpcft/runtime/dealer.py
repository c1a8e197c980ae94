"""Dealer: a server that hands parties correlated randomness on request.

Each party opens one connection to the dealer (mutual TLS, certificate `dealer` on the dealer's
side, `party-{r}` on the party's). The dealer draws a 32-byte seed per party with `secrets` and
sends it first; then it answers request frames (JSON `{"kind", "params", "seq"}`) by calling

    handler(rank, kind, params, seq, seeds) -> list of tensors

(`seq` counts that party's requests from 0; `seeds` maps rank -> that party's dealer seed, so
a handler may send only what the party cannot expand from its seed). Each party learns only what
the handler returns to it. A handler exception is reported to that party as a `DealerError`
and the dealer keeps serving. The dealer stops when every party said goodbye (exit status 0),
when a party is lost without goodbye (1), or when `stop()` is called, e.g. on SIGTERM.
"""
import hashlib
import importlib
import secrets
import sys
import threading
import time

import numpy as np
import torch

from mpcft.kernels.memory import keep_freed_memory

from .errors import PEER_FAILED_STATUS, ConfigError, FrameError, MPCRuntimeError, PeerError
from .frames import FrameType, json_tensor, tensor_json
from .transport import Acceptor, SendWatchdog, TcpChannel, contexts, warn_plaintext

DEFAULT_HANDLER = "mpcft.protocols.correlations:dealer_handler"  # the real correlations


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

    def __init__(self, handler, world_size):
        self.handler = handler
        self.seeds = {rank: secrets.token_bytes(32) for rank in range(world_size)}

    def serve(self, rank, channel):
        """Send party `rank` its seed, answer its requests until it says goodbye.
        Raises PeerError if the party is lost first."""
        channel.send(FrameType.SEED, np.frombuffer(self.seeds[rank], np.uint8), "seed agreement")
        expected = 0
        while True:
            step = f"dealer waiting for requests from party {rank}"
            try:
                frame_type, tensor, _ = channel.recv(step, None)
            except PeerError:
                if channel.goodbye_received:
                    return
                raise
            request = tensor_json(tensor, channel.name) if frame_type == FrameType.REQUEST else None
            if not isinstance(request, dict) or request.get("seq") != expected:
                raise FrameError(f"{step}: malformed or out-of-order request {request!r}")
            expected += 1
            kind = request.get("kind")
            step = f"dealer answering {kind!r} #{request['seq']} of party {rank}"
            try:
                tensors = list(self.handler(rank, kind, request.get("params") or {},
                                            request["seq"], self.seeds))
            except Exception as exc:
                channel.send(FrameType.RESPONSE, json_tensor({"error": f"{type(exc).__name__}: "
                                                                       f"{exc}"}), step)
                continue
            channel.send(FrameType.RESPONSE, json_tensor({"count": len(tensors)}), step)
            for tensor in tensors:
                channel.send(FrameType.TENSOR, tensor, step)


class DealerServer:
    """The dealer process of a cluster: `DealerServer(config, handler).run()` -> exit status."""

    def __init__(self, cluster_config, handler=DEFAULT_HANDLER, log=sys.stderr, threads=None):
        """threads: torch compute threads for the handler (default: torch's choice)."""
        if cluster_config.dealer is None:
            raise ConfigError("the cluster file has no [dealer] section")
        keep_freed_memory()
        if threads:
            torch.set_num_threads(threads)
        if isinstance(handler, str):
            handler = load_handler(handler)
        self.config = cluster_config
        self.service = DealerService(handler, cluster_config.world_size)
        self._log = log
        self._lock = threading.Lock()
        self._channels = {}
        self._finished = {}             # rank -> None (goodbye) or error message
        self._stopped = threading.Event()
        self._changed = threading.Event()
        self._watchdog = None

    def _serve(self, rank, sock):
        channel = TcpChannel(sock, f"party {rank}", self.config.max_frame_bytes, self._watchdog)
        with self._lock:
            self._channels[rank] = channel
        outcome = None
        try:
            self.service.serve(rank, channel)
        except MPCRuntimeError as exc:
            outcome = str(exc)
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
