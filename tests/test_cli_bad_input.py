"""``diffpy-diffuse propose`` on bad input (issue 5, "Bad input"): a clear message, partial results kept,
exit status 2 only where nothing could be produced, and Ctrl-C keeping the finished candidates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from diffpy_diffusion.cli import cli

EXE = Path(sys.executable).with_name("diffpy-diffuse")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DIFFPY_DIFFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def run(args):
    return CliRunner().invoke(cli, args)


def _write_xy(path: Path, x, y) -> Path:
    path.write_text("# 2theta intensity\n" + "".join(f"{a:.3f} {b:.6f}\n" for a, b in zip(x, y)))
    return path


@pytest.fixture(scope="module")
def nacl_pattern(tmp_path_factory):
    """Rock-salt NaCl, Cu Kα1, 3 nm crystallites, 1 % noise, 15-80° in 0.1° steps (the physics module's own)."""
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.testing import noisy_pxrd

    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    obs = noisy_pxrd(s, two_theta_deg=(15.0, 80.0, 0.1), ka2=False)
    x, y = obs.x, obs.y
    d = tmp_path_factory.mktemp("patterns")
    return SimpleNamespace(path=_write_xy(d / "nacl.xy", x, y), x=x, y=y, dir=d)


def _propose_args(data, out=None, *extra, composition="NaCl", backend="templates"):
    args = ["propose", str(data), "-c", composition, "-w", "CuKa", "--backend", backend, "--n", "20", "--top", "2",
            "--seed", "1", "-q", *extra]
    return args + (["-o", str(out)] if out is not None else [])


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: ") and "Traceback" not in stderr
    return lines[0]


# --------------------------------------------------------------------------- nothing can be produced: exit 2


@pytest.mark.parametrize("backend", ["templates", "random"])
def test_composition_over_atom_cap(nacl_pattern, tmp_path, backend):
    """24 atoms in the formula unit Na11Cl13 > --max-atoms 20: no backend can build it."""
    out = tmp_path / "res"
    res = run(_propose_args(nacl_pattern.path, out, composition="Na11Cl13", backend=backend))
    assert res.exit_code == 2, res.output
    line = _one_error_line(res.stderr)
    assert "Na11Cl13" in line and "24" in line and "20" in line and "--max-atoms" in line
    assert not out.exists()  # nothing written, not even an empty folder


@pytest.mark.parametrize("backend", ["templates", "random"])
def test_composition_over_lowered_atom_cap(nacl_pattern, tmp_path, backend):
    res = run(_propose_args(nacl_pattern.path, tmp_path / "res", "--max-atoms", "4", composition="BaTiO3",
                            backend=backend))
    assert res.exit_code == 2, res.output
    line = _one_error_line(res.stderr)
    assert "BaTiO3" in line and "at most 4 atoms" in line and "found 5 atoms" in line and "--max-atoms 5" in line
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("composition, symbol", [("Xx2O3", "'Xx'"), ("Nacl", "'c'")])
def test_unknown_element(nacl_pattern, tmp_path, composition, symbol):
    res = run(_propose_args(nacl_pattern.path, tmp_path / "res", composition=composition))
    assert res.exit_code == 2, res.output
    line = _one_error_line(res.stderr)
    assert composition in line and symbol in line and "--composition" in line
    assert "Usage:" not in res.stderr
    assert not (tmp_path / "res").exists()


def test_pattern_too_short_to_read(nacl_pattern, tmp_path):
    """Two data rows: nothing can be screened or refined."""
    data = _write_xy(tmp_path / "two.xy", nacl_pattern.x[:2], nacl_pattern.y[:2])
    res = run(_propose_args(data, tmp_path / "res"))
    assert res.exit_code == 2, res.output
    line = _one_error_line(res.stderr)
    assert "two.xy" in line and "expected at least" in line
    assert not (tmp_path / "res").exists()


# --------------------------------------------------------------------------- partial results: exit 0


def _results(out: Path) -> dict:
    doc = json.loads((out / "results.json").read_text())
    for c in doc["candidates"]:
        assert (out / c["cif"]).stat().st_size > 0
    return doc


def test_pattern_too_short_to_refine_keeps_screened(nacl_pattern, tmp_path):
    """5 points: screening works, refinement cannot; the screened candidates are written, exit 0."""
    idx = np.linspace(0, len(nacl_pattern.x) - 1, 5).astype(int)
    data = _write_xy(tmp_path / "five.xy", nacl_pattern.x[idx], nacl_pattern.y[idx])
    out = tmp_path / "res"
    res = run(_propose_args(data, out))
    assert res.exit_code == 0, res.output
    assert "warning:" in res.stderr and "too short to refine" in res.stderr and "Traceback" not in res.stderr
    assert "not refined" in res.stdout
    doc = _results(out)
    assert doc["interrupted"] is False and doc["candidates"]
    for c in doc["candidates"]:
        assert c["rw"] is None and "too short to refine" in c["provenance"]["refine_error"]
        assert c["screen_rwp"] is not None


def _fake_result(observation, structure, *, n_params=1, converged=True, message=""):
    return SimpleNamespace(structure=structure, rw=0.1, chi2=1.0,
                           params={f"p{k}": {"value": 1.0, "esd": 0.01} for k in range(n_params)},
                           spacegroup="Fm-3m", spacegroup_number=225, converged=converged, message=message,
                           engine="fake", x=observation.x, y_obs=observation.y, y_calc=observation.y)


def test_fewer_points_than_parameters_keeps_screened(nacl_pattern, tmp_path, monkeypatch):
    """A fit that refines as many parameters as it has points means nothing: kept unrefined, with the reason."""
    import diffpy_diffusion.refine as R

    idx = np.linspace(0, len(nacl_pattern.x) - 1, 12).astype(int)
    data = _write_xy(tmp_path / "twelve.xy", nacl_pattern.x[idx], nacl_pattern.y[idx])
    monkeypatch.setattr(R, "refine_structure", lambda obs, s, **kw: _fake_result(obs, s, n_params=16))
    out = tmp_path / "res"
    res = run(_propose_args(data, out))
    assert res.exit_code == 0, res.output
    assert "12 points in the fit range for 16 refined parameters" in res.stderr
    for c in _results(out)["candidates"]:
        assert c["rw"] is None and "16 refined parameters" in c["provenance"]["refine_error"]


def test_non_converging_fit_keeps_candidates(nacl_pattern, tmp_path, monkeypatch):
    """One fit raises, one stops unconverged: both candidates are kept and reported, exit 0."""
    import diffpy_diffusion.refine as R

    first: list = []

    def fake(observation, structure, **kw):
        if not first or first[0] is structure:  # every fit of the first candidate fails
            first[:] = [structure]
            raise RuntimeError("least squares did not converge (singular Jacobian)")
        return _fake_result(observation, structure, converged=False, message="stage ['adp'] hit max_nfev=20")

    monkeypatch.setattr(R, "refine_structure", fake)
    out = tmp_path / "res"
    res = run(_propose_args(nacl_pattern.path, out))
    assert res.exit_code == 0, res.output
    assert "singular Jacobian" in res.stderr and "screened structure is kept" in res.stderr
    assert "not refined" in res.stdout and "not converged" in res.stdout and "max_nfev=20" in res.stdout
    cands = _results(out)["candidates"]
    assert len(cands) == 2
    failed = [c for c in cands if c["provenance"].get("refine_error")]
    unconverged = [c for c in cands if c["provenance"].get("refine_converged") is False]
    assert len(failed) == 1 and len(unconverged) == 1
    assert failed[0]["rw"] is None and "singular Jacobian" in failed[0]["provenance"]["refine_error"]
    assert unconverged[0]["rw"] == pytest.approx(0.1)
    assert "max_nfev" in unconverged[0]["provenance"]["refine_message"]
    # --json carries the same notes
    first.clear()
    res = run(_propose_args(nacl_pattern.path, None, "--json"))
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["candidates"]
    assert sum("refine_error" in r for r in rows) == 1 and sum(r.get("refine_converged") is False for r in rows) == 1


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_hidden_by_library_error_still_interrupts(nacl_pattern, tmp_path, monkeypatch):
    """diffpy.srfit's ``Constraint._validate`` turns a Ctrl-C into UnboundLocalError (its ``finally`` reads an
    unset name): that must stop the run like a Ctrl-C, not count as one failed fit."""
    import diffpy_diffusion.refine as R

    calls: list = []

    def fake(observation, structure, **kw):
        calls.append(structure)
        if len(calls) == 1:
            return _fake_result(observation, structure)
        try:  # the srfit pattern, with the signal arriving inside eq()
            val = (_ for _ in ()).throw(KeyboardInterrupt)
        finally:
            if val is None:  # unbound on purpose, as in srfit
                pass

    monkeypatch.setattr(R, "refine_structure", fake)
    out = tmp_path / "res"
    # AFLOW's rock salt first: one refinement call for the first candidate (a lower-symmetry cell
    # of the shipped pool takes two, its symmetrised and its own-group fit)
    res = run(_propose_args(nacl_pattern.path, out, "--library", "aflow"))
    assert res.exit_code == 130, res.output
    assert "Interrupted" in res.stderr and "Traceback" not in res.stderr
    doc = _results(out)
    assert doc["interrupted"] is True and doc["candidates"][0]["rw"] == pytest.approx(0.1)
    assert not any("UnboundLocalError" in str(c["provenance"].get("refine_error")) for c in doc["candidates"])


@pytest.mark.slow
def test_ctrl_c_keeps_finished_candidates(nacl_pattern, tmp_path):
    """A real SIGINT to a running ``diffpy-diffuse propose`` once one candidate is refined: exit 130,
    results.json says ``"interrupted": true`` and every file it lists exists."""
    out = tmp_path / "res"
    exe = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "diffpy_diffusion"]
    cmd = exe + ["propose", str(nacl_pattern.path), "-c", "NaCl", "-w", "CuKa", "--backend", "templates",
                 "--n", "20", "--top", "5", "--seed", "1", "-q", "-o", str(out)]
    env = {**os.environ, "DIFFPY_DIFFUSION_CACHE": str(nacl_pattern.dir / "cache")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        refined = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                doc = json.loads((out / "results.json").read_text())
                refined = any(c["rw"] is not None for c in doc["candidates"])
            except (OSError, ValueError, KeyError):
                refined = False
            if refined:
                break
            time.sleep(0.2)
        if proc.poll() is not None:
            pytest.skip(f"propose finished (status {proc.returncode}) before the signal could land")
        assert refined, "no refined candidate within 240 s"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if proc.returncode == 0:
        pytest.skip("propose finished before the signal landed")
    assert proc.returncode == 130, stderr
    assert "Interrupted" in stderr and str(out) in stderr and "Traceback" not in stderr
    doc = _results(out)  # checks that every listed rankNN.cif exists
    assert doc["interrupted"] is True
    assert any(c["rw"] is not None for c in doc["candidates"])
    assert [c["rank"] for c in doc["candidates"]] == list(range(1, len(doc["candidates"]) + 1))
    # no stale rank files from an earlier checkpoint
    assert sorted(f.name for f in out.glob("rank*.cif")) == sorted(c["cif"] for c in doc["candidates"])
