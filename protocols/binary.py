"""Binary (XOR) sharing of packed bits: opening, and products of many bits in one round.

A bit vector is shared as x = XOR_i x_i, 64 elements per int64 word (kernels/bits.py).
Beaver's AND (open x XOR a, y XOR b for a dealer triple) generalises to any set of monomials
over K shared words in one round: each word is opened masked once and the dealer supplies
the products of the masks that the monomials' expansions need (and_products).
"""
import functools
import itertools

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


def product_sets(monomials) -> list:
    """Every subset of two or more factors of some monomial (sorted index lists, in a fixed
    order): the products of masks an and_products correlation carries."""
    return [list(s) for s in _product_sets(tuple(tuple(m) for m in monomials))]


@functools.lru_cache(maxsize=None)
def _product_sets(monomials: tuple) -> tuple:
    """product_sets as tuples, once per set of monomials (a comparison tree asks again each level)."""
    sets = set()
    for monomial in monomials:
        members = sorted(set(monomial))
        for size in range(2, len(members) + 1):
            sets.update(itertools.combinations(members, size))
    return tuple(sorted(sets, key=lambda s: (len(s), s)))


def and_products(ctx, factors: torch.Tensor, monomials: list) -> torch.Tensor:
    """XOR shares [len(monomials), *words] of AND_{k in M} factors[k] for each monomial M (a list
    of indices into the packed words factors [K, *words]), in one round. With dealer masks r_k
    and XOR shares of R_S = AND_{k in S} r_k for every S of product_sets, the parties open
    d_k = x_k XOR r_k (uniform: reveals nothing) and AND_{k in M} (d_k XOR r_k) =
    XOR_{S in M} (AND_{k in M - S} d_k) AND R_S is local (R_{} = 1, added by party 0).
    Cost: and_products_cost(n, words, K); the dealer sends len(product_sets) words per word."""
    sets = product_sets(monomials)
    words = factors[0].numel()
    correlation = ctx.correlation("and_products", words=words, factors=len(factors), sets=sets)
    masks = correlation.random[0].reshape(factors.shape)
    opened = open_bits(ctx, factors ^ masks)
    derived = correlation.derived()[0].reshape((len(sets),) + factors.shape[1:])
    shares = {(k,): masks[k] for k in range(len(factors))}
    shares.update((tuple(s), derived[j]) for j, s in enumerate(sets))
    ones = torch.full_like(opened[0], -1)
    out = []
    for monomial in monomials:
        members = sorted(set(monomial))
        z = torch.zeros_like(opened[0])
        for size in range(len(members) + 1):
            for chosen in itertools.combinations(members, size):
                public = ones
                for k in members:
                    if k not in chosen:
                        public = public & opened[k]
                if chosen:
                    z ^= public & shares[chosen]
                elif ctx.rank == 0:
                    z ^= public
        out.append(z)
    return torch.stack(out)


def and_products_cost(n: int, words: int, factors: int) -> Cost:
    return open_cost(n, factors * words)
