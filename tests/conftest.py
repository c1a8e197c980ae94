import pathlib

import pytest
import torch

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def shared_dir():
    """../shared beside the checkout; tests that need it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (data sets and notes live beside the checkout)")
    return SHARED


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: the GPU variant runs where one is lent"))])
def device(request):
    """Where the test's party programs keep their shares (they take it as an argument);
    tests.devices.to_cpu brings their results back for the float64 checks."""
    return request.param

