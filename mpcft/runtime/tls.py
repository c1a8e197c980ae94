"""Certificates and mutual-TLS contexts.

`make_certs` writes one EC P-256 certificate per party (`party-{r}.pem`, `party-{r}-key.pem`,
common name `party-{r}`), for the dealer (`dealer.pem`, `dealer-key.pem`, common name
`dealer`) and for data owners outside the parties (`owner-NAME.pem`: they sign the share
files they seal to parties), plus the CA certificate `ca.pem`, into the folder whose files go
to the hosts. The CA's private key stays in a folder of its own (0700, default the sibling
`<folder>-ca/`), so copying the certificate folder never copies it. Party and dealer
certificates are for TLS servers and clients; owner certificates carry only OWNER_USAGE, so a
TLS handshake with one fails. Both sides of every connection present a certificate signed by
the cluster CA and check that the peer's common name is the identity they expect, so each
party knows exactly who it talks to. The TLS 1.3 session then keys the AES-256-GCM records
that carry the frames (records.py), which hide contents from a network observer, who still
sees message sizes and timing.
"""
import datetime
import ipaddress
import os
import pathlib
import ssl
import tempfile

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import CertificateError

CA_KEY = "ca-key.pem"
TLS_USAGES = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
# extended key usage of data owners (a UUID OID, X.667): signs sealed share files, not TLS
OWNER_USAGE = x509.ObjectIdentifier("2.25.260147227015884970984377676103962389832")


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key, path):
    """Write `key` (unencrypted PEM) to `path` as a new 0600 file that replaces any old one,
    so an old file's looser permissions never carry over."""
    path = pathlib.Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


def _write_cert(cert, path):
    pathlib.Path(path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _validity(days, expired):
    now = datetime.datetime.now(datetime.timezone.utc)
    if expired:
        return now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def default_ca_dir(out_dir) -> pathlib.Path:
    """The CA folder of certificate folder `out_dir`: its sibling `<out_dir>-ca` (absolute)."""
    out_dir = pathlib.Path(os.path.abspath(out_dir))
    return out_dir.parent / f"{out_dir.name}-ca"


def make_ca(ca_dir, days=365, name="mpcft cluster CA"):
    """Create `ca.pem` and `ca-key.pem` (0600) in `ca_dir`, made 0700 if new and refused if other
    users can open it; returns (certificate, key)."""
    ca_dir = pathlib.Path(ca_dir)
    ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if ca_dir.stat().st_mode & 0o077:
        raise CertificateError(f"{ca_dir}: other users can open this folder, which would hold the CA's "
                               f"private key; run `chmod 700 {ca_dir}` first")
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days, False)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write_cert(cert, ca_dir / "ca.pem")
    _write_key(key, ca_dir / CA_KEY)
    return cert, key


def load_ca(ca_dir):
    """(certificate, key) of the CA kept in `ca_dir`."""
    ca_dir = pathlib.Path(ca_dir)
    cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), None)
    return cert, key


