"""Dealer correlations with seed compression, online or from pre-generated files.

The dealer shares a secret seed s_i with every party i. For request number `seq`, party i's
stream is PRG(HKDF(s_i, "corr", seq)). A correlation has random inputs (e.g. the triple's
a and b) and derived values (c = a*b): every party draws its shares of the random inputs
from its stream, so a = sum_i a_i is uniform and nobody sends anything for it; parties
1..n-1 also draw their shares of the derived values, and party 0 alone receives a
correction, c_0 = c - sum_{i>=1} c_i, from the dealer. The dealer, which knows every seed,
learns all correlations (the usual trusted-dealer model); any n-1 parties' shares are
independent of the correlated values.

Kinds (params -> values, all as additive shares):
- "triple"(shape_a, shape_b): a, b uniform; c = a * b (broadcast).
- "matmul_triple"(shape_a, shape_b): A, B uniform; C = A @ B (batched).
- "square"(shape): a uniform; a^2.
- "trunc"(shape, bits): r uniform; r_top = msb(r); r_mid = (r mod 2^63) >> bits.
- "and_triple"(words): binary (XOR-shared) packed words a, b uniform; c = a AND b.
- "sign"(shape, bits, digit_bits): see protocols/comparison.py.
- "powers"(shape, degree): a mask a_k for every power x^k used as a factor by
  fixed.powers; a_i * a_j for every product x^i x^j of its schedule (power_levels).
"""
import json
import pathlib
import struct

import numpy as np
import torch

from mpcft.kernels import PRG, derive_seed, fresh_seed, ring_matmul
from mpcft.kernels.bits import digit_planes, pack_bits, words_for
from mpcft.kernels.ring import RING_BITS, bit, low_bits, msb, rshift_logical


def _shape(value) -> tuple:
    return tuple(int(s) for s in value)


def _broadcast(a, b) -> tuple:
    return tuple(torch.broadcast_shapes(a, b))


def _matmul_shape(a, b) -> tuple:
    return tuple(torch.broadcast_shapes(a[:-2], b[:-2])) + (a[-2], b[-1])


ARITH, BINARY = False, True  # how shares combine: sum mod 2^64, or XOR


def _triple(p):
    a, b = _shape(p["shape_a"]), _shape(p["shape_b"])
    return [(a, ARITH), (b, ARITH)], [(_broadcast(a, b), ARITH)], lambda x, y: [x * y]


def _matmul_triple(p):
    a, b = _shape(p["shape_a"]), _shape(p["shape_b"])
    return [(a, ARITH), (b, ARITH)], [(_matmul_shape(a, b), ARITH)], lambda x, y: [ring_matmul(x, y)]


def _square(p):
    shape = _shape(p["shape"])
    return [(shape, ARITH)], [(shape, ARITH)], lambda a: [a * a]


def _trunc(p):
    shape, bits = _shape(p["shape"]), int(p["bits"])
    return ([(shape, ARITH)], [(shape, ARITH)] * 2,
            lambda r: [msb(r), rshift_logical(low_bits(r, RING_BITS - 1), bits)])


def _and_triple(p):
    words = (int(p["words"]),)
    return [(words, BINARY)] * 2, [(words, BINARY)], lambda a, b: [a & b]


