"""`mpcft flower-app`: the Flower App's project file, and its refusals of settings that would
fail only once the run has started."""
import subprocess
import sys
import time
import tomllib

import pytest

from tests.refusals import assert_refused_in_one_line


def flower_app(args, cwd):
    return subprocess.run([sys.executable, "-m", "mpcft.cli", "flower-app", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_the_app_carries_the_capped_and_local_dp_settings(tmp_path):
    done = flower_app(["--out", "app", "--set", "weighting=capped", "--set", "weight-cap=100", "--set",
                       "clipping-norm=1.0", "--set", "local-noise-multiplier=1.1"], tmp_path)
    assert done.returncode == 0, done.stderr
    config = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert (config["weighting"], config["weight-cap"], config["local-noise-multiplier"]) == ("capped", 100, 1.1)


@pytest.mark.parametrize("settings,message", [
    (["weighting=capped", "clipping-norm=1.0"], "the weight cap must be an integer"),
    (["weighting=capped", "weight-cap=10"], "capped weights need a clipping norm"),
    (["local-noise-multiplier=-1"], "local-noise-multiplier must be a finite number > 0"),
])
def test_bad_settings_are_refused_in_one_line(tmp_path, settings, message):
    started = time.monotonic()
    done = flower_app(["--out", "app"] + sum((["--set", s] for s in settings), []), tmp_path)
    assert_refused_in_one_line(done, "flower-app", message, tmp_path, started)
    assert not (tmp_path / "app").exists()
