"""`mpcft audit` end to end (a real DP training run under MPC, then the attacks), its refusals in
one line before training starts, and its plumbing: the rows it audits, the flags it forwards."""
import argparse
import json
import math
import subprocess
import sys
import time

import pytest

from mpcft.finetune.audit import audit_rows, finetune_argv, markdown
from mpcft.finetune.config import FinetuneConfig, add_arguments
from mpcft.privacy.audit import chance_exposure

from .refusals import assert_refused_in_one_line

FAST = ["--mode", "head", "--max-train", "48", "--epochs", "3", "--canaries", "4", "--canary-repeats", "2",
        "--reference-canaries", "50"]


def audit(tmp_path, *options, timeout=500):
    return subprocess.run([sys.executable, "-m", "mpcft.cli", "audit", *options], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(600)
def test_audit_of_a_dp_run_reports_the_attacks_and_the_bound(tmp_path):
    out = tmp_path / "audit"
    done = audit(tmp_path, *FAST, "--dp", "--target-epsilon", "3", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "| epsilon | AUC |" in done.stdout
    report = json.loads((out / "audit.json").read_text())
    assert (out / "train" / "model" / "model.safetensors").exists()
    assert (out / "audit.md").read_text().startswith("| epsilon | AUC | TPR@1% | TPR@0.1% |")
    train = json.loads((out / "train" / "summary.json").read_text())
    assert train["train_examples"] == 48 + 4 * 2 and 2.9 <= report["epsilon"] <= 3.0
    membership, canaries, bound = report["membership"], report["canaries"], report["dp_bound"]
    assert membership["members"] == membership["nonmembers"] == 48
    assert 0 <= membership["auc"] <= 1 and membership["epsilon_proved"] >= 0
    assert all(0 <= membership["tpr_at_fpr"][fpr] <= 1 for fpr in ("0.01", "0.001"))
    assert len(canaries["exposures"]) == 4 and (canaries["inserted"], canaries["repeats"]) == (4, 2)
    assert all(0 <= e <= math.log2(51) + 1e-9 for e in canaries["exposures"])
    assert canaries["chance_exposure"] == pytest.approx(chance_exposure(50))
    assert bound["tpr_at_fpr"]["0.01"]["bound"] == pytest.approx(min(1, math.exp(report["epsilon"]) * 0.01 + 1e-5))
    assert isinstance(bound["holds"], bool) and 0.9 < bound["auc"]["bound"] < 1
    assert report["canary_group_privacy"][0] == pytest.approx(2 * report["epsilon"])
    assert 0 <= report["accuracy"] <= 1 and report["training_seconds"] > 0


BAD = [
    (["--canaries", "0"], "--canaries must be >= 1, got 0"),
    (["--canary-repeats", "0"], "--canary-repeats must be >= 1, got 0"),
    (["--reference-canaries", "9"], "--reference-canaries must be >= 10, got 9"),
    (["--dp"], "--dp needs one of --target-epsilon E or --noise-multiplier S"),
    (["--target-epsilon", "1"], "--target-epsilon needs --dp"),
    (["--no-reveal"], "--no-reveal: the audit attacks the revealed model"),
    (["--train", "missing.csv"], "missing.csv: cannot read it"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv, message", BAD)
def test_bad_audit_options_get_one_line_before_training(tmp_path, argv, message):
    start = time.monotonic()
    done = audit(tmp_path, *argv, timeout=100)
    assert_refused_in_one_line(done, "audit", message, tmp_path, start)


def test_members_and_nonmembers_are_disjoint_texts_that_occur_once():
    members, nonmembers, names = audit_rows(FinetuneConfig(max_train=100))
    member_texts, nonmember_texts = {t for t, _ in members}, {t for t, _ in nonmembers}
    assert len(members) == len(member_texts) == 100 and len(nonmembers) == len(nonmember_texts) > 50
    assert not member_texts & nonmember_texts and len(names) == 3


def test_the_forwarded_flags_give_back_the_config():
    config = FinetuneConfig(mode="top", layers=2, epochs=3, lr=0.02, dp=True, target_epsilon=2.5,
                            split_train=False, reveal=True, plaintext_baseline=True, max_train=0, train="a.csv")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert FinetuneConfig.from_args(parser.parse_args(finetune_argv(config))) == config
    assert finetune_argv(FinetuneConfig()) == []


def test_the_markdown_of_a_run_without_dp():
    report = {"epsilon": None, "delta": None, "accuracy": 0.9, "training_seconds": 12.0,
              "membership": {"auc": 0.6, "tpr_at_fpr": {0.01: 0.05, 0.001: 0.0}, "members": 80, "nonmembers": 80,
                             "epsilon_proved": 0.0},
              "canaries": {"mean_exposure": 8.5, "max_exposure": 9.97, "chance_exposure": 1.44, "most_exposure": 9.97,
                           "inserted": 8, "repeats": 4, "reference": 1000}}
    lines = markdown(report).splitlines()
    assert lines[2] == "| none | 0.600 | 0.050 | 0.000 | none | 0.00 | 8.50 / 9.97 bits | 1.44 bits |"
    assert "80 members against 80 non-members" in lines[4] and "DP bound" not in "".join(lines[4:])
