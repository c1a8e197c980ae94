"""A user's data mistakes: one line and exit status 2 from `mpcft finetune`, before any party
starts; a user's own file trains on all of its rows."""
import argparse
import re
import subprocess
import sys
import time

import pytest

from mpcft.data import DataError, load_data, read_labelled
from mpcft.finetune import FinetuneConfig
from mpcft.finetune.config import add_arguments
from tests.refusals import assert_refused_in_one_line

BAD_FILES = {
    "missing.csv": (None, "cannot read it: No such file or directory"),
    "empty.csv": (b"sentence,label\n", "no rows below the header"),
    "one-class.csv": (b"sentence,label\n" + b"".join(b'"text %d",pos\n' % i for i in range(10)),
                      "fewer than two labels"),
    "columns.csv": (b'text,label\n"a",pos\n', "no column(s) ['sentence']"),
    "latin1.csv": (b"sentence,label\n\xe9t\xe9,pos\nhiver,neg\n", "not UTF-8 text"),
    "folder": ("dir", "cannot read it"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_bad_training_file_gets_one_line_before_any_party_starts(tmp_path, name):
    content, message = BAD_FILES[name]
    if content == "dir":
        (tmp_path / name).mkdir()
    elif content is not None:
        (tmp_path / name).write_bytes(content)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mpcft.cli", "finetune", "--train", name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=100)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("mpcft finetune: error:"), lines
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "runs").exists()          # nothing started, nothing written
    assert time.monotonic() - start < 60


BAD_OPTIONS = {
    ("--seq-len", "1000"): "--seq-len 1000 is beyond the model's 512 positions",
    ("--layers", "9"): "--layers 9 is more than the model's 6 layers",
    ("--lr", "0"): "--lr must be > 0",
    ("--batch-size", "0"): "--batch-size must be at least 1",
    ("--epochs", "0"): "--epochs must be at least 1",
    ("--test-fraction", "1.5"): "--test-fraction must be in [0, 1)",
    ("--momentum", "1"): "--momentum must be in [0, 1)",
    ("--max-train", "-3"): "--max-train must be >= 0",
    ("--model", "."): "not a BERT-family model folder",
}


def test_options_out_of_range_are_refused_in_one_line(tmp_path):
    from mpcft.finetune.config import ConfigError
    for argv, message in BAD_OPTIONS.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            options(*argv).check(2)
    with pytest.raises(ConfigError, match="--parties must be at least 2"):
        options().check(1)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mpcft.cli", "finetune", "--seq-len", "1000"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=100)
    assert_refused_in_one_line(done, "finetune", BAD_OPTIONS[("--seq-len", "1000")], tmp_path, start)


def options(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return FinetuneConfig.from_args(parser.parse_args(list(argv)))


def test_own_file_trains_on_every_row_and_the_built_in_set_on_160(tmp_path):
    rows = "".join(f'"text {i}",{"pos" if i % 2 else "neg"}\n' for i in range(500))
    (tmp_path / "data.csv").write_text("sentence,label\n" + rows)
    texts, _ = load_data(options("--train", str(tmp_path / "data.csv")), 0, 1)[0]
    assert len(texts) == 400                                   # 500 minus the 20 % held out
    assert len(load_data(options("--train", str(tmp_path / "data.csv"), "--max-train", "50"), 0, 1)[0][0]) == 50
    assert len(load_data(options(), 0, 1)[0][0]) == 160


def test_a_party_without_examples_and_no_test_split_are_refused(tmp_path):
    (tmp_path / "tiny.csv").write_text('sentence,label\n"a",pos\n"b",neg\n"c",pos\n"d",neg\n"e",pos\n')
    with pytest.raises(DataError, match="party 4 of 5 gets no training examples"):
        load_data(options("--train", str(tmp_path / "tiny.csv")), 4, 5)
    with pytest.raises(DataError, match="no held-out examples"):
        load_data(options("--train", str(tmp_path / "tiny.csv"), "--test-fraction", "0"), 0, 1)
    with pytest.raises(DataError, match="not among"):
        read_labelled(tmp_path / "tiny.csv", "sentence", "label", labels=["pos"])


@pytest.mark.parametrize("argv", [["finetune", "--train", "missing.csv"], ["finetune", "--help"], ["certs", "--help"]])
def test_the_cli_checks_options_without_loading_transformers(tmp_path, argv):
    """Only the command asked for loads its modules (mpcft.cli.COMMANDS): finetune's checks and
    help, and the lighter commands, never import transformers (seconds of a user's wait)."""
    probe = ("import sys\nfrom mpcft.cli import main\ntry:\n    status = main(sys.argv[1:])\n"
             "except SystemExit as exit:\n    status = exit.code\nprint('status', status, 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=tmp_path)
    assert done.stdout.strip().splitlines()[-1] == f"status {2 if 'missing.csv' in argv else 0} False", done
