"""Find the symmetry of a proposal and express it the way srfit constrains it.

spglib finds the space group (``symprec`` tolerance in Å), gives the
standardized conventional cell with idealized positions, and the symmetry
operations *of that very setting*.  We hand those operations to
:func:`diffpy.srfit.structure.constrainAsSpaceGroup` as a
:class:`diffpy.structure.spacegroupmod.SpaceGroup`, so there is no mismatch
between spglib's and diffpy's tables of origin choices or axis settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "SymmetrizedStructure",
    "crystal_system_of",
    "free_parameters",
    "point_group_order",
    "symmetrize",
    "symmetrize_up_to",
    "symmetry_tolerance",
    "to_diffpy",
    "to_pymatgen",
]

#: spglib tolerances (Å) tried for raw proposals: a generative model's atoms sit 0.05–0.3 Å off
#: their special positions, so at the refinement's default 0.01 Å most proposals look P1.
LOOSE_TOLERANCES = (0.01, 0.05, 0.1, 0.2, 0.3)


def _symmetry_dataset(structure, tol: float):
    """spglib's symmetry dataset of ``structure`` at ``tol`` Å (species and occupancies as types), or None."""
    import spglib

    keys: dict[tuple, int] = {}
    types = [keys.setdefault(_species_key(site), len(keys) + 1) for site in structure]
    try:
        return spglib.get_symmetry_dataset((structure.lattice.matrix, structure.frac_coords, types), symprec=tol)
    except Exception:  # noqa: BLE001 - spglib raises on degenerate cells in some versions
        return None


def point_group_order(structure, tol: float) -> tuple[int, int]:
    """(number of distinct rotations, space-group number) spglib finds at ``tol``; (1, 1) on failure."""
    ds = _symmetry_dataset(structure, tol)
    if ds is None:
        return 1, 1
    return len(np.unique(np.asarray(ds.rotations), axis=0)), int(ds.number)


def symmetry_tolerance(structure, tolerances=LOOSE_TOLERANCES) -> tuple[float, int]:
    """The smallest tolerance (Å) at which ``structure`` reaches the highest symmetry found up to ``max(tolerances)``.

    Parameters
    ----------
    structure : pymatgen.core.Structure
        A raw proposal (any cell).
    tolerances : sequence of float
        spglib ``symprec`` values in Å, ascending.

    Returns
    -------
    (tol, number) : (float, int)
        The tolerance and the space-group number it gives.  Higher symmetry means more
        distinct rotations (point-group order), then a higher space-group number.
    """
    best = None
    for tol in tolerances:
        order, number = point_group_order(structure, float(tol))
        if best is None or (order, number) > best[0]:
            best = ((order, number), float(tol))
    return best[1], best[0][1]


def crystal_system_of(number: int) -> str:
    """Crystal system name (diffpy spelling, upper case) of space group ``number``."""
    for hi, name in (
        (2, "TRICLINIC"),
        (15, "MONOCLINIC"),
        (74, "ORTHORHOMBIC"),
        (142, "TETRAGONAL"),
        (167, "TRIGONAL"),
        (194, "HEXAGONAL"),
        (230, "CUBIC"),
    ):
        if number <= hi:
            return name
    raise ValueError(f"space group number must be 1..230, got {number}")


#: Free lattice parameters (metric components) of each crystal system.
LATTICE_DOF = {"TRICLINIC": 6, "MONOCLINIC": 4, "ORTHORHOMBIC": 3, "TETRAGONAL": 2, "TRIGONAL": 2,
               "HEXAGONAL": 2, "CUBIC": 1}


