"""The audit's metrics on hand-made numbers: membership AUC and TPR at FPR, the DP bounds and
their check beyond sampling error, canary exposure and its chance level, canaries from the PRG."""
import math

import numpy as np
import pytest

from mpcft.kernels import PRG
from mpcft.privacy import audit
from mpcft.privacy.audit import (chance_exposure, check_dp_bound, dp_auc_bound, dp_tpr_bound, empirical_epsilon,
                                 exposure, make_canaries, membership_scores)

SEED = bytes(range(32))
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf"]


def test_auc_is_one_half_on_identical_losses_and_one_when_members_lose_less():
    rng = np.random.default_rng(0)
    same = rng.exponential(size=500)
    assert membership_scores(same, same)["auc"] == 0.5
    assert membership_scores(rng.exponential(size=4000), rng.exponential(size=4000))["auc"] == pytest.approx(0.5, abs=0.02)
    separated = membership_scores([0.1, 0.2, 0.3], [0.4, 0.5])
    assert separated["auc"] == 1.0 and separated["tpr_at_fpr"] == {0.01: 1.0, 0.001: 1.0}
    assert (separated["members"], separated["nonmembers"]) == (3, 2)


def test_tpr_at_fpr_takes_the_best_point_at_or_below_the_target():
    members = [0.1, 0.12, 0.2, 0.3]            # two below every non-member, two above one
    nonmembers = [0.15] + [float(v) for v in range(1, 10)]
    scores = membership_scores(members, nonmembers, fprs=(0.001, 0.01, 0.1))
    assert scores["tpr_at_fpr"] == {0.001: 0.5, 0.01: 0.5, 0.1: 1.0}


def test_the_attack_needs_both_classes():
    with pytest.raises(ValueError, match="at least one member and one non-member"):
        membership_scores([], [1.0])


def test_dp_tpr_bound_and_auc_bound():
    assert dp_tpr_bound(math.log(2), 0.01, 0.1) == pytest.approx(0.21)
    assert dp_tpr_bound(3.0, 1e-5, 0.5) == 1.0
    assert dp_auc_bound(0.0, 0.0) == pytest.approx(0.5)
    assert dp_auc_bound(50.0, 0.0) == pytest.approx(1.0)
    for epsilon, delta in ((1.0, 1e-3), (3.0, 1e-5), (0.3, 0.05)):
        fpr = np.linspace(0, 1, 200001)
        tpr = np.minimum.reduce([np.ones_like(fpr), math.exp(epsilon) * fpr + delta,
                                 1 - math.exp(-epsilon) * (1 - delta - fpr)])
        area = float(np.sum((tpr[1:] + tpr[:-1]) / 2 * np.diff(fpr)))
        assert dp_auc_bound(epsilon, delta) == pytest.approx(area, abs=1e-9)


def test_the_bound_check_allows_sampling_error_and_catches_a_clear_violation():
    rng = np.random.default_rng(1)
    fair = check_dp_bound(rng.exponential(size=300), rng.exponential(size=300), 1.0, 1e-5)
    assert fair["holds"] and fair["auc"]["holds"] and fair["auc"]["bound"] == dp_auc_bound(1.0, 1e-5)
    # a handful of members below every non-member: above e^eps FPR + delta at FPR 0, not beyond the DKW band
    few = check_dp_bound([0.0] * 6 + [1.0] * 44, [0.5] * 50, 0.1, 1e-5)
    assert few["tpr_at_fpr"][0.01]["tpr"] > few["tpr_at_fpr"][0.01]["bound"] and few["holds"]
    leaky = check_dp_bound(np.zeros(1000), np.ones(1000), 0.1, 1e-5)
    margin = math.sqrt(math.log(4 / 0.05) / 2000)
    row = leaky["tpr_at_fpr"][0.001]
    assert (row["tpr"], row["tpr_low"], row["fpr_high"]) == (1.0, pytest.approx(1 - margin), pytest.approx(margin))
    assert not row["holds"] and not leaky["holds"] and not leaky["auc"]["holds"]


def test_empirical_epsilon_is_what_the_band_proves():
    margin = math.sqrt(math.log(4 / 0.05) / 2000)
    assert empirical_epsilon(np.zeros(1000), np.ones(1000), 1e-5) == pytest.approx(
        math.log((1 - margin - 1e-5) / margin))
    rng = np.random.default_rng(2)
    assert empirical_epsilon(rng.exponential(size=500), rng.exponential(size=500), 1e-5) == 0.0


def test_exposure_is_log_of_the_reference_count_over_the_rank():
    reference = [0.1, 0.2, 0.3]
    assert exposure(0.15, reference) == pytest.approx(2 - 1)        # rank 2 of 4
    assert exposure(0.05, reference) == pytest.approx(2)            # rank 1: log2(4) bits
    assert exposure(0.3, reference) == pytest.approx(0)             # a tie counts against the canary
    assert exposure(0.2, list(np.linspace(0, 1, 1000))) == pytest.approx(math.log2(1001) - math.log2(201))


def test_chance_exposure_is_the_mean_exposure_of_an_unseen_canary():
    assert chance_exposure(1) == pytest.approx(0.5)                 # ranks 1, 2 of 2: 1 or 0 bits
    assert chance_exposure(10 ** 6) == pytest.approx(1 / math.log(2), rel=1e-4)
    rng = np.random.default_rng(3)
    references = 20
    trials = rng.random((50000, references + 1))       # column 0 is the canary, exchangeable with the rest
    simulated = np.mean([exposure(row[0], row[1:]) for row in trials])
    assert simulated == pytest.approx(chance_exposure(references), rel=0.01)


def test_canaries_come_from_the_prg_and_repeat_per_seed():
    inserted, reference = make_canaries(3, 5, 4, WORDS, SEED)
    assert (inserted, reference) == make_canaries(3, 5, 4, WORDS, SEED)
    assert make_canaries(3, 5, 4, WORDS, bytes(32)) != (inserted, reference)
    assert len(inserted) == 3 and len(reference) == 5
    draws = PRG(SEED).ring_numpy((8, audit.CANARY_LENGTH + 1)).view(np.uint64)
    expected = [(" ".join(WORDS[int(i)] for i in row[:-1] % np.uint64(len(WORDS))), int(row[-1] % np.uint64(4)))
                for row in draws]
    assert inserted + reference == expected
    for text, label in inserted + reference:
        assert len(text.split()) == audit.CANARY_LENGTH and set(text.split()) <= set(WORDS) and 0 <= label < 4


def test_canaries_do_not_touch_pythons_or_numpys_generators(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a canary drawn from a non-cryptographic generator")
    import random
    for name in ("random", "randrange", "randint", "choice", "choices", "shuffle", "sample", "getrandbits"):
        monkeypatch.setattr(random, name, refuse)
    monkeypatch.setattr(np.random, "default_rng", refuse)
    monkeypatch.setattr(np.random, "randint", refuse)
    monkeypatch.setattr(np.random, "choice", refuse)
    make_canaries(2, 10, 3, WORDS, SEED)


def test_make_canaries_refuses_what_cannot_be_drawn():
    for args in ((0, 5, 2, WORDS), (2, 0, 2, WORDS), (2, 5, 0, WORDS), (2, 5, 2, [])):
        with pytest.raises(ValueError, match="canaries need"):
            make_canaries(*args, SEED)
