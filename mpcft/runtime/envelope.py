"""Sealed files from a data owner to one compute party: encrypted to the party, signed by the owner.

A data owner that is not a compute party hands each party its input shares as a file (sent
any way the deployment likes). The file is
  MAGIC | header (JSON, public) | owner certificate | ephemeral P-256 key | nonce | AES-256-GCM
  ciphertext | ECDSA-P256-SHA256 signature of everything before it,
with the AES key from ECDH between the ephemeral key and the recipient's certificate key
(HKDF-SHA256 over both public keys), and the header as associated data. Only the recipient
can read the payload; the party accepts the file only if the owner's certificate was issued
by the cluster CA, is valid now, names an `owner-...` and carries the owner usage
(tls.OWNER_USAGE), the signature verifies and the header names this party as the recipient.
The header (owner, recipient, shapes, counts, sealing id) is public metadata; a share alone
is uniformly random, so a party learns nothing from its file.
"""
import json
import os
import pathlib
import struct

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import MPCRuntimeError
from .tls import OWNER_USAGE, certificate_problem, common_name, extended_usages

MAGIC = b"MPCFTSH1"
OWNER_PREFIX = "owner-"
_POINT = serialization.PublicFormat.UncompressedPoint
_POINT_BYTES = 65


class SealedFileError(MPCRuntimeError):
    """A sealed file is malformed, not for this party, or not from a certified owner."""


def _key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None,
                info=b"mpcft sealed shares v1" + ephemeral + recipient).derive(shared)


def seal(payload: bytes, header: dict, recipient_cert: pathlib.Path, owner_cert: pathlib.Path,
         owner_key: pathlib.Path) -> bytes:
    """The sealed file's bytes: `payload` readable by the recipient only, signed by the owner."""
    recipient = x509.load_pem_x509_certificate(pathlib.Path(recipient_cert).read_bytes())
    header = dict(header, recipient=common_name(recipient))
    owner_pem = pathlib.Path(owner_cert).read_bytes()
    signer = serialization.load_pem_private_key(pathlib.Path(owner_key).read_bytes(), None)
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    ephemeral_pub = ephemeral.public_key().public_bytes(serialization.Encoding.X962, _POINT)
    recipient_pub = recipient.public_key().public_bytes(serialization.Encoding.X962, _POINT)
    key = _key(ephemeral.exchange(ec.ECDH(), recipient.public_key()), ephemeral_pub, recipient_pub)
    header_bytes = json.dumps(header, sort_keys=True).encode()
    nonce = os.urandom(12)
    ciphertext = AESGCM(key).encrypt(nonce, payload, header_bytes)
    body = b"".join([MAGIC, struct.pack("<I", len(header_bytes)), header_bytes,
                     struct.pack("<I", len(owner_pem)), owner_pem, ephemeral_pub, nonce,
                     struct.pack("<Q", len(ciphertext)), ciphertext])
    signature = signer.sign(body, ec.ECDSA(hashes.SHA256()))
    return body + struct.pack("<H", len(signature)) + signature


class _Reader:
    def __init__(self, blob: bytes, name: str):
        self.blob, self.pos, self.name = blob, 0, name

    def take(self, count: int) -> bytes:
        if count < 0 or self.pos + count > len(self.blob):
            raise SealedFileError(f"{self.name}: truncated or malformed sealed file")
        out = self.blob[self.pos:self.pos + count]
        self.pos += count
        return out

    def length(self, fmt: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]


def open_sealed(blob: bytes, recipient_key: pathlib.Path, ca_cert: pathlib.Path,
                recipient_identity: str, name: str = "sealed file") -> tuple[dict, bytes, str]:
    """(header, payload, owner identity) of a file sealed for `recipient_identity`, after
    checking the owner's certificate, the signature and the recipient; SealedFileError if not."""
    reader = _Reader(blob, name)
    if reader.take(len(MAGIC)) != MAGIC:
        raise SealedFileError(f"{name}: not an mpcft sealed file")
    header_bytes = reader.take(reader.length("<I"))
    owner_pem = reader.take(reader.length("<I"))
    ephemeral_pub, nonce = reader.take(_POINT_BYTES), reader.take(12)
    ciphertext = reader.take(reader.length("<Q"))
    signed_end = reader.pos
    signature = reader.take(reader.length("<H"))
    if reader.pos != len(blob):
        raise SealedFileError(f"{name}: trailing bytes after the signature")
    try:
        owner = x509.load_pem_x509_certificate(owner_pem)
    except ValueError as exc:
        raise SealedFileError(f"{name}: unreadable owner certificate ({exc})") from None
    problem = certificate_problem(owner, x509.load_pem_x509_certificate(pathlib.Path(ca_cert).read_bytes()))
    if problem:
        raise SealedFileError(f"{name}: the owner's certificate is not from the cluster CA or not valid now "
                              f"({problem})")
    identity = common_name(owner)
    if not identity.startswith(OWNER_PREFIX):
        raise SealedFileError(f"{name}: signed by {identity!r}, which is not a data owner ({OWNER_PREFIX}...)")
    if OWNER_USAGE not in extended_usages(owner):
        raise SealedFileError(f"{name}: {identity}'s certificate lacks the data-owner usage; re-issue it "
                              f"with `mpcft certs --out DIR --owner {identity[len(OWNER_PREFIX):]}`")
    try:
        owner.public_key().verify(signature, blob[:signed_end], ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SealedFileError(f"{name}: bad signature: the file was altered or not signed by {identity}") from None
    try:                  # signed, but by an owner: its header is still checked before use
        header = json.loads(header_bytes)
    except (ValueError, RecursionError) as exc:
        raise SealedFileError(f"{name}: unreadable header ({exc})") from None
    if not isinstance(header, dict):
        raise SealedFileError(f"{name}: the header is not a JSON object")
    if header.get("recipient") != recipient_identity:
        raise SealedFileError(f"{name}: sealed for {header.get('recipient')!r}, not {recipient_identity!r}")
    key = serialization.load_pem_private_key(pathlib.Path(recipient_key).read_bytes(), None)
    recipient_pub = key.public_key().public_bytes(serialization.Encoding.X962, _POINT)
    try:
        ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ephemeral_pub)
        aes = _key(key.exchange(ec.ECDH(), ephemeral), ephemeral_pub, recipient_pub)
        payload = AESGCM(aes).decrypt(nonce, ciphertext, header_bytes)
    except (ValueError, InvalidTag):
        raise SealedFileError(f"{name}: cannot decrypt: not sealed for this party's key") from None
    return header, payload, identity
