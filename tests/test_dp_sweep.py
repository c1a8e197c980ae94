"""`mpcft dp-sweep`: one non-private run and one DP run per target epsilon, a table, JSON and a plot."""
import json
import subprocess
import sys

import pytest

from mpcft.finetune import FinetuneConfig
from mpcft.finetune.config import ConfigError
from mpcft.finetune.sweep import sweep_configs


def test_the_sweep_runs_non_private_first_then_each_epsilon_once(tmp_path):
    runs = sweep_configs(FinetuneConfig(out=str(tmp_path)), [8.0, 1.0, 8.0])
    assert [target for target, _ in runs] == [None, 1.0, 8.0]
    assert [c.dp for _, c in runs] == [False, True, True]
    assert [c.out for _, c in runs] == [str(tmp_path / d) for d in ("non-private", "eps-1", "eps-8")]
    with pytest.raises(ConfigError, match="sets --dp"):
        sweep_configs(FinetuneConfig(dp=True), [1.0])
    with pytest.raises(ConfigError, match="> 0"):
        sweep_configs(FinetuneConfig(), [-1.0])


@pytest.mark.timeout(600)
def test_dp_sweep_end_to_end(tmp_path):
    out = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-m", "mpcft.cli", "dp-sweep", "--epsilons", "8", "--mode", "head",
                           "--max-train", "24", "--batch-size", "8", "--plaintext-baseline", "--out", str(out)],
                          capture_output=True, text=True, timeout=550)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((out / "sweep.json").read_text())
    assert [r["target epsilon"] for r in rows] == [None, 8.0]
    assert rows[1]["epsilon"] <= 8.0 and rows[1]["noise multiplier"] > 0
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["Opacus accuracy"] <= 1 for r in rows)
    assert "| none (non-private) |" in (out / "sweep.md").read_text()
    assert (out / "sweep.png").stat().st_size > 5000
    assert (out / "eps-8" / "summary.json").exists() and (out / "non-private" / "model").is_dir()