def free_parameters(structure, symprec: float = 0.01) -> int:
    """Free structural parameters of ``structure`` in the space group spglib finds at ``symprec`` Å.

    The lattice parameters its crystal system leaves free (:data:`LATTICE_DOF`; trigonal groups
    counted in the hexagonal setting) plus the free fractional coordinates of its Wyckoff orbits
    (per orbit, ``3 − rank`` of the stacked ``R − 1`` of the site's stabilizer), less the origin
    shifts a polar group leaves free (what srfit fixes).  This is the structural part of a
    model's parameter count for significance tests, whether or not a refinement freed the
    coordinates: a P1 cell whose coordinates came from a sampler still has them all as
    parameters.  ``len(structure) * 3 + 3`` (P1) when spglib fails.
    """
    frac = np.asarray(structure.frac_coords, dtype=float)
    ds = _symmetry_dataset(structure, symprec)
    if ds is None:
        return 3 * len(structure) + 3
    rots = np.asarray(ds.rotations, dtype=float)
    trans = np.asarray(ds.translations, dtype=float)
    eye = np.eye(3)
    n_coord = 0
    # tolerance on fractional positions: symprec (Å) over the shortest axis
    ftol = float(symprec) / float(min(structure.lattice.abc)) * 2.0
    for i in np.unique(np.asarray(ds.equivalent_atoms)):
        x = frac[i]
        d = np.einsum("nij,j->ni", rots, x) + trans - x
        stab = rots[np.all(np.abs(d - np.round(d)) < ftol, axis=1)]
        n_coord += 3 - int(np.linalg.matrix_rank(np.concatenate(list(stab - eye)), tol=1e-6))
    polar = 3 - int(np.linalg.matrix_rank(np.concatenate(list(rots - eye)), tol=1e-6))
    return LATTICE_DOF[crystal_system_of(int(ds.number))] + n_coord - polar


@dataclass
class SymmetrizedStructure:
    """A structure in its standard conventional cell plus its symmetry.

    Attributes
    ----------
    structure : pymatgen.core.Structure
        Conventional standard cell, idealized positions, all atoms (P1 list).
    number : int
        Space-group number (1 when symmetry finding failed or was switched off).
    symbol : str
        Hermann–Mauguin symbol.
    spacegroup : diffpy.structure.spacegroupmod.SpaceGroup
        The operations of ``structure``'s setting, ready for constrainAsSpaceGroup.
    wyckoffs : list of str
        Wyckoff letter of each atom.
    """

    structure: Any
    number: int
    symbol: str
    spacegroup: Any
    wyckoffs: list[str] = field(default_factory=list)


def _species_key(site) -> tuple:
    return tuple(sorted((str(sp), round(float(o), 4)) for sp, o in site.species.items()))


def _site_uiso(site) -> float | None:
    props = site.properties or {}
    if props.get("uiso") is not None:
        return float(props["uiso"])
    if props.get("Biso") is not None:
        return float(props["Biso"]) / (8 * np.pi**2)
    return None


def _p1_spacegroup():
    from diffpy.structure.spacegroups import GetSpaceGroup

    return GetSpaceGroup(1)


def make_spacegroup(rotations, translations, number: int, symbol: str, pointgroup: str = ""):
    """A diffpy ``SpaceGroup`` holding exactly the given operations."""
    from diffpy.structure.spacegroupmod import SpaceGroup, SymOp

    ops = [SymOp(np.array(R, dtype=float), np.mod(np.array(t, dtype=float), 1.0))
           for R, t in zip(rotations, translations)]
    n_point = len({tuple(np.asarray(R).ravel()) for R in rotations})
    return SpaceGroup(
        number=number,
        num_sym_equiv=len(ops),
        num_primitive_sym_equiv=n_point,
        short_name=symbol.replace(" ", ""),
        point_group_name=pointgroup,
        crystal_system=crystal_system_of(number),
        pdb_name=symbol,
        symop_list=ops,
    )


