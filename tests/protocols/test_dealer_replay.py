"""Finding: a party must not learn another's masks through the dealer (real processes, TLS)."""
import collections

import pytest
import torch

from mpcft.kernels import PRG, derive_seed, fresh_seed
from mpcft.kernels.ring import msb
from mpcft.protocols import correlations
from mpcft.protocols.correlations import (CorrelationDealer, dealer_corrections, layout_id,
                                          _spec, _width, party_correlation, party_shares)
from mpcft.runtime import spawn

from .dealer_attack import ATTACK_LAYOUTS, deviating_party, recover_mask, unsigned


def pads_by_number_only(seeds, kind, params, number):
    """Party 0's corrections when pads depend on the number alone (the reviewed flaw)."""
    streams = [PRG(derive_seed(seed, "corr", number)) for seed in seeds]
    r = sum(prg.ring((1,)) for prg in streams)
    p1, p2 = streams[1].ring((1,)), streams[1].ring((1,))
    if kind == "square":
        return [r * r - p1]
    low = r & ((1 << 63) - 1)
    return [msb(r) - p1, (low >> params["bits"]) - p2]


def test_the_attack_recovers_the_mask_when_pads_ignore_the_layout():
    seeds = [fresh_seed(), fresh_seed()]
    answers = [pads_by_number_only(seeds, kind, params, 0) for kind, params in ATTACK_LAYOUTS]
    r = sum(PRG(derive_seed(seed, "corr", 0)).ring((1,)) for seed in seeds)
    assert recover_mask(answers[0][0], answers[1], answers[2]) == unsigned(r)[0]


@pytest.mark.timeout(120)
def test_dealer_answers_each_correlation_once_and_pads_never_cancel():
    (seed0, answers, replay, ahead, malformed, again), seed1 = spawn(
        deviating_party, 2, dealer_handler=CorrelationDealer, timeout=90)
    assert all(isinstance(a, list) for a in answers)
    assert recover_mask(answers[0][0], answers[1], answers[2]) is None
    masks = [party_shares(kind, params, 0, seed0, 0, 2, answer)[0] + party_shares(kind, params, 0, seed1, 1, 2)[0]
             for (kind, params), answer in zip(ATTACK_LAYOUTS, answers)]
    assert len({unsigned(m)[0] for m in masks}) == 3          # a fresh mask per layout
    assert "refused" in replay and "next one is #1" in replay
    assert "refused" in ahead and "#5" in ahead
    assert "takes parameters" in malformed[0] and "list of at most" in malformed[1]
    assert "do not combine" in malformed[2] and "limit" in malformed[3]
    assert all("Error:" not in text for text in [replay, ahead] + malformed)
    square = party_shares("square", {"shape": [1]}, 1, seed0, 0, 2, again)
    other = party_shares("square", {"shape": [1]}, 1, seed1, 1, 2)      # [1]: party 0's run alone
    a, aa = square[0] + other[0], square[1] + other[1]
    assert torch.equal(aa, a * a)


def test_pads_are_bound_to_their_layout():
    """Party 1's pads for correlation k of two layouts share no value: a correction asked
    for under another layout never cancels them. (Values drawn narrow, read mod 2^(8 w) for
    w < 8 bytes, may repeat by chance and are left out.)"""
    seeds = [fresh_seed(), fresh_seed()]
    layouts = [("square", {"shape": [64]}), ("square", {"shape": [65]}),
               ("trunc", {"shape": [64], "bits": 0}), ("trunc", {"shape": [64], "bits": 20}),
               ("triple", {"shape_a": [64], "shape_b": [64]})]
    seen = collections.Counter()
    for kind, params in layouts:
        corrections = dealer_corrections(kind, params, 0, seeds)[1]     # party 1's own run
        correlation = party_correlation(kind, params, 0, seeds[1], 1, 2, corrections)
        widths = [8] * len(correlation.random) + [_width(how) for _, how in _spec(kind, params)[1]]
        for tensor, width in zip(correlation.random + correlation.derived(), widths):
            if width == 8:
                seen.update(tensor.reshape(-1).tolist())
    assert max(seen.values()) == 1
    assert len({layout_id(kind, params) for kind, params in layouts}) == len(layouts)


