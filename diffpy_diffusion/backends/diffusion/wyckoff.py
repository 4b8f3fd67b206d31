"""Space-group-constrained sampling: Wyckoff orbits imposed at every reverse step (issue 17, lever 3).

The shipped denoiser was trained on P1 cells without any symmetry input.  DiffCSP++ and its
successors learn in Wyckoff form; here the constraint is imposed at sampling time only, by
projection, so no retraining is needed:

* A :class:`WyckoffTemplate` fixes a space group, a choice of Wyckoff positions for every
  element (one of pyxtal's ``list_wyckoff_combinations``), and the sampled cell: the
  *primitive* cell of the group's standard conventional cell (the training cells are
  Niggli-reduced, i.e. primitive), built with :data:`PRIMITIVE_ROWS`.
* After every predictor and corrector step the coordinates are replaced by the nearest
  symmetric arrangement (:meth:`WyckoffTemplate.project_frac`): each atom's position is
  mapped back to its orbit's site by the inverse of the space-group operation that generated
  it, the estimates are averaged on the torus, the average is projected onto the site (mean
  over the site-symmetry group, an affine group fixing the site, so the mean is a fixed point),
  and the orbit is regenerated.  The lattice's Gram matrix is replaced by its average over the
  point group in the sampled basis (:meth:`WyckoffTemplate.project_lattice`: the Reynolds
  operator, a projection onto the invariant metrics that keeps a positive-definite Gram
  positive definite), and the lattice is rebuilt with the least rotation, as in
  :func:`~.symmetry_hint.project_lattice`.

Every proposal sampled this way has the template's space group or a supergroup of it (tested
with spglib).  Which groups to try comes from the user's hint or from the pattern (see
``DiffusionBackend.symmetric_fraction``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np

__all__ = ["PRIMITIVE_ROWS", "BatchConstraint", "WyckoffTemplate", "cached_template", "combination_weights",
           "bravais_type", "combinations", "letter_counts", "likely_groups", "template", "wyckoff_combinations"]

#: Rows: primitive vectors of each centring, in fractional coordinates of the standard
#: conventional cell (R: hexagonal axes, obverse).  Conventional x = Tᵀ x_primitive.  The
#: F, I and R choices are those of :mod:`.symmetry_hint` (α = 60°, 109.47°, rhombohedral),
#: so a hint's metric and a template's point-group average agree.
PRIMITIVE_ROWS = {
    "P": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    "A": ((1, 0, 0), (0, 0.5, -0.5), (0, 0.5, 0.5)),
    "B": ((0.5, 0, -0.5), (0, 1, 0), (0.5, 0, 0.5)),
    "C": ((0.5, -0.5, 0), (0.5, 0.5, 0), (0, 0, 1)),
    "I": ((-0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.5, 0.5, -0.5)),
    "F": ((0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)),
    "R": ((2 / 3, 1 / 3, 1 / 3), (-1 / 3, 1 / 3, 1 / 3), (-1 / 3, -2 / 3, 1 / 3)),
}
_TOL = 1e-6  # fractional: coincidence of images of a generic point (exact arithmetic up to rounding)
#: Placements listed per (group, counts) at most, and orbits per placement at most (the enumeration
#: grows fast in low-symmetry groups; a 20-atom cell of the pool rarely has more than 8 orbits).
MAX_COMBINATIONS = 2000
MAX_ORBITS = 8


def _wrap(d: np.ndarray) -> np.ndarray:
    return d - np.round(d)


@cache
def _group(number: int):
    from pyxtal.symmetry import Group

    return Group(int(number))


@cache
def _general_ops(number: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (K, 3, 3) and translations (K, 3) of the general position, conventional basis."""
    ops = _group(number)[0].ops
    return (np.array([o.rotation_matrix for o in ops], dtype=float),
            np.array([o.translation_vector for o in ops], dtype=float))


