"""Counting correct predictions under MPC (evaluation without revealing the model)."""
import pytest
import torch

from mpcft.protocols.comparison import max_along_cost, sign_cost
from mpcft.protocols.correlations import CorrelationDealer
from mpcft.runtime import run_threads

from . import programs


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("labels_count", [2, 3, 5])
def test_count_correct_matches_argmax(n, labels_count, device):
    gen = torch.Generator().manual_seed(labels_count)
    logits = torch.randn(40, labels_count, generator=gen, dtype=torch.float64) * 30
    logits[0] = 1.5                                    # a tie counts as correct
    truth = torch.randint(0, labels_count, (40,), generator=gen)
    truth[:10] = logits[:10].argmax(1)                 # some right, some wrong
    onehot = torch.nn.functional.one_hot(truth, labels_count).double()
    count, cost = run_threads(programs.correct_predictions, n, logits, onehot, device, dealer_handler=CorrelationDealer)[0]
    assert count == int((logits.argmax(1) == truth).sum())
    declared = max_along_cost(n, 2 * logits.numel(), labels_count) + sign_cost(n, logits.shape[0])
    assert cost == (declared.rounds, declared.bytes_sent)
