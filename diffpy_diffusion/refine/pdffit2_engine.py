"""PDFgui-style output and a pdffit2 refinement engine.

* :func:`write_stru` — a structure as a PDFgui/pdffit2 ``.stru`` file.
* :func:`pdffit2_plan` — the constraint list (pdffit2's ``@n`` parameters) that
  keeps a structure in its space group: lattice by crystal system, coordinates
  from :class:`diffpy.structure.symmetryutilities.SymmetryConstraints`, one
  Uiso per element; plus scale, qdamp, delta2 (and spdiameter when a particle
  size is known).
* :func:`pdffit2_script` — a ready-to-run Python script applying that plan with
  pdffit2 to the ``.stru`` and the data file (what PDFgui would do).
* :func:`refine_pdffit2` — ``refine_structure(..., engine="pdffit2")``: the same
  plan executed in-process, staged like the srfit engine.
* :func:`write_pdfgui_project` — a ``.ddp`` project through PDFgui's own API
  when diffpy.pdfgui is installed (optional extra ``pdfgui``).
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DiffpyDiffusionError, NotAvailableError
from .symmetry import element_of, symmetrize, to_diffpy, to_pymatgen

__all__ = [
    "write_stru",
    "stru_text",
    "Pdffit2Plan",
    "pdffit2_plan",
    "pdffit2_script",
    "refine_pdffit2",
    "write_pdfgui_project",
]

_FRACTION = re.compile(r"(\d+)/(\d+)")


def _decimal_fractions(formula: str) -> str:
    """'@11 +1/3' -> '@11 +0.333333333333' (pdffit2 parses C++ where 1/3 == 0)."""
    return _FRACTION.sub(lambda m: repr(int(m.group(1)) / int(m.group(2))), formula)


def _as_diffpy(structure):
    if hasattr(structure, "frac_coords"):
        return to_diffpy(structure)
    return structure


def stru_text(structure) -> str:
    """The PDFgui/pdffit2 ``.stru`` text of a pymatgen or diffpy structure."""
    return _as_diffpy(structure).writeStr(format="pdffit")


def write_stru(structure, path, *, force: bool = False) -> Path:
    """Write ``structure`` as a ``.stru`` file (atomically; refuses to overwrite unless ``force``)."""
    from ..io import atomic_write_text

    path = Path(path)
    atomic_write_text(path, stru_text(structure), force=force)
    return path


@dataclass
class Pdffit2Plan:
    """pdffit2 constraints and starting values that keep a structure symmetric.

    Attributes
    ----------
    constraints : list of (var, formula)
        e.g. ``("lat(1)", "@1")``, ``("x(2)", "@101 -0.5")``, ``("dscale", "@20")``.
    setvars : list of (var, value)
        Fixed special-position coordinates (``("x(1)", 0.6667)``).
    pars : dict
        Parameter index -> (name, starting value).
    groups : dict
        Tag -> parameter indices (scale, lat, xyz, adp, peak, qdamp, size).
    """

    constraints: list[tuple[str, str]] = field(default_factory=list)
    setvars: list[tuple[str, float]] = field(default_factory=list)
    pars: dict[int, tuple[str, float]] = field(default_factory=dict)
    groups: dict[str, list[int]] = field(default_factory=dict)
    spacegroup: str = "P1"
    spacegroup_number: int = 1


def pdffit2_plan(
    structure,
    *,
    spacegroup_tol: float = 0.01,
    use_symmetry: bool = True,
    scale: float = 1.0,
    qdamp: float = 0.04,
    delta2: float = 0.0,
    spdiameter: float | None = None,
    default_uiso: float = 0.005,
):
    """Symmetrize ``structure`` and make its pdffit2 constraint plan.

    Returns
    -------
    (diffpy.structure.Structure, Pdffit2Plan)
        The standardized conventional cell (write it as ``.stru``) and its plan.
    """
    from diffpy.structure.symmetryutilities import SymmetryConstraints

    if not hasattr(structure, "frac_coords"):
        structure = to_pymatgen(structure)
    sym = symmetrize(structure, tol=spacegroup_tol, use_symmetry=use_symmetry)
    stru = to_diffpy(sym.structure, default_uiso=default_uiso, spacegroup=sym.symbol)
    plan = Pdffit2Plan(spacegroup=sym.symbol, spacegroup_number=sym.number)

    def par(idx, name, value, group):
        plan.pars[idx] = (name, float(value))
        plan.groups.setdefault(group, []).append(idx)

    L = stru.lattice
    system = sym.spacegroup.crystal_system.upper()
    if system == "CUBIC":
        lat = {1: 1, 2: 1, 3: 1}
    elif system in ("TETRAGONAL", "HEXAGONAL") or (system == "TRIGONAL" and abs(L.gamma - 120) < 1e-6):
        lat = {1: 1, 2: 1, 3: 3}
    elif system == "TRIGONAL":  # rhombohedral axes
        lat = {1: 1, 2: 1, 3: 1, 4: 4, 5: 4, 6: 4}
    elif system == "ORTHORHOMBIC":
        lat = {1: 1, 2: 2, 3: 3}
    elif system == "MONOCLINIC":
        lat = {1: 1, 2: 2, 3: 3, 5: 5}
    else:
        lat = {i: i for i in range(1, 7)}
    values = [L.a, L.b, L.c, L.alpha, L.beta, L.gamma]
    names = ["a", "b", "c", "alpha", "beta", "gamma"]
    for var, p in lat.items():
        plan.constraints.append((f"lat({var})", f"@{p}"))
        if p not in plan.pars:
            par(p, names[p - 1], values[p - 1], "lat")
    positions = np.array([a.xyz for a in stru], dtype=float)
    g = SymmetryConstraints(sym.spacegroup, positions)
    symbols = [f"@{101 + i}" for i in range(len(g.pospars))]
    for i, (name, value) in enumerate(g.pospars):
        par(101 + i, name, value, "xyz")
    for i, formulas in enumerate(g.positionFormulas(symbols)):
        for c in "xyz":
            f = formulas.get(c)
            if f is None:
                continue
            if "@" in f:
                plan.constraints.append((f"{c}({i + 1})", _decimal_fractions(f)))
            else:
                plan.setvars.append((f"{c}({i + 1})", float(eval(_decimal_fractions(f).replace("+", " +")))))
    elements: list[str] = []
    for i, a in enumerate(stru):
        el = element_of(a.element)
        if el not in elements:
            elements.append(el)
            par(201 + elements.index(el), f"Uiso_{el}", a.Uisoequiv or default_uiso, "adp")
        for u in ("u11", "u22", "u33"):
            plan.constraints.append((f"{u}({i + 1})", f"@{201 + elements.index(el)}"))
    plan.constraints.append(("dscale", "@20"))
    par(20, "scale", scale, "scale")
    plan.constraints.append(("qdamp", "@21"))
    par(21, "qdamp", qdamp, "qdamp")
    plan.constraints.append(("delta2", "@22"))
    par(22, "delta2", delta2, "peak")
    if spdiameter:
        plan.constraints.append(("spdiameter", "@23"))
        par(23, "spdiameter", spdiameter, "size")
    return stru, plan


def _apply_plan(pf, plan: Pdffit2Plan) -> None:
    for var, val in plan.setvars:
        pf.setvar(var, val)
    for var, formula in plan.constraints:
        pf.constrain(var, formula)
    for idx, (_, value) in plan.pars.items():
        pf.setpar(idx, value)


def _stype(observation) -> str:
    return "N" if observation.radiation == "neutron" else "X"


def pdffit2_script(
    stru_file: str,
    data_file: str,
    plan: Pdffit2Plan,
    *,
    stype: str = "X",
    qmax: float = 25.0,
    rmin: float | None = None,
    rmax: float | None = None,
    stages: Sequence[Sequence[str]] = (("scale",), ("lat",), ("xyz",), ("adp", "peak", "qdamp")),
) -> str:
    """A standalone Python script refining ``stru_file`` against ``data_file`` with pdffit2."""
    lines = [
        "#!/usr/bin/env python",
        f'"""pdffit2 refinement written by diffpy-diffusion (space group {plan.spacegroup}).',
        "",
        "Run: python this_script.py   (needs diffpy.pdffit2).  Refined structure -> *_refined.stru",
        '"""',
        "from diffpy.pdffit2 import PdfFit",
        "",
        "pf = PdfFit()",
        f"pf.read_struct({stru_file!r})",
        f"pf.read_data({data_file!r}, {stype!r}, {qmax!r}, {plan.pars.get(21, ('', 0.0))[1]!r})",
    ]
    if rmin is not None and rmax is not None:
        lines.append(f"pf.pdfrange(1, {rmin!r}, {rmax!r})")
    lines.append("# fixed special positions")
    lines += [f"pf.setvar({v!r}, {val!r})" for v, val in plan.setvars]
    lines.append("# symmetry constraints: @1.. lattice, @20 scale, @21 qdamp, @22 delta2, @23 spdiameter,")
    lines.append("# @101.. free coordinates, @201.. Uiso per element")
    lines += [f"pf.constrain({v!r}, {f!r})" for v, f in plan.constraints]
    lines += [f"pf.setpar({i}, {val!r})  # {name}" for i, (name, val) in sorted(plan.pars.items())]
    freed: list[str] = []
    for st in stages:
        freed += [t for t in st if t not in freed]
        idx = sorted(i for t in freed for i in plan.groups.get(t, []))
        if not idx:
            continue
        lines.append(f"# stage: {' + '.join(freed)}")
        lines.append('pf.fixpar("ALL")')
        lines += [f"pf.freepar({i})" for i in idx]
        lines.append("pf.refine()")
    stem = os.path.splitext(os.path.basename(stru_file))[0]
    lines += [
        'print("Rw =", pf.getrw())',
        f"pf.save_struct(1, {stem + '_refined.stru'!r})",
        f"pf.save_res({stem + '_refined.res'!r})",
        f"pf.save_pdf(1, {stem + '_refined.fgr'!r})",
        "",
    ]
    return "\n".join(lines)


