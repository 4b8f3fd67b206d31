"""Space-group-constrained sampling (``backends/diffusion/wyckoff.py``, issue 17 lever 3).

The projections are checked against the definition of a space group, independently of our
code: every operation of the group (pyxtal's general position, International Tables) must map
the projected structure onto itself, atom onto atom of the same element; spglib must find the
group (or a supergroup); and projecting twice must change nothing.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from diffpy_diffusion.backends.diffusion import symmetry_hint as sh, wyckoff as wy

# (group, primitive-cell counts): P, A/C, I, F, R (hexagonal axes), cubic F and I, hexagonal, low symmetry
CASES = [(14, {"Na": 2, "Cl": 6}), (62, {"Si": 4, "Ir": 8}), (166, {"Li": 8, "Pb": 1, "O": 6}),
         (225, {"Na": 1, "Cl": 1}), (229, {"W": 1}), (12, {"Ba": 4, "Co": 4, "O": 12}), (63, {"U": 2, "Te": 2, "S": 2}),
         (38, {"Zr": 2, "Cr": 2, "Fe": 2}), (139, {"Tb": 1, "Eu": 4, "S": 5}), (194, {"Mg": 2}),
         (148, {"Li": 8, "Mn": 1, "O": 6}), (182, {"Nb": 6, "Fe": 2, "S": 12}), (227, {"In": 4, "Hg": 2, "S": 8}),
         (199, {"Hg": 6, "S": 4, "Cl": 4}), (70, {"Ca": 2, "O": 4})]


def _placements(number, counts, k=4):
    combos = wy.combinations(number, counts)
    assert combos, (number, counts)
    rng = np.random.default_rng(number)
    return [combos[i] for i in rng.choice(len(combos), min(k, len(combos)), replace=False)]


def _random_state(t, cells=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(cells, 3, 3, generator=g, dtype=torch.float64) + 3 * torch.eye(3, dtype=torch.float64)
    frac = torch.rand(cells, t.natoms, 3, generator=g, dtype=torch.float64)
    return t.project_lattice(lat), t.project_frac(frac)


def _maps_onto_itself(t, frac, tol=1e-7):
    """Every operation of the group, in the primitive basis, permutes the atoms (same element)."""
    g = wy._group(t.spacegroup)
    M = np.array(wy.PRIMITIVE_ROWS[g.symbol[0]], dtype=float).T
    Mi = np.linalg.inv(M)
    species = np.array(t.species)
    for op in g[0].ops:
        R, tr = Mi @ op.rotation_matrix @ M, Mi @ op.translation_vector
        img = frac @ R.T + tr
        d = img[:, None, :] - frac[None, :, :]
        d = np.abs(d - np.round(d)).max(-1)  # (image i, atom j)
        for i in range(len(frac)):
            j = np.nonzero(d[i] < tol)[0]
            if len(j) != 1 or species[j[0]] != species[i]:
                return False
    return True


@pytest.mark.parametrize("number,counts", CASES, ids=[str(c[0]) for c in CASES])
def test_projection_is_symmetric_idempotent_and_found_by_spglib(number, counts):
    import spglib

    for orbits in _placements(number, counts):
        t = wy.template(number, orbits)
        assert sorted(t.species) == sorted(el for el, c in counts.items() for _ in range(c))
        lat, frac = _random_state(t)
        again = t.project_frac(frac)
        d = again - frac
        assert float((d - torch.round(d)).abs().max()) < 1e-10, orbits
        assert float((t.project_lattice(lat) - lat).abs().max()) < 1e-10
        pg = torch.as_tensor(t.point_group)
        G = lat @ lat.transpose(-1, -2)
        for R in pg:  # the metric is invariant: Rᵀ G R = G
            assert float((R.T @ G @ R - G).abs().max()) < 1e-9
        assert bool((torch.linalg.eigvalsh(G) > 0).all())
        numbers = [sorted(counts).index(el) + 1 for el in t.species]
        for b in range(frac.shape[0]):
            x = frac[b].numpy()
            assert _maps_onto_itself(t, x), (number, orbits)
            d = spglib.get_symmetry_dataset((3 * lat[b].numpy(), x, numbers), symprec=1e-4)
            if d is None:  # two atoms of an orbit fell on one point (a random point near a special position)
                continue
            found = int(d.number)
            # the group itself, or a supergroup (t- or k-: a random placement may have extra symmetry)
            assert found == number or sh._point_group_order(found) >= sh._point_group_order(number) \
                or number in sh.t_subgroups(found), (number, orbits, found)


def test_projection_moves_a_slightly_perturbed_symmetric_structure_back():
    t = wy.template(62, (("Er", "4c"), ("Rh", "4c"), ("Sb", "4c")))
    _, frac = _random_state(t, cells=1, seed=3)
    noise = 0.01 * torch.randn(frac.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    back = t.project_frac(torch.remainder(frac + noise, 1.0))
    d = back - frac
    d = d - torch.round(d)
    # the projection is an average, so it removes most of the noise (the free coordinates keep their share)
    assert float(d.abs().max()) < 0.02 and float(d.norm()) < float(noise.norm())


def test_combinations_fill_the_counts_and_use_fixed_sites_once():
    assert sorted(wy.combinations(225, {"Na": 1, "Cl": 1})) == [(("Cl", "4a"), ("Na", "4b")),
                                                                 (("Cl", "4b"), ("Na", "4a"))]
    assert wy.combinations(225, {"Na": 1, "Cl": 3}) == [] or all(
        sum(int(lab[:-1]) for el, lab in c if el == "Cl") == 12 for c in wy.combinations(225, {"Na": 1, "Cl": 3}))
    for c in wy.combinations(62, {"Er": 4, "Sb": 4, "Rh": 4}):
        fixed = [lab for _, lab in c if lab in ("4a", "4b")]
        assert len(fixed) == len(set(fixed))
        for el in ("Er", "Sb", "Rh"):
            assert sum(int(lab[:-1]) for e, lab in c if e == el) == 4
    # the prior puts TiNiSi's placement (all on 4c, the most occupied site of Pnma in the pool) first
    combos = wy.combinations(62, {"Er": 4, "Sb": 4, "Rh": 4})
    w = wy.combination_weights(62, combos)
    assert abs(w.sum() - 1) < 1e-12
    assert combos[int(np.argmax(w))] == (("Er", "4c"), ("Rh", "4c"), ("Sb", "4c"))
    assert len(wy.combinations(12, {"Tb": 2, "Eu": 8, "S": 10})) <= wy.MAX_COMBINATIONS


def test_placements_that_repeat_in_a_smaller_cell_are_flagged():
    assert wy.template(136, (("O", "4d"), ("Ti", "2a"))).extra_translations  # I4/mmm in a P cell
    assert not wy.template(136, (("O", "4f"), ("Ti", "2a"))).extra_translations  # rutile
    assert wy.template(194, (("Mg", "2a"),)).extra_translations  # (0,0,0), (0,0,1/2): half the c axis
    assert not wy.template(194, (("Mg", "2c"),)).extra_translations  # hcp


def test_bravais_type_and_likely_groups():
    assert wy.bravais_type(np.eye(3) * 4.0) == "cP"
    assert wy.bravais_type(np.array([[0, 2, 2], [2, 0, 2], [2, 2, 0.0]])) == "cF"
    assert wy.bravais_type(np.diag([3.0, 4.0, 5.0])) == "oP"
    assert wy.bravais_of_group(166) == "hR" and wy.bravais_of_group(38) == "oC" and wy.bravais_of_group(1) == "aP"
    groups = wy.likely_groups("cF", k=3)
    assert groups and all(wy.bravais_of_group(g) == "cF" for g in groups)
    assert wy.likely_groups("aP") == []


@pytest.fixture(scope="module")
def backend():
    from diffpy_diffusion.backends.diffusion.backend import DEFAULT_WEIGHTS, DiffusionBackend

    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip("shipped weights not present")
    be = DiffusionBackend(steps=8, seed_fraction=0.0)
    be._load()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield be
    torch.set_num_threads(threads)


def _rutile_obs(**kw):
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.simulation import simulate

    s = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"],
                                  [[0, 0, 0], [0.305, 0.305, 0]])
    obs = simulate(s, "xrd", wavelength=1.5406, size_nm=10)
    obs.composition = {"Ti": 1, "O": 2}
    for k, v in kw.items():
        setattr(obs, k, v)
    return obs


def test_space_group_hint_samples_half_the_candidates_in_that_group(backend):
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from diffpy_diffusion.backends.diffusion.backend import EXACT_TOLERANCE

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # free-coordinate candidates may not match
        props = backend.sample(_rutile_obs(spacegroup=136, max_atoms=12), 8, seed=0)
    assert len(props) == 8
    sym = [p for p in props if "wyckoff" in p.provenance]
    assert len(sym) == 4  # the other half: free coordinates in the tetragonal metric (the Z pilot)
    for p in sym:
        assert p.provenance["wyckoff"]["spacegroup"] == 136
        # placements that repeat in a smaller cell (e.g. Ti 2a + O 4d: I4/mmm) are not drawn
        assert p.provenance["hint"]["matched"] and p.provenance["hint"]["tolerance_A"] == EXACT_TOLERANCE
        found = SpacegroupAnalyzer(p.structure, symprec=1e-3).get_space_group_number()
        assert 136 in sh.t_subgroups(found)
        assert p.structure.composition.reduced_formula == "TiO2"
    for p in props:
        if not p.provenance["hint"]["matched"]:
            a, b, c = p.structure.lattice.abc
            assert abs(a - b) < 1e-6 and max(abs(x - 90) for x in p.structure.lattice.angles) < 1e-6


def test_centred_group_hint_samples_its_free_half_in_primitive_cells(backend, monkeypatch):
    import diffpy_diffusion.backends.diffusion.backend as bk

    seen = []
    real = bk.DiffusionBackend._reverse

    def spy(self, nums_list, *a, metric=None, constraint=None, **kw):
        seen.append((metric, constraint is not None))
        return real(self, nums_list, *a, metric=metric, constraint=constraint, **kw)

    monkeypatch.setattr(bk.DiffusionBackend, "_reverse", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        props = backend.sample(_rutile_obs(spacegroup=63, max_atoms=12), 8, seed=2)  # Cmcm
    assert sum("wyckoff" in p.provenance for p in props) == 4
    # the conventional C cell is not what the model knows: no metric on the free half
    assert all(m is None for m, constrained in seen if not constrained) and any(c for _, c in seen)


def test_hint_wyckoff_off_keeps_the_metric_only_path(backend, monkeypatch):
    monkeypatch.setattr(backend, "hint_wyckoff", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        props = backend.sample(_rutile_obs(spacegroup=136, max_atoms=12), 4, seed=0)
    assert all("wyckoff" not in p.provenance for p in props)


def test_wyckoff_fraction_adds_constrained_candidates_in_the_given_groups(backend, monkeypatch):
    monkeypatch.setattr(backend, "wyckoff_fraction", 0.5)
    monkeypatch.setattr(backend, "spacegroups", [136, 58])
    props = backend.sample(_rutile_obs(max_atoms=12), 8, seed=1)
    sym = [p for p in props if "wyckoff" in p.provenance]
    assert len(props) == 8 and len(sym) == 4
    assert {p.provenance["wyckoff"]["spacegroup"] for p in sym} == {136, 58}
    for p in sym:
        t = wy.cached_template(p.provenance["wyckoff"]["spacegroup"],
                               tuple(tuple(o.split(":")) for o in p.provenance["wyckoff"]["orbits"].split()))
        assert [s.specie.symbol for s in p.structure] == list(t.species)


def test_bad_options_are_refused():
    from diffpy_diffusion.backends.diffusion.backend import DiffusionBackend

    with pytest.raises(ValueError, match="wyckoff_fraction"):
        DiffusionBackend(wyckoff_fraction=1.5)
    with pytest.raises(ValueError, match="spacegroups"):
        DiffusionBackend(spacegroups="1,14")
