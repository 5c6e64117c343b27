"""End-to-end tests (training runs, subprocesses, benchmarks, the demo): all marked ``slow``.

``make test`` skips them; ``make test-slow`` and CI (``.ci/run``) run them.
"""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.slow)
