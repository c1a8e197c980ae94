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


def plaintext_training_losses(steps: int = 10) -> list[float]:
    """The README's training example in float64 torch: same initial weights, data and SGD."""
    gen = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(8, 4, generator=gen) / 2, torch.randn(2, 8, generator=gen) / 3
    layers = [torch.nn.Linear(4, 8).double(), torch.nn.Linear(8, 2).double()]
    with torch.no_grad():
        for layer, w in zip(layers, (w1, w2)):
            layer.weight.copy_(w)
            layer.bias.zero_()
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(32, 4, generator=gen).double()
    labels = (features[:, 0] > features[:, 1]).long()
    model = torch.nn.Sequential(layers[0], torch.nn.GELU(), layers[1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.timeout(240)
def test_readme_training_example(tmp_path):
    """The second example trains through mpcft.nn and loss.backward() as plain torch does:
    every step's loss within 2e-3 of the same training in float64 torch."""
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[1]
    (tmp_path / "train.py").write_text(code)
    done = subprocess.run([sys.executable, "-m", "mpcft.cli", "launch", "-n", "3", "--dealer", "train.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout + done.stderr
    got = [float(v) for v in re.findall(r"step \d+ loss ([0-9.]+)", done.stdout)]
    want = plaintext_training_losses()
    assert len(got) == len(want), done.stdout
    assert max(abs(g - w) for g, w in zip(got, want)) < 2e-3, (got, want)
    assert got[-1] < got[0] / 5
