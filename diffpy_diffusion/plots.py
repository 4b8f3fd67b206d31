"""Figures a user wants from a run: the fit of one candidate and the overview of all candidates.

* :func:`fit_figure` -- observed / calculated / difference, with reflection tick marks
  under the pattern for PXRD (one row per phase/candidate) or the r-space fit for a PDF;
* :func:`overview_figure` -- one bar per ranked candidate: its Rw/Rwp, labelled with
  formula, structure type (Pearson symbol + prototype when known) and space group;
* :func:`save_figure` -- writes PNG and SVG (atomically, never overwriting without
  ``force``).

matplotlib is used with the non-interactive Agg backend, so this works on servers.
"""

from __future__ import annotations

import io as _io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_XLABEL = {"2theta": "2θ (deg)", "q": "Q (Å⁻¹)", "r": "r (Å)"}
_CENTERING = {"P": "P", "I": "I", "F": "F", "C": "C", "A": "C", "B": "C", "R": "R"}
_FAMILY = {"triclinic": "a", "monoclinic": "m", "orthorhombic": "o", "tetragonal": "t", "trigonal": "h",
           "hexagonal": "h", "cubic": "c"}


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "svg", "pdf", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- descriptors


def structure_type(structure, provenance: dict | None = None, symprec: float = 0.1) -> dict[str, Any]:
    """Space group and structure-type labels of a structure.

    Returns
    -------
    dict
        ``spacegroup`` (Hermann–Mauguin), ``spacegroup_number``, ``pearson`` (e.g. ``"cF8"``),
        ``anonymous`` (anonymous formula, e.g. ``"AB"``) and ``prototype`` (the template
        label a ``templates`` proposal came from, else ``None``).
    """
    prov = provenance or {}
    out: dict[str, Any] = {"spacegroup": None, "spacegroup_number": None, "pearson": None,
                           "anonymous": structure.composition.anonymized_formula,
                           "prototype": prov.get("structure_type") or prov.get("template")}
    try:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        sga = SpacegroupAnalyzer(structure, symprec=symprec)
        sym = sga.get_space_group_symbol()
        conv = sga.get_conventional_standard_structure()
        fam = _FAMILY.get(sga.get_crystal_system(), "a")
        cen = _CENTERING.get(sym[0], "P")
        out.update(spacegroup=sym, spacegroup_number=int(sga.get_space_group_number()),
                   pearson=f"{fam}{cen}{len(conv)}")
    except Exception:  # noqa: BLE001 - labels are descriptive only
        pass
    return out


def reflection_positions(structure, *, x_kind: str = "2theta", wavelength: float | None = 1.540598,
                         x_range: tuple[float, float] | None = None, min_intensity: float = 0.5) -> np.ndarray:
    """Bragg reflection positions of ``structure`` (2θ in degrees or Q in Å⁻¹), for tick marks.

    Uses the project's forward model (:func:`diffpy_diffusion.physics.xrd.xrd_peaks`,
    merged equivalent reflections); reflections weaker than ``min_intensity`` % of
    the strongest are left out.
    """
    import torch

    from .physics.crystal import CrystalBatch
    from .physics.xrd import xrd_peaks

    lam = float(wavelength) if wavelength else 1.0
    if x_kind == "q" and not wavelength:
        lam = 0.5  # any wavelength short enough to reach the Q range works; Q does not depend on it
    batch = CrystalBatch.from_structures([structure], dtype=torch.float64)
    peaks = xrd_peaks(batch, lam, (0.0, 179.0))[0]
    tth = np.asarray(peaks["two_theta"], float)
    inten = np.asarray(peaks["intensity"], float)
    keep = inten >= min_intensity
    pos = tth[keep]
    if x_kind == "q":
        pos = 4 * np.pi * np.sin(np.radians(pos) / 2) / lam
    if x_range is not None:
        pos = pos[(pos >= x_range[0]) & (pos <= x_range[1])]
    return np.sort(pos)