def _parse_res_sigmas(res: str) -> dict[int, float]:
    """Parameter esds from pdffit2's results text ('@n: value (sigma)' style lines)."""
    out: dict[int, float] = {}
    block = res.split("Refinement parameters", 1)
    if len(block) < 2:
        return out
    for m in re.finditer(r"(\d+)\s*:\s*([-+0-9.eE]+)\s*\(\s*([-+0-9.eE]+)\s*\)", block[1]):
        try:
            out[int(m.group(1))] = float(m.group(3))
        except ValueError:
            pass
    return out


def refine_pdffit2(
    observation,
    structure,
    *,
    stages: Sequence[Sequence[str]] | None = None,
    spacegroup_tol: float = 0.01,
    use_symmetry: bool = True,
    xrange: tuple[float | None, float | None] | None = None,
    start: dict[str, float] | None = None,
    quiet: bool = True,
):
    """Refine a PDF candidate with pdffit2 (PDFgui's engine); returns a :class:`RefinementResult`.

    Parameters as :func:`diffpy_diffusion.refine.refine_structure`; ``start`` may set
    scale, qdamp, delta2, spdiameter.  Staged: scale -> lattice (+size) -> coordinates
    -> Uiso, delta2 (+qdamp when the observation has none).
    """
    from diffpy.pdffit2 import PdfFit, redirect_stdout

    from .results import RefinementResult, observation_sigma, rw_factor

    t0 = time.perf_counter()
    if observation.kind != "pdf":
        raise DiffpyDiffusionError("engine='pdffit2' refines PDF data only; use engine='srfit' for PXRD")
    start = dict(start or {})
    spd = start.get("spdiameter") or (10.0 * observation.size_nm if observation.size_nm else None)
    qdamp = start.get("qdamp", observation.qdamp if observation.qdamp is not None else 0.04)
    stru, plan = pdffit2_plan(
        structure, spacegroup_tol=spacegroup_tol, use_symmetry=use_symmetry, scale=start.get("scale", 1.0),
        qdamp=qdamp, delta2=start.get("delta2", 0.0), spdiameter=spd,
    )
    x = np.asarray(observation.x, float)
    y = np.asarray(observation.y, float)
    sigma = observation_sigma(observation)
    lo, hi = (xrange or (None, None))
    lo = x.min() if lo is None else max(lo, x.min())
    hi = x.max() if hi is None else min(hi, x.max())
    sink = io.StringIO()
    if quiet:
        redirect_stdout(sink)
    try:
        pf = PdfFit()
        pf.read_struct_string(stru.writeStr(format="pdffit"))
        qmax = float(observation.qmax) if observation.qmax else 0.0
        pf.read_data_lists(_stype(observation), qmax, float(qdamp), list(x), list(y),
                           None if sigma is None else list(sigma))
        pf.pdfrange(1, float(lo), float(hi))
        if observation.qbroad:
            pf.setvar("qbroad", float(observation.qbroad))
        _apply_plan(pf, plan)
        if stages is None:
            stages = [["scale"], ["lat", "size"], ["xyz"], ["adp", "peak"]]
            if observation.qdamp is None:
                stages[-1].append("qdamp")
        freed: list[str] = []
        stage_log = []
        converged = True
        message = ""
        pf.fixpar("ALL")
        for st in stages:
            freed += [t for t in st if t not in freed]
            idx = sorted(i for t in freed for i in plan.groups.get(t, []))
            if not idx:
                continue
            pf.fixpar("ALL")
            for i in idx:
                pf.freepar(i)
            try:
                pf.refine()
                stage_log.append({"tags": list(st), "rw": float(pf.getrw())})
            except Exception as exc:  # pdffit2 raises on singular matrices
                converged = False
                message = f"stage {st} failed: {exc}"
                stage_log.append({"tags": list(st), "rw": None, "error": str(exc)})
        res_text = pf.save_res_string()
        sig = _parse_res_sigmas(res_text)
        freed_idx = sorted(i for t in freed for i in plan.groups.get(t, []))
        params = {
            plan.pars[i][0]: {"value": float(pf.getpar(i)), "esd": float(sig.get(i, float("nan")))}
            for i in freed_idx
        }
        r_fit = np.asarray(pf.getR(), float)
        y_calc = np.asarray(pf.getpdf_fit(), float)
        y_obs = np.interp(r_fit, x, y)
        s_fit = None if sigma is None else np.interp(r_fit, x, sigma)
        refined = pf.get_structure(1)
        rw_pdffit = float(pf.getrw())
    finally:
        if quiet:
            import sys

            redirect_stdout(sys.stdout)
    from diffpy.structure import Structure as DStructure

    dstru = DStructure(refined)
    for a in dstru:
        a.anisotropy = False
    rw = rw_factor(y_obs, y_calc, s_fit)
    w = np.ones_like(y_obs) if s_fit is None else 1 / s_fit
    chi2 = float(np.sum(((y_obs - y_calc) * w) ** 2))
    return RefinementResult(
        structure=to_pymatgen(dstru),
        diffpy_structure=dstru,
        rw=rw,
        chi2=chi2,
        reduced_chi2=chi2 / max(len(y_obs) - len(params), 1),
        params=params,
        x=r_fit,
        y_obs=y_obs,
        y_calc=y_calc,
        spacegroup=plan.spacegroup,
        spacegroup_number=plan.spacegroup_number,
        kind="pdf",
        engine="pdffit2",
        nfev=0,
        wall_s=time.perf_counter() - t0,
        stages=stage_log + [{"pdffit2_rw": rw_pdffit}],
        converged=converged,
        message=message,
        recipe=None,
    )


