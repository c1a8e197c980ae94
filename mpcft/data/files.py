"""Labelled text for fine-tuning: CSV/TSV files, splits, each owner's share of the data, the
public batch schedule, and a small built-in data set.

The built-in set is made here from templates (no download, no copy of any corpus): short
financial-news sentences whose sentiment (negative / neutral / positive) follows from the
event described, so a model can learn it from a few hundred examples.
"""
import csv
import pathlib
import random  # noqa: csprng (public data generation and schedule)

BUILTIN_MAX_TRAIN = 160          # examples of the built-in set used unless --max-train
BUILTIN_LABELS = ["negative", "neutral", "positive"]

_COMPANIES = ["Nordbank", "Helios Energy", "Acme Logistics", "Vantor Foods", "Kestrel Mining",
              "Orbis Telecom", "Lumen Retail", "Caldera Steel", "Pinewood Pharma", "Aster Motors",
              "Solace Insurance", "Mariner Shipping"]
_EVENTS = {
    "positive": ["{c} reported a {p} rise in quarterly operating profit",
                 "{c} raised its full-year sales guidance after strong demand",
                 "net sales of {c} increased by {p} compared with last year",
                 "{c} won a large supply contract worth {m} million euros",
                 "{c} shares jumped {p} after better than expected results",
                 "{c} returned to profit and increased its dividend"],
    "negative": ["{c} reported a {p} fall in quarterly operating profit",
                 "{c} cut its full-year outlook as demand weakened",
                 "net sales of {c} decreased by {p} compared with last year",
                 "{c} will lay off {n} employees to reduce costs",
                 "{c} shares dropped {p} after disappointing results",
                 "{c} swung to a loss of {m} million euros"],
    "neutral": ["{c} will publish its interim report on {d}",
                "{c} appointed a new chief financial officer",
                "{c} is headquartered in {town} and employs {n} people",
                "the annual general meeting of {c} will be held on {d}",
                "{c} operates {n} stores across the region",
                "{c} said the transaction is subject to regulatory approval"],
}
_TOWNS = ["Helsinki", "Tampere", "Oslo", "Gothenburg", "Riga", "Tallinn"]
_DAYS = ["3 March", "15 April", "27 July", "9 October", "21 November"]


def builtin_dataset(size: int = 600, seed: int = 0) -> tuple[list[str], list[int], list[str]]:
    """(texts, label ids, label names): `size` template sentences, balanced over labels."""
    rng = random.Random(seed)  # public, non-secret data generation
    texts, labels = [], []
    for i in range(size):
        label = BUILTIN_LABELS[i % 3]
        template = rng.choice(_EVENTS[label])
        text = template.format(c=rng.choice(_COMPANIES), p=f"{rng.randint(2, 45)} %",
                               m=rng.randint(5, 900), n=rng.randint(20, 4000),
                               d=rng.choice(_DAYS), town=rng.choice(_TOWNS))
        texts.append(text[0].upper() + text[1:] + ".")
        labels.append(i % 3)
    return texts, labels, list(BUILTIN_LABELS)


class DataError(ValueError):
    """A data file or option that cannot be used, said in one line for the user."""


def read_columns(path, columns: list[str], flags: str) -> list[tuple[str, ...]]:
    """The rows of a CSV or TSV (.tsv, .tab) file with a header row, as tuples of `columns`.
    DataError, in one line, for a file that cannot be read, is not UTF-8, lacks a column (the
    options that name them: `flags`), has a row of another number of fields, or no rows."""
    path = pathlib.Path(path)
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:     # a BOM is not a column name
            reader = csv.DictReader(f, delimiter=delimiter)
            missing = set(columns) - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}: no column(s) {sorted(missing)}; the header has "
                                f"{reader.fieldnames or 'nothing'} (see {flags})")
            rows = []
            for row in reader:     # DictReader: a missing field is None, extra ones go under None
                if None in row or None in row.values():
                    fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None, ()))
                    raise DataError(f"{path}: line {reader.line_num} has {fields} fields, the header "
                                    f"{len(reader.fieldnames)} (quote texts that hold {delimiter!r})")
                rows.append(tuple(row[c] for c in columns))
    except OSError as exc:
        raise DataError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a valid delimited text file: {exc}") from None
    if not rows:
        raise DataError(f"{path}: no rows below the header")
    return rows


