"""Atomic, no-overwrite writers; units parsing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from diffpy_diffusion.errors import OutputExistsError
from diffpy_diffusion.io import (
    atomic_write_text,
    parse_size_nm,
    parse_wavelength,
    read_observation,
    write_json,
    write_xy,
)


def test_atomic_write_no_overwrite(tmp_path):
    p = atomic_write_text(tmp_path / "sub" / "a.txt", "one\n")  # parent created
    assert p.read_text() == "one\n"
    with pytest.raises(OutputExistsError) as ei:
        atomic_write_text(p, "two\n")
    assert "--force" in str(ei.value) and str(p) in str(ei.value)
    assert p.read_text() == "one\n"
    atomic_write_text(p, "two\n", force=True)
    assert p.read_text() == "two\n"
    assert sorted(os.listdir(p.parent)) == ["a.txt"]  # no temp files left


def test_atomic_write_failure_leaves_old_file(tmp_path, monkeypatch):
    p = atomic_write_text(tmp_path / "a.txt", "old\n")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(p, "new\n", force=True)
    assert p.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_directory_target_refused(tmp_path):
    with pytest.raises(OutputExistsError, match="directory"):
        atomic_write_text(tmp_path, "x", force=True)


def test_write_json_numpy_and_nan(tmp_path):
    p = write_json({"a": np.arange(3), "b": np.float32(1.5), "c": float("nan"), "d": {1, 2}}, tmp_path / "r.json")
    assert json.loads(p.read_text()) == {"a": [0, 1, 2], "b": 1.5, "c": None, "d": [1, 2]}


def test_write_xy_sigma_roundtrip(tmp_path):
    x = np.linspace(0.5, 8.0, 50)
    y = np.exp(-x)
    s = np.full_like(x, 0.01)
    p = write_xy(x, y, tmp_path / "a.xye", sigma=s, header="line1\nline2", columns=("Q_invA", "I", "sigma"))
    obs = read_observation(p)
    assert obs.x_kind == "q"
    np.testing.assert_allclose(obs.y, y, rtol=1e-7)
    np.testing.assert_allclose(obs.sigma, s)
    with pytest.raises(ValueError):
        write_xy(x, y[:-1], tmp_path / "b.xy")


@pytest.mark.parametrize("text,l1,l2", [
    ("1.5406", 1.5406, None), ("0.1839A", 0.1839, None), ("CuKa", 1.540598, 1.544426),
    ("Cu", 1.540598, 1.544426), ("CuKa1", 1.540598, None), ("mo k-alpha", 0.709319, 0.713609),
    ("0.15nm", 1.5, None),
])
def test_parse_wavelength(text, l1, l2):
    w = parse_wavelength(text)
    assert float(w) == pytest.approx(l1)
    assert (w.wavelength2 is None) if l2 is None else w.wavelength2 == pytest.approx(l2)


@pytest.mark.parametrize("bad", ["XyKa", "abc", "-1", "100"])
def test_parse_wavelength_errors(bad):
    with pytest.raises(ValueError):
        parse_wavelength(bad)


@pytest.mark.parametrize("text,nm", [("3nm", 3.0), ("30A", 3.0), ("30 Å", 3.0), ("2.5", 2.5), (4, 4.0),
                                      ("0.1um", 100.0)])
def test_parse_size(text, nm):
    assert parse_size_nm(text) == pytest.approx(nm)


@pytest.mark.parametrize("bad", ["3 parsecs", "-3nm", "0", "nm"])
def test_parse_size_errors(bad):
    with pytest.raises(ValueError):
        parse_size_nm(bad)
