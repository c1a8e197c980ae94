"""The trained classifier as a folder that transformers loads, and `mpcft predict`.

`export_classifier` writes what `mpcft finetune` leaves in OUT/model/: config.json (model type
`mpcft_bert`: the encoder's BertConfig plus `id2label`/`label2id` from the data's labels,
`auto_map` and the options `mpcft` = {pooling, seq_len, special_tokens_at_end,
add_pooling_layer}), model.safetensors (the encoder under `bert.`, the head as `classifier.`),
modeling_mpcft.py (the model classes, copied from mpcft/finetune/modeling_mpcft.py) and the
tokenizer's files. `transformers.pipeline("text-classification", model=OUT/model,
trust_remote_code=True)` then predicts what mpcft's evaluation predicts (mean pooling of the
last hidden state over the attention mask, then the linear head; texts cut to the run's
--seq-len).

`mpcft predict` loads such a folder with the classes of this package (the folder's own
modeling_mpcft.py is not run) and prints the label and its probability for each text;
`mpcft predict --shares RUN` predicts under MPC from a --no-reveal run's shares instead
(mpcft.finetune.predict_shared), printing the same.
"""
import csv
import json
import pathlib
import shutil

import torch

from mpcft.data import DataError
from mpcft.data.files import read_columns

from . import modeling_mpcft
from .modeling_mpcft import MpcftBertConfig, MpcftBertForSequenceClassification

MODELING_FILE = "modeling_mpcft.py"
AUTO_MAP = {"AutoConfig": "modeling_mpcft.MpcftBertConfig",
            "AutoModel": "modeling_mpcft.MpcftBertModel",
            "AutoModelForSequenceClassification": "modeling_mpcft.MpcftBertForSequenceClassification"}
DEFAULT_MODEL = "runs/finetune/model"
DEFAULT_TIMEOUT = 600.0            # seconds per protocol step of a prediction under MPC


def closing_special_tokens(tokenizer) -> int:
    """How many special tokens the tokenizer puts after a text's own tokens ([SEP]: 1)."""
    text = "mpcft closing tokens"
    full = tokenizer(text)["input_ids"]
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return len(full) - start - len(plain)
    raise ValueError("cannot find a text's tokens among the tokenizer's output with special tokens")


def export_classifier(model_dir, encoder, tokenizer, head_w, head_b, names, seq_len: int) -> None:
    """Writes the encoder with its trained weights, the linear head (head_w [labels, H],
    head_b [labels]) and the tokenizer to `model_dir` as one transformers model (float32)."""
    if encoder.config.model_type not in ("bert", MpcftBertConfig.model_type):
        raise ValueError(f"exporting a {encoder.config.model_type} encoder: only BERT encoders are supported")
    model_dir = pathlib.Path(model_dir)
    values = encoder.config.to_dict()
    for key in ("architectures", "model_type", "_name_or_path", "transformers_version", "auto_map",
                "id2label", "label2id", "num_labels", "problem_type", "torch_dtype", "dtype", "mpcft"):
        values.pop(key, None)
    config = MpcftBertConfig(**values)
    config.id2label = {i: name for i, name in enumerate(names)}
    config.label2id = {name: i for i, name in enumerate(names)}
    config.problem_type = "single_label_classification"
    config.mpcft = {"pooling": "mean", "seq_len": seq_len,
                    "special_tokens_at_end": closing_special_tokens(tokenizer),
                    "add_pooling_layer": getattr(encoder, "pooler", None) is not None}
    config.architectures = ["MpcftBertForSequenceClassification"]
    config.auto_map = dict(AUTO_MAP)
    model = MpcftBertForSequenceClassification(config).float().eval()
    model.bert.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        model.classifier.weight.copy_(head_w)
        model.classifier.bias.copy_(head_b)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    shutil.copyfile(modeling_mpcft.__file__, model_dir / MODELING_FILE)
    for stale in ("classifier_head.safetensors", "classifier_head.json"):    # an older mpcft's head
        (model_dir / stale).unlink(missing_ok=True)


def load_classifier(model_dir):
    """(tokenizer, MpcftBertForSequenceClassification in eval mode) of an exported folder;
    DataError (one line) when it is missing or not an mpcft model."""
    from transformers import AutoTokenizer
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        hint = (f"; {model_dir.parent} kept its parameters shared (--no-reveal): predict from them with "
                f"--shares {model_dir.parent}" if (model_dir.parent / "shares" / "party-0.json").is_file() else "")
        raise DataError(f"{model_dir}: no such model folder (mpcft finetune writes OUT/model/){hint}")
    config_file = model_dir / "config.json"
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except FileNotFoundError:
        model_type = None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise DataError(f"{config_file}: cannot read it as JSON: {exc}") from None
    if model_type != MpcftBertConfig.model_type:
        hint = (" (written by an older mpcft, with classifier_head.json: fine-tune again)"
                if (model_dir / "classifier_head.json").exists() else "")
        raise DataError(f"{model_dir}: not an mpcft model folder (config.json of model type "
                        f"{MpcftBertConfig.model_type!r}, as mpcft finetune writes in OUT/model/){hint}")
    try:
        config = MpcftBertConfig.from_pretrained(str(model_dir))
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), config=config)
        model = MpcftBertForSequenceClassification.from_pretrained(str(model_dir), config=config).eval()
    except Exception as exc:           # whatever transformers or safetensors raise: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{model_dir}: cannot load the model: {first}") from None
    return tokenizer, model


