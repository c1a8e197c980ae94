"""AES-GCM records beneath TLS channels: round trips, wire format, tampering, key changes."""
import dataclasses
import os
import socket
import threading

import pytest
import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mpcft.runtime import local_cluster, records
from mpcft.runtime.errors import FrameError, PeerError
from mpcft.runtime.records import (RECORD_BYTES, TAG_BYTES, SealedSocket, direction_secrets,
                                   record_key)

from runtime_helpers import connect_all

pytestmark = pytest.mark.timeout(60)


def new_secrets():
    return direction_secrets(os.urandom(32), os.urandom(32))


def read_all(sock):
    """Every raw byte from `sock` until the peer shuts down its sending side."""
    out = bytearray()
    while chunk := sock.recv(1 << 20):
        out += chunk
    return bytes(out)


def capture(secret, payloads):
    """The raw bytes a SealedSocket sending with `secret` writes for sendall of each payload."""
    left, right = socket.socketpair()
    sender = SealedSocket(left, secret, os.urandom(32), "party 1")

    def send():
        for payload in payloads:
            sender.sendall(payload)
        left.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=send)
    thread.start()
    raw = read_all(right)
    thread.join(10)
    left.close()
    right.close()
    return raw


def split(raw):
    """[(length header, ciphertext with tag)] of the records in `raw`."""
    out = []
    while raw:
        n = int.from_bytes(raw[:4], "big")
        out.append((raw[:4], raw[4:4 + n + TAG_BYTES]))
        raw = raw[4 + n + TAG_BYTES:]
    return out


def read_stream(secret, raw):
    """Everything a SealedSocket receiving with `secret` reads from the raw bytes `raw`."""
    left, right = socket.socketpair()
    left.sendall(raw)
    left.close()
    receiver = SealedSocket(right, os.urandom(32), secret, "party 0")
    out, buffer = bytearray(), bytearray(1 << 16)
    while k := receiver.recv_into(buffer):
        out += buffer[:k]
    receiver.close()
    return bytes(out)


@pytest.mark.parametrize("size", [1, RECORD_BYTES - 1, RECORD_BYTES, RECORD_BYTES + 1, 3 << 20])
def test_round_trip_with_odd_reads(size):
    """Bytes sent in records come back exactly, read 7, then 100003, then the rest at a time."""
    a, b = new_secrets()
    left, right = socket.socketpair()
    sender, receiver = SealedSocket(left, a, b, "party 0"), SealedSocket(right, b, a, "party 1")
    payload = os.urandom(size)

    def send():
        sender.sendall(payload)
        left.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=send)
    thread.start()
    received, got, wants = bytearray(size), 0, iter([7, 100003])
    view = memoryview(received)
    while got < size:
        k = receiver.recv_into(view[got:], min(next(wants, size), size - got))
        assert k > 0
        got += k
    assert receiver.recv_into(bytearray(1)) == 0
    thread.join(10)
    assert bytes(received) == payload
    sender.close()
    receiver.close()


def test_wire_format():
    """length | AES-GCM(nonce = record number, aad = length); no plaintext on the wire."""
    a, _ = new_secrets()
    pattern, tail = b"SECRET-SHARE" * 1000, os.urandom(8 * RECORD_BYTES + 5)
    raw = capture(a, [pattern, tail])
    assert pattern[:12] not in raw
    parsed = split(raw)
    lengths = [int.from_bytes(header, "big") for header, _ in parsed]
    assert lengths == [len(pattern)] + [RECORD_BYTES] * 8 + [5]
    aead = AESGCM(record_key(a, 0))
    plain = b"".join(aead.decrypt(i.to_bytes(12, "big"), body, header)
                     for i, (header, body) in enumerate(parsed))
    assert plain == pattern + tail
    assert capture(a, [b""]) == b""


def join(recs):
    return b"".join(header + body for header, body in recs)


