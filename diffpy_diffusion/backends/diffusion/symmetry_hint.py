"""Training-free space-group / crystal-system hints for the diffusion sampler.

The shipped model was trained without any symmetry input, so a user's hint is imposed at
sampling time only, in two places:

1. **Lattice metric, at every reverse step** (:func:`project_lattice`).  The set of Gram
   matrices G = L Lᵀ of one crystal system (in its standard setting) is a *linear* subspace
   of the symmetric 3×3 matrices: cubic G = a² I; tetragonal diag(a², a², c²);
   orthorhombic diagonal; monoclinic (b unique) G₀₁ = G₁₂ = 0; hexagonal/trigonal
   G₀₀ = G₁₁ = a², G₀₁ = −a²/2, G₀₂ = G₁₂ = 0; rhombohedral (primitive cell of an R group)
   equal diagonal and equal off-diagonal entries; primitive cells of F- and I-centred cubic
   lattices G = a² M with M's off-diagonal entries ½ (α = 60°) or −⅓ (α = 109.47°).  The orthogonal
   (Frobenius) projection onto such a subspace is a plain average of tied entries and zeroing of the others, it commutes
   with the sampler's scalar lattice normalisation, and it maps a positive-definite G to a
   positive-definite one (shown in :func:`project_gram`).  The lattice is rebuilt as the
   matrix with the projected Gram that is closest to the current one (orthogonal Procrustes),
   so its orientation and handedness change as little as possible.  The denoiser only sees
   Gram matrices and its lattice output is rotation-equivariant (``model.py``), so the
   rebuilt orientation does not matter to it.
2. **Space group, after sampling** (:func:`apply_hint`).  spglib looks at each proposal at
   growing tolerances (``refine.symmetry.LOOSE_TOLERANCES``, 0.01–0.3 Å); at the first
   tolerance where it finds the requested group or a supergroup of it with the same lattice
   translations (a t-supergroup, from the maximal-subgroup tables pymatgen ships), the proposal
   is replaced by spglib's idealised cell of that group.  (k-supergroups are left out on
   purpose: CsCl, Pm-3m, "has" Fm-3m symmetry in a doubled cell, but it is no rock salt.)
   Matching proposals are ranked first; if none matches, all are returned unmodified with
   ``matched: False`` and a warning.  A crystal-system hint alone is checked the same way (a
   found group that has a subgroup in that system matches) but the structure is left as is:
   its lattice already has the exact metric.

Which cell is sampled for a space-group hint: the training cells are Niggli-reduced MP cells,
i.e. mostly *primitive* cells, so R groups and F/I cubic groups (rock salt, fluorite, bcc
metals...) are sampled in their primitive cell with its exact metric (any Z).  Other centred
groups (A/B/C/I/F in the monoclinic to tetragonal systems) are sampled in the conventional
cell, with the formula units Z restricted to those it can hold (every element's count a
multiple of the lattice points per cell: 2 for A/B/C/I, 4 for F).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache

import numpy as np

from ...errors import BackendError
from ...refine.symmetry import LOOSE_TOLERANCES
from ..common import crystal_system as _crystal_system, spacegroup_number as _sg_number

__all__ = [
    "CRYSTAL_SYSTEMS",
    "SymmetryHint",
    "apply_hint",
    "hint_matches",
    "project_gram",
    "project_lattice",
    "resolve_hint",
    "t_subgroups",
]

CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")
#: Metric imposed during sampling, by crystal system (triclinic: none).  Trigonal uses the
#: hexagonal cell, except for R groups (see :func:`resolve_hint`).
_METRIC = {"monoclinic": "monoclinic", "orthorhombic": "orthorhombic", "tetragonal": "tetragonal",
           "trigonal": "hexagonal", "hexagonal": "hexagonal", "cubic": "cubic"}
#: Metrics that are one fixed Gram matrix times a² (a = b = c, α = β = γ fixed).
_ONE_PARAMETER = {
    "cubic": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    "fcc-primitive": ((1.0, 0.5, 0.5), (0.5, 1.0, 0.5), (0.5, 0.5, 1.0)),  # α = 60°
    "bcc-primitive": ((1.0, -1 / 3, -1 / 3), (-1 / 3, 1.0, -1 / 3), (-1 / 3, -1 / 3, 1.0)),  # α = 109.47°
}
METRICS = ("cubic", "fcc-primitive", "bcc-primitive", "tetragonal", "orthorhombic", "monoclinic", "hexagonal",
           "rhombohedral")
#: Lattice points per conventional cell, by the first letter of the Hermann–Mauguin symbol.
_CENTRING = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "F": 4, "R": 1}  # R: sampled in the primitive cell


@dataclass(frozen=True)
class SymmetryHint:
    """What the user told us about the symmetry, resolved to what the sampler imposes.

    Attributes
    ----------
    crystal_system : str
        Lower-case crystal system (given, or derived from the space group).
    spacegroup : int or None
        International space-group number, when one was given.
    symbol : str or None
        Its Hermann–Mauguin symbol.
    metric : str or None
        Lattice metric projected at every step (one of :data:`METRICS`; None for triclinic).
    centring : int
        Lattice points per sampled cell; every element count must be a multiple of it.
    """

    crystal_system: str
    spacegroup: int | None = None
    symbol: str | None = None
    metric: str | None = None
    centring: int = 1

    def allowed_z(self, counts: dict[str, int], zs: list[int]) -> list[int]:
        """The Z of ``zs`` whose cell can carry the centring (all of ``zs``, with a warning, if none can)."""
        if self.centring == 1:
            return zs
        ok = [z for z in zs if all(c * z % self.centring == 0 for c in counts.values())]
        if not ok:
            # why: better unconstrained proposals than none; the post-sampling check will tell
            warnings.warn(f"diffusion backend: space group {self.symbol} needs every element count to be a multiple of "
                          f"{self.centring} in its conventional cell, which no allowed Z ({zs}) gives; sampling "
                          "without that restriction", UserWarning, stacklevel=3)
            return zs
        return ok

    def as_dict(self) -> dict:
        """The hint as recorded in ``Proposal.provenance["hint"]`` (before the match fields)."""
        return {"crystal_system": self.crystal_system, "spacegroup": self.spacegroup, "spacegroup_symbol": self.symbol,
                "metric": self.metric}


def resolve_hint(observation) -> SymmetryHint | None:
    """The :class:`SymmetryHint` of an observation, or None when it gives neither field.

    Parameters
    ----------
    observation : Observation
        Uses ``spacegroup`` (number or Hermann–Mauguin symbol) and ``crystal_system``.

    Raises
    ------
    CompositionError
        Unknown space group (same message as the templates backend).
    BackendError
        Unknown crystal system, or one that contradicts the space group.
    """
    number = _sg_number(getattr(observation, "spacegroup", None))
    system = getattr(observation, "crystal_system", None)
    if number is None and not system:
        return None
    if number is not None and not 1 <= number <= 230:
        raise BackendError(f"space group number must be 1-230, got {number}")
    if system:
        system = str(system).strip().lower()
        system = "trigonal" if system == "rhombohedral" else system
        if system not in CRYSTAL_SYSTEMS:
            raise BackendError(f"unknown crystal system {observation.crystal_system!r}; "
                               f"one of {', '.join(CRYSTAL_SYSTEMS)}")
    if number is None:
        return SymmetryHint(crystal_system=system, metric=_METRIC.get(system))
    from pymatgen.symmetry.groups import SpaceGroup

    sg_system = _crystal_system(number)
    if system and system != sg_system:
        raise BackendError(f"the hints contradict each other: space group {number} is {sg_system}, not {system}")
    symbol = SpaceGroup.from_int_number(number).symbol
    metric, centring = _METRIC.get(sg_system), _CENTRING.get(symbol[0], 1)
    # why: the model knows these lattices from their primitive cells (training cells are Niggli-reduced)
    if symbol[0] == "R":
        metric = "rhombohedral"
    elif sg_system == "cubic" and symbol[0] in "FI":
        metric, centring = ("fcc-primitive" if symbol[0] == "F" else "bcc-primitive"), 1
    return SymmetryHint(crystal_system=sg_system, spacegroup=number, symbol=symbol, metric=metric,
                        centring=centring)


# ----------------------------------------------------------------------------- lattice metric
def project_gram(gram, metric: str):
    """Orthogonal projection of Gram matrices onto a crystal system's metric subspace.

    Parameters
    ----------
    gram : torch.Tensor
        (B, 3, 3) symmetric Gram matrices G = L Lᵀ (rows of L = lattice vectors).
    metric : str
        One of :data:`METRICS`.

    Returns
    -------
    torch.Tensor
        (B, 3, 3) projected Gram matrices.  Positive definite when ``gram`` is: the diagonal
        (ortho-/tetragonal/cubic) or block-diagonal (monoclinic) parts of a PD matrix are PD;
        hexagonal a² = (G₀₀ + G₁₁ − G₀₁)/2.5 ≥ (G₀₀ + G₁₁)/5 > 0 since G₀₁ ≤ √(G₀₀G₁₁);
        rhombohedral −½ mean(Gᵢᵢ) < mean(Gᵢⱼ) < mean(Gᵢᵢ) since |v₀+v₁+v₂|² > 0 and
        Σ|vᵢ−vⱼ|² > 0 for independent vectors; the one-parameter metrics a² M get
        a² = ⟨G, M⟩/⟨M, M⟩ > 0 by the same two inequalities.
    """
    import torch

    G = 0.5 * (gram + gram.transpose(-1, -2))
    d = torch.diagonal(G, dim1=-2, dim2=-1)
    eye = torch.eye(3, dtype=G.dtype, device=G.device).expand_as(G)
    if metric in _ONE_PARAMETER:
        M = torch.tensor(_ONE_PARAMETER[metric], dtype=G.dtype, device=G.device)
        a2 = (G * M).sum((-1, -2)) / (M * M).sum()
        return a2[:, None, None] * M
    if metric == "tetragonal":
        a2 = 0.5 * (d[:, 0] + d[:, 1])
        return torch.diag_embed(torch.stack([a2, a2, d[:, 2]], -1))
    if metric == "orthorhombic":
        return torch.diag_embed(d)
    if metric == "monoclinic":  # b unique: a ⟂ b (γ = 90°), b ⟂ c (α = 90°)
        keep = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=G.dtype, device=G.device)
        return G * keep
    if metric == "hexagonal":  # a = b, γ = 120°, α = β = 90°; basis E00 + E11 − ½(E01 + E10), |basis|² = 2.5
        a2 = (d[:, 0] + d[:, 1] - G[:, 0, 1]) / 2.5
        out = torch.zeros_like(G)
        out[:, 0, 0] = out[:, 1, 1] = a2
        out[:, 0, 1] = out[:, 1, 0] = -0.5 * a2
        out[:, 2, 2] = d[:, 2]
        return out
    if metric == "rhombohedral":  # a = b = c, α = β = γ
        a2 = d.mean(-1)
        off = (G.sum((-1, -2)) - d.sum(-1)) / 6.0
        ones = torch.ones_like(G)
        return off[:, None, None] * (ones - eye) + a2[:, None, None] * eye
    raise ValueError(f"unknown metric {metric!r}; one of {METRICS}")


def project_lattice(lattice, metric: str | None):
    """The lattice closest to ``lattice`` whose Gram matrix has the ``metric`` of a crystal system.

    Parameters
    ----------
    lattice : torch.Tensor
        (B, 3, 3) lattices, rows = vectors (any scale: the projection commutes with scaling).
    metric : str or None
        One of :data:`METRICS`; None returns ``lattice`` unchanged.

    Returns
    -------
    torch.Tensor
        (B, 3, 3) lattices L' = S R with S = √(project_gram(L Lᵀ)) and R the orthogonal matrix
        minimising ‖S R − L‖ (polar factor of S L, from its SVD), so L' has exactly the projected
        metric and the orientation and handedness of L.
    """
    import torch

    if metric is None:
        return lattice
    G = project_gram(lattice @ lattice.transpose(-1, -2), metric)
    w, V = torch.linalg.eigh(G)
    S = V @ torch.diag_embed(w.clamp(min=0).sqrt()) @ V.transpose(-1, -2)
    U, _, Vh = torch.linalg.svd(S @ lattice)
    return S @ (U @ Vh)


# ----------------------------------------------------------------------------- space group after sampling
@cache
def _point_group_orders() -> dict[int, int]:
    """Point-group order (distinct rotations) of every space-group number, from spglib's database."""
    import spglib

    out: dict[int, int] = {}
    for hall in range(1, 531):  # all Hall settings; the first of each number is enough
        number = int(spglib.get_spacegroup_type(hall).number)
        if number not in out:
            rot = np.asarray(spglib.get_symmetry_from_database(hall)["rotations"])
            out[number] = len(np.unique(rot.reshape(len(rot), -1), axis=0))
    return out


