"""A client's model update as sealed shares for the aggregator parties, and their opening.

Client k encodes its update U_k = w_k - w (the trained arrays minus the round's global ones,
flattened in the order of UpdateSpec, fixed point with f fractional bits) and, for secret
weights, its example count n_k (an integer) as one ring vector, and splits it as data owners
do (protocols.sharing.split_seeded): aggregators 1..m-1 get a 32-byte seed, aggregator 0 the
vector minus their expansions. Each part is sealed to one aggregator (runtime.envelope:
encrypted to its certificate, signed by the client's `owner-NAME` certificate), with a header
binding it to the federation (a random id per run), the round, the client and the arrays'
layout. The Flower server relays the sealed parts and can read none of them; an aggregator
learns the header (n_k only for public weights) and its share, which alone is uniform.
"""
import dataclasses
import hashlib
import json
import math
import pathlib

import numpy as np
import torch

from mpcft.kernels import FixedPoint
from mpcft.kernels.prg import SEED_BYTES, fresh_seed
from mpcft.protocols.sharing import seeded_share, split_seeded
from mpcft.runtime.envelope import OWNER_PREFIX, SealedFileError, open_sealed, seal

KIND = "mpcft-fedavg-update-v1"
RING_BYTES = 8
FRAC_BITS = 16                # the federation's fixed point (updates are small: 16 bits suffice)
MAX_COUNT = 1 << 24           # examples a client may claim (bounds sum_k n_k, see aggregation)
MAX_VALUE = 2.0 ** 40         # |update value| within aggregation's contract (2^(62 - f)) with room


@dataclasses.dataclass(frozen=True)
class UpdateSpec:
    """The layout of the trained arrays: names and shapes, in a fixed order."""
    names: tuple
    shapes: tuple

    @classmethod
    def of(cls, arrays: dict) -> "UpdateSpec":
        names = tuple(sorted(arrays))
        return cls(names, tuple(tuple(int(s) for s in arrays[n].shape) for n in names))

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def digest(self) -> str:
        text = json.dumps([[n, list(s)] for n, s in zip(self.names, self.shapes)])
        return hashlib.sha256(text.encode()).hexdigest()

    def flatten(self, arrays: dict) -> torch.Tensor:
        """One float64 vector of `arrays` (exactly this layout, else ValueError)."""
        if set(arrays) != set(self.names):
            raise ValueError(f"arrays {sorted(arrays)} do not match the layout {list(self.names)}")
        parts = []
        for name, shape in zip(self.names, self.shapes):
            value = torch.as_tensor(np.asarray(arrays[name]), dtype=torch.float64)
            if tuple(value.shape) != shape:
                raise ValueError(f"array {name!r} has shape {tuple(value.shape)}, the layout {shape}")
            parts.append(value.reshape(-1))
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

    def unflatten(self, flat: torch.Tensor) -> dict:
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = math.prod(shape)
            out[name] = flat[start:start + size].reshape(shape)
            start += size
        return out


@dataclasses.dataclass(frozen=True)
class Round:
    """What binds a sealed update: the federation's id, the round, the layout, the weighting."""
    federation: str
    number: int
    spec: UpdateSpec
    secret_counts: bool
    frac_bits: int

    def label(self, client: str) -> str:
        return f"{self.federation}/{self.number}/{client}"

    def header(self, client: str, count: int) -> dict:
        header = {"kind": KIND, "federation": self.federation, "round": self.number, "client": client,
                  "layout": self.spec.digest(), "numel": self.spec.numel, "frac_bits": self.frac_bits,
                  "secret_counts": self.secret_counts}
        if not self.secret_counts:
            header["num_examples"] = int(count)
        return header


def _check_count(count) -> None:
    if not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise ValueError(f"num_examples must be an integer in [1, {MAX_COUNT}], got {count!r}")


def seal_update(update: dict, count: int, round_: Round, client: str, certs, aggregators: int) -> list:
    """Sealed parts [bytes] of `update` (name -> array) and `count` for aggregators 0..m-1.

    certs: a folder with ca.pem, party-R.pem for each aggregator and owner-CLIENT(-key).pem."""
    _check_count(count)
    certs = pathlib.Path(certs)
    fp = FixedPoint(round_.frac_bits)
    flat = round_.spec.flatten(update)
    if not bool(torch.isfinite(flat).all()) or (flat.numel() and float(flat.abs().max()) >= MAX_VALUE):
        raise ValueError(f"the update holds values that are not finite or beyond {MAX_VALUE:g}: "
                         f"local training diverged")
    vector = fp.encode(flat)
    if round_.secret_counts:
        vector = torch.cat([vector, torch.tensor([count], dtype=torch.int64)])
    seeds = [fresh_seed() for _ in range(aggregators - 1)]
    first = split_seeded(vector, seeds, round_.label(client))
    header = round_.header(client, count)
    owner_cert, owner_key = certs / f"{OWNER_PREFIX}{client}.pem", certs / f"{OWNER_PREFIX}{client}-key.pem"
    parts = []
    for rank in range(aggregators):
        payload = first.numpy().astype("<i8").tobytes() if rank == 0 else seeds[rank - 1]
        parts.append(seal(payload, dict(header, rank=rank), certs / f"party-{rank}.pem", owner_cert, owner_key))
    return parts


@dataclasses.dataclass(frozen=True)
class ClientShare:
    client: str
    count: int | None          # n_k when public
    share: torch.Tensor        # this aggregator's share [numel (+1)]


def open_update(blob: bytes, round_: Round, rank: int, key, ca, name: str) -> ClientShare:
    """This aggregator's share of a client's update, after every check (SealedFileError)."""
    header, payload, owner = open_sealed(blob, key, ca, f"party-{rank}", name)
    client = owner[len(OWNER_PREFIX):]
    if not round_.secret_counts:
        count = header.get("num_examples")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
            raise SealedFileError(f"{name}: num_examples {count!r} is not an integer in [1, {MAX_COUNT}]")
    expected = dict(round_.header(client, header.get("num_examples", 0)), rank=rank, recipient=f"party-{rank}")
    wrong = sorted(k for k in set(expected) | set(header) if header.get(k) != expected.get(k))
    if wrong:
        raise SealedFileError(f"{name}: from {client}, not an update of this round "
                              f"(header fields {', '.join(wrong)} differ)")
    length = round_.spec.numel + (1 if round_.secret_counts else 0)
    if rank == 0:
        if len(payload) != length * RING_BYTES:
            raise SealedFileError(f"{name}: {len(payload)} bytes of shares, expected {length * RING_BYTES}")
        share = torch.from_numpy(np.frombuffer(payload, dtype="<i8").astype(np.int64))
    else:
        if len(payload) != SEED_BYTES:
            raise SealedFileError(f"{name}: a seed of {len(payload)} bytes, expected {SEED_BYTES}")
        share = seeded_share(payload, round_.label(client), (length,))
    return ClientShare(client, None if round_.secret_counts else header["num_examples"], share)