# --------------------------------------------------------------------------- figures


def fit_figure(x, y_obs, y_calc, *, kind: str = "xrd", x_kind: str = "2theta", ticks: Sequence | None = None,
               title: str = "", rw: float | None = None, background=None):
    """Observed / calculated / difference figure.

    Parameters
    ----------
    x, y_obs, y_calc : array_like
        Abscissa (2θ deg, Q Å⁻¹ or r Å), data and fitted profile.
    kind : {"xrd", "pdf"}
    x_kind : {"2theta", "q", "r"}
    ticks : sequence of (label, positions), optional
        Reflection tick rows under the pattern (PXRD), e.g. from :func:`reflection_positions`.
    title : str
    rw : float, optional
        Rw/Rwp (fraction) shown in the legend.
    background : array_like, optional
        Fitted background, drawn dashed.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    x = np.asarray(x, float)
    yo = np.asarray(y_obs, float)
    yc = np.asarray(y_calc, float)
    diff = yo - yc
    span = float(np.nanmax(yo) - np.nanmin(yo)) or 1.0
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    if kind == "pdf":
        ax.plot(x, yo, "o", ms=2.5, mfc="none", mew=0.7, color="tab:blue", label="G(r) observed")
        ax.plot(x, yc, "-", lw=1.2, color="tab:red", label="G(r) calculated")
    else:
        ax.plot(x, yo, "+", ms=3, mew=0.6, color="tab:blue", label="observed")
        ax.plot(x, yc, "-", lw=1.1, color="tab:red", label="calculated")
        if background is not None:
            ax.plot(x, np.asarray(background, float), "--", lw=0.8, color="0.5", label="background")
    base = float(np.nanmin(np.minimum(yo, yc))) - 0.08 * span
    off = base - float(np.nanmax(diff))
    ax.plot(x, diff + off, "-", lw=0.8, color="tab:green", label="difference")
    ax.axhline(off, color="0.7", lw=0.5)
    bottom = off + float(np.nanmin(diff))
    if ticks and kind != "pdf":
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        step = 0.06 * span
        for j, (label, pos) in enumerate(ticks):
            y0 = bottom - (j + 1) * step
            ax.vlines(np.asarray(pos, float), y0 - 0.35 * step, y0 + 0.35 * step, color=colors[(j + 4) % len(colors)],
                      lw=0.9, label=f"reflections: {label}")
        bottom -= (len(ticks) + 1) * step
    ax.set_ylim(bottom, float(np.nanmax(np.maximum(yo, yc))) + 0.05 * span)
    ax.set_xlim(x.min(), x.max())
    ax.set_xlabel(_XLABEL.get(x_kind, "x"))
    ax.set_ylabel("G(r) (Å⁻²)" if kind == "pdf" else "intensity (a.u.)")
    if rw is not None:
        ax.plot([], [], " ", label=f"{'Rw' if kind == 'pdf' else 'Rwp'} = {100 * rw:.2f} %")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    fig.tight_layout()
    return fig


def overview_figure(candidates: Sequence[dict], *, title: str = "Candidates"):
    """Bar chart of the figure of merit of every ranked candidate.

    Parameters
    ----------
    candidates : sequence of dict
        Ranked records with ``rank``, ``formula``, a score (``rw``, ``rwp``, ``screen_rwp``,
        or ``score`` with ``score_name``) and optionally ``spacegroup``, ``pearson``,
        ``prototype`` (see :func:`candidate_rows`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    rows = list(candidates)
    n = max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.42 * n), dpi=110)
    vals, labels, refined = [], [], []
    for r in rows:
        name, val = _score(r)
        vals.append(np.nan if val is None else 100 * val)
        refined.append(name in ("rw", "rwp"))
        stype = " · ".join(str(v) for v in (r.get("pearson"), r.get("prototype")) if v)
        labels.append(f"#{r.get('rank', '?')}  {r.get('formula', '?')}  {r.get('spacegroup') or '?'}"
                      + (f"\n{stype}" if stype else ""))
    y = np.arange(len(rows))
    colors = ["tab:red" if f else "tab:gray" for f in refined]
    ax.barh(y, np.nan_to_num(vals, nan=0.0), color=colors, height=0.6)
    for yi, v in zip(y, vals):
        if np.isfinite(v):
            ax.text(v, yi, f" {v:.1f} %", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("Rw / Rwp (%)  — red: refined, grey: screening only")
    finite = [v for v in vals if np.isfinite(v)]
    ax.set_xlim(0, (max(finite) if finite else 1.0) * 1.25)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _score(r: dict) -> tuple[str | None, float | None]:
    for key in ("rw", "rwp", "screen_rwp", "screen_rw"):
        v = r.get(key, (r.get("scores") or {}).get(key))
        if v is not None:
            return key, float(v)
    if r.get("score") is not None:
        return r.get("score_name"), float(r["score"])
    return None, None


def candidate_rows(proposals) -> list[dict]:
    """Records for :func:`overview_figure` from ranked :class:`~diffpy_diffusion.types.Proposal` objects."""
    rows = []
    for i, p in enumerate(proposals, 1):
        st = structure_type(p.structure, p.provenance)
        rows.append({"rank": p.scores.get("rank", i), "formula": p.structure.composition.reduced_formula,
                     **st, **{k: v for k, v in p.scores.items() if k in ("rw", "rwp", "screen_rwp")}})
    return rows


def save_figure(fig, path: str | os.PathLike, *, formats: Sequence[str] = ("png", "svg"), force: bool = False,
                dpi: int = 120) -> list[Path]:
    """Save ``fig`` as ``path`` with each suffix in ``formats`` (atomic writes), then close it.

    ``path`` may carry a suffix; it is replaced.  Returns the written paths.
    """
    from .io import atomic_write_bytes

    plt = _pyplot()
    base = Path(path)
    if base.suffix.lower() in (".png", ".svg", ".pdf"):
        base = base.with_suffix("")
    written = []
    try:
        for fmt in formats:
            buf = _io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=dpi, metadata={"Date": None} if fmt == "svg" else None)
            written.append(atomic_write_bytes(base.with_suffix(f".{fmt}"), buf.getvalue(), force=force))
    finally:
        plt.close(fig)
    return [Path(w) for w in written]