def read_labelled(path, text_column: str, label_column: str, labels: list[str] | None = None):
    """(texts, label ids, label names) from a CSV or TSV file with a header row (read_columns).

    Label names are sorted unless given, so every party derives the same ids. DataError for a
    file that cannot be read, is not UTF-8, lacks a column, holds no rows or unknown labels.
    """
    path = pathlib.Path(path)
    rows = [(text, label.strip()) for text, label in
            read_columns(path, [text_column, label_column], "--text-column, --label-column")]
    names = list(labels) if labels else sorted({label for _, label in rows})
    unknown = {label for _, label in rows} - set(names)
    if unknown:
        raise DataError(f"{path}: labels {sorted(unknown)} are not among {names}")
    return [t for t, _ in rows], [names.index(label) for _, label in rows], names


def split(count: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A fixed shuffled train/test split of range(count) (public)."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    cut = int(round(count * (1 - test_fraction)))
    return sorted(order[:cut]), sorted(order[cut:])


def load_data(config, rank: int, world_size: int):
    """(train texts, train labels) of this owner, (test texts, labels) if rank 0, label names.

    `config` is a mpcft.finetune.FinetuneConfig (or anything with its data fields: train, test,
    text_column, label_column, seed, test_fraction, max_train, split_train). DataError (one
    line for the user) if the files or options leave nothing to learn or test."""
    if config.train:
        texts, labels, names = read_labelled(config.train, config.text_column, config.label_column)
    else:
        texts, labels, names = builtin_dataset(seed=config.seed)
    if config.test:
        test_texts, test_labels, _ = read_labelled(config.test, config.text_column, config.label_column, names)
        train_idx = list(range(len(texts)))
    else:
        train_idx, test_idx = split(len(texts), config.test_fraction, config.seed)
        test_texts, test_labels = [texts[i] for i in test_idx], [labels[i] for i in test_idx]
    max_train = BUILTIN_MAX_TRAIN if config.max_train is None and not config.train else config.max_train
    if max_train:
        train_idx = train_idx[:max_train]
    where = config.train or "the built-in set"
    if len({labels[i] for i in train_idx}) < 2:
        raise DataError(f"{where}: the training examples hold fewer than two labels: "
                        f"nothing to learn")
    if not test_texts:
        raise DataError(f"{where}: no held-out examples to evaluate on (give --test, or a "
                        f"--test-fraction above 0 with enough rows)")
    if config.split_train:
        train_idx = train_idx[rank::world_size]
    if not train_idx:
        raise DataError(f"{where}: party {rank} of {world_size} gets no training examples")
    train = ([texts[i] for i in train_idx], [labels[i] for i in train_idx])
    return train, (test_texts, test_labels) if rank == 0 else None, names


def check_data(config, world_size: int) -> list[int]:
    """Every party's data as load_data reads it, before any party starts (DataError); the
    parties' training-example counts ([] when data owners' share files hold the data)."""
    if config.owner_shares:
        return []
    return [len(load_data(config, rank, world_size)[0][0]) for rank in range(world_size)]


def schedule(counts: list[int], batch_size: int, epochs: int, seed: int):
    """Public batches of (owner, index) pairs, reshuffled every epoch."""
    items = [(owner, i) for owner, count in enumerate(counts) for i in range(count)]
    rng = random.Random(seed)
    batches = []
    for _ in range(epochs):
        rng.shuffle(items)
        batches += [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    return batches
