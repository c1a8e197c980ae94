"""pytest-benchmark: ring kernels beside torch on the issue's shapes.

    python -m pytest benchmarks/test_bench_kernels.py --benchmark-only
"""
import numpy as np
import pytest

from mpcft.kernels import PRG, fresh_seed, ring_matmul

SHAPES = [((128, 768), (768, 768)), ((1024, 1024), (1024, 1024)),
          ((8, 12, 128, 64), (8, 12, 64, 128))]
IDS = ["128x768x768", "1024^3", "attention-8x12x128x64x128"]


@pytest.fixture(params=SHAPES, ids=IDS)
def operands(request):
    prg = PRG(fresh_seed())
    return tuple(prg.ring(shape) for shape in request.param)


@pytest.mark.benchmark(group="ring-matmul")
def test_ring_matmul(benchmark, operands):
    benchmark(ring_matmul, *operands)


@pytest.mark.benchmark(group="ring-matmul")
def test_torch_int64_matmul(benchmark, operands):
    a, b = operands
    benchmark(lambda: a @ b)


@pytest.mark.benchmark(group="ring-matmul")
def test_float64_blas(benchmark, operands):
    a, b = (x.double() for x in operands)
    benchmark(lambda: a @ b)


@pytest.mark.benchmark(group="prg")
def test_prg_64mib(benchmark):
    prg, buf = PRG(fresh_seed()), np.empty(64 << 20, np.uint8)
    benchmark(prg.fill, buf)