@cache
def _centring_letters() -> dict[int, str]:
    """Space-group number -> first letter of its Hermann-Mauguin symbol, from spglib's database."""
    import spglib

    out: dict[int, str] = {}
    for hall in range(1, 531):
        t = spglib.get_spacegroup_type(hall)
        out.setdefault(int(t.number), t.international_short[0])
    return out


def centring_letter(number: int) -> str:
    """First letter of the group's Hermann-Mauguin symbol (its lattice centring)."""
    return _centring_letters()[int(number)]


def lattice_points(number: int) -> int:
    """Lattice points per conventional cell (1 P, 2 A/B/C/I, 3 R in hexagonal axes, 4 F)."""
    return {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "R": 3, "F": 4}[centring_letter(number)]


def wyckoff_combinations(number: int, counts: dict[str, int], *, limit: int = MAX_COMBINATIONS,
                         max_orbits: int = MAX_ORBITS) -> list[tuple[tuple[str, str], ...]]:
    """Ways to place a primitive cell's atoms ``counts`` on Wyckoff positions of group ``number``.

    Parameters
    ----------
    number : int
        Space-group number (standard setting).
    counts : dict
        Atoms of each element in the *primitive* cell.
    limit, max_orbits : int
        At most ``limit`` placements of at most ``max_orbits`` orbits each.  The positions are
        tried in order of how often the training pool occupies them (:func:`letter_counts`), so
        a cut keeps the likely placements.

    Returns
    -------
    list of tuple
        Each a tuple of (element, Wyckoff label such as ``"4e"``) orbits, labels in the
        conventional cell; a position without free coordinates holds one orbit at most.  Empty
        when the counts do not fit the group.
    """
    k = lattice_points(number)
    els = [e for e in counts if int(counts[e]) > 0]
    need = [int(counts[e]) * k for e in els]
    freq = letter_counts().get(int(number), {})
    wps = sorted(((f"{w.multiplicity}{w.letter}", w.multiplicity, bool(np.any(w.ops[0].rotation_matrix)),
                   freq.get(w.letter, 0)) for w in _group(number)), key=lambda x: -x[3])
    out: list[tuple] = []
    orbits: list[tuple[str, str]] = []

    def place(ei: int, left: int, start: int, used: frozenset) -> None:
        if len(out) >= limit:
            return
        if left == 0:
            if ei + 1 == len(els):
                out.append(tuple(orbits))
            else:
                place(ei + 1, need[ei + 1], 0, used)
            return
        if len(orbits) >= max_orbits:
            return
        for j in range(start, len(wps)):
            label, mult, free, _ = wps[j]
            if mult > left or (not free and label in used):
                continue
            orbits.append((els[ei], label))
            place(ei, left - mult, j if free else j + 1, used if free else used | {label})
            orbits.pop()

    if els:
        place(0, need[0], 0, frozenset())
    return out


