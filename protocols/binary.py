"""Binary (XOR) sharing of packed bits: opening and Beaver AND.

A bit vector is shared as x = XOR_i x_i, 64 elements per int64 word (kernels/bits.py). With
a dealer AND triple (a, b, c = a AND b) the parties open d = x XOR a and e = y XOR b (uniform
words, revealing nothing) and set z = c XOR (d AND b) XOR (e AND a) XOR [party 0](d AND e).
"""
import torch

from .cost import Cost, open_cost
from .sharing import open_at_kings


def open_bits(ctx, words: torch.Tensor) -> torch.Tensor:
    """XOR of all parties' shares (packed words); reveals that XOR only. Cost: open_cost(n,
    words): 1 round, 8 bytes per word to each peer; with opening "king" (XOR at the kings,
    sharing.open_at_kings), king_open_cost(n, words)."""
    if ctx.opening == "king":
        return open_at_kings(ctx, words.reshape(-1), _xor).reshape(words.shape)
    return _xor(ctx.session.all_gather(words.contiguous()))


def _xor(shares: list) -> torch.Tensor:
    total = shares[0] ^ shares[1]      # a fresh tensor: received buffers are left alone
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
    return open_cost(n, 2 * words)
