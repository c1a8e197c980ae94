"""The README's several-hosts commands, run as written on loopback: `mpcft certs`, the
README's cluster file (hosts and ports moved to free loopback ones), `mpcft dealer` and one
`mpcft party ... -m mpcft.finetune --train my-own.csv --no-split-train` per rank."""
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

from mpcft.data import builtin_dataset
from mpcft.runtime import free_ports

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SECTION = README.read_text().split("## Running parties on several hosts")[1].split("\n## ")[0]


def mpcft(*args):
    return [sys.executable, "-m", "mpcft.cli", *args]


def readme_cluster_file(folder: pathlib.Path) -> pathlib.Path:
    """The README's TOML block with its hosts and ports replaced by free loopback ones."""
    text = re.search(r"```toml\n(.*?)```", SECTION, re.S).group(1)
    tomllib.loads(text)                                  # the README's file parses as written
    ports = iter(free_ports(3))
    text = re.sub(r'host = "[^"]+"', 'host = "127.0.0.1"', text)
    text = re.sub(r"port = \d+", lambda _: f"port = {next(ports)}", text)
    path = folder / "cluster.toml"
    path.write_text(text)
    return path


def write_csv(path: pathlib.Path, rows: int) -> None:
    texts, labels, names = builtin_dataset(size=rows, seed=3)
    lines = ["sentence,label"] + [f'"{t}",{names[y]}' for t, y in zip(texts, labels)]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.timeout(420)
def test_readme_several_hosts_commands(tmp_path):
    assert "--rank R -m mpcft.finetune --train my-own.csv --no-split-train" in README.read_text()
    certs = re.search(r"^(mpcft certs --out certs -n 2 --dealer) ", SECTION, re.M).group(1).split()[1:]
    subprocess.run(mpcft(*certs, "--host", "127.0.0.1"), cwd=tmp_path, check=True, timeout=60)
    assert not (tmp_path / "certs" / "ca-key.pem").exists()
    config = readme_cluster_file(tmp_path)
    write_csv(tmp_path / "my-own.csv", 40)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    dealer = subprocess.Popen(mpcft("dealer", "--config", "cluster.toml"), cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    parties = [subprocess.Popen(mpcft("party", "--config", "cluster.toml", "--rank", str(rank),
                                      "-m", "mpcft.finetune", "--train", "my-own.csv", "--no-split-train",
                                      "--max-train", "16", "--out", f"run-{rank}"),
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for rank in range(2)]
    try:
        outputs = [p.communicate(timeout=360)[0] for p in parties]
        dealer_output = dealer.communicate(timeout=60)[0]
    finally:
        for process in parties + [dealer]:
            process.kill()
    for party, output in zip(parties, outputs):
        assert party.returncode == 0, output
        assert "Traceback" not in output
    assert dealer.returncode == 0, dealer_output
    assert "accuracy" in outputs[0] and config.exists()
    assert (tmp_path / "run-0" / "summary.json").exists()
