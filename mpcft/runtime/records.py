"""AES-256-GCM records over TCP, keyed inside a mutual-TLS 1.3 session.

`seal` runs on a TLS connection whose certificates and hello both ends have checked. Each end
sends 32 bytes from os.urandom through TLS; both derive, with HKDF-SHA256 over the two
contributions (the connecting end's first), one secret per direction, and close TLS
(close_notify both ways). The same TCP connection then carries records
    n (4 bytes, big-endian, 1 <= n <= RECORD_BYTES) | AES-256-GCM_k(nonce = i, data, aad = n)
with i the record's number in its direction (96 bits, never repeated). A record that is
altered, dropped, replayed, reordered or cut short fails authentication or arrives short, and
the channel fails. Each direction takes a new key k (HKDF-Expand of its secret) every
RECORDS_PER_KEY records (64 GiB at most), within the usage limits TLS 1.3 sets for AES-GCM.
As under TLS, a network observer learns record sizes and timing, nothing of their contents;
keys exist only in the two processes, and TLS's ECDHE handshake keeps them forward secret.

Why records of our own after the handshake: Python's ssl module runs the system OpenSSL 3.0,
whose 16 KiB records (two reads and a Python call each) cost 50-70 ms of CPU per 100 MB over
plaintext TCP on loopback, both ends together; these records cost 15-30 ms
(benchmarks/bench_transport.py, RESULTS.md). A two-party Transformer block step moves 300 MB.
"""
import os
import socket
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from .errors import FrameError, PeerError

RECORD_BYTES = 1 << 18         # plaintext bytes per record at most: 256 KiB stay in L2
RECORDS_PER_KEY = 1 << 18      # a direction's key changes after this many records (64 GiB)
CONTRIBUTION_BYTES = 32
TAG_BYTES = 16
_LENGTH = struct.Struct(">I")
RECORD_OVERHEAD = _LENGTH.size + TAG_BYTES     # bytes a record adds to its plaintext


def direction_secrets(connecting: bytes, accepting: bytes) -> tuple[bytes, bytes]:
    """(secret of the connecting end's records, secret of the accepting end's) from both ends'
    random contributions."""
    hkdf = HKDF(hashes.SHA256(), length=64, salt=None, info=b"mpcft records v1 directions")
    okm = hkdf.derive(connecting + accepting)
    return okm[:32], okm[32:]


def record_key(secret: bytes, epoch: int) -> bytes:
    """The AES-256 key of records epoch * RECORDS_PER_KEY ... (epoch + 1) * RECORDS_PER_KEY - 1."""
    return HKDFExpand(hashes.SHA256(), 32, b"mpcft records v1 key " + epoch.to_bytes(8, "big")).derive(secret)


