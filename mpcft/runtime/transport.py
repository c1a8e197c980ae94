"""Transports: ordered, framed, full-duplex channels between two processes (or threads).

A `Channel` joins this process to one peer (another party or the dealer). Received frames are
read by a background thread into a per-channel queue, so sends never wait for the local
receiver and two parties can send each other large tensors at the same moment. `recv` waits at
most the step timeout; a send that makes no progress for the step timeout is cut off by a
watchdog. Failures (peer closed or crashed, bad frame, timeout) raise `PeerError`/
`FrameError`/`MPCTimeoutError` naming the peer and the step.

* `MemoryChannel`: both ends in one process (threads), frames encoded and validated as on TCP.
* `TcpChannel`: one TCP connection, mutual TLS 1.3 unless the cluster runs in (insecure)
  plaintext mode. Tensors are written straight from their memory (`sendall(memoryview)`) and
  read with `recv_into` into a fresh buffer that becomes the received tensor, without copies.
  Under TLS a network observer learns frame sizes and timing only; in plaintext mode, everything.

Connection set-up (`connect_party`): every party listens on its port; the lower rank of each
pair connects to the higher one and each party connects to the dealer. The connecting side
sends a hello frame (role, rank, world size), which the accepting side checks against the
certificate's common name and answers with its own hello. Connecting retries until the
connect deadline, so processes may start in any order.
"""
import errno
import queue
import socket
import ssl
import sys
import threading
import time

import numpy as np

from . import frames, tls
from .errors import CertificateError, FrameError, MPCTimeoutError, PeerError
from .frames import FrameType

SMALL_FRAME = 1 << 16        # frames up to this size go out in one write with their header
RECV_CHUNK = 1 << 22


class _Failure:
    """Queue entry: the channel failed (or the peer said goodbye); re-raised by every recv."""

    def __init__(self, error_type, reason):
        self.error_type, self.reason = error_type, reason

    def raise_for(self, step):
        raise self.error_type(f"{step}: {self.reason}")


class Channel:
    """Frames to and from one peer; `name` is how errors name the peer ("party 2", "dealer")."""

    def __init__(self, name, max_frame_bytes):
        self.name = name
        self.max_frame_bytes = max_frame_bytes
        self.goodbye_received = False
        self._inbox = queue.SimpleQueue()
        self._failure = None
        self._send_seq = 1            # seq 0 is the hello of connection set-up
        self._recv_seq = 1
        self._send_lock = threading.Lock()

    def send(self, frame_type, tensor, step):
        """Send one tensor; returns (payload bytes, wire bytes)."""
        code, array = frames.as_wire_array(tensor)
        with self._send_lock:
            if self._failure is not None:
                self._failure.raise_for(step)
            header = frames.encode_header(frame_type, code, array.shape, self._send_seq,
                                          array.nbytes)
            self._send_seq += 1
            self._write(header, array, step)
        return array.nbytes, len(header) + array.nbytes

    def recv(self, step, timeout):
        """Next frame as (frame type, torch tensor, wire bytes); waits at most `timeout` s."""
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise MPCTimeoutError(f"{step}: nothing received from {self.name} within "
                                  f"{timeout:g} s") from None
        if isinstance(item, _Failure):
            self._inbox.put(item)
            item.raise_for(step)
        return item

    def _deliver(self, frame_type, tensor, wire):
        if frame_type == FrameType.GOODBYE:
            self.goodbye_received = True
            self._fail(PeerError, f"{self.name} closed its session")
        else:
            self._inbox.put((frame_type, tensor, wire))

    def _fail(self, error_type, reason):
        if self._failure is None:
            self._failure = _Failure(error_type, reason)
            self._inbox.put(self._failure)

    def _decode(self, header, payload):
        """Validate a frame as a receiver does; `payload` is a uint8 array that becomes the tensor."""
        fixed = header[:frames.HEADER.size]
        frame_type, code, ndim, seq, nbytes = frames.parse_fixed_header(fixed, self.name,
                                                                       self.max_frame_bytes)
        self._check_seq(seq)
        shape = frames.parse_shape(header[frames.HEADER.size:], ndim, code, nbytes, self.name)
        return frame_type, frames.to_tensor(payload, code, shape, self.name), len(header) + nbytes

    def _check_seq(self, seq):
        if seq != self._recv_seq:
            raise FrameError(f"out-of-sequence frame from {self.name}: got #{seq}, "
                             f"expected #{self._recv_seq}")
        self._recv_seq += 1


