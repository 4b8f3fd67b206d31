"""Shared pytest fixtures.

``shared_data``: the staged data folder (``$DIFFPY_DIFFUSION_DATA`` or
``../shared/data`` next to the repository); tests that need it are skipped with
a clear reason when it is absent (e.g. on a fresh clone elsewhere).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path | None:
    env = os.environ.get("DIFFPY_DIFFUSION_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data", Path("/work/shared/data")]
    for c in candidates:
        if (c / "README.md").exists():
            return c
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; skips the test when the folder is not there."""
    d = _shared_data_dir()
    if d is None:
        pytest.skip("shared data folder not found (set DIFFPY_DIFFUSION_DATA or put it at ../shared/data)")
    return d


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
