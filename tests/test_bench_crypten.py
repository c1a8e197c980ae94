"""benchmarks.bench_crypten: without CrypTen its figures are None after one clear line; with
CrypTen's venv present (skipped otherwise), 2-party multiplies through the harness."""
import math

import pytest

from benchmarks import bench_crypten


def test_the_arithmetic_workloads_are_bench_arithmetic_operations():
    from benchmarks import bench_arithmetic, bench_side_by_side
    assert all(name in bench_arithmetic.OPERATIONS for name in bench_side_by_side.ARITHMETIC.values())


def test_absent_venv_gives_none_and_one_line(tmp_path, capsys):
    bench_crypten.locate_crypten.cache_clear()
    missing = tmp_path / "no-venv"
    assert bench_crypten.crypten_figures("multiply", 2, 1, venv=str(missing)) is None
    assert bench_crypten.crypten_figures("matmul", 3, 1, venv=str(missing)) is None
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("CrypTen column skipped: no CrypTen venv at") and str(missing) in lines[0]


def test_absent_compat_dir_gives_none(tmp_path, capsys):
    bench_crypten.locate_crypten.cache_clear()
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    assert bench_crypten.locate_crypten(str(venv), str(tmp_path / "no-compat")) is None
    assert "no crypten_compat.py in" in capsys.readouterr().out


@pytest.mark.skipif(bench_crypten.locate_crypten() is None, reason="CrypTen's venv is not installed")
def test_two_party_multiply_has_sane_figures():
    figures = bench_crypten.crypten_figures("multiply", 2, 1)
    assert 0 < figures["seconds"] < 20
    # one opening of two 10^6-element tensors: CrypTen logs 2 x 2 x 10^6 x 8 bytes at each party
    assert figures["bytes_by_rank"][1] == figures["bytes_per_party"] == 32_000_000
    assert figures["bytes_by_rank"][0] >= 32_000_000     # plus party 0's triple from the TTP
    assert 1 <= figures["rounds"] <= 10
    assert math.isfinite(figures["max_error"]) and figures["max_error"] < 1e-3
    assert figures["off_by_more_than_one"] == 0


@pytest.mark.skipif(bench_crypten.locate_crypten() is None, reason="CrypTen's venv is not installed")
def test_two_party_wide_multiply_counts_crypten_truncation_failures():
    """CrypTen's two-party truncation is local: a product share pair whose sum wraps around the
    ring comes out 2^32 off. With |x|, |y| < 1024 (|x y 2^32| averages 2^50), about 10^6 / 2^14
    = 61 of 10^6 products do; the chance that none does is below e^-40."""
    figures = bench_crypten.crypten_figures("multiply-wide", 2, 1)
    assert figures["off_by_more_than_one"] > 0 and figures["max_error"] > 1e9
