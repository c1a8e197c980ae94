"""Declared communication cost of a protocol, per party.

Every protocol states its cost as a formula in the number of parties n and the tensor sizes;
tests compare these against the session's communication counter. Bytes are payload bytes
a party sends to the other parties (8 per ring element); rounds are sequential exchanges.
Traffic with the dealer is accounted separately and is not part of these formulas.
"""
from dataclasses import dataclass

RING_BYTES = 8


@dataclass(frozen=True)
class Cost:
    rounds: int
    bytes_sent: int

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.rounds + other.rounds, self.bytes_sent + other.bytes_sent)


FREE = Cost(0, 0)


def open_cost(n: int, numel: int) -> Cost:
    """Opening N ring elements to everybody: each party sends its share to the n-1 others."""
    return Cost(1, numel * RING_BYTES * (n - 1))
