"""Jacobians of a refinement from the physics' own derivatives instead of finite differences.

A residual depends on the free variables p only through the generator's *state*
(lattice, fractional coordinates, Uiso, profile parameters), so its Jacobian is

    J = ∂y/∂state · ∂state/∂p.

:class:`StateMap` gives ∂state/∂p without a physics call: srfit's space-group
constraints are affine in the variables (b = a, x₂ = −x₁ + ½, Uiso of an atom =
Uiso of its element), so their derivative is probed once per set of free
variables by central differences of the constraint equations and reused (a
map that turns out not affine is probed again at every point).  The lattice
rows follow from (a, b, c, α, β, γ) by diffpy's own :class:`~diffpy.structure.Lattice`
(central differences of that closed formula, relative error ~1e-10).

∂y/∂state comes from the generator: :class:`~.generators.TorchPDFGenerator`
gives every column exactly (:func:`~diffpy_diffusion.physics.pdf.pdf_gr_jvp`,
one shared pair sum); :class:`~.generators.XRDGenerator` gives every column exactly
by forward-mode automatic differentiation of the same model
(:func:`~diffpy_diffusion.physics.xrd.xrd_pattern_jvp`).

``DIFFPY_DIFFUSION_JACOBIAN`` (:data:`JACOBIAN_MODES`):

* ``auto`` (default): exact where exact is cheaper.  PDF: exact.  PXRD: the linear
  columns (scale, Chebyshev background) exact; with window profiles (the Rietveld TCH
  model, or no size broadening) the others from analytic derivatives of the peak
  profiles with the peak list differenced per peak
  (:meth:`~.generators.XRDGenerator.jacobian_window`: 2-4x cheaper than differences of
  the state); with FFT profiles differences of the state in one batched physics call
  (no srfit call per variable).  Not forward-mode AD: in torch 2.13 it costs a fixed
  ~0.4 ms for every operation that mixes a dual and a plain tensor (its zero-tangent
  fallback), about 4x the batched differences of a 10-variable PXRD Jacobian
  (``benchmarks/refine_jacobian.md``).
* ``exact``: every column exact, PXRD included.
* ``fd``: the batched finite-difference Jacobian of :class:`~.optimize.ResidualProblem`,
  also used for any generator without derivatives (plugin calculators).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import DiffpyDiffusionError

__all__ = ["JACOBIAN_ENV", "JACOBIAN_MODES", "jacobian_mode", "StateMap"]

#: Environment variable choosing the Jacobian of refinements: "auto" (default), "exact" or "fd".
JACOBIAN_ENV = "DIFFPY_DIFFUSION_JACOBIAN"
JACOBIAN_MODES = ("auto", "exact", "fd")

#: State keys the structural part of a state tangent has (besides the scalar profile parameters).
_STRUCTURE_KEYS = ("lattice", "frac", "numbers", "occupancy", "uiso", "phases")


def jacobian_mode(mode: str | None = None) -> str:
    """``mode``, else $DIFFPY_DIFFUSION_JACOBIAN, else "auto"; one of :data:`JACOBIAN_MODES`."""
    m = (mode or os.environ.get(JACOBIAN_ENV, "") or "auto").strip().lower()
    if m not in JACOBIAN_MODES:
        raise DiffpyDiffusionError(f"{JACOBIAN_ENV}={m!r}: use one of {', '.join(JACOBIAN_MODES)}")
    return m


class StateMap:
    """∂state/∂p of a bundle's free variables, from its srfit constraints (no physics call).

    The flat state is (a, b, c, α, β, γ), the fractional coordinates, Uiso and
    occupancies of every atom, then the generator's scalar parameters.  ``update``
    applies values of the free variables (:func:`~.optimize.update_constraints`).
    """

    def __init__(self, bundle, update):
        #: ``update(recipe, p)`` sets the free variables and updates the constraints
        #: (:func:`~.optimize.update_constraints`)
        self.update = update
        self.b = bundle
        self._cache: dict[tuple[str, ...], np.ndarray] = {}

    def _flat(self) -> tuple[np.ndarray, list[str]]:
        gen = self.b.generator
        st = gen.state()
        scalars = [k for k, v in st.items() if k not in _STRUCTURE_KEYS and np.ndim(v) == 0]
        vec = np.concatenate([
            np.asarray(gen.stru.lattice.abcABG(), float),
            np.asarray(st["frac"], float).ravel(),
            np.asarray(st["uiso"], float),
            np.asarray(st["occupancy"], float),
            np.array([float(st[k]) for k in scalars]),
        ])
        return vec, scalars

    def _probe(self, p: np.ndarray, rel: float) -> tuple[np.ndarray, bool]:
        """Differences of the flat state at p (one-sided), and whether the map is affine.

        Affinity is checked along one combined direction (all variables at once, irrational
        weights): an affine map predicts that state exactly from the one-sided columns.
        """
        recipe = self.b.recipe
        self.update(recipe, p)
        f0, _ = self._flat()
        h = rel * np.maximum(np.abs(p), 1.0)
        cols = []
        for k in range(len(p)):
            pk = p.copy()
            pk[k] += h[k]
            self.update(recipe, pk)
            cols.append((self._flat()[0] - f0) / h[k])
        T = np.stack(cols, 1) if cols else np.zeros((len(f0), 0))
        affine = True
        if len(p):
            c = np.sqrt(np.arange(2, len(p) + 2)) % 1.0 - 0.5  # weights in (−½, ½), none zero
            self.update(recipe, p + c * h)
            pred = f0 + T @ (c * h)
            affine = bool(np.allclose(self._flat()[0], pred, rtol=1e-9, atol=1e-12))
        self.update(recipe, p)
        return T, affine

    def matrix(self, p, names: list[str]) -> np.ndarray:
        """∂(flat state)/∂p, (S, D).  The recipe must be at ``p`` and stays there."""
        p = np.asarray(p, float)
        key = tuple(names)
        T = self._cache.get(key)
        if T is None:
            T, affine = self._probe(p, 1e-4)
            if affine:
                self._cache[key] = T
            else:  # a non-linear constraint: central differences at this point
                Tp, _ = self._probe(p, 1e-6)
                Tm, _ = self._probe(p, -1e-6)
                T = 0.5 * (Tp + Tm)
        return T

    def tangents(self, p, names: list[str], T: np.ndarray | None = None) -> dict[str, Any] | None:
        """State tangents (leading dimension D = len(p)) at ``p`` (the recipe must be at ``p``), or
        None when the map moves something a generator cannot differentiate (occupancies, extra phases)."""
        gen = self.b.generator
        T = self.matrix(p, names) if T is None else T
        st = gen.state()
        if st.get("phases"):
            return None
        n = len(st["uiso"])
        D = T.shape[1]
        o = 6
        t_lp, t_frac = T[:6], T[o : o + 3 * n]
        t_u, t_occ = T[o + 3 * n : o + 4 * n], T[o + 4 * n : o + 5 * n]
        if np.any(t_occ != 0):
            return None
        scalars = [k for k, v in st.items() if k not in _STRUCTURE_KEYS and np.ndim(v) == 0]
        out: dict[str, Any] = {
            "lattice": self.lattice_tangent(t_lp),
            "frac": t_frac.T.reshape(D, n, 3),
            "uiso": t_u.T.copy(),
        }
        for i, k in enumerate(scalars):
            out[k] = T[o + 5 * n + i].copy()
        return out

    def lattice_tangent(self, t_lp: np.ndarray) -> np.ndarray:
        """(D, 3, 3) tangents of the lattice rows for (6, D) tangents of (a, b, c, α, β, γ)."""
        lp = np.asarray(self.b.generator.stru.lattice.abcABG(), float)
        out = np.zeros((t_lp.shape[1], 3, 3))
        for i in np.flatnonzero(np.any(t_lp != 0, axis=1)):
            h = 1e-5 * max(abs(lp[i]), 1.0)
            lo, hi = lp.copy(), lp.copy()
            hi[i] += h
            lo[i] -= h
            d = (self.lattice_rows(hi) - self.lattice_rows(lo)) / (2 * h)
            out += d[None] * t_lp[i][:, None, None]
        return out

    def lattice_rows(self, lp: np.ndarray) -> np.ndarray:
        """Lattice rows (Å) of lattice parameters ``lp`` in the structure's orientation.

        diffpy.structure's formula (``Lattice.setLatPar``: standard base times ``baserot``),
        evaluated without building a Lattice (checked against one on first use).
        """
        lat = self.b.generator.stru.lattice
        rows = _lattice_rows(lp, lat.baserot)
        if not getattr(self, "_rows_checked", False):
            from diffpy.structure import Lattice

            ref = Lattice(*lp, baserot=lat.baserot).base
            if not np.allclose(rows, ref, rtol=1e-12, atol=1e-12):
                raise DiffpyDiffusionError("lattice formula differs from diffpy.structure's; use "
                                           f"{JACOBIAN_ENV}=fd")
            self._rows_checked = True
        return rows


def _lattice_rows(lp, baserot) -> np.ndarray:
    """diffpy.structure's lattice base for (a, b, c, α, β, γ) in Å and degrees."""
    a, b, c = lp[:3]
    ca, cb, cg = np.cos(np.radians(lp[3:]))
    sa, sb = np.sin(np.radians(lp[3:5]))
    vunit = np.sqrt(1.0 + 2.0 * ca * cb * cg - ca * ca - cb * cb - cg * cg)
    ar = sa / (a * vunit)
    cgr = (ca * cb - cg) / (sa * sb)
    sgr = np.sqrt(1.0 - cgr * cgr)
    std = np.array([[1.0 / ar, -cgr / sgr / ar, cb * a], [0.0, b * sa, b * ca], [0.0, 0.0, c]])
    return std @ np.asarray(baserot, float)