@dataclass
class WyckoffTemplate:
    """One space group, one Wyckoff placement, in the primitive cell: the projections of the sampler.

    Attributes (per atom j of the sampled cell, primitive fractional coordinates)
    ----------------------------------------------------------------------------
    spacegroup : int
    orbits : tuple of (element, Wyckoff label)
    species : list of str
        Element of every atom, orbit by orbit.
    fwd_r, fwd_t : ndarray (N, 3, 3), (N, 3)
        x_j = fwd_r[j] y + fwd_t[j] for the site point y of its orbit.
    inv_r, inv_t : ndarray
        The inverse operation: the site point estimated from x_j.
    orbit : ndarray (N,) int
        Orbit of every atom.
    site_r, site_t, site_w : ndarray (O, K, 3, 3), (O, K, 3), (O, K)
        Each orbit's site-symmetry operations (padded; weight 0 for padding).
    site_pi, site_p : ndarray (O, 3, 3), (O, 3)
        Each orbit's site as an affine subspace {site_p + site_pi v}: site_pi is the orthogonal
        projector onto its free directions (zero for a fixed point).
    point_group : ndarray (P, 3, 3)
        Distinct rotations in the primitive basis (for the lattice).
    """

    spacegroup: int
    orbits: tuple
    species: list
    fwd_r: np.ndarray
    fwd_t: np.ndarray
    inv_r: np.ndarray
    inv_t: np.ndarray
    orbit: np.ndarray
    site_r: np.ndarray
    site_t: np.ndarray
    site_w: np.ndarray
    site_pi: np.ndarray
    site_p: np.ndarray
    point_group: np.ndarray
    _torch: dict = field(default_factory=dict, repr=False)

    @property
    def natoms(self) -> int:
        return len(self.species)

    @property
    def extra_translations(self) -> bool:
        """Whether a generic structure of this placement repeats in a smaller cell.

        Such a placement (only special positions, e.g. rutile's O on 4d) describes a structure of
        another group with more lattice translations, not one of this group.
        """
        if "extra" not in self._torch:
            import torch

            x = self.project_frac(torch.rand(1, self.natoms, 3, generator=torch.Generator().manual_seed(0),
                                             dtype=torch.float64))[0].numpy()
            sp = np.array(self.species)
            same = np.nonzero(sp == sp[0])[0][1:]
            found = False
            for j in same:
                v = x[j] - x[0]
                d = (x + v)[:, None, :] - x[None, :, :]
                hit = np.abs(d - np.round(d)).max(-1) < 1e-7
                if all(hit[i, sp == sp[i]].any() for i in range(len(x))):
                    found = True
                    break
            self._torch["extra"] = found
        return self._torch["extra"]

    # ------------------------------------------------------------------ torch projections
    def _t(self, dtype):
        import torch

        key = str(dtype)
        if key not in self._torch:
            n_orb = int(self.orbit.max()) + 1
            first = np.array([int(np.nonzero(self.orbit == o)[0][0]) for o in range(n_orb)])
            self._torch[key] = {
                "fwd_r": torch.as_tensor(self.fwd_r, dtype=dtype), "fwd_t": torch.as_tensor(self.fwd_t, dtype=dtype),
                "inv_r": torch.as_tensor(self.inv_r, dtype=dtype), "inv_t": torch.as_tensor(self.inv_t, dtype=dtype),
                "orbit": torch.as_tensor(self.orbit, dtype=torch.long),
                "first": torch.as_tensor(first[self.orbit], dtype=torch.long),
                "count": torch.as_tensor(np.bincount(self.orbit), dtype=dtype),
                "site_r": torch.as_tensor(self.site_r, dtype=dtype),
                "site_t": torch.as_tensor(self.site_t, dtype=dtype),
                "site_w": torch.as_tensor(self.site_w, dtype=dtype),
                "site_pi": torch.as_tensor(self.site_pi, dtype=dtype),
                "site_p": torch.as_tensor(self.site_p, dtype=dtype),
                "pg": torch.as_tensor(self.point_group, dtype=dtype),
                "n_orb": n_orb,
                "shifts": torch.cartesian_prod(*[torch.tensor([0.0, -1.0, 1.0], dtype=dtype)] * 3),
            }
        return self._torch[key]

    def project_frac(self, frac):
        """The symmetric coordinates nearest to ``frac`` (B, N, 3), in [0, 1); N = :attr:`natoms`."""
        import torch

        a = self._t(frac.dtype)
        est = torch.einsum("nij,bnj->bni", a["inv_r"], frac) + a["inv_t"]  # site point seen by every atom
        ref = est[:, a["first"]]
        d = est - ref
        d = d - torch.round(d)
        B = frac.shape[0]
        y = frac.new_zeros(B, a["n_orb"], 3).index_add_(1, a["orbit"], d) / a["count"][None, :, None]
        y = y + ref[:, torch.unique(a["first"])]  # orbits are numbered in order of their first atom
        # onto the site: the mean over its site-symmetry group is a fixed point of that group
        img = torch.einsum("okij,boj->boki", a["site_r"], y) + a["site_t"]
        dd = img - y[:, :, None]
        dd = dd - torch.round(dd)
        w = a["site_w"]
        y = y + (dd * w[..., None]).sum(2) / w.sum(-1)[None, :, None]
        # exactly onto the nearest lattice translate of the site {P s + p}: the mean above is a fixed
        # point only when y starts near the site (early, noisy steps), this projection always is
        # (the integer shift n is searched around its rounded guess: rounding alone can pick a
        # translate along an oblique site line, which moves an already symmetric atom)
        e = y - a["site_p"]
        pi = a["site_pi"]
        n0 = torch.round(e - torch.einsum("oij,boj->boi", pi, e))
        cand = n0[:, :, None] + a["shifts"]  # (B, O, 27, 3)
        r = e[:, :, None] - cand
        res = r - torch.einsum("oij,bokj->boki", pi, r)
        best = (res * res).sum(-1).argmin(-1)
        n = torch.gather(cand, 2, best[..., None, None].expand(-1, -1, 1, 3))[:, :, 0]
        y = a["site_p"] + n + torch.einsum("oij,boj->boi", pi, e - n)
        x = torch.einsum("nij,bnj->bni", a["fwd_r"], y[:, a["orbit"]]) + a["fwd_t"]
        return torch.remainder(x, 1.0)

    def project_lattice(self, lattice):
        """The lattice (B, 3, 3), rows = vectors, nearest to ``lattice`` with the point group's metric."""
        import torch

        pg = self._t(lattice.dtype)["pg"]
        G = lattice @ lattice.transpose(-1, -2)
        # x -> R x keeps every distance |xᵀ L| when Rᵀ G R = G; the mean over the group is invariant
        Gs = torch.einsum("kji,bjl,klm->bim", pg, G, pg) / pg.shape[0]
        Gs = 0.5 * (Gs + Gs.transpose(-1, -2))
        w, V = torch.linalg.eigh(Gs)
        S = V @ torch.diag_embed(w.clamp(min=0).sqrt()) @ V.transpose(-1, -2)
        U, _, Vh = torch.linalg.svd(S @ lattice)
        return S @ (U @ Vh)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(np.abs(_wrap(a - b)) < _TOL))


