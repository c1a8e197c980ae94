"""A fake peer (a raw TCP socket, plaintext cluster) sends bad frames and hellos to real processes.

Every receiver must fail within about a second of the bad frame, naming the cause: a party
process with the step it was in, the dealer process by exiting non-zero. No thread may die with
an exception of its own, and a malformed hello is a clean refusal on both sides.
"""
import dataclasses
import secrets
import socket
import threading
import time

import numpy as np
import pytest
import torch

from mpcft.runtime import CertificateError, PeerError, config, local_cluster, transport
from mpcft.runtime.errors import PEER_FAILED_STATUS
from mpcft.runtime.frames import FrameType, json_tensor

from runtime_helpers import FakePeer, frame_bytes, raw_header, start_python, wait_for_line

pytestmark = pytest.mark.timeout(120)

PARTY = """
import sys, time, torch
from mpcft.runtime import Session
session = Session.connect(sys.argv[1], 1)
print("READY", flush=True)
try:
    session.exchange({0: torch.zeros(4, dtype=torch.int64)})
except Exception as exc:
    print("FAILED", time.time(), f"{type(exc).__name__}: {exc}", flush=True)
    sys.exit(1)
"""

DEALER = """
import sys
from mpcft.runtime import DealerServer, load_config
sys.exit(DealerServer(load_config(sys.argv[1]), "mpcft.runtime.dealer:echo_handler").run())
"""

BAD_PARTY_FRAMES = {
    "zero with 2^62": (raw_header(code=6, shape=(0, 1 << 62), seq=2),
                       "FrameError: recv from party 0 in exchange: malformed frame from party 0: shape "
                       "[0, 4611686018427387904] of dtype torch.int64 spans more than"),
    "3 GiB that never come": (raw_header(code=6, shape=(3 << 27,), seq=2, nbytes=3 << 30),
                              "FrameError: recv from party 0 in exchange: party 0 sent torch.int64 "
                              "[402653184] where torch.int64 [4] was expected"),
    "wrong dtype": (raw_header(code=5, shape=(4,), seq=2, nbytes=16) + bytes(16),
                    "FrameError: recv from party 0 in exchange: party 0 sent torch.int32 [4] where "
                    "torch.int64 [4] was expected"),
    "garbage": (b"GARBAGE!" * 8, "FrameError: recv from party 0 in exchange: malformed frame from "
                                 "party 0: bad magic"),
}


@pytest.fixture
def plaintext_cluster(tmp_path):
    """A 2-party plaintext cluster with a dealer; long step timeouts, so that only a prompt
    failure (never a timeout) passes the tests."""
    return local_cluster(tmp_path, 2, dealer=True, tls_enabled=False, timeout=30,
                         connect_timeout=30)


@pytest.fixture
def no_thread_dies(monkeypatch):
    died = []
    monkeypatch.setattr(threading, "excepthook", died.append)
    yield
    assert died == []


@pytest.mark.parametrize("case", list(BAD_PARTY_FRAMES))
def test_bad_frame_into_a_party_process_fails_it_at_once(plaintext_cluster, tmp_path, case):
    cfg, _ = plaintext_cluster
    path = config.dump(dataclasses.replace(cfg, dealer=None), tmp_path / "parties.toml")
    party = start_python(PARTY, path)
    fake = FakePeer(cfg, 0, cfg.party(1))
    try:
        fake.send(FrameType.SEED, np.frombuffer(secrets.token_bytes(32), np.uint8))
        wait_for_line(party, "READY")
        time.sleep(0.2)
        data, cause = BAD_PARTY_FRAMES[case]
        sent_at = time.time()
        fake.send_raw(data)
        failed = wait_for_line(party, "FAILED").split(" ", 2)
        _, stderr = party.communicate(timeout=30)
    finally:
        fake.close()
        party.kill()
    assert float(failed[1]) - sent_at < 1.0
    assert failed[2].startswith(cause), failed[2]
    assert party.returncode == 1
    assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr


def fake_party_of_dealer(cfg):
    """A fake party 0 connected to the dealer, past its seed."""
    fake = FakePeer(cfg, 0, cfg.dealer)
    frame_type, seed, _ = fake.recv()
    assert frame_type == FrameType.SEED and seed.numel() == 32
    return fake


BAD_REQUESTS = {
    "zero with 2^62": (raw_header(frame_type=4, code=2, shape=(0, 1 << 62)), "spans more than"),
    "4 GiB request": (raw_header(frame_type=4, code=2, shape=(1 << 32,), nbytes=1 << 32),
                      "oversized frame from party 0: 4294967296 bytes, limit 1048576"),
    "bfloat16 request": (raw_header(frame_type=4, code=8, shape=(2,), nbytes=4) + bytes(4),
                         "sent torch.bfloat16 [2] where torch.uint8 [*] was expected"),
    "garbage JSON": (raw_header(frame_type=4, code=2, shape=(3,), nbytes=3) + b"[[[",
                     "malformed control frame from party 0"),
}


