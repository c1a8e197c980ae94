"""Exact matrix products over Z_2^64 from GEMMs that hardware is fast at: int8 and float64.

Ring elements are split into balanced signed digits, digit matrices are multiplied by an
int8 GEMM (CUDA tensor cores; AMX tiles on the CPU) or a float64 one, and the products are
recombined modulo 2^64. The torch routes serve CUDA tensors (and run on CPU tensors, where CI
checks them bit-exact); matmul_int8_cpu serves numpy arrays on CPUs with AMX, its layouts
built and recombined by Numba kernels.

Digits. With w-bit fields and c = sum_i 2^(w-1) 2^(wi), the fields of (x + c) XOR c, read as
signed w-bit integers (little-endian), are the d_i in [-2^(w-1), 2^(w-1)) with
x = sum_i d_i 2^(wi) mod 2^64: x + c has fields d_i + 2^(w-1) in [0, 2^w), and flipping a
field's top bit subtracts 2^(w-1) from its signed reading.

Products. With D = 64 / w digits, a @ b = sum_s 2^(ws) C_s mod 2^64 where
C_s = sum_{i+j=s} A_i B_j and only s < D matters (2^(ws) = 0 mod 2^64 beyond). A is kept as
[A_0 | A_1 | ... | A_{D-1}] along K and b's digits in reverse order, so C_s is ONE GEMM over
a stacked inner dimension of length (s+1)K: a prefix of A's digit rows against a suffix of
b's, both views (no copies; b's digits are stored transposed, so the GEMM's second operand
is column-major). Products with i + j >= D are never formed: D(D+1)/2 digit products in D
GEMMs. Digit products have magnitude <= 2^(2w-2), so a GEMM over L stacked terms sums to at
most L * 2^(2w-2) in magnitude; the stacked dimension is cut into pieces that keep it exact.

- int8 route (w = 8, 36 digit products in 8 GEMMs, torch._int_mm, int32 accumulation):
  exact while L * 2^14 <= 2^31 - 1, i.e. L <= 2^17 - 1 = 131071 terms per GEMM. So a single
  GEMM per shift needs 8K <= 131071 (K <= 16383); larger K only splits the last shifts'
  stacked dimension (pieces of 131040 terms), never wasting digit products.
- float64 route (w = 16, 10 limb products in 4 GEMMs): every partial sum is an integer of
  magnitude <= L * 2^30, exact in float64 while L * 2^30 <= 2^53, i.e. L <= 2^23 terms per
  GEMM (one GEMM per shift while K <= 2^21).

On the CPU (matmul_int8_cpu), b's digits are kept as row-major planes in reverse order,
[B_{D-1}; ...; B_0] along K, so C_s is A's prefix against a suffix of rows: no transpose, and
the planes are one pass over b. K is cut into chunks of at most 16383, each a full 8-GEMM
product, accumulated modulo 2^64 as the int32 C_s are recombined.
"""
import functools

import numba
import numpy as np
import torch

from .shapes import matmul_shapes

_DIGIT_DTYPES = {8: torch.int8, 16: torch.int16}
_INT8_TERMS = (1 << 17) - 1  # int8 digit products an int32 accumulator holds exactly
_F64_TERMS = 1 << 23         # 16-bit limb products a float64 sum holds exactly
_INT8_ALIGN = 32             # _int_mm on CUDA: rows > 16, K and n multiples of 8 (32: aligned views)
_LOOP_MIN_OPS = 1 << 30      # batched: per-item m*k*n above which looping int8 GEMMs beats float64
ROUTES = ("auto", "int8", "f64")


def balanced_digits(x: torch.Tensor, width: int = 8) -> torch.Tensor:
    """[..., 64/width] int8 (width 8) or int16 (width 16) balanced digits of ring elements x.

    x = sum_i d_i 2^(width*i) mod 2^64 with d_i in [-2^(width-1), 2^(width-1)); see the
    module docstring.
    """
    fields = 64 // width
    bias = sum(1 << (width - 1 + width * i) for i in range(fields)) - (1 << 64)
    y = torch.add(x.reshape(-1), bias).bitwise_xor_(bias)
    return y.view(_DIGIT_DTYPES[width]).view(*x.shape, fields)


