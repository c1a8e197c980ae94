"""`Session`: one party's view of an MPC run (rank, peers, dealer, transport, counters).

There is no global state: build sessions with `Session.connect(config, rank)` (TCP),
`Session.from_env()` (processes started by `mpcft launch` / `mpcft party`) or
`mpcft.runtime.run_threads` (in-memory, threads of one process); several can live in one
process. A session is driven by one thread. Every blocking step waits at most `timeout`
seconds. A peer failure or timeout raises a `PeerError`/`MPCTimeoutError` naming the peer and
the step, and drops all of this session's connections so the other parties notice at once.
Received tensors are checked against what the step expects (`dtype`, `shape` arguments; by
default `exchange`/`gather` expect what this party sent): a mismatch raises `FrameError`.

Seeds: for each pair of parties the lower rank draws a 32-byte seed with `secrets` and sends it
over their (authenticated, encrypted) channel; the dealer draws one seed per party and sends
it likewise. A seed is known to exactly the two ends of its channel. A cluster file with
`insecure_fixed_seeds` (tests of reproducibility only) derives every seed from that public
value instead: anyone who reads the file knows them all.
"""
import collections
import functools
import os
import secrets
import time

import numpy as np
import torch

from . import config as config_module
from .comm import CommStats
from .config import fixed_seed
from .errors import ConfigError, DealerError, FrameError, MPCRuntimeError, MPCTimeoutError, PeerError
from .frames import Expected, FrameType, as_wire_array, json_tensor, tensor_json
from .transport import connect_party, warn_fixed_seeds

ENV_CLUSTER = "MPCFT_CLUSTER"
ENV_RANK = "RANK"
ENV_WORLD_SIZE = "WORLD_SIZE"
SEED_BYTES = 32
SEED = Expected(torch.uint8, (SEED_BYTES,), FrameType.SEED)
DEALER_RESPONSE = Expected(torch.uint8, (None,), FrameType.RESPONSE)