class MemoryChannel(Channel):
    """One end of an in-process channel; the payload is copied once, so senders may reuse it."""

    @classmethod
    def pair(cls, name_a, name_b, max_frame_bytes=1 << 40):
        """(end used by A, which talks to `name_b`; end used by B, which talks to `name_a`)."""
        a, b = cls(name_b, max_frame_bytes), cls(name_a, max_frame_bytes)
        a._other, b._other = b, a
        return a, b

    def _write(self, header, array, step):
        other = self._other
        try:
            other._deliver(*other._decode(header, array.reshape(-1).view(np.uint8).copy()))
        except FrameError as exc:
            other._fail(FrameError, str(exc))

    def say_goodbye(self):
        with self._send_lock:
            if self._failure is None:
                self._other._deliver(FrameType.GOODBYE, None, 0)
                self._fail(PeerError, "session closed")

    def wait_closed(self, deadline):
        pass

    def abort(self, reason="session aborted"):
        self._fail(PeerError, reason)
        self._other._fail(PeerError, f"{self._other.name} aborted its session")


def _raw_shutdown(sock, how):
    try:
        socket.socket.shutdown(sock, how)   # the plain socket call, also on SSL sockets
    except OSError:
        pass


def _tune(sock):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _read_exact(sock, view):
    got, n = 0, len(view)
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, RECV_CHUNK))
        if k == 0:
            break
        got += k
    return got


def read_frame(sock, peer, max_frame_bytes, expected_seq):
    """Read one frame from a blocking socket: (type, tensor, wire bytes, seq), or None at EOF."""
    head = bytearray(frames.HEADER.size)
    got = _read_exact(sock, memoryview(head))
    if got == 0:
        return None
    if got < len(head):
        raise PeerError(f"connection closed by {peer} in the middle of a frame")
    frame_type, code, ndim, seq, nbytes = frames.parse_fixed_header(head, peer, max_frame_bytes)
    if seq != expected_seq:
        raise FrameError(f"out-of-sequence frame from {peer}: got #{seq}, expected #{expected_seq}")
    shape_bytes = bytearray(8 * ndim)
    if _read_exact(sock, memoryview(shape_bytes)) < len(shape_bytes):
        raise PeerError(f"connection closed by {peer} in the middle of a frame")
    shape = frames.parse_shape(shape_bytes, ndim, code, nbytes, peer)
    payload = np.empty(nbytes, dtype=np.uint8)
    if _read_exact(sock, memoryview(payload)) < nbytes:
        raise PeerError(f"connection closed by {peer} in the middle of a frame")
    return frame_type, frames.to_tensor(payload, code, shape, peer), len(head) + 8 * ndim + nbytes


def write_frame(sock, frame_type, tensor, seq):
    code, array = frames.as_wire_array(tensor)
    header = frames.encode_header(frame_type, code, array.shape, seq, array.nbytes)
    sock.sendall(header + array.reshape(-1).view(np.uint8).tobytes())


