"""Additive secret sharing over Z_2^64: input, open to all, open to one.

x is shared as x = sum_i x_i mod 2^64. Any n-1 shares are uniform and independent of x.
"""
import torch

from mpcft.kernels.prg import PRG, derive_seed
from mpcft.kernels.ring import RING_BITS, check_ring, low_bits, rshift_logical

from .cost import FREE, RING_BYTES, Cost, open_cost


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
    """Reveal x to every party by all-gathering the shares. Reveals x (the declared output).

    Cost: open_cost(n, numel): 1 round, 8 * numel * (n-1) bytes sent by each party.
    """
    return _sum(ctx.session.all_gather(share_.contiguous()))


def open_many(ctx, shares) -> list:
    """[open_(x) for x in shares] in one round: flattened, concatenated, opened, split back.
    Reveals exactly the listed values. Cost: open_cost(n, total numel)."""
    shares = list(shares)
    opened = open_(ctx, torch.cat([s.reshape(-1) for s in shares]))
    out, start = [], 0
    for s in shares:
        out.append(opened[start:start + s.numel()].reshape(s.shape))
        start += s.numel()
    return out


def open_low(ctx, parts) -> list:
    """[x mod 2^bits for (x, bits) in parts] in one round, each party sending only the low
    ceil(bits / 8) bytes of each share (a sum mod 2^bits needs no more), so x mod 2^bits is
    all that is revealed; bits = 64 opens x whole. Values in [0, 2^bits) (any int64 for 64).
    Cost: open_low_cost(n, [(numel, bits), ...])."""
    widths = [-(-int(bits) // 8) for _, bits in parts]
    if any(not 1 <= int(bits) <= RING_BITS for _, bits in parts):
        raise ValueError(f"open_low opens 1 to {RING_BITS} low bits, got {[bits for _, bits in parts]}")
    packed = torch.cat([_low_bytes(x.reshape(-1), w) for (x, _), w in zip(parts, widths)])
    gathered = ctx.session.all_gather(packed)
    out, start = [], 0
    for (x, bits), width in zip(parts, widths):
        end = start + x.numel() * width
        value = _sum([_join_bytes(g[start:end], width) for g in gathered])
        out.append((value if bits == RING_BITS else low_bits(value, bits)).reshape(x.shape))
        start = end
    return out


def _low_bytes(x: torch.Tensor, width: int) -> torch.Tensor:
    """The low `width` bytes of each int64, least significant first, as a flat uint8 tensor."""
    return torch.stack([rshift_logical(x, 8 * k) & 0xFF for k in range(width)], 1).to(torch.uint8).reshape(-1)


def _join_bytes(data: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of _low_bytes: int64 values from their low `width` bytes (higher bytes zero)."""
    data = data.reshape(-1, width).to(torch.int64)
    value = data[:, 0].clone()
    for k in range(1, width):
        value |= data[:, k] << (8 * k)
    return value


def open_low_cost(n: int, parts) -> Cost:
    """parts: (numel, bits) pairs opened together by open_low."""
    return Cost(1, sum(numel * -(-bits // 8) for numel, bits in parts) * (n - 1))


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
    return Cost(1, 0 if rank == receiver else numel * RING_BYTES)


__all__ = ["share", "share_cost", "split_seeded", "seeded_share", "open_", "open_cost", "open_many", "open_low",
           "open_low_cost", "open_to", "open_to_cost"]