def _fails_session(method):
    """Drop the session's connections when a peer failure or timeout escapes `method`."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (PeerError, MPCTimeoutError):
            self.abort()
            raise
    return wrapper


def _to_host(tensor):
    """A CPU copy of a device (CUDA) tensor, staged in pinned memory for a fast copy; CPU
    tensors and other values pass through."""
    if isinstance(tensor, torch.Tensor) and tensor.device.type != "cpu":
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor)
        return host
    return tensor


def _on_device_of(received, sent):
    """Received CPU tensors moved to the device the sent tensor lives on."""
    if isinstance(sent, torch.Tensor) and sent.device.type != "cpu":
        return received.to(sent.device)
    return received


def _expected(dtype, shape, sent=None):
    """Expected tensor: `dtype` and `shape` where given, else those of `sent` (if any)."""
    like = Expected() if sent is None else Expected.like(sent)
    return Expected(like.dtype if dtype is None else dtype,
                    like.shape if shape is None else tuple(shape))


def _as_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    _, array = as_wire_array(value)
    return torch.from_numpy(array)


class Session:
    """A party in an MPC run. `transport` carries `peers` {rank: channel} and `dealer`."""

    def __init__(self, rank, world_size, transport, timeout=60.0, fixed_seeds=None):
        if set(transport.peers) != set(range(world_size)) - {rank}:
            raise ConfigError(f"party {rank}: transport connects {sorted(transport.peers)}, "
                              f"expected every other rank of {world_size}")
        self.rank, self.world_size, self.transport, self.timeout = rank, world_size, transport, timeout
        self.peers = [r for r in range(world_size) if r != rank]
        self.comm = CommStats()
        self.dealer_seed = None
        self._pair_seeds = {}
        self._dealer_requests = 0
        self._pending_replies = collections.deque()
        self._closed = False
        self._config = None
        self._agree_seeds(fixed_seeds)

    @classmethod
    def connect(cls, config, rank):
        """Connect party `rank` of `config` (a ClusterConfig or a cluster file path) over TCP."""
        if not isinstance(config, config_module.ClusterConfig):
            config = config_module.load(config)
        if config.insecure_fixed_seeds is not None:
            warn_fixed_seeds(f"party {rank}")
        session = cls(rank, config.world_size, connect_party(config, rank), config.timeout,
                      config.insecure_fixed_seeds)
        session._config = config
        return session

    @classmethod
    def from_env(cls):
        """Session of a process started by `mpcft launch` or `mpcft party` (env RANK,
        WORLD_SIZE, MPCFT_CLUSTER)."""
        try:
            path, rank = os.environ[ENV_CLUSTER], int(os.environ[ENV_RANK])
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{ENV_CLUSTER} and {ENV_RANK} must be set (start the program "
                              f"with `mpcft launch` or `mpcft party`): {exc}") from None
        config = config_module.load(path)
        size = os.environ.get(ENV_WORLD_SIZE)
        if size is not None and int(size) != config.world_size:
            raise ConfigError(f"{ENV_WORLD_SIZE}={size} but {path} lists {config.world_size} parties")
        return cls.connect(config, rank)

    @property
    def config(self):
        """The ClusterConfig this session connected with (certificates, keys, timeouts); None
        for sessions over in-memory channels."""
        return self._config

    def __repr__(self):
        return (f"Session(rank={self.rank}, world_size={self.world_size}, "
                f"transport={self.transport.kind!r})")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        """Close cleanly, or drop every connection when an exception leaves the block (it
        goes on; `mpcft party` and the workers turn it into one line and an exit status)."""
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # --- set-up ---------------------------------------------------------------------------

    @_fails_session
    def _agree_seeds(self, fixed_seeds):
        for peer in self.peers:
            if peer > self.rank:
                seed = (secrets.token_bytes(SEED_BYTES) if fixed_seeds is None else
                        fixed_seed(fixed_seeds, "pair", self.rank, peer))
                self._channel(peer).send(FrameType.SEED, np.frombuffer(seed, np.uint8),
                                         "seed agreement")
                self._pair_seeds[peer] = seed
        for peer in self.peers:
            if peer < self.rank:
                self._pair_seeds[peer] = self._recv_seed(self._channel(peer))
        if self.transport.dealer is not None:
            self.dealer_seed = self._recv_seed(self.transport.dealer)

    def _recv_seed(self, channel):
        _, tensor, _ = channel.recv(f"seed agreement with {channel.name}", self.timeout, SEED)
        return tensor.numpy().tobytes()

    def pair_seed(self, peer):
        """32-byte seed shared with party `peer` only."""
        self._channel(peer)
        return self._pair_seeds[peer]

    # --- helpers --------------------------------------------------------------------------

    def _channel(self, peer):
        if self._closed:
            raise MPCRuntimeError(f"party {self.rank}: session is closed")
        try:
            return self.transport.peers[peer]
        except KeyError:
            raise ValueError(f"party {self.rank} has no peer {peer!r} (peers: {self.peers})") from None

    def _step(self, what, peer, op):
        region = self.comm.current_region
        step = f"{what} party {peer}" + ("" if op in ("send", "recv") else f" in {op}")
        return step + (f" in region '{region}'" if region else "")

    def _send(self, peer, tensor, op):
        channel, host, step = self._channel(peer), _to_host(tensor), self._step("send to", peer, op)
        start = time.perf_counter()
        payload, wire = channel.send(FrameType.TENSOR, host, step)
        self.comm.count_sent(payload, wire, time.perf_counter() - start)

    def _recv(self, peer, op, expected):
        channel, step = self._channel(peer), self._step("recv from", peer, op)
        start = time.perf_counter()
        _, tensor, wire = channel.recv(step, self.timeout, expected)
        self.comm.count_received(tensor.nbytes, wire, time.perf_counter() - start)
        return tensor

    # --- communication --------------------------------------------------------------------

    @_fails_session
    def send(self, peer, tensor):
        """Send `tensor` to `peer` (one round unless inside `comm.round()`)."""
        self._send(peer, tensor, "send")
        self.comm.count_round()

    @_fails_session
    def recv(self, peer, dtype=None, shape=None):
        """Receive the next tensor from `peer` (torch CPU tensor). FrameError unless it has
        `dtype` and `shape` (None: any; a None entry in `shape`: any size there)."""
        tensor = self._recv(peer, "recv", _expected(dtype, shape))
        self.comm.count_round()
        return tensor

    def _announce(self, peers, expected):
        """Tell each peer's channel what its next frame must be, before sending anything."""
        for peer in peers:
            self._channel(peer).expect_next(expected[peer])

    @_fails_session
    def exchange(self, tensors, dtype=None, shape=None):
        """Send tensors[p] to each listed peer p and receive one tensor from each; one round.
        Each received tensor must have `dtype` and `shape` (default: those sent to that peer),
        else FrameError. Device (CUDA) tensors travel through pinned host memory and arrive on
        their device."""
        expected = {peer: _expected(dtype, shape, tensor) for peer, tensor in tensors.items()}
        self._announce(tensors, expected)
        hosted = {}                     # one host copy per device tensor, even if sent to all
        for peer, tensor in tensors.items():
            host = hosted.setdefault(id(tensor), _to_host(tensor))
            self._send(peer, host, "exchange")
        received = {peer: _on_device_of(self._recv(peer, "exchange", expected[peer]), tensors[peer])
                    for peer in tensors}
        self.comm.count_round()
        return received

    def all_gather(self, tensor, dtype=None, shape=None):
        """Everybody's `tensor`, as a list indexed by rank; one round. The others' must have
        `dtype` and `shape` (default: those of ours), else FrameError."""
        received = self.exchange({peer: tensor for peer in self.peers}, dtype, shape)
        received[self.rank] = _as_tensor(tensor)
        return [received[r] for r in range(self.world_size)]

    @_fails_session
    def gather(self, tensor, root, dtype=None, shape=None):
        """At `root`: everybody's `tensor` as a list by rank; elsewhere None. One round. At
        `root` the others' must have `dtype` and `shape` (default: those of root's), else
        FrameError."""
        if root == self.rank:
            expected = dict.fromkeys(self.peers, _expected(dtype, shape, tensor))
            self._announce(self.peers, expected)
            received = {peer: _on_device_of(self._recv(peer, "gather", expected[peer]), tensor)
                        for peer in self.peers}
            received[self.rank] = _as_tensor(tensor)
            result = [received[r] for r in range(self.world_size)]
        else:
            self._send(root, tensor, "gather")
            result = None
        self.comm.count_round()
        return result

    @_fails_session
    def broadcast(self, tensor, root, dtype=None, shape=None):
        """`root`'s tensor at every party (others pass None); one round. The others raise
        FrameError unless it has `dtype` and `shape` (None: any; a None entry: any size there)."""
        if root == self.rank:
            for peer in self.peers:
                self._send(peer, tensor, "broadcast")
            result = _as_tensor(tensor)
        else:
            result = self._recv(root, "broadcast", _expected(dtype, shape))
        self.comm.count_round()
        return result

    def dealer_request(self, kind, **params):
        """Ask the dealer for `kind` (JSON-serialisable `params`); returns its list of tensors.

        Counted as dealer traffic: request JSON bytes sent, response tensor bytes received.
        """
        return self.dealer_request_async(kind, **params).result()

    @_fails_session
    def dealer_request_async(self, kind, **params):
        """Send the request now and return a `DealerReply`; its `result()` waits for the answer.

        The dealer computes while the party goes on (e.g. with its exchange); replies are
        received in request order.
        """
        channel = self.transport.dealer
        if channel is None:
            raise ConfigError(f"party {self.rank}: this session has no dealer")
        if self._closed:
            raise MPCRuntimeError(f"party {self.rank}: session is closed")
        seq = self._dealer_requests
        self._dealer_requests += 1
        region = self.comm.current_region
        step = f"dealer request {kind!r} #{seq}" + (f" in region '{region}'" if region else "")
        sent, _ = channel.send(FrameType.REQUEST,
                               json_tensor({"kind": kind, "params": params, "seq": seq}), step)
        reply = DealerReply(self, step, sent)
        self._pending_replies.append(reply)
        return reply

    @_fails_session
    def _receive_reply(self, step, sent):
        channel = self.transport.dealer
        _, head, _ = channel.recv(step, self.timeout, DEALER_RESPONSE)
        answer = tensor_json(head, "dealer", step)
        count = answer.get("count") if isinstance(answer, dict) else None
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            self.comm.count_dealer(sent, 0)
            raise DealerError(f"{step}: {answer['error']}")
        if type(count) is not int or count < 0:
            raise FrameError(f"{step}: malformed response from the dealer")
        tensors = [channel.recv(step, self.timeout, Expected())[1] for _ in range(count)]
        self.comm.count_dealer(sent, sum(t.nbytes for t in tensors))
        return tensors

    # --- shutdown -------------------------------------------------------------------------

    def close(self):
        """End the session cleanly: read any dealer replies still due (e.g. prefetched ones
        nobody used), say goodbye to every peer and the dealer, then close."""
        if not self._closed:
            if self._pending_replies:
                self._pending_replies[-1].result()
            self._closed = True
            self.transport.close(graceful=True, grace=min(self.timeout, 10.0))

    def abort(self):
        """Drop every connection at once (peers see the failure immediately)."""
        if not self._closed:
            self._closed = True
            self.transport.close(graceful=False)


def init():
    """Shorthand for `Session.from_env()`."""
    return Session.from_env()


class DealerReply:
    """The dealer's answer to one request, received on first use (in request order)."""

    def __init__(self, session, step, sent):
        self._session, self._step, self._sent = session, step, sent
        self._tensors = None

    def result(self):
        """The answer's tensors; the time spent waiting counts as the session's dealer wait."""
        if self._tensors is None:
            pending = self._session._pending_replies
            start = time.perf_counter()
            try:
                while self._tensors is None:
                    head = pending.popleft()
                    head._tensors = self._session._receive_reply(head._step, head._sent)
            finally:
                self._session.comm.count_dealer_wait(time.perf_counter() - start)
        return self._tensors
