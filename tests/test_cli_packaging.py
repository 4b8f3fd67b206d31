"""Packaging and the two-command setup: README, Makefile stamp, .ci/run, constraints."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_readme_starts_with_two_commands():
    text = (REPO / "README.md").read_text()
    block = re.search(r"```console\n(.*?)```", text, re.S).group(1)
    commands = [ln.split("#")[0].strip() for ln in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert text.index("make demo") < 200


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    code = [ln for ln in ci.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert any(ln.strip() == "exec make test" for ln in code)
    assert os.access(REPO / ".ci" / "run", os.X_OK)


def test_constraints_pin_known_good_versions():
    pins = dict(ln.split("==", 1) for ln in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in ln and not ln.startswith("#"))
    assert pins["torch"] == "2.13.0"
    assert pins["diffpy.pdffit2"] == "1.5.1"
    assert "six" in pins


def test_pyproject_entry_points():
    import tomllib

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "diffpy-diffusion"
    assert meta["project"]["scripts"]["diffpy-diffuse"] == "diffpy_diffusion.cli:main"
    deps = " ".join(meta["project"]["dependencies"])
    for d in ("numpy", "scipy", "torch", "pymatgen", "spglib", "pluggy", "click", "rich", "diffpy.structure",
              "diffpy.srfit", "diffpy.pdffit2", "six"):
        assert d in deps
    ex = tomllib.loads((REPO / "plugins/diffpy-diffusion-example/pyproject.toml").read_text())
    assert ex["project"]["entry-points"]["diffpy_diffusion"]["example"] == "diffpy_diffusion_example.plugin"


def test_demo_pattern_is_bundled():
    from diffpy_diffusion.io import read_observation

    obs = read_observation(REPO / "diffpy_diffusion/examples_data/nacl_3nm_cuka.xy")
    assert obs.x_kind == "2theta" and obs.wavelength2 is not None
    # strongest NaCl reflection (200) near 31.7° for Cu Kα1 and a = 5.64 Å
    import numpy as np

    d200 = 5.6402 / 2
    expected = 2 * np.degrees(np.arcsin(1.540598 / (2 * d200)))
    assert abs(obs.x[np.argmax(obs.y)] - expected) < 0.4


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_skips_install_when_stamp_matches(tmp_path):
    files = [REPO / "pyproject.toml", REPO / "constraints.txt"] + sorted(REPO.glob("plugins/*/pyproject.toml"))
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / ".diffpy-diffusion-installed").write_text(digest + "\n")
    out = subprocess.run(["make", "-s", "-C", str(REPO), "venv", f"VENV={venv}"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout and digest in out.stdout
