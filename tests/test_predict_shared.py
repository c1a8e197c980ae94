"""`mpcft predict --shares RUN`: a --no-reveal run's classifier predicts under MPC (real party
processes, mutual TLS, the dealer) what the plaintext classifier made from the sum of the
parties' shares predicts, opening each text's label and probability to party 0 only; the
several-hosts form (`mpcft party ... -m mpcft.finetune.predict_shared`); refusals in one line
before any party starts."""
import argparse
import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import types

import pytest
import torch

from mpcft.cli import main
from mpcft.encoder import default_model_path, load_encoder
from mpcft.finetune.predict import export_classifier, load_classifier, predict
from mpcft.finetune import predict_shared
from mpcft.finetune.predict_shared import MODULE, predict_under_mpc
from mpcft.finetune.shares import SharesError
from mpcft.kernels import FixedPoint
from mpcft.runtime import free_ports
from mpcft.runtime.local import run_threads

from .refusals import assert_refused_in_one_line

# The score is softmax's probability under MPC (fixed point, f = 20: exp and the reciprocal
# of protocols/softmax.py) against float32 transformers; measured at most 6.5e-5 on 32 texts,
# 2 and 3 parties, printed with 4 decimals (rounding: 5e-5).
SCORE_BOUND = 1e-3
TEXTS = ["Nordbank cut its outlook for the year", "Operating profit rose sharply in the quarter",
         "The company said nothing about its plans", "Kestrel Mining shares fell after the report",
         "-3 % sales, a flat year", "Ørsted-like Ünïcode Energy raised its dividend — again!"]


def mpcft(*args):
    return [sys.executable, "-m", "mpcft.cli", *args]


