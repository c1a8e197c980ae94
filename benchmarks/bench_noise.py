"""Throughput of the exact discrete noise samplers and of the mechanisms built on them.

    python -m benchmarks.bench_noise [--coordinates 2000000] [--repeat 3]

kernels/discrete_noise.py (CKS 2020 samplers in Numba over AES-CTR words), one thread, median
of `repeat` runs after a warm-up call (Numba's compile or cache load); PRG words per draw
measured from the stream position.
"""
import argparse

import numpy as np

from benchmarks.timing import markdown_table, median_seconds, one_compute_thread
from mpcft.kernels import PRG, fresh_seed
from mpcft.kernels.discrete_noise import discrete_gaussian, discrete_laplace
from mpcft.privacy.mechanisms import gaussian_mechanism, laplace_mechanism


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinates", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    one_compute_thread()
    n = args.coordinates
    cases = [(f"discrete Gaussian, sigma {s:g}", lambda prg, s=s: discrete_gaussian(prg, float(s) ** 2, (n,)))
             for s in (1, 2 ** 10, 2 ** 20)]
    cases += [(f"discrete Laplace, scale {t:g}", lambda prg, t=t: discrete_laplace(prg, float(t), (n,)))
              for t in (1, 2 ** 20)]
    cases += [("gaussian_mechanism (eps 1, delta 1e-5, sensitivity 1)",
               lambda prg: gaussian_mechanism(np.zeros(n), 1.0, 1.0, 1e-5, prg=prg)),
              ("laplace_mechanism (eps 1, sensitivity 1)", lambda prg: laplace_mechanism(np.zeros(n), 1.0, 1.0, prg=prg))]
    rows = []
    for name, draw in cases:
        prg = PRG(fresh_seed())
        seconds = median_seconds(lambda: draw(prg), repeat=args.repeat)
        counted = PRG(fresh_seed())
        draw(counted)
        rows.append([name, f"{n:,}", f"{seconds:.3f}", f"{n / seconds / 1e6:.1f}",
                     f"{counted.position / 8 / n:.1f}"])
        print(rows[-1], flush=True)
    print()
    print(markdown_table(["sampler", "coordinates", "seconds", "M coordinates/s", "PRG words drawn per coordinate"],
                         rows))


if __name__ == "__main__":
    main()
