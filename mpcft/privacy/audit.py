"""Empirical privacy audit of a trained model: metrics only (mpcft.finetune.audit trains and measures).

Membership inference by loss threshold (Yeom et al. 2018): an example is called a member when
its loss is low; the ROC over thresholds gives the AUC and the TPR at small FPRs. An
(epsilon, delta)-DP training bounds every such test: TPR <= e^eps FPR + delta and
1 - TPR >= e^-eps (1 - delta - FPR) (Kairouz et al. 2015); measured rates are compared with it
beyond their sampling error, which also gives the epsilon the attack proves. Canaries (Carlini et al. 2019,
"The Secret Sharer"): random sentences inserted into training; their exposure is how high
their loss ranks among canaries that were never inserted.
"""
import math

import numpy as np

from mpcft.kernels import PRG

REPORTED_FPRS = (0.01, 0.001)
CANARY_LENGTH = 8   # words per canary sentence


def _roc(member_losses, nonmember_losses):
    """(FPR, TPR at every threshold, labels, scores) of the loss-threshold attack: score = -loss,
    members positive (sklearn.metrics.roc_curve)."""
    from sklearn.metrics import roc_curve   # 0.4 s to import: not on every `mpcft` start
    members, nonmembers = np.asarray(member_losses, float), np.asarray(nonmember_losses, float)
    if not members.size or not nonmembers.size:
        raise ValueError("the attack needs at least one member and one non-member")
    truth = np.r_[np.ones(members.size), np.zeros(nonmembers.size)]
    scores = -np.r_[members, nonmembers]
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
    return fpr, tpr, truth, scores


def membership_scores(member_losses, nonmember_losses, fprs=REPORTED_FPRS) -> dict:
    """The loss-threshold attack: its ROC AUC and, for each target in `fprs`, the largest TPR
    among the ROC's points with FPR <= target (0 FPR below 1 / non-members)."""
    from sklearn.metrics import roc_auc_score
    fpr, tpr, truth, scores = _roc(member_losses, nonmember_losses)
    return {"auc": float(roc_auc_score(truth, scores)),
            "tpr_at_fpr": {target: float(tpr[fpr <= target].max()) for target in fprs},
            "members": int(truth.sum()), "nonmembers": int(truth.size - truth.sum())}


def dp_tpr_bound(epsilon: float, delta: float, fpr: float) -> float:
    """min(1, e^eps FPR + delta): the most TPR any membership test reaches at `fpr` against an
    (epsilon, delta)-DP training."""
    return min(1.0, math.exp(epsilon) * fpr + delta)


def dp_auc_bound(epsilon: float, delta: float) -> float:
    """The largest ROC AUC under (epsilon, delta)-DP: the area under TPR = min(1, e^eps FPR + delta,
    1 - e^-eps (1 - delta - FPR)), a concave polygon with corners (0, delta), (a, e^eps a + delta)
    for a = (1 - delta) / (e^eps + 1), (1 - delta, 1) and (1, 1)."""
    corner = (1 - delta) / (math.exp(epsilon) + 1)
    xs = [0.0, corner, 1 - delta, 1.0]
    ys = [delta, math.exp(epsilon) * corner + delta, 1.0, 1.0]
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))


def _roc_band(member_losses, nonmember_losses, confidence: float):
    """(FPR, TPR, TPR lower, FPR upper) at every threshold, the bounds holding at all thresholds at
    once with probability `confidence`: DKW, |F_n - F| <= sqrt(ln(4 / alpha) / 2n) for each of the
    two samples' distributions at alpha / 2 (Dvoretzky-Kiefer-Wolfowitz, Massart 1990)."""
    fpr, tpr, truth, _ = _roc(member_losses, nonmember_losses)
    alpha = 1 - confidence
    tpr_margin = math.sqrt(math.log(4 / alpha) / (2 * truth.sum()))
    fpr_margin = math.sqrt(math.log(4 / alpha) / (2 * (truth.size - truth.sum())))
    return fpr, tpr, np.maximum(tpr - tpr_margin, 0.0), np.minimum(fpr + fpr_margin, 1.0)


