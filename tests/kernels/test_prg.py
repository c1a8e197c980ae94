"""The AES-CTR PRG: known answers, reproducibility, independence, uniformity, sampling."""
import numpy as np
import pytest
import torch
from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

from mpcft.kernels import PRG, derive_seed, fresh_seed

SEED = bytes(range(32))
# The statistical tests below read fixed seeds: AES-CTR's output for them is one fixed sample, so
# a bias in the construction fails every run, and a fresh seed's 1-in-10^4 tail never fails CI.
OTHER_SEED = bytes(range(32, 64))


def expected_stream(seed: bytes, nbytes: int, start_block: int = 0) -> bytes:
    """One draw of nbytes from stream block start_block, the PRG's definition computed
    independently with AES-128-ECB under HKDF(seed): each 4 MiB segment, starting at block s,
    is AES_k(s || 2) || AES_k(s || 3) || ... (a 96-bit nonce, a 32-bit counter)."""
    key = HKDF(seed, 16, salt=b"mpcft-prg-v1", hashmod=SHA256)
    ecb = AES.new(key, AES.MODE_ECB)
    blocks, segment = -(-nbytes // 16), (4 << 20) // 16
    out = b""
    for first in range(0, blocks, segment):
        nonce = (start_block + first).to_bytes(12, "big")
        counters = range(2, 2 + min(segment, blocks - first))
        out += ecb.encrypt(b"".join(nonce + j.to_bytes(4, "big") for j in counters))
    return out[:nbytes]


def test_known_answer_against_pycryptodome_ecb():
    prg = PRG(SEED)
    assert prg.bytes(100) == expected_stream(SEED, 100)
    # the next draw starts on the next block boundary (100 bytes used 7 blocks)
    assert prg.bytes(48) == expected_stream(SEED, 48, start_block=7)


def test_derived_seeds_are_hkdf_sha256_of_the_labels():
    info = b"mpcft\x00corr\x00layout\x000\x007"
    assert derive_seed(SEED, "corr", "layout", 0, 7) == HKDF(SEED, 32, salt=b"mpcft-derive-v1", hashmod=SHA256,
                                                            context=info)


def test_known_answer_multithreaded_large_draw():
    n = (9 << 20) + 40  # spans three thread chunks, not a multiple of the block size
    out = np.empty(n, np.uint8)
    PRG(SEED, threads=3).fill(out)
    assert out.tobytes() == expected_stream(SEED, n)


def test_fixed_vector_detects_construction_changes():
    assert PRG(bytes(32)).bytes(16).hex() == expected_stream(bytes(32), 16).hex()
    assert PRG(bytes(32)).ring(2).tolist() == np.frombuffer(expected_stream(bytes(32), 16), np.int64).tolist()


def test_reproducible_from_seed_and_seed_lengths():
    a, b = PRG(SEED), PRG(SEED)
    assert torch.equal(a.ring((3, 5)), b.ring((3, 5)))
    assert torch.equal(a.bits(77), b.bits(77))
    assert torch.equal(a.below(1000, 50), b.below(1000, 50))
    assert PRG(bytes(16)).bytes(8) != PRG(bytes(32)).bytes(8)
    with pytest.raises(ValueError, match="16 or 32 bytes"):
        PRG(b"short")


def test_distinct_seeds_give_independent_streams():
    x = PRG(SEED).ring_numpy(1 << 16).view(np.uint64)
    y = PRG(OTHER_SEED).ring_numpy(1 << 16).view(np.uint64)
    same_bits = np.unpackbits((x ^ y).view(np.uint8)).mean()
    assert abs(same_bits - 0.5) < 0.005  # 4M bits: 5 sigma is 0.0012
    corr = np.corrcoef((x >> np.uint64(11)).astype(float), (y >> np.uint64(11)).astype(float))[0, 1]
    assert abs(corr) < 0.02


def test_bytes_are_uniform_chi_square():
    data = PRG(SEED).ring_numpy(1 << 17).view(np.uint8)
    counts = np.bincount(data, minlength=256)
    expected = data.size / 256
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 350  # 255 degrees of freedom: P(chi2 > 350) < 1e-4


def test_bits_are_balanced_and_binary():
    bits = PRG(SEED).bits((1000, 100))
    assert bits.shape == (1000, 100) and bits.dtype == torch.int64
    assert set(bits.unique().tolist()) == {0, 1}
    assert abs(bits.double().mean().item() - 0.5) < 0.01


@pytest.mark.parametrize("bound", [1, 2, 3, 1000, 2**62 + 12345, 2**63])
def test_below_is_in_range_and_unbiased(bound):
    values = PRG(OTHER_SEED).below(bound, 20000)
    assert values.min() >= 0 and (values.double() < bound).all()
    if bound == 3:
        counts = torch.bincount(values, minlength=3).double()
        assert ((counts - 20000 / 3).abs() < 300).all()
    with pytest.raises(ValueError):
        PRG(SEED).below(0, 3)


def test_derived_seeds_are_distinct_and_deterministic():
    key = fresh_seed()
    assert derive_seed(key, "pair", 0, 1) == derive_seed(key, "pair", 0, 1)
    assert derive_seed(key, "pair", 0, 1) != derive_seed(key, "pair", 1, 0)
    assert len(derive_seed(key, "x")) == 32
    forked = PRG(SEED).fork("a").bytes(16)
    assert forked == PRG(SEED).fork("a").bytes(16) != PRG(SEED).fork("b").bytes(16)


def test_fill_writes_into_tensors_and_rejects_zero_sized():
    t = torch.zeros(10, dtype=torch.int64)
    PRG(SEED).fill(t.numpy())
    assert t.tolist() == PRG(SEED).ring(10).tolist()
    assert PRG(SEED).ring((0, 3)).shape == (0, 3)
