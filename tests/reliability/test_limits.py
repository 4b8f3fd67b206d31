"""Resource caps: each has a clear message naming the option/variable that raises it, and is enforced."""

from __future__ import annotations

import numpy as np
import pytest

from diffpy_diffusion import limits
from diffpy_diffusion.errors import DiffpyDiffusionError, ResourceLimitError


@pytest.mark.parametrize("cap", limits.ALL_CAPS, ids=lambda c: c.name)
def test_cap_message_names_how_to_raise(cap, monkeypatch):
    monkeypatch.delenv(cap.env, raising=False)
    check = {limits.ATOMS_PER_CELL: limits.check_atoms_per_cell, limits.PATTERN_POINTS: limits.check_pattern_points,
             limits.DEBYE_ATOMS: limits.check_debye_atoms, limits.CANDIDATES: limits.check_candidates}[cap]
    assert check(cap.default) == cap.default
    with pytest.raises(ResourceLimitError) as ei:
        check(cap.default + 1)
    msg = str(ei.value)
    assert cap.env in msg and f"{cap.default:,}" in msg
    if cap.option:
        assert cap.option in msg
    assert isinstance(ei.value, DiffpyDiffusionError) and "\n" not in msg
    # raising the cap through the environment lets it pass
    monkeypatch.setenv(cap.env, str(cap.default * 2))
    assert check(cap.default + 1) == cap.default + 1


@pytest.mark.parametrize("bad", ["abc", "-5", "0"])
def test_bad_env_value_is_a_clean_error(monkeypatch, bad):
    monkeypatch.setenv("DIFFPY_DIFFUSION_MAX_ATOMS", bad)
    with pytest.raises(ResourceLimitError, match="DIFFPY_DIFFUSION_MAX_ATOMS"):
        limits.check_atoms_per_cell(3)


def test_pattern_reader_enforces_points_cap(tmp_path, monkeypatch):
    from diffpy_diffusion.io import read_observation

    monkeypatch.setenv("DIFFPY_DIFFUSION_MAX_PATTERN_POINTS", "50")
    p = tmp_path / "long.xy"
    p.write_text("# 2theta I\n" + "".join(f"{10 + 0.01 * i:.3f} {i}\n" for i in range(51)))
    with pytest.raises(ResourceLimitError, match="DIFFPY_DIFFUSION_MAX_PATTERN_POINTS") as ei:
        read_observation(p)
    assert str(p) in str(ei.value)
    p.write_text("# 2theta I\n" + "".join(f"{10 + 0.01 * i:.3f} {i}\n" for i in range(50)))
    assert len(read_observation(p).x) == 50


def test_many_tiny_lines_are_refused_before_splitting(tmp_path, monkeypatch):
    """A file of millions of line breaks is refused from a count, before it is split into lines."""
    from diffpy_diffusion.io import read_observation

    monkeypatch.setenv("DIFFPY_DIFFUSION_MAX_PATTERN_POINTS", "1000")
    p = tmp_path / "lines.xy"
    p.write_bytes(b"1 2\n3 4\n5 6\n" + b"\n" * 50_000)
    with pytest.raises(ResourceLimitError, match="lines"):
        read_observation(p)


def test_wide_rows_count_against_the_cap(tmp_path, monkeypatch):
    from diffpy_diffusion.io import read_observation

    monkeypatch.setenv("DIFFPY_DIFFUSION_MAX_PATTERN_POINTS", "40")
    p = tmp_path / "wide.xy"
    p.write_text("# 2theta I\n" + "".join(f"{10 + i} " + " 1" * 30 + "\n" for i in range(10)))
    with pytest.raises(ResourceLimitError):
        read_observation(p)


def test_debye_cluster_cap(monkeypatch):
    import torch

    from diffpy_diffusion.physics import debye

    monkeypatch.setenv("DIFFPY_DIFFUSION_MAX_DEBYE_ATOMS", "100")
    pos = torch.rand(101, 3, dtype=torch.float64) * 20
    num = torch.full((101,), 28)
    with pytest.raises(ResourceLimitError, match="DIFFPY_DIFFUSION_MAX_DEBYE_ATOMS"):
        debye.debye_iq(pos, num, torch.linspace(1, 5, 10, dtype=torch.float64))
    assert debye.debye_iq(pos[:100], num[:100], torch.linspace(1, 5, 10, dtype=torch.float64)).shape[-1] == 10


def test_candidate_cap_checked_before_any_work(tmp_path, monkeypatch):
    from diffpy_diffusion import pipeline
    from diffpy_diffusion.types import Observation

    monkeypatch.setenv("DIFFPY_DIFFUSION_MAX_CANDIDATES", "10")
    obs = Observation(kind="xrd", x=np.linspace(10, 80, 50), y=np.ones(50), x_kind="2theta", composition="NaCl",
                      wavelength=1.54)
    with pytest.raises(ResourceLimitError, match="--n.*DIFFPY_DIFFUSION_MAX_CANDIDATES"):
        pipeline.propose(obs, backend="example", n=11, top=1, output_dir=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists(), "work started before the cap was checked"


def test_atoms_per_cell_cap_on_max_atoms(tmp_path, monkeypatch):
    from diffpy_diffusion import pipeline
    from diffpy_diffusion.types import Observation

    obs = Observation(kind="xrd", x=np.linspace(10, 80, 50), y=np.ones(50), x_kind="2theta", composition="NaCl",
                      wavelength=1.54, max_atoms=500)
    with pytest.raises(ResourceLimitError, match="--max-atoms"):
        pipeline.propose(obs, backend="example", n=2, top=1, progress=False)


def test_backend_says_which_option_raises_the_atom_cap():
    """A composition whose formula unit does not fit --max-atoms: the message names --max-atoms."""
    from diffpy_diffusion import plugins
    from diffpy_diffusion.types import Observation

    obs = Observation(kind="xrd", x=np.linspace(10, 80, 50), y=np.ones(50), x_kind="2theta",
                      composition="Ba11Ti7O31", wavelength=1.54, max_atoms=20)
    with pytest.raises(DiffpyDiffusionError, match="max-atoms|max_atoms"):
        plugins.get_backend("random").sample(obs, 2, seed=0)


def test_cli_reports_cap_in_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from diffpy_diffusion.cli import cli

    monkeypatch.setenv("DIFFPY_DIFFUSION_MAX_PATTERN_POINTS", "10")
    p = tmp_path / "a.xy"
    p.write_text("# 2theta I\n" + "".join(f"{10 + i} {i}\n" for i in range(20)))
    res = CliRunner().invoke(cli, ["propose", str(p), "-c", "NaCl", "--backend", "example", "--quiet"])
    assert res.exit_code == 2
    out = res.stderr if getattr(res, "stderr", None) is not None else res.output
    assert "DIFFPY_DIFFUSION_MAX_PATTERN_POINTS" in out and "Traceback" not in out
