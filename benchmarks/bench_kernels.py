"""Ring kernels beside torch on the same shapes, in one run: ring matmul Gop/s, PRG MB/s.

    python -m benchmarks.bench_kernels [--repeat 7]

Gop/s counts 2*m*k*n operations per product (a multiply and an add), as GFLOP/s does.
"mpcft ring" is ring_matmul's automatic route; on one thread also its "tiles" (torch's int64
GEMM) and "int8" (8-bit digits on torch._int_mm: AMX tiles where the CPU has them; n/a where
that GEMM is inexact) routes. "torch int64" is torch.matmul on int64 (CrypTen's CPU path);
"float64 BLAS" is torch.matmul on float64, the ceiling of float64-limb routes (which need >= 6
such products).
"""
import argparse
import os

import numpy as np
import torch

from benchmarks.timing import markdown_table, median_seconds
from mpcft.kernels import PRG, fresh_seed, ring_matmul
from mpcft.kernels.digit_matmul import int8_available

SHAPES = {
    "128x768 @ 768x768": ((128, 768), (768, 768)),
    "256x256 @ 256x1024": ((256, 256), (256, 1024)),
    "512x384 @ 384x1536": ((512, 384), (384, 1536)),
    "1024x1024 @ 1024x1024": ((1024, 1024), (1024, 1024)),
    "8x12x128x64 @ 8x12x64x128": ((8, 12, 128, 64), (8, 12, 64, 128)),
}


def matmul_table(repeat: int) -> str:
    cores = os.cpu_count()
    int8 = int8_available(torch.device("cpu"))
    rows = []
    for name, (sa, sb) in SHAPES.items():
        prg = PRG(fresh_seed())
        a, b = prg.ring(sa), prg.ring(sb)
        af, bf = a.double(), b.double()
        ops = 2 * np.prod(sa) * sb[-1]
        rate = lambda fn: f"{ops / median_seconds(fn, repeat) / 1e9:.1f}"
        row = [name]
        for threads in (1, cores):
            torch.set_num_threads(threads)
            row += [rate(lambda: ring_matmul(a, b, threads=threads))]
            if threads == 1:
                row += [rate(lambda: ring_matmul(a, b, threads=1, route="tiles")),
                        rate(lambda: ring_matmul(a, b, threads=1, route="int8")) if int8 else "n/a"]
            row += [rate(lambda: a @ b), rate(lambda: af @ bf)]
        rows.append(row)
    header = ["shape", "mpcft ring (1 thr)", "tiles (1 thr)", "int8 (1 thr)", "torch int64 (1 thr)",
              "float64 BLAS (1 thr)"] + [f"{what} ({cores} thr)" for what in ("mpcft ring", "torch int64",
                                                                               "float64 BLAS")]
    return markdown_table(header, rows)


def prg_table(repeat: int) -> str:
    rows = []
    buf = np.empty(64 << 20, np.uint8)
    for threads in (1, os.cpu_count()):
        prg = PRG(fresh_seed(), threads=threads)
        seconds = median_seconds(lambda: prg.fill(buf), repeat)
        rows.append([f"AES-128-CTR, {threads} thread(s), 64 MiB draw", f"{buf.nbytes / seconds / 1e6:.0f}"])
    return markdown_table(["PRG", "MB/s"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, torch {torch.__version__}\n")
    print("Ring matmul, Gop/s (median of", args.repeat, "runs)\n")
    print(matmul_table(args.repeat))
    print()
    print(prg_table(args.repeat))


if __name__ == "__main__":
    main()
