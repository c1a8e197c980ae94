"""Dealer correlations: seed compression, correctness, and the offline/online split."""
import pytest
import torch

from mpcft.kernels import fresh_seed, ring_matmul
from mpcft.kernels.bits import unpack_bits
from mpcft.kernels.ring import RING_BITS, bit, low_bits, msb, rshift_logical
from mpcft.protocols import correlations
from mpcft.protocols.correlations import BINARY, HIDDEN, KINDS, CorrelationDealer, dealer_corrections, party_shares
from mpcft.protocols.sources import FileCorrelations, write_offline
from mpcft.runtime import run_threads

from . import programs


def reconstruct(kind, params, n, seq=7):
    seeds = [fresh_seed() for _ in range(n)]
    corrections = dealer_corrections(kind, params, seq, seeds)
    shares = [party_shares(kind, params, seq, seeds[r], r, n, corrections[r] or None) for r in range(n)]
    random, derived, _ = KINDS[kind](params)
    values = []
    held = [(shape, how) for shape, how in random if how != HIDDEN]     # nobody draws a hidden value
    for parts, (_, how) in zip(zip(*shares), held + derived):
        value = parts[0]
        for part in parts[1:]:
            value = value ^ part if how == BINARY else value + part
        values.append(value)
    return values, corrections


@pytest.mark.parametrize("n", [2, 3, 5])
def test_triples_pairs_and_truncation_material_are_correct(n):
    (a, b, c), corrections = reconstruct("triple", {"shape_a": [4, 1, 3], "shape_b": [5, 3]}, n)
    assert torch.equal(c, a * b) and c.shape == (4, 5, 3)
    assert [len(c) for c in corrections] == [1] + [0] * (n - 1)    # small: party 0's run is all of c
    (a, aa), corrections = reconstruct("square", {"shape": [40_000]}, n)
    assert torch.equal(aa, a * a) and [len(c) for c in corrections] == [1] * n   # n runs
    assert sum(c[0].numel() for c in corrections) == 40_000 and max(c[0].numel() for c in corrections) <= 40_000 // n + 2
    (a, b, c), _ = reconstruct("matmul_triple", {"shape_a": [2, 4, 6], "shape_b": [6, 3]}, n)
    assert torch.equal(c, ring_matmul(a, b))
    (a, b, c, ab, cb, ac), _ = reconstruct(
        "matmul_grads", {"shape_a": [2, 4, 6], "shape_b": [2, 6, 3], "grad_a": 1, "grad_b": 1}, n)
    assert c.shape == (2, 4, 3) and torch.equal(ab, ring_matmul(a, b))
    assert torch.equal(cb, ring_matmul(c, b.mT.contiguous())) and torch.equal(ac, ring_matmul(a.mT.contiguous(), c))
    (a, aa), _ = reconstruct("square", {"shape": [10]}, n)
    assert torch.equal(aa, a * a)
    (r, top, mid), _ = reconstruct("trunc", {"shape": [1000], "bits": 20}, n)
    assert torch.equal(low_bits(top, 21), msb(r))         # read times 2^(63 - 20): mod 2^21
    assert torch.equal(mid, rshift_logical(low_bits(r, RING_BITS - 1), 20))
    for numel in (1000, 40_000):                          # the mask r is nobody's: c + r = ab + r
        (a, b, masked, top, mid), _ = reconstruct("product_trunc", {"shape": [numel], "bits": 20}, n)
        r = masked - a * b
        assert torch.equal(low_bits(top, 21), msb(r)) and torch.equal(mid, rshift_logical(low_bits(r, RING_BITS - 1), 20))
        assert 0.45 < msb(r).double().mean() < 0.55
    (r, products), corrections = reconstruct("and_products", {"words": 100, "factors": 3, "sets": [[0, 2], [0, 1, 2]]}, n)
    assert r.shape == (3, 100) and torch.equal(products, torch.stack([r[0] & r[2], r[0] & r[1] & r[2]]))
    assert len(corrections[0]) == 1
    (r, _, onehot, masked, beta), _ = reconstruct("sign", {"shape": [5, 300], "bits": 30, "digit_bits": 4}, n)
    assert set(beta.unique().tolist()) == {0, 1} and abs(beta.double().mean() - 0.5) < 0.05
    (_, _, a, later, *_, select_beta, a_beta, later_beta), _ = reconstruct(
        "select", {"shape": [5, 300], "bits": 30, "digit_bits": 4, "factor": [300], "later": 1}, n)
    assert a.shape == (300,) and torch.equal(a_beta, a * select_beta)
    assert later.shape == (5, 300) and torch.equal(later_beta, later * select_beta)
    assert torch.equal(unpack_bits(masked, 1500), (bit(r, 30) ^ beta).reshape(-1))
    assert onehot.shape == (8, 16, 24)
    low = low_bits(r, 30).reshape(-1)
    for g in (0, 7):
        digit = (low >> (4 * g)) & 15
        for v in (0, 3, 15):
            assert torch.equal(unpack_bits(onehot[g, v], 1500), (digit == v).long())