def _sign(p):
    """Comparison material (protocols/comparison.py) for |x| < 2^bits, digits of digit_bits."""
    shape, bits, digit_bits = _shape(p["shape"]), int(p["bits"]), int(p["digit_bits"])
    digits, words = -(-bits // digit_bits), words_for(int(np.prod(shape, dtype=np.int64)))

    def derive(r, a, s):
        beta = s & 1
        return [digit_planes(low_bits(r, bits), digit_bits, digits),
                pack_bits(bit(r, bits) ^ beta), beta, a * beta]
    return ([(shape, ARITH)] * 3,
            [((digits, 1 << digit_bits, words), BINARY), ((words,), BINARY), (shape, ARITH), (shape, ARITH)],
            derive)


def power_levels(degree: int) -> list:
    """The product schedule of x, x^2, ..., x^degree: per level (newly opened factor exponents,
    [(i, j) products giving x^(i+j)]); level L multiplies x^(2^L) by x^1, x^2, ..."""
    levels, have, opened = [], 1, set()
    while have < degree:
        pairs = [(have, k) for k in range(1, min(have, degree - have) + 1)]
        factors = sorted({e for pair in pairs for e in pair} - opened)
        opened |= set(factors)
        levels.append((factors, pairs))
        have += len(pairs)
    return levels


def _powers(p):
    shape, levels = _shape(p["shape"]), power_levels(int(p["degree"]))
    factors = sorted({f for new, _ in levels for f in new})
    pairs = [pair for _, level in levels for pair in level]

    def derive(*masks):
        by_exponent = dict(zip(factors, masks))
        return [by_exponent[i] * by_exponent[j] for i, j in pairs]
    return [(shape, ARITH)] * len(factors), [(shape, ARITH)] * len(pairs), derive


# kind -> params -> ([(shape, binary)] random inputs, [(shape, binary)] derived values, derive)
KINDS = {"triple": _triple, "matmul_triple": _matmul_triple, "square": _square, "trunc": _trunc,
         "and_triple": _and_triple, "sign": _sign, "powers": _powers}


def _spec(kind: str, params: dict):
    if kind not in KINDS:
        raise ValueError(f"unknown correlation kind {kind!r}; known: {sorted(KINDS)}")
    return KINDS[kind](params)


def _stream(seed: bytes, seq: int) -> PRG:
    return PRG(derive_seed(seed, "corr", seq))


class Correlation:
    """One party's shares of a correlation: `random` at once, `derived()` when first needed.

    Protocols use the random parts (masks) before their first exchange and the derived
    parts after it, so party 0's wait for the dealer overlaps with that exchange.
    """

    def __init__(self, random: list, derived):
        self.random = random
        self._derived = derived

    def derived(self) -> list:
        if callable(self._derived):
            self._derived = self._derived()
        return self._derived

    def to(self, device) -> "Correlation":
        """The same shares on `device` (derived values moved when first needed)."""
        return Correlation([t.to(device) for t in self.random],
                           lambda: [t.to(device) for t in self.derived()])


def party_correlation(kind: str, params: dict, seq: int, seed: bytes, rank: int,
                      corrections=None) -> Correlation:
    """This party's shares of correlation number `seq`.

    Parties >= 1 compute everything from their seed; party 0 passes the dealer's corrections
    for the derived values (a list, or a callable returning it once they arrive).
    """
    random, derived, _ = _spec(kind, params)
    prg = _stream(seed, seq)
    shares = [prg.ring(shape) for shape, _ in random]
    if rank != 0:
        return Correlation(shares, lambda: [prg.ring(shape) for shape, _ in derived])

    def checked():
        got = corrections() if callable(corrections) else corrections
        if got is None or len(got) != len(derived):
            raise ValueError(f"party 0 needs {len(derived)} dealer corrections for {kind!r}")
        for tensor, (shape, _) in zip(got, derived):
            if tuple(tensor.shape) != shape:
                raise ValueError(f"dealer correction for {kind!r} has shape {tuple(tensor.shape)}, expected {shape}")
        return list(got)
    return Correlation(shares, checked)


def party_shares(kind: str, params: dict, seq: int, seed: bytes, rank: int, corrections=None) -> list:
    """All of this party's shares of correlation `seq` at once (random parts, then derived)."""
    correlation = party_correlation(kind, params, seq, seed, rank, corrections)
    return correlation.random + correlation.derived()


def dealer_corrections(kind: str, params: dict, seq: int, seeds) -> list:
    """The dealer's answer to party 0: c_0 = c - sum_{i>=1} c_i (XOR for binary values)."""
    random, derived, derive = _spec(kind, params)
    streams = [_stream(seeds[i], seq) for i in range(len(seeds))]
    values = []
    for shape, binary in random:
        value = torch.zeros(shape, dtype=torch.int64)
        for prg in streams:
            value = value ^ prg.ring(shape) if binary else value + prg.ring(shape)
        values.append(value)
    corrections = derive(*values)
    for prg in streams[1:]:
        for j, (shape, binary) in enumerate(derived):
            share = prg.ring(shape)
            corrections[j] = corrections[j] ^ share if binary else corrections[j] - share
    return corrections


def dealer_handler(rank: int, kind: str, params: dict, seq: int, seeds) -> list:
    """The dealer process's request handler (runtime signature): corrections for party 0."""
    if rank != 0:
        raise ValueError(f"only party 0 receives correlation corrections, not party {rank}")
    return dealer_corrections(kind, params, int(params["seq"]), seeds)


class DealerCorrelations:
    """Correlations fetched online: party 0 asks the dealer, the others expand their seeds."""

    def __init__(self, session):
        if session.dealer_seed is None:
            raise ValueError("this session has no dealer: start one (mpcft launch --dealer) "
                             "or use FileCorrelations for an offline run")
        self.session = session
        self.seq = 0
        self._ahead = {}          # party 0: seq -> (kind, params, reply) asked for in advance
        self._log = None          # (kind, params) of the requests since mark()
        self.mispredicted = 0

    def get(self, kind: str, **params) -> Correlation:
        seq, self.seq = self.seq, self.seq + 1
        if self._log is not None:
            self._log.append((kind, params))
        corrections = None
        if self.session.rank == 0:
            ahead = self._ahead.pop(seq, None)
            if ahead is not None and ahead[:2] == (kind, params):
                corrections = ahead[2].result
            else:
                self.mispredicted += ahead is not None
                corrections = self.session.dealer_request_async(kind, seq=seq, **params).result
        return party_correlation(kind, params, seq, self.session.dealer_seed, self.session.rank,
                                 corrections)

    def mark(self) -> None:
        """Start logging requests (for since_mark)."""
        self._log = []

    def since_mark(self) -> list:
        """[(kind, params)] requested since mark(): e.g. one training step's plan."""
        return list(self._log or [])

    def prefetch(self, plan, max_bytes: int = 1 << 30) -> None:
        """Expect the next requests to be `plan` ([(kind, params)], e.g. the previous step's):
        party 0 asks the dealer for them now (up to max_bytes of answers), so that the dealer
        computes while the parties work instead of when they wait. The dealer's answer depends
        only on (seq, kind, params), so a request that turns out different is simply asked
        again and the speculative answer dropped. Changes nothing at the other parties."""
        if self.session.rank != 0:
            return
        seq = max([self.seq] + [s + 1 for s in self._ahead])
        for kind, params in plan:
            max_bytes -= sum(8 * int(np.prod(shape, dtype=np.int64)) for shape, _ in _spec(kind, params)[1])
            if max_bytes < 0:
                break
            reply = self.session.dealer_request_async(kind, seq=seq, **params)
            self._ahead[seq] = (kind, params, reply)
            seq += 1


class RecordingCorrelations:
    """Wraps a correlation source and records the plan (kind, params) of every request."""

    def __init__(self, inner):
        self.inner = inner
        self.plan: list[dict] = []

    def get(self, kind: str, **params) -> Correlation:
        self.plan.append({"kind": kind, "params": params})
        return self.inner.get(kind, **params)

    def save_plan(self, path) -> None:
        pathlib.Path(path).write_text(json.dumps(self.plan))


_MAGIC = b"MPCFTCOR"


def write_offline(plan: list[dict], world_size: int, out_dir, seeds=None) -> list[pathlib.Path]:
    """Generate every correlation of `plan` ahead of time into one file per party.

    Each file holds that party's full shares in plan order: a JSON index after a magic
    header, then the raw int64 arrays. Seeds default to fresh OS randomness.
    """
    seeds = seeds or [fresh_seed() for _ in range(world_size)]
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_party = [[] for _ in range(world_size)]
    for seq, request in enumerate(plan):
        kind, params = request["kind"], request["params"]
        corrections = dealer_corrections(kind, params, seq, seeds)
        for rank in range(world_size):
            per_party[rank].append(party_shares(kind, params, seq, seeds[rank], rank,
                                                corrections if rank == 0 else None))
    paths = []
    for rank, entries in enumerate(per_party):
        path = out_dir / f"party-{rank}.corr"
        index = [{"kind": r["kind"], "params": r["params"], "shapes": [list(t.shape) for t in e]}
                 for r, e in zip(plan, entries)]
        header = json.dumps({"world_size": world_size, "rank": rank, "index": index}).encode()
        with open(path, "wb") as f:
            f.write(_MAGIC + struct.pack("<Q", len(header)) + header)
            for tensors in entries:
                for t in tensors:
                    f.write(t.contiguous().numpy().tobytes())
        paths.append(path)
    return paths


class FileCorrelations:
    """Serves pre-generated correlations from a party file, checking each request matches."""

    def __init__(self, path, rank: int):
        self.path = pathlib.Path(path)
        with open(self.path, "rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                raise ValueError(f"{self.path} is not an mpcft correlation file")
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        if header["rank"] != rank:
            raise ValueError(f"{self.path} holds party {header['rank']}'s correlations, not party {rank}'s")
        self.index = header["index"]
        self.data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=len(_MAGIC) + 8 + length)
        self.seq = 0
        self.offset = 0

    def get(self, kind: str, **params) -> Correlation:
        if self.seq >= len(self.index):
            raise RuntimeError(f"{self.path}: the program asked for more correlations than were "
                               f"recorded ({len(self.index)}); record the plan again")
        entry = self.index[self.seq]
        if entry["kind"] != kind or entry["params"] != json.loads(json.dumps(params)):
            raise RuntimeError(f"{self.path}: request {self.seq} is {kind} {params}, but the file "
                               f"holds {entry['kind']} {entry['params']}: the program changed since recording")
        self.seq += 1
        out = []
        for shape in entry["shapes"]:
            nbytes = int(np.prod(shape, dtype=np.int64)) * 8
            raw = np.array(self.data[self.offset:self.offset + nbytes]).view(np.int64).reshape(shape)
            self.offset += nbytes
            out.append(torch.from_numpy(raw))
        count = len(_spec(kind, params)[0])
        return Correlation(out[:count], out[count:])
