"""Structure files (CIF, PDFfit ``.stru``, POSCAR, pymatgen JSON) and pymatgen <-> diffpy.structure conversion.

The isotropic displacement parameter travels as the pymatgen site property
``"uiso"`` (Å²) and as ``Atom.Uisoequiv`` in diffpy.structure.  Partially
occupied or mixed sites map to several diffpy atoms at the same position
(one per species, each with its occupancy) and back.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from ..errors import InputFileError
from .symops import install_safe_cif_symops

STRUCTURE_EXTENSIONS = (".cif", ".stru", ".json", ".vasp", ".poscar", ".xyz")


def _element_symbol(label: str) -> str:
    """'O2-' -> 'O', 'Fe3+' -> 'Fe', 'cd' -> 'Cd'."""
    m = re.match(r"\s*([A-Za-z][a-z]?)", str(label))
    if not m:
        raise ValueError(f"cannot read an element from {label!r}")
    sym = m.group(1)
    return sym[0].upper() + sym[1:].lower()


def pymatgen_to_diffpy(structure):
    """Convert a :class:`pymatgen.core.Structure` to a :class:`diffpy.structure.Structure`.

    Fractional coordinates, occupancies and ``uiso`` (site property, Å²;
    default 0.005 Å² when absent, diffpy's convention is 0) are kept.  The
    lattice is rebuilt from its parameters (diffpy's standard orientation);
    fractional coordinates do not depend on the orientation.
    """
    from diffpy.structure import Atom, Lattice, Structure

    lat = structure.lattice
    dlat = Lattice(lat.a, lat.b, lat.c, lat.alpha, lat.beta, lat.gamma)
    atoms = []
    props = structure.site_properties
    uisos = props.get("uiso")
    for i, site in enumerate(structure):
        u = None if uisos is None else uisos[i]
        for sp, occ in site.species.items():
            el = getattr(sp, "symbol", str(sp))
            a = Atom(el, xyz=np.array(site.frac_coords, dtype=float), occupancy=float(occ), lattice=dlat)
            if u is not None and np.isfinite(u):
                a.Uisoequiv = float(u)
            atoms.append(a)
    out = Structure(atoms, lattice=dlat)
    out.title = structure.composition.reduced_formula
    return out


def diffpy_to_pymatgen(structure):
    """Convert a :class:`diffpy.structure.Structure` to a :class:`pymatgen.core.Structure`.

    Atoms at the same position (within 1e-4 in fractional coordinates) become
    one disordered site; ``Uisoequiv`` becomes the ``uiso`` site property.
    Charges in element labels (``O2-``) are dropped.
    """
    from pymatgen.core import Lattice, Structure

    lat = structure.lattice
    plat = Lattice.from_parameters(lat.a, lat.b, lat.c, lat.alpha, lat.beta, lat.gamma)
    sites: list[tuple[np.ndarray, dict, float]] = []
    for a in structure:
        xyz = np.array(a.xyz, dtype=float)
        el = _element_symbol(a.element)
        occ = float(a.occupancy)
        u = float(a.Uisoequiv)
        for pos, sp, _u in sites:
            d = xyz - pos
            d -= np.round(d)
            if np.all(np.abs(d) < 1e-4):
                sp[el] = sp.get(el, 0.0) + occ
                break
        else:
            sites.append((xyz, {el: occ}, u))
    species = [sp for _, sp, _ in sites]
    coords = [pos for pos, _, _ in sites]
    uiso = [u for _, _, u in sites]
    return Structure(plat, species, coords, site_properties={"uiso": uiso})


def read_structure(path):
    """Read a crystal structure file into a :class:`pymatgen.core.Structure`.

    See :func:`_read_structure_unchecked` for the formats; the result is
    checked (at least one site, finite lattice with a volume, finite
    coordinates) so that a malformed file fails here, with its name, and not
    later in the physics.
    """
    s = _read_structure_unchecked(path)
    p = Path(path)
    try:
        m = np.asarray(s.lattice.matrix, dtype=float)
        ok_lat = bool(np.all(np.isfinite(m))) and abs(float(np.linalg.det(m))) > 1e-6
        ok_xyz = len(s) > 0 and bool(np.all(np.isfinite(np.asarray(s.frac_coords, dtype=float))))
    except Exception:  # noqa: BLE001 - anything odd in the object is a bad file
        ok_lat = ok_xyz = False
    if not ok_lat:
        raise InputFileError(p, "the cell is not finite or has no volume (check the cell lengths and angles)")
    if not ok_xyz:
        raise InputFileError(p, "no atoms with finite coordinates found")
    return s


def _read_structure_unchecked(path):
    """Read a crystal structure file into a :class:`pymatgen.core.Structure`.

    Supports CIF (pymatgen, falling back to diffpy.structure), PDFfit/PDFgui
    ``.stru`` (diffpy.structure), pymatgen JSON and anything
    ``Structure.from_file`` reads (POSCAR...).  For multi-block CIFs the first
    block is used.

    Raises
    ------
    InputFileError
        Naming the file (and the line when the parser reports it).
    """
    p = Path(path)
    if not p.exists():
        raise InputFileError(p, "no such file")
    if p.is_dir():
        raise InputFileError(p, "is a directory, expected a structure file")
    from .text import read_text

    text = read_text(p)  # empty / binary checks with a clear message
    suffix = p.suffix.lower()
    try:
        if suffix == ".stru":
            try:
                return _read_diffpy(p, text, "pdffit")
            except Exception as exc:
                try:  # DISCUS files also use .stru
                    return _read_diffpy(p, text, "discus")
                except Exception:
                    raise exc from None
        if suffix == ".cif":
            return _read_cif(p, text)
        if suffix == ".json":
            import json

            from pymatgen.core import Structure

            return Structure.from_dict(json.loads(text))
        from pymatgen.core import Structure

        return Structure.from_file(str(p))
    except InputFileError:
        raise
    except Exception as exc:
        line = None
        m = re.search(r"line\s+(\d+)|^\s*(\d+)\s*:", str(exc))
        if m:
            line = int(m.group(1) or m.group(2))
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise InputFileError(p, f"cannot read structure ({msg[:300]})", line=line) from exc


def _read_cif(p: Path, text: str):
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parser = CifParser.from_str(text)
            try:
                structs = parser.parse_structures(primitive=False, on_error="raise")
            except ValueError:
                # a pdCIF (e.g. TOPAS Out_pdCIF) also holds data blocks of the pattern, without atoms:
                # keep the blocks that are structures
                structs = parser.parse_structures(primitive=False, on_error="ignore")
                if not structs:
                    raise
        except Exception as exc:
            try:  # diffpy.structure reads some CIFs pymatgen rejects
                return _read_diffpy(p, text, "cif")
            except Exception:
                raise exc from None
    if not structs:
        raise InputFileError(p, "no structure found in CIF (expected _cell_length_a ... and an atom_site loop)")
    s = structs[0]
    # keep Uiso from the CIF when present (pymatgen drops it)
    try:
        d = _read_diffpy(p, text, "cif")
        u_d = np.asarray(d.site_properties["uiso"], dtype=float)
        if "uiso" not in s.site_properties and np.any(u_d > 0):
            fd = np.array(d.frac_coords)
            uiso = []
            for site in s:
                dd = fd - site.frac_coords
                dd -= np.round(dd)
                k = int(np.argmin(np.abs(dd).sum(axis=1)))
                if np.abs(dd[k]).sum() > 1e-3:
                    raise ValueError("site mismatch")
                uiso.append(float(u_d[k]))
            s.add_site_property("uiso", uiso)
    except Exception:
        pass
    return s


def _read_diffpy(p: Path, text: str, fmt: str):
    import contextlib
    import io

    from diffpy.structure import loadStructure  # noqa: F401  (import check)
    from diffpy.structure.parsers import getParser

    install_safe_cif_symops()  # diffpy's CIF parser evals symmetry-operation text: never on user files
    parser = getParser(fmt)
    with contextlib.redirect_stdout(io.StringIO()):  # PyCifRW prints syntax errors to stdout
        ds = parser.parse(text)
    if len(ds) == 0:
        raise InputFileError(p, f"no atoms found (expected a {fmt} structure)")
    return diffpy_to_pymatgen(ds)