def _point_group_order(number: int) -> int:
    return _point_group_orders()[int(number)]


@cache
def t_subgroups(number: int) -> frozenset[int]:
    """Space-group types that are t-subgroups (same translations) of group ``number``, itself included.

    The closure of pymatgen's table of maximal subgroups (``SYMM_DATA["maximal_subgroups"]``,
    International Tables A1) over its t-edges.  A maximal subgroup is either a t-subgroup
    (smaller point group) or a k-subgroup (same point group, fewer translations; Hermann's
    theorem), so the t-edges are those that lower the point-group order.
    """
    from pymatgen.symmetry.groups import SYMM_DATA

    table = SYMM_DATA["maximal_subgroups"]
    seen, stack = {int(number)}, [int(number)]
    while stack:
        g = stack.pop()
        for sub in map(int, table[str(g)]):
            if sub not in seen and _point_group_order(sub) < _point_group_order(g):
                seen.add(sub)
                stack.append(sub)
    return frozenset(seen)


def hint_matches(found: int, hint: SymmetryHint) -> bool:
    """Whether a structure of space group ``found`` satisfies the hint (same group or a t-supergroup).

    For a crystal-system hint alone: whether ``found`` has a t-subgroup in that crystal system.
    """
    subs = t_subgroups(int(found))
    if hint.spacegroup is not None:
        return hint.spacegroup in subs
    return any(_crystal_system(g) == hint.crystal_system for g in subs)