def read_head(model_dir):
    """(tokenizer, encoder in float64, head weight, head bias, label names, seq_len) of an
    exported folder, for mpcft.encoder's plaintext evaluation in float64."""
    tokenizer, model = load_classifier(model_dir)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    encoder = model.bert.double().eval()
    return (tokenizer, encoder, model.classifier.weight.detach().double(),
            model.classifier.bias.detach().double(), names, model.seq_len)


@torch.no_grad()
def predict(tokenizer, model, texts, batch_size: int = 64):
    """[(label, probability of that label, probabilities of every label)] for each text."""
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    results = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                          max_length=model.seq_len, return_tensors="pt")
        probabilities = model(**batch).logits.softmax(-1)
        for row in probabilities:
            best = int(row.argmax())
            results.append((names[best], float(row[best]), [float(p) for p in row]))
    return results


def read_texts(path, text_column: str) -> list[str]:
    """The texts of column `text_column` of a CSV (or .tsv/.tab) file with a header row."""
    return [text for (text,) in read_columns(path, [text_column], "--text-column")]


def add_text_arguments(parser) -> None:
    """Which texts to classify and where their predictions go (`mpcft predict`, and the
    asking party of a prediction under MPC)."""
    parser.add_argument("--text", action="append", default=None, help="a text to classify (repeatable)")
    parser.add_argument("--input", default=None, help="CSV or TSV file of texts to classify")
    parser.add_argument("--text-column", default="sentence", help="column of --input holding the texts")
    parser.add_argument("--output", default=None,
                        help="write text,label,score (and with --model each label's probability) to "
                             "this CSV instead of printing")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")


def add_predict_arguments(parser) -> None:
    parser.add_argument("--model", default=None,
                        help=f"model folder written by mpcft finetune (default: {DEFAULT_MODEL})")
    parser.add_argument("--shares", default=None, metavar="RUN",
                        help="folder of a run trained with --no-reveal: predict under MPC from its parties' "
                             "shares (only each text's label and probability are opened, to party 0)")
    parser.add_argument("--parties", type=int, default=None,
                        help="with --shares: the number of parties (default: the run's)")
    parser.add_argument("--timeout", type=float, default=None,
                        help=f"with --shares: seconds per protocol step (default: {DEFAULT_TIMEOUT:g})")
    add_text_arguments(parser)


def requested_texts(args) -> list[str]:
    """The texts of --text or --input; DataError (one line) for a request that cannot run."""
    if args.text is not None and args.input is not None:
        raise DataError("give the texts with --text or with --input FILE, not both")
    if args.text is None and args.input is None:
        raise DataError("no texts: give --text TEXT (repeatable) or --input FILE")
    if args.batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {args.batch_size}")
    return args.text if args.text is not None else read_texts(args.input, args.text_column)


def write_predictions(texts, results, output=None, names=None) -> None:
    """One line per text, label TAB probability TAB text, or the CSV `output`: text, label,
    score and, when `names` is given, each label's probability (results: [(label, score,
    probabilities)])."""
    if output is None:
        for text, (label, score, _) in zip(texts, results):
            print(f"{label}\t{score:.4f}\t{' '.join(text.split())}")
        return
    try:
        with open(output, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label", "score"] + [f"p_{name}" for name in names or []])
            for text, (label, score, probabilities) in zip(texts, results):
                writer.writerow([text, label, f"{score:.6f}"] + [f"{p:.6f}" for p in (probabilities if names else [])])
    except OSError as exc:
        raise DataError(f"{output}: cannot write it: {exc.strerror or exc}") from None
    print(f"mpcft predict: wrote {len(texts)} predictions to {output}")


def run_predict(args) -> int:
    """`mpcft predict --model DIR`: one line per text, label TAB probability TAB text (or --output CSV)."""
    for flag, value in (("--parties", args.parties), ("--timeout", args.timeout)):
        if value is not None:
            raise DataError(f"{flag} goes with --shares RUN (a prediction under MPC)")
    texts = requested_texts(args)
    tokenizer, model = load_classifier(args.model or DEFAULT_MODEL)
    results = predict(tokenizer, model, texts, args.batch_size)
    write_predictions(texts, results, args.output, [model.config.id2label[i] for i in range(model.config.num_labels)])
    return 0
