"""The hand-off between the Flower server and the aggregator parties: mutual TLS, one message each way per round.

A message is  MAGIC | u32 header length | JSON header | u64 body length | body,  with both
lengths checked against bounds before anything is allocated. The server's certificate must be
issued by the cluster CA for SERVER_IDENTITY; each aggregator's is its party certificate.
The server sends each aggregator the round's request and the sealed parts addressed to it;
each answers with its share of the aggregate (the server sums them) or a one-line error.
"""
import json
import socket
import ssl
import struct

from mpcft.runtime.errors import MPCRuntimeError, PeerError
from mpcft.runtime.tls import client_context, peer_identity, server_context

MAGIC = b"MPCFTHO1"
SERVER_IDENTITY = "flower-server"
MAX_HEADER_BYTES = 1 << 20
DEFAULT_MAX_BODY_BYTES = 1 << 32


class HandoffError(MPCRuntimeError):
    """The hand-off connection failed, timed out or carried a malformed message."""


def _read_exact(sock, count: int, who: str) -> bytes:
    chunks, left = [], count
    while left:
        try:
            chunk = sock.recv(min(left, 1 << 22))
        except socket.timeout:
            raise HandoffError(f"{who} sent nothing within the timeout") from None
        except (OSError, ssl.SSLError) as exc:
            raise HandoffError(f"connection to {who} lost ({exc})") from None
        if not chunk:
            raise HandoffError(f"connection closed by {who}")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def send_message(sock, header: dict, body: bytes = b"", who: str = "peer") -> None:
    data = json.dumps(header, sort_keys=True).encode()
    try:
        sock.sendall(MAGIC + struct.pack("!I", len(data)) + data + struct.pack("!Q", len(body)))
        sock.sendall(body)
    except (OSError, ssl.SSLError) as exc:
        raise HandoffError(f"cannot send to {who} ({exc})") from None


def recv_message(sock, who: str, max_body: int = DEFAULT_MAX_BODY_BYTES) -> tuple[dict, bytes]:
    """(header, body) of the next message; HandoffError if malformed or over the bounds."""
    if _read_exact(sock, len(MAGIC), who) != MAGIC:
        raise HandoffError(f"{who} sent something that is not an mpcft hand-off message")
    (length,) = struct.unpack("!I", _read_exact(sock, 4, who))
    if length > MAX_HEADER_BYTES:
        raise HandoffError(f"{who} announced a header of {length} bytes (limit {MAX_HEADER_BYTES})")
    try:
        header = json.loads(_read_exact(sock, length, who))
    except (ValueError, RecursionError):
        raise HandoffError(f"{who} sent an unreadable header") from None
    if not isinstance(header, dict):
        raise HandoffError(f"{who} sent a header that is not a JSON object")
    (size,) = struct.unpack("!Q", _read_exact(sock, 8, who))
    if size > max_body:
        raise HandoffError(f"{who} announced {size} bytes (limit {max_body})")
    return header, _read_exact(sock, size, who)


def accept_server(host: str, port: int, ca, cert, key, timeout: float):
    """Listen on (host, port) and return the TLS socket of the Flower server's connection."""
    context = server_context(ca, cert, key)
    with socket.create_server((host, port), reuse_port=False) as listener:
        listener.settimeout(timeout)
        try:
            raw, _ = listener.accept()
        except socket.timeout:
            raise HandoffError(f"the Flower server did not connect to {host}:{port} within {timeout:g} s") from None
    raw.settimeout(timeout)
    try:
        sock = context.wrap_socket(raw, server_side=True)
    except (OSError, ssl.SSLError) as exc:
        raw.close()
        raise HandoffError(f"TLS handshake with the Flower server failed ({exc})") from None
    identity = peer_identity(sock)
    if identity != SERVER_IDENTITY:
        sock.close()
        raise HandoffError(f"a client with the certificate of {identity!r} connected, not {SERVER_IDENTITY!r}")
    return sock


def connect_aggregator(host: str, port: int, rank: int, ca, cert, key, timeout: float):
    """TLS socket to aggregator `rank`, whose certificate must be party-RANK's."""
    context = client_context(ca, cert, key)
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
        sock = context.wrap_socket(raw)
    except (OSError, ssl.SSLError) as exc:
        raise PeerError(f"cannot reach aggregator {rank} at {host}:{port} ({exc})") from None
    identity = peer_identity(sock)
    if identity != f"party-{rank}":
        sock.close()
        raise HandoffError(f"{host}:{port} presented {identity!r}, not party-{rank}")
    sock.settimeout(timeout)
    return sock
