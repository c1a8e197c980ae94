"""Binary (XOR) sharing of packed bits: opening and Beaver AND.

A bit vector is shared as x = XOR_i x_i, 64 elements per int64 word (kernels/bits.py). With
a dealer AND triple (a, b, c = a AND b) the parties open d = x XOR a and e = y XOR b (uniform
words, revealing nothing) and set z = c XOR (d AND b) XOR (e AND a) XOR [party 0](d AND e).
"""
import torch

from .cost import RING_BYTES, Cost


def open_bits(ctx, words: torch.Tensor) -> torch.Tensor:
    """XOR of all parties' shares (packed words). 1 round, 8 bytes per word to each peer."""
    shares = ctx.session.all_gather(words.contiguous())
    total = shares[0] ^ shares[1]
    for other in shares[2:]:
        total ^= other
    return total


def and_(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """XOR shares of x AND y for equal-shape packed words. Cost: and_cost(n, x.numel())."""
    correlation = ctx.correlation("and_triple", words=x.numel())
    a, b = (t.reshape(x.shape) for t in correlation.random)
    opened = open_bits(ctx, torch.cat([(x ^ a).reshape(-1), (y ^ b).reshape(-1)]))
    d, e = opened[:x.numel()].reshape(x.shape), opened[x.numel():].reshape(x.shape)
    z = correlation.derived()[0].reshape(x.shape) ^ (d & b) ^ (e & a)
    if ctx.rank == 0:
        z ^= d & e
    return z


def and_cost(n: int, words: int) -> Cost:
    return Cost(1, 2 * words * RING_BYTES * (n - 1))
