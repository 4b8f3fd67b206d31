"""``--backend-option/-O`` of ``propose`` and ``evaluate``: parsing, and that the options reach the backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from diffpy_diffusion.cli import cli
from diffpy_diffusion.cli.options import parse_backend_options

DEMO = Path(__file__).resolve().parents[1] / "diffpy_diffusion" / "examples_data" / "nacl_3nm_cuka.xy"


def test_parse_plain_and_per_backend_options_with_json_values():
    got = parse_backend_options(None, None, ("corrector_steps=0", "diffusion.cfg_scale=2.5",
                                             "diffusion.checkpoint=a/b.pt", "templates.symmetrize=true", "note=a=b"))
    assert got == {"corrector_steps": 0, "diffusion": {"cfg_scale": 2.5, "checkpoint": "a/b.pt"},
                   "templates": {"symmetrize": True}, "note": "a=b"}
    assert parse_backend_options(None, None, ()) is None


@pytest.mark.parametrize("bad", ["foo", "=3", " =1"])
def test_malformed_option_is_a_usage_error(bad):
    r = CliRunner().invoke(cli, ["propose", str(DEMO), "-c", "NaCl", "-O", bad])
    assert r.exit_code == 2
    assert "KEY=VALUE" in r.output


def test_propose_hands_options_and_library_to_the_pipeline(monkeypatch):
    from diffpy_diffusion import pipeline

    seen = {}

    def fake_propose(obs, **kw):
        seen.update(kw)
        return []

    monkeypatch.setattr(pipeline, "propose", fake_propose)
    r = CliRunner().invoke(cli, ["propose", str(DEMO), "-c", "NaCl", "-w", "CuKa", "-b", "random", "-n", "2",
                                 "--library", "aflow", "-O", "diffusion.steps=7", "-O", "max_tries=3", "--json"])
    assert r.exit_code == 0, r.output
    assert seen["backend_options"] == {"diffusion": {"steps": 7}, "max_tries": 3, "library": "aflow"}


def test_diffusion_backend_gets_the_option():
    """End to end through the real pipeline: the option changes what the backend records."""
    from diffpy_diffusion.backends.diffusion.backend import DEFAULT_WEIGHTS
    from diffpy_diffusion.pipeline import get_backends

    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip("shipped weights not present")
    (be,) = get_backends("diffusion", {"diffusion": {"steps": 7, "corrector_steps": 0}})
    assert be.steps == 7 and be.corrector_steps == 0


def test_evaluate_hands_options_to_run_evaluation(monkeypatch):
    import diffpy_diffusion.evaluate as ev

    seen = {}
    monkeypatch.setattr(ev, "run_evaluation", lambda **kw: seen.update(kw) or {})
    r = CliRunner().invoke(cli, ["evaluate", "--limit", "1", "-b", "random", "-O", "diffusion.corrector_steps=2"])
    assert r.exit_code == 0, r.output
    assert seen["backend_options"] == {"diffusion": {"corrector_steps": 2}}


def test_flat_and_per_backend_options_are_merged_per_backend_wins():
    from diffpy_diffusion.backends.templates import TemplatesBackend
    from diffpy_diffusion.pipeline import _backend_options

    opts = {"templates": {"exclude": "mp-1", "members_per_type": 2}, "members_per_type": 5, "steps": 3}
    got = _backend_options("templates", TemplatesBackend, opts)
    assert got["exclude"] == "mp-1" and got["members_per_type"] == 2

    def narrow(library=None, members_per_type=3):  # a factory without **kwargs gets only its own keys
        return None

    assert _backend_options("templates", narrow, opts) == {"members_per_type": 2, "exclude": "mp-1"}
    assert _backend_options("other", narrow, opts) == {"members_per_type": 5}
