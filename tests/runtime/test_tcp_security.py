"""TCP + TLS sessions (in threads of this process): certificate refusals and bad frames."""
import dataclasses
import threading
import time

import pytest
import torch

from mpcft.runtime import (CertificateError, FrameError, MPCTimeoutError, Session, local_cluster,
                           make_ca, make_cert)
from mpcft.runtime.tls import default_ca_dir, load_ca

from runtime_helpers import connect_all

pytestmark = pytest.mark.timeout(60)


def with_party(config, rank, **changes):
    parties = list(config.parties)
    parties[rank] = dataclasses.replace(parties[rank], **changes)
    return dataclasses.replace(config, parties=tuple(parties))


@pytest.fixture
def cluster(tmp_path):
    return local_cluster(tmp_path, 2, connect_timeout=3, timeout=5)[0]


def test_certificate_from_another_ca_is_refused(cluster, tmp_path):
    cert, key = make_cert(make_ca(tmp_path / "rogue"), "party-0", tmp_path / "rogue")
    sessions, errors = connect_all(with_party(cluster, 0, cert=cert, key=key))
    assert not sessions
    assert isinstance(errors[0], CertificateError) and "refused our certificate" in str(errors[0])
    assert isinstance(errors[1], MPCTimeoutError)
    assert "no connection from party 0" in str(errors[1]) and "refused" in str(errors[1])


def test_expired_certificate_is_refused(cluster, tmp_path):
    ca = load_ca(default_ca_dir(cluster.ca.parent))
    cert, key = make_cert(ca, "party-1", tmp_path / "old", expired=True)
    sessions, errors = connect_all(with_party(cluster, 1, cert=cert, key=key))
    assert not sessions
    assert isinstance(errors[0], CertificateError)
    assert "party 1" in str(errors[0]) and "expired" in str(errors[0])


def test_certificate_of_another_party_is_refused(cluster, tmp_path):
    ca = load_ca(default_ca_dir(cluster.ca.parent))
    cert, key = make_cert(ca, "party-5", tmp_path / "other")
    sessions, errors = connect_all(with_party(cluster, 0, cert=cert, key=key))
    assert not sessions
    assert isinstance(errors[0], CertificateError)
    assert "certificate names 'party-5'" in str(errors[0])


def test_client_without_certificate_is_refused(cluster):
    plain = dataclasses.replace(cluster, tls=False)
    errors = {}

    def server():
        try:
            Session.connect(cluster, 1)
        except Exception as exc:  # noqa: BLE001
            errors[1] = exc

    thread = threading.Thread(target=server)
    thread.start()
    with pytest.raises(Exception):
        Session.connect(plain, 0)
    thread.join(30)
    assert isinstance(errors[1], MPCTimeoutError) and "refused a connection" in str(errors[1])


def test_garbage_and_oversized_frames_are_refused(tmp_path):
    config = dataclasses.replace(local_cluster(tmp_path, 2, connect_timeout=10, timeout=5)[0],
                                 max_frame_bytes=1 << 20)
    sessions, errors = connect_all(config)
    assert not errors
    try:
        sessions[0].transport.peers[1]._sock.sendall(b"GARBAGE!" * 8)
        with pytest.raises(FrameError, match="recv from party 0.*malformed frame from party 0"):
            sessions[1].recv(0)
    finally:
        for s in sessions.values():
            s.abort()
    sessions, errors = connect_all(config)
    try:
        outcome = {}

        def party_zero():   # party 1 drops the connection on the oversized frame: 0 notices
            try:
                sessions[0].send(1, torch.zeros(1 << 18, dtype=torch.int64))
                for _ in range(100):
                    sessions[0].send(1, torch.zeros(1000))
                    time.sleep(0.01)
            except Exception as exc:  # noqa: BLE001
                outcome["error"] = exc

        sender = threading.Thread(target=party_zero)
        sender.start()
        with pytest.raises(FrameError, match="oversized frame from party 0: 2097152 bytes"):
            sessions[1].recv(0)
        sender.join(10)
        assert "send to party 1" in str(outcome["error"])
    finally:
        for s in sessions.values():
            s.abort()