def dealer_outcome(cfg, path, data=b""):
    """A real dealer process of cluster file `path` and a fake party 0 that sends `data`:
    (exit status, stderr, seconds from the sending to the exit)."""
    dealer = start_python(DEALER, path)
    fake = fake_party_of_dealer(cfg)
    try:
        sent_at = time.monotonic()
        if data:
            fake.send_raw(data)
        _, stderr = dealer.communicate(timeout=30)
        return dealer.returncode, stderr, time.monotonic() - sent_at
    finally:
        fake.close()
        dealer.kill()


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_frame_into_the_dealer_process_stops_it_at_once(plaintext_cluster, case):
    cfg, path = plaintext_cluster
    data, cause = BAD_REQUESTS[case]
    returncode, stderr, took = dealer_outcome(cfg, path, data)
    assert returncode == PEER_FAILED_STATUS, stderr
    assert took < 3.0
    assert "mpcft dealer: lost party 0: dealer waiting for request #0 from party 0" in stderr
    assert cause in stderr, stderr
    assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr


def test_dealer_drops_a_party_that_stays_idle_past_its_bound(plaintext_cluster, tmp_path):
    cfg, _ = plaintext_cluster
    idle = dataclasses.replace(cfg, timeout=0.5, dealer_idle_timeout=2.0)
    path = config.dump(idle, tmp_path / "idle.toml")
    returncode, stderr, took = dealer_outcome(cfg, path)
    assert returncode == PEER_FAILED_STATUS, stderr
    assert 1.5 < took < 6.0
    assert "none came within 2 s (dealer_idle_timeout)" in stderr, stderr


MALFORMED_HELLOS = [[1], "party", 7, None, {}, {"role": "party"},
                    {"role": "party", "rank": "0", "world_size": 2},
                    {"role": "party", "rank": True, "world_size": 2},
                    {"role": "party", "rank": 0, "world_size": [2]},
                    {"role": ["party"], "rank": 0, "world_size": 2}]


def test_malformed_hellos_are_refused_by_the_accepting_side(plaintext_cluster, no_thread_dies,
                                                            capfd):
    cfg, _ = plaintext_cluster
    me = cfg.party(1)
    acceptor = transport.Acceptor(cfg, me, [0], None, time.monotonic() + 30)
    try:
        for hello in MALFORMED_HELLOS + ["bytes that are no JSON"]:
            with socket.create_connection((me.host, me.port), timeout=10) as sock:
                payload = (json_tensor(hello) if hello != "bytes that are no JSON"
                           else torch.tensor(list(b"\xff{"), dtype=torch.uint8))
                transport.write_frame(sock, FrameType.HELLO, payload, 0)
                sock.recv(1 << 16)          # a refusal, then the accepting side closes
        deadline = time.monotonic() + 5
        while len(acceptor.refusals) < len(MALFORMED_HELLOS) + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert acceptor.accepted == {}
    finally:
        acceptor.stop()
    refusals = acceptor.refusals
    assert len(refusals) == len(MALFORMED_HELLOS) + 1, refusals
    assert all(r.startswith("party 1 refused a connection from 127.0.0.1:") for r in refusals)
    reasons = ["is not a JSON object", "not a party hello", "world size [2] differs",
               "malformed control frame"]
    counts = [sum(reason in r for r in refusals) for reason in reasons]
    assert counts == [4, 5, 1, 1], refusals
    assert "AttributeError" not in capfd.readouterr().err


def serve_one_hello(listener, answer):
    """Accept one connection, read its hello, answer with `answer` (raw frame bytes), close."""
    sock, _ = listener.accept()
    with sock:
        transport.read_frame(sock, "client", 1 << 16, 0)
        sock.sendall(answer)


@pytest.mark.parametrize("frame_type, answer, error, text", [
    (FrameType.HELLO, json_tensor([1]), PeerError, "is not a JSON object"),
    (FrameType.HELLO, json_tensor({"error": ["x"] * 1000}), CertificateError,
     r"refused us: \['x', 'x'.*\.\.\.$"),
    (FrameType.HELLO, json_tensor({"role": "party", "rank": True, "world_size": 2}), PeerError,
     "answered as party True"),
    (FrameType.HELLO, torch.tensor(list(b"\xff"), dtype=torch.uint8), PeerError,
     "malformed control frame"),
    (FrameType.SEED, torch.zeros(1, dtype=torch.uint8), PeerError,
     "sent a SEED frame instead of a hello"),
])
def test_malformed_hello_answers_are_refused_by_the_connecting_side(
        plaintext_cluster, no_thread_dies, frame_type, answer, error, text):
    cfg, _ = plaintext_cluster
    target = cfg.party(1)
    listener = socket.create_server((target.host, target.port))
    server = threading.Thread(target=serve_one_hello,
                              args=(listener, frame_bytes(frame_type, answer, 0)))
    server.start()
    try:
        with pytest.raises(error, match=text) as info:
            transport.connect(cfg, cfg.party(0), target, None, time.monotonic() + 10)
    finally:
        server.join(10)
        listener.close()
    assert str(info.value).startswith("connection set-up of party 0")
    assert len(str(info.value)) < 700
