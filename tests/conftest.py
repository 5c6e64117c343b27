import os

# Triton kernels are tested on CPU through Triton's interpreter, and `@triton.jit` reads this when a
# kernel module is imported, so it must be set before any test imports qcompile. It concerns Triton
# kernels only; Inductor's CPU code generation does not read it.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: no Dynamo cache entries leak between tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