def make_cert(ca, identity, out_dir, hosts=(), days=365, expired=False, file_stem=None,
              usages=TLS_USAGES):
    """Certificate for `identity` ("party-3", "dealer") signed by `ca` = (cert, key), with
    extended key usages `usages` (TLS server and client unless told otherwise).

    Writes `{file_stem or identity}.pem` and `...-key.pem`; the subject alternative names hold
    localhost, 127.0.0.1 and `hosts`. `expired=True` makes one that expired yesterday (tests).
    Returns (certificate path, key path).
    """
    ca_cert, ca_key = ca
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    names = []
    for host in ("localhost", "127.0.0.1", *hosts):
        try:
            entry = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in names:
            names.append(entry)
    start, end = _validity(days, expired)
    cert = (x509.CertificateBuilder().subject_name(_name(identity)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    stem = file_stem or identity
    cert_path, key_path = out_dir / f"{stem}.pem", out_dir / f"{stem}-key.pem"
    _write_cert(cert, cert_path)
    _write_key(key, key_path)
    return cert_path, key_path


def make_certs(out_dir, world_size, dealer=True, hosts=(), days=365, owners=(), ca_dir=None):
    """Certificates for parties 0..world_size-1 (and the dealer, and data owners `owner-NAME`
    for NAME in `owners`) and `ca.pem` in `out_dir`; the CA key in `ca_dir` (default
    default_ca_dir(out_dir)), reused when there, so owners can be added later (world_size 0).
    `hosts` go into every party's and the dealer's subject alternative names. Returns `out_dir`.
    """
    out_dir = pathlib.Path(out_dir)
    ca_dir = pathlib.Path(ca_dir) if ca_dir else default_ca_dir(out_dir)
    _check_ca_apart(out_dir, ca_dir)
    ca = load_ca(ca_dir) if (ca_dir / CA_KEY).exists() else make_ca(ca_dir, days)
    _publish_ca_certificate(ca[0], out_dir, ca_dir)
    for rank in range(world_size):
        make_cert(ca, f"party-{rank}", out_dir, hosts, days)
    if dealer:
        make_cert(ca, "dealer", out_dir, hosts, days)
    for name in owners:
        make_cert(ca, f"owner-{name}", out_dir, (), days, usages=(OWNER_USAGE,))
    return out_dir


def _check_ca_apart(out_dir, ca_dir):
    """CertificateError unless the CA key stays out of `out_dir`, whose files go to the hosts."""
    out, ca = pathlib.Path(os.path.abspath(out_dir)), pathlib.Path(os.path.abspath(ca_dir))
    if (out / CA_KEY).exists():
        raise CertificateError(f"{out_dir}/{CA_KEY}: the CA's private key must not lie among the "
                               f"certificates copied to hosts; move it with `mkdir -p -m 700 {ca_dir} && "
                               f"mv {out_dir}/{CA_KEY} {ca_dir}/ && cp {out_dir}/ca.pem {ca_dir}/`")
    if ca == out or out in ca.parents:
        raise CertificateError(f"the CA folder {ca_dir} must not be (inside) the certificate folder "
                               f"{out_dir}")


def _publish_ca_certificate(ca_cert, out_dir, ca_dir):
    """Write `ca.pem` into `out_dir`; CertificateError if one there is from another CA."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    published = out_dir / "ca.pem"
    if published.exists() and published.read_bytes() != ca_cert.public_bytes(serialization.Encoding.PEM):
        raise CertificateError(f"{published} is not the certificate of the CA in {ca_dir}")
    _write_cert(ca_cert, published)


def common_name(cert) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return names[0].value if names else ""


def extended_usages(cert) -> list:
    """The extended key usages (OIDs) that `cert` names; empty when it names none."""
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return []


def certificate_problem(cert, ca) -> str | None:
    """Why `cert` is not a valid certificate of the cluster CA `ca` now, or None."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        return f"not issued by the CA ({exc})"
    now = datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return "not valid now"
    return None


def verify_party_certificate(cert_path, ca_path, rank: int) -> pathlib.Path:
    """`cert_path`, after checking that the cluster CA issued it to party `rank` and that it is
    valid now (a data owner encrypts its shares to it)."""
    cert = x509.load_pem_x509_certificate(pathlib.Path(cert_path).read_bytes())
    problem = certificate_problem(cert, x509.load_pem_x509_certificate(pathlib.Path(ca_path).read_bytes()))
    if problem:
        raise CertificateError(f"{cert_path}: {problem} in {ca_path}")
    if common_name(cert) != f"party-{rank}":
        raise CertificateError(f"{cert_path}: issued to {common_name(cert)!r}, not party-{rank}")
    return pathlib.Path(cert_path)


def _context(purpose, ca, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose == "server" else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False      # identities are checked by common name, hosts may be bare IPs
    if purpose == "server":
        ctx.num_tickets = 0         # no session tickets: nothing is written after the handshake
    try:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"cannot load certificates (ca {ca}, cert {cert}): {exc}") from None
    return ctx


def server_context(ca, cert, key):
    """Context for accepting connections: requires a client certificate signed by `ca`."""
    return _context("server", ca, cert, key)


def client_context(ca, cert, key):
    """Context for connecting: presents `cert`, requires a server certificate signed by `ca`."""
    return _context("client", ca, cert, key)


def peer_identity(sock):
    """Common name of the verified peer certificate of a TLS socket."""
    cert = sock.getpeercert()
    for rdn in cert.get("subject", ()) if cert else ():
        for key, value in rdn:
            if key == "commonName":
                return value
    return None
