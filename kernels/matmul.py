"""Exact matrix products over Z_2^64 on the CPU.

ring_matmul(a, b) = a @ b mod 2^64 with torch.matmul's shape rules ([..., m, k] @ [..., k, n]
with broadcast batch dimensions). Three exact routes, chosen by shape and CPU:
- "rows": a Numba kernel, parallel over (batch, 4-row block) tasks, whose inner loop is a
  vectorised 64-bit multiply-add over a row of b; best while a k x n operand stays in L2
  and, on one thread, b is narrow (n < 64: 5.5-7 against 4-4.5 G multiply-adds/s).
- "tiles": torch's int64 GEMM kernel (fbgemm, single-threaded in torch) on row tiles spread
  over a thread pool; best for large 2-D products, and on one thread from n = 64 on (8-10
  against 5.5-6.5 G multiply-adds/s on the per-head attention products).
- "int8": 8-bit digits on the int8 GEMM (digit_matmul.matmul_int8_cpu), where the CPU has AMX
  tiles: 36 int8 digit products in 8 GEMMs beat one int64 product from K = 256, 128 rows and
  256 columns on (one thread, medians of interleaved runs: 0.57 of "tiles"' time at 1024^3,
  0.66 at 256x1024x256, 0.71 at 512x384x384, 0.82-0.88 at 256x256x(256-1024) and 128x768x768,
  1.02 at 1024x256x256; 1.06-1.23 with K = 128, 64 rows or 64 columns).
All wrap modulo 2^64 (two's complement int64 arithmetic), so results are bit-exact.
CUDA tensors (both on one device) go to digit_matmul.ring_matmul_cuda.
"""
import numba
import numpy as np
import torch

from .digit_matmul import amx_int8, int8_available, matmul_int8_cpu, ring_matmul_cuda
from .shapes import matmul_shapes
from .threads import num_threads, run_parallel

_ROWS_MAX_KN = 1 << 17  # k*n*8 bytes = 1 MiB: b of a "rows" task stays in L2
_ROWS_MIN_N = 64        # on one thread, "tiles" from this width of b on
_SMALL_OPS = 1 << 15    # below this many multiply-adds, threads cost more than they save
_INT8_MIN_K = 256        # "int8" (where the CPU has AMX) from this inner length,
_INT8_MIN_M = 128        # ... this many rows
_INT8_MIN_N = 256        # ... and this many columns on


@numba.njit(parallel=True, nogil=True, cache=True, boundscheck=False)
def _bmm_rows(a, b, c):
    """c[t] = a[t] @ b[t] mod 2^64 for 3-D int64 arrays; c must be zero on entry."""
    batch, m, k = a.shape
    n = b.shape[2]
    blocks = (m + 3) // 4
    for task in numba.prange(batch * blocks):
        t = task // blocks
        i = (task % blocks) * 4
        if i + 4 <= m:
            c0, c1, c2, c3 = c[t, i], c[t, i + 1], c[t, i + 2], c[t, i + 3]
            for p in range(k):
                bp = b[t, p]
                a0, a1, a2, a3 = a[t, i, p], a[t, i + 1, p], a[t, i + 2, p], a[t, i + 3, p]
                for j in range(n):
                    bj = bp[j]
                    c0[j] += a0 * bj
                    c1[j] += a1 * bj
                    c2[j] += a2 * bj
                    c3[j] += a3 * bj
        else:
            for r in range(i, m):
                cr = c[t, r]
                for p in range(k):
                    ar = a[t, r, p]
                    bp = b[t, p]
                    for j in range(n):
                        cr[j] += ar * bp[j]


def ring_matmul(a, b, *, threads: int | None = None, route: str = "auto"):
    """a @ b mod 2^64 for numpy int64 arrays or torch int64 tensors (same kind out).

    threads: worker threads (default torch.get_num_threads(); the int8 route runs on torch's);
    route: "auto", "rows", "tiles", "int8" on the CPU; "auto", "int8", "f64" for CUDA tensors
    (see digit_matmul; threads unused).
    """
    as_torch = _check_operands(a, b)
    if as_torch and a.device.type == "cuda":
        return ring_matmul_cuda(a, b, route=route)
    an = a.numpy() if as_torch else a
    bn = b.numpy() if as_torch else b
    out = _matmul_numpy(an, bn, num_threads(threads), route)
    return torch.from_numpy(out) if as_torch else out


