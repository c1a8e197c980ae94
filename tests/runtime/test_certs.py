"""`mpcft certs`: the CA key kept apart from the copied folder, owner certificates unfit for
TLS, and private keys always written 0600."""
import os
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from mpcft import cli
from mpcft.runtime import tls

pytestmark = pytest.mark.timeout(60)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    out = tmp_path_factory.mktemp("cluster") / "certs"
    assert cli.main(["certs", "--out", str(out), "-n", "2", "--dealer", "--owner", "clinic"]) == 0
    return out


def test_certs_keep_the_ca_key_out_of_the_folder_copied_to_hosts(certs):
    ca_dir = certs.parent / "certs-ca"
    assert "ca-key.pem" not in os.listdir(certs) and (certs / "ca.pem").exists()
    assert sorted(os.listdir(ca_dir)) == ["ca-key.pem", "ca.pem"]
    assert mode(ca_dir / "ca-key.pem") == 0o600 and mode(ca_dir) == 0o700
    assert all(mode(certs / name) == 0o600 for name in os.listdir(certs) if name.endswith("-key.pem"))


def test_adding_an_owner_later_reuses_the_ca_from_its_folder(certs):
    assert cli.main(["certs", "--out", str(certs), "--owner", "hospital-c"]) == 0
    ca = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    late = x509.load_pem_x509_certificate((certs / "owner-hospital-c.pem").read_bytes())
    assert tls.certificate_problem(late, ca) is None
    assert "ca-key.pem" not in os.listdir(certs)


def test_certs_refuse_an_old_layout_with_the_ca_key_beside_the_certificates(tmp_path, capsys):
    old = tmp_path / "certs"
    tls.make_ca(old)
    assert cli.main(["certs", "--out", str(old), "--owner", "bank"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "must not lie among the certificates" in error
    assert f"mv {old}/ca-key.pem" in error and not (old / "owner-bank.pem").exists()
    inside = ["certs", "--out", str(tmp_path / "c"), "--ca-dir", str(tmp_path / "c" / "ca"), "-n", "1"]
    assert cli.main(inside) == 1
    assert "must not be (inside) the certificate folder" in capsys.readouterr().err


def test_certs_refuse_a_ca_folder_that_others_can_open(tmp_path, capsys):
    (tmp_path / "shared").mkdir(mode=0o755)
    (tmp_path / "shared").chmod(0o755)
    assert cli.main(["certs", "--out", str(tmp_path / "c"), "--ca-dir", str(tmp_path / "shared"), "-n", "1"]) == 1
    assert "other users can open this folder" in capsys.readouterr().err
    assert os.listdir(tmp_path / "shared") == []


def test_certs_refuse_a_ca_certificate_from_another_ca(tmp_path, capsys):
    tls.make_certs(tmp_path / "certs", 1, dealer=False)
    assert cli.main(["certs", "--out", str(tmp_path / "certs"), "--ca-dir", str(tmp_path / "other-ca"),
                     "-n", "1"]) == 1
    assert "is not the certificate of the CA in" in capsys.readouterr().err


def test_owner_certificates_carry_only_the_owner_usage(certs):
    def usages(name):
        return tls.extended_usages(x509.load_pem_x509_certificate((certs / f"{name}.pem").read_bytes()))
    assert usages("owner-clinic") == [tls.OWNER_USAGE]
    for name in ("party-0", "party-1", "dealer"):
        assert usages(name) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def handshake(certs, server, client):
    """TLS handshake of `client` with `server` (certificate stems): (server error, client error)."""
    server_end, client_end = socket.socketpair()
    errors = {}

    def run(side, sock, context, **kwargs):
        sock.settimeout(10)
        try:
            with context.wrap_socket(sock, **kwargs) as wrapped:
                wrapped.sendall(b"x")
                wrapped.recv(1)
        except (ssl.SSLError, OSError) as exc:
            errors[side] = str(exc)

    server_context = tls.server_context(certs / "ca.pem", certs / f"{server}.pem", certs / f"{server}-key.pem")
    client_context = tls.client_context(certs / "ca.pem", certs / f"{client}.pem", certs / f"{client}-key.pem")
    threads = [threading.Thread(target=run, args=("server", server_end, server_context),
                                kwargs={"server_side": True}),
               threading.Thread(target=run, args=("client", client_end, client_context))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    return errors.get("server"), errors.get("client")


def test_party_certificates_complete_a_tls_handshake(certs):
    assert handshake(certs, "party-0", "party-1") == (None, None)


def test_an_owner_certificate_as_tls_client_is_refused_in_the_handshake(certs):
    server_error, _ = handshake(certs, "party-0", "owner-clinic")
    assert server_error and "certificate purpose" in server_error


def test_an_owner_certificate_as_tls_server_is_refused_in_the_handshake(certs):
    _, client_error = handshake(certs, "owner-clinic", "party-1")
    assert client_error and "certificate purpose" in client_error


def test_rewritten_keys_are_0600_even_over_a_world_readable_file(tmp_path):
    ca = tls.make_ca(tmp_path / "ca")
    stale = tmp_path / "out" / "party-0-key.pem"
    stale.parent.mkdir()
    stale.write_text("old key")
    stale.chmod(0o644)
    _, key_path = tls.make_cert(ca, "party-0", tmp_path / "out")
    assert key_path == stale and mode(stale) == 0o600 and b"PRIVATE KEY" in stale.read_bytes()
    assert sorted(os.listdir(tmp_path / "out")) == ["party-0-key.pem", "party-0.pem"]