@pytest.mark.parametrize("numel", [1, 1000, 40_001])
def test_two_party_fused_corrections_equal_the_general_pass(numel, monkeypatch):
    # the dealer's one-pass kernels for two parties' triples and truncation masks send exactly
    # what the general derive-then-subtract pass sends, runs split or not (SPLIT_FROM)
    seeds = [fresh_seed() for _ in range(2)]
    layouts = [("triple", {"shape_a": [numel], "shape_b": [numel]})] + \
        [(kind, {"shape": [numel], "bits": bits}) for kind in ("trunc", "product_trunc") for bits in (1, 7, 20, 44, 61)]
    fused = [dealer_corrections(kind, params, 3, seeds) for kind, params in layouts]
    monkeypatch.setattr(correlations, "_two_party_kernel", lambda *args: None)
    for (kind, params), got in zip(layouts, fused):
        expected = dealer_corrections(kind, params, 3, seeds)
        assert [[(t.dtype, t.shape) for t in party] for party in got] == \
            [[(t.dtype, t.shape) for t in party] for party in expected]
        assert all(torch.equal(g, e) for party, party_expected in zip(got, expected)
                   for g, e in zip(party, party_expected)), (kind, params)
    monkeypatch.undo()
    (a, b, c), _ = reconstruct("triple", {"shape_a": [numel], "shape_b": [numel]}, 2)
    assert torch.equal(c, a * b)


def test_unknown_kinds_and_misuse_are_rejected():
    with pytest.raises(ValueError, match="unknown correlation kind"):
        dealer_corrections("nope", {}, 0, [fresh_seed()] * 2)
    with pytest.raises(ValueError, match="takes parameters"):
        dealer_corrections("square", {"shape": [2], "bits": 3}, 0, [fresh_seed()] * 2)
    with pytest.raises(ValueError, match=r"integer in \[0, 63\]"):
        dealer_corrections("trunc", {"shape": [2], "bits": 64}, 0, [fresh_seed()] * 2)
    with pytest.raises(ValueError, match="corrections"):
        party_shares("square", {"shape": [2]}, 0, fresh_seed(), 0, 2, None)
    for sets in ([[0]], [[1, 0]], [[0, 3]], [[0, 1], [0, 1]], [[0, True]], [[0, 1.0]], ["ab"]):
        with pytest.raises(ValueError, match="'and_products': sets"):
            dealer_corrections("and_products", {"words": 4, "factors": 3, "sets": sets}, 0, [fresh_seed()] * 2)


