"""Exact discrete Laplace and Gaussian samplers: histograms against the exact pmf, moments,
determinism per seed, rational parameters, refused parameters, replay across refills (speed:
benchmarks/bench_noise.py)."""
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from mpcft.kernels import PRG, derive_seed
from mpcft.kernels import discrete_noise as dn

SEED = bytes(range(32))
DRAWS = 1_000_000


def prg(label="test"):
    return PRG(derive_seed(SEED, label))


def gaussian_pmf(var: float, support: np.ndarray) -> np.ndarray:
    weights = np.exp(-support.astype(np.float64) ** 2 / (2 * var))
    return weights / weights.sum()


def laplace_pmf(t: float, support: np.ndarray) -> np.ndarray:
    return (math.exp(1 / t) - 1) / (math.exp(1 / t) + 1) * np.exp(-np.abs(support) / t)


def chi_square_pvalue(draws: np.ndarray, pmf) -> float:
    """Chi-square goodness of fit over the values expected at least 20 times, each tail
    (values beyond them) merged into its outermost bin."""
    span = int(np.abs(draws).max()) + 50
    support = np.arange(-span, span + 1)
    expected = pmf(support) * draws.size
    kept = support[expected >= 20]
    lo, hi = kept[0], kept[-1]
    observed = np.bincount(np.clip(draws, lo, hi) - lo, minlength=hi - lo + 1)
    inner = expected[(support >= lo) & (support <= hi)].copy()
    inner[0] += expected[support < lo].sum()
    inner[-1] += expected[support > hi].sum()
    statistic = np.sum((observed - inner) ** 2 / inner)
    return stats.chi2.sf(statistic, inner.size - 1)


@pytest.mark.parametrize("var", [Fraction(1, 4), 2.5, 100.0, Fraction(40000)])
def test_discrete_gaussian_matches_exact_pmf_and_variance(var):
    draws = dn.discrete_gaussian(prg(f"g{var}"), var, (DRAWS,))
    exact = float(dn.variance_fraction(var))
    support = np.arange(-int(60 * math.sqrt(exact)) - 20, int(60 * math.sqrt(exact)) + 21)
    pmf = gaussian_pmf(exact, support)
    true_variance = float(np.sum(pmf * support.astype(np.float64) ** 2))   # below sigma^2 for small sigma
    p = chi_square_pvalue(draws, lambda s: gaussian_pmf(exact, s))
    print(f"sigma^2={var}: chi-square p={p:.3f}, variance {draws.var():.5g} vs {true_variance:.5g}")
    assert p > 1e-4
    assert abs(draws.var() / true_variance - 1) < 0.01
    assert abs(draws.mean()) < 5 * math.sqrt(true_variance / DRAWS)


@pytest.mark.parametrize("t", [Fraction(1, 2), 3, 17.3])
def test_discrete_laplace_matches_exact_pmf_mean_and_variance(t):
    draws = dn.discrete_laplace(prg(f"l{t}"), t, (DRAWS,))
    exact = float(dn.laplace_scale_fraction(t))
    variance = 2 * math.exp(-1 / exact) / (1 - math.exp(-1 / exact)) ** 2
    p = chi_square_pvalue(draws, lambda s: laplace_pmf(exact, s))
    print(f"t={t}: chi-square p={p:.3f}, mean {draws.mean():.4f}, variance {draws.var():.5g} vs {variance:.5g}")
    assert p > 1e-4
    assert abs(draws.var() / variance - 1) < 0.01
    assert abs(draws.mean()) < 5 * math.sqrt(variance / DRAWS)


def test_same_seed_same_draws_and_streams_continue():
    a = dn.discrete_gaussian(prg("same"), 9.0, (1000, 3))
    b = dn.discrete_gaussian(prg("same"), 9.0, (1000, 3))
    assert a.shape == (1000, 3) and a.dtype == np.int64
    assert np.array_equal(a, b)
    other = dn.discrete_gaussian(prg("other"), 9.0, (1000, 3))
    assert not np.array_equal(a, other)
    stream = prg("same")
    first = dn.discrete_gaussian(stream, 9.0, (10,))
    second = dn.discrete_gaussian(stream, 9.0, (10,))
    assert not np.array_equal(first, second)      # the PRG moves on


def test_replay_across_refills_equals_one_unbroken_stream(monkeypatch):
    """With a 7-word buffer every draw runs out mid-way many times; replaying keeps the draw's
    words, so the draws equal those of a buffer that never runs out, both reading one sequence
    of words in order."""
    sequence = prg("replay").ring_numpy(1 << 21)

    def draws(buffer_words):
        taken = [0]

        def words(_prg, count):       # the next words of the sequence, as _words sizes them
            count = max(buffer_words, count) + (max(buffer_words, count) & 1)
            taken[0] += count
            return sequence[taken[0] - count:taken[0]]
        monkeypatch.setattr(dn, "_WORDS", buffer_words)
        monkeypatch.setattr(dn, "_words", words)
        return dn.discrete_gaussian(prg("unused"), 50.0, (2000,)), taken[0]

    (big, _), (small, used_small) = draws(1 << 20), draws(7)
    assert used_small > 1000 and np.array_equal(big, small)


def test_replayed_draws_use_the_words_in_order():
    """Refilling mid-draw keeps the draw's words: the kernel restarted on the concatenated
    buffer gives the same values as one long buffer."""
    words = prg("words").ring_numpy(400_000)
    out_full = np.empty(5000, np.int64)
    done, _, status = dn._laplace_kernel(words, out_full, 0, 7, 2)
    assert status == 0 and done == 5000
    out_split = np.empty(5000, np.int64)
    done, used, status = dn._laplace_kernel(words[:1000], out_split, 0, 7, 2)
    assert status == -1 and 0 < done < 5000
    done2, _, status = dn._laplace_kernel(words[used:], out_split, done, 7, 2)
    assert status == 0 and done2 == 5000
    assert np.array_equal(out_full, out_split)


def test_floats_round_up_and_fractions_are_exact():
    assert dn.variance_fraction(Fraction(7, 3)) == Fraction(7, 3)
    for var in (0.1, 2.0 / 3.0, 1234.5678, 1e10):
        exact = dn.variance_fraction(var)
        assert exact >= Fraction(var) and float(exact - Fraction(var)) / var < 1e-7
        assert exact.denominator & (exact.denominator - 1) == 0     # a power of two
    for t in (0.3, 5.0, 1e6):
        exact = dn.laplace_scale_fraction(t)
        assert exact >= Fraction(t) and float(exact - Fraction(t)) / t < 1e-10


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                        (float("inf"), ValueError), ("2", TypeError), (True, TypeError),
                                        (Fraction(1, 1 << 60), ValueError), (1e20, ValueError)])
def test_bad_gaussian_parameters_are_refused(bad, error):
    with pytest.raises(error):
        dn.discrete_gaussian(prg(), bad, (3,))


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (None, TypeError),
                                        (Fraction(1 << 62, 3), ValueError)])
def test_bad_laplace_parameters_are_refused(bad, error):
    with pytest.raises(error):
        dn.discrete_laplace(prg(), bad, (3,))


def test_large_sigma_near_the_bound():
    draws = dn.discrete_gaussian(prg("large"), float(2 ** 52), (200_000,))
    assert abs(draws.std() / 2 ** 26 - 1) < 0.01
