"""Every script in examples/ runs as it is, on small settings (``--quick``), in a subprocess.

``srfit_pdf_oneline.py`` is run by tests/test_refine_oneline.py; ``make_demo_pattern.py``
rewrites the bundled demo file (its output is checked by the foundation), so it is not run
here.  The measured-data examples read the small files bundled in ``examples/data``, so they
run on a fresh clone without ``$DIFFPY_DIFFUSION_DATA``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
OWNED_ELSEWHERE = {"srfit_pdf_oneline.py"}


def run_example(name: str, *args: str, timeout: float = 900, env: dict | None = None):
    res = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "MPLBACKEND": "Agg", **(env or {})})
    assert res.returncode == 0, f"{name} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def test_every_example_is_covered():
    covered = {"backend_plugin.py", "measured_pdf_nanoparticles.py", "nanocrystal_pxrd_sizes.py",
               "make_demo_pattern.py", "coreshell_one_phase.py"}
    untested = {p.name for p in EXAMPLES.glob("*.py")} - OWNED_ELSEWHERE - covered
    assert not untested, f"examples without a test: {sorted(untested)}"


def test_backend_plugin_is_short_and_runs():
    src = (EXAMPLES / "backend_plugin.py").read_text()
    assert len(src.splitlines()) < 50
    res = run_example("backend_plugin.py", "--quick", timeout=600)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("NaCl")]
    assert lines and lines[0].split()[1] == "rocksalt", res.stdout  # the right prototype ranks first


@pytest.mark.slow
def test_measured_pdf_example(tmp_path):
    res = run_example("measured_pdf_nanoparticles.py", "--quick", "-o", str(tmp_path / "pt"),
                      env={"DIFFPY_DIFFUSION_DATA": ""})  # the bundled examples/data file is enough
    assert "rank 1 is Fm-3m" in res.stdout and ": yes" in res.stdout  # reference structure type at rank 1
    for stem in ("pt_fit", "pt_candidates"):
        for ext in ("png", "svg"):
            assert (tmp_path / "pt" / f"{stem}.{ext}").stat().st_size > 1000
    assert (tmp_path / "pt" / "results.json").is_file()


def test_example_data_is_bundled_with_licences():
    """Every file the examples read is in examples/data, listed in its README with a licence next to it."""
    data = EXAMPLES / "data"
    readme = (data / "README.md").read_text()
    for name in ("Pt-nanoparticles.gr", "CdS_ZnS_nano.gr", "CdS.cif", "ZnS.cif", "ni-q27r60-xray.gr", "ni.cif"):
        assert (data / name).is_file() and f"`{name}`" in readme, name
    for lic in data.glob("LICENSE*"):
        assert f"`{lic.name}`" in readme, lic.name
    assert sum(f.stat().st_size for f in data.iterdir()) <= 2 * 1024**2  # small: a clone stays light


@pytest.mark.parametrize("name", ["measured_pdf_nanoparticles.py", "coreshell_one_phase.py"])
def test_measured_example_missing_file_is_one_line_error(tmp_path, name):
    res = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick", "-o", str(tmp_path / "out"),
                          "--data", str(tmp_path / "nowhere.gr")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.strip() == f"error: {tmp_path / 'nowhere.gr'}: file not found"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_pxrd_sizes_example(tmp_path):
    res = run_example("nanocrystal_pxrd_sizes.py", "--quick", "-o", str(tmp_path / "sizes"), timeout=1200)
    lines = [ln for ln in res.stdout.splitlines() if " nm: rank 1" in ln]
    assert len(lines) == 3
    assert "matches reference: True" in lines[0]  # 10 nm is solved
    for size in ("10", "3", "1"):
        for kind in ("fit", "candidates"):
            assert (tmp_path / "sizes" / f"cdse_{size}nm_{kind}.png").is_file()
            assert (tmp_path / "sizes" / f"cdse_{size}nm_{kind}.svg").is_file()
    assert (tmp_path / "sizes" / "sizes_summary.png").is_file()


def test_plots_png_and_svg(tmp_path):
    """The figure helpers write both formats; tick rows do not break a PDF plot."""
    import numpy as np
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion import plots

    x = np.linspace(10, 80, 200)
    y = np.exp(-0.5 * ((x - 31.7) / 0.5) ** 2)
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    pos = plots.reflection_positions(nacl, wavelength=1.540598, x_range=(10, 80))
    # rock salt reflections from Bragg's law: d = a/sqrt(h²+k²+l²), 2θ = 2 asin(λ/2d); (111) is the first
    d111 = 5.64 / np.sqrt(3)
    assert abs(pos[0] - np.degrees(2 * np.arcsin(1.540598 / (2 * d111)))) < 1e-3
    written = plots.save_figure(plots.fit_figure(x, y, 0.9 * y, ticks=[("NaCl", pos)], rw=0.1), tmp_path / "f")
    assert sorted(p.suffix for p in written) == [".png", ".svg"]
    st = plots.structure_type(nacl)
    assert st["spacegroup"] == "Fm-3m" and st["pearson"] == "cF8" and st["anonymous"] == "AB"
    rows = [{"rank": 1, "formula": "NaCl", "rw": 0.05, **st}, {"rank": 2, "formula": "NaCl", "screen_rwp": 0.4}]
    plots.save_figure(plots.overview_figure(rows), tmp_path / "o.png", formats=("png",))
    assert (tmp_path / "o.png").stat().st_size > 1000


def test_make_demo_pattern_reproduces_bundled_file(tmp_path):
    """The demo's bundled pattern is the project's own simulation: the script remakes it.

    Same seed, but numpy's Poisson sampler consumes a variable number of random numbers per
    draw at large means, so a last-digit change of the forward model redraws every later point:
    the files are compared as two Poisson draws of one ideal pattern (the reduced χ² of their
    difference, variance n_new + n_old, is ≈ 1; a uniform 3 % change of the ideal pattern would
    raise it to about 1.3 at these counts, 5 % to 1.8)."""
    import numpy as np

    out = tmp_path / "demo.xy"
    run_example("make_demo_pattern.py", "-o", str(out), timeout=300)
    bundled = REPO / "diffpy_diffusion" / "examples_data" / "nacl_3nm_cuka.xy"
    new, old = np.loadtxt(out), np.loadtxt(bundled)
    assert new.shape == old.shape and np.array_equal(new[:, 0], old[:, 0])
    d, var = new[:, 1] - old[:, 1], new[:, 1] + old[:, 1] + 1.0
    assert np.mean(d**2 / var) <= 1.2, np.mean(d**2 / var)
    assert np.abs(d / np.sqrt(var)).max() <= 5.5  # no single point off by more than Poisson allows


@pytest.mark.slow
@pytest.mark.acceptance
def test_coreshell_one_phase_example(tmp_path):
    """Minutes on 2 cores: run with ``make acceptance``."""
    import json

    res = run_example("coreshell_one_phase.py", "--quick", "-o", str(tmp_path / "cs"))
    summary = json.loads((tmp_path / "cs" / "summary.json").read_text())
    assert {r["composition"] for r in summary["one_phase"]} == {"CdS", "ZnS"}, res.stdout
    # a single phase can only average the two: its lattice lies between pure ZnS and pure CdS
    assert summary["lattice_between_pure_phases"], res.stdout