def symmetrize(structure, *, tol: float = 0.01, angle_tol: float = -1.0,
               use_symmetry: bool = True) -> SymmetrizedStructure:
    """Find the space group of ``structure`` and return its standard conventional cell.

    Parameters
    ----------
    structure : pymatgen.core.Structure
        Any cell (primitive, conventional, supercell, slightly distorted).
    tol : float
        spglib ``symprec`` in Å: atoms closer than this to symmetric positions
        are snapped onto them (proposals from a generative model are rarely exact).
    angle_tol : float
        spglib angle tolerance in degrees; -1 (spglib default) derives it from ``tol``.  A fixed
        5° would merge a 0.2 % orthorhombic distortion (SrFe2As2 at 150 K) into tetragonal.
    use_symmetry : bool
        False keeps the cell as given in P1 (every coordinate free).

    Returns
    -------
    SymmetrizedStructure
        Falls back to P1 with the input cell when spglib finds nothing.
    """
    from pymatgen.core import Lattice, Structure

    def p1() -> SymmetrizedStructure:
        return SymmetrizedStructure(structure.copy(), 1, "P1", _p1_spacegroup(), ["a"] * len(structure))

    if not use_symmetry:
        return p1()
    import spglib

    keys: dict[tuple, int] = {}
    types, species, uisos = [], [], []
    for site in structure:
        k = _species_key(site)
        if k not in keys:
            keys[k] = len(keys) + 1
            species.append(site.species)
        types.append(keys[k])
        uisos.append(_site_uiso(site))
    cell = (structure.lattice.matrix, structure.frac_coords, types)
    try:
        ds = spglib.get_symmetry_dataset(cell, symprec=tol, angle_tolerance=angle_tol)
    except Exception:  # spglib raises on degenerate cells in some versions
        ds = None
    if ds is None:
        return p1()
    number = int(ds.number)
    std_lat = np.asarray(ds.std_lattice)
    std_pos = np.mod(np.asarray(ds.std_positions), 1.0)
    std_types = list(ds.std_types)
    # Uiso of a standardized atom: from any input atom of the same primitive orbit.
    prim_u: dict[int, float] = {}
    for i, pidx in enumerate(ds.mapping_to_primitive):
        if uisos[i] is not None:
            prim_u.setdefault(int(pidx), uisos[i])
    std_u = [prim_u.get(int(p)) for p in ds.std_mapping_to_primitive]
    # Snap the metric to the crystal system so srfit's exact-angle tests hold.
    a, b, c = np.linalg.norm(std_lat, axis=1)
    al, be, ga = Lattice(std_lat).angles
    system = crystal_system_of(number)
    if system in ("HEXAGONAL",) or (system == "TRIGONAL" and abs(ga - 120) < 1):
        lat = Lattice.from_parameters((a + b) / 2, (a + b) / 2, c, 90, 90, 120)
    elif system == "CUBIC":
        m = (a + b + c) / 3
        lat = Lattice.from_parameters(m, m, m, 90, 90, 90)
    elif system == "TETRAGONAL":
        lat = Lattice.from_parameters((a + b) / 2, (a + b) / 2, c, 90, 90, 90)
    elif system == "ORTHORHOMBIC":
        lat = Lattice.from_parameters(a, b, c, 90, 90, 90)
    elif system == "MONOCLINIC":
        lat = Lattice.from_parameters(a, b, c, 90, be, 90)
    else:
        lat = Lattice.from_parameters(a, b, c, al, be, ga)
    try:
        ds2 = spglib.get_symmetry_dataset((std_lat, std_pos, std_types), symprec=tol)
        wy = list(ds2.wyckoffs)
    except Exception:
        wy = []
    props = None
    if any(u is not None for u in std_u):
        props = {"uiso": [0.0 if u is None else u for u in std_u]}
    std = Structure(lat, [species[t - 1] for t in std_types], std_pos, site_properties=props)
    sym = spglib.get_symmetry_from_database(int(ds.hall_number))
    sg = make_spacegroup(sym["rotations"], sym["translations"], number, str(ds.international), str(ds.pointgroup))
    return SymmetrizedStructure(std, number, str(ds.international), sg, wy)