def finetune(out, parties: int, *options):
    done = subprocess.run(mpcft("finetune", "--no-reveal", "--parties", str(parties), "--checkpoint-every", "0",
                                "--out", str(out), *options),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    """A 2-party --no-reveal run of mode head (trained enough to tell TEXTS' labels apart)."""
    return finetune(tmp_path_factory.mktemp("head") / "run", 2, "--mode", "head", "--seq-len", "16",
                    "--max-train", "48", "--batch-size", "16", "--epochs", "3", "--lr", "0.1")


def summed_shares(run) -> dict:
    """{parameter name: the sum of every party's share} of a run's trained parameters, decoded."""
    manifests = [json.loads((run / "shares" / f"party-{r}.json").read_text())
                 for r in range(json.loads((run / "shares" / "party-0.json").read_text())["parties"])]
    shares = [torch.load(run / "shares" / f"party-{m['rank']}.pt") for m in manifests]
    trained = [k for k in shares[0] if k.startswith("head.") or ".lora_" in k]
    return {k: FixedPoint().decode(sum(s[k] for s in shares)) for k in trained}, manifests[0]


def plaintext_predictions(run, texts, folder):
    """[(label, probability)] of the plaintext classifier that the summed shares make (LoRA
    merged into the base weights), exported and loaded as `mpcft predict --model` does."""
    values, manifest = summed_shares(run)
    config = manifest["config"]
    tokenizer, encoder = load_encoder(default_model_path())
    layers = encoder.encoder.layer
    with torch.no_grad():
        for name in values:
            if name.endswith("lora_a.weight"):                 # layer{i}.attention.{query,value}.lora_a
                block, _, projection = name.split(".")[:3]
                target = getattr(layers[len(layers) - manifest["mpc_layers"] + int(block[5:])].attention.self,
                                 projection)
                b = values[name.replace("lora_a", "lora_b")]
                target.weight += config["lora_alpha"] / config["lora_rank"] * b @ values[name]
    export_classifier(folder, encoder, tokenizer, values["head.weight"], values["head.bias"], manifest["labels"],
                      config["seq_len"])
    return [(label, score) for label, score, _ in predict(*load_classifier(folder), texts)]


def predictions_of(lines):
    return [(label, float(score), text) for label, score, text in (line.split("\t") for line in lines)]


def assert_same_predictions(got, expected, texts):
    assert [label for label, *_ in got] == [label for label, _ in expected]
    assert max(abs(g[1] - e[1]) for g, e in zip(got, expected)) < SCORE_BOUND
    assert [g[2] for g in got] == [" ".join(t.split()) for t in texts]


def assert_nothing_opened_to(output: str, texts, names):
    """A non-asking party's (or the dealer's) output: no text, no label, no score."""
    for word in [t.split()[0] for t in texts] + list(names) + ["0."]:
        assert word not in output, (word, output)


def test_only_the_asking_party_is_given_the_texts():
    """`mpcft predict --shares` puts the texts and the output file on rank 0's command line only
    (launch's rank_arguments): the other parties' commands carry the run and sizes alone."""
    request = argparse.Namespace(shares="run", text_column="sentence", batch_size=8, text=["a secret text"],
                                 input="mine.csv", output="predictions.csv")
    common, asker = predict_shared.worker_arguments(request)
    assert not any(word in option for option in common for word in ("secret", "mine.csv", "predictions"))
    assert "--text=a secret text" in asker and "--input=mine.csv" in asker


@pytest.mark.timeout(600)
def test_mpc_prediction_is_the_summed_shares_plaintext_prediction(head_run, tmp_path):
    args = [f"--text={t}" for t in TEXTS]              # one text starts with "-"
    done = subprocess.run(mpcft("predict", "--shares", str(head_run), *args), capture_output=True, text=True,
                          timeout=500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    mine = [line for line in lines if not line.startswith("[")]       # rank 0 writes unprefixed
    expected = plaintext_predictions(head_run, TEXTS, tmp_path / "plain")
    assert len({label for label, _ in expected}) > 1
    assert_same_predictions(predictions_of(mine), expected, TEXTS)
    others = "\n".join(line for line in lines if line.startswith("[")) + done.stderr
    names = json.loads((head_run / "shares" / "party-0.json").read_text())["labels"]
    assert_nothing_opened_to(others, TEXTS, names)


@pytest.mark.timeout(600)
def test_several_hosts_each_party_with_its_own_shares(head_run, tmp_path):
    """`mpcft party --config cluster.toml --rank R -m mpcft.finetune.predict_shared`: rank 0
    alone holds the texts and writes the CSV; rank 1 is given only its run folder (the
    README's commands, with their own files)."""
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"--rank 0 -m {MODULE} --shares runs/private --input texts.csv" in readme
    assert f"--rank R -m {MODULE} --shares runs/private   # R > 0: no texts" in readme
    ports = iter(free_ports(3))
    certs = head_run / "certs"
    blocks = [f'[cluster]\ntimeout = 120\nconnect_timeout = 120\ntls = true\nca = "{certs}/ca.pem"\n']
    blocks += [f'[[party]]\nrank = {r}\nhost = "127.0.0.1"\nport = {next(ports)}\n'
               f'cert = "{certs}/party-{r}.pem"\nkey = "{certs}/party-{r}-key.pem"\n' for r in range(2)]
    blocks += [f'[dealer]\nhost = "127.0.0.1"\nport = {next(ports)}\n'
               f'cert = "{certs}/dealer.pem"\nkey = "{certs}/dealer-key.pem"\n']
    (tmp_path / "cluster.toml").write_text("\n".join(blocks))
    for r in range(2):                        # each host holds its own party's files only
        (tmp_path / f"host-{r}" / "shares").mkdir(parents=True)
        for suffix in ("pt", "json"):
            shutil.copy(head_run / "shares" / f"party-{r}.{suffix}", tmp_path / f"host-{r}" / "shares")
    with open(tmp_path / "texts.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["id", "review"]] + [[i, t] for i, t in enumerate(TEXTS)])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    asks = ["--input", "texts.csv", "--text-column", "review", "--output", "predictions.csv", "--batch-size", "4"]
    processes = [subprocess.Popen(mpcft("dealer", "--config", "cluster.toml"), cwd=tmp_path, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    processes += [subprocess.Popen(mpcft("party", "--config", "cluster.toml", "--rank", str(r), "-m", MODULE,
                                         "--shares", f"host-{r}", *(asks if r == 0 else [])),
                                   cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                  for r in range(2)]
    try:
        outputs = [p.communicate(timeout=400)[0] for p in processes[1:]] + [processes[0].communicate(timeout=60)[0]]
    finally:
        for process in processes:
            process.kill()
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    assert outputs[0].strip() == f"mpcft predict: wrote {len(TEXTS)} predictions to predictions.csv"
    with open(tmp_path / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["text", "label", "score"]
    got = [(row["label"], float(row["score"]), " ".join(row["text"].split())) for row in rows]
    assert_same_predictions(got, plaintext_predictions(head_run, TEXTS, tmp_path / "plain"), TEXTS)
    names = json.loads((head_run / "shares" / "party-0.json").read_text())["labels"]
    assert_nothing_opened_to(outputs[1] + outputs[2], TEXTS, names)


@pytest.mark.timeout(900)
def test_three_parties_with_lora_layers_under_mpc(tmp_path):
    """Mode lora: the top layer runs under MPC on shares of the hidden states and padding masks
    that party 0 computes; three parties."""
    held_out = tmp_path / "held-out.csv"            # a small one: the run evaluates it under MPC
    held_out.write_text("sentence,label\nProfit rose.,positive\nSales fell.,negative\nA meeting.,neutral\n")
    run = finetune(tmp_path / "run", 3, "--mode", "lora", "--layers", "1", "--seq-len", "8", "--max-train", "16",
                   "--batch-size", "8", "--lr", "0.2", "--test", str(held_out))
    texts = TEXTS[:3]
    done = subprocess.run(mpcft("predict", "--shares", str(run), *[a for t in texts for a in ("--text", t)]),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    mine = [line for line in done.stdout.splitlines() if not line.startswith("[")]
    values, _ = summed_shares(run)
    assert any(name.endswith("lora_b.weight") and values[name].abs().max() > 0 for name in values)
    assert_same_predictions(predictions_of(mine), plaintext_predictions(run, texts, tmp_path / "plain"), texts)


def refused(args, capsys, folder, message):
    started = time.monotonic()
    status = main(["predict"] + args)
    done = types.SimpleNamespace(returncode=status, stderr=capsys.readouterr().err)
    assert_refused_in_one_line(done, "predict", message, folder, started)


def edit_manifest(folder, rank, **changes):
    path = folder / "shares" / f"party-{rank}.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_predict_from_shares_refuses_bad_requests_in_one_line(head_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "copy"
    shutil.copytree(head_run / "shares", run / "shares")
    text = ["--text", "Profit rose."]
    refused(["--shares", str(tmp_path / "nowhere")] + text, capsys, tmp_path, "no such run folder")
    refused(["--shares", str(tmp_path)] + text, capsys, tmp_path, "no shares/ folder there")
    refused(["--shares", str(run), "--model", str(run / "model")] + text, capsys, tmp_path, "not both")
    refused(["--shares", str(run)], capsys, tmp_path, "no texts: give --text")
    refused(["--shares", str(run), "--output", str(tmp_path / "no" / "out.csv")] + text, capsys, tmp_path,
            "its folder does not exist")
    refused(["--shares", str(run), "--parties", "3"] + text, capsys, tmp_path,
            "the run at " + str(run) + " has 2 parties' shares")
    refused(["--model", str(run / "model")] + text, capsys, tmp_path, f"predict from them with --shares {run}")
    refused(["--parties", "2"] + text, capsys, tmp_path, "--parties goes with --shares RUN")
    (run / "shares" / "party-1.pt").write_bytes(b"not the shares")
    refused(["--shares", str(run)] + text, capsys, tmp_path, "does not match its manifest (damaged or replaced)")
    shutil.copy(head_run / "shares" / "party-1.pt", run / "shares")
    edit_manifest(run, 1, run="0" * 32)
    refused(["--shares", str(run)] + text, capsys, tmp_path, "party-1.json: of another run than party 0's")
    edit_manifest(run, 1, run=json.loads((head_run / "shares" / "party-1.json").read_text())["run"])
    edit_manifest(run, 0, model_fingerprint="0" * 32)
    refused(["--shares", str(run)] + text, capsys, tmp_path, "not the model this run was trained on")
    edit_manifest(run, 0, revealed=True)
    refused(["--shares", str(run)] + text, capsys, tmp_path, f"predict in plaintext with --model {run / 'model'}")
    (run / "shares" / "party-0.json").write_text("{}")
    refused(["--shares", str(run)] + text, capsys, tmp_path, "not a manifest of mpcft's trained shares")
    (run / "shares" / "party-0.json").unlink()
    refused(["--shares", str(run)] + text, capsys, tmp_path, "(written by an older mpcft: fine-tune again)")
    for name in ("party-1.pt", "party-1.json"):
        (run / "shares" / name).unlink()
    shutil.copy(head_run / "shares" / "party-0.json", run / "shares")
    refused(["--shares", str(run)] + text, capsys, tmp_path, "no manifest shares/party-1.json for party 1")


def test_parties_refuse_shares_of_another_run_or_cluster(head_run, tmp_path):
    """Each party checks its own files (several hosts have no launcher to do it): parties
    holding shares of different runs refuse together, as does a cluster of another size."""
    run = tmp_path / "mixed"
    shutil.copytree(head_run / "shares", run / "shares")
    edit_manifest(run, 1, run="0" * 32)

    def party(session, folder):
        return predict_under_mpc(session, folder, ["Profit rose."] if session.rank == 0 else None,
                                 4 if session.rank == 0 else None)

    with pytest.raises(SharesError, match=r"party [01] holds the shares of another run than party [01]'s"):
        run_threads(party, 2, run, timeout=60)
    with pytest.raises(SharesError, match="the run has 2 parties, this cluster 3|no manifest shares/party-2.json"):
        run_threads(party, 3, head_run, timeout=60)
