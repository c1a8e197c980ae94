"""Declared communication cost of a protocol, per party.

Every protocol states its cost as a formula in the number of parties n and the tensor sizes;
tests compare these against the session's communication counter. Bytes are payload bytes
a party sends to the other parties (8 per ring element); rounds are sequential exchanges.
Traffic with the dealer is accounted separately and is not part of these formulas.

Formulas are stated for the all-to-all opening (MPCContext(opening="all")). Each one built with
+ from opening_cost (open_cost, open_low_cost, ...) keeps the list of its openings, each a tuple
of segments (numel, bits per element), so `cost.with_opening("king")` restates it exactly for
MPCContext(opening="king"): an opening's 1 round and (n-1) sum(8 ceil(numel bits / 64)) bytes
(bits packed end to end in 64-bit words, kernels.packing) become 2 rounds and
sum 2 (n-1) 8 ceil(ceil(numel / n) bits / 64) bytes (king_open_cost per segment).
Cost(rounds, bytes) written as bare numbers has unknown openings and with_opening("king")
refuses it; Cost(rounds, bytes, ()) declares traffic that is no opening (open_to's gather),
the same in both modes.
"""
from dataclasses import dataclass, field

from mpcft.kernels.packing import packed_bytes

RING_BYTES = 8
OPENINGS = ("all", "king")


@dataclass(frozen=True)
class Cost:
    rounds: int
    bytes_sent: int
    # ((n, ((numel, bits), ...)), ...): one entry per opening; None: not known
    openings: tuple | None = field(default=None, compare=False, repr=False)

    def __add__(self, other: "Cost") -> "Cost":
        known = self.openings is not None and other.openings is not None
        return Cost(self.rounds + other.rounds, self.bytes_sent + other.bytes_sent,
                    self.openings + other.openings if known else None)

    def with_opening(self, opening: str) -> "Cost":
        """This (all-to-all) cost restated for MPCContext(opening=opening)."""
        check_opening(opening)
        if opening == "all":
            return self
        if self.openings is None:
            raise ValueError(f"{self} is written as bare numbers, without its openings: build it "
                             f"with + from opening costs to restate it for opening 'king'")
        rounds, sent = self.rounds, self.bytes_sent
        for n, segments in self.openings:
            rounds += 1
            sent += sum(king_open_cost(n, numel, bits).bytes_sent - packed_bytes(numel, bits) * (n - 1)
                        for numel, bits in segments)
        return Cost(rounds, sent)


FREE = Cost(0, 0, ())


def check_opening(opening: str) -> None:
    if opening not in OPENINGS:
        raise ValueError(f"opening must be one of {OPENINGS}, got {opening!r}")


def opening_cost(n: int, segments) -> Cost:
    """One all-to-all opening of `segments`, (numel, bits per element) pairs sent together,
    each packed end to end: 1 round, each party sends its share to the n-1 others."""
    segments = tuple((int(numel), int(bits)) for numel, bits in segments)
    return Cost(1, sum(packed_bytes(numel, bits) for numel, bits in segments) * (n - 1), ((n, segments),))


def open_cost(n: int, numel: int) -> Cost:
    """Opening N ring elements to everybody: each party sends its share to the n-1 others."""
    return opening_cost(n, [(numel, 8 * RING_BYTES)])


def king_open_cost(n: int, numel: int, bits: int = 8 * RING_BYTES) -> Cost:
    """Opening N elements of `bits` bits through kings (MPCContext(opening="king")): padded
    to n chunks of ceil(N / n), each packed end to end; each party sends the other n-1 kings
    their chunk, then its own chunk's sum to the n-1 others: 2 rounds."""
    return Cost(2, 2 * (n - 1) * packed_bytes(-(-numel // n), bits))
