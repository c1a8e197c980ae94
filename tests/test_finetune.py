"""The fine-tuning main job end to end (real processes, TLS, dealer), and its data plumbing."""
import argparse
import json
import subprocess
import sys

import pytest
import torch

from mpcft import data as datasets
from mpcft.data import by_owner, schedule
from mpcft.finetune import FinetuneConfig
from mpcft.finetune.__main__ import parse
from mpcft.finetune.config import add_arguments

from .test_predict import assert_run_predicts_its_accuracy


@pytest.mark.timeout(900)
def test_finetune_lora_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "mpcft.cli", "finetune", "--mode", "lora", "--layers", "1",
         "--max-train", "16", "--batch-size", "8", "--seq-len", "16", "--out", str(out),
         "--plaintext-baseline", "--eval-mpc"], capture_output=True, text=True, timeout=850)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "accuracy" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    # the evaluation under MPC agrees with the revealed model's (up to one near-tie)
    assert abs(summary["mpc_accuracy"] - summary["accuracy"]) <= 1 / summary["test_examples"] + 1e-9
    assert summary["parties"] == 2 and summary["steps"] == 2 and summary["mpc_layers"] == 1
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["MB_sent_per_party"] > 0
    assert abs(summary["accuracy"] - summary["plaintext_accuracy"]) <= 0.05
    assert (out / "training.png").stat().st_size > 1000
    # the revealed model loads back with transformers, LoRA merged into the top layer
    from transformers import AutoModel
    from mpcft.encoder import default_model_path
    tuned = AutoModel.from_pretrained(out / "model", trust_remote_code=True)
    base = AutoModel.from_pretrained(default_model_path())
    top = lambda m: m.encoder.layer[-1].attention.self.query.weight
    assert not torch.equal(top(tuned), top(base))
    assert torch.equal(tuned.encoder.layer[0].attention.self.query.weight,
                       base.encoder.layer[0].attention.self.query.weight)
    # every party saved its shares; they add up to the revealed head, and the text-classification
    # pipeline's predictions on the held-out split score the printed accuracy
    assert_run_predicts_its_accuracy(out, FinetuneConfig(mode="lora", layers=1, max_train=16, seq_len=16),
                                     capsys)


@pytest.mark.timeout(600)
def test_finetune_without_reveal_keeps_parameters_shared(tmp_path):
    """--no-reveal: no model is written, the accuracy comes from the evaluation under MPC, and
    AdamW trains the head."""
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "mpcft.cli", "finetune", "--mode", "head", "--max-train", "24",
         "--optimizer", "adamw", "--lr", "0.01", "--no-reveal", "--out", str(out)],
        capture_output=True, text=True, timeout=550)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert "accuracy" not in summary and 0.0 <= summary["mpc_accuracy"] <= 1.0
    assert summary["optimizer"] == "adamw"
    assert not (out / "model").exists() and (out / "shares" / "party-1.pt").exists()


@pytest.mark.timeout(600)
def test_finetune_stops_when_training_diverges(tmp_path):
    """An absurd learning rate wraps the fixed-point values: the output party's loss guard
    stops the run with a clear error, the launcher names rank 0 as the cause, and the other
    processes stop with a one-line note instead of a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "mpcft.cli", "finetune", "--mode", "head", "--max-train", "32",
         "--lr", "1000", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=550)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "TrainingDiverged" in output and "lower --lr" in output
    assert "mpcft launch: rank 0 exited with status 1" in output
    assert "mpcft party 1: PeerError:" in output and "(stopping: a peer failed first)" in output


def test_workers_receive_the_config_as_json():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = ["--mode", "top", "--layers", "2", "--no-split-train", "--no-loss", "--train", "x.csv",
             "--no-reveal", "--eval-mpc", "--optimizer", "adamw", "--owner-shares", "a/", "b.party-0.mpcft",
             "--owner-sealing", "clinic=" + "ab" * 16, "--lr", "0.01", "--max-train", "0"]
    config = FinetuneConfig.from_args(parser.parse_args(flags))
    assert config.layers == 2 and config.lr == 0.01 and config.max_train == 0 and not config.split_train
    assert config.owner_shares == ["a/", "b.party-0.mpcft"] and not config.reveal and config.no_loss
    assert FinetuneConfig.from_json(config.to_json()) == config
    assert parse(["--config-json", config.to_json()]) == config     # python -m mpcft.finetune
    assert parse(flags) == config                                   # or its flags, as under mpcft party
    assert FinetuneConfig.from_args(parser.parse_args([])) == FinetuneConfig()
    with pytest.raises(ValueError, match="not a FinetuneConfig"):
        FinetuneConfig.from_json('{"learning_rate": 1}')
    with pytest.raises(SystemExit):
        parse(["--config-json", config.to_json(), "--lr", "1"])


def test_a_batch_grouped_by_owner_keeps_its_order():
    assert by_owner([(1, 4), (0, 2), (1, 0), (0, 7)]) == {0: [2, 7], 1: [4, 0]}
    assert list(by_owner([(2, 1), (0, 3)])) == [0, 2] and by_owner([]) == {}


def test_schedule_is_public_and_covers_every_example():
    batches = schedule([5, 3], batch_size=3, epochs=2, seed=7)
    assert batches == schedule([5, 3], batch_size=3, epochs=2, seed=7)
    everything = sorted([(0, i) for i in range(5)] + [(1, i) for i in range(3)])
    for epoch in (batches[:3], batches[3:]):
        assert sorted(item for batch in epoch for item in batch) == everything


def test_labelled_files_and_splits(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('sentence,label\n"profits rose, a lot",positive\nflat year,neutral\n')
    texts, labels, names = datasets.read_labelled(csv_path, "sentence", "label")
    assert texts == ["profits rose, a lot", "flat year"] and names == ["neutral", "positive"] and labels == [1, 0]
    tsv_path = tmp_path / "d.tsv"
    tsv_path.write_text("label\tsentence\n1\tgood\n0\tbad\n")
    assert datasets.read_labelled(tsv_path, "sentence", "label")[1] == [1, 0]
    with pytest.raises(ValueError, match="no column"):
        datasets.read_labelled(csv_path, "text", "label")
    with pytest.raises(ValueError, match="not among"):
        datasets.read_labelled(csv_path, "sentence", "label", labels=["positive"])
    train, test = datasets.split(10, 0.2, seed=1)
    assert len(test) == 2 and sorted(train + test) == list(range(10))
    texts, labels, names = datasets.builtin_dataset(size=30)
    assert len(texts) == 30 and set(labels) == {0, 1, 2} and names == datasets.BUILTIN_LABELS
