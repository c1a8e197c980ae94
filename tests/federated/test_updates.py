"""Sealed client updates (federated.updates): shares that sum to the update, headers that bind
the round, refusals of every other part, and nothing of the update readable in a sealed part."""
import dataclasses
import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import example, given, strategies as st

from mpcft.federated.updates import (MAX_COUNT, MAX_VALUE, RING_BYTES, Round, UpdateSpec, open_update,
                                     seal_update)
from mpcft.kernels import FixedPoint
from mpcft.runtime import tls
from mpcft.runtime.envelope import SealedFileError, seal

from ..fuzz import harness

pytestmark = pytest.mark.timeout(120)

FRAC = 16
CLIENTS = ["client-0", "client-1"]
SHAPES = {"layer.weight": (5, 7), "layer.bias": (7,), "head": (3, 2, 2)}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, aggregators 0..2, the dealer and owners client-0, client-1 (read only by the tests)."""
    return tls.make_certs(tmp_path_factory.mktemp("fed") / "certs", 3, dealer=True, owners=CLIENTS)


def arrays(seed=0, shapes=SHAPES, scale=3.0):
    gen = np.random.default_rng(seed)
    return {name: (gen.standard_normal(shape) * scale).astype(np.float32) for name, shape in shapes.items()}


def round_of(update, number=3, secret=False, federation="fed-" + "ab" * 8, frac_bits=FRAC):
    return Round(federation, number, UpdateSpec.of(update), secret, frac_bits)


def opened(blob, round_, rank, certs, name="the update"):
    return open_update(blob, round_, rank, certs / f"party-{rank}-key.pem", certs / "ca.pem", name)


def encoded(update, frac_bits=FRAC):
    """round(U 2^f) of the update flattened in name order, computed apart from the code under test."""
    flat = np.concatenate([np.asarray(update[n], dtype=np.float64).reshape(-1) for n in sorted(update)])
    return torch.from_numpy(np.rint(flat * 2.0 ** frac_bits).astype(np.int64))


@pytest.mark.parametrize("aggregators", [2, 3])
@pytest.mark.parametrize("secret", [False, True])
def test_shares_of_all_aggregators_sum_to_the_encoded_update(certs, aggregators, secret):
    for seed, count in [(aggregators, 17), (10 + aggregators, MAX_COUNT), (20, 1)]:
        update = arrays(seed)
        round_ = round_of(update, secret=secret)
        parts = seal_update(update, count, round_, "client-1", certs, aggregators)
        assert len(parts) == aggregators
        shares = [opened(part, round_, rank, certs) for rank, part in enumerate(parts)]
        want = encoded(update)
        assert torch.equal(want, FixedPoint(FRAC).encode(round_.spec.flatten(update)))
        if secret:
            want = torch.cat([want, torch.tensor([count])])
        total = torch.zeros_like(want)
        for share in shares:
            assert share.client == "client-1"
            assert share.count == (None if secret else count)
            assert share.share.dtype == torch.int64 and share.share.shape == want.shape
            assert not torch.equal(share.share, want)
            total += share.share                  # int64 addition wraps: the ring Z_2^64
        assert torch.equal(total, want)


def test_a_torch_update_and_the_layout_s_order(certs):
    """Tensors in, in any dict order: the flat vector follows the sorted names of UpdateSpec."""
    update = {name: torch.from_numpy(value).double() for name, value in reversed(list(arrays(5).items()))}
    spec = UpdateSpec.of(update)
    assert spec.names == tuple(sorted(SHAPES)) and spec.numel == sum(math.prod(s) for s in SHAPES.values())
    round_ = Round("fed-x", 1, spec, False, FRAC)
    parts = seal_update(update, 4, round_, "client-0", certs, 2)
    total = opened(parts[0], round_, 0, certs).share + opened(parts[1], round_, 1, certs).share
    assert torch.equal(total, encoded(update))
    back = spec.unflatten(FixedPoint(FRAC).decode(total))
    for name in SHAPES:
        assert back[name].shape == SHAPES[name]
        assert float((back[name] - update[name]).abs().max()) <= 2.0 ** -FRAC


# --- refusals of parts that are not this aggregator's share of this round -----------------

@pytest.fixture(scope="module")
def sealed(certs):
    """(update, round, [part for 0, 1, 2]) of one public-count update of client-0."""
    update = arrays(1)
    round_ = round_of(update)
    return update, round_, seal_update(update, 9, round_, "client-0", certs, 3)


def refused(blob, round_, rank, certs, *words):
    with pytest.raises(SealedFileError) as info:
        opened(blob, round_, rank, certs, "client-0's update")
    message = str(info.value)
    assert "client-0's update" in message, message
    for word in words:
        assert word in message, message
    return message


def test_the_original_parts_open(sealed, certs):
    _, round_, parts = sealed
    for rank, part in enumerate(parts):
        assert opened(part, round_, rank, certs).count == 9


def test_a_part_opened_by_another_rank_is_refused(sealed, certs):
    _, round_, parts = sealed
    refused(parts[1], round_, 0, certs, "sealed for 'party-1', not 'party-0'")
    refused(parts[0], round_, 2, certs, "sealed for 'party-0', not 'party-2'")
    with pytest.raises(SealedFileError, match="cannot decrypt"):       # the right name, another key
        open_update(parts[0], round_, 0, certs / "party-1-key.pem", certs / "ca.pem", "x")


@pytest.mark.parametrize("change,fields", [
    ({"number": 4}, "round"),
    ({"federation": "fed-" + "cd" * 8}, "federation"),
    ({"frac_bits": 20}, "frac_bits"),
    ({"secret_counts": True}, "num_examples, secret_counts"),
])
def test_a_part_of_another_round_is_refused(sealed, certs, change, fields):
    _, round_, parts = sealed
    other = dataclasses.replace(round_, **change)
    for rank, part in enumerate(parts):
        refused(part, other, rank, certs, "not an update of this round", f"header fields {fields} differ",
                "from client-0")


def test_a_part_of_another_layout_is_refused(sealed, certs):
    update, round_, parts = sealed
    reshaped = dict(update, **{"layer.weight": update["layer.weight"].reshape(7, 5)})   # same numel
    grown = dict(update, extra=np.zeros(3, np.float32))
    renamed = {("x" + n): v for n, v in update.items()}
    for other, fields in [(reshaped, "layout"), (grown, "layout, numel"), (renamed, "layout")]:
        for rank, part in enumerate(parts):
            refused(part, round_of(other), rank, certs, f"header fields {fields} differ")


def test_a_secret_count_part_opened_as_public_is_refused(certs):
    update = arrays(2)
    round_ = round_of(update, secret=True)
    parts = seal_update(update, 5, round_, "client-0", certs, 2)
    public = round_of(update, secret=False)
    for rank, part in enumerate(parts):
        refused(part, public, rank, certs, "num_examples None is not an integer")


def hand_sealed(certs, header, payload, rank, signer="client-0"):
    """A part as a client could seal it by hand: any header and payload, signed by `signer`."""
    return seal(payload, dict(header, rank=rank), certs / f"party-{rank}.pem", certs / f"owner-{signer}.pem",
                certs / f"owner-{signer}-key.pem")


def test_a_part_signed_by_another_client_is_refused(sealed, certs):
    """The client is the signer's certificate: client-1 cannot pass its part off as client-0's."""
    _, round_, _ = sealed
    header = round_.header("client-0", 9)
    for rank, payload in [(0, bytes(RING_BYTES * round_.spec.numel)), (1, bytes(32))]:
        blob = hand_sealed(certs, header, payload, rank, signer="client-1")
        with pytest.raises(SealedFileError, match="from client-1, not an update of this round "
                                                  r"\(header fields client differ\)"):
            opened(blob, round_, rank, certs)
        assert opened(hand_sealed(certs, header, payload, rank), round_, rank, certs).client == "client-0"


def test_a_part_signed_by_a_party_is_refused(sealed, certs):
    _, round_, _ = sealed
    blob = seal(bytes(32), dict(round_.header("client-0", 9), rank=1), certs / "party-1.pem",
                certs / "party-0.pem", certs / "party-0-key.pem")
    refused(blob, round_, 1, certs, "not a data owner")


NUMEL = sum(math.prod(s) for s in SHAPES.values())


@pytest.mark.parametrize("rank,length,words", [
    (0, RING_BYTES * NUMEL - 1, "bytes of shares, expected"),
    (0, RING_BYTES * (NUMEL - 1), "bytes of shares, expected"),
    (0, RING_BYTES * (NUMEL + 1), "bytes of shares, expected"),
    (0, 0, "0 bytes of shares"),
    (1, 31, "a seed of 31 bytes, expected 32"),
    (1, 33, "a seed of 33 bytes, expected 32"),
    (2, RING_BYTES * NUMEL, f"a seed of {RING_BYTES * NUMEL} bytes"),
])
def test_a_payload_of_the_wrong_length_is_refused(sealed, certs, rank, length, words):
    _, round_, _ = sealed
    assert round_.spec.numel == NUMEL
    refused(hand_sealed(certs, round_.header("client-0", 9), bytes(length), rank), round_, rank, certs, words)


@pytest.mark.parametrize("count", [0, -1, MAX_COUNT + 1, 1 << 70, True, 2.0, math.inf, "3", "abc", None, [3],
                                   {"n": 3}, "missing"])
def test_a_signed_header_with_a_bad_public_count_is_refused(sealed, certs, count):
    _, round_, _ = sealed
    header = dict(round_.header("client-0", 9), num_examples=count)
    if count == "missing":
        header.pop("num_examples")
    refused(hand_sealed(certs, header, bytes(32), 1), round_, 1, certs, "num_examples", "is not an integer")
    refused(hand_sealed(certs, header, bytes(RING_BYTES * NUMEL), 0), round_, 0, certs, "num_examples")


def test_a_signed_header_with_extra_or_missing_fields_is_refused(sealed, certs):
    _, round_, _ = sealed
    header = round_.header("client-0", 9)
    refused(hand_sealed(certs, dict(header, extra=1), bytes(32), 1), round_, 1, certs, "fields extra differ")
    refused(hand_sealed(certs, dict(header, kind="other"), bytes(32), 1), round_, 1, certs, "fields kind differ")
    missing = {k: v for k, v in header.items() if k != "layout"}
    refused(hand_sealed(certs, missing, bytes(32), 1), round_, 1, certs, "fields layout differ")


@st.composite
def flips(draw):
    rank = draw(st.integers(0, 2))
    return rank, draw(st.integers(0, 1 << 20)), draw(st.integers(1, 255))


@given(flip=flips())
@example(flip=(0, 0, 1))
@example(flip=(1, -1, 1))
@example(flip=(0, -1, 0x80))
@harness.fuzz_settings(150)
def test_a_flipped_byte_anywhere_is_refused(sealed, certs, flip):
    _, round_, parts = sealed
    rank, position, mask = flip
    blob = bytearray(parts[rank])
    blob[position % len(blob)] ^= mask
    with harness.case("federated: sealed update", (SealedFileError,), 4 * len(blob) + harness.MIB) as outcome:
        opened(bytes(blob), round_, rank, certs, "client-0's update")
    assert outcome.error is not None and "client-0's update" in str(outcome.error)


def test_every_cut_and_extension_is_refused(sealed, certs):
    _, round_, parts = sealed
    blob = parts[1]
    for blob_ in [blob[:cut] for cut in range(0, len(blob), 97)] + [blob[:-1], blob + b"\0"]:
        refused(blob_, round_, 1, certs)


# --- what seal_update refuses ------------------------------------------------------------

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, MAX_VALUE, -MAX_VALUE, 1e300])
def test_seal_update_refuses_values_not_finite_or_too_large(certs, value):
    update = arrays(3)
    update["layer.bias"] = update["layer.bias"].astype(np.float64)
    update["layer.bias"][4] = value
    with pytest.raises(ValueError, match="not finite or beyond"):
        seal_update(update, 3, round_of(update), "client-0", certs, 2)


def test_seal_update_takes_values_just_within_max_value(certs):
    update = {"w": np.array([MAX_VALUE / 2, -(MAX_VALUE / 2), 0.0])}
    round_ = round_of(update)
    parts = seal_update(update, 3, round_, "client-0", certs, 2)
    total = opened(parts[0], round_, 0, certs).share + opened(parts[1], round_, 1, certs).share
    assert torch.equal(total, encoded(update))


@pytest.mark.parametrize("count", [0, -3, MAX_COUNT + 1, 2.5, "7", None])
def test_seal_update_refuses_counts_outside_the_range(certs, count):
    update = arrays(3)
    with pytest.raises(ValueError, match=r"num_examples must be an integer in \[1, "):
        seal_update(update, count, round_of(update), "client-0", certs, 2)


def test_seal_update_refuses_arrays_that_do_not_match_the_layout(certs):
    update = arrays(3)
    round_ = round_of(update)
    missing = {n: v for n, v in update.items() if n != "head"}
    with pytest.raises(ValueError, match="do not match the layout"):
        seal_update(missing, 3, round_, "client-0", certs, 2)
    with pytest.raises(ValueError, match="do not match the layout"):
        seal_update(dict(update, extra=np.zeros(1)), 3, round_, "client-0", certs, 2)
    with pytest.raises(ValueError, match=r"array 'head' has shape \(12,\), the layout \(3, 2, 2\)"):
        seal_update(dict(update, head=update["head"].reshape(-1)), 3, round_, "client-0", certs, 2)


# --- nothing of the update in a sealed part, and each share alone uniform -------------------

SENTINEL = 1234.5678


def test_no_part_holds_the_update_s_bytes(certs):
    update = {"a": np.full((64, 8), SENTINEL, np.float32), "b": np.full(300, SENTINEL, np.float64)}
    for secret in (False, True):
        round_ = round_of(update, secret=secret)
        parts = seal_update(update, 321, round_, "client-0", certs, 3)
        as32 = float(np.float32(SENTINEL))
        fixed = [struct.pack("<q", round(v * 2 ** FRAC)) for v in (SENTINEL, as32)]
        assert set(encoded(update).tolist()) == {round(v * 2 ** FRAC) for v in (SENTINEL, as32)}
        needles = fixed + [f[:6] for f in fixed] + [struct.pack(">q", round(SENTINEL * 2 ** FRAC)),
                                                   struct.pack("<f", SENTINEL) * 2, struct.pack("<d", SENTINEL),
                                                   struct.pack("<d", as32)]
        # needles of 6 bytes or more: a 4-byte one turns up in 20 kB of ciphertext about once in
        # 200,000 runs (it did once in CI); two float32 SENTINELs in a row are what "a" would show
        plain = encoded(update).numpy().astype("<i8").tobytes() + update["a"].tobytes() + update["b"].tobytes()
        assert all(needle in plain for needle in needles[:4] + needles[5:7])     # the scan would see them
        for part in parts:
            for needle in needles:
                assert needle not in part
            assert str(SENTINEL).encode() not in part and b"1234.5" not in part
        shares = [opened(p, round_, r, certs).share for r, p in enumerate(parts)]
        assert torch.equal(sum(shares), torch.cat([encoded(update)] + [torch.tensor([321])] * secret))


def bit_counts(share: torch.Tensor) -> np.ndarray:
    """How many of the values have each of the 64 bit positions set."""
    bits = share.numpy().view(np.uint64)[:, None] >> np.arange(64, dtype=np.uint64)
    return (bits & np.uint64(1)).sum(0)


def test_each_aggregator_s_share_alone_looks_uniform(certs):
    n = 4096
    update = {"w": np.zeros(n, np.float32)}
    round_ = round_of(update)
    parts = seal_update(update, 11, round_, "client-0", certs, 3)
    shares = [opened(p, round_, r, certs).share for r, p in enumerate(parts)]
    assert not bool(torch.any(sum(shares)))
    sigma = math.sqrt(n) / 2
    for rank, share in enumerate(shares):
        counts = bit_counts(share)
        assert np.all(np.abs(counts - n / 2) < 5 * sigma), (rank, counts)
        assert len(set(share.tolist())) == n                 # no repeated 64-bit values
    assert not torch.equal(shares[1], shares[2])


def test_two_sealings_of_one_update_share_nothing(certs):
    update = arrays(4)
    round_ = round_of(update)
    first, second = (seal_update(update, 2, round_, "client-0", certs, 2) for _ in range(2))
    for rank in (0, 1):
        a, b = opened(first[rank], round_, rank, certs).share, opened(second[rank], round_, rank, certs).share
        assert not bool(torch.any(a == b))
