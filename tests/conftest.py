"""Shared fixtures. Paths are resolved from the repository root."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Property tests draw the same examples on every run (derandomize), so a failure is
# reproducible and a pass cannot turn into a failure on a later run of unchanged code;
# no example database is written into the checkout, and slow data generation on a loaded
# machine is not an error.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("book", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("book")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Unit tests use tiny tensors: one thread avoids oversubscription stalls on shared
    2-core machines (seen here: 10-20 ms per tiny op with 2 busy threads). Chapter and
    benchmark runs happen in subprocesses and keep torch's default."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say in one line, at the very end, that the browser tests did not run (no Chromium)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "browser" in getattr(r, "keywords", {})]
    if skipped:
        terminalreporter.write_line(
            f"NOTE: {len(skipped)} browser tests were SKIPPED because Chromium is not installed "
            "(sudo apt-get install chromium); CI fails instead of skipping them.", yellow=True, bold=True)
