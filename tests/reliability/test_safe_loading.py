"""Safe loading: nothing in a data, project, structure or model file can run code.

Every malicious file here carries a payload that would create a marker file;
each test first proves the payload is live (plain ``pickle.loads`` does create
its marker), then asserts that our loader raises a clean
:class:`~diffpy_diffusion.errors.DiffpyDiffusionError` and the marker is absent.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from diffpy_diffusion.errors import CheckpointError, DiffpyDiffusionError, InputFileError
from diffpy_diffusion.io.ddp import check_member_name, read_ddp
from diffpy_diffusion.io.safe_unpickle import UnsafePickleError, safe_loads

REPO = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling calls os.mkdir(marker): the classic pickle code-execution gadget."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class _EvalPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import builtins

        return (builtins.eval, (f"__import__('os').mkdir({self.marker!r})",))


def _payloads(marker: Path) -> dict[str, bytes]:
    out = {
        "os.mkdir": pickle.dumps(_Payload(marker)),
        "builtins.eval": pickle.dumps(_EvalPayload(marker)),
        "os.mkdir protocol 0": pickle.dumps(_Payload(marker), protocol=0),
        "nested in dict": pickle.dumps({"scale": 1.0, "x": [1, 2, _Payload(marker)]}),
        "inside numpy object array": pickle.dumps(np.array([1, _Payload(marker)], dtype=object)),
    }
    # hand-made: copyreg._reconstructor (allowed) asked to build a forbidden class
    out["copyreg with forbidden class"] = (
        b"\x80\x02ccopyreg\n_reconstructor\nq\x00csubprocess\nPopen\nq\x01cbuiltins\nobject\nq\x02N\x87q\x03Rq\x04."
    )
    return out


def test_payloads_are_live(tmp_path):
    """Sanity: plain pickle really runs each payload (else the tests below prove nothing)."""
    for i, name in enumerate(_payloads(tmp_path)):
        if "copyreg" in name:
            continue
        marker = tmp_path / f"live{i}"
        data = _payloads(marker)[name]
        try:
            pickle.loads(data)
        except Exception:  # noqa: BLE001 - eval returns None etc.; the side effect is what counts
            pass
        assert marker.exists(), name


@pytest.mark.parametrize("name", list(_payloads(Path("/x"))))
def test_safe_loads_refuses_malicious_pickle(tmp_path, name):
    marker = tmp_path / "MARKER"
    data = _payloads(marker)[name]
    with pytest.raises(DiffpyDiffusionError) as ei:
        safe_loads(data, source="evil.ddp", member="p/fit/parameters")
    assert isinstance(ei.value, InputFileError)
    assert "evil.ddp" in str(ei.value)
    assert not marker.exists(), f"payload {name} ran"


def test_safe_loads_reads_plain_data():
    obj = {"a": [1, 2.5, "x", None, True], "s": {1, 2}, "f": frozenset({3}), "c": 1 + 2j,
           "arr": np.arange(6.0).reshape(2, 3), "i32": np.int32(7), "t": (1, "b")}
    back = safe_loads(pickle.dumps(obj, protocol=2))
    assert back["a"] == obj["a"] and back["s"] == {1, 2} and back["c"] == 1 + 2j
    np.testing.assert_array_equal(back["arr"], obj["arr"])
    assert back["i32"] == 7


def _ddp(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


_STRU = """title  Ni
format pdffit
scale  1.000000
sharp  0.000000,  0.000000,  1.000000,  3.500000
spcgr  Fm-3m
cell   3.523870,   3.523870,   3.523870,  90.000000,  90.000000,  90.000000
dcell  0.000000,   0.000000,   0.000000,   0.000000,   0.000000,   0.000000
ncell         1,          1,          1,          1
atoms
NI         0.00000000        0.00000000        0.00000000       1.0000
           0.00000000        0.00000000        0.00000000       0.0000
           0.00600000        0.00600000        0.00600000
           0.00000000        0.00000000        0.00000000
           0.00000000        0.00000000        0.00000000
           0.00000000        0.00000000        0.00000000
