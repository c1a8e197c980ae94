"""Transports: ordered, framed, full-duplex channels between two processes (or threads).

A `Channel` joins this process to one peer (another party or the dealer). Received frames are
read by a background thread into a per-channel inbox, so sends never wait for the local
receiver and two parties can send each other large tensors at the same moment. `recv` waits at
most the step timeout; a send that makes no progress for the step timeout is cut off by a
watchdog. Failures (peer closed or crashed, bad frame, timeout, any error of the reader thread)
raise `PeerError`/`FrameError`/`MPCTimeoutError` naming the peer and the step; a reader error
fails the channel at once, so a waiting `recv` raises it immediately.

What a peer can make a TCP receiver hold is bounded: the reader stops reading (TCP flow control
then holds the sender back) while the inbox holds frames and the next one would take it past
`max_buffered_bytes`; a frame is always taken into an empty inbox, so one frame of up to
`max_frame_bytes` always fits and two parties exchanging large tensors cannot block each other
(parties that each send the other several frames, more than `max_buffered_bytes` in all, before
receiving could: the send watchdog then ends the step).
A payload's memory is taken as its bytes arrive (`PAYLOAD_STEP` at a time), except for a frame
the local step announced exactly (`Channel.expect_next`, `recv(..., expected)`): that one is read
straight into its tensor. A header that does not match what the announced or waiting step
expects fails the channel at once, before its payload is read.

* `MemoryChannel`: both ends in one process (threads), frames encoded and validated as on TCP.
* `TcpChannel`: one TCP connection, keyed by mutual TLS 1.3 and carried in AES-256-GCM records
  (records.py) unless the cluster runs in (insecure) plaintext mode. Tensors are encrypted
  straight from their memory and decrypted into a fresh buffer that becomes the received
  tensor (without copies, but for the pieces of a large frame that arrived before its step
  announced it). A network observer learns frame sizes and timing only; in plaintext mode,
  everything.

Connection set-up (`connect_party`): every party listens on its port; the lower rank of each
pair connects to the higher one and each party connects to the dealer. The connecting side
sends a hello frame (role, rank, world size), which the accepting side checks against the
certificate's common name and answers with its own hello; any malformed hello is refused.
Under TLS both sides then key their records (records.seal) and close TLS.
Connecting retries until the connect deadline, so processes may start in any order.
"""
import collections
import errno
import socket
import ssl
import sys
import threading
import time

import numpy as np

from . import frames, records, tls
from .errors import CertificateError, FrameError, MPCTimeoutError, PeerError
from .frames import FrameType

