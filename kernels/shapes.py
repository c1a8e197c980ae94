"""Shape rules of ring products (torch's broadcasting and torch.matmul's), shared by the CPU
and CUDA routes and by the correlations' layouts."""


class BroadcastError(ValueError):
    """Two shapes that do not broadcast together."""


def broadcast_shapes(shape_a, shape_b) -> tuple:
    """torch.broadcast_shapes(shape_a, shape_b) as a tuple, in plain Python (a protocol step
    asks hundreds of times, and torch's takes about 30 times as long); BroadcastError where
    the shapes do not broadcast."""
    a, b = tuple(shape_a), tuple(shape_b)
    a, b = (1,) * (len(b) - len(a)) + a, (1,) * (len(a) - len(b)) + b
    if any(x != y and x != 1 and y != 1 for x, y in zip(a, b)):
        raise BroadcastError(f"shapes {list(shape_a)} and {list(shape_b)} do not broadcast")
    return tuple(y if x == 1 else x for x, y in zip(a, b))


def matmul_shapes(shape_a, shape_b):
    """(batch, m, k, n, squeeze_a, squeeze_b) for a @ b; a 1-D operand is a row (a) or a
    column (b) that is squeezed from the result. ValueError for shapes that do not fit."""
    if len(shape_a) == 0 or len(shape_b) == 0:
        raise ValueError("ring_matmul needs operands with at least one dimension")
    squeeze_a, squeeze_b = len(shape_a) == 1, len(shape_b) == 1
    sa = (1,) + tuple(shape_a) if squeeze_a else tuple(shape_a)
    sb = tuple(shape_b) + (1,) if squeeze_b else tuple(shape_b)
    (m, k), (k2, n) = sa[-2:], sb[-2:]
    if k != k2:
        raise ValueError(f"ring_matmul shape mismatch: {tuple(shape_a)} @ {tuple(shape_b)} (inner {k} != {k2})")
    try:
        batch = broadcast_shapes(sa[:-2], sb[:-2])
    except BroadcastError:
        raise ValueError(f"ring_matmul batch shapes do not broadcast: {tuple(shape_a)} @ {tuple(shape_b)}") from None
    return batch, m, k, n, squeeze_a, squeeze_b
