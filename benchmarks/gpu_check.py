"""CUDA backend check: every ring op bit-exact against the CPU backend, then ring matmul Tops/s.

    python -m benchmarks.gpu_check [--repeat 5] [--results benchmarks/RESULTS.md]
    python -m benchmarks.gpu_check --device cpu --quick   # dry run of the script on the CPU

Part 1 runs each check on random data (with the extreme values 0, +-1, -2^63, 2^63-1) on the
device and on the CPU backend and compares bit for bit, then runs a BERT block's forward and
backward with the parties' shares on the device (`MPCContext(device=...)`) against the CPU;
a failing or crashing check is reported and the run goes on. The protocol tests themselves
also have CUDA variants: `python -m pytest -q tests -k cuda`. Part 2 times ring matmul through the int8-digit and float64-limb
routes beside the float64 GEMM and int8 GEMM (torch._int_mm) ceilings of the same card, in
the same run. Tops/s counts 2*m*k*n operations per product. Exits 1 if any check failed.
"""
import argparse
import statistics
import time
import traceback

import torch

from benchmarks.timing import markdown_table
from mpcft import kernels as K
from mpcft.kernels import bits, digit_matmul
from mpcft.kernels.fused import trunc_reconstruct, trunc_reconstruct_torch

EXTREMES = [0, 1, -1, 2**63 - 1, -2**63]
MOD = 1 << 64
WORST8 = 0x7F7F7F7F7F7F7F80  # = -0x8080808080808080 mod 2^64: every balanced 8-bit digit is -128

MATMUL_SHAPES = [  # (a shape, b shape): odd, K near the int8 bounds, batched, broadcast, vectors
    ((3, 5), (5, 7)), ((17, 8), (8, 8)), ((100, 300), (300, 50)), ((129, 770), (770, 257)),
    ((1000, 1000), (1000, 1000)), ((64, 2049), (2049, 64)), ((64, 16383), (16383, 64)),
    ((64, 16384), (16384, 64)), ((48, 16385), (16385, 40)), ((8, 12, 128, 64), (8, 12, 64, 128)),
    ((8, 12, 128, 128), (8, 12, 128, 64)), ((4, 128, 768), (768, 768)), ((2, 1, 30, 20), (3, 20, 10)),
    ((768,), (768, 96)), ((5, 40, 33), (33,)),
]
QUICK_SHAPES = MATMUL_SHAPES[:4] + MATMUL_SHAPES[9:]
BENCH_SHAPES = {"4096^3": ((4096, 4096), (4096, 4096)), "8192^3": ((8192, 8192), (8192, 8192)),
                "8x12x128x64 @ 8x12x64x128": ((8, 12, 128, 64), (8, 12, 64, 128))}
QUICK_BENCH = {"512^3": ((512, 512), (512, 512)),
               "8x12x128x64 @ 8x12x64x128": ((8, 12, 128, 64), (8, 12, 64, 128))}


class Checks:
    """Runs named checks, catching failures, and keeps a PASS/FAIL line per check."""

    def __init__(self):
        self.results = []

    def run(self, name, fn, *args):
        start = time.perf_counter()
        try:
            fn(*args)
            status, detail = "PASS", ""
        except Exception as exc:  # report and go on: one broken op must not hide the others
            status, detail = "FAIL", f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            traceback.print_exc()
        line = f"{status}  {name}  ({time.perf_counter() - start:.2f} s){'  ' + detail if detail else ''}"
        print(line, flush=True)
        self.results.append((status, line))

    @property
    def failed(self):
        return [line for status, line in self.results if status != "PASS"]


def ring(shape, seed: int, extremes: bool = True) -> torch.Tensor:
    """Uniform ring elements (CPU), the first few replaced by the extreme values."""
    x = K.PRG(seed.to_bytes(4, "little") * 8).ring(shape)
    flat = x.view(-1)
    if extremes:
        count = min(len(EXTREMES), flat.numel())
        flat[:count] = torch.tensor(EXTREMES[:count])
    return x


def same(device_out, cpu_out, what=""):
    if not isinstance(device_out, torch.Tensor) or device_out.device != DEVICE:
        raise AssertionError(f"{what}: result not a tensor on {DEVICE}")
    if device_out.dtype != cpu_out.dtype or device_out.shape != cpu_out.shape:
        raise AssertionError(f"{what}: {device_out.dtype}{tuple(device_out.shape)} vs CPU "
                             f"{cpu_out.dtype}{tuple(cpu_out.shape)}")
    diff = (device_out.cpu() != cpu_out).sum().item()
    if diff:
        raise AssertionError(f"{what}: {diff} of {cpu_out.numel()} entries differ from the CPU backend")