def template(number: int, orbits, *, rng: np.random.Generator | None = None) -> WyckoffTemplate:
    """The :class:`WyckoffTemplate` of group ``number`` with the Wyckoff ``orbits`` ((element, label), ...)."""
    rng = rng or np.random.default_rng(0)
    g = _group(number)
    by_label = {f"{w.multiplicity}{w.letter}": w for w in g}
    T = np.array(PRIMITIVE_ROWS[centring_letter(number)], dtype=float)
    M = T.T  # conventional x = M x_primitive
    Mi = np.linalg.inv(M)
    R, t = _general_ops(number)
    Rp = np.einsum("ij,kjl,lm->kim", Mi, R, M)  # operations in the primitive basis
    tp = t @ Mi.T
    Rp_r = np.round(Rp)
    if np.abs(Rp - Rp_r).max() > 1e-6:
        raise ValueError(f"space group {number}: operations are not integral in the primitive basis")
    Rp = Rp_r
    pg = np.unique(Rp.reshape(len(Rp), 9), axis=0).reshape(-1, 3, 3)
    species, fwd_r, fwd_t, inv_r, inv_t, orbit, site_ops, site_pi, site_p = [], [], [], [], [], [], [], [], []
    for o, (el, label) in enumerate(orbits):
        wp = by_label[label]
        op0 = wp.ops[0]
        y_conv = op0.rotation_matrix @ rng.random(3) + op0.translation_vector  # generic point of the site
        y = Mi @ y_conv
        P = Mi @ op0.rotation_matrix @ M  # the site's free directions, primitive basis
        U, sv, _ = np.linalg.svd(P)
        U = U[:, sv > 1e-8]
        site_pi.append(U @ U.T)
        site_p.append(Mi @ op0.translation_vector)
        imgs = np.einsum("kij,j->ki", Rp, y) + tp
        site = [k for k in range(len(Rp)) if _same(imgs[k], y)]
        d = imgs[:, None, :] - imgs[None, :, :]
        same = np.all(np.abs(_wrap(d)) < _TOL, axis=-1)  # (K, K)
        first = np.argmax(same, axis=1)  # the first operation giving the same image
        kept = [k for k in range(len(Rp)) if first[k] == k]
        expect = wp.multiplicity // lattice_points(number)
        if len(kept) != expect:
            raise ValueError(f"space group {number} {label}: {len(kept)} atoms in the primitive cell, "
                             f"expected {expect}")
        for k in kept:
            species.append(el)
            fwd_r.append(Rp[k])
            fwd_t.append(tp[k])
            ri = np.round(np.linalg.inv(Rp[k]))
            inv_r.append(ri)
            inv_t.append(-ri @ tp[k])
            orbit.append(o)
        site_ops.append(site)
    kmax = max(len(s) for s in site_ops)
    n_orb = len(orbits)
    site_r = np.tile(np.eye(3), (n_orb, kmax, 1, 1))
    site_t = np.zeros((n_orb, kmax, 3))
    site_w = np.zeros((n_orb, kmax))
    for o, s in enumerate(site_ops):
        site_r[o, : len(s)] = Rp[s]
        site_t[o, : len(s)] = tp[s]
        site_w[o, : len(s)] = 1.0
    return WyckoffTemplate(int(number), tuple(orbits), species, np.array(fwd_r), np.array(fwd_t), np.array(inv_r),
                           np.array(inv_t), np.array(orbit), site_r, site_t, site_w, np.array(site_pi),
                           np.array(site_p), pg)