"""


def test_malicious_ddp_project_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    p = _ddp(tmp_path / "evil.ddp", {"evil/fits": b"fit1", "evil/fit1/parameters": pickle.dumps(_Payload(marker)),
                                      "evil/fit1/structure/phase/initial": _STRU.encode()})
    with pytest.raises(UnsafePickleError, match="os.mkdir|posix.mkdir|nt.mkdir") as ei:
        read_ddp(p)
    assert str(p) in str(ei.value) and "parameters" in str(ei.value)
    assert not marker.exists()


def test_malicious_ddp_constraint_is_never_evaluated(tmp_path):
    """PDFgui evals constraint formulas; we return them as text and never evaluate them."""
    marker = tmp_path / "MARKER"
    formula = f"__import__('os').mkdir({str(marker)!r})"
    p = _ddp(tmp_path / "c.ddp", {"c/fits": b"f", "c/f/structure/phase/initial": _STRU.encode(),
                                  "c/f/structure/phase/constraints": _pickle_constraint_dict(formula)})
    proj = read_ddp(p)
    assert proj.fits[0].phases[0].constraints == {"lat(1)": formula}
    assert not marker.exists()


def _pickle_constraint_dict(formula: str) -> bytes:
    """A dict {'lat(1)': Constraint} pickled as PDFgui does, without importing PDFgui."""
    import types

    mod = types.ModuleType("diffpy.pdfgui.control.constraint")

    class Constraint:  # same module/name as PDFgui's class
        pass

    Constraint.__module__ = mod.__name__
    Constraint.__qualname__ = "Constraint"
    mod.Constraint = Constraint
    import sys

    saved = sys.modules.get(mod.__name__)
    sys.modules[mod.__name__] = mod
    try:
        c = Constraint()
        c.formula = formula
        return pickle.dumps({"lat(1)": c}, protocol=2)
    finally:
        if saved is None:
            del sys.modules[mod.__name__]
        else:
            sys.modules[mod.__name__] = saved


@pytest.mark.parametrize("member", ["../../evil.txt", "/etc/passwd", "proj/../../x", "C:/win/x", "proj\\..\\x",
                                    "proj/fit/../../../x"])
def test_ddp_path_traversal_refused(tmp_path, member):
    p = _ddp(tmp_path / "t.ddp", {"proj/fits": b"", member: b"x"})
    with pytest.raises(InputFileError, match="path traversal|leaves the project"):
        read_ddp(p)
    assert not check_member_name(member)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_ddp_zip_bomb_refused(tmp_path, monkeypatch):
    import diffpy_diffusion.io.ddp as ddp

    monkeypatch.setattr(ddp, "MAX_MEMBER_BYTES", 1000)
    p = tmp_path / "bomb.ddp"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("b/fits", b"f")
        z.writestr("b/f/structure/phase/initial", b"0" * 100_000)  # compresses to ~100 bytes
    with pytest.raises(InputFileError, match="more than|larger than"):
        read_ddp(p)


@pytest.mark.parametrize("data", [b"", b"not a zip", b"PK\x03\x04" + b"\x00" * 40, os.urandom(300)])
def test_ddp_garbage_is_clean_error(tmp_path, data):
    p = tmp_path / "g.ddp"
    p.write_bytes(data)
    with pytest.raises(InputFileError) as ei:
        read_ddp(p)
    assert str(p) in str(ei.value)


def test_real_pdfgui_project_reads(tmp_path):
    """A project written by H3's writer through PDFgui's own API reads back (structures + constraints)."""
    pytest.importorskip("diffpy.pdfgui.control.pdfguicontrol")
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.refine.pdffit2_engine import write_pdfgui_project
    from diffpy_diffusion.types import Observation

    s = Structure(Lattice.cubic(3.52), ["Ni"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    r = np.arange(1, 10, 0.1)
    obs = Observation(kind="pdf", x=r, y=np.sin(r), x_kind="r", composition="Ni", qmax=25.0)
    p = write_pdfgui_project(tmp_path / "ni.ddp", s, obs, name="ni")
    proj = read_ddp(p)
    assert [f.name for f in proj.fits] == ["ni"]
    fit = proj.fits[0]
    assert fit.parameters[1]["initial"] == pytest.approx(3.52)
    assert fit.phases[0].constraints["lat(1)"] == "@1"
    (got,) = proj.structures()
    assert got.composition.reduced_formula == "Ni" and got.lattice.a == pytest.approx(3.52)


# --------------------------------------------------------------------------- CIF


def test_cif_symmetry_operation_cannot_run_code(tmp_path):
    """diffpy.structure evals CIF symmetry-operation text; read_structure must never let it."""
    from diffpy_diffusion.io import read_structure

    # the payload path must avoid x, y, z, commas and spaces (diffpy splits the operation on them)
    marker = tmp_path / "MARKER"
    if re.search("[xyzXYZ, ]", str(marker)):
        marker = Path("/tmp") / f"ddmark{os.getpid()}"
    assert not re.search("[xyzXYZ, ]", str(marker))
    if marker.exists():
        marker.rmdir()
    cif = f"""data_evil
