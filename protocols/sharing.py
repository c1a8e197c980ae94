"""Additive secret sharing over Z_2^64: input, open to all, open to one.

x is shared as x = sum_i x_i mod 2^64. Any n-1 shares are uniform and independent of x.

Opening to all follows the context's `opening`: "all" (all-to-all: each party sends its share
to the n-1 others, 1 round, (n-1) N elements sent per party) or "king" (reduce-scatter then
all-gather through the parties as kings, open_at_kings: 2 rounds, 2 (n-1) ceil(N / n)
elements). Both reveal the same: the opened value.
"""
import math

import torch

from mpcft.kernels.prg import PRG, derive_seed
from mpcft.kernels.packing import add_unpacked, pack_low_bits, packed_bytes, unpack_low_bits
from mpcft.kernels.ring import RING_BITS, check_ring

from .cost import FREE, RING_BYTES, Cost, open_cost, opening_cost


def share(ctx, value, owner: int, shape) -> torch.Tensor:
    """Secret-share the owner's ring tensor `value` (others pass None); returns our share.

    Every non-owner i draws its share from the PRG it shares with the owner, and the owner
    keeps value - sum_i x_i: nothing is sent. Reveals the (public) shape only.
    Cost: share_cost().
    """
    shape = tuple(shape)
    if ctx.rank == owner:
        check_ring(value)
        if tuple(value.shape) != shape:
            raise ValueError(f"party {owner}'s input has shape {tuple(value.shape)}, declared {shape}")
        own = value.to(ctx.device, copy=True)
        for holder in range(ctx.world_size):
            if holder != owner:
                own -= ctx.input_prg(owner, holder).ring(shape, device=own.device)
        return own
    if value is not None:
        raise ValueError(f"party {ctx.rank} passed an input for party {owner}'s secret")
    return ctx.input_prg(owner, ctx.rank).ring(shape, device=ctx.device)


def split_seeded(value: torch.Tensor, seeds: list, label: str) -> torch.Tensor:
    """Input sharing by a data owner outside the session, for parties 0..len(seeds).

    Party r >= 1 holds only seeds[r-1] (32 bytes) and expands its share with seeded_share;
    party 0's share, returned here, is value - sum of those. Any n-1 shares are uniform and
    independent of value (each is a PRG output, or value minus PRG outputs)."""
    check_ring(value)
    own = value.clone()
    for seed in seeds:
        own -= seeded_share(seed, label, value.shape)
    return own


def seeded_share(seed: bytes, label: str, shape) -> torch.Tensor:
    """Share of party r >= 1 for split_seeded's `label`, expanded from its seed."""
    return PRG(derive_seed(seed, "owner-input", label)).ring(tuple(shape))


def share_cost() -> Cost:
    return FREE


def open_(ctx, share_: torch.Tensor) -> torch.Tensor:
    """Reveal x to every party. Reveals x (the declared output).

    Cost: open_cost(n, numel): 1 round, 8 * numel * (n-1) bytes sent by each party; with
    opening "king", king_open_cost(n, numel): 2 rounds, 16 * ceil(numel / n) * (n-1) bytes.
    """
    if ctx.opening == "king":
        return open_at_kings(ctx, share_.reshape(-1), _sum).reshape(share_.shape)
    return _sum(ctx.session.all_gather(share_.contiguous()))