@pytest.mark.timeout(120)
def test_offline_files_replace_the_dealer(tmp_path):
    x = torch.linspace(-3, 3, 12, dtype=torch.float64).reshape(3, 4)
    y = torch.linspace(2, -1, 12, dtype=torch.float64).reshape(3, 4)
    online = run_threads(programs.record_plan, 3, x, y, dealer_handler=CorrelationDealer)
    plan = online[0][1]
    assert [p["kind"] for p in plan] == ["product_trunc", "matmul_triple", "trunc", "square", "trunc"]
    write_offline(plan, 3, tmp_path)
    offline = run_threads(programs.run_offline, 3, x, y, str(tmp_path))  # no dealer
    for got, want in zip(offline[0], [x * y, x @ y.T, x * x]):
        assert (got - want).abs().max() < 1e-4
    for a, b in zip(offline[0], online[0][0]):
        assert (a - b).abs().max() < 1e-5


def test_offline_file_checks_requests(tmp_path):
    plan = [{"kind": "square", "params": {"shape": [3]}}]
    paths = write_offline(plan, 2, tmp_path)
    with pytest.raises(ValueError, match="party 0's correlations"):
        FileCorrelations(paths[0], rank=1)
    files = FileCorrelations(paths[1], rank=1)
    with pytest.raises(RuntimeError, match="program changed"):
        files.get("square", shape=[4])
    files = FileCorrelations(paths[1], rank=1)
    got = files.get("square", shape=[3])
    assert [t.shape for t in got.random + got.derived()] == [(3,), (3,)]
    with pytest.raises(RuntimeError, match="more correlations than were recorded"):
        files.get("square", shape=[3])
    (tmp_path / "junk.corr").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not an mpcft correlation file"):
        FileCorrelations(tmp_path / "junk.corr", rank=0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
def test_prefetched_dealer_answers_give_the_same_results(n):
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.randn(6, 4, generator=gen, dtype=torch.float64)
    results = run_threads(programs.prefetching, n, x, y, dealer_handler=CorrelationDealer)
    for first, again, other, later, pending in results:
        want = x * y + x * x
        for got in (first, again, later):
            assert (got - want).abs().max() < 1e-5
        assert (other - x @ y.T).abs().max() < 1e-4
    assert results[0][4] == [0, 3, 0, 3, 0]   # a wrong guess waits for its layouts, then is used


def test_steps_do_not_nest():
    results = run_threads(programs.nested_steps, 2, dealer_handler=CorrelationDealer)
    assert all("do not nest" in message for message in results)


def test_narrow_corrections_travel_in_their_bytes_and_are_checked():
    # a truncation mask's top bit (and its products with r_top) is read times 2^(63 - m): the
    # dealer sends its low ceil((m + 1) / 8) bytes, and the shares still sum to it mod 2^(m + 1)
    params = {"shape": [20_000], "bits": [20, 44], "pairs": [[0, 1]]}
    seeds = [fresh_seed() for _ in range(2)]
    corrections = dealer_corrections("trunc_products", params, 0, seeds)
    assert [t.dtype for t in corrections[1]] == [torch.uint8, torch.int64, torch.uint8, torch.int64,
                                                 torch.int64, torch.uint8, torch.uint8, torch.uint8]
    assert [t.numel() for t in corrections[1]][:2] == [3 * 10_000, 10_000]     # its run: half
    values, _ = reconstruct("trunc_products", params, 2)
    (r0, r1), (top0, mid0, top1, mid1, _, mid0_top1, top0_mid1, top_top) = values[:2], values[2:]
    assert torch.equal(low_bits(top0, 21), msb(r0)) and torch.equal(low_bits(top1, 45), msb(r1))
    assert torch.equal(low_bits(mid0_top1, 45), low_bits(mid0 * msb(r1), 45))
    assert torch.equal(low_bits(top0_mid1, 21), low_bits(msb(r0) * mid1, 21))
    assert torch.equal(low_bits(top_top, 2), msb(r0) * msb(r1))         # 20 + 44 - 62 bits
    wrong = list(corrections[1])
    wrong[0] = wrong[0].view(torch.int64) if wrong[0].numel() % 8 == 0 else wrong[0][1:]
    with pytest.raises(ValueError, match="expected torch.uint8"):
        party_shares("trunc_products", params, 0, seeds[1], 1, 2, wrong)
