import os

import numpy as np
import pytest
import torch

import graphrerank


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default=os.environ.get("GRAPHRERANK_TEST_DEVICE", "cpu,cuda"),
        help="comma-separated devices for tests that take a 'device' argument (cpu, cuda)",
    )


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        wanted = metafunc.config.getoption("--device").split(",")
        params = []
        if "cpu" in wanted:
            params.append(pytest.param("cpu", id="cpu"))
        if "cuda" in wanted:
            params.append(
                pytest.param(
                    "cuda",
                    id="cuda",
                    marks=[
                        pytest.mark.gpu,
                        pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"),
                    ],
                )
            )
        metafunc.parametrize("device", params)


@pytest.fixture(autouse=True)
def _exact_float32():
    # TF32 would break float32 comparisons on Ampere+ GPUs.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace.update(torch=torch, np=np, graphrerank=graphrerank)