def write_pdfgui_project(path, structure, observation, *, name: str = "fit", force: bool = False,
                         qdamp: float | None = None, refined: dict | None = None) -> Path:
    """Write a PDFgui project (``.ddp``) with one fitting: ``structure`` against ``observation``.

    Uses PDFgui's own control API (headless), so PDFgui opens the file.

    Raises
    ------
    NotAvailableError
        diffpy.pdfgui is not installed (``pip install diffpy-diffusion[pdfgui]``).
    """
    try:
        from diffpy.pdfgui.control.pdfguicontrol import PDFGuiControl
    except Exception as exc:  # ImportError, or its GUI-only deps missing
        raise NotAvailableError(
            f"writing a PDFgui project needs diffpy.pdfgui (pip install 'diffpy-diffusion[pdfgui]'): {exc}"
        ) from None
    path = Path(path)
    if path.exists() and not force:
        from ..errors import OutputExistsError

        raise OutputExistsError(f"{path} exists; use force=True to overwrite")
    import tempfile

    from diffpy.pdfgui.control.constraint import Constraint
    from diffpy.pdfgui.control.parameter import Parameter

    rp = refined or {}
    stru, plan = pdffit2_plan(
        structure,
        scale=rp.get("scale", {}).get("value", 1.0),
        qdamp=rp.get("qdamp", {}).get("value", qdamp if qdamp is not None else (observation.qdamp or 0.04)),
        delta2=rp.get("delta2", {}).get("value", 0.0),
        spdiameter=rp.get("spdiameter", {}).get("value"),
    )
    control = PDFGuiControl()
    fitting = control.newFitting(name)
    with tempfile.TemporaryDirectory() as tmp:
        sfile = os.path.join(tmp, "phase.stru")
        with open(sfile, "w") as fh:
            fh.write(stru.writeStr(format="pdffit"))
        dfile = os.path.join(tmp, "data.gr")
        cols = [observation.x, observation.y]
        if observation.sigma is not None:
            cols = [observation.x, observation.y, np.zeros_like(observation.x), observation.sigma]
        header = ""
        if observation.qmax:
            header += f"# qmax={observation.qmax}\n"
        with open(dfile, "w") as fh:
            fh.write(header)
            np.savetxt(fh, np.column_stack(cols))
        phase = control.loadStructure(fitting, sfile, "phase")
        ds = control.loadDataset(fitting, dfile, "data")
        ds.stype = _stype(observation)
        if observation.qmax:
            ds.qmax = float(observation.qmax)
        ds.qdamp = plan.pars[21][1]
        # The symmetry constraints and parameters of the plan, as PDFgui stores them.
        for var, formula in plan.constraints:
            target = ds if var in ("dscale", "qdamp") else phase
            target.constraints[var] = Constraint(formula)
        for idx, (_, value) in plan.pars.items():
            fitting.parameters[idx] = Parameter(idx, initial=value)
        # PDFgui's save copies over the target (not atomic): save under the same name in a
        # hidden folder beside it (the name is the project name inside the file), then rename
        import shutil

        tmp_dir = path.parent / f".{path.name}.{os.getpid()}.tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        try:
            control.save(str(tmp_dir / path.name))
            os.replace(tmp_dir / path.name, path)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def write_refinement_files(result, observation, outdir, stem: str, *, data_file: str | None = None,
                           force: bool = False, pdfgui_project: bool = False) -> dict[str, Path]:
    """PDFgui-style files for one refined candidate.

    Writes ``{stem}.stru`` always; for PDF data also ``{stem}_pdffit2.py`` (a
    ready-to-run pdffit2 refinement of that ``.stru`` against ``data_file``,
    default: the observation's source file, else ``{stem}_data.gr`` written here)
    and, when ``pdfgui_project`` and diffpy.pdfgui is importable, ``{stem}.ddp``.

    Returns
    -------
    dict
        Kind ("stru", "script", "data", "ddp") -> path written.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    stru = result.diffpy_structure if getattr(result, "diffpy_structure", None) is not None else result.structure
    out["stru"] = write_stru(stru, outdir / f"{stem}.stru", force=force)
    if observation is None or observation.kind != "pdf":
        return out
    if data_file is None:
        if observation.source and os.path.exists(observation.source):
            data_file = os.path.abspath(observation.source)
        else:
            path = outdir / f"{stem}_data.gr"
            cols = [observation.x, observation.y]
            if observation.sigma is not None:
                cols = [observation.x, observation.y, np.zeros_like(observation.x), observation.sigma]
            if path.exists() and not force:
                from ..errors import OutputExistsError

                raise OutputExistsError(f"{path} exists; use force=True to overwrite")
            buf = io.StringIO()
            np.savetxt(buf, np.column_stack(cols), header="r(A) G(r)", comments="# ")
            from ..io import atomic_write_text

            atomic_write_text(path, buf.getvalue(), force=True)  # atomic: no half-written file after a crash
            out["data"] = path
            data_file = path.name
    p = result.params
    _, plan = pdffit2_plan(
        result.structure,
        scale=p.get("scale", {}).get("value", 1.0),
        qdamp=p.get("qdamp", {}).get("value", observation.qdamp if observation.qdamp is not None else 0.04),
        delta2=p.get("delta2", {}).get("value", 0.0),
        spdiameter=p.get("spdiameter", {}).get("value"),
    )
    text = pdffit2_script(
        f"{stem}.stru", str(data_file), plan, stype=_stype(observation),
        qmax=float(observation.qmax or 0.0), rmin=float(np.min(result.x)), rmax=float(np.max(result.x)),
    )
    spath = outdir / f"{stem}_pdffit2.py"
    if spath.exists() and not force:
        from ..errors import OutputExistsError

        raise OutputExistsError(f"{spath} exists; use force=True to overwrite")
    from ..io import atomic_write_text

    atomic_write_text(spath, text, force=True)  # existence checked above; atomic like every output
    out["script"] = spath
    if pdfgui_project:
        try:
            out["ddp"] = write_pdfgui_project(outdir / f"{stem}.ddp", result.structure, observation, name=stem,
                                              force=force, refined=p)
        except NotAvailableError:
            pass
    return out
