"""Cryptographically secure randomness: seeds, key derivation and an AES-CTR PRG.

`PRG(seed)` expands a 16- or 32-byte secret seed into a stream of pseudorandom bytes with
AES-128 in counter mode, through OpenSSL (`cryptography`): the key is HKDF-SHA256(seed) (OpenSSL
too), and every draw continues where the previous one stopped, so two holders of one seed who
make the same draws get identical values. A draw is cut into segments of 4 MiB; the segment
that starts at stream block s is AES_k(s || 2) || AES_k(s || 3) || ... (a 96-bit big-endian
nonce s and a 32-bit counter: the keystream of GCM's encryption of zeros, whose pipelined
VAES code runs at about 1.7x OpenSSL's plain CTR here; its tag is never computed). Segments
start at distinct blocks, so no AES input repeats. Segments of a large draw run on threads
(OpenSSL releases the GIL). The output is indistinguishable from uniform to anyone without the
seed, assuming AES is a PRF. numpy's and torch's default generators are never used for
anything secret.
"""
import os
import threading

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .threads import num_threads, run_parallel

SEED_BYTES = 32
_BLOCK = 16
_SEGMENT = 4 << 20  # bytes under one nonce (a thread task); a multiple of the AES block
_ZEROS = memoryview(bytes(_SEGMENT))


def fresh_seed() -> bytes:
    """A new 32-byte seed from the operating system's CSPRNG."""
    return os.urandom(SEED_BYTES)


def derive_seed(key: bytes, *labels) -> bytes:
    """HKDF-SHA256(key, info = labels): independent 32-byte seeds for distinct labels.

    Used for pairwise and per-purpose seeds, e.g. derive_seed(pair_key, "share", step).
    """
    _check_seed(key)
    info = b"mpcft\x00" + b"\x00".join(str(label).encode() for label in labels)
    return _hkdf(bytes(key), SEED_BYTES, b"mpcft-derive-v1", info)


def _hkdf(key: bytes, length: int, salt: bytes, info: bytes = b"") -> bytes:
    """HKDF-SHA256 (RFC 5869) through OpenSSL: about 3 us, where pycryptodome's takes 33."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def _check_seed(seed) -> None:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) not in (16, 32):
        raise ValueError("a seed is 16 or 32 bytes of secret randomness (see fresh_seed())")


class PRG:
    """A deterministic, seekable stream of secure random bytes and ring elements."""

    def __init__(self, seed: bytes, threads: int | None = None):
        _check_seed(seed)
        self._key = _hkdf(bytes(seed), 16, b"mpcft-prg-v1")
        self._block = 0  # next unused AES block
        self._threads = threads  # None: follow torch.get_num_threads()
        self._lock = threading.Lock()

    @property
    def position(self) -> int:
        """Bytes consumed so far (always a multiple of 16: draws start on a block)."""
        return self._block * _BLOCK

    def fill(self, out) -> None:
        """Overwrite a writable buffer (bytearray, numpy array, CPU tensor) with the next bytes."""
        view = memoryview(out).cast("B")
        nbytes = view.nbytes
        with self._lock:
            start = self._block
            self._block += -(-nbytes // _BLOCK)
        tasks = [(start + off // _BLOCK, view[off:off + _SEGMENT]) for off in range(0, nbytes, _SEGMENT)]
        run_parallel(lambda task: self._keystream(*task), tasks, num_threads(self._threads))

    def skip(self, nbytes: int) -> None:
        """Move past the next nbytes as drawing them would (to a block boundary), uncomputed."""
        if nbytes < 0:
            raise ValueError(f"cannot skip {nbytes} bytes")
        with self._lock:
            self._block += -(-nbytes // _BLOCK)

    def _keystream(self, block: int, out: memoryview) -> None:
        """The segment starting at stream block `block`: AES_k(block || j) for j = 2, 3, ..."""
        nonce = (block % (1 << 96)).to_bytes(12, "big")
        Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor().update_into(_ZEROS[:out.nbytes], out)

    def bytes(self, n: int) -> bytes:
        buf = bytearray(n)
        self.fill(buf)
        return bytes(buf)

    def ring(self, shape, device=None) -> torch.Tensor:
        """Uniform elements of Z_2^64 as a torch int64 tensor."""
        out = torch.empty(_shape(shape), dtype=torch.int64)
        if out.numel():
            self.fill(out.numpy())
        return out.to(device) if device is not None else out

    def ring_numpy(self, shape) -> np.ndarray:
        """Uniform elements of Z_2^64 as a numpy int64 array."""
        out = np.empty(_shape(shape), dtype=np.int64)
        if out.size:
            self.fill(out)
        return out

    def bits(self, shape, device=None) -> torch.Tensor:
        """Uniform bits (0 or 1) as int64, eight per drawn byte."""
        shape = _shape(shape)
        count = int(np.prod(shape, dtype=np.int64))
        raw = np.empty(-(-count // 8), dtype=np.uint8)
        if raw.size:
            self.fill(raw)
        bits = np.unpackbits(raw, count=count, bitorder="little").astype(np.int64).reshape(shape)
        out = torch.from_numpy(bits)
        return out.to(device) if device is not None else out

    def below(self, bound: int, shape, device=None) -> torch.Tensor:
        """Uniform integers in [0, bound), 1 <= bound <= 2^63, by rejection sampling (no bias)."""
        bound = int(bound)
        if not 1 <= bound <= 1 << 63:
            raise ValueError(f"bound must be in [1, 2^63], got {bound}")
        shape = _shape(shape)
        need = int(np.prod(shape, dtype=np.int64))
        rejected = (1 << 64) % bound  # accept u < 2^64 - rejected: a whole number of periods
        kept, have = [], 0
        while have < need:
            draw = np.empty(need - have + (need - have) // 8 + 16, dtype=np.uint64)
            self.fill(draw)
            if rejected:
                draw = draw[draw < np.uint64((1 << 64) - rejected)]
            kept.append(draw % np.uint64(bound))
            have += kept[-1].size
        values = np.concatenate(kept)[:need].astype(np.int64).reshape(shape)
        out = torch.from_numpy(values)
        return out.to(device) if device is not None else out

    def fork(self, *labels) -> "PRG":
        """An independent PRG for a sub-task, derived from this stream's next 32 bytes."""
        return PRG(derive_seed(self.bytes(SEED_BYTES), *labels), self._threads)


def _shape(shape) -> tuple:
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    return shape