class TcpChannel(Channel):
    """A connected (TLS or plaintext) socket after the hello, with its reader thread."""

    def __init__(self, sock, name, max_frame_bytes, watchdog):
        super().__init__(name, max_frame_bytes)
        self._sock = sock
        self._watchdog = watchdog
        self.send_started = None      # monotonic time of the send in progress, for the watchdog
        self.send_timed_out = False
        self._reader = threading.Thread(target=self._read_loop, name=f"mpcft-recv-{name}",
                                        daemon=True)
        self._reader.start()
        watchdog.add(self)

    def _read_loop(self):
        try:
            while True:
                frame = read_frame(self._sock, self.name, self.max_frame_bytes, self._recv_seq)
                if frame is None:
                    self._fail(PeerError, f"connection closed by {self.name}")
                    return
                self._recv_seq += 1
                if not self.goodbye_received:
                    self._deliver(*frame)
        except FrameError as exc:
            self._fail(FrameError, str(exc))
            _raw_shutdown(self._sock, socket.SHUT_RDWR)
        except (PeerError, OSError) as exc:
            reason = str(exc) if isinstance(exc, PeerError) else f"connection to {self.name} lost ({exc})"
            self._fail(PeerError, reason)

    def _write(self, header, array, step):
        flat = array.reshape(-1).view(np.uint8)
        self.send_started = time.monotonic()
        try:
            if array.nbytes <= SMALL_FRAME:
                self._sock.sendall(header + flat.tobytes())
            else:
                self._sock.sendall(header)
                self._sock.sendall(memoryview(flat))
        except OSError as exc:
            if self.send_timed_out:
                self._fail(MPCTimeoutError, f"{self.name} accepted no data for "
                                            f"{self._watchdog.timeout:g} s")
            else:
                self._fail(PeerError, f"connection to {self.name} lost ({exc})")
            self._failure.raise_for(step)
        finally:
            self.send_started = None

    def say_goodbye(self):
        """Send a goodbye frame and end our direction of the connection; keep reading."""
        try:
            if self._failure is None:
                self.send(FrameType.GOODBYE, np.zeros(0, np.uint8), "goodbye")
        except (PeerError, MPCTimeoutError):
            pass
        _raw_shutdown(self._sock, socket.SHUT_WR)

    def wait_closed(self, deadline):
        """Wait (until `deadline`) for the peer's end of the connection, then close the socket."""
        self._reader.join(max(0.0, deadline - time.monotonic()))
        self.abort("session closed")

    def abort(self, reason="session aborted"):
        self._fail(PeerError, reason)
        _raw_shutdown(self._sock, socket.SHUT_RDWR)
        self._reader.join(5.0)
        self._watchdog.remove(self)
        self._sock.close()


class SendWatchdog:
    """Cuts off sends that have made no progress for `timeout` s (blocking sockets cannot
    time out by themselves without making SSL reads and writes interfere)."""

    def __init__(self, timeout):
        self.timeout = timeout
        self._channels = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mpcft-send-watchdog", daemon=True)
        self._thread.start()

    def add(self, channel):
        with self._lock:
            self._channels.add(channel)

    def remove(self, channel):
        with self._lock:
            self._channels.discard(channel)

    def stop(self):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.wait(min(0.25, self.timeout / 4)):
            now = time.monotonic()
            with self._lock:
                late = [c for c in self._channels
                        if c.send_started is not None and now - c.send_started > self.timeout]
            for channel in late:
                channel.send_timed_out = True
                _raw_shutdown(channel._sock, socket.SHUT_RDWR)


class Transport:
    """The channels of one session: `peers` {rank: Channel} and `dealer` (Channel or None)."""

    def __init__(self, kind, peers, dealer=None, watchdog=None):
        self.kind, self.peers, self.dealer = kind, peers, dealer
        self._watchdog = watchdog

    def channels(self):
        return list(self.peers.values()) + ([self.dealer] if self.dealer else [])

    def close(self, graceful=True, grace=10.0):
        """Graceful: say goodbye everywhere, wait up to `grace` s for peers to do the same, close.
        Otherwise: drop every connection at once (peers notice immediately)."""
        channels = self.channels()
        if graceful:
            for channel in channels:
                channel.say_goodbye()
            deadline = time.monotonic() + grace
            for channel in channels:
                channel.wait_closed(deadline)
        else:
            for channel in channels:
                channel.abort()
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None


def warn_plaintext(who):
    sys.stderr.write(
        "\n" + "!" * 78 + f"\n!!! WARNING ({who}): mpcft runs WITHOUT TLS (insecure plaintext mode).\n"
        "!!! Peers are NOT authenticated and anyone on the network can read and alter all\n"
        "!!! shares. Use this only for benchmarks on a trusted machine.\n" + "!" * 78 + "\n\n")
    sys.stderr.flush()


def _hello(role, rank, world_size):
    return frames.json_tensor({"role": role, "rank": rank, "world_size": world_size})


def listen(endpoint):
    host = endpoint.bind or endpoint.host
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, endpoint.port))
    except OSError as exc:
        sock.close()
        raise PeerError(f"{endpoint.name} cannot listen on {host}:{endpoint.port}: {exc}") from None
    sock.listen(64)
    sock.settimeout(0.2)
    return sock