def symmetrize_up_to(structure, max_tol: float, tolerances=LOOSE_TOLERANCES) -> tuple[SymmetrizedStructure, float]:
    """``structure`` in the highest space group spglib finds at a tolerance up to ``max_tol`` Å, symmetrised.

    The tolerances of ``tolerances`` not above ``max_tol`` are ranked as in
    :func:`symmetry_tolerance` (more distinct rotations, then a higher space-group number, then
    the smaller tolerance); the first whose symmetrised cell (:func:`symmetrize`) keeps the
    composition is taken (a loose tolerance can merge two atoms of an element into one site).

    Returns
    -------
    (SymmetrizedStructure, float)
        The standard conventional cell with idealised positions, and the tolerance used; P1
        with the input cell and tolerance 0 when no tolerance keeps the composition.
    """
    want = structure.composition.reduced_composition
    tried = []
    for tol in tolerances:
        if float(tol) <= float(max_tol) + 1e-12:
            order, number = point_group_order(structure, float(tol))
            tried.append(((-order, -number, float(tol)), float(tol)))
    for _, tol in sorted(tried):
        sym = symmetrize(structure, tol=tol)
        if sym.structure.composition.reduced_composition.almost_equals(want):
            return sym, tol
    return symmetrize(structure, use_symmetry=False), 0.0


def _element_symbol(sp) -> str:
    el = getattr(sp, "element", sp)
    return str(getattr(el, "symbol", el))


def to_diffpy(structure, *, default_uiso: float = 0.005, spacegroup: str | None = None):
    """pymatgen Structure -> diffpy.structure.PDFFitStructure (isotropic Uiso, occupancies kept).

    Disordered sites become one diffpy atom per species at the same position.
    Uiso from site property ``uiso`` or ``Biso``, else ``default_uiso`` Å².
    ``spacegroup`` (a symbol) goes to ``pdffit["spcgr"]`` (shown by PDFgui, written to .stru).
    """
    from diffpy.structure import Atom, Lattice, PDFFitStructure as Structure

    lat = structure.lattice
    # Exact 90/120 degrees: srfit's trigonal/monoclinic constraints compare angles with ==.
    angles = [round(a, 6) if abs(a - round(a, 6)) < 1e-7 else a for a in lat.angles]
    out = Structure(lattice=Lattice(lat.a, lat.b, lat.c, *angles))
    for site in structure:
        u = _site_uiso(site)
        u = default_uiso if u is None else u
        for sp, occ in site.species.items():
            a = Atom(_element_symbol(sp), xyz=np.array(site.frac_coords, dtype=float), occupancy=float(occ))
            a.anisotropy = False
            a.Uisoequiv = float(u)
            out.append(a)
    if spacegroup:
        out.pdffit["spcgr"] = str(spacegroup)
    return out


def element_of(sym: str) -> str:
    """Element symbol of a diffpy atom label such as ``"O2-"``, ``"Ni"`` or ``"ZN"``."""
    from pymatgen.core.periodic_table import Element

    letters = "".join(c for c in sym if c.isalpha())
    for cand in (letters[:2].capitalize(), letters[:1].upper()):
        if cand and Element.is_valid_symbol(cand):
            return cand
    raise ValueError(f"unknown element in atom label {sym!r}")


def to_pymatgen(stru):
    """diffpy.structure.Structure -> pymatgen Structure with a ``uiso`` site property (Å²).

    Atoms sharing a position (within 1e-4) are merged into one disordered site.
    """
    from pymatgen.core import Lattice, Structure

    L = stru.lattice
    lat = Lattice.from_parameters(L.a, L.b, L.c, L.alpha, L.beta, L.gamma)
    coords: list[np.ndarray] = []
    species: list[dict] = []
    uiso: list[float] = []
    for a in stru:
        xyz = np.array(a.xyz, dtype=float)
        el = element_of(a.element)
        for i, c in enumerate(coords):
            d = xyz - c
            if np.all(np.abs(d - np.round(d)) < 1e-4) and el not in species[i]:
                species[i][el] = species[i].get(el, 0.0) + float(a.occupancy)
                break
        else:
            coords.append(xyz)
            species.append({el: float(a.occupancy)})
            uiso.append(float(a.Uisoequiv))
    return Structure(lat, species, np.array(coords), site_properties={"uiso": uiso})
