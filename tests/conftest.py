"""Shared pytest fixtures.

``shared_data``: the datasets folder named by ``$DIFFPY_DIFFUSION_DATA`` (mp20/, mpts_52/,
perov_5/, measured/, ...; see docs/design.md), found through
:func:`diffpy_diffusion.datasets.data_dir`.  Tests that need it skip with a reason saying
which variable to set when it is not set (a fresh clone); the bundled ``examples/data``
files need nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_energy_switch():
    """``--no-energy`` sets ``$DIFFPY_DIFFUSION_ENERGY`` in the process (for worker processes to
    inherit); a CLI test run in-process must not leave it set for the tests after it (it turned the
    energy plugin off for the plugin's own tests)."""
    before = os.environ.get("DIFFPY_DIFFUSION_ENERGY")
    yield
    if before is None:
        os.environ.pop("DIFFPY_DIFFUSION_ENERGY", None)
    else:
        os.environ["DIFFPY_DIFFUSION_ENERGY"] = before


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The datasets folder (``$DIFFPY_DIFFUSION_DATA``); skips the test when it is not set or not there."""
    from diffpy_diffusion.datasets import DATA_ENV, data_dir
    from diffpy_diffusion.errors import NotAvailableError

    if not os.environ.get(DATA_ENV):
        pytest.skip(f"set {DATA_ENV} to the datasets folder (mp20/, measured/, ...) to run this test")
    try:
        return data_dir()
    except NotAvailableError as exc:  # set, but not a datasets folder: say what is wrong
        pytest.skip(str(exc))


@pytest.fixture
def fresh_plugins(monkeypatch):
    """Reset the plugin manager before and after a test (for env-var allow/deny tests)."""
    from diffpy_diffusion import plugins

    plugins.reset()
    yield plugins
    plugins.reset()


@pytest.fixture
def repo_root() -> Path:
    return REPO