_cell_length_a   4.0
_cell_length_b   4.0
_cell_length_c   4.0
_cell_angle_alpha   90
_cell_angle_beta   90
_cell_angle_gamma   90
loop_
 _symmetry_equiv_pos_as_xyz
  'x,y,z'
  'x,y,z+__import__("os").mkdir("{marker}")'
loop_
 _atom_site_label
 _atom_site_type_symbol
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
  Ni1  Ni  0.0  0.0  0.0
"""
    p = tmp_path / "evil.cif"
    p.write_text(cif)
    try:
        read_structure(p)
    except DiffpyDiffusionError:
        pass
    assert not marker.exists(), "a CIF symmetry operation executed code"
    # and diffpy's own parser, after our loader ran once in this process, is safe as well
    from diffpy.structure import StructureFormatError
    from diffpy.structure.parsers import getParser

    with pytest.raises(StructureFormatError, match="invalid symmetry operation"):
        getParser("cif").parse(cif)
    assert not marker.exists()


def test_safe_symop_matches_reference_on_valid_operations():
    from diffpy_diffusion.io.symops import safe_getsymop

    ops = ["x,y,z", "-x,-y,-z", "x-y,x,z+1/2", "-y+1/2,x+0.25,-z+3/4", "1/2+x, 1/2-y, z", "x+1/3+1/3,y,z"]
    pt = np.array([0.1, 0.2, 0.3])
    for op in ops:
        got = safe_getsymop(op)
        # independent reference: evaluate the (trusted) test string as Python arithmetic
        ref = np.array([eval(c, {"x": pt[0], "y": pt[1], "z": pt[2]}) for c in op.replace(" ", "").split(",")])
        diff = (got.R @ pt + got.t - ref + 0.5) % 1.0 - 0.5  # equal modulo lattice translations
        np.testing.assert_allclose(diff, 0, atol=1e-12)
    for bad in ["x,y", "x,y,z+os", "x,y,z+1/0", "x,y,z+__import__('os')", "x,y,z+1e999"]:
        with pytest.raises((ValueError, KeyError)):
            safe_getsymop(bad)


# --------------------------------------------------------------------------- checkpoints


def _checkpoint_module():
    from diffpy_diffusion.backends.diffusion import checkpoint

    return checkpoint


def test_malicious_checkpoint_is_refused(tmp_path):
    import torch
    ck = _checkpoint_module()
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"format": ck.FORMAT, "version": 1, "config": {}, "step": 0, "epoch": 0,
                "ema": {"w": torch.zeros(2)}, "meta": _Payload(marker)}, path)
    # live payload: an unsafe torch.load would run it
    with pytest.raises(CheckpointError) as ei:
        ck.load_checkpoint(path)
    assert str(path) in str(ei.value)
    assert not marker.exists()


def test_malicious_training_sidecar_is_refused(tmp_path):
    """--resume reads the .train.pt sidecar: it must be as safe as the main file."""
    import torch
    ck = _checkpoint_module()
    marker = tmp_path / "MARKER"
    path = tmp_path / "last.pt"
    ck.save_checkpoint(path, config={"hidden": 8}, step=3, epoch=0, ema={"w": torch.zeros(2)},
                       model={"w": torch.zeros(2)})
    torch.save({"format": ck.FORMAT + "-train", "version": 1, "step": 3, "model": {"w": torch.zeros(2)},
                "rng": {"evil": _Payload(marker)}}, ck.sidecar(path))
    with pytest.raises(CheckpointError):
        ck.load_checkpoint(path, with_training_state=True)
    assert not marker.exists()


@pytest.mark.parametrize("data", [b"", b"garbage", b"PK\x03\x04" + b"\x00" * 100, pickle.dumps([1, 2, 3]),
                                  pickle.dumps({"format": "other"})])
def test_corrupt_or_foreign_checkpoint_is_clean_error(tmp_path, data):
    ck = _checkpoint_module()
    p = tmp_path / "c.pt"
    p.write_bytes(data)
    with pytest.raises(CheckpointError) as ei:
        ck.load_checkpoint(p)
    assert str(p) in str(ei.value)


def test_truncated_checkpoint_is_clean_error(tmp_path):
    import torch
    ck = _checkpoint_module()
    p = tmp_path / "t.pt"
    ck.save_checkpoint(p, config={"hidden": 8}, step=1, epoch=0, ema={"w": torch.arange(1000.0)})
    data = p.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 5):
        p.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            ck.load_checkpoint(p)


# --------------------------------------------------------------------------- static guard


_UNSAFE = [
    (re.compile(r"\bpickle\.loads?\("), "pickle.load(s) on untrusted data: use diffpy_diffusion.io.safe_unpickle"),
    (re.compile(r"\bcPickle\b|\bdill\b|\bjoblib\.load\("), "pickle-based loader"),
    (re.compile(r"allow_pickle\s*=\s*True"), "numpy allow_pickle=True"),
    (re.compile(r"\byaml\.load\((?![^)]*SafeLoader)"), "yaml.load without SafeLoader"),
    (re.compile(r"\.extractall\("), "archive extractall (path traversal): check member names"),
]


def test_no_unsafe_loading_in_package_source():
    """No torch.load without weights_only=True, no raw pickle loads, no extractall, anywhere in the package."""
    problems = []
    roots = [REPO / "diffpy_diffusion", *sorted((REPO / "plugins").glob("*/src"))]
    for root in roots:
        for f in root.rglob("*.py"):
            text = f.read_text(encoding="utf-8")
            for m in re.finditer(r"torch\.load\(", text):
                call = text[m.start(): text.find(")", m.start()) + 200]
                if "weights_only=True" not in call.split("\n\n")[0]:
                    problems.append(f"{f.relative_to(REPO)}: torch.load without weights_only=True")
            for pat, why in _UNSAFE:
                for m in pat.finditer(text):
                    line = text.count("\n", 0, m.start()) + 1
                    src = text.splitlines()[line - 1]
                    if "noqa: unsafe-ok" in src or src.lstrip().startswith("#"):
                        continue
                    problems.append(f"{f.relative_to(REPO)}:{line}: {why}")
    assert not problems, "\n".join(problems)


def test_ddp_reading_goes_through_safe_unpickler():
    """Any code that opens a user's .ddp must use io.ddp.read_ddp, not PDFgui's loader."""
    problems = []
    for f in (REPO / "diffpy_diffusion").rglob("*.py"):
        text = f.read_text(encoding="utf-8")
        for m in re.finditer(r"\bcontrol\.load\(|PDFGuiControl\(\)\.load\(|CtrlUnpickler", text):
            problems.append(f"{f.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}")
    assert not problems, "PDFgui's unsafe project loader used: " + ", ".join(problems)
