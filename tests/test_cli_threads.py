"""``diffpy-diffuse --threads``: one torch/BLAS thread unless the user says otherwise."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "DIFFPY_DIFFUSION_THREADS")


@pytest.fixture
def clean_env(monkeypatch):
    import torch

    for v in VARS:
        monkeypatch.delenv(v, raising=False)
    n = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(n)


def _run(*args):
    from diffpy_diffusion.cli import cli

    return CliRunner().invoke(cli, [*args, "backends"])


def test_default_is_one_thread(clean_env):
    import os

    import torch

    assert _run().exit_code == 0
    assert os.environ["OMP_NUM_THREADS"] == "1" and torch.get_num_threads() == 1


def test_option_and_variable_set_the_count(clean_env):
    import os

    import torch

    assert _run("--threads", "2").exit_code == 0
    assert os.environ["OPENBLAS_NUM_THREADS"] == "2" and torch.get_num_threads() == 2
    clean_env.setenv("DIFFPY_DIFFUSION_THREADS", "3")
    assert _run().exit_code == 0
    assert torch.get_num_threads() == 3


def test_users_omp_num_threads_stands(clean_env):
    import os

    clean_env.setenv("OMP_NUM_THREADS", "4")
    assert _run().exit_code == 0
    assert os.environ["OMP_NUM_THREADS"] == "4" and "MKL_NUM_THREADS" not in os.environ


def test_bad_thread_count_is_a_usage_error(clean_env):
    res = _run("--threads", "0")
    assert res.exit_code == 2 and "--threads" in res.output