def signed(v: int) -> int:
    v %= MOD
    return v - MOD if v >= 1 << 63 else v


def check_wraparound():
    """add/sub/mul/neg/lshift on all pairs of extreme and random values against Python ints."""
    values = EXTREMES + [3, -5, 2**62, 2**32 + 7] + ring((8,), 1, False).tolist()
    xs = [x for x in values for _ in values]
    ys = [y for _ in values for y in values]
    x, y = torch.tensor(xs, device=DEVICE), torch.tensor(ys, device=DEVICE)
    for name, fn, ref in [("add", K.add, lambda p, q: p + q), ("sub", K.sub, lambda p, q: p - q),
                          ("mul", K.mul, lambda p, q: p * q)]:
        got = fn(x, y).tolist()
        want = [signed(ref(p, q)) for p, q in zip(xs, ys)]
        if got != want:
            raise AssertionError(f"{name} does not wrap modulo 2^64")
    if K.neg(x).tolist() != [signed(-p) for p in xs]:
        raise AssertionError("neg does not wrap modulo 2^64")
    for s in (1, 31, 63):
        if K.lshift(x, s).tolist() != [signed(p << s) for p in xs]:
            raise AssertionError(f"lshift by {s} does not wrap modulo 2^64")


def check_elementwise():
    x, y = ring((1000, 7), 2), ring((1000, 7), 3)
    y.view(-1)[:len(EXTREMES)] = torch.tensor(EXTREMES[::-1])
    xd, yd = x.to(DEVICE), y.to(DEVICE)
    for op in (K.add, K.sub, K.mul):
        same(op(xd, yd), op(x, y), op.__name__)
        same(op(xd, 2**64 - 3), op(x, 2**64 - 3), f"{op.__name__} with a public int")
        same(op(xd[:, :1], yd[:1]), op(x[:, :1], y[:1]), f"{op.__name__} broadcast")
    same(K.neg(xd), K.neg(x), "neg")
    same(K.msb(xd), K.msb(x), "msb")
    for s in range(64):
        for op in (K.lshift, K.rshift_arith, K.rshift_logical, K.bit, K.low_bits):
            same(op(xd, s), op(x, s), f"{op.__name__}({s})")


def check_trunc_reconstruct():
    c, r_top, r_mid = ring((4096,), 4), ring((4096,), 5), ring((4096,), 6)
    for bits_ in (1, 13, 20, 40, 61):
        for first in (False, True):
            want = trunc_reconstruct(c, r_top, r_mid, bits_, first)  # the CPU (Numba) kernel
            args = (c.to(DEVICE), r_top.to(DEVICE), r_mid.to(DEVICE), bits_, first)
            same(trunc_reconstruct(*args), want, f"trunc_reconstruct({bits_}, {first})")
            same(trunc_reconstruct_torch(*args), want, f"trunc_reconstruct_torch({bits_}, {first})")


def check_bits_and_encoding():
    prg_bits = K.PRG(bytes(32)).bits((3, 1000))
    words = bits.pack_bits(prg_bits)
    same(bits.pack_bits(prg_bits.to(DEVICE)), words, "pack_bits")
    same(bits.unpack_bits(words.to(DEVICE), 3000), bits.unpack_bits(words, 3000), "unpack_bits")
    values = ring((2000,), 7)
    planes = bits.digit_planes(values, 4, 16)
    same(bits.digit_planes(values.to(DEVICE), 4, 16), planes, "digit_planes")
    for got, want in zip(bits.compare_leaves(values.to(DEVICE), planes.to(DEVICE), 4),
                         bits.compare_leaves(values, planes, 4)):
        same(got, want, "compare_leaves")
    fp = K.FixedPoint()
    real = torch.linspace(-1000, 1000, 10001, dtype=torch.float64)
    same(fp.encode(real, device=DEVICE), fp.encode(real), "FixedPoint.encode")
    same(fp.decode(values.to(DEVICE)), fp.decode(values), "FixedPoint.decode")
    same(K.PRG(bytes(32)).ring((100, 3), device=DEVICE), K.PRG(bytes(32)).ring((100, 3)), "PRG.ring")


def check_matmul(shape_a, shape_b, seed):
    a, b = ring(shape_a, seed), ring(shape_b, seed + 1)
    want = K.ring_matmul(a, b)
    ad, bd = a.to(DEVICE), b.to(DEVICE)
    same(K.ring_matmul(ad, bd), want, "ring_matmul (auto)")
    same(digit_matmul.matmul_f64_limbs(ad, bd), want, "f64 limbs")
    if INT8:
        same(digit_matmul.matmul_int8_digits(ad, bd), want, "int8 digits")


