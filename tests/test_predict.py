"""The model folder `mpcft finetune` writes loads as a transformers text classifier that predicts
what mpcft's evaluation predicts (mean pooling over the attention mask, the linear head, texts cut
to --seq-len), labelled with the data's labels; `mpcft predict` prints the same; bad input is
refused in one line."""
import csv
import json
import pathlib
import time
import types

import pytest
import torch

from mpcft import data as datasets
from mpcft.cli import main
from mpcft.encoder import accuracy, default_model_path, load_encoder
from mpcft.finetune import FinetuneConfig, modeling_mpcft
from mpcft.finetune.outputs import save_model
from mpcft.finetune.predict import read_head
from mpcft.kernels import FixedPoint

from .refusals import assert_refused_in_one_line

NAMES = ["bearish", "neutral", "bullish"]       # not sorted: id2label keeps the run's order
SEQ_LEN = 16
LONG = " ".join(["the quarterly report of Nordbank showed that operating profit rose"] * 60)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(folder, tokenizer, float64 encoder, head weight, head bias): the default encoder with a
    random head, written by save_model as mpcft finetune writes it."""
    tokenizer, encoder = load_encoder(default_model_path())
    gen = torch.Generator().manual_seed(5)
    head_w = torch.randn(len(NAMES), encoder.config.hidden_size, generator=gen, dtype=torch.float64) * 2
    head_b = torch.randn(len(NAMES), generator=gen, dtype=torch.float64)
    folder = tmp_path_factory.mktemp("export") / "model"
    save_model(folder, encoder, tokenizer, head_w, head_b, NAMES, SEQ_LEN)
    return folder, tokenizer, encoder, head_w, head_b


def texts():
    sample = datasets.builtin_dataset(size=9, seed=3)[0]
    return sample + ["Profit rose.", LONG, "Ørsted-like Ünïcode Energy cut its outlook — again!",
                     "Kestrel Mining said the transaction is subject to regulatory approval in Oslo, "
                     "Riga and Tallinn, and shares jumped 14 % after better than expected results."]


@torch.no_grad()
def reference(tokenizer, encoder, head_w, head_b, items):
    """Probabilities [n, labels] computed directly: tokens cut to SEQ_LEN, the last hidden state
    mean-pooled over the attention mask, the linear head, softmax (float64)."""
    batch = tokenizer(items, padding=True, truncation=True, max_length=SEQ_LEN, return_tensors="pt")
    hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].double()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return (pooled @ head_w.T + head_b).softmax(-1)


def test_the_folder_loads_with_pipeline_as_the_trained_classifier(exported):
    from transformers import pipeline
    folder, tokenizer, encoder, head_w, head_b = exported
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "modeling_mpcft.py", "tokenizer.json", "tokenizer_config.json"]
    items = texts()
    lengths = [len(tokenizer(t)["input_ids"]) for t in items]
    assert any(SEQ_LEN < n < 100 for n in lengths) and max(lengths) > 512    # both cuts are exercised
    expected = reference(tokenizer, encoder, head_w, head_b, items)
    assert len(set(expected.argmax(1).tolist())) == len(NAMES)                # not one label for all
    classifier = pipeline("text-classification", model=str(folder), trust_remote_code=True)
    assert type(classifier.model).__name__ == "MpcftBertForSequenceClassification"
    assert classifier.model.config.id2label == dict(enumerate(NAMES))
    assert classifier.model.config.label2id == {name: i for i, name in enumerate(NAMES)}
    answers = classifier(items, top_k=None, batch_size=4)          # padded batches
    got = torch.tensor([[next(a["score"] for a in answer if a["label"] == name) for name in NAMES]
                        for answer in answers], dtype=torch.float64)
    assert (got - expected).abs().max() < 1e-5
    top = classifier(items)                                         # one text at a time
    assert [a["label"] for a in top] == [NAMES[i] for i in expected.argmax(1).tolist()]
    assert max(abs(a["score"] - p) for a, p in zip(top, expected.max(1).values.tolist())) < 1e-5
    # inputs too long for seq_len are cut inside the model, with padding on either side
    chosen = [LONG, "Profit rose.", items[-1]]
    for side in ("right", "left"):
        classifier.tokenizer.padding_side = side
        batch = classifier.tokenizer(chosen, padding=True, return_tensors="pt")
        assert batch["input_ids"].shape[1] > 512
        with torch.no_grad():
            probabilities = classifier.model(**batch).logits.softmax(-1).double()
        assert (probabilities - reference(tokenizer, encoder, head_w, head_b, chosen)).abs().max() < 1e-5
    classifier.tokenizer.padding_side = "right"
    # the predictions are mpcft's own evaluation's: accuracy() on labels read off the reference
    labels = expected.argmax(1).tolist()
    assert accuracy(encoder, head_w, head_b, tokenizer, items, labels, SEQ_LEN) == 1.0


def test_the_folder_never_loads_quietly_as_another_classifier(exported):
    """Without its own code the folder is refused, not built as BertForSequenceClassification
    (whose [CLS] pooler would take the trained weights and predict something else)."""
    from transformers import AutoModelForSequenceClassification, pipeline
    folder = str(exported[0])
    with pytest.raises(ValueError, match="trust_remote_code"):
        pipeline("text-classification", model=folder, trust_remote_code=False)
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=False)


def test_the_encoder_alone_loads_back(exported, tmp_path):
    from transformers import AutoModel
    folder, tokenizer, encoder, head_w, head_b = exported
    expected = {k: v.float() for k, v in encoder.state_dict().items()}
    tuned = AutoModel.from_pretrained(str(folder), trust_remote_code=True)
    assert tuned.state_dict().keys() == expected.keys()
    assert all(torch.equal(tuned.state_dict()[k], v) for k, v in expected.items())
    again_tokenizer, again = load_encoder(str(folder))    # mpcft finetune --model OUT/model
    assert all(torch.equal(again.state_dict()[k].float(), v) for k, v in expected.items())
    save_model(tmp_path / "again", again, again_tokenizer, head_w[:2], head_b[:2], ["no", "yes"], 8)
    assert read_head(tmp_path / "again")[4:] == (["no", "yes"], 8)
    _, _, w, b, names, seq_len = read_head(folder)
    assert names == NAMES and seq_len == SEQ_LEN
    assert torch.equal(w, head_w.float().double()) and torch.equal(b, head_b.float().double())
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "mpcft_bert" and config["problem_type"] == "single_label_classification"
    assert config["mpcft"] == {"pooling": "mean", "seq_len": SEQ_LEN, "special_tokens_at_end": 1,
                               "add_pooling_layer": True}
    assert config["auto_map"]["AutoModelForSequenceClassification"] == \
        "modeling_mpcft.MpcftBertForSequenceClassification"
    source = (folder / "modeling_mpcft.py").read_text()
    imports = {line.split()[1].split(".")[0] for line in source.splitlines()
               if line.startswith(("import ", "from "))}
    assert imports == {"torch", "transformers"}


def test_predict_prints_the_label_and_probability_of_each_text(exported, capsys):
    folder, tokenizer, encoder, head_w, head_b = exported
    items = texts()[-4:]
    expected = reference(tokenizer, encoder, head_w, head_b, items)
    assert main(["predict", "--model", str(folder)] + [arg for t in items for arg in ("--text", t)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(items)
    for line, text, probabilities in zip(lines, items, expected):
        label, score, shown = line.split("\t")
        assert label == NAMES[int(probabilities.argmax())] and shown == " ".join(text.split())
        assert abs(float(score) - float(probabilities.max())) < 1e-4


def test_predict_reads_a_file_and_writes_a_csv(exported, tmp_path, capsys):
    folder, tokenizer, encoder, head_w, head_b = exported
    items = texts()
    source = tmp_path / "reviews.tsv"
    with open(source, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["id", "review"])
        writer.writerows([i, t] for i, t in enumerate(items))
    out = tmp_path / "predictions.csv"
    assert main(["predict", "--model", str(folder), "--input", str(source), "--text-column", "review",
                 "--output", str(out), "--batch-size", "7"]) == 0
    assert capsys.readouterr().out.strip() == f"mpcft predict: wrote {len(items)} predictions to {out}"
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["text", "label", "score"] + [f"p_{name}" for name in NAMES]
    expected = reference(tokenizer, encoder, head_w, head_b, items)
    assert [row["text"] for row in rows] == items
    assert [row["label"] for row in rows] == [NAMES[i] for i in expected.argmax(1).tolist()]
    got = torch.tensor([[float(row[f"p_{name}"]) for name in NAMES] for row in rows], dtype=torch.float64)
    assert (got - expected).abs().max() < 1e-5


def refused(args, capsys, folder, message):
    started = time.monotonic()
    status = main(["predict"] + args)
    err = capsys.readouterr().err
    done = types.SimpleNamespace(returncode=status, stderr=err)
    assert_refused_in_one_line(done, "predict", message, folder, started)


def test_predict_refuses_bad_input_in_one_line(exported, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = str(exported[0])
    good = tmp_path / "good.csv"
    good.write_text("sentence\nProfit rose.\n", encoding="utf-8")
    refused(["--model", str(tmp_path / "nowhere"), "--text", "a"], capsys, tmp_path, "no such model folder")
    refused(["--model", default_model_path(), "--text", "a"], capsys, tmp_path, "not an mpcft model folder")
    older = tmp_path / "older"
    older.mkdir()
    (older / "config.json").write_text('{"model_type": "bert"}')
    (older / "classifier_head.json").write_text('{"pooling": "mean"}')
    refused(["--model", str(older), "--text", "a"], capsys, tmp_path, "written by an older mpcft")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "mpcft_')
    refused(["--model", str(broken), "--text", "a"], capsys, tmp_path, "cannot read it as JSON")
    (broken / "config.json").write_text((exported[0] / "config.json").read_text())
    refused(["--model", str(broken), "--text", "a"], capsys, tmp_path, "cannot load the model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((exported[0] / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    refused(["--model", str(broken), "--text", "a"], capsys, tmp_path, "cannot load the model")
    refused(["--model", folder, "--input", str(good), "--text-column", "review"], capsys, tmp_path,
            "no column(s) ['review']; the header has ['sentence']")
    refused(["--model", folder, "--input", str(tmp_path / "missing.csv")], capsys, tmp_path,
            "missing.csv: cannot read it")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("sentence\nZürich\n".encode("latin-1"))
    refused(["--model", folder, "--input", str(latin)], capsys, tmp_path, "not UTF-8 text")
    empty = tmp_path / "empty.csv"
    empty.write_text("sentence\n", encoding="utf-8")
    refused(["--model", folder, "--input", str(empty)], capsys, tmp_path, "no rows below the header")
    refused(["--model", folder], capsys, tmp_path, "no texts: give --text")
    refused(["--model", folder, "--text", "a", "--input", str(good)], capsys, tmp_path, "not both")
    refused(["--model", folder, "--text", "a", "--output", str(tmp_path / "no" / "such" / "out.csv")],
            capsys, tmp_path, "cannot write it")


def assert_run_predicts_its_accuracy(out: pathlib.Path, config: FinetuneConfig, capsys) -> None:
    """The model a real `mpcft finetune` run wrote to OUT/model/ (run with `config`'s data and
    --seq-len, two parties): the pipeline's predictions on the held-out split score the accuracy
    party 0 printed (texts cut to --seq-len included), its head is the parties' shares, and
    `mpcft predict` on (part of) that split answers the same labels."""
    from transformers import pipeline
    summary = json.loads((out / "summary.json").read_text())
    _, (test_texts, test_labels), names = datasets.load_data(config, 0, 2)
    assert summary["test_examples"] == len(test_texts)
    model = out / "model"
    assert (model / "modeling_mpcft.py").read_text() == pathlib.Path(modeling_mpcft.__file__).read_text()
    classifier = pipeline("text-classification", model=str(model), trust_remote_code=True)
    assert classifier.model.config.id2label == dict(enumerate(names))
    assert any(len(classifier.tokenizer(t)["input_ids"]) > config.seq_len for t in test_texts)
    predicted = [names.index(a["label"]) for a in classifier(test_texts, batch_size=16)]
    assert len(set(predicted)) > 1
    hits = sum(p == y for p, y in zip(predicted, test_labels))
    assert hits / len(test_labels) == pytest.approx(summary["accuracy"], abs=1e-12)
    shares = [torch.load(out / "shares" / f"party-{r}.pt") for r in range(2)]
    head = FixedPoint().decode(shares[0]["head.weight"] + shares[1]["head.weight"])
    assert (head - classifier.model.classifier.weight.double()).abs().max() < 1e-6
    source = out / "held-out.csv"
    with open(source, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["sentence"]] + [[t] for t in test_texts[:40]])
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--input", str(source)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [names[p] for p in predicted[:40]]