class Acceptor:
    """Accepts connections from `expected` ranks (parties) until all came or it is stopped.

    Each connection's TLS handshake and hello run in their own thread. Refused connections
    (bad certificate, identity that does not match the hello, unexpected or duplicate rank) are
    reported on stderr and remembered for the error message, and accepting goes on.
    """

    def __init__(self, config, me, expected, context, deadline, on_accept=None):
        self.config, self.me, self.context, self.deadline = config, me, context, deadline
        self.expected = set(expected)
        self.accepted = {}
        self.refusals = []
        self._on_accept = on_accept
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._stop = threading.Event()
        self._listener = listen(me)
        self._thread = threading.Thread(target=self._run, name="mpcft-accept", daemon=True)
        self._thread.start()
        if not self.expected:
            self._done.set()

    def _run(self):
        try:
            while not self._stop.is_set() and not self._done.is_set():
                try:
                    sock, address = self._listener.accept()
                except (TimeoutError, socket.timeout):
                    continue
                except OSError:
                    return
                threading.Thread(target=self._handshake, args=(sock, address), daemon=True).start()
        finally:
            self._listener.close()

    def _refuse(self, sock, address, reason, tell=False):
        message = f"{self.me.name} refused a connection from {address[0]}:{address[1]}: {reason}"
        if tell:
            try:
                write_frame(sock, FrameType.HELLO, frames.json_tensor({"error": message}), 0)
            except OSError:
                pass
        sock.close()
        sys.stderr.write(f"mpcft: {message}\n")
        with self._lock:
            self.refusals.append(message)

    def _handshake(self, sock, address):
        sock.settimeout(max(0.1, self.deadline - time.monotonic()))
        _tune(sock)
        try:
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_side=True)
            frame = read_frame(sock, f"{address[0]}:{address[1]}", 1 << 16, 0)
            if frame is None:
                raise PeerError("connection closed before the hello")
            hello = frames.tensor_json(frame[1], f"{address[0]}:{address[1]}")
        except (ssl.SSLError, PeerError, OSError) as exc:
            self._refuse(sock, address, getattr(exc, "verify_message", None) or str(exc))
            return
        rank = hello.get("rank") if isinstance(hello, dict) else None
        identity = tls.peer_identity(sock) if self.context is not None else None
        with self._lock:
            problem = None
            if frame[0] != FrameType.HELLO or hello.get("role") != "party":
                problem = f"not a party hello: {hello!r}"
            elif hello.get("world_size") != self.config.world_size:
                problem = (f"world size {hello.get('world_size')} differs from ours "
                           f"({self.config.world_size})")
            elif rank not in self.expected:
                problem = f"rank {rank!r} is not expected to connect to {self.me.name}"
            elif self.context is not None and identity != f"party-{rank}":
                problem = f"hello says rank {rank} but the certificate names {identity!r}"
            elif rank in self.accepted:
                problem = f"party {rank} is already connected"
        if problem:
            self._refuse(sock, address, problem, tell=True)
            return
        try:
            role = "dealer" if self.me.rank is None else "party"
            write_frame(sock, FrameType.HELLO, _hello(role, self.me.rank, self.config.world_size), 0)
        except OSError as exc:
            self._refuse(sock, address, f"cannot answer the hello: {exc}")
            return
        sock.settimeout(None)
        with self._lock:
            self.accepted[rank] = sock
            if set(self.accepted) == self.expected:
                self._done.set()
        if self._on_accept is not None:
            self._on_accept(rank, sock)

    def wait(self):
        """{rank: socket} once all expected ranks connected; MPCTimeoutError at the deadline."""
        self._done.wait(max(0.0, self.deadline - time.monotonic()))
        with self._lock:
            missing = sorted(self.expected - set(self.accepted))
            refusals = list(self.refusals)
        self._stop.set()
        self._thread.join()     # closes the listener
        if missing:
            self.stop()
            names = ", ".join(f"party {r}" for r in missing)
            detail = ("; refused: " + "; ".join(refusals)) if refusals else ""
            raise MPCTimeoutError(f"connection set-up of {self.me.name}: no connection from "
                                  f"{names} within {self.config.connect_timeout:g} s{detail}")
        return dict(self.accepted)

    def stop(self):
        self._stop.set()
        self._thread.join()
        with self._lock:
            for sock in self.accepted.values():
                sock.close()


RETRYABLE = (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError, TimeoutError,
             socket.timeout, socket.gaierror)
RETRYABLE_ERRNO = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT,
                   errno.ECONNRESET, errno.EADDRNOTAVAIL}