def check_int8_worst_case(k):
    """All digits -128: exact only if the int32 accumulations are split at the stated bound."""
    a = torch.full((40, k), WORST8, dtype=torch.int64, device=DEVICE)
    b = torch.full((k, 24), WORST8, dtype=torch.int64, device=DEVICE)
    want = torch.full((40, 24), signed(WORST8 * WORST8 * k), dtype=torch.int64)
    same(digit_matmul.matmul_int8_digits(a, b), want, f"worst-case digits, K={k}")


def check_large_product(shape_a, shape_b, seed):
    """A benchmarked product: int8 vs f64 routes in full, row and column slices vs the CPU."""
    a, b = ring(shape_a, seed), ring(shape_b, seed + 1)
    ad, bd = a.to(DEVICE), b.to(DEVICE)
    f64 = digit_matmul.matmul_f64_limbs(ad, bd)
    if INT8:
        diff = (digit_matmul.matmul_int8_digits(ad, bd) != f64).sum().item()
        if diff:
            raise AssertionError(f"int8 and f64 routes differ in {diff} entries")
    same(f64[..., :64, :], K.ring_matmul(a[..., :64, :], b), "first 64 rows")
    same(f64[..., :, -64:].contiguous(), K.ring_matmul(a, b[..., :, -64:].contiguous()), "last 64 columns")


def seconds(fn, repeat: int) -> float:
    """Median wall time of fn() on the device, after two warm-up calls."""
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rate(fn, ops: int, repeat: int) -> str:
    try:
        return f"{ops / seconds(fn, repeat) / 1e12:.2f}"
    except Exception as exc:
        print(f"timing failed: {type(exc).__name__}: {exc}".splitlines()[0], flush=True)
        return "error"


def bench_table(shapes, repeat: int) -> str:
    rows = []
    for name, (shape_a, shape_b) in shapes.items():
        a, b = ring(shape_a, 100, False).to(DEVICE), ring(shape_b, 101, False).to(DEVICE)
        ops = 2 * a.numel() * shape_b[-1]
        batched = len(shape_a) > 2
        int8_ring = rate(lambda: digit_matmul.matmul_int8_digits(a, b), ops, repeat) if INT8 else "n/a"
        f64_ring = rate(lambda: digit_matmul.matmul_f64_limbs(a, b), ops, repeat)
        auto = rate(lambda: K.ring_matmul(a, b), ops, repeat)
        af, bf = a.double(), b.double()
        f64_gemm = rate(lambda: torch.matmul(af, bf), ops, repeat)
        af = bf = None                      # free the device memory before the next product
        col = row = ceiling = "n/a"
        if INT8 and not batched:
            a8 = (a & 127).to(torch.int8)
            b8 = (b & 127).to(torch.int8)
            b8_col = b8.t().contiguous().t()
            col = rate(lambda: torch._int_mm(a8, b8_col), ops, repeat)
            row = rate(lambda: torch._int_mm(a8, b8), ops, repeat)
            ceiling = f"{float(col) / 36:.2f}" if col != "error" else "error"
            a8 = b8 = b8_col = None
        rows.append([name, int8_ring, f64_ring, auto, f64_gemm, col, row, ceiling])
        a = b = None
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
    header = ["shape", "ring int8 digits", "ring f64 limbs", "ring_matmul auto", "float64 GEMM",
              "int8 GEMM (B col-major)", "int8 GEMM (B row-major)", "int8 GEMM / 36"]
    return markdown_table(header, rows)


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _block_party(session, model, device, hidden):
    """One BERT block forward + backward with shares on `device` (in-memory transport, dealer
    in a thread): (seconds of the second run, revealed output)."""
    from mpcft.nn import train_module
    from mpcft.nn.bert import BertLayer
    from mpcft.protocols.context import MPCContext
    from mpcft.tensor import SharedTensor
    ctx = MPCContext(session, device=device)
    layer = BertLayer(ctx, model.encoder.layer[0], 4)
    train_module(layer)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 64, hidden, generator=gen, dtype=torch.float64)
    g = torch.randn(4, 64, hidden, generator=gen, dtype=torch.float64) * 0.01
    share = lambda v, bits=False: SharedTensor.from_plain(ctx, v if ctx.rank == 0 else None, 0, tuple(v.shape),
                                                          frac_bits=0 if bits else None)
    xs, gs, ms = share(x).requires_grad_(), share(g), share(torch.ones(4, 64), True)
    for _ in range(2):
        start = time.perf_counter()
        out = layer(xs, ms[:, None, None, :])
        out.backward(gs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
    return elapsed, out.reveal().cpu()


PROTOCOL_TIMES = {}


def check_protocols_block(hidden: int):
    """Shares on the device through a whole block (Beaver products, truncation, comparisons,
    softmax, GELU, LayerNorm; forward and backward): the output agrees with the CPU run
    within fixed-point error (different random masks, so not bit for bit)."""
    from transformers import BertConfig, BertModel
    from mpcft.protocols.correlations import CorrelationDealer
    from mpcft.runtime import run_threads
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=hidden, num_attention_heads=4, intermediate_size=4 * hidden,
                                 num_hidden_layers=1, attn_implementation="eager")).double().eval()
    outs = {}
    for name, device in (("device", DEVICE), ("cpu", torch.device("cpu"))):
        elapsed, outs[name] = run_threads(_block_party, 2, model, device, hidden,
                                          dealer_handler=CorrelationDealer, timeout=1200)[0]
        PROTOCOL_TIMES[name] = elapsed
    error = (outs["device"] - outs["cpu"]).abs().max().item()
    if not error < 1e-3:
        raise AssertionError(f"block output on {DEVICE} differs from the CPU run by {error:.2e}")