@pytest.mark.parametrize("tamper", [
    lambda recs: join([(recs[0][0], bytes([recs[0][1][0] ^ 1]) + recs[0][1][1:]), recs[1]]),
    lambda recs: join([recs[0], recs[0], recs[1]]),
    lambda recs: join([recs[1], recs[0]]),
], ids=["bit-flip", "replay", "swap"])
def test_tampered_records_fail(tamper):
    """An altered, replayed or reordered record fails authentication."""
    a, _ = new_secrets()
    recs = split(capture(a, [b"first", b"second"]))
    with pytest.raises(FrameError, match="from party 0 failed authentication"):
        read_stream(a, tamper(recs))


def test_reflected_record_fails():
    """A record sealed for the other direction fails authentication."""
    a, b = new_secrets()
    with pytest.raises(FrameError, match="failed authentication"):
        read_stream(a, capture(b, [b"reflected"]))


@pytest.mark.parametrize("length", [0, RECORD_BYTES + 1])
def test_bad_length_is_malformed(length):
    """A length outside 1..RECORD_BYTES is refused before any body is read."""
    with pytest.raises(FrameError, match="malformed record from party 0: length"):
        read_stream(os.urandom(32), length.to_bytes(4, "big") + b"x" * 64)


@pytest.mark.parametrize("cut", [2, 4, 4 + 5, 4 + 10 + TAG_BYTES - 1])
def test_close_inside_record_is_peer_error(cut):
    """A stream that ends inside a record's header or body fails."""
    a, _ = new_secrets()
    raw = capture(a, [b"0123456789"])
    with pytest.raises(PeerError, match="in the middle of a record"):
        read_stream(a, raw[:cut])


def test_close_between_records_ends_stream():
    """A stream that ends after a whole record reads as its end (recv_into returns 0)."""
    a, _ = new_secrets()
    raw = capture(a, [b"0123456789", b"more"])
    assert read_stream(a, raw) == b"0123456789more"
    assert read_stream(a, raw[:4 + 10 + TAG_BYTES]) == b"0123456789"


def test_key_changes_every_records_per_key(monkeypatch):
    """With 2 records per key, record 2 is sealed with the epoch-1 key, not the epoch-0 key."""
    monkeypatch.setattr(records, "RECORDS_PER_KEY", 2)
    a, _ = new_secrets()
    payloads = [b"r%d" % i for i in range(5)]
    raw = capture(a, payloads)
    assert read_stream(a, raw) == b"".join(payloads)
    header, body = split(raw)[2]
    nonce = (2).to_bytes(12, "big")
    assert AESGCM(record_key(a, 1)).decrypt(nonce, body, header) == b"r2"
    with pytest.raises(InvalidTag):
        AESGCM(record_key(a, 0)).decrypt(nonce, body, header)


def test_direction_secrets():
    """Two different secrets per connection, which depend on the order of the contributions."""
    x, y = os.urandom(32), os.urandom(32)
    a, b = direction_secrets(x, y)
    assert a != b and len(a) == len(b) == 32
    assert set(direction_secrets(y, x)).isdisjoint({a, b})


def test_tls_session_runs_over_records(tmp_path):
    """TLS channels carry records; bytes written beneath them fail authentication."""
    config = local_cluster(tmp_path, 2, connect_timeout=10, timeout=5)[0]
    sessions, errors = connect_all(config)
    assert not errors
    try:
        assert isinstance(sessions[0].transport.peers[1]._sock, SealedSocket)
        sessions[0].send(1, torch.arange(10))
        assert torch.equal(sessions[1].recv(0), torch.arange(10))
        sessions[0].transport.peers[1]._sock._sock.sendall(b"\x00\x00\x00\x10" + b"x" * 32)
        with pytest.raises(FrameError, match="failed authentication"):
            sessions[1].recv(0)
    finally:
        for s in sessions.values():
            s.abort()


def test_plaintext_session_has_no_records(tmp_path):
    """Without TLS the channel's socket is a plain TCP socket."""
    config = local_cluster(tmp_path, 2, connect_timeout=10, timeout=5)[0]
    sessions, errors = connect_all(dataclasses.replace(config, tls=False))
    assert not errors
    try:
        assert type(sessions[0].transport.peers[1]._sock) is socket.socket
    finally:
        for s in sessions.values():
            s.abort()
