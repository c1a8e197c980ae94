"""The README's example program runs as written through `mpcft launch` (real processes, TLS)."""
import pathlib
import re
import subprocess
import sys

import pytest
import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.timeout(240)
def test_readme_example_program(tmp_path):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "dot.py").write_text(code)
    done = subprocess.run([sys.executable, "-m", "mpcft.cli", "launch", "-n", "3", "--dealer", "dot.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout + done.stderr
    total = sum(torch.arange(4.0) * (r + 1) / 4 for r in range(3))
    want = torch.softmax(total * torch.arange(4.0) / 4, 0)
    lines = [l for l in done.stdout.splitlines() if "tensor(" in l]
    assert len(lines) == 3
    for line in lines:
        got = torch.tensor([float(v) for v in re.search(r"tensor\(\[(.*?)\]", line).group(1).split(",")])
        assert (got - want).abs().max() < 1e-3, line