def main():
    global DEVICE, INT8
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device to check (default cuda)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per entry (median)")
    parser.add_argument("--quick", action="store_true", help="small shapes only (dry run)")
    parser.add_argument("--results", help="append the device name and table to this markdown file")
    args = parser.parse_args()
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible to torch "
                         f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); nothing to check")
    if DEVICE.type == "cuda":
        DEVICE = torch.device("cuda", torch.cuda.current_device())
        props = torch.cuda.get_device_properties(DEVICE)
        card = f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
    else:
        card = f"{args.device} (dry run)"
    started = time.perf_counter()
    INT8 = digit_matmul.int8_available(DEVICE)
    print(f"device: {card}; torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"int8 route (torch._int_mm): {'available' if INT8 else 'NOT available'}\n", flush=True)

    checks = Checks()
    checks.run("wrap-around of add/sub/mul/neg/lshift vs Python ints", check_wraparound)
    checks.run("ring.py elementwise ops vs CPU (all shifts 0..63)", check_elementwise)
    checks.run("fused trunc_reconstruct (+ _torch) vs CPU Numba kernel", check_trunc_reconstruct)
    checks.run("bits.py, FixedPoint, PRG on the device vs CPU", check_bits_and_encoding)
    for i, (shape_a, shape_b) in enumerate(QUICK_SHAPES if args.quick else MATMUL_SHAPES):
        checks.run(f"ring_matmul {shape_a} @ {shape_b} (auto, f64, int8) vs CPU", check_matmul,
                   shape_a, shape_b, 10 + 2 * i)
    if INT8:
        for k in ((64, 16384) if args.quick else (16383, 16384, 32768)):
            checks.run(f"int8 route, worst-case digits, K={k}", check_int8_worst_case, k)
    for name, (shape_a, shape_b) in (QUICK_BENCH if args.quick else BENCH_SHAPES).items():
        checks.run(f"benchmark product {name}: int8 == f64, slices vs CPU", check_large_product,
                   shape_a, shape_b, 50)

    hidden = 64 if args.quick else 256
    checks.run(f"protocols with shares on the device: BERT block (hidden {hidden}) fwd+bwd, "
               f"2 parties in threads, vs CPU", check_protocols_block, hidden)
    if PROTOCOL_TIMES:
        print(f"  block fwd+bwd, 2 parties in one process: {PROTOCOL_TIMES['device']:.2f} s with shares on "
              f"{DEVICE}, {PROTOCOL_TIMES['cpu']:.2f} s on the CPU", flush=True)

    print(f"\nRing matmul on {card}, Tops/s (2*m*k*n per product, median of {args.repeat}); "
          "GEMM columns are the same shapes' ceilings (float64: Tflop/s)\n", flush=True)
    table = bench_table(QUICK_BENCH if args.quick else BENCH_SHAPES, args.repeat)
    print(table)
    print(f"\n{len(checks.results) - len(checks.failed)} of {len(checks.results)} checks passed "
          f"in {time.perf_counter() - started:.0f} s")
    for line in checks.failed:
        print(line)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as out:
            out.write(f"\n## Ring matmul on {card}\n\ntorch {torch.__version__}, CUDA {torch.version.cuda}; "
                      f"{len(checks.results) - len(checks.failed)}/{len(checks.results)} bit-exact checks "
                      f"passed (python -m benchmarks.gpu_check). Tops/s, median of {args.repeat}.\n\n"
                      f"{table}\n")
    raise SystemExit(1 if checks.failed else 0)


DEVICE = torch.device("cpu")
INT8 = False

if __name__ == "__main__":
    main()
