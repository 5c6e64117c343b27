# Triton kernels are tested on CPU through Triton's interpreter (or on a GPU with
# QCOMPILE_TEST_DEVICE=cuda); the choice sets TRITON_INTERPRET, which must happen before any test
# imports qcompile (and so Triton): see tests/kernel_device.py.
# isort: off
import tests.kernel_device  # noqa: F401
# isort: on

import pytest
import torch

# The whole package, imported up front: pytest-xdist's controller re-imports the module of each
# warning a worker reports (e.g. `HighPrecisionGemmWarning`), and that import must not be the
# first one of qcompile in the controller.
import qcompile  # noqa: F401


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: no Dynamo cache entries leak between tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