def _spglib_cell(structure):
    keys: dict[str, int] = {}
    types = [keys.setdefault(site.species_string, len(keys) + 1) for site in structure]
    species = {v: structure[types.index(v)].species for v in keys.values()}
    return (structure.lattice.matrix, structure.frac_coords, types), species


def _idealised(structure, tol: float, max_atoms: int, min_dist: float):
    """spglib's idealised cell of ``structure`` at ``tol`` (conventional, or primitive above ``max_atoms``).

    Returns None when spglib fails or the idealised atoms come closer than ``min_dist`` Å.
    """
    import spglib
    from pymatgen.core import Lattice, Structure

    cell, species = _spglib_cell(structure)
    out = None
    for to_primitive in (False, True):
        try:
            out = spglib.standardize_cell(cell, to_primitive=to_primitive, no_idealize=False, symprec=tol)
        except Exception:  # noqa: BLE001 - spglib raises on degenerate cells in some versions
            out = None
        if out is not None and len(out[2]) <= max_atoms:
            break
        out = None
    if out is None:
        return None
    lat, pos, types = out
    s = Structure(Lattice(np.asarray(lat)), [species[int(t)] for t in types], np.mod(np.asarray(pos), 1.0))
    if len(s) > 1 and (s.distance_matrix + np.eye(len(s)) * 1e9).min() < min_dist:
        return None
    return s