@cache
def cached_template(number: int, orbits: tuple) -> WyckoffTemplate:
    """:func:`template` kept between calls (its construction is deterministic)."""
    return template(number, orbits)


@cache
def _combinations_cached(number: int, counts: tuple) -> tuple:
    return tuple(wyckoff_combinations(number, dict(counts)))


def combinations(number: int, counts: dict[str, int]) -> tuple:
    """:func:`wyckoff_combinations`, kept between calls."""
    return _combinations_cached(int(number), tuple(sorted((str(k), int(v)) for k, v in counts.items())))


class BatchConstraint:
    """The projections of a batch whose cells may follow different templates (same atom count)."""

    def __init__(self, templates: list[WyckoffTemplate]):
        self.templates = templates
        groups: dict[int, list[int]] = {}
        for b, t in enumerate(templates):
            groups.setdefault(id(t), []).append(b)
        self._groups = [(templates[idx[0]], idx) for idx in groups.values()]

    def _apply(self, x, fn_name: str):
        import torch

        out = x.clone()
        for t, idx in self._groups:
            ii = torch.as_tensor(idx, dtype=torch.long)
            out[ii] = getattr(t, fn_name)(x[ii])
        return out

    def frac(self, frac):
        """Symmetric coordinates (B, N, 3)."""
        return self._apply(frac, "project_frac")

    def lattice(self, lattice):
        """Lattices (B, 3, 3) with each template's point-group metric."""
        return self._apply(lattice, "project_lattice")


@cache
def _library_fields() -> dict[str, np.ndarray]:
    """``spacegroup``, ``wyckoff`` and atoms per cell of the shipped template library (empty if absent)."""
    from ..templates import SHIPPED_LIBRARY

    if not SHIPPED_LIBRARY.is_file():
        return {"spacegroup": np.zeros(0, int), "wyckoff": np.zeros(0, "S1"), "natoms": np.zeros(0, int)}
    with np.load(SHIPPED_LIBRARY, allow_pickle=False) as d:
        return {"spacegroup": d["spacegroup"].astype(int), "wyckoff": d["wyckoff"],
                "natoms": np.diff(d["offsets"]).astype(int)}


