"""Checkpoint and resume: a run killed at a random step (a party, or the dealer) and resumed
ends with the same shares, bit for bit, as an uninterrupted run with the same (fixed, test-only)
seeds; mismatched or damaged checkpoints are refused in one line; the dealer never serves an
earlier key epoch."""
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from benchmarks import faults
from mpcft.finetune.checkpoint import Checkpoints, CheckpointError
from mpcft.protocols.correlations import CorrelationDealer
from tests.refusals import assert_refused_in_one_line



@pytest.mark.parametrize("parties, victim", [(2, "rank 1"), (3, "dealer")])
def test_a_killed_run_resumes_to_the_same_shares_bit_for_bit(tmp_path, parties, victim):
    """benchmarks.faults' trial (RESULTS.md runs 50): kill -9 after a random checkpoint, resume."""
    expected = faults.reference(tmp_path / "whole", parties)
    result = faults.trial(tmp_path / "broken", parties, victim, signal.SIGKILL, expected, random.Random())
    assert result["status"] != 0 and result["within_timeout"], result
    assert result["named"] and result["orphans"] == 0 and result["whole_checkpoints"], result
    assert result["resumed"] and result["matched"], result
    from safetensors.torch import load_file
    for name in ("model/model.safetensors",):
        a, b = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "broken" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_resume_with_other_options_is_refused_in_one_line(tmp_path):
    out = tmp_path / "run"
    status, text = faults.finish(faults.mpcft("finetune", "--out", str(out), "--mode", "head", "--max-train", "24",
                                              "--checkpoint-every", "1"))
    assert status == 0, text
    for args, message in (([str(out), "--lr", "0.2"], "was made with --lr 0.05"),
                          ([str(tmp_path / "none")], "no checkpoint there")):
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "mpcft.cli", "finetune", "--resume", *args],
                                capture_output=True, text=True, cwd=tmp_path)
        assert_refused_in_one_line(result, "finetune", message, tmp_path, started)


IDENTITY = {"config": {"lr": 0.05}, "model": "m", "certificate": "c", "parties": 2, "rank": 0}


def test_checkpoints_are_whole_or_ignored_and_checked(tmp_path):
    fingerprinted = []
    store = Checkpoints(tmp_path, 0, dict(IDENTITY, model=lambda: fingerprinted.append(1) or "m"))
    assert store.steps() == [] and not fingerprinted            # the model's fingerprint: only when needed
    for step in (2, 4, 6):
        store.save(step, {"step": step, "x": torch.arange(step)})
    assert fingerprinted == [1]                                 # once
    assert store.steps() == [4, 6]                              # the last KEEP
    (store.folder / ".step-8.partial").mkdir()                  # a write that a crash cut short
    (store.folder / "step-10").mkdir()                          # no manifest: not whole
    assert store.steps() == [4, 6]
    assert store.verify(6) and not store.verify(10) and not store.verify(8)
    assert torch.equal(store.load(6)["x"], torch.arange(6))
    with pytest.raises(CheckpointError, match="another model"):
        Checkpoints(tmp_path, 0, dict(IDENTITY, model=lambda: "other")).load(6)
    with pytest.raises(CheckpointError, match="another configuration .*--lr"):
        Checkpoints(tmp_path, 0, dict(IDENTITY, config={"lr": 0.1})).load(6)
    with pytest.raises(CheckpointError, match="certificate"):
        Checkpoints(tmp_path, 0, dict(IDENTITY, certificate="other")).load(6)
    state = store.folder / "step-6" / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 1                                   # one bit flipped on disk
    state.write_bytes(bytes(data))
    assert not store.verify(6) and store.verify(4)
    with pytest.raises(CheckpointError, match="damaged"):
        store.load(6)


def test_the_dealer_serves_no_earlier_key_epoch():
    dealer = CorrelationDealer()
    seeds = {0: b"\1" * 32, 1: b"\2" * 32}
    params = {"shape": [3], "bits": 20}
    dealer(0, "trunc", dict(params, number=0, epoch=0), 0, seeds)
    dealer(0, "trunc", dict(params, number=0, epoch=4), 1, seeds)        # a new epoch: counts restart
    with pytest.raises(ValueError, match="epoch 4 has begun"):
        dealer(0, "trunc", dict(params, number=1, epoch=0), 2, seeds)
    with pytest.raises(ValueError, match="next one is #1"):
        dealer(0, "trunc", dict(params, number=0, epoch=4), 3, seeds)