def _found_group(structure, tol: float) -> int:
    import spglib

    cell, _ = _spglib_cell(structure)
    try:
        ds = spglib.get_symmetry_dataset(cell, symprec=tol)
    except Exception:  # noqa: BLE001
        ds = None
    return int(ds.number) if ds is not None else 1


def apply_hint(proposals: list, hint: SymmetryHint, *, max_atoms: int = 20, per_fu: int = 1,
               min_dist: float = 0.5, tolerances=LOOSE_TOLERANCES) -> list:
    """Check, symmetrise and rank proposals by the hint; record what was done in their provenance.

    Parameters
    ----------
    proposals : list of Proposal
        Raw proposals (modified in place: ``structure`` and ``provenance``).
    hint : SymmetryHint
    max_atoms : int
        Atom cap: an idealised conventional cell above it is replaced by the primitive cell.
    per_fu : int
        Atoms per formula unit (to update ``provenance["z"]`` when the cell changes).
    min_dist : float
        Å; an idealised cell with atoms closer than this is rejected at that tolerance.
    tolerances : sequence of float
        spglib ``symprec`` values (Å), ascending.

    Returns
    -------
    list of Proposal
        All proposals, those that match the hint first (otherwise in their original order).
        Each carries ``provenance["hint"]`` = the hint plus ``matched``, ``tolerance_A``
        (smallest matching tolerance, None if none), ``spacegroup_found`` (spglib's group at that
        tolerance, or at the largest one when unmatched) and ``symmetrised``.
    """
    for p in proposals:
        info = {**hint.as_dict(), "matched": False, "tolerance_A": None, "spacegroup_found": None,
                "symmetrised": False}
        for tol in tolerances:
            found = _found_group(p.structure, float(tol))
            info["spacegroup_found"] = found
            if not hint_matches(found, hint):
                continue
            if hint.spacegroup is not None:
                sym = _idealised(p.structure, float(tol), max_atoms, min_dist)
                if sym is None:
                    continue  # why: its idealised cell is too large or squeezes atoms; try a looser view
                if len(sym) != len(p.structure):
                    info["z_sampled"] = p.provenance.get("z")
                    p.provenance["z"] = len(sym) // per_fu
                p.structure = sym
                info["symmetrised"] = True
            info.update(matched=True, tolerance_A=float(tol))
            break
        p.provenance["hint"] = info
    ranked = [p for p in proposals if p.provenance["hint"]["matched"]]
    if not ranked and proposals:
        what = (f"space group {hint.symbol} ({hint.spacegroup})" if hint.spacegroup
                else f"{hint.crystal_system} symmetry")
        warnings.warn(f"diffusion backend: none of the {len(proposals)} proposals has {what} (or higher) at spglib "
                      f"tolerances up to {max(tolerances)} Å; returning them unsymmetrised "
                      "(provenance hint.matched = False)", UserWarning, stacklevel=3)
    return ranked + [p for p in proposals if not p.provenance["hint"]["matched"]]