@functools.cache
def int8_available(device: torch.device) -> bool:
    """Whether torch._int_mm runs, and accumulates exactly in int32, on `device` (probed once):
    the extreme digit products, where a kernel that pairs products in saturating int16 (as
    int8 GEMMs without VNNI or AMX may) would clip."""
    try:
        for u, v in ((-128, -128), (127, 127), (-128, 127), (127, -128)):
            x = torch.full((32, 64), u, dtype=torch.int8, device=device)
            y = torch.full((64, 32), v, dtype=torch.int8, device=device)
            if not bool((torch._int_mm(x, y) == 64 * u * v).all()):
                return False
        return True
    except RuntimeError:
        return False


@functools.cache
def amx_int8() -> bool:
    """Whether this CPU runs int8 GEMMs in AMX tiles (torch.cpu.get_capabilities) and
    torch._int_mm is exact on it: where matmul_int8_cpu beats the int64 GEMM."""
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(capabilities.get("amx_int8")) and int8_available(torch.device("cpu"))


_BIAS8 = np.int64(sum(1 << (7 + 8 * i) for i in range(8)) - (1 << 64))   # c for w = 8
_CPU_CHUNK = _INT8_TERMS // 8   # 16383: the largest K with one int8 GEMM per shift


def matmul_int8_cpu(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a @ b mod 2^64 for 2-D numpy int64 arrays, on the CPU's int8 GEMM (torch._int_mm),
    written to `out` (m x n int64) where given.

    36 digit products in 8 GEMMs per chunk of at most 16383 along K (module docstring); bit-
    exact wherever int8_available(cpu). Runs on torch's intra-op threads.
    """
    (m, k), n = a.shape, b.shape[1]
    out = np.empty((m, n), np.int64) if out is None else out
    if not k:
        out[...] = 0
    if not (k and out.size):
        return out
    products = torch.empty((8, m, n), dtype=torch.int32)
    for start in range(0, k, _CPU_CHUNK):
        stop = min(k, start + _CPU_CHUNK)
        width = stop - start
        digits_a = np.empty((m, 8, width), np.int8)
        digits_b = np.empty((8, width, n), np.int8)
        _digit_rows(a[:, start:stop], digits_a)
        _reversed_digit_planes(b[start:stop], digits_b)
        rows = torch.from_numpy(digits_a).view(m, 8 * width)
        planes = torch.from_numpy(digits_b).view(8 * width, n)
        for s in range(8):
            torch._int_mm(rows[:, :(s + 1) * width], planes[(7 - s) * width:], out=products[s])
        _add_digit_products(products.numpy(), out, start > 0)
    return out


@numba.njit(nogil=True, inline="always")
def _digit(value, j):
    """Balanced 8-bit digit j of a ring element (module docstring: the int8 cast keeps its field)."""
    return np.int8(((value + _BIAS8) ^ _BIAS8) >> (8 * j))


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _digit_rows(x, out):
    """out[i, j, p] = digit j of x[i, p]: rows [A_0 | ... | A_7]."""
    for i in range(x.shape[0]):
        for j in range(8):
            for p in range(x.shape[1]):
                out[i, j, p] = _digit(x[i, p], j)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _reversed_digit_planes(x, out):
    """out[7 - j, p, q] = digit j of x[p, q]: planes [B_7; ...; B_0]."""
    for p in range(x.shape[0]):
        for j in range(8):
            for q in range(x.shape[1]):
                out[7 - j, p, q] = _digit(x[p, q], j)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _add_digit_products(products, out, accumulate):
    """out (+)= sum_s 2^(8s) products[s] mod 2^64 (Horner; int64 arithmetic wraps)."""
    shifts, m, n = products.shape
    for i in range(m):
        for q in range(n):
            total = np.int64(products[shifts - 1, i, q])
            for s in range(shifts - 2, -1, -1):
                total = (total << 8) + products[s, i, q]
            out[i, q] = out[i, q] + total if accumulate else total


def matmul_int8_digits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b mod 2^64 from balanced 8-bit digits on int8 GEMMs (torch._int_mm, any device).

    36 digit products in 8 GEMMs (more pieces when K > 16383). Operands are zero-padded to
    rows, K and n multiples of 32 (exact); the second GEMM operand is passed column-major.
    Batched second operands loop over the batch (a 2-D b is folded into rows).
    """
    return _matmul(a, b, _int8_product, batched=False)


def matmul_f64_limbs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b mod 2^64 from balanced 16-bit limbs on float64 GEMMs (batched natively).

    10 limb products in 4 GEMMs; exact for any K (pieces of <= 2^23 stacked terms).
    """
    return _matmul(a, b, _f64_product, batched=True)


def ring_matmul_cuda(a: torch.Tensor, b: torch.Tensor, route: str = "auto") -> torch.Tensor:
    """a @ b mod 2^64 for int64 tensors on one (CUDA) device, torch.matmul's shape rules.

    route "auto": int8 digits where torch._int_mm works on the device, unless both operands
    carry batch dimensions and each product is small (m*k*n < 2^30), where one batched
    float64-limb product beats a loop of int8 GEMMs; float64 limbs otherwise.
    """
    if route == "auto":
        looped = a.ndim > 2 and b.ndim > 2 and a.shape[-2] * a.shape[-1] * b.shape[-1] < _LOOP_MIN_OPS
        route = "int8" if int8_available(a.device) and not looped else "f64"
    if route == "int8":
        return matmul_int8_digits(a, b)
    if route == "f64":
        return matmul_f64_limbs(a, b)
    raise ValueError(f"unknown ring_matmul route {route!r} for {a.device.type} tensors: use {ROUTES}")


def _matmul(a, b, product, batched: bool):
    """torch.matmul's shape rules around product(a [..., m, k], b [..., k, n])."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        raise TypeError("ring_matmul takes two torch int64 tensors")
    if a.dtype != torch.int64 or b.dtype != torch.int64:
        raise TypeError(f"ring_matmul needs int64 tensors, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"ring_matmul operands are on different devices: {a.device} and {b.device}")
    batch, m, k, n, squeeze_a, squeeze_b = matmul_shapes(a.shape, b.shape)
    a = a[None, :] if squeeze_a else a
    b = b[:, None] if squeeze_b else b
    if a.numel() == 0 or b.numel() == 0:
        out = a.new_zeros(batch + (m, n))
    elif b.ndim == 2:  # fold a's batch into rows
        out = product(a.reshape(-1, k), b).reshape(batch + (m, n))
    elif batched:
        out = product(a, b)
    else:
        a3 = a.expand(batch + (m, k)).reshape(-1, m, k)
        b3 = b.expand(batch + (k, n)).reshape(-1, k, n)
        out = torch.stack([product(x, y) for x, y in zip(a3, b3)]).reshape(batch + (m, n))
    if squeeze_a:
        out = out[..., 0, :]
    if squeeze_b:
        out = out[..., 0]
    return out


def _int8_product(a, b):
    return _digit_product(a, b, 8, torch.int8, torch._int_mm, _INT8_TERMS, _INT8_ALIGN)


def _f64_product(a, b):
    return _digit_product(a, b, 16, torch.float64, _f64_gemm, _F64_TERMS, 1)


def _f64_gemm(x, y):
    return torch.matmul(x, y).to(torch.int64)


def _round_up(v: int, align: int) -> int:
    return -(-v // align) * align


def _digit_product(a, b, width: int, dtype, gemm, max_terms: int, align: int):
    """sum_s 2^(width*s) C_s mod 2^64 (module docstring) for a [..., m, k] @ b [..., k, n].

    gemm(x [..., m, L], y [..., L, n]) returns an int32/int64 tensor; each call sums at most
    max_terms stacked digit products. Sizes are zero-padded to multiples of `align`.
    """
    fields = 64 // width
    (m, k), n = a.shape[-2:], b.shape[-1]
    mp, kp, np_ = (_round_up(v, align) for v in (m, k, n))
    # A = [A_0 | ... | A_{D-1}] per row; Bt = [B_{D-1}^T | ... | B_0^T] per column of b
    alloc = a.new_empty if (mp, kp, np_) == (m, k, n) else a.new_zeros  # zero padding is exact
    digits_a = alloc(a.shape[:-2] + (mp, fields, kp), dtype=dtype)
    digits_a[..., :m, :, :k] = balanced_digits(a, width).transpose(-1, -2)
    digits_bt = alloc(b.shape[:-2] + (np_, fields, kp), dtype=dtype)
    digits_bt[..., :n, :, :k] = balanced_digits(b, width).flip(-1).movedim(-3, -1)
    digits_a = digits_a.flatten(-2)
    digits_bt = digits_bt.flatten(-2)
    step = max_terms // align * align
    out = None
    for s in reversed(range(fields)):  # Horner: out = out * 2^width + C_s
        length, offset = (s + 1) * kp, (fields - 1 - s) * kp
        for p in range(0, length, step):
            q = min(p + step, length)
            part = gemm(digits_a[..., p:q], digits_bt[..., offset + p:offset + q].transpose(-1, -2))
            if out is None:
                out = part.to(torch.int64)
            else:
                out = torch.add(part, out, alpha=1 << width if p == 0 else 1)
    return out[..., :m, :n].contiguous()