def test_handler_refuses_other_ranks_and_counts_per_layout():
    dealer, seeds = CorrelationDealer(), [fresh_seed(), fresh_seed()]
    with pytest.raises(ValueError, match="party 1 receives no corrections"):
        dealer(1, "square", {"shape": [2], "number": 0}, 0, seeds)     # 2 elements: one run of 2
    for number in range(3):
        dealer(0, "square", {"shape": [2], "number": number}, number, seeds)
        dealer(0, "square", {"shape": [3], "number": number}, number, seeds)
    with pytest.raises(ValueError, match="next one is #3"):
        dealer(0, "square", {"shape": [2], "number": 1}, 9, seeds)
    with pytest.raises(ValueError, match="layout and number"):
        dealer(0, "square", {"shape": [2]}, 10, seeds)


def test_runs_kept_for_the_other_parties_are_bounded():
    big = {"shape": [1 << 15]}                                     # two runs of 2^14 values
    dealer, seeds = CorrelationDealer(max_held_bytes=8 << 14), [fresh_seed(), fresh_seed()]
    mine = dealer(0, "square", dict(big, number=0), 0, seeds)      # keeps party 1's run
    with pytest.raises(ValueError, match="holds 131072 bytes"):
        dealer(0, "square", dict(big, number=1), 1, seeds)
    theirs = dealer(1, "square", dict(big, number=0), 2, seeds)    # taken: room again
    assert [t.shape for t in mine + theirs] == [(1 << 14,), (1 << 14,)]
    dealer(0, "square", dict(big, number=1), 3, seeds)


def _ask_both(dealer, seeds, params, number):
    return [dealer(rank, "square", dict(params, number=number), number, seeds) for rank in (0, 1)]


def test_the_dealer_works_ahead_on_repeated_layouts_and_answers_each_once(monkeypatch):
    params, seeds = {"shape": [1 << 15]}, [fresh_seed(), fresh_seed()]
    dealer, computed = CorrelationDealer(), []
    monkeypatch.setattr(correlations, "dealer_corrections",
                        lambda *args: computed.append(args[2]) or dealer_corrections(*args))
    dealer.work_ahead(seeds, busy=lambda: False)                 # nothing asked yet: nothing to do
    _ask_both(dealer, seeds, params, 0)
    dealer.work_ahead(seeds, busy=lambda: False)                 # asked once: not a loop yet
    assert computed == [0]
    _ask_both(dealer, seeds, params, 1)
    dealer.work_ahead(seeds, busy=lambda: True)                  # a request waits: no work ahead
    assert computed == [0, 1]
    dealer.work_ahead(seeds, busy=lambda: False)                 # the next one, computed once
    dealer.work_ahead(seeds, busy=lambda: False)
    assert computed == [0, 1, 2]
    got = _ask_both(dealer, seeds, params, 2)                   # served from the work ahead
    assert computed == [0, 1, 2]
    want = dealer_corrections("square", params, 2, seeds)
    assert all(torch.equal(g, w) for party, wanted in zip(got, want) for g, w in zip(party, wanted))
    with pytest.raises(ValueError, match="next one is #3"):
        dealer(0, "square", dict(params, number=2), 9, seeds)   # still answered once
    dealer.work_ahead(seeds, busy=lambda: False)
    assert computed == [0, 1, 2, 3] and len(dealer._ahead) == 1
    dealer(0, "square", dict(params, number=0, epoch=1), 10, seeds)   # a new epoch drops the rest
    assert not dealer._ahead and dealer._held_bytes == 1 << 17          # party 1's run of #0


def test_work_ahead_holds_half_the_bound_and_gives_way_to_requests():
    big, seeds = {"shape": [1 << 15]}, [fresh_seed(), fresh_seed()]            # 2 x 128 KiB runs
    small = {"shape": [1 << 14]}                                               # 2 x 64 KiB runs
    dealer = CorrelationDealer(max_held_bytes=4 << 16)                         # 256 KiB
    for number in range(2):
        _ask_both(dealer, seeds, big, number)
        _ask_both(dealer, seeds, small, number)
    dealer.work_ahead(seeds, busy=lambda: False)
    assert dealer._held_bytes == 1 << 17          # small #2 only: big #2 would pass half the bound
    dealer(0, "square", dict(big, number=2), 4, seeds)    # needs 128 KiB held for party 1: room
    mine = dealer(0, "square", dict(big, number=3), 5, seeds)    # 256 KiB: drops the work ahead
    assert dealer._held_bytes == 1 << 18 and not dealer._ahead and mine[0].numel() == 1 << 14
    for number in (2, 3):
        dealer(1, "square", dict(big, number=number), 6 + number, seeds)
    assert dealer._held_bytes == 0 and len(_ask_both(dealer, seeds, small, 2)) == 2   # computed again
