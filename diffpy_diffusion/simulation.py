"""``simulate()``: the public forward-model API (one structure in, one Observation out).

Used by ``diffpy-diffuse simulate``, the demo pattern maker and evaluation.  It
wraps :mod:`diffpy_diffusion.physics` (torch is imported lazily).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .types import TUBE_WAVELENGTHS, Observation

#: Default grids per kind and abscissa.
DEFAULT_GRIDS = {
    ("xrd", "2theta"): (5.0, 90.0, 0.02),
    ("xrd", "q"): (0.5, 8.0, 0.005),
    ("debye", "q"): (0.5, 20.0, 0.01),
    ("debye", "2theta"): (5.0, 90.0, 0.02),
    ("pdf", "r"): (0.5, 30.0, 0.01),
    ("debye", "r"): (0.5, 30.0, 0.01),
}
#: Uiso (Å²) used for PDF/Debye when the structure carries no displacement parameters.
DEFAULT_UISO = 0.005
#: Caglioti W (deg²) used for XRD when neither size nor instrument broadening is given (FWHM 0.05°).
DEFAULT_W = 0.0025


def _to_pymatgen(structure):
    if isinstance(structure, (str, os.PathLike)):
        from .io import read_structure

        return read_structure(structure)
    from pymatgen.core import Structure

    if isinstance(structure, Structure):
        return structure
    if type(structure).__module__.startswith("diffpy.structure"):
        from .io.structures import diffpy_to_pymatgen

        return diffpy_to_pymatgen(structure)
    raise ValueError(
        f"structure: expected a pymatgen or diffpy Structure or a file path, got {type(structure).__name__}"
    )


def _wavelength(value, wavelength2, ka2_ratio):
    if value is None:
        value = TUBE_WAVELENGTHS["CuKa"][0]
    if isinstance(value, str):
        from .io.units import parse_wavelength

        value = parse_wavelength(value)
    w2 = wavelength2 if wavelength2 is not None else getattr(value, "wavelength2", None)
    ratio = getattr(value, "ka2_ratio", ka2_ratio) if wavelength2 is None else ka2_ratio
    lam = float(value)
    if not lam > 0:
        raise ValueError(f"wavelength: must be positive, got {value}")
    return lam, (float(w2) if w2 else None), float(ratio)


def _grid(kind, x_kind, x, x_range):
    if x is None:
        lo, hi, step = x_range if x_range is not None else DEFAULT_GRIDS[(kind, x_kind)]
        if not step > 0:
            raise ValueError(f"x_range: step must be positive, got {step}")
        if not hi > lo:
            raise ValueError(f"x_range: max ({hi}) must exceed min ({lo})")
        x = np.arange(lo, hi + 0.5 * step, step)
    x = np.asarray(x, dtype=float)
    name = {"2theta": "two_theta", "q": "q", "r": "r"}[x_kind]
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name}: grid is empty")
    if x.size > 1 and not np.all(np.diff(x) > 0):
        raise ValueError(f"{name}: grid must be strictly increasing")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: grid has non-finite values")
    if x_kind == "2theta" and (x[0] <= 0 or x[-1] >= 180):
        raise ValueError(f"two_theta: grid must lie inside (0, 180) degrees, got {x[0]:g}..{x[-1]:g}")
    if x[0] < 0:
        raise ValueError(f"{name}: grid must be non-negative")
    return x


def simulate(
    structure,
    kind: str = "xrd",
    x=None,
    *,
    x_kind: str | None = None,
    x_range: tuple[float, float, float] | None = None,
    radiation: str = "xray",
    wavelength: float | str | None = None,
    wavelength2: float | None = None,
    ka2_ratio: float = 0.5,
    size_nm: float | None = None,
    uiso: float | None = None,
    normalize: bool = True,
    dtype: str = "float64",
    device: str = "cpu",
    **params: Any,
) -> Observation:
    """Simulate the XRD pattern, PDF or Debye scattering of one crystal structure.

    Parameters
    ----------
    structure : pymatgen Structure, diffpy Structure or path
    kind : {"xrd", "pdf", "debye"}
        ``"xrd"``: powder pattern of the periodic crystal
        (:func:`~diffpy_diffusion.physics.xrd.xrd_pattern`; ``size_nm`` gives
        Scherrer broadening).  ``"pdf"``: G(r)
        (:func:`~diffpy_diffusion.physics.pdf.pdf_gr`; ``size_nm`` sets
        ``spdiameter = 10·size_nm`` Å).  ``"debye"``: Debye scattering of a
        sphere of diameter ``diameter_nm`` (or ``size_nm``) cut from the
        crystal (:mod:`~diffpy_diffusion.physics.debye`); I(Q) on a Q or 2θ
        grid, or the cluster G(r) on an r grid.
    x : array-like, optional
        Abscissa (2θ in degrees, Q in Å⁻¹ or r in Å); default from
        ``x_range = (min, max, step)`` or :data:`DEFAULT_GRIDS`.
    x_kind : {"2theta", "q", "r"}, optional
        Default: ``"2theta"`` for xrd, ``"r"`` for pdf, ``"q"`` for debye.
    radiation : {"xray", "neutron"}
    wavelength : float or str
        Å or a tube name (``"CuKa"`` adds Kα2); default Cu Kα1.
    size_nm : float, optional
        Crystallite / particle diameter in nm.
    uiso : float, optional
        Isotropic displacement (Å²) for atoms without one in ``structure``
        (default 0 for xrd, 0.005 Å² for pdf and debye).
    normalize : bool
        XRD/Debye intensities scaled to a maximum of 100.
    **params
        Passed on: xrd -- shape_factor, size_kernel, U, V, W, eta, zero_deg,
        background, scale, lorentz_polarization, monochromator_2theta_deg,
        table; pdf -- qmax, qmin, qdamp, qbroad, delta1, delta2, scale,
        spdiameter; debye -- diameter_nm, method, bin_width, qmax, qdamp,
        delta2.

    Returns
    -------
    Observation
        ``meta["simulator"]`` names the model, ``meta["params"]`` the settings.

    Raises
    ------
    ValueError
        Naming the offending parameter (empty structure, bad lattice, unknown
        element, non-positive size, empty or decreasing grid, ...).
    """
    import torch

    from .physics.crystal import CrystalBatch

    if kind not in ("xrd", "pdf", "debye"):
        raise ValueError(f"kind: must be 'xrd', 'pdf' or 'debye', got {kind!r}")
    if radiation not in ("xray", "neutron"):
        raise ValueError(f"radiation: must be 'xray' or 'neutron', got {radiation!r}")
    if size_nm is not None and not (float(size_nm) > 0 and np.isfinite(float(size_nm))):
        raise ValueError(f"size_nm: must be positive, got {size_nm}")
    s = _to_pymatgen(structure)
    if len(s) == 0:
        raise ValueError("structure: empty structure (no atoms)")
    x_kind = x_kind or {"xrd": "2theta", "pdf": "r", "debye": "q"}[kind]
    if kind == "xrd" and x_kind not in ("2theta", "q"):
        raise ValueError(f"x_kind: an XRD pattern needs '2theta' or 'q', got {x_kind!r}")
    if kind == "pdf" and x_kind != "r":
        raise ValueError(f"x_kind: a PDF needs 'r', got {x_kind!r}")
    xs = _grid(kind, x_kind, x, x_range)
    tdtype = {"float64": torch.float64, "float32": torch.float32}.get(str(dtype).replace("torch.", ""))
    if tdtype is None:
        raise ValueError(f"dtype: must be 'float32' or 'float64', got {dtype!r}")
    default_u = DEFAULT_UISO if kind in ("pdf", "debye") else 0.0
    u_fill = default_u if uiso is None else float(uiso)
    batch = CrystalBatch.from_structures([s], uiso=None, dtype=tdtype, device=device)
    has_u = any(site.properties.get("uiso") is not None or site.properties.get("Biso") is not None for site in s)
    if not has_u or (kind in ("pdf", "debye") and not bool((batch.uiso > 0).any())):
        batch = batch.replace(uiso=torch.full_like(batch.uiso, u_fill))
    lam, lam2, ratio = _wavelength(wavelength, wavelength2, ka2_ratio)
    comp = {el.symbol: float(a) for el, a in s.composition.reduced_composition.items()}
    xt = torch.as_tensor(xs, dtype=tdtype, device=device)
    meta: dict[str, Any] = {"simulator": kind, "params": dict(params), "uiso_default": u_fill}
    obs_kw: dict[str, Any] = {}

    if kind == "xrd":
        from .physics.xrd import xrd_pattern

        p = dict(params)
        if size_nm is None and not any(k in p for k in ("U", "V", "W")):
            p["W"] = DEFAULT_W
        with torch.no_grad():
            y = xrd_pattern(
                batch, xt, x_kind=x_kind, wavelength=lam, wavelength2=lam2, ka2_ratio=ratio, size_nm=size_nm,
                radiation=radiation, **p,
            )[0]
        y = y.cpu().numpy()
        if normalize and y.max() > 0:
            y = y * (100.0 / y.max())
        obs_kind = "xrd"
    elif kind == "pdf":
        from .physics.pdf import pdf_gr

        p = dict(params)
        if size_nm is not None and p.get("spdiameter") is None:
            p["spdiameter"] = 10.0 * float(size_nm)
        with torch.no_grad():
            y = pdf_gr(batch, xt, radiation=radiation, **p)[0].cpu().numpy()
        obs_kind = "pdf"
        obs_kw = {k: p.get(k) for k in ("qmax", "qmin", "qdamp", "qbroad") if p.get(k) is not None}
    else:
        from .physics import debye

        p = dict(params)
        diameter_nm = p.pop("diameter_nm", None) or size_nm
        if diameter_nm is None:
            raise ValueError("diameter_nm: the Debye simulator needs a cluster diameter (size_nm or diameter_nm)")
        if not float(diameter_nm) > 0:
            raise ValueError(f"diameter_nm: must be positive, got {diameter_nm}")
        pos, z = debye.cut_sphere(batch, float(diameter_nm), dtype=tdtype, device=device)
        u_atoms = float(batch.uiso.mean())
        meta["atoms"] = int(len(z))
        meta["diameter_nm"] = float(diameter_nm)
        with torch.no_grad():
            if x_kind == "r":
                y = debye.debye_gr(
                    pos, z, xt, diameter=10.0 * float(diameter_nm), uiso=u_atoms, radiation=radiation,
                    delta2=p.get("delta2", 0.0), qdamp=p.get("qdamp", 0.0),
                ).cpu().numpy()
                obs_kind = "pdf"
            else:
                q = xt if x_kind == "q" else 4 * np.pi * torch.sin(torch.deg2rad(xt) / 2) / lam
                y = debye.debye_iq(
                    pos, z, q, method=p.get("method", "histogram"), radiation=radiation, uiso=u_atoms,
                    bin_width=p.get("bin_width", 0.01),
                ).cpu().numpy()
                if normalize and y.max() > 0:
                    y = y * (100.0 / y.max())
                obs_kind = "xrd"
        size_nm = float(diameter_nm)
    return Observation(
        kind=obs_kind, x=xs, y=np.asarray(y, dtype=float), x_kind=x_kind, composition=comp,
        wavelength=lam if x_kind == "2theta" or kind == "xrd" else None, wavelength2=lam2, ka2_ratio=ratio,
        radiation=radiation, size_nm=size_nm, meta=meta, **obs_kw,
    )