def plot_refinement(result, path, *, observation=None, structures: Sequence | None = None, title: str = "",
                    force: bool = False, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Fit figure of a :class:`~diffpy_diffusion.refine.RefinementResult` with reflection ticks (PXRD).

    Parameters
    ----------
    result : RefinementResult
        Needs ``x``, ``y_obs``, ``y_calc``, ``rw``, ``kind``, ``structure``.
    path : path-like
        Output stem; ``.png`` and ``.svg`` are written.
    observation : Observation, optional
        For the x kind and wavelength (default: 2θ, Cu Kα1).
    structures : sequence of (label, structure), optional
        Tick rows; default the refined structure.
    """
    kind = getattr(result, "kind", "xrd")
    x_kind = observation.x_kind if observation is not None else ("r" if kind == "pdf" else "2theta")
    ticks = None
    if kind != "pdf":
        wl = getattr(observation, "wavelength", None) or 1.540598
        rows = structures or [(f"{result.structure.composition.reduced_formula} {result.spacegroup}",
                               result.structure)]
        x = np.asarray(result.x, float)
        ticks = [(label, reflection_positions(s, x_kind=x_kind, wavelength=wl, x_range=(x.min(), x.max())))
                 for label, s in rows]
    fig = fit_figure(result.x, result.y_obs, result.y_calc, kind=kind, x_kind=x_kind, ticks=ticks, title=title,
                     rw=result.rw)
    return save_figure(fig, path, formats=formats, force=force)