def connect(config, me, target, context, deadline):
    """Connect `me` to `target` (Endpoint), retrying until `deadline`; returns the socket."""
    where = f"{target.name} at {target.host}:{target.port}"
    step = f"connection set-up of {me.name}"
    last = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MPCTimeoutError(f"{step}: cannot reach {where} within "
                                  f"{config.connect_timeout:g} s (last error: {last})")
        try:
            sock = socket.create_connection((target.host, target.port), timeout=min(remaining, 5.0))
        except OSError as exc:
            if not isinstance(exc, RETRYABLE) and exc.errno not in RETRYABLE_ERRNO:
                raise PeerError(f"{step}: cannot connect to {where}: {exc}") from None
            last = exc
            time.sleep(min(0.05, max(0.0, remaining)))
            continue
        sock.settimeout(max(0.1, remaining))
        _tune(sock)
        try:
            return _client_handshake(sock, config, me, target, context, step, where)
        except (ConnectionResetError, BrokenPipeError) as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise


def _client_handshake(sock, config, me, target, context, step, where):
    if context is not None:
        try:
            sock = context.wrap_socket(sock)
        except ssl.SSLCertVerificationError as exc:
            raise CertificateError(f"{step}: {where} presented an unacceptable certificate: "
                                   f"{exc.verify_message}") from None
        except ssl.SSLError as exc:
            raise CertificateError(f"{step}: TLS handshake with {where} failed: {exc}") from None
        identity = tls.peer_identity(sock)
        if identity != target.identity:
            raise CertificateError(f"{step}: {where} presented a certificate for {identity!r}, "
                                   f"expected {target.identity!r}")
    try:
        write_frame(sock, FrameType.HELLO, _hello("party", me.rank, config.world_size), 0)
        frame = read_frame(sock, target.name, 1 << 16, 0)
    except ssl.SSLError as exc:
        raise CertificateError(f"{step}: {where} refused our certificate: "
                               f"{exc.reason or exc}") from None
    except (TimeoutError, socket.timeout):
        raise MPCTimeoutError(f"{step}: no hello from {where}") from None
    if frame is None:
        raise PeerError(f"{step}: {where} closed the connection during the hello")
    hello = frames.tensor_json(frame[1], target.name)
    if not isinstance(hello, dict) or "error" in hello:
        raise CertificateError(f"{step}: {where} refused us: "
                               f"{hello.get('error') if isinstance(hello, dict) else hello}")
    role = "dealer" if target.rank is None else "party"
    if hello.get("role") != role or hello.get("rank") != target.rank:
        raise PeerError(f"{step}: {where} answered as {hello.get('role')} {hello.get('rank')}")
    sock.settimeout(None)
    return sock


def contexts(config, me):
    """(server context, client context) for `me`, or (None, None) in plaintext mode."""
    if not config.tls:
        return None, None
    return (tls.server_context(config.ca, me.cert, me.key),
            tls.client_context(config.ca, me.cert, me.key))


def connect_party(config, rank):
    """Open the full mesh and the dealer connection for party `rank`; returns its Transport."""
    me = config.party(rank)
    if not config.tls:
        warn_plaintext(me.name)
    server_ctx, client_ctx = contexts(config, me)
    deadline = time.monotonic() + config.connect_timeout
    acceptor = Acceptor(config, me, range(rank), server_ctx, deadline) if rank > 0 else None
    sockets = {}
    try:
        for peer in range(rank + 1, config.world_size):
            sockets[peer] = connect(config, me, config.party(peer), client_ctx, deadline)
        dealer = (connect(config, me, config.dealer, client_ctx, deadline)
                  if config.dealer is not None else None)
        if acceptor is not None:
            sockets.update(acceptor.wait())
    except BaseException:
        if acceptor is not None:
            acceptor.stop()
        for sock in sockets.values():
            sock.close()
        raise
    watchdog = SendWatchdog(config.timeout)
    peers = {r: TcpChannel(sockets[r], config.party(r).name, config.max_frame_bytes, watchdog)
             for r in sorted(sockets)}
    dealer_channel = (TcpChannel(dealer, "dealer", config.max_frame_bytes, watchdog)
                      if dealer is not None else None)
    return Transport("tcp+tls" if config.tls else "tcp (INSECURE plaintext)", peers,
                     dealer_channel, watchdog)
