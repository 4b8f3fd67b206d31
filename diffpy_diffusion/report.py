"""Writers of the propose/refine output folder: CIF/.stru per candidate, results.json, plots, terminal table.

Output folder layout (``diffpy-diffuse propose ... -o OUT``)::

    OUT/rank01.cif   rank01.stru   rank01.png   (one set per ranked candidate)
    OUT/results.json (candidates in rank order + provenance)

Every file is written atomically (temporary file + ``os.replace``), so an
interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import math
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DiffpyDiffusionError
from .types import Observation, Proposal

#: Packages whose versions go into the provenance of results.json.
PROVENANCE_PACKAGES = ("diffpy-diffusion", "numpy", "scipy", "torch", "pymatgen", "spglib",
                       "diffpy.srfit", "diffpy.structure", "diffpy.pdffit2", "pyxtal")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape a result."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PROVENANCE_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def input_checksum(observation: Observation) -> str:
    """sha256 of the input file when it exists, else of the (x, y) arrays."""
    h = hashlib.sha256()
    if observation.source and Path(observation.source).is_file():
        h.update(Path(observation.source).read_bytes())
        return "sha256:" + h.hexdigest()
    h.update(np.ascontiguousarray(observation.x, dtype=float).tobytes())
    h.update(np.ascontiguousarray(observation.y, dtype=float).tobytes())
    return "sha256(xy):" + h.hexdigest()


def observation_summary(observation: Observation) -> dict[str, Any]:
    """JSON-friendly description of the input."""
    return {
        "source": observation.source, "checksum": input_checksum(observation), "kind": observation.kind,
        "x_kind": observation.x_kind, "points": int(len(observation.x)),
        "x_range": [float(np.min(observation.x)), float(np.max(observation.x))] if len(observation.x) else None,
        "composition": observation.formula, "wavelength": observation.wavelength,
        "wavelength2": observation.wavelength2, "radiation": observation.radiation, "size_nm": observation.size_nm,
        "spacegroup_hint": observation.spacegroup, "max_atoms": observation.max_atoms,
    }


#: spglib tolerance (Å) for the space group of a candidate that was not refined: backends'
#: structures are only approximately symmetric, and a type-level answer is what is wanted.
CANDIDATE_SYMPREC = 0.1
#: Score keys in the order a candidate is ranked by: refined Rw (PDF) / Rwp (XRD), else the screen's.
RANKING_SCORES = ("rw", "rwp", "screen_rwp", "screen_rw")


def spacegroup_of(structure, symprec: float = CANDIDATE_SYMPREC) -> tuple[str | None, int | None]:
    """(Hermann–Mauguin symbol, number) found by spglib at ``symprec`` Å, or (None, None)."""
    try:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        sga = SpacegroupAnalyzer(structure, symprec=symprec)
        return sga.get_space_group_symbol(), int(sga.get_space_group_number())
    except Exception:  # noqa: BLE001 - odd cells: report unknown
        return None, None


def candidate_spacegroup(p: Proposal) -> tuple[str | None, int | None]:
    """(symbol, number) of the space group a candidate is reported in.

    The refinement's group when the candidate was refined (``provenance["spacegroup_refined"]``),
    else the group it was symmetrised to (``provenance["spacegroup_symmetrized"]``,
    :func:`diffpy_diffusion.pipeline.symmetrize_unrefined`), else the one spglib finds at
    :data:`CANDIDATE_SYMPREC` Å (:func:`spacegroup_of`).
    """
    prov = p.provenance if isinstance(p.provenance, dict) else {}
    for kind in ("refined", "symmetrized"):
        sg, sgn = prov.get(f"spacegroup_{kind}"), prov.get(f"spacegroup_number_{kind}")
        if sg:
            return sg, None if sgn is None else int(sgn)
    return spacegroup_of(p.structure)


def score_of(scores: dict) -> tuple[str | None, float | None]:
    """The figure of merit a candidate is ranked by: refined Rw/Rwp if present, else the screening one."""
    for key in RANKING_SCORES:
        if key in scores and scores[key] is not None:
            return key, float(scores[key])
    return None, None


def plain(value):
    """``value`` as it reads back from JSON (numpy and pymatgen objects converted, NaN -> None).

    Records cross process boundaries (``propose-batch`` workers) and end up in JSON files and
    ``--json`` output; converting once here makes every caller see the same values.
    """
    import json

    from .io.writers import to_json_text

    return json.loads(to_json_text(value, indent=None))


def candidate_record(p: Proposal, rank: int, files: dict[str, str] | None = None, *,
                     structure: bool = False) -> dict[str, Any]:
    """The one description of a ranked candidate: ``results.json``, ``propose --json``, ``propose-batch``.

    Parameters
    ----------
    p : Proposal
    rank : int
        1-based rank.
    files : dict, optional
        Output file names (``cif``, ``stru``, ``png``...) merged into the record.
    structure : bool
        Also include the structure as ``Structure.as_dict()`` (``propose-batch`` workers send
        it back to the parent, which writes the files).

    Returns
    -------
    dict
        ``rank``, ``formula`` (reduced), ``cell_formula``, ``n_atoms``, ``spacegroup`` and
        ``spacegroup_number`` (the refinement's when refined, else spglib at
        :data:`CANDIDATE_SYMPREC` Å), ``lattice`` (a, b, c in Å; alpha, beta, gamma in
        degrees; volume in Å³), ``backend``, ``backend_version``, ``seed``, ``score_name`` and
        ``score`` (:func:`score_of`), ``rw`` (None when absent or not finite), ``screen_rwp``,
        ``scores``, ``refined``, ``provenance`` (keys not starting with ``_``) and, when the
        refinement recorded them, ``refine_error``, ``refine_converged``, ``refine_message``.
    """
    s = p.structure
    prov = p.provenance if isinstance(p.provenance, dict) else {}
    sg, sgn = candidate_spacegroup(p)
    rw = p.scores.get("rw")
    key, val = score_of(p.scores)
    lat = s.lattice
    rec = {
        "rank": rank,
        "formula": s.composition.reduced_formula,
        "cell_formula": s.composition.formula.replace(" ", ""),
        "n_atoms": len(s),
        "spacegroup": sg,
        "spacegroup_number": None if sgn is None else int(sgn),
        "lattice": {"a": lat.a, "b": lat.b, "c": lat.c, "alpha": lat.alpha, "beta": lat.beta,
                    "gamma": lat.gamma, "volume": lat.volume},
        "backend": p.backend,
        "backend_version": prov.get("backend_version"),
        "seed": p.seed,
        "score_name": key,
        "score": val,
        "rw": None if rw is None or not math.isfinite(rw) else float(rw),
        "screen_rwp": p.scores.get("screen_rwp"),
        "scores": dict(p.scores),
        "refined": dict(p.refined),
        "provenance": {k: v for k, v in prov.items() if not k.startswith("_")},
    }
    for k in ("refine_error", "refine_converged", "refine_message"):
        if k in prov:
            rec[k] = prov[k]
    rec = plain(rec)
    if structure:
        rec["structure"] = s.as_dict()
    if files:
        rec.update(files)
    return rec


def plot_fit(x, y_obs, y_calc, path, *, title: str = "", xlabel: str = "x", force: bool = True) -> Path:
    """Observed / calculated / difference plot as PNG (matplotlib, Agg backend), written atomically."""
    import io as _io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .io.writers import atomic_write_bytes

    x = np.asarray(x, float)
    yo = np.asarray(y_obs, float)
    yc = np.asarray(y_calc, float)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(x, yo, "o", ms=2, mfc="none", color="tab:blue", label="observed")
    ax.plot(x, yc, "-", lw=1.2, color="tab:red", label="calculated")
    span = float(np.nanmax(yo) - np.nanmin(yo)) if len(yo) else 1.0
    off = float(np.nanmin(yo)) - 0.15 * span - float(np.nanmax(yo - yc)) if len(yo) else 0.0
    ax.plot(x, yo - yc + off, "-", lw=0.8, color="tab:green", label="difference (offset)")
    ax.axhline(off, color="0.6", lw=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("intensity" if "r (" not in xlabel else "G(r) (Å⁻²)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue(), force=force)


def xlabel_of(observation: Observation) -> str:
    return {"2theta": "2θ (deg)", "q": "Q (Å⁻¹)", "r": "r (Å)"}[observation.x_kind]


def write_candidate_files(p: Proposal, rank: int, out: Path, observation: Observation, result=None,
                          *, force: bool = True, stem: str | None = None, full: bool = True,
                          svg: bool | None = None) -> dict[str, str]:
    """rankNN.cif, rankNN.stru and rankNN.png (when a fit result is given) -> their file names.

    ``full=False`` writes the structure files only (the cheap checkpoint while candidates are
    still refining); ``full=True`` adds the fit figure and, for PDF fits, the pdffit2 script and
    PDFgui project.  ``svg`` (default: rank 1 only) adds a vector copy of the fit figure; a
    figure costs about 0.2 s as PNG and 0.5 s as SVG.
    """
    from .io import write_cif, write_stru

    stem = stem or f"rank{rank:02d}"
    files = {"cif": f"{stem}.cif", "stru": f"{stem}.stru"}
    write_cif(p.structure, out / files["cif"], force=force)
    try:
        write_stru(p.structure, out / files["stru"], force=force)
    except Exception as exc:  # noqa: BLE001 - .stru is a convenience; say why it is missing
        files["stru"] = None
        p.provenance["stru_error"] = str(exc)
    if not full:
        return files
    if result is not None and observation.kind == "pdf":
        # PDFgui-style: the refined .stru, a ready-to-run pdffit2 script and, with diffpy.pdfgui
        # installed, a PDFgui project.
        from .refine import write_refinement_files

        try:
            written = write_refinement_files(result, observation, out, stem, force=force, pdfgui_project=True)
        except DiffpyDiffusionError as exc:
            p.provenance["pdffit2_script_error"] = str(exc)
        else:
            for kind, key in (("stru", "stru"), ("script", "pdffit2_script"), ("data", "pdffit2_data"), ("ddp", "ddp")):
                if kind in written:
                    files[key] = Path(written[kind]).name
    if result is not None and getattr(result, "y_calc", None) is not None:
        rw = p.scores.get("rw")
        title = f"#{rank} {p.structure.composition.reduced_formula} {p.provenance.get('spacegroup_refined') or ''}"
        if rw is not None:
            title += f"  Rw = {100 * rw:.2f} %"
        try:  # obs/calc/diff with reflection tick marks (PXRD), PNG + SVG (plots.py)
            from .plots import plot_refinement

            with_svg = rank == 1 if svg is None else svg
            plot_refinement(result, out / stem, observation=observation, title=title, force=force,
                            formats=("png", "svg") if with_svg else ("png",))
            if with_svg:
                files["svg"] = f"{stem}.svg"
        except Exception:  # noqa: BLE001 - fall back to the plain plot
            plot_fit(result.x, result.y_obs, result.y_calc, out / f"{stem}.png", title=title,
                     xlabel=xlabel_of(observation), force=force)
        files["png"] = f"{stem}.png"
    return files


def ranked_table(candidates: list[dict], title: str = "Ranked candidates"):
    """A rich Table of results.json-style candidate records."""
    from rich.table import Table

    parsimony = any((c.get("provenance") or {}).get("ranked_on") == "parsimony" for c in candidates)
    caption = ("Ranked by screen Rwp with 1 % per structural parameter (params): too few independent "
               "points for the refined Rw to decide" if parsimony else None)
    t = Table(title=title, caption=caption)
    cols = ["rank", "formula", "space group", "atoms", "a, b, c (Å)", "Rw (%)", "screen Rwp (%)"]
    cols += ["params"] if parsimony else []
    for col in [*cols, "backend"]:
        t.add_column(col, justify="left" if col in ("formula", "space group", "a, b, c (Å)", "backend") else "right")
    for c in candidates:
        lat = c["lattice"]
        rw = c.get("rw")
        sr = c.get("screen_rwp")
        extra = [str((c.get("provenance") or {}).get("n_parameters", "-"))] if parsimony else []
        t.add_row(str(c["rank"]), c["formula"], str(c.get("spacegroup") or "?"), str(c["n_atoms"]),
                  f"{lat['a']:.4f}, {lat['b']:.4f}, {lat['c']:.4f}",
                  "-" if rw is None else f"{100 * rw:.2f}", "-" if sr is None else f"{100 * sr:.1f}",
                  *extra, c["backend"])
    return t


def print_ranked_table(candidates: list[dict], title: str = "Ranked candidates", console=None) -> None:
    """Print :func:`ranked_table` to the terminal."""
    from rich.console import Console

    (console or Console()).print(ranked_table(candidates, title))


def unexplained_peaks_table(peaks: list[dict], title: str = "Peaks no phase explains"):
    """A rich Table of :attr:`~diffpy_diffusion.refine.RefinementResult.unexplained_peaks` rows."""
    from rich.table import Table

    t = Table(title=title)
    q = bool(peaks) and "q_invA" in peaks[0]
    for col in ("Q (1/Å)" if q else "2θ (deg)", "d (Å)", "intensity (% of strongest)", "significance (σ)"):
        t.add_column(col, justify="right")
    for r in peaks:
        pos = r.get("q_invA") if q else r.get("two_theta_deg")
        d = r.get("d_A")
        t.add_row(f"{pos:.3f}", "-" if d is None else f"{d:.4f}", f"{100 * r['rel_intensity']:.1f}",
                  f"{r['significance']:.0f}")
    return t


def print_unexplained_peaks(peaks: list[dict] | None, console=None) -> None:
    """Print the peaks no phase explains (of the best candidate), or nothing for a PDF or when there are none."""
    if peaks is None:
        return
    from rich.console import Console

    con = console or Console()
    if not peaks:
        from .refine.peaks import MIN_REL_INTENSITY, MIN_SIGNIFICANCE

        con.print(f"No unexplained peaks (none of {MIN_SIGNIFICANCE:g} σ and {100 * MIN_REL_INTENSITY:g} % of the "
                  "strongest peak that the phases leave out).", markup=False, highlight=False)
        return
    con.print(unexplained_peaks_table(peaks, title="Peaks no phase explains (an impurity?)"))
