"""Python-int references for ring arithmetic (exact, slow)."""
import numpy as np

MOD = 1 << 64


def signed(v: int) -> int:
    v %= MOD
    return v - MOD if v >= 1 << 63 else v


def as_ints(x) -> np.ndarray:
    """An object array of Python ints holding the values of an int64 array/tensor."""
    return np.asarray(x).astype(object)


def to_int64(obj: np.ndarray) -> np.ndarray:
    return np.vectorize(signed, otypes=[np.int64])(obj) if obj.size else obj.astype(np.int64)