SMALL_FRAME = 1 << 16        # frames up to this size go out in one write with their header
RECV_CHUNK = 1 << 22
PAYLOAD_STEP = 1 << 24       # memory taken ahead of the bytes of a payload nobody announced
FRAME_COST = 1 << 10         # inbox bytes counted per frame besides its payload (its objects)
HELLO_BYTES = 1 << 16


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
        self._state = threading.Condition()   # guards the inbox, its accounting and the failure
        self._inbox = collections.deque()     # (frame type, tensor, wire bytes) in arrival order
        self._buffered = 0                    # inbox bytes: payloads plus FRAME_COST each
        self._taken = 0                       # frames handed out by recv
        self._announced = None                # (seq, frames.Expected) of the frame recv takes next
        self._incoming = None                 # (seq, type, dtype, shape) of the header last read
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

    @property
    def receiving(self):
        """True while frames can still arrive (the channel has not failed)."""
        return self._failure is None

    @property
    def pending(self):
        """True when a frame has arrived that recv has not taken yet."""
        with self._state:
            return bool(self._inbox)

    def expect_next(self, expected):
        """Announce what the next frame `recv` takes must be (a `frames.Expected`), so the reader
        can refuse a mismatch at its header and read an exact match straight into place."""
        with self._state:
            self._announced = (self._taken + 1, expected)

    def recv(self, step, timeout, expected=None):
        """Next frame as (frame type, torch tensor, wire bytes); waits at most `timeout` s (None:
        no limit). A frame that `expected` (a `frames.Expected`) refuses fails the channel with
        FrameError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state:
            if expected is not None:
                self._announced = (self._taken + 1, expected)
            while not self._inbox:
                if self._failure is not None:
                    self._failure.raise_for(step)
                header = self._incoming_header(self._taken + 1)
                if expected is not None and header is not None and expected.problem(*header):
                    self._fail(FrameError, f"{self.name} {expected.problem(*header)}")
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise MPCTimeoutError(f"{step}: nothing received from {self.name} within "
                                          f"{timeout:g} s")
                self._state.wait(remaining)
            frame_type, tensor, wire = self._inbox.popleft()
            self._taken += 1
            self._buffered -= tensor.nbytes + FRAME_COST
            self._state.notify_all()
        problem = None if expected is None else expected.problem(frame_type, tensor.dtype,
                                                                  tensor.shape)
        if problem:
            self._fail(FrameError, f"{self.name} {problem}")
            raise FrameError(f"{step}: {self.name} {problem}")
        return frame_type, tensor, wire

    def _incoming_header(self, seq):
        """(type, dtype, shape) of the header the reader holds if it is frame `seq` and not a
        goodbye (which ends the session whatever was expected); else None. Call locked."""
        incoming = self._incoming
        if incoming is None or incoming[0] != seq or incoming[1] == FrameType.GOODBYE:
            return None
        return incoming[1:]

    def _deliver(self, frame_type, tensor, wire):
        if frame_type == FrameType.GOODBYE:
            self.goodbye_received = True
            self._fail(PeerError, f"{self.name} closed its session")
            return
        with self._state:
            self._inbox.append((frame_type, tensor, wire))
            self._buffered += tensor.nbytes + FRAME_COST
            self._state.notify_all()

    def _fail(self, error_type, reason):
        with self._state:
            if self._failure is None:
                self._failure = _Failure(error_type, reason)
                self._state.notify_all()

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
        except Exception as exc:  # noqa: BLE001 - any decode error fails the receiving end
            other._fail(PeerError, f"receiving from {other.name} failed: "
                                   f"{type(exc).__name__}: {exc}")

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
    """Shut the TCP connection down (a channel's socket: plain or a records.SealedSocket, never
    an SSL socket, whose shutdown would race its reader), ignoring a connection already gone."""
    try:
        sock.shutdown(how)
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


def _read_into(sock, peer, buffer):
    if _read_exact(sock, memoryview(buffer)) < len(buffer):
        raise PeerError(f"connection closed by {peer} in the middle of a frame")
    return buffer


def _read_payload(sock, peer, nbytes, wanted):
    """A payload as one uint8 array. Memory is taken as the bytes arrive, PAYLOAD_STEP at a
    time, until `wanted()` says the receiving step announced exactly this frame or at most
    PAYLOAD_STEP bytes are left: then the rest goes straight into place after one copy of the
    pieces read so far."""
    pieces, got = [], 0
    while nbytes - got > PAYLOAD_STEP and not wanted():
        pieces.append(_read_into(sock, peer, np.empty(PAYLOAD_STEP, np.uint8)))
        got += PAYLOAD_STEP
    payload = np.empty(nbytes, np.uint8)
    if pieces:
        np.concatenate(pieces, out=payload[:got])
    _read_into(sock, peer, payload[got:])
    return payload


def read_frame(sock, peer, max_frame_bytes, expected_seq, admit=None):
    """Read one frame from a blocking socket: (type, tensor, wire bytes), or None at EOF.

    `admit(seq, frame type, dtype code, shape, nbytes)` runs between header and payload: it may
    wait (backpressure) or raise, and returns `wanted()`, true once the payload may be read into
    memory taken at once (see _read_payload).
    """
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
    wanted = admit(seq, frame_type, code, shape, nbytes) if admit is not None else lambda: False
    payload = _read_payload(sock, peer, nbytes, wanted)
    return frame_type, frames.to_tensor(payload, code, shape, peer), len(head) + 8 * ndim + nbytes


def write_frame(sock, frame_type, tensor, seq):
    code, array = frames.as_wire_array(tensor)
    header = frames.encode_header(frame_type, code, array.shape, seq, array.nbytes)
    sock.sendall(header + array.reshape(-1).view(np.uint8).tobytes())


class TcpChannel(Channel):
    """A connected (TLS or plaintext) socket after the hello, with its reader thread; the inbox
    takes frames beyond `max_buffered_bytes` only when empty (see the module docstring)."""

    def __init__(self, sock, name, max_frame_bytes, watchdog, max_buffered_bytes):
        super().__init__(name, max_frame_bytes)
        self.max_buffered_bytes = max_buffered_bytes
        self._sock = sock
        self._watchdog = watchdog
        self.send_started = None      # monotonic time of the send in progress, for the watchdog
        self.send_timed_out = False
        self._reader = threading.Thread(target=self._read_loop, name=f"mpcft-recv-{name}",
                                        daemon=True)
        self._reader.start()
        watchdog.add(self)

    @property
    def receiving(self):
        """True while frames can still arrive: no failure and the reader thread runs."""
        return self._failure is None and self._reader.is_alive()

    def _read_loop(self):
        try:
            while self._read_next():
                pass
        except FrameError as exc:
            self._fail(FrameError, str(exc))
            _raw_shutdown(self._sock, socket.SHUT_RDWR)
        except (PeerError, OSError) as exc:
            reason = str(exc) if isinstance(exc, PeerError) else f"connection to {self.name} lost ({exc})"
            self._fail(PeerError, reason)
        except Exception as exc:  # noqa: BLE001 - e.g. MemoryError: the channel fails with it
            self._fail(PeerError, f"receiving from {self.name} failed: {type(exc).__name__}: {exc}")
            _raw_shutdown(self._sock, socket.SHUT_RDWR)

    def _read_next(self):
        """Read, check and deliver one frame; False at the end of the connection."""
        frame = read_frame(self._sock, self.name, self.max_frame_bytes, self._recv_seq, self._admit)
        if frame is None:
            self._fail(PeerError, f"connection closed by {self.name}")
            return False
        self._recv_seq += 1
        if not self.goodbye_received:
            self._deliver(*frame)
        return True

    def _admit(self, seq, frame_type, code, shape, nbytes):
        """Between a header and its payload: wait while the inbox holds frames and this one would
        take it past max_buffered_bytes; refuse a frame the next recv announced it will not
        take. Returns `wanted()` for read_frame: true once that announcement is exactly this
        frame, whose payload may then go straight into place."""
        with self._state:
            self._incoming = (seq, frame_type, frames.DTYPES[code][0], shape)
            self._state.notify_all()          # a waiting recv checks this header now
            while (self._failure is None and self._inbox
                   and self._buffered + nbytes + FRAME_COST > self.max_buffered_bytes):
                self._state.wait()
            expected, header = self._announced_for(seq), self._incoming_header(seq)
        if expected is not None and header is not None and expected.problem(*header):
            raise FrameError(f"{self.name} {expected.problem(*header)}")
        return lambda: self._wanted(seq)

    def _announced_for(self, seq):
        """The Expected announced for frame `seq`, or None. Call locked."""
        announced = self._announced
        return announced[1] if announced is not None and announced[0] == seq else None

    def _wanted(self, seq):
        """True if the next recv announced exactly frame `seq`, whose header the reader holds."""
        with self._state:
            expected, header = self._announced_for(seq), self._incoming_header(seq)
            return (expected is not None and header is not None and expected.exact
                    and expected.problem(*header) is None)

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


def warn_fixed_seeds(who):
    sys.stderr.write(
        f"mpcft: WARNING ({who}): insecure_fixed_seeds: every seed of this run is derived from a "
        f"public value (reproducibility tests only; no secret is safe)\n")
    sys.stderr.flush()


def _hello(role, rank, world_size):
    return frames.json_tensor({"role": role, "rank": rank, "world_size": world_size})


def _brief(value, limit=200):
    """A peer-supplied value for an error message, cut to `limit` characters."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _read_hello(sock, peer):
    """The JSON object of the peer's hello frame; PeerError/FrameError for anything else."""
    frame = read_frame(sock, peer, HELLO_BYTES, 0)
    if frame is None:
        raise PeerError(f"{peer} closed the connection during the hello")
    if frame[0] != FrameType.HELLO:
        raise FrameError(f"{peer} sent a {frame[0].name} frame instead of a hello")
    hello = frames.tensor_json(frame[1], peer)
    if not isinstance(hello, dict):
        raise FrameError(f"malformed hello from {peer}: {_brief(hello)} is not a JSON object")
    return hello


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
        try:
            _tune(sock)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_side=True)
            hello = _read_hello(sock, f"{address[0]}:{address[1]}")
            identity = tls.peer_identity(sock) if self.context is not None else None
        except (ssl.SSLError, PeerError, OSError) as exc:
            self._refuse(sock, address, getattr(exc, "verify_message", None) or str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a refusal, never a dead accept thread
            self._refuse(sock, address, f"{type(exc).__name__}: {exc}")
            return
        rank = hello.get("rank")
        with self._lock:
            problem = self._hello_problem(hello, identity)
        if problem:
            self._refuse(sock, address, problem, tell=True)
            return
        try:
            role = "dealer" if self.me.rank is None else "party"
            write_frame(sock, FrameType.HELLO, _hello(role, self.me.rank, self.config.world_size), 0)
            if self.context is not None:
                sock = records.seal(sock, False, f"party {rank}")
        except (OSError, PeerError) as exc:
            self._refuse(sock, address, f"cannot answer the hello and key the records: {exc}")
            return
        sock.settimeout(None)
        with self._lock:
            self.accepted[rank] = sock
            if set(self.accepted) == self.expected:
                self._done.set()
        if self._on_accept is not None:
            self._on_accept(rank, sock)

    def _hello_problem(self, hello, identity):
        """Why a connecting party's hello is refused, or None; call with the lock held."""
        rank, size = hello.get("rank"), hello.get("world_size")
        if hello.get("role") != "party" or type(rank) is not int:
            return f"not a party hello: {_brief(hello)}"
        if type(size) is not int or size != self.config.world_size:
            return f"world size {_brief(size)} differs from ours ({self.config.world_size})"
        if rank not in self.expected:
            return f"rank {rank} is not expected to connect to {self.me.name}"
        if self.context is not None and identity != f"party-{rank}":
            return f"hello says rank {rank} but the certificate names {identity!r}"
        if rank in self.accepted:
            return f"party {rank} is already connected"
        return None

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
        hello = _read_hello(sock, where)
    except ssl.SSLError as exc:
        raise CertificateError(f"{step}: {where} refused our certificate: "
                               f"{exc.reason or exc}") from None
    except (TimeoutError, socket.timeout):
        raise MPCTimeoutError(f"{step}: no hello from {where}") from None
    except PeerError as exc:
        raise type(exc)(f"{step}: {exc}") from None
    if "error" in hello:
        raise CertificateError(f"{step}: {where} refused us: {_brief(hello['error'], 500)}")
    role, rank = ("dealer" if target.rank is None else "party"), hello.get("rank")
    if hello.get("role") != role or type(rank) is not type(target.rank) or rank != target.rank:
        raise PeerError(f"{step}: {where} answered as {_brief(hello.get('role'))} {_brief(rank)}")
    if context is not None:
        try:
            sock = records.seal(sock, True, target.name)
        except ssl.SSLError as exc:
            raise PeerError(f"{step}: keying records with {where} failed: {exc}") from None
        except (TimeoutError, socket.timeout):
            raise MPCTimeoutError(f"{step}: {where} did not key the records in time") from None
        except PeerError as exc:
            raise PeerError(f"{step}: {exc}") from None
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
    peers = {r: TcpChannel(sockets[r], config.party(r).name, config.max_frame_bytes, watchdog,
                           config.max_buffered_bytes) for r in sorted(sockets)}
    dealer_channel = (TcpChannel(dealer, "dealer", config.max_frame_bytes, watchdog,
                                 config.max_buffered_bytes) if dealer is not None else None)
    return Transport("tcp+tls (AES-GCM records)" if config.tls else "tcp (INSECURE plaintext)", peers,
                     dealer_channel, watchdog)
