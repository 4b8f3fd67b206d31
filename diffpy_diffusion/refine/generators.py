"""SrFit ProfileGenerators backed by the torch physics of :mod:`diffpy_diffusion.physics`.

Both generators adapt a :class:`diffpy.structure.Structure` through srfit's own
:class:`~diffpy.srfit.structure.diffpyparset.DiffpyStructureParSet` (no
srreal needed), so ``constrainAsSpaceGroup`` and every srfit recipe idiom work
on them exactly as on srfit's ``PDFGenerator``.

Besides the srfit ``__call__(x)``, each generator can evaluate a *batch* of
parameter states in one vectorised physics call (:meth:`TorchGenerator.compute_batch`);
the refinement driver uses this for a finite-difference Jacobian that costs one
batched forward pass instead of one call per variable.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from diffpy.srfit.fitbase import ProfileGenerator
from diffpy.srfit.structure.diffpyparset import DiffpyStructureParSet

from .compat import MetadataCompatMixin

__all__ = ["TorchGenerator", "XRDGenerator", "TorchPDFGenerator", "chebyshev_background"]


@cache
def _atomic_number(label: str) -> int:
    from pymatgen.core.periodic_table import Element

    from .symmetry import element_of

    return int(Element(element_of(label)).Z)


def chebyshev_background(x: np.ndarray, coeffs, domain: tuple[float, float] | None = None) -> np.ndarray:
    """Chebyshev series on ``x`` with ``domain`` (default: x's range) mapped onto [-1, 1].

    ``coeffs`` (K,) or (B, K) -> (M,) or (B, M).
    """
    x = np.asarray(x, dtype=float)
    lo, hi = (float(x.min()), float(x.max())) if domain is None else (float(domain[0]), float(domain[1]))
    t = (2 * x - (lo + hi)) / max(hi - lo, 1e-12)
    V = np.polynomial.chebyshev.chebvander(t, np.shape(coeffs)[-1] - 1)  # (M, K)
    return np.asarray(coeffs, dtype=float) @ V.T


class TorchGenerator(MetadataCompatMixin, ProfileGenerator):
    """Common base: a structure phase plus named scalar profile parameters.

    Subclasses define ``_profile_defaults`` (name -> default value) and
    :meth:`_physics` (batched forward model).
    """

    _profile_defaults: dict[str, float] = {}

    def __init__(self, name: str):
        ProfileGenerator.__init__(self, name)
        self._phase: DiffpyStructureParSet | None = None
        self.stru = None
        for pname, val in self._profile_defaults.items():
            self._newParameter(pname, val)

    # --- structure ----------------------------------------------------------------
    def setStructure(self, stru, name: str = "phase", periodic: bool = True) -> None:  # noqa: N802 - srfit API
        """Adapt a diffpy.structure.Structure as the phase (same call as srfit's PDFGenerator)."""
        self.setPhase(DiffpyStructureParSet(name, stru), periodic)

    def setPhase(self, parset, periodic: bool = True) -> None:  # noqa: N802 - srfit API
        """Use an existing DiffpyStructureParSet (e.g. shared between generators)."""
        self._phase = parset
        self.stru = parset.stru
        self._reduction = None  # primitive-cell reduction of the PDF generator: found again for a new phase
        self.addParameterSet(parset)

    # srfit 3.4 spelling
    set_structure = setStructure
    set_phase = setPhase

    @property
    def phase(self):
        return self._phase

    # --- state ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Current values of everything the forward model needs (numpy)."""
        st = _structure_arrays(self.stru)
        for pname in self._profile_defaults:
            st[pname] = float(self.get(pname).getValue())
        return st

    def compute_batch(self, x: np.ndarray, states: list[dict[str, Any]]) -> np.ndarray:
        """Profiles for several parameter states at once, shape (len(states), len(x))."""
        import torch

        batch = _state_batch(states)
        pars = {k: np.array([s[k] for s in states], dtype=float) for k in self._profile_defaults}
        with torch.no_grad():
            y = self._physics(batch, np.asarray(x, dtype=float), pars)
        y = y.detach().cpu().numpy() if hasattr(y, "detach") else np.asarray(y)
        return np.where(np.isfinite(y), y, 0.0)

    def _physics(self, batch, x: np.ndarray, pars: dict[str, np.ndarray]):  # pragma: no cover
        raise NotImplementedError

    def __call__(self, x):
        return self.compute_batch(np.asarray(x, dtype=float), [self.state()])[0]

    def _validate(self):
        from diffpy.srfit.exceptions import SrFitError

        if self._phase is None:
            raise SrFitError(f"{self.name}: no structure; call setStructure first")
        ProfileGenerator._validate(self)


#: Parameters each phase has of its own (an extra phase ``p`` has them as ``<name>_p``).
_PHASE_OWN = ("scale", "size_nm", "march_dollase")


def _phase_key(state: dict[str, Any], keys, phase: int | None = None) -> bytes:
    """What one phase's pattern depends on in ``state`` (phase None: the main one), as bytes."""
    arrays = state if phase is None else state["phases"][phase]
    parts = [np.ascontiguousarray(arrays[k]).tobytes() for k in ("lattice", "frac", "numbers", "occupancy", "uiso")]
    parts.append(np.array([float(state[k]) for k in keys]).tobytes())
    return b"|".join(parts)


def _distinct(keys: list[bytes]) -> tuple[list[int], np.ndarray]:
    """Indices of the first of each distinct key, and for every key the position of its first."""
    where: dict[bytes, int] = {}
    first: list[int] = []
    inv = np.empty(len(keys), dtype=int)
    for i, key in enumerate(keys):
        if key not in where:
            where[key] = len(first)
            first.append(i)
        inv[i] = where[key]
    return first, inv


def _structure_arrays(stru) -> dict[str, np.ndarray]:
    """Lattice rows (Å), fractional coordinates, atomic numbers, occupancies and Uiso (Å²) of a diffpy Structure."""
    return {
        "lattice": np.array(stru.lattice.base, dtype=float),
        "frac": np.array(stru.xyz, dtype=float).reshape(-1, 3),
        "numbers": np.array([_atomic_number(a.element) for a in stru], dtype=np.int64),
        "occupancy": np.array([a.occupancy for a in stru], dtype=float),
        "uiso": np.array([a.Uisoequiv for a in stru], dtype=float),
    }


def _state_batch(states: list[dict[str, Any]]):
    """float64 CrystalBatch of structure arrays (:func:`_structure_arrays` keys); Uiso < 0 clipped to 0
    (what the forward models see)."""
    import torch

    from ..physics.crystal import CrystalBatch

    return CrystalBatch.from_arrays(
        [s["lattice"] for s in states], [s["frac"] for s in states], [s["numbers"] for s in states],
        occupancies=[s["occupancy"] for s in states], uisos=[np.clip(s["uiso"], 0.0, None) for s in states],
        dtype=torch.float64,
    )


def _t(a: np.ndarray):
    import torch

    return torch.as_tensor(np.asarray(a, dtype=float), dtype=torch.float64)


class XRDGenerator(TorchGenerator):
    """Whole-pattern powder XRD (Rietveld-style) from :func:`diffpy_diffusion.physics.xrd.xrd_pattern`.

    Managed parameters
    ------------------
    scale
        Overall scale.
    size_nm
        Crystallite size in nm (Scherrer); ≤ 0 switches size broadening off.  The
        shape of the size broadening is :attr:`size_kernel`.
    U, V, W
        Caglioti instrumental widths (deg² for 2θ data): the Gaussian part when
        ``peak_shape == "tch"``.
    eta
        Pseudo-Voigt Lorentzian fraction (``peak_shape == "pv"`` only).
    X, Y
        Lorentzian widths X/cosθ + Y tanθ, degrees 2θ (``peak_shape == "tch"``).
    axial_deg
        Axial-divergence asymmetry (simple axial model, degrees 2θ; see
        :func:`~diffpy_diffusion.physics.xrd.xrd_profile`).
    displacement_deg
        Specimen displacement: peak shift ``displacement_deg · cosθ`` (degrees 2θ).
    march_dollase
        March–Dollase preferred-orientation ratio of the main phase along
        :attr:`po_hkl` (1: none).
    zero_deg
        Zero shift in degrees 2θ (Å⁻¹ for Q data).
    bkg_0 .. bkg_{K-1}
        Chebyshev background coefficients (x mapped onto [-1, 1]), added after ``scale``.
    scale_<p>, size_nm_<p>, march_dollase_<p>
        Scale, crystallite size and preferred orientation of every extra phase
        ``p`` added with :meth:`add_phase` (its lattice and coordinates are the
        parameters of its own structure parameter set).  The instrument
        parameters and the background are shared by all phases.

    Usable metadata
    ---------------
    wavelength, wavelength2, ka2_ratio (Å), x_kind ("2theta" | "q"), radiation ("xray" | "neutron"),
    monochromator_2theta_deg (polarisation; None: no monochromator), size_kernel.
    """

    def __init__(self, name: str = "xrd", nbkg: int = 6, peak_shape: str = "pv"):
        self._profile_defaults = {
            "scale": 1.0,
            "size_nm": 0.0,
            "U": 0.0,
            "V": 0.0,
            "W": 0.0,
            "eta": 0.5,
            "zero_deg": 0.0,
            "X": 0.0,
            "Y": 0.0,
            "axial_deg": 0.0,
            "displacement_deg": 0.0,
            "march_dollase": 1.0,
            **{f"bkg_{k}": 0.0 for k in range(nbkg)},
        }
        self.nbkg = nbkg
        #: x range mapped onto [-1, 1] for the background (set to the data range by build_recipe)
        self.bkg_domain: tuple[float, float] | None = None
        TorchGenerator.__init__(self, name)
        self.wavelength = 1.540598
        self.wavelength2: float | None = None
        self.ka2_ratio = 0.5
        self.x_kind = "2theta"
        self.radiation = "xray"
        #: 2θ of the monochromator crystal (degrees) for the polarisation factor; None: none
        self.monochromator_2theta_deg: float | None = None
        if peak_shape not in ("pv", "tch"):
            raise ValueError(f"peak_shape must be 'pv' or 'tch', got {peak_shape!r}")
        #: "pv" (pseudo-Voigt of U, V, W and eta) or "tch" (Thompson-Cox-Hastings of U, V, W and X, Y)
        self.peak_shape = peak_shape
        #: shape of the size broadening, of the Scherrer FWHM 2πK/L unless a sinc kernel:
        #: "scherrer" (Lorentzian), "gauss", "sinc2" (Laue function); see
        #: :func:`~diffpy_diffusion.physics.xrd.xrd_profile`
        self.size_kernel = "scherrer"
        #: Miller indices of the preferred-orientation planes, per phase name ("" = the main phase)
        self.po_hkl: dict[str, tuple[int, int, int]] = {"": (0, 0, 1)}
        #: names of the extra phases, in the order added
        self.extra_phases: list[str] = []
        self._extra_parsets: list[DiffpyStructureParSet] = []

    def add_phase(self, stru, name: str, po_hkl: tuple[int, int, int] = (0, 0, 1)) -> DiffpyStructureParSet:
        """Add an extra (impurity or second) phase; returns its structure parameter set.

        Creates the parameters ``scale_<name>`` (1), ``size_nm_<name>`` (0: no size broadening)
        and ``march_dollase_<name>`` (1).  ``name`` must be a Python identifier.
        """
        if not name.isidentifier() or name in self.extra_phases:
            raise ValueError(f"phase name must be a new Python identifier, got {name!r}")
        parset = DiffpyStructureParSet(name, stru)
        self.addParameterSet(parset)
        for pname, val in ((f"scale_{name}", 1.0), (f"size_nm_{name}", 0.0), (f"march_dollase_{name}", 1.0)):
            self._profile_defaults[pname] = val
            self._newParameter(pname, val)
        self.extra_phases.append(name)
        self._extra_parsets.append(parset)
        self.po_hkl[name] = tuple(int(v) for v in po_hkl)
        return parset

    @property
    def extra_parsets(self) -> list[DiffpyStructureParSet]:
        """Structure parameter sets of the extra phases, in the order of :attr:`extra_phases`."""
        return list(self._extra_parsets)

    def state(self) -> dict[str, Any]:
        """As :meth:`TorchGenerator.state`, plus ``phases``: the structure arrays of every extra phase."""
        st = TorchGenerator.state(self)
        if self._extra_parsets:
            st["phases"] = [_structure_arrays(ps.stru) for ps in self._extra_parsets]
        return st

    def compute_batch(self, x: np.ndarray, states: list[dict[str, Any]]) -> np.ndarray:
        """Sum of the main phase, the background and every extra phase, for each state.

        Each phase is computed once per distinct input among ``states`` (its structure, its own scale,
        size and preferred orientation, the shared instrument terms), and the background is added
        afterwards: a finite-difference Jacobian perturbs one variable per state, so every column
        but the instrument's leaves all phases but one as they were (KBi3 with two extra phases:
        three physics calls per column before, one now).
        """
        x = np.asarray(x, dtype=float)
        bkg_keys = [f"bkg_{k}" for k in range(self.nbkg)]
        shared = [k for k in self._profile_defaults if k not in bkg_keys and k not in self._own_keys()]
        first, inv = _distinct([_phase_key(s, [*_PHASE_OWN, *shared]) for s in states])
        y = self._main_patterns(x, [dict(states[i], **dict.fromkeys(bkg_keys, 0.0)) for i in first])[inv]
        if self.nbkg:
            bkg = chebyshev_background(x, np.array([[float(s[k]) for k in bkg_keys] for s in states]),
                                       self.bkg_domain)
            y = y + np.where(np.isfinite(bkg), bkg, 0.0)
        if not self.extra_phases:
            return y
        import torch

        for k, name in enumerate(self.extra_phases):
            if all(s[f"scale_{name}"] == 0 for s in states):
                continue  # a phase switched off (e.g. while the main phase is solved alone)
            keys = [*(f"{p}_{name}" for p in _PHASE_OWN), *shared]
            first, inv = _distinct([_phase_key(s, keys, k) for s in states])
            distinct = [states[i] for i in first]
            subs = [s["phases"][k] for s in distinct]
            batch = _state_batch(subs)
            pars = {p: np.array([s[p] for s in distinct], dtype=float) for p in self._profile_defaults}
            with torch.no_grad():
                yk = self._pattern(batch, x, pars, pars[f"scale_{name}"], pars[f"size_nm_{name}"],
                                   pars[f"march_dollase_{name}"], self.po_hkl[name])
            yk = yk.detach().cpu().numpy()
            y = y + np.where(np.isfinite(yk), yk, 0.0)[inv]
        return y

    def _main_patterns(self, x: np.ndarray, states: list[dict[str, Any]]) -> np.ndarray:
        """The main phase's pattern (no background, no extra phase) of each state.

        States whose peaks coincide (one lattice, the same profile terms: they differ only in
        coordinates, ADPs, occupancies or scale, as a finite-difference Jacobian's structure
        columns do) go through :func:`~diffpy_diffusion.physics.xrd.xrd_pattern_fixed_peaks`,
        which profiles each reflection once for all of them; the others in one batch.  Only
        window profiles (TCH, or no size broadening) are split so: the FFT path chooses its work
        grid from the whole batch, and a finite-difference column must share its base's grid.
        """
        if self.peak_shape != "tch" and any(float(s["size_nm"]) > 0 for s in states):
            return TorchGenerator.compute_batch(self, x, states)
        bkg_keys = {f"bkg_{k}" for k in range(self.nbkg)}
        extra_own = self._own_keys() - set(_PHASE_OWN)
        peak_keys = [k for k in self._profile_defaults if k != "scale" and k not in bkg_keys and k not in extra_own]
        groups: dict[bytes, list[int]] = {}
        for i, s in enumerate(states):
            key = np.ascontiguousarray(s["lattice"], dtype=float).tobytes()
            groups.setdefault(key + np.array([float(s[k]) for k in peak_keys]).tobytes(), []).append(i)
        y = np.empty((len(states), len(x)))
        alone = [i for g in groups.values() if len(g) == 1 for i in g]
        if alone:
            y[alone] = TorchGenerator.compute_batch(self, x, [states[i] for i in alone])
        for g in groups.values():
            if len(g) > 1:
                y[g] = self._fixed_peaks(x, [states[i] for i in g])
        return y

    def _fixed_peaks(self, x: np.ndarray, states: list[dict[str, Any]]) -> np.ndarray:
        """Main-phase patterns of states that share their peaks (:meth:`_main_patterns`)."""
        import torch

        from ..physics.xrd import xrd_pattern_fixed_peaks

        batch = _state_batch(states)
        kw = self._pattern_kwargs(states[0])
        kw.pop("scale")
        with torch.no_grad():
            y = xrd_pattern_fixed_peaks(batch, _t(x), scale=_t(np.array([float(s["scale"]) for s in states])), **kw)
        y = y.cpu().numpy()
        return np.where(np.isfinite(y), y, 0.0)

    def _own_keys(self) -> set[str]:
        """Parameters that belong to one phase only: the main phase's and every extra phase's."""
        return {*_PHASE_OWN, *(f"{p}_{n}" for n in self.extra_phases for p in _PHASE_OWN)}

    def _apply_metadata(self) -> None:
        for key in ("wavelength", "wavelength2", "ka2_ratio", "x_kind", "radiation", "monochromator_2theta_deg",
                    "size_kernel"):
            if key in self.meta and self.meta[key] is not None:
                setattr(self, key, self.meta[key])

    def _pattern(self, batch, x, pars, scale, size, po, po_hkl):
        """One phase's pattern (no background) with the shared instrument parameters of ``pars``."""
        from ..physics.xrd import xrd_pattern

        size_arg = _t(np.where(size > 0, size, 1e6)) if np.any(size > 0) else None
        extra = {}
        if self.peak_shape == "tch":
            # every profile on the data grid: the FFT path's Q work grid is as fine as the sharpest
            # instrument peak and as long as the broadest size kernel, which a measured pattern with
            # narrow instrument peaks and a small trial size makes huge (KBi3, 1,500 points: 5x slower at
            # 100 nm, far more below 10 nm)
            extra["method"] = "window"
            # TCH: Gaussian U, V, W and Lorentzian X/cosθ + Y tanθ (eta is the "pv" shape's only)
            extra.update(peak_shape="tch", X=_t(pars["X"]), Y=_t(pars["Y"]))
        for key in ("axial_deg", "displacement_deg"):
            if np.any(pars[key] != 0):
                extra[key] = _t(pars[key])
        if np.any(po != 1):
            # r > 0 always: a bound of the recipe, clipped here for free-standing use
            extra.update(march_dollase=_t(np.clip(po, 1e-3, None)), po_hkl=po_hkl)
        return xrd_pattern(
            batch,
            _t(x),
            x_kind=self.x_kind,
            wavelength=self.wavelength,
            wavelength2=self.wavelength2,
            ka2_ratio=self.ka2_ratio,
            size_nm=size_arg,
            size_kernel=self.size_kernel,
            U=_t(pars["U"]),
            V=_t(pars["V"]),
            W=_t(pars["W"]),
            eta=_t(np.clip(pars["eta"], 0.0, 1.0)),
            zero_deg=_t(pars["zero_deg"]),
            background=None,
            scale=_t(scale),
            radiation=self.radiation,
            monochromator_2theta_deg=self.monochromator_2theta_deg,
            **extra,
        )

    #: :meth:`jacobian` gives exact derivatives of this generator's own model (main phase only)
    exact_jacobian = True
    #: ... but DIFFPY_DIFFUSION_JACOBIAN=auto uses :meth:`jacobian_window` or differences of the state
    #: for the non-linear columns: forward-mode AD costs ~4x more here (:mod:`.jacobian`)
    exact_in_auto = False

    def jacobian(self, x: np.ndarray, state: dict[str, Any], tangents: dict[str, np.ndarray]):
        """Pattern of ``state`` and its exact derivatives along D state directions.

        ``tangents`` maps state keys to arrays with a leading dimension D: "lattice" (D, 3, 3)
        (rows, Å), "frac" (D, N, 3), "uiso" (D, N) Å² and the profile parameters (D,).
        Scale and Chebyshev background are linear (their columns are the unit-scale pattern
        and the basis); every other direction goes through
        :func:`~diffpy_diffusion.physics.xrd.xrd_pattern_jvp` (forward-mode derivatives of the
        same model, one batched pass).  Where the model clips a value (Uiso < 0, η outside
        [0, 1], size ≤ 0: no size broadening) its derivative is zero, as for the model itself.
        Extra phases are not differentiated (``ValueError``; the state map sends them to
        finite differences).  Returns (y (M,), dy (D, M)).
        """
        import torch

        from ..physics.xrd import JVP_PARAMETERS, xrd_pattern_jvp

        if state.get("phases"):
            raise ValueError("jacobian: extra phases are not differentiated")
        x = np.asarray(x, float)
        tans = {k: np.asarray(v, float) for k, v in tangents.items() if v is not None}
        D = len(next(iter(tans.values()))) if tans else 0
        bkg_keys = [f"bkg_{k}" for k in range(self.nbkg)]
        linear = {"scale", *bkg_keys}
        moving = {k: np.flatnonzero(np.any(v.reshape(D, -1) != 0, axis=1)) for k, v in tans.items()} if D else {}
        nl = np.array(sorted({int(d) for k, ds in moving.items() if k not in linear for d in ds}), dtype=int)
        # what the model clips does not move (zero derivative, as in the model)
        uiso = np.asarray(state["uiso"], float)
        size = float(state["size_nm"])
        eta = float(state["eta"])
        clip = {"uiso": uiso < 0, "size_nm": size <= 0, "eta": not 0.0 <= eta <= 1.0,
                "march_dollase": float(state["march_dollase"]) < 1e-3}
        kw = self._pattern_kwargs(state)
        jt = {}
        for k, v in tans.items():
            if k not in ("lattice", "frac", "uiso") and (k not in JVP_PARAMETERS or k not in kw):
                continue  # a parameter the current peak shape ignores (eta of TCH, X/Y of "pv")
            if not len(moving.get(k, ())) or not len(nl) or clip.get(k) is True:
                continue
            t = v[nl].copy()
            if k == "uiso":
                t[:, clip["uiso"]] = 0.0
            jt[k] = torch.as_tensor(t)
        batch = _state_batch([state])
        if len(nl) and not jt:  # directions that move only what the model ignores
            jt = {"scale": torch.zeros(len(nl), dtype=torch.float64)}
        y_t, dy_t = xrd_pattern_jvp(batch, x, jt if len(nl) else {}, **kw)
        y_main = y_t.numpy()
        y_main = np.where(np.isfinite(y_main), y_main, 0.0)
        dy = np.zeros((D, len(x)))
        if len(nl):
            dy[nl] = dy_t.numpy()
        lin = np.setdiff1d(np.arange(D), nl)
        if len(lin) and "scale" in tans and np.any(tans["scale"][lin] != 0):
            scale = float(state["scale"])
            if scale != 0:
                unit = y_main / scale
            else:
                unit = xrd_pattern_jvp(batch, x, {}, **dict(kw, scale=1.0))[0].numpy()
            dy[lin] += tans["scale"][lin, None] * unit[None]
        y = y_main
        if self.nbkg:
            V = np.stack([chebyshev_background(x, np.eye(self.nbkg)[k], self.bkg_domain) for k in range(self.nbkg)])
            y = y + np.array([float(state[k]) for k in bkg_keys]) @ V
            tb = np.stack([tans[k] if k in tans else np.zeros(D) for k in bkg_keys], 1)  # (D, K)
            dy += tb @ V
        return y, np.where(np.isfinite(dy), dy, 0.0)

    #: profile terms of :meth:`_pattern_kwargs` that may differ between the states of :meth:`jacobian_window`
    _WINDOW_TERMS = ("scale", "U", "V", "W", "eta", "X", "Y", "zero_deg", "axial_deg", "displacement_deg",
                     "size_nm", "march_dollase")

    def jacobian_window(self, x: np.ndarray, states: list[dict[str, Any]], weights: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray] | None:
        """Main-phase pattern of ``states[0]`` and its derivatives along D directions, window profiles only.

        ``states`` are the state, then D states A_d and D states B_d moved along each direction d;
        ``weights`` (D, 3) the difference weights of (state, A_d, B_d) (see
        :func:`~diffpy_diffusion.physics.xrd.xrd_pattern_window_jvp`, which differentiates the
        profiles analytically and the peak list by these differences).
        Returns (y (M,), dy (D, M)), or None where that does not apply: FFT profiles (the "pv"
        shape with a size), extra phases, or a moved state that the model clips (Uiso < 0, η
        outside [0, 1], size crossing 0, March–Dollase below 1e-3) or whose peaks do not
        correspond.
        """
        import torch

        from ..physics.xrd import xrd_pattern_window_jvp

        st = states[0]
        if self.extra_phases or (self.peak_shape != "tch" and float(st["size_nm"]) > 0):
            return None
        size = np.array([float(s["size_nm"]) for s in states])
        eta = np.array([float(s["eta"]) for s in states])
        po = np.array([float(s["march_dollase"]) for s in states])
        if (np.any(size > 0) and not np.all(size > 0)) or np.any(po < 1e-3) or any(np.any(s["uiso"] < 0)
                                                                                  for s in states):
            return None
        kw = self._pattern_kwargs(st)
        if "eta" in kw and (np.any(eta < 0) or np.any(eta > 1)):
            return None
        for key in self._WINDOW_TERMS:
            if key in kw and kw[key] is not None:
                kw[key] = _t(np.array([float(s[key]) for s in states]))
        with torch.no_grad():
            out = xrd_pattern_window_jvp(_state_batch(states), _t(x), _t(weights), **kw)
        if out is None:
            return None
        y, dy = (np.where(np.isfinite(a), a, 0.0) for a in (out[0].numpy(), out[1].numpy()))
        return y, dy

    def _pattern_kwargs(self, state: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of :meth:`_pattern` for one state, as numbers (for the derivatives and
        :func:`~diffpy_diffusion.physics.xrd.xrd_pattern_fixed_peaks`)."""
        size = float(state["size_nm"])
        po = float(state["march_dollase"])
        kw: dict[str, Any] = dict(
            x_kind=self.x_kind, wavelength=self.wavelength, wavelength2=self.wavelength2, ka2_ratio=self.ka2_ratio,
            size_nm=size if size > 0 else None, size_kernel=self.size_kernel,
            U=float(state["U"]), V=float(state["V"]), W=float(state["W"]),
            zero_deg=float(state["zero_deg"]), scale=float(state["scale"]), radiation=self.radiation,
            monochromator_2theta_deg=self.monochromator_2theta_deg,
            axial_deg=float(state["axial_deg"]), displacement_deg=float(state["displacement_deg"]),
            march_dollase=max(po, 1e-3), po_hkl=self.po_hkl[""],
        )
        if self.peak_shape == "tch":  # as _pattern: the window method, TCH widths, no eta
            kw.update(method="window", peak_shape="tch", X=float(state["X"]), Y=float(state["Y"]))
        else:
            kw["eta"] = float(np.clip(state["eta"], 0.0, 1.0))
        return kw

    def _physics(self, batch, x, pars):
        y = self._pattern(batch, x, pars, pars["scale"], pars["size_nm"], pars["march_dollase"], self.po_hkl[""])
        bkg = np.stack([pars[f"bkg_{k}"] for k in range(self.nbkg)], axis=1) if self.nbkg else None
        if bkg is not None:
            y = y + _t(chebyshev_background(x, bkg, self.bkg_domain))
        return y


class TorchPDFGenerator(TorchGenerator):
    """Real-space PDF G(r) from :func:`diffpy_diffusion.physics.pdf.pdf_gr` (srreal/PDFgui conventions).

    A drop-in for srfit's ``PDFGenerator`` where srreal is absent: same
    parameter names (scale, delta1, delta2, qbroad, qdamp), same metadata
    (qmax, qmin, stype) and setters, plus ``spdiameter`` (Å, ≤ 0 = bulk).
    """

    _profile_defaults = {"scale": 1.0, "delta1": 0.0, "delta2": 0.0, "qbroad": 0.0, "qdamp": 0.0, "spdiameter": 0.0}

    def __init__(self, name: str = "pdf"):
        TorchGenerator.__init__(self, name)
        self._qmax: float | None = None
        self._qmin = 0.0
        self._stype = "X"

    def setQmax(self, qmax: float | None) -> None:  # noqa: N802 - srfit API
        self._qmax = None if qmax is None or qmax <= 0 else float(qmax)
        self.meta["qmax"] = self._qmax

    def getQmax(self):  # noqa: N802
        return self._qmax

    def setQmin(self, qmin: float) -> None:  # noqa: N802
        self._qmin = float(qmin or 0.0)
        self.meta["qmin"] = self._qmin

    def getQmin(self):  # noqa: N802
        return self._qmin

    def setScatteringType(self, stype: str = "X") -> None:  # noqa: N802
        s = str(stype).upper()[:1]
        if s not in ("X", "N", "E"):
            raise ValueError(f"stype must be 'X' or 'N', got {stype!r}")
        self._stype = s
        self.meta["stype"] = s

    def getScatteringType(self) -> str:  # noqa: N802
        return self._stype

    set_qmax = setQmax
    set_qmin = setQmin
    set_scattering_type = setScatteringType

    def _apply_metadata(self) -> None:
        # Same metadata keys srfit's PDFParser puts on a Profile.
        if self.meta.get("stype"):
            self.setScatteringType(self.meta["stype"])
        if self.meta.get("qmax") is not None:
            self.setQmax(self.meta["qmax"])
        if self.meta.get("qmin") is not None:
            self.setQmin(self.meta["qmin"])
        for pname in ("scale", "delta1", "delta2", "qbroad", "qdamp", "spdiameter"):
            if self.meta.get(pname) is not None:
                self.get(pname).setValue(float(self.meta[pname]))

    def compute_batch(self, x: np.ndarray, states: list[dict[str, Any]]) -> np.ndarray:
        """As :meth:`TorchGenerator.compute_batch`, on the primitive cell when the cell is centred.

        G(r) is a per-atom average, so a centred (A, C, I, F, R) or super cell gives the same
        G(r) as its primitive cell at a fraction of the pair count: 4x fewer for F.  The
        reduction is found once per phase (cached) and checked on every state (constrained refinements keep
        the centring exact; an unconstrained one may break it, then the full cell is used).
        """
        key = tuple(np.asarray(states[0]["numbers"]).tolist())
        cached = getattr(self, "_reduction", None)
        if cached is None or cached[0] != key or (cached[1] is not None and not _reduction_holds(states[0], cached[1])):
            cached = self._reduction = (key, _primitive_reduction(states[0]))
        red = cached[1]
        if red is not None and all(_reduction_holds(s, red) for s in states):
            states = [_reduce_state(s, red) for s in states]
        return TorchGenerator.compute_batch(self, x, states)

    #: :meth:`jacobian` gives exact derivatives of this generator's own model
    exact_jacobian = True

    def jacobian(self, x: np.ndarray, state: dict[str, Any], tangents: dict[str, np.ndarray]):
        """Profile of ``state`` and its exact derivatives along D state directions.

        ``tangents`` maps state keys to arrays with a leading dimension D: "lattice" (D, 3, 3)
        (rows, Å), "frac" (D, N, 3), "uiso" (D, N) Å² and the profile parameters (D,); the
        occupancies are not differentiated.  Uses the primitive cell when the cell is centred
        and every direction moves the atoms of a centring orbit together.  Returns (y (M,),
        dy (D, M)) from :func:`~diffpy_diffusion.physics.pdf.pdf_gr_jvp`.
        """
        import torch

        from ..physics.pdf import pdf_gr_jvp

        tangents = dict(tangents)
        key = tuple(np.asarray(state["numbers"]).tolist())
        cached = getattr(self, "_reduction", None)
        if cached is None or cached[0] != key or (cached[1] is not None and not _reduction_holds(state, cached[1])):
            cached = self._reduction = (key, _primitive_reduction(state))
        red = cached[1]
        if red is not None and _reduction_holds(state, red) and _tangents_keep_reduction(tangents, red):
            M, orbits = red
            keep = [o[0] for o in orbits]
            state = _reduce_state(state, red)
            if tangents.get("lattice") is not None:
                tangents["lattice"] = M @ np.asarray(tangents["lattice"], float)
            if tangents.get("frac") is not None:
                tangents["frac"] = np.asarray(tangents["frac"], float)[:, keep] @ np.linalg.inv(M)
            if tangents.get("uiso") is not None:
                tangents["uiso"] = np.asarray(tangents["uiso"], float)[:, keep]
        batch = _state_batch([state])
        sp = float(state["spdiameter"])
        used = ("lattice", "frac", "uiso", "scale", "delta1", "delta2", "qbroad", "qdamp")
        used += ("spdiameter",) if sp > 0 else ()
        tans = {k: torch.as_tensor(np.asarray(v, float)) for k, v in tangents.items() if v is not None and k in used}
        with torch.no_grad():
            y, dy = pdf_gr_jvp(
                batch, np.asarray(x, float), tans, qmax=self._qmax, qmin=self._qmin,
                qdamp=max(float(state["qdamp"]), 0.0), qbroad=max(float(state["qbroad"]), 0.0),
                delta1=float(state["delta1"]), delta2=float(state["delta2"]), scale=float(state["scale"]),
                spdiameter=sp if sp > 0 else None, radiation="neutron" if self._stype == "N" else "xray",
            )
        return y.numpy(), dy.numpy()

    def _physics(self, batch, x, pars):
        from ..physics.pdf import pdf_gr

        sp = pars["spdiameter"]
        sp_arg = _t(np.where(sp > 0, sp, 1e9)) if np.any(sp > 0) else None
        return pdf_gr(
            batch,
            _t(x),
            qmax=self._qmax,
            qmin=self._qmin,
            qdamp=_t(np.clip(pars["qdamp"], 0, None)),
            qbroad=_t(np.clip(pars["qbroad"], 0, None)),
            delta1=_t(pars["delta1"]),
            delta2=_t(pars["delta2"]),
            scale=_t(pars["scale"]),
            spdiameter=sp_arg,
            radiation="neutron" if self._stype == "N" else "xray",
        )


def _atom_keys(state: dict[str, Any]) -> np.ndarray:
    """One integer per atom: equal for atoms of the same element, Uiso and occupancy."""
    rows = np.column_stack([state["numbers"], np.round(state["uiso"], 8), np.round(state["occupancy"], 6)])
    return np.unique(rows, axis=0, return_inverse=True)[1].ravel()


def _primitive_reduction(state: dict[str, Any], tol: float = 1e-5):
    """(M, orbits) mapping a centred or super cell to a primitive one, or None when it is primitive.

    ``M`` (3×3, rows are primitive vectors in fractional units of the given cell) and
    ``orbits`` (n_prim lists of atom indices related by pure translations; the first of each
    is kept).  Pure translations are the differences f_j − f_0 that map every atom onto an
    atom of the same kind; a basis is any three of them (with the unit vectors) whose
    determinant is 1/k for k translations.
    """
    import itertools

    frac = np.asarray(state["frac"], float) % 1.0
    n = len(frac)
    if n < 2:
        return None
    keys = _atom_keys(state)
    same = keys[:, None] == keys[None, :]
    trans = []
    for j in np.flatnonzero(keys == keys[0]):
        t = (frac[j] - frac[0]) % 1.0
        d = (frac + t)[:, None, :] - frac[None, :, :]
        d -= np.round(d)
        if ((np.abs(d).max(-1) < tol) & same).any(1).all():
            trans.append(t)
    k = len(trans)
    if k <= 1:
        return None
    cands = [np.where(t > 0.5 + tol, t - 1.0, t) for t in trans if np.abs(t).max() > tol] + list(np.eye(3))
    M = None
    for a, b, c in itertools.combinations(cands, 3):
        m = np.array([a, b, c])
        det = np.linalg.det(m)
        if abs(abs(det) - 1.0 / k) < 1e-6:
            M = m if det > 0 else -m  # keep the cell right-handed
            break
    if M is None:
        return None
    orbits, seen = [], set()
    for i in range(n):
        if i in seen:
            continue
        d = (frac[i] + np.array(trans))[:, None, :] - frac[None, :, :]
        d -= np.round(d)
        members = sorted({int(np.flatnonzero((np.abs(d[q]).max(-1) < tol) & same[i])[0]) for q in range(k)})
        seen.update(members)
        orbits.append(members)
    if len(orbits) * k != n:
        return None
    return M, orbits


def _tangents_keep_reduction(tangents: dict[str, Any], red, tol: float = 1e-12) -> bool:
    """True when every direction moves all atoms of each orbit of ``red`` alike (the centring stays)."""
    for key in ("frac", "uiso"):
        t = tangents.get(key)
        if t is None:
            continue
        t = np.asarray(t, float)
        for orb in red[1]:
            if np.abs(t[:, orb] - t[:, orb[:1]]).max(initial=0.0) > tol:
                return False
    return True


def _reduction_holds(state: dict[str, Any], red, tol: float = 1e-7) -> bool:
    """True when every orbit of ``red`` is still related by pure translations in ``state``."""
    frac = np.asarray(state["frac"], float)

    def tset(orb):  # an orbit's translations, mod 1, sorted: the same for every orbit
        t = (frac[orb] - frac[orb[0]]) % 1.0
        t = np.where(t > 1 - tol, 0.0, t)
        return t[np.lexsort(t.T[::-1])]

    ref = tset(red[1][0])
    return all(np.abs(tset(orb) - ref).max() < 1e3 * tol for orb in red[1][1:])


def _reduce_state(state: dict[str, Any], red) -> dict[str, Any]:
    """``state`` on the primitive cell of ``red`` (lattice rows M·L, coordinates f·M⁻¹)."""
    M, orbits = red
    keep = [o[0] for o in orbits]
    out = dict(state)
    out["lattice"] = M @ np.asarray(state["lattice"], float)
    out["frac"] = (np.asarray(state["frac"], float)[keep] @ np.linalg.inv(M)) % 1.0
    for key in ("numbers", "occupancy", "uiso"):
        out[key] = np.asarray(state[key])[keep]
    return out


def _state_structure(state: dict[str, Any], template):
    """A diffpy Structure with the lattice, coordinates and Uiso of ``state`` (atoms as in ``template``)."""
    from diffpy.structure import Lattice

    stru = template.copy()
    stru.lattice = Lattice(base=np.asarray(state["lattice"], float))
    stru.xyz = np.asarray(state["frac"], float)
    for a, u, o in zip(stru, state["uiso"], state["occupancy"]):
        a.anisotropy = False
        a.Uisoequiv = float(max(u, 0.0))
        a.occupancy = float(o)
    return stru


class HookPDFGenerator(TorchPDFGenerator):
    """A PDF generator whose calculator comes from a plugin's ``pdf_calculator`` hook.

    ``calculator(structure, r, **params) -> G(r)`` (see
    :func:`diffpy_diffusion.hookspecs.pdf_calculator`) is called with a
    :class:`diffpy.structure.Structure` and the srreal/PDFgui parameter names;
    the diffpy-diffusion-srreal plugin answers with srreal's PDFCalculator.
    """

    #: the plugin's calculator has no derivatives: finite differences
    exact_jacobian = False

    def __init__(self, calculator, name: str = "pdf"):
        TorchPDFGenerator.__init__(self, name)
        self.calculator = calculator

    def compute_batch(self, x, states):
        out = []
        for st in states:
            stru = _state_structure(st, self.stru)
            sp = st["spdiameter"]
            y = self.calculator(
                stru,
                np.asarray(x, float),
                qmax=self._qmax,
                qmin=self._qmin,
                qdamp=max(st["qdamp"], 0.0),
                qbroad=max(st["qbroad"], 0.0),
                delta1=st["delta1"],
                delta2=st["delta2"],
                scale=st["scale"],
                spdiameter=sp if sp > 0 else None,
                radiation="neutron" if self._stype == "N" else "xray",
            )
            out.append(np.asarray(y, float))
        y = np.stack(out)
        return np.where(np.isfinite(y), y, 0.0)


def pdffit2_pdf(structure, r, *, qmax=None, qmin=0.0, qdamp=0.0, qbroad=0.0, delta1=0.0, delta2=0.0, scale=1.0,
                spdiameter=None, radiation="xray") -> np.ndarray:
    """G(r) of a diffpy Structure computed by pdffit2 (PDFgui's engine), same signature as a
    ``pdf_calculator`` hook answer.  ``qmin`` is ignored, as in PDFgui.

    pdffit2 is C++ and needs no pair search per call in Python, so it is the
    fast choice for refining PDFs (``calculator="pdffit2"``); the torch model is
    the differentiable one used for screening.
    """
    import io
    import sys

    from diffpy.pdffit2 import PdfFit, redirect_stdout

    r = np.asarray(r, float)
    redirect_stdout(io.StringIO())
    try:
        pf = PdfFit()
        pf.add_structure(structure)
        pf.alloc("N" if radiation == "neutron" else "X", float(qmax or 0.0), float(qdamp), float(r[0]), float(r[-1]),
                 len(r))
        pf.setvar("dscale", float(scale))
        pf.setvar("delta1", float(delta1))
        pf.setvar("delta2", float(delta2))
        pf.setvar("qbroad", float(qbroad))
        if spdiameter:
            pf.setvar("spdiameter", float(spdiameter))
        pf.calc()
        r0 = np.asarray(pf.getR(), float)
        g0 = np.asarray(pf.getpdf_fit(), float)
    finally:
        redirect_stdout(sys.stdout)
    return np.interp(r, r0, g0)