def _check_operands(a, b) -> bool:
    kinds = {type(x) for x in (a, b)}
    if kinds == {torch.Tensor}:
        if a.dtype != torch.int64 or b.dtype != torch.int64:
            raise TypeError(f"ring_matmul needs int64 tensors, got {a.dtype} and {b.dtype}")
        if a.device != b.device:
            raise ValueError(f"ring_matmul operands are on different devices: {a.device} and {b.device}")
        if a.device.type not in ("cpu", "cuda"):
            raise NotImplementedError(f"ring_matmul has no backend for {a.device.type} tensors")
        return True
    if kinds == {np.ndarray}:
        if a.dtype != np.int64 or b.dtype != np.int64:
            raise TypeError(f"ring_matmul needs int64 arrays, got {a.dtype} and {b.dtype}")
        return False
    raise TypeError("ring_matmul takes two numpy int64 arrays or two torch int64 tensors")


def _matmul_numpy(a: np.ndarray, b: np.ndarray, threads: int, route: str) -> np.ndarray:
    batch, m, k, n, squeeze_a, squeeze_b = matmul_shapes(a.shape, b.shape)
    a = a[None, :] if squeeze_a else a
    b = b[:, None] if squeeze_b else b
    if b.ndim == 2:  # a public/shared 2-D right operand: fold a's batch into its rows
        out = _matmul3(np.ascontiguousarray(a).reshape(1, -1, k), b[None], threads, route)
    else:
        out = _matmul3(_batched(a, batch), _batched(b, batch), threads, route)
    out = out.reshape(batch + (m, n))
    if squeeze_a:
        out = out[..., 0, :]
    if squeeze_b:
        out = out[..., 0]
    return out


def _batched(x: np.ndarray, batch: tuple) -> np.ndarray:
    """x broadcast to batch + x.shape[-2:], as a contiguous writable 3-D array."""
    if x.shape[:-2] != batch:
        x = np.broadcast_to(x, batch + x.shape[-2:]).copy()
    return np.ascontiguousarray(x).reshape(-1, *x.shape[-2:])


def _matmul3(a: np.ndarray, b: np.ndarray, threads: int, route: str) -> np.ndarray:
    batch, m, k = a.shape
    n = b.shape[2]
    b = np.ascontiguousarray(b)
    if route == "auto":
        route = ("int8" if k >= _INT8_MIN_K and m >= _INT8_MIN_M and n >= _INT8_MIN_N
                 and threads == torch.get_num_threads() and amx_int8() else
                 "rows" if k * n <= _ROWS_MAX_KN and (n < _ROWS_MIN_N or threads > 1) else "tiles")
    if route == "int8":
        if not int8_available(torch.device("cpu")):
            raise ValueError("ring_matmul route 'int8' needs torch._int_mm to be exact on this CPU")
        out = np.empty((batch, m, n), dtype=np.int64)
        for x, y, z in zip(a, b, out):
            matmul_int8_cpu(x, y, out=z)
        return out
    if route == "rows":
        out = np.zeros((batch, m, n), dtype=np.int64)
        if out.size and k:
            # Numba's thread count is per calling thread; changing it back and forth around
            # every call rebuilds the OpenMP team (measured: 15 ms instead of 0.5 ms), so it
            # is only set when it differs.
            wanted = min(threads, numba.config.NUMBA_NUM_THREADS)
            if numba.get_num_threads() != wanted:
                numba.set_num_threads(wanted)
            _bmm_rows(a, b, out)
        return out
    if route != "tiles":
        raise ValueError(f"unknown ring_matmul route {route!r}: use 'auto', 'rows', 'tiles' or 'int8'")
    return _tiles(a, b, threads)


def _tiles(a: np.ndarray, b: np.ndarray, threads: int) -> np.ndarray:
    batch, m, k = a.shape
    n = b.shape[2]
    out = torch.empty((batch, m, n), dtype=torch.int64)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    if threads <= 1 or batch * m * k * n < _SMALL_OPS:
        if batch == 1:  # torch's 2-D kernel beats its batched one for a single product
            torch.mm(ta[0], tb[0], out=out[0])
        else:
            torch.matmul(ta, tb, out=out)
        return out.numpy()
    if batch >= threads:  # whole batch entries per task
        bounds = np.linspace(0, batch, threads + 1).astype(int)
        tasks = [(slice(lo, hi), slice(None)) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
    else:  # row blocks of each batch entry
        bounds = np.linspace(0, m, threads + 1).astype(int)
        tasks = [(slice(t, t + 1), slice(lo, hi)) for t in range(batch)
                 for lo, hi in zip(bounds, bounds[1:]) if hi > lo]

    def run(task):
        rows_b, rows_m = task
        if rows_b.stop - rows_b.start == 1:
            t = rows_b.start
            torch.mm(ta[t, rows_m], tb[t], out=out[t, rows_m])
        else:
            torch.matmul(ta[rows_b, rows_m], tb[rows_b], out=out[rows_b, rows_m])

    run_parallel(run, tasks, threads)
    return out.numpy()
