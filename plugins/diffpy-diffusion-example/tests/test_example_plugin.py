"""The example plugin passes the backend contract kit and is usable through the CLI."""

from __future__ import annotations

import pytest

from diffpy_diffusion.testing import BackendContract, make_observation


class TestExampleContract(BackendContract):
    backend_name = "example"
    compositions = ("NaCl", "CdSe", "SrTiO3")
    n = 3


def test_listed_with_plugin_and_version():
    from diffpy_diffusion import plugins

    plugins.reset()
    rows = {b["name"]: b for b in plugins.list_backends()}
    assert rows["example"]["plugin"] == "example"
    assert rows["example"]["plugin_version"] == "0.1.0"
    assert rows["example"]["capabilities"] == ["composition"]


def test_disable_env_hides_it(monkeypatch):
    from diffpy_diffusion import plugins

    monkeypatch.setenv("DIFFPY_DIFFUSION_DISABLE_PLUGINS", "example")
    plugins.reset()
    try:
        assert "example" not in plugins.backend_names()
    finally:
        monkeypatch.delenv("DIFFPY_DIFFUSION_DISABLE_PLUGINS")
        plugins.reset()


def test_fractional_composition_is_scaled():
    from diffpy_diffusion_example.plugin import ExampleBackend

    obs = make_observation("Ta0.5O1.25", max_atoms=14)
    out = ExampleBackend().sample(obs, 2, seed=3)
    for p in out:
        assert p.structure.composition.reduced_formula == "Ta2O5"


def test_cli_backend_example(tmp_path):
    from click.testing import CliRunner

    from diffpy_diffusion.cli import cli
    from diffpy_diffusion.io import write_xy

    obs = make_observation("NaCl")
    data = write_xy(obs.x, obs.y, tmp_path / "nacl.xy", columns=("2theta", "intensity"))
    res = CliRunner().invoke(cli, ["propose", str(data), "-c", "NaCl", "-w", "CuKa1", "--backend", "example",
                                   "--n", "3", "--top", "2", "--no-refine", "--json", "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    import json

    payload = json.loads(res.stdout)
    assert 1 <= len(payload["candidates"]) <= 2
    assert all(c["formula"] == "NaCl" for c in payload["candidates"])
    assert list((tmp_path / "out").glob("*.cif"))


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