class _Direction:
    """One direction's record numbers and current key."""

    def __init__(self, secret: bytes):
        self._secret, self._number, self._aead = secret, 0, None

    def next(self) -> tuple[bytes, AESGCM]:
        """(nonce, cipher) of the next record."""
        number = self._number
        if number % RECORDS_PER_KEY == 0:
            self._aead = AESGCM(record_key(self._secret, number // RECORDS_PER_KEY))
        self._number += 1
        return number.to_bytes(12, "big"), self._aead


class SealedSocket:
    """A connected TCP socket whose byte stream travels in AES-GCM records (module docstring).

    Offers what a channel uses of a socket: sendall, recv_into, settimeout, shutdown, close.
    One thread may send while another receives; each direction is used by one thread at a time.
    """

    def __init__(self, sock: socket.socket, send_secret: bytes, recv_secret: bytes, peer: str):
        self._sock, self._peer = sock, peer
        self._send, self._recv = _Direction(send_secret), _Direction(recv_secret)
        self._out = bytearray(_LENGTH.size + RECORD_BYTES + TAG_BYTES)
        self._in = bytearray(RECORD_BYTES + TAG_BYTES)
        self._plain = bytearray(RECORD_BYTES)      # a record's bytes not yet handed out
        self._start = self._end = 0

    def sendall(self, data) -> None:
        view = memoryview(data).cast("B")
        out = memoryview(self._out)
        for start in range(0, len(view), RECORD_BYTES):
            chunk = view[start:start + RECORD_BYTES]
            header = _LENGTH.pack(len(chunk))
            out[:_LENGTH.size] = header
            nonce, aead = self._send.next()
            end = _LENGTH.size + len(chunk) + TAG_BYTES
            aead.encrypt_into(nonce, chunk, header, out[_LENGTH.size:end])
            self._sock.sendall(out[:end])

    def recv_into(self, buffer, nbytes: int = 0) -> int:
        """Up to nbytes (default len(buffer)) bytes of the stream into buffer; 0 at its end. A
        whole record that fits is decrypted straight into place."""
        view = memoryview(buffer).cast("B")
        wanted = min(nbytes or len(view), len(view))
        if wanted == 0:
            return 0
        if self._start == self._end:
            record = self._read_record()
            if record is None:
                return 0
            header, body, n = record
            nonce, aead = self._recv.next()
            target = view[:n] if wanted >= n else memoryview(self._plain)[:n]
            try:
                aead.decrypt_into(nonce, body, header, target)
            except InvalidTag:
                raise FrameError(f"a record from {self._peer} failed authentication "
                                 f"(altered, replayed or out of order)") from None
            if wanted >= n:
                return n
            self._start, self._end = 0, n
        k = min(wanted, self._end - self._start)
        view[:k] = self._plain[self._start:self._start + k]
        self._start += k
        return k

    def _read_record(self):
        """(length header, ciphertext with tag, plaintext length) of the next record, or None
        at the end of the stream between records."""
        header = bytearray(_LENGTH.size)
        got = self._read_exact(memoryview(header))
        if got == 0:
            return None
        if got < len(header):
            raise PeerError(f"connection closed by {self._peer} in the middle of a record")
        (n,) = _LENGTH.unpack(header)
        if not 1 <= n <= RECORD_BYTES:
            raise FrameError(f"malformed record from {self._peer}: length {n} outside "
                             f"1..{RECORD_BYTES}")
        body = memoryview(self._in)[:n + TAG_BYTES]
        if self._read_exact(body) < len(body):
            raise PeerError(f"connection closed by {self._peer} in the middle of a record")
        return bytes(header), body, n

    def _read_exact(self, view) -> int:
        got = 0
        while got < len(view):
            k = self._sock.recv_into(view[got:])
            if k == 0:
                break
            got += k
        return got

    def settimeout(self, value) -> None:
        self._sock.settimeout(value)

    def shutdown(self, how) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()


def seal(tls_sock, connecting: bool, peer: str) -> SealedSocket:
    """Key records through the TLS socket `tls_sock` (both ends call this after the hello),
    close TLS and return the TCP connection as a SealedSocket. Errors: OSError, ssl.SSLError,
    PeerError (the peer closed the connection)."""
    mine = os.urandom(CONTRIBUTION_BYTES)
    tls_sock.sendall(mine)
    theirs = bytearray(CONTRIBUTION_BYTES)
    got = 0
    while got < len(theirs):
        k = tls_sock.recv_into(memoryview(theirs)[got:])
        if k == 0:
            raise PeerError(f"{peer} closed the connection while keying records")
        got += k
    plain = tls_sock.unwrap()
    timeout = plain.gettimeout()
    sock = socket.socket(plain.family, plain.type, plain.proto, fileno=plain.detach())
    sock.settimeout(timeout)
    outgoing, incoming = direction_secrets(*((mine, bytes(theirs)) if connecting else (bytes(theirs), mine)))
    return SealedSocket(sock, *((outgoing, incoming) if connecting else (incoming, outgoing)), peer)