def check_dp_bound(member_losses, nonmember_losses, epsilon: float, delta: float, fprs=REPORTED_FPRS,
                   confidence: float = 0.95) -> dict:
    """The measured ROC against the (epsilon, delta)-DP bounds. At each target FPR of `fprs`: the
    ROC point of membership_scores, the bound there, and `holds` unless the point is above the
    bound beyond sampling error (its TPR lower bound exceeds the bound at its FPR upper bound,
    _roc_band). The AUC is compared with dp_auc_bound as measured."""
    fpr, tpr, tpr_low, fpr_high = _roc_band(member_losses, nonmember_losses, confidence)
    at_fpr = {}
    for target in fprs:
        i = np.flatnonzero(fpr <= target)[np.argmax(tpr[fpr <= target])]
        at_fpr[target] = {"tpr": float(tpr[i]), "bound": dp_tpr_bound(epsilon, delta, target),
                          "tpr_low": float(tpr_low[i]), "fpr_high": float(fpr_high[i]),
                          "holds": bool(tpr_low[i] <= dp_tpr_bound(epsilon, delta, fpr_high[i]))}
    auc = membership_scores(member_losses, nonmember_losses)["auc"]
    auc_bound = dp_auc_bound(epsilon, delta)
    return {"tpr_at_fpr": at_fpr, "auc": {"auc": auc, "bound": auc_bound, "holds": auc <= auc_bound},
            "confidence": confidence, "holds": auc <= auc_bound and all(r["holds"] for r in at_fpr.values())}


def empirical_epsilon(member_losses, nonmember_losses, delta: float, confidence: float = 0.95) -> float:
    """The epsilon the attack proves with `confidence` (Jagielski et al. 2020): the largest of
    ln((TPR - delta) / FPR) and ln((1 - delta - FPR) / (1 - TPR)) over thresholds, each with
    the band's pessimistic bounds (_roc_band); 0 when nothing is proved."""
    _, _, tpr_low, fpr_high = _roc_band(member_losses, nonmember_losses, confidence)
    ratios = np.r_[(tpr_low - delta) / fpr_high, (1 - delta - fpr_high) / (1 - tpr_low)]   # margins > 0
    ratios = ratios[ratios > 1]
    return float(np.log(ratios.max())) if ratios.size else 0.0


def exposure(canary_loss: float, reference_losses) -> float:
    """Exposure (Carlini et al. 2019) = log2(|R| + 1) - log2(rank), rank = 1 + the number of
    reference canaries R whose loss is <= the canary's (ties count against it): 0 when the
    canary ranks last, log2(|R| + 1) bits when its loss is below every reference's."""
    reference = np.asarray(reference_losses, float)
    rank = 1 + int(np.count_nonzero(reference <= canary_loss))
    return math.log2(reference.size + 1) - math.log2(rank)


def chance_exposure(reference_count: int) -> float:
    """Mean exposure of a canary the model never saw, whose rank U is uniform on 1..N, N = |R| + 1:
    E[log2 N - log2 U] = log2 N - log2(N!) / N (-> 1/ln 2 = 1.44 bits as N grows)."""
    n = reference_count + 1
    return math.log2(n) - math.lgamma(n + 1) / (n * math.log(2))


def make_canaries(count: int, reference: int, num_labels: int, words, seed: bytes,
                  length: int = CANARY_LENGTH):
    """(inserted, reference): `count` and `reference` canaries (text, label id), each `length`
    words of `words` and a label in range(num_labels), drawn uniformly from PRG(seed) (AES-CTR).
    A draw is a 64-bit word modulo the choice's size n: its bias is below n / 2^64 (negligible)."""
    words = list(words)
    if count < 1 or reference < 1 or num_labels < 1 or length < 1 or not words:
        raise ValueError("canaries need count, reference, num_labels, length >= 1 and some words")
    total = count + reference
    draws = PRG(seed).ring_numpy((total, length + 1)).view(np.uint64)
    picks = draws[:, :length] % np.uint64(len(words))
    labels = draws[:, length] % np.uint64(num_labels)
    canaries = [(" ".join(words[i] for i in row), int(label)) for row, label in zip(picks, labels)]
    return canaries[:count], canaries[count:]