@cache
def letter_counts() -> dict[int, dict[str, int]]:
    """Orbits per (space group, Wyckoff letter) in the shipped template library (the training pool).

    Read from ``backends/data/pool_templates.npz`` (its ``spacegroup`` and ``wyckoff`` fields,
    spglib's letters at 0.1 Å); a letter names the same kind of site in every origin choice, so
    the counts carry over to pyxtal's settings.
    """
    from collections import Counter

    lib = _library_fields()
    out: dict[int, Counter] = {}
    for g, w in zip(lib["spacegroup"], lib["wyckoff"]):
        c = out.setdefault(int(g), Counter())
        for orb in w.decode().split("."):
            if orb:
                c[orb.lstrip("0123456789")] += 1
    return {g: dict(c) for g, c in out.items()}


def combination_weights(number: int, combos) -> np.ndarray:
    """Prior probability of each Wyckoff placement: the product of its orbits' letter frequencies.

    Frequencies are :func:`letter_counts` of the group with add-one smoothing over its letters,
    so placements on the sites real crystals of that group use (and with fewer orbits) come
    first; a group absent from the library gets a uniform prior.
    """
    counts = letter_counts().get(int(number), {})
    letters = [w.letter for w in _group(number)]
    total = sum(counts.get(x, 0) for x in letters) + len(letters)
    freq = {x: (counts.get(x, 0) + 1) / total for x in letters}
    logw = np.array([sum(np.log(freq[lab.lstrip("0123456789")]) for _, lab in c) for c in combos])
    if not len(logw):
        return logw
    w = np.exp(logw - logw.max())
    return w / w.sum()


#: Crystal family letter of each crystal system (trigonal lattices are hexagonal ones: hP or hR).
_FAMILY = {"triclinic": "a", "monoclinic": "m", "orthorhombic": "o", "tetragonal": "t", "trigonal": "h",
           "hexagonal": "h", "cubic": "c"}


def bravais_of_group(number: int) -> str:
    """Bravais type of a space group: crystal family letter and centring, e.g. ``"oP"``, ``"hR"``, ``"mC"``.

    A and B centring count as C (the same lattices in another setting); trigonal P groups are ``hP``.
    """
    from ..common import crystal_system

    fam = _FAMILY[crystal_system(number)]
    c = centring_letter(number)
    return fam + ("C" if c in "AB" else c)


def bravais_type(lattice, symprec: float = 0.1) -> str:
    """Bravais type (see :func:`bravais_of_group`) of a lattice (rows, Å), from its metric at ``symprec`` Å.

    spglib's space group of one atom per lattice point is the lattice's holohedry.
    """
    import spglib

    try:
        ds = spglib.get_symmetry_dataset((np.asarray(lattice, float), [[0.0, 0.0, 0.0]], [1]), symprec=symprec)
    except Exception:  # noqa: BLE001 - spglib raises on degenerate cells
        ds = None
    return bravais_of_group(int(ds.number)) if ds is not None else "aP"


@cache
def _bravais_table() -> np.ndarray:
    return np.array([bravais_of_group(g) for g in range(1, 231)])


def likely_groups(bravais: str, natoms: int | None = None, k: int = 2) -> list[int]:
    """The ``k`` space groups of a Bravais type most frequent in the shipped library (the training pool).

    Counted among library cells of ``natoms`` atoms when there are at least 20 such cells of that
    type, else among all of them; P1 and P-1 are left out (free sampling covers them).
    """
    lib = _library_fields()
    sg, nat = lib["spacegroup"], lib["natoms"]
    if not len(sg):
        return []
    types = _bravais_table()[sg - 1]
    sel = (types == bravais) & (sg >= 3)
    if natoms is not None and int(((nat == int(natoms)) & sel).sum()) >= 20:
        sel &= nat == int(natoms)
    counts = np.bincount(sg[sel], minlength=231)
    order = np.argsort(-counts, kind="stable")
    return [int(g) for g in order[:k] if counts[g] > 0]