def open_at_kings(ctx, flat: torch.Tensor, combine) -> torch.Tensor:
    """combine(everybody's `flat`) (a sum of shares, or their XOR) at every party, through kings.

    `flat` is padded with zeros to n chunks of m = ceil(N / n) elements (every party sends the
    same bytes); party j, king of chunk j, gets every other party's chunk j (round 1), combines
    the n of them and sends the result to the n-1 others (round 2): 2 (n-1) m elements sent
    per party. Reveals nothing more than the all-to-all opening: king j sees the n shares of
    chunk j, which there every party sees, and the others see only the opened chunk j.
    """
    n, numel = ctx.world_size, flat.numel()
    padded = torch.cat([flat, flat.new_zeros(n * -(-numel // n) - numel)]).reshape(n, -1)
    return torch.cat(reduce_at_kings(ctx, list(padded), combine))[:numel]


def reduce_at_kings(ctx, chunks: list, combine) -> list:
    """Two rounds: chunks[j] (equal shapes and dtypes) goes to party j, which returns
    combine([chunk j of party 0, ..., of party n-1]) to all; the n results, by king."""
    session, rank = ctx.session, ctx.rank
    received = session.exchange({peer: chunks[peer] for peer in session.peers})
    received[rank] = chunks[rank]
    mine = combine([received[r] for r in range(ctx.world_size)])
    results = session.exchange({peer: mine for peer in session.peers})
    results[rank] = mine
    return [results[r] for r in range(ctx.world_size)]


def open_many(ctx, shares) -> list:
    """[open_(x) for x in shares] in one round: flattened, concatenated, opened, split back.
    Reveals exactly the listed values. Cost: open_cost(n, total numel) (king: king_open_cost)."""
    shares = list(shares)
    return _split(open_(ctx, concatenated([s.reshape(-1) for s in shares])), [s.shape for s in shares])


def open_differences(ctx, pairs) -> list:
    """[open_(x - a) for (x, a) in pairs] in one round, each a of x's shape: the differences
    are written straight into the one message (no copy to concatenate them). Reveals exactly
    the listed differences. Cost: open_cost(n, total numel) (king: king_open_cost)."""
    pairs = list(pairs)
    return _split(open_(ctx, _differences(pairs)), [x.shape for x, _ in pairs])


def exchange_differences(ctx, pairs) -> tuple:
    """open_differences' shares before they are added up (opening "all"): (ours, [each other
    party's]), flat int64 tensors of the differences end to end, whose sum mod 2^64 is
    open_differences' values end to end; for kernels that add them as they read them. Reveals
    exactly the listed differences. Cost: open_cost(n, total numel)."""
    if ctx.opening != "all":
        raise ValueError(f"exchange_differences opens all-to-all, not with opening {ctx.opening!r}")
    message = _differences(list(pairs))
    return message, [g for rank, g in enumerate(ctx.session.all_gather(message)) if rank != ctx.rank]


def _differences(pairs: list) -> torch.Tensor:
    """x - a for each (x, a) written end to end into one flat message (no concatenating copy)."""
    message = torch.empty(sum(x.numel() for x, _ in pairs), dtype=torch.int64, device=pairs[0][0].device)
    for (x, a), part in zip(pairs, _split(message, [x.shape for x, _ in pairs])):
        torch.sub(x, a, out=part)
    return message


def _split(flat: torch.Tensor, shapes: list) -> list:
    """Consecutive views of the contiguous `flat`, one of each shape."""
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(flat[start:start + size].view(shape))
        start += size
    return out


def concatenated(flats: list) -> torch.Tensor:
    """The flat tensors end to end (a single one as it is: torch.cat would copy it)."""
    return flats[0] if len(flats) == 1 else torch.cat(flats)


def open_low(ctx, parts, shifts=None, packed=None) -> list:
    """[x mod 2^bits for (x, bits) in parts] in one round, each party sending only the low
    `bits` bits of each share, packed end to end (kernels.packing: a sum mod 2^bits needs no
    more). Reveals x mod 2^bits, x itself for bits = 64. Values in [0, 2^bits) (any int64 for
    64), each times 2^shifts[k] mod 2^64 where shifts are given. `packed`: each part's
    pack_low_bits(x, bits), where the caller formed it with x. With opening "king", each part
    is chunked on element boundaries and king j returns its chunks' x mod 2^bits, packed alike:
    2 rounds. Cost: open_low_cost(n, [(numel, bits), ...])."""
    if any(not 1 <= int(bits) <= RING_BITS for _, bits in parts):
        raise ValueError(f"open_low opens 1 to {RING_BITS} low bits, got {[bits for _, bits in parts]}")
    shifts = [0] * len(parts) if shifts is None else [int(s) for s in shifts]
    if len(shifts) != len(parts):
        raise ValueError(f"open_low: {len(shifts)} shifts for {len(parts)} parts")
    if ctx.opening == "king":
        return [value << shift if shift else value for value, shift in zip(_open_low_at_kings(ctx, parts), shifts)]
    if packed is None:
        packed = [pack_low_bits(x, int(bits)) for x, bits in parts]
    packed = concatenated(list(packed))
    peers = [g for rank, g in enumerate(ctx.session.all_gather(packed)) if rank != ctx.rank]
    out, start = [], 0
    for (x, bits), shift in zip(parts, shifts):
        end = start + packed_bytes(x.numel(), bits)
        out.append(add_unpacked(x, [g[start:end] for g in peers], bits, shift).reshape(x.shape))
        start = end
    return out


def _open_low_at_kings(ctx, parts) -> list:
    """open_low through kings: chunk j holds elements [j m, (j+1) m) of every part (m =
    ceil(numel / n) for that part), their low bits packed; king j returns x mod 2^bits of them."""
    n = ctx.world_size
    per_king = [-(-x.numel() // n) for x, _ in parts]
    sizes = [packed_bytes(m, bits) for m, (_, bits) in zip(per_king, parts)]
    rows = [torch.stack([pack_low_bits(chunk, bits) for chunk in
                         torch.cat([x.reshape(-1), x.new_zeros(n * m - x.numel())]).reshape(n, m)])
            for (x, bits), m in zip(parts, per_king)]

    def values(chunk):      # a chunk's bytes -> one int64 tensor per part
        return [unpack_low_bits(b, m, bits) for b, m, (_, bits) in zip(chunk.split(sizes), per_king, parts)]

    def combine(chunks):
        sums = [_sum(list(shares)) for shares in zip(*map(values, chunks))]
        return torch.cat([pack_low_bits(v, bits) for v, (_, bits) in zip(sums, parts)])

    opened = [values(chunk) for chunk in reduce_at_kings(ctx, list(torch.cat(rows, 1)), combine)]
    return [torch.cat(list(chunks))[:x.numel()].reshape(x.shape) for chunks, (x, _) in zip(zip(*opened), parts)]


def open_low_cost(n: int, parts) -> Cost:
    """parts: (numel, bits) pairs opened together by open_low (one segment each)."""
    return opening_cost(n, list(parts))


def open_to(ctx, share_: torch.Tensor, receiver: int):
    """Reveal x to `receiver` only (others get None); nobody else learns anything.

    Cost: open_to_cost(n, numel, rank, receiver).
    """
    shares = ctx.session.gather(share_.contiguous(), receiver)
    return _sum(shares) if ctx.rank == receiver else None


def _sum(shares: list) -> torch.Tensor:
    total = shares[0] + shares[1]      # a fresh tensor: received buffers are left alone
    for other in shares[2:]:
        total += other
    return total


def open_to_cost(n: int, numel: int, rank: int, receiver: int) -> Cost:
    return Cost(1, 0 if rank == receiver else numel * RING_BYTES, ())     # no opening: the same in both modes


__all__ = ["share", "share_cost", "split_seeded", "seeded_share", "open_", "open_cost", "open_many", "open_differences",
           "exchange_differences", "open_low",
           "open_low_cost", "open_at_kings", "reduce_at_kings", "open_to", "open_to_cost", "concatenated"]
