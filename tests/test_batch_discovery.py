"""propose-batch folder discovery: the registered readers decide which files are patterns.

A small reader plugin for a made-up ``.foo`` format (two columns, 2θ in degrees and
intensity) is registered through the same hook as third-party plugins; its files must be
found, and the JSON files our own runs write must not be taken for saved Observations.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from diffpy_diffusion import batch, hookimpl
from diffpy_diffusion.errors import InputFileError, PluginError
from diffpy_diffusion.io import write_json, write_xy
from diffpy_diffusion.types import Observation

#: Cu Kα1 (Å), the wavelength the fake ``.foo`` format implies.
CU_KA1 = 1.540598

CHEAP = dict(backend="example", n=2, top=1, seed=3, screen_only=True, screen_options={"gradient_steps": 0},
             progress=False)


def read_foo(path, *, kind=None, x_kind=None, wavelength=None, radiation=None, composition=None, **fields):
    """The fake format: whitespace columns 2θ (degrees), intensity; Cu Kα1 unless told otherwise."""
    data = np.loadtxt(path, ndmin=2)
    return Observation(kind="xrd", x=data[:, 0], y=data[:, 1], x_kind="2theta", wavelength=wavelength or CU_KA1,
                       composition=composition, source=str(path), **fields)


class FooReaderPlugin:
    """A third-party reader plugin, registered in the test instead of through an entry point."""

    @staticmethod
    @hookimpl
    def register_readers(register):
        register("foo", read_foo, extensions=(".foo",), kind="xrd")


class BadAcceptsPlugin:
    @staticmethod
    @hookimpl
    def register_readers(register):
        register("bar", read_foo, extensions=(".bar",), accepts="yes please")


@pytest.fixture
def foo_plugin(fresh_plugins):
    fresh_plugins.get_plugin_manager().register(FooReaderPlugin(), name="foo-reader")
    return fresh_plugins


def nacl_pattern():
    """(2θ in degrees, intensity) of rock-salt NaCl, from pymatgen's XRD calculator (independent of ours)."""
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    peaks = XRDCalculator(wavelength=CU_KA1).get_pattern(s, two_theta_range=(15, 75))
    x = np.arange(15.0, 75.0, 0.05)
    fwhm_deg = 0.3  # a few-nm crystallite's width, roughly
    y = sum(h * np.exp(-4 * np.log(2) * ((x - c) / fwhm_deg) ** 2) for c, h in zip(peaks.x, peaks.y))
    return x, 10 * y + 20


def test_folder_scan_takes_the_extensions_of_registered_readers(foo_plugin, tmp_path):
    from diffpy_diffusion.io import PDF_EXTENSIONS, XRD_EXTENSIONS

    exts = batch.pattern_extensions()
    assert ".foo" in exts
    assert set(XRD_EXTENSIONS) | set(PDF_EXTENSIONS) | {".json"} <= set(exts)
    for name in ("a.xy", "b.foo", "C.FOO", "d.rdf", "notes.md", "README"):
        (tmp_path / name).write_text("1 2\n3 4\n5 6\n")
    (tmp_path / "sub.foo").mkdir()  # a folder named like a data file is not one
    assert [p.name for p in batch.find_patterns(tmp_path)] == ["C.FOO", "a.xy", "b.foo", "d.rdf"]


def test_without_the_plugin_its_files_are_not_found(fresh_plugins, tmp_path):
    (tmp_path / "b.foo").write_text("1 2\n3 4\n5 6\n")
    assert ".foo" not in batch.pattern_extensions()
    with pytest.raises(InputFileError, match="no pattern files"):
        batch.find_patterns(tmp_path)


def test_propose_batch_runs_a_plugin_format(foo_plugin, tmp_path):
    x, y = nacl_pattern()
    data = tmp_path / "data"
    data.mkdir()
    np.savetxt(data / "nacl.foo", np.column_stack([x, y]))
    summary = batch.propose_batch(data, tmp_path / "out", composition="NaCl", **CHEAP)
    assert summary.computed == ["nacl"] and not summary.failed
    assert (tmp_path / "out" / "nacl" / batch.RESULT_FILE).is_file()


def test_json_results_of_our_runs_are_not_patterns(fresh_plugins, tmp_path):
    """Copy what a real batch wrote (results, error record, manifest) next to Observation JSON files."""
    x, y = nacl_pattern()
    data, out, mixed = tmp_path / "data", tmp_path / "out", tmp_path / "mixed"
    data.mkdir()
    mixed.mkdir()
    write_xy(x, y, data / "nacl.xy")
    (data / "broken.xy").write_text("# 2theta I\n10 abc\n")
    summary = batch.propose_batch(data, out, composition="NaCl", wavelength=CU_KA1, **CHEAP)
    assert summary.computed == ["nacl"] and summary.failed == ["broken"]
    shutil.copy(out / "nacl" / batch.RESULT_FILE, mixed / "results.json")
    shutil.copy(out / "broken.error.json", mixed / "broken.error.json")
    shutil.copy(out / batch.MANIFEST_FILE, mixed / "batch.json")
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    write_json(s.as_dict(), mixed / "nacl_structure.json")
    obs = Observation(kind="xrd", x=x, y=y, x_kind="2theta", wavelength=CU_KA1, composition="NaCl")
    write_json(dataclasses.asdict(obs), mixed / "saved_observation.json")  # the documented format
    (mixed / "truncated_observation.json").write_text('{"x": [1, 2, 3], "y": [1, ')
    (mixed / "observation_without_y.json").write_text('{"x": [1, 2, 3], "x_kind": "q"}')

    found = [p.name for p in batch.find_patterns(mixed)]
    # the broken Observation files are taken, so that reading them reports what is wrong
    assert found == ["observation_without_y.json", "saved_observation.json", "truncated_observation.json"]

    again = batch.propose_batch(mixed, tmp_path / "out2", composition="NaCl", **CHEAP)
    assert again.computed == ["saved_observation"]
    assert sorted(again.failed) == ["observation_without_y", "truncated_observation"]


def test_a_reader_with_a_bad_accepts_is_named(fresh_plugins, tmp_path):
    fresh_plugins.get_plugin_manager().register(BadAcceptsPlugin(), name="bad-accepts")
    (tmp_path / "a.bar").write_text("1 2\n")
    with pytest.raises(PluginError, match="bad-accepts.*accepts"):
        batch.find_patterns(tmp_path)
