"""The evaluation protocol: simulated nanocrystal PXRD of known structures -> propose -> match.

``diffpy-diffuse evaluate --dataset mp20-test --limit N --size 10nm --backend a,b,a+c``

1. **Targets**: the first ``N`` rows of ``mp20/test.csv.gz`` (the evaluation set of
   docs/design.md; never in any training pool).
2. **Pattern** (as in PXRDnet, Guo et al. 2025): Cu Kα (λ = 1.54184 Å, one line), reflections
   up to 2θ = 90°, on a Q grid 0–8.15 Å⁻¹ (:data:`N_Q` points), finite crystallite size
   with the sinc² (Laue) size kernel, Lorentz-polarisation, Uiso = 0.005 Å² (Debye–Waller),
   intensity scaled to a maximum of 1, Gaussian noise of σ = 1e-3 (of the maximum);
   seeded per target.  The composition is given (reduced formula).
3. **Propose**: each backend spec runs :func:`diffpy_diffusion.pipeline.propose`
   (sample ``n`` -> screen -> refine the best ``refine_top``), ranked list of ``top``.
4. **Match**: a target is solved at k if any of the top-k candidates matches the truth
   under pymatgen's ``StructureMatcher(stol=0.3, ltol=0.2, angle_tol=5)``; RMS displacement
   is pymatgen's ``get_rms_dist`` (normalised by (V/N)^(1/3), as in CDVAE/DiffCSP) of the
   best-ranked match.

Other data (``--pdf``, ``--simulator pymatgen``; :mod:`diffpy_diffusion.evaluate.targets`): the
G(r) of a spherical particle of each target (Debye pair sum of a cut sphere, Qmax 20 Å⁻¹,
Qdamp 0.04 Å⁻¹, r 1–30 Å), or the PXRD pattern made by pymatgen's ``XRDCalculator`` with
Scherrer Gaussians; steps 3-4 are the same.  The settings line of a run records the mode, so
``--resume`` does not mix modes.

Results: top-1/5/10 match rates, mean RMS of matches, mean Rwp of the rank-1 refined
candidate, seconds per target, and per backend how many targets it alone solved.  Each record
also holds the space group of the first matching candidate as the report gives it
(:func:`diffpy_diffusion.report.candidate_spacegroup`) and the reference's (spglib at the same
tolerance), so the summary says what share of the matched answers carry the reference's space
group, a subgroup of it (pymatgen's group-subgroup tables) or another one.  ``raw_match=True``
(``--raw-match``) also matches every raw proposal of each backend against the truth: the
raw-match rate is what screening and ranking could at best keep.

``dataset="pool-val"``: the validation split of the training pool
(:func:`pool_validation_entries`), for choosing settings without touching the evaluation set.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DiffpyDiffusionError
from ..types import Observation
from .conventions import N_Q, NOISE, Q_MAX_GRID, TWO_THETA_MAX, UISO, WAVELENGTH  # PXRDnet's, re-exported

#: StructureMatcher tolerances of the protocol.
MATCH = {"stol": 0.3, "ltol": 0.2, "angle_tol": 5.0}
KS = (1, 5, 10)
#: Per-target records of a run in progress (JSON lines) in the output folder: a first line
#: ``{"meta": ...}`` with the run's settings, then one JSON list of records per finished target.
PARTIAL = "evaluation.partial.jsonl"
#: Settings that must be equal for ``--resume`` to reuse earlier targets' records.
RESUME_KEYS = ("dataset", "size_nm", "wavelength", "n", "top", "refine_top", "seed", "backends", "library",
               "backend_options", "match", "noise", "n_q", "version", "relax", "data_kind", "simulator", "pdf",
               "raw_match")
#: What a settings line without a key means (written before the key existed): a PXRD run of our simulator.
RESUME_DEFAULTS = {"data_kind": "xrd", "simulator": "builtin", "raw_match": False}
#: Names of the training pool's validation split as ``--dataset``.
POOL_VAL_DATASETS = ("pool-val", "pool_val")
#: How a matched answer's space group relates to the reference's (:func:`spacegroup_relation`).
SG_RELATIONS = ("same", "subgroup", "supergroup", "other")
#: Kinds of evaluation data: simulated PXRD patterns, or G(r) of simulated nanoparticles.
DATA_KINDS = ("xrd", "pdf")
#: Simulators of the PXRD targets: ours (:func:`simulate_target`) or pymatgen's peaks with Scherrer
#: Gaussians (:func:`diffpy_diffusion.evaluate.targets.simulate_pymatgen_target`).
SIMULATORS = ("builtin", "pymatgen")


def simulate_target(structure, size_nm: float, *, seed: int = 0, n_q: int = N_Q,
                    size_kernel: str = "sinc2") -> Observation:
    """PXRDnet-style simulated pattern of ``structure`` (see the module docstring) as an Observation.

    The pattern is computed on PXRDnet's grid (``n_q`` points over 0–8.15 Å⁻¹) and the
    observation holds the points with 2θ ≤ 90° (Q ≤ 5.763 Å⁻¹ for Cu Kα).
    """
    import torch

    from ..physics.crystal import CrystalBatch
    from ..physics.xrd import xrd_pattern

    q = np.linspace(0.0, Q_MAX_GRID, n_q)
    q_cut = 4 * math.pi * math.sin(math.radians(TWO_THETA_MAX / 2)) / WAVELENGTH
    batch = CrystalBatch.from_structures([structure], uiso=UISO, dtype=torch.float64)
    with torch.no_grad():
        # reflections only up to 2θ = 90°; q[0] = 0 is skipped by the model grid (LP diverges there)
        y = np.zeros_like(q)
        m = q > 0.05
        y[m] = xrd_pattern(batch, q[m], x_kind="q", wavelength=WAVELENGTH, size_nm=float(size_nm),
                           size_kernel=size_kernel, q_max=q_cut)[0].numpy()
    ymax = float(y.max()) or 1.0
    y = y / ymax
    rng = np.random.default_rng(seed)
    y = y + rng.normal(0.0, NOISE, size=y.shape)
    # the measured range is 2θ ≤ 90°: beyond it the grid holds no information (only noise), and
    # a model fitted there would predict reflections the "instrument" never recorded
    keep = (q > 0) & (q <= q_cut)
    comp = {el.symbol: float(n) for el, n in structure.composition.reduced_composition.items()}
    return Observation(kind="xrd", x=q[keep], y=y[keep], x_kind="q", composition=comp, wavelength=WAVELENGTH,
                       size_nm=float(size_nm), max_atoms=max(20, len(structure)),
                       meta={"simulated": "pxrdnet", "noise": NOISE, "uiso": UISO, "size_kernel": size_kernel,
                             "q_grid": [0.0, Q_MAX_GRID, n_q]})


def match(candidate, truth, matcher=None) -> float | None:
    """Normalised RMS displacement when ``candidate`` matches ``truth``, else None."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    sm = matcher or StructureMatcher(**MATCH)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = sm.get_rms_dist(candidate, truth)
    except Exception:  # noqa: BLE001 - matcher failure = no match
        return None
    return None if r is None else float(r[0])


@dataclass
class TargetResult:
    """One (target, backend spec) evaluation."""

    index: int
    material_id: str
    formula: str
    backend: str
    n_atoms: int
    spacegroup: int | None
    match_rank: int | None = None  # 1-based rank of the first matching candidate
    rms: float | None = None
    rw_top1: float | None = None
    n_candidates: int = 0
    seconds: float = 0.0
    error: str | None = None
    ranks_matched: list[int] = field(default_factory=list)
    #: the same candidates' ranks by the fit alone, before a ``rank_candidates`` plugin reordered
    #: the list (equal to ``ranks_matched`` when none did): one run gives both rankings' figures
    ranks_matched_fit: list[int] = field(default_factory=list)
    #: spglib number of the truth at the report's tolerance (:data:`~diffpy_diffusion.report.CANDIDATE_SYMPREC`)
    ref_spacegroup: int | None = None
    #: space group the report gives the first matching candidate, and how it relates to the reference's
    match_spacegroup: int | None = None
    match_sg_relation: str | None = None
    #: ``--raw-match``: per component backend, the 1-based index of its first raw proposal that
    #: matches the truth (None: none did), and how many raw proposals it made
    raw_match: dict[str, int | None] | None = None
    raw_n: dict[str, int] | None = None
    #: the final list, one dict per candidate in rank order (:func:`candidate_row`): its scores,
    #: backend, number of refined parameters and whether it matches the truth, so that ranking
    #: rules can be studied on a finished run without re-running it
    candidates: list[dict] = field(default_factory=list)


def candidate_row(p, matched: bool) -> dict:
    """The record of one ranked candidate kept in ``TargetResult.candidates`` (floats rounded to 5 digits)."""
    from ..report import candidate_spacegroup

    row: dict[str, Any] = {"backend": p.backend, "matched": bool(matched), "n_refined": len(p.refined),
                           "n_sites": len(p.structure), "spacegroup": candidate_spacegroup(p)[1]}
    for key in ("rw", "screen_rwp", "energy_ev_per_atom", "energy_above_best"):
        v = p.scores.get(key)
        if v is not None and np.isfinite(v):
            row[key] = round(float(v), 5)
    if "fit_rank" in p.provenance:
        row["fit_rank"] = int(p.provenance["fit_rank"])
    from ..pipeline import model_parameters

    # the ranking recorded the count when it used it
    k = p.provenance.get("n_parameters")
    row["n_model"] = int(k) if k is not None else model_parameters(p)
    if p.provenance.get("ranked_on"):
        row["ranked_on"] = p.provenance["ranked_on"]
    return row


def spacegroup_relation(number: int | None, reference: int | None) -> str | None:
    """How space group ``number`` relates to ``reference``: one of :data:`SG_RELATIONS`, None if either is unknown.

    ``"subgroup"``/``"supergroup"``: a proper subgroup (supergroup) type by pymatgen's tables of
    maximal subgroups, followed transitively (types only: the orientation is not checked).
    """
    if number is None or reference is None:
        return None
    if int(number) == int(reference):
        return "same"
    from pymatgen.symmetry.groups import SpaceGroup

    g, ref = SpaceGroup.from_int_number(int(number)), SpaceGroup.from_int_number(int(reference))
    if g.is_subgroup(ref):
        return "subgroup"
    if g.is_supergroup(ref):
        return "supergroup"
    return "other"


def first_raw_matches(cache: dict, names, truth, matcher=None) -> tuple[dict[str, int | None], dict[str, int]]:
    """For each backend in ``names``: the 1-based index of its first raw proposal in ``cache`` matching ``truth``.

    ``cache`` is the :func:`diffpy_diffusion.pipeline.sample_all` cache that ``propose`` filled
    (``{(name, n, seed): (proposals, info)}``).  Returns ``(first, count)``: ``first[name]`` is
    None when no raw proposal of that backend matches; ``count[name]`` is how many it made.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    sm = matcher or StructureMatcher(**MATCH)
    first: dict[str, int | None] = {}
    count: dict[str, int] = {}
    for (name, _, _), (props, _) in cache.items():
        if name not in names or name in first:
            continue
        count[name] = len(props)
        first[name] = next((i for i, p in enumerate(props, 1) if match(p.structure, truth, sm) is not None), None)
    return first, count


def make_target(structure, size_nm: float, *, seed: int = 0, data_kind: str = "xrd",
                simulator: str = "builtin") -> Observation:
    """The evaluation data of one target: PXRD by ``simulator``, or a nanoparticle G(r).

    ``data_kind="pdf"``: :func:`~diffpy_diffusion.evaluate.targets.simulate_pdf_target`;
    ``"xrd"`` with ``simulator="builtin"``: :func:`simulate_target`, with ``"pymatgen"``:
    :func:`~diffpy_diffusion.evaluate.targets.simulate_pymatgen_target`.
    """
    if data_kind == "pdf":
        from .targets import simulate_pdf_target

        return simulate_pdf_target(structure, size_nm, seed=seed)
    if simulator == "pymatgen":
        from .targets import simulate_pymatgen_target

        return simulate_pymatgen_target(structure, size_nm, seed=seed)
    return simulate_target(structure, size_nm, seed=seed)


def _eval_one(task: dict) -> list[dict]:
    """Evaluate one target with every backend spec (module-level: runs in worker processes)."""
    from ..datasets import Entry
    from ..pipeline import cached_sample_seconds, propose
    from ..report import candidate_spacegroup, spacegroup_of

    entry = Entry(**task["entry"])
    truth = entry.structure()
    ref_sg = spacegroup_of(truth)[1]
    obs = make_target(truth, task["size_nm"], seed=task["seed"] + task["index"],
                      data_kind=task.get("data_kind", "xrd"), simulator=task.get("simulator", "builtin"))
    # leave-one-out: retrieval never returns the target itself (pool-val targets are members of
    # the shipped template library; evaluation-set targets are in no shipped library)
    # (the diffusion backend retrieves templates too, to seed its reverse process)
    options = dict(task["backend_options"] or {})
    for name in ("templates", "diffusion"):
        own = dict(options.get(name) or {})
        prior = own.get("exclude") or options.get("exclude") or ""
        own["exclude"] = ",".join(x for x in (str(prior), entry.material_id) if x)
        options[name] = own
    out = []
    cache: dict = {}  # a, b and a+b of one target sample each backend once (same seed, same proposals)
    raw_first: dict[str, int | None] = {}  # --raw-match: per backend, matched once per target
    raw_count: dict[str, int] = {}
    for spec in task["backends"]:
        t0 = time.perf_counter()
        reused_s = cached_sample_seconds(cache, spec.split("+"))
        tr = TargetResult(task["index"], entry.material_id, truth.composition.reduced_formula, spec, len(truth),
                          entry.spacegroup, ref_spacegroup=ref_sg)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                props = propose(obs, backend=spec, n=task["n"], top=task["top"], seed=task["seed"],
                                output_dir=None, progress=False, backend_options=options,
                                refine_top=task["refine_top"], sample_cache=cache,
                                relax=bool(task.get("relax")))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one failed target must not end the benchmark
            tr.error = f"{type(exc).__name__}: {exc}"
            tr.seconds = time.perf_counter() - t0
            out.append(asdict(tr))
            continue
        # what the spec costs on its own: reused sampling time counts as if it had been redone
        tr.seconds = time.perf_counter() - t0 + reused_s
        tr.n_candidates = len(props)
        if props:
            rw = props[0].scores.get("rw")
            tr.rw_top1 = None if rw is None else float(rw)
        for rank, p in enumerate(props, 1):
            r = match(p.structure, truth)
            tr.candidates.append(candidate_row(p, r is not None))
            if r is not None:
                tr.ranks_matched.append(rank)
                tr.ranks_matched_fit.append(int(p.provenance.get("fit_rank", rank)))
                if tr.match_rank is None:
                    tr.match_rank, tr.rms = rank, r
                    tr.match_spacegroup = candidate_spacegroup(p)[1]
                    tr.match_sg_relation = spacegroup_relation(tr.match_spacegroup, ref_sg)
        if task.get("raw_match"):
            parts = spec.split("+")
            todo = [b for b in parts if b not in raw_first]
            if todo:
                got, cnt = first_raw_matches(cache, todo, truth)
                raw_first.update(got)
                raw_count.update(cnt)
            tr.raw_match = {b: raw_first[b] for b in parts if b in raw_first}
            tr.raw_n = {b: raw_count[b] for b in parts if b in raw_count}
        out.append(asdict(tr))
    return out


def summarize(records: list[dict], backends: list[str], ks=KS) -> dict[str, Any]:
    """Per backend: top-k match rates, mean RMS of matches, mean rank-1 Rwp, s/target, solved-only-by."""
    by: dict[str, list[dict]] = {b: [r for r in records if r["backend"] == b] for b in backends}
    kmax = max(ks)
    solved = {b: {r["index"] for r in rs if r["match_rank"] is not None and r["match_rank"] <= kmax}
              for b, rs in by.items()}
    out: dict[str, Any] = {}
    for b, rs in by.items():
        n = len(rs)
        row: dict[str, Any] = {"targets": n, "errors": sum(1 for r in rs if r["error"])}
        # fit_top{k}: the same lists ranked by the fit alone (they differ only where a
        # rank_candidates plugin reordered them; records from before that field fall back to the rank)
        fit_first = [min(f) if (f := r.get("ranks_matched_fit") or r.get("ranks_matched")) else None for r in rs]
        for k in ks:
            hits = sum(1 for r in rs if r["match_rank"] is not None and r["match_rank"] <= k)
            row[f"top{k}"] = hits / n if n else None
            row[f"fit_top{k}"] = sum(1 for f in fit_first if f is not None and f <= k) / n if n else None
        rms = [r["rms"] for r in rs if r["rms"] is not None]
        rw = [r["rw_top1"] for r in rs if r["rw_top1"] is not None and math.isfinite(r["rw_top1"])]
        row["mean_rms"] = float(np.mean(rms)) if rms else None
        row["mean_rwp_top1"] = float(np.mean(rw)) if rw else None
        row["s_per_target"] = float(np.mean([r["seconds"] for r in rs])) if rs else None
        # solved by this spec and by no evaluated spec that does not contain it as a component
        parts = set(b.split("+"))
        others = [o for o in backends if o != b and not parts <= set(o.split("+"))]
        row["solved_only_by_this"] = (len(solved[b] - set().union(*(solved[o] for o in others)))
                                      if others else None)
        # the space group the answer is reported in, of the targets matched in the top kmax
        matched = [r for r in rs if r["match_rank"] is not None and r["match_rank"] <= kmax]
        rel = [r.get("match_sg_relation") or "unknown" for r in matched]
        row["matched"] = len(matched)
        row["sg_counts"] = {name: rel.count(name) for name in (*SG_RELATIONS, "unknown")}
        row["sg_same"] = rel.count("same") / len(rel) if rel else None
        # --raw-match: a raw proposal of any component backend matched the truth
        raw = [r for r in rs if r.get("raw_match") is not None]
        row["raw_match"] = (sum(1 for r in raw if any(v is not None for v in r["raw_match"].values())) / len(raw)
                            if raw else None)
        row["raw_match_by_backend"] = ({c: sum(1 for r in raw if r["raw_match"].get(c) is not None) / len(raw)
                                        for c in b.split("+")} if raw else None)
        out[b] = row
    if "diffusion" in by:
        non = [o for o in backends if "diffusion" not in o.split("+")]
        out["_only_diffusion_solved"] = (len(solved["diffusion"] - set().union(*(solved[o] for o in non)))
                                         if non else None)
    return out


def markdown_table(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    """The summary as a markdown table (with the caveat that these are not published MP-20 figures)."""
    raw = any(r.get("raw_match") is not None for b, r in summary.items() if not b.startswith("_"))
    lines = [
        f"Evaluation on {meta['dataset']}, {mode_title(meta)} data (first {meta['limit']} rows; "
        f"{mode_conditions(meta)}; "
        f"n = {meta['n']} raw proposals, top {meta['top']} ranked, {meta['refine_top']} refined).",
        "",
        "Not comparable to published MP-20 numbers: our split and data subset differ (see docs/design.md).",
        "",
        f"| backend | targets | top-1 | top-5 | top-10 | mean RMS (matches) | mean {_rw_name(meta)} (rank 1) "
        "| s/target | solved only by this | matched answers in the reference's space group "
        "(same / subgroup / supergroup / other) |" + (" raw match |" if raw else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if raw else ""),
    ]

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    def num(v, f="{:.3f}"):
        return "-" if v is None else f.format(v)

    for b, r in summary.items():
        if b.startswith("_"):
            continue
        lines.append(f"| {b} | {r['targets']} | {pct(r['top1'])} | {pct(r['top5'])} | {pct(r['top10'])} | "
                     f"{num(r['mean_rms'])} | {pct(r['mean_rwp_top1'])} | {num(r['s_per_target'], '{:.1f}')} | "
                     f"{num(r['solved_only_by_this'], '{}')} | {sg_shares(r)} |"
                     + (f" {raw_cell(r)} |" if raw else ""))
    reordered = [(b, r) for b, r in summary.items() if not b.startswith("_") and r.get("fit_top1") is not None
                 and any(r.get(f"fit_top{k}") != r.get(f"top{k}") for k in KS)]
    if reordered:
        lines += ["", "A `rank_candidates` plugin reordered the lists; ranked by the fit alone they give "
                      "(top-1 / top-5 / top-10): "
                  + "; ".join(f"{b} {pct(r['fit_top1'])} / {pct(r['fit_top5'])} / {pct(r['fit_top10'])}"
                              for b, r in reordered)]
    if summary.get("_only_diffusion_solved") is not None:
        lines += ["", f"Targets only the diffusion model solved (no non-diffusion backend did): "
                      f"{summary['_only_diffusion_solved']}"]
    return "\n".join(lines) + "\n"


def raw_cell(row: dict[str, Any]) -> str:
    """``"80.0 % (diffusion 70.0 %, templates 60.0 %)"``: a summary row's raw-match rate, per component."""
    if row.get("raw_match") is None:
        return "-"
    by = row.get("raw_match_by_backend") or {}
    parts = f" ({', '.join(f'{k} {100 * v:.1f} %' for k, v in by.items())})" if len(by) > 1 else ""
    return f"{100 * row['raw_match']:.1f} %{parts}"


def sg_shares(row: dict[str, Any]) -> str:
    """``"90 % (9/10): 9 / 1 / 0 / 0"``: a summary row's matched answers by relation (:data:`SG_RELATIONS`)."""
    n = row.get("matched") or 0
    if not n or not row.get("sg_counts"):
        return "-"
    c = row["sg_counts"]
    unknown = f", {c['unknown']} unknown" if c.get("unknown") else ""
    return (f"{100 * c['same'] / n:.0f} % ({c['same']}/{n}): "
            + " / ".join(str(c[k]) for k in SG_RELATIONS) + unknown)


def _rw_name(meta: dict[str, Any]) -> str:
    """Rw for a PDF (PDFgui's name), Rwp for a powder pattern."""
    return "Rw" if meta.get("data_kind", "xrd") == "pdf" else "Rwp"


def mode_title(meta: dict[str, Any]) -> str:
    """``"PXRD"``, ``"PXRD (pymatgen patterns)"`` or ``"PDF"``: what kind of data a run evaluated on."""
    if meta.get("data_kind", "xrd") == "pdf":
        return "PDF"
    return "PXRD (pymatgen patterns)" if meta.get("simulator") == "pymatgen" else "PXRD"


def mode_conditions(meta: dict[str, Any]) -> str:
    """The simulated measurement of a run in words (size, radiation, range, noise)."""
    if meta.get("data_kind", "xrd") == "pdf":
        p = meta["pdf"]
        lo, hi, step = p["r_grid"]
        return (f"x-ray G(r) of {meta['size_nm']:g} nm spheres cut from the crystal (Debye pair sum), "
                f"Qmax {p['qmax']:g} Å⁻¹, Qdamp {p['qdamp']:g} Å⁻¹, r {lo:g}–{hi:g} Å step {step:g} Å, "
                f"Uiso {p['uiso']:g} Å², noise σ {p['noise']:g} of max |G| (band-limited to Qmax)")
    how = ("pymatgen XRDCalculator peaks + Scherrer Gaussians (K = 0.9)" if meta.get("simulator") == "pymatgen"
           else "our forward model, sinc² size kernel")
    return (f"crystallite size {meta['size_nm']:g} nm, {how}, Cu Kα {WAVELENGTH} Å, 2θ ≤ 90°, "
            f"noise {NOISE:g} of max")


def _previous_records(out: Path, meta: dict, entries) -> list[dict]:
    """Records of finished targets in ``out`` (``evaluation.json``, then the partial file) that ``--resume`` reuses.

    Raises
    ------
    DiffpyDiffusionError
        The earlier run used other settings (:data:`RESUME_KEYS`), another target list, or its
        partial file has no settings line.
    """
    from ..errors import InputFileError

    found: dict[int, list[dict]] = {}
    sources = []
    full = out / "evaluation.json"
    if full.exists():
        doc = json.loads(full.read_text(encoding="utf-8"))
        sources.append((full, doc.get("meta"), [doc.get("records", [])]))
    part = out / PARTIAL
    if part.exists():
        head, groups = None, []
        for lineno, line in enumerate(part.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                # a kill during the append leaves a cut last line: that target runs again
                warnings.warn(f"{part}:{lineno}: not a complete JSON line (ignored; that target runs again)",
                              stacklevel=3)
                continue
            if isinstance(obj, dict) and "meta" in obj and lineno == 1:
                head = obj["meta"]
            elif isinstance(obj, list):
                groups.append(obj)
            else:
                raise InputFileError(part, "expected a JSON list of one target's records", line=lineno)
        if head is None:
            raise DiffpyDiffusionError(f"{part}: no settings line (written by an older version), so it cannot be "
                                       "checked against this run; pass --force to start over")
        sources.append((part, head, groups))
    for path, old, groups in sources:
        old = {**RESUME_DEFAULTS, **(old or {})}
        diff = [k for k in RESUME_KEYS if old.get(k) != meta.get(k)]
        if diff:
            show = ", ".join(f"{k}: {old.get(k)!r} there, {meta.get(k)!r} now" for k in diff)
            raise DiffpyDiffusionError(f"{path}: cannot resume, the earlier run used other settings ({show}); "
                                       "pass the same options, or --force to start over")
        for group in groups:
            for r in group:
                i = int(r["index"])
                if i < len(entries) and r["material_id"] != entries[i].material_id:
                    raise DiffpyDiffusionError(f"{path}: target {i} is {r['material_id']} there but "
                                               f"{entries[i].material_id} now (another target list); "
                                               "pass --force to start over")
                found.setdefault(i, [])
                if all(x["backend"] != r["backend"] for x in found[i]):
                    found[i].append(r)
    specs = set(meta["backends"])
    return [r for i in sorted(found) if i < len(entries) and {x["backend"] for x in found[i]} >= specs
            for r in found[i]]


def pool_validation_entries(limit: int | None = None, *, data=None) -> list:
    """The first ``limit`` structures of the training pool's validation split (``--dataset pool-val``).

    The pool (:func:`diffpy_diffusion.datasets.iter_training_pool`, in its order) filtered by
    :func:`diffpy_diffusion.datasets.split_ids` at its default fraction, the split the diffusion
    model's training holds out.  Settings are chosen here, never on the evaluation set.
    """
    from ..datasets import iter_training_pool, split_ids

    out = []
    for e in iter_training_pool(data=data):
        if split_ids([e.material_id])[0]:
            out.append(e)
            if limit is not None and len(out) >= int(limit):
                break
    return out


def _parse_size(size_nm, default: float = 10.0) -> float:
    if size_nm is None:
        return default
    if isinstance(size_nm, (int, float)):
        return float(size_nm)
    from ..io.units import parse_size_nm  # "10nm", "30A"

    return float(parse_size_nm(size_nm))


def run_evaluation(*, dataset: str = "mp20-test", data_dir=None, limit: int = 100, size_nm=10.0,
                   wavelength=None, backend: str = "diffusion", n: int = 200, top: int = 10,
                   refine_top: int | None = None, seed: int = 0, output_dir=None, force: bool = False,
                   as_json: bool = False, quiet: bool = False, workers: int = 1, library: str | None = None,
                   backend_options: dict | None = None, scheduler=None, resume: bool = False,
                   relax: bool = False, data_kind: str = "xrd", simulator: str = "builtin",
                   raw_match: bool = False) -> dict[str, Any]:
    """Run the evaluation protocol; print and (optionally) write the summary.

    Parameters
    ----------
    dataset : str
        ``"mp20-test"`` (first ``limit`` rows of the evaluation set), ``"pool-val"`` (first
        ``limit`` structures of the training pool's validation split, :func:`pool_validation_entries`:
        for choosing settings without the evaluation set) or a CSV path with ``cif``.
    size_nm : float or str
        Crystallite (PXRD) or particle (PDF) diameter, nm or ``"5nm"``/``"30A"``; default
        10 nm for PXRD, 5 nm (:data:`~diffpy_diffusion.evaluate.targets.PDF_DEFAULT_SIZE_NM`) for PDF.
    data_kind : {"xrd", "pdf"}
        ``"pdf"``: the targets are x-ray G(r) of spherical particles
        (:func:`~diffpy_diffusion.evaluate.targets.simulate_pdf_target`: Qmax 20 Å⁻¹,
        Qdamp 0.04 Å⁻¹, r 1–30 Å) instead of PXRD patterns.
    simulator : {"builtin", "pymatgen"}
        PXRD only: who simulates the patterns -- our forward model (:func:`simulate_target`)
        or pymatgen's ``XRDCalculator`` with Scherrer Gaussians
        (:func:`~diffpy_diffusion.evaluate.targets.simulate_pymatgen_target`), so that the
        model is not judged only on the simulator it screens with.
    backend : str
        Comma-separated backend specs evaluated one by one; ``a+b`` merges backends.
    n, top, refine_top : int
        Raw proposals per backend, ranked candidates kept (matches counted in the top
        1/5/10 of these), and how many of them srfit refines (default: all ``top``).
    workers : int
        Targets evaluated in parallel processes.
    scheduler : str, optional
        Address of an existing Dask distributed scheduler (``tcp://host:8786``); the targets
        run there instead (see :func:`diffpy_diffusion.batch.map_tasks`).
    library : str, optional
        Template library for the ``templates`` backend (e.g. ``"training-pool"``).
    wavelength : ignored
        The protocol fixes Cu Kα (1.54184 Å); accepted for CLI symmetry.
    relax : bool
        Relax the raw proposals through the ``relax_proposals`` plugin hook before screening
        (:func:`diffpy_diffusion.pipeline.propose`); NotAvailableError before any work when no
        plugin implements it.
    raw_match : bool
        Also match every raw proposal of each backend against the truth (records ``raw_match``,
        summary ``raw_match``): what screening and ranking could at best keep.
    resume : bool
        Reuse the targets an earlier run in ``output_dir`` finished (its ``evaluation.json``
        or the partial file an interrupted run left) and evaluate only the others; the
        settings must be the same (:data:`RESUME_KEYS`), ``limit`` may grow.

    Returns
    -------
    dict
        ``{"meta", "summary", "records"}``.
    """
    from .. import __version__
    from ..datasets import eval_set
    from ..io import atomic_write_text, write_json

    if data_kind not in DATA_KINDS:
        raise DiffpyDiffusionError(f"evaluate: data kind {data_kind!r} is not one of {', '.join(DATA_KINDS)}")
    if simulator not in SIMULATORS:
        raise DiffpyDiffusionError(f"evaluate: simulator {simulator!r} is not one of {', '.join(SIMULATORS)}")
    if data_kind == "pdf" and simulator != "builtin":
        raise DiffpyDiffusionError(f"evaluate: --simulator {simulator} makes PXRD patterns; the PDF targets "
                                   "(--pdf) have one simulator (Debye pair sum of a cut sphere)")
    if data_kind == "pdf":
        from .targets import PDF_DEFAULT_SIZE_NM

        size = _parse_size(size_nm, PDF_DEFAULT_SIZE_NM)
    else:
        size = _parse_size(size_nm)
    if not (size > 0 and math.isfinite(size)):
        raise DiffpyDiffusionError(f"evaluate: --size must be positive, got {size_nm!r}")
    if relax:
        from ..pipeline import relax_available

        relax_available()  # not once per target, where the error would only be recorded
    specs = [s.strip() for s in str(backend).split(",") if s.strip()]
    if not specs:
        raise DiffpyDiffusionError("evaluate: give at least one backend (e.g. --backend templates,random)")
    out = None
    if resume and output_dir is None:
        raise DiffpyDiffusionError("evaluate: --resume continues the run in an --output folder; give -o/--output")
    if output_dir is not None:
        out = Path(output_dir)
        from ..errors import OutputExistsError

        if force and resume:
            raise DiffpyDiffusionError("evaluate: --force starts over and --resume continues: give one of them")
        for name in ("evaluation.json", "evaluation.md", PARTIAL):
            if (out / name).exists() and not (force or resume):
                hint = ("an interrupted run's finished targets; pass --resume to continue it or --force to start over"
                        if name == PARTIAL else "exists; pass --resume to add targets or --force to overwrite")
                raise OutputExistsError(f"{out / name}: {hint}")
    if dataset in ("mp20-test", "mp20_test", "mp20"):
        entries = eval_set(limit, data=data_dir)
    elif dataset in POOL_VAL_DATASETS:
        entries = pool_validation_entries(limit, data=data_dir)
    else:
        import pandas as pd

        from ..datasets import Entry

        df = pd.read_csv(dataset).iloc[:limit]
        entries = [Entry(str(r.get("material_id", i)), str(dataset), r["cif"], None) for i, r in df.iterrows()]
    opts = dict(backend_options or {})
    if library:
        opts.setdefault("library", library)
        if "templates" in "+".join(specs):
            # index the library once here, not in every worker
            from ..backends.templates import load_library

            load_library(library)
    refine_top = top if refine_top is None else refine_top
    tasks = [{"index": i, "entry": asdict(e), "size_nm": size, "seed": seed, "backends": specs, "n": n, "top": top,
              "refine_top": refine_top, "backend_options": opts, "relax": relax, "data_kind": data_kind,
              "simulator": simulator, "raw_match": bool(raw_match)} for i, e in enumerate(entries)]
    meta = {"dataset": dataset, "limit": len(entries), "size_nm": size, "wavelength": WAVELENGTH, "n": n, "top": top,
            "refine_top": refine_top, "seed": seed, "backends": specs, "library": library, "workers": workers,
            "backend_options": opts,
            "match": MATCH, "noise": NOISE, "n_q": N_Q, "version": __version__,
            **({"relax": True} if relax else {}),  # absent without --relax: earlier runs stay resumable
            "data_kind": data_kind, "simulator": simulator, "raw_match": bool(raw_match)}
    if data_kind == "pdf":
        from .targets import PDF_NOISE, PDF_QDAMP, PDF_QMAX, PDF_R_RANGE

        meta.update(wavelength=None, n_q=None, noise=PDF_NOISE,
                    pdf={"qmax": PDF_QMAX, "qdamp": PDF_QDAMP, "r_grid": list(PDF_R_RANGE), "noise": PDF_NOISE,
                         "uiso": UISO, "radiation": "xray"})
    records: list[dict] = []
    if resume and out is not None:
        records = _previous_records(out, json.loads(json.dumps(meta)), entries)
        done_idx = {r["index"] for r in records}
        tasks = [t for t in tasks if t["index"] not in done_idx]
        meta["resumed_targets"] = len(done_idx)
    t0 = time.perf_counter()
    from ..batch import map_tasks

    prog = None
    if not quiet and not as_json:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        prog = Progress(TextColumn("evaluating"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    # a long run keeps what it finished: one JSON line per target as it arrives, removed once
    # evaluation.json is written (left behind by a Ctrl-C or a crash)
    partial = out / PARTIAL if out is not None else None
    if partial is not None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        groups: dict[int, list] = {}
        for r in records:  # targets a resumed run reuses: carried into the new partial file
            groups.setdefault(r["index"], []).append(r)
        atomic_write_text(partial, "".join(json.dumps(x) + "\n" for x in [{"meta": meta}, *groups.values()]),
                          force=True)
    try:
        if prog:
            prog.__enter__()
            tid = prog.add_task("eval", total=len(tasks) + len({r["index"] for r in records}),
                                completed=len({r["index"] for r in records}))
        for _, res in map_tasks(_eval_one, tasks, workers=workers, scheduler=scheduler, on_error="return"):
            if isinstance(res, list):
                records.extend(res)
                if partial is not None:
                    with open(partial, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(res) + "\n")
            else:  # TaskError from the executor
                warnings.warn(f"evaluate: task failed: {res}", stacklevel=2)
            if prog:
                prog.advance(tid, 1)
    except KeyboardInterrupt:
        if partial is not None and partial.exists():
            raise KeyboardInterrupt(f"{len({r['index'] for r in records})} finished target(s) are in {partial} "
                                    "(one JSON list of records per line); run the same command with --resume "
                                    "to continue") from None
        raise
    finally:
        if prog:
            prog.__exit__(None, None, None)
    meta["wall_s"] = time.perf_counter() - t0
    records.sort(key=lambda r: (r["index"], specs.index(r["backend"])))
    summary = summarize(records, specs)
    md = markdown_table(summary, meta)
    doc = {"meta": meta, "summary": summary, "records": records}
    if out is not None:
        # a resumed run's records are a superset of what it replaces
        write_json(doc, out / "evaluation.json", force=force or resume)
        atomic_write_text(out / "evaluation.md", md, force=force or resume)
        partial.unlink(missing_ok=True)
    if as_json:
        import click

        from ..io.writers import to_json_text

        click.echo(to_json_text(doc), nl=False)
    elif not quiet:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"{mode_title(meta)}, {dataset}: first {len(entries)} targets, {size:g} nm "
                        "(not published MP-20 figures)")
        names = [b for b in summary if not b.startswith("_")]
        raw = any(r.get("raw_match") is not None for b, r in summary.items() if not b.startswith("_"))
        for col in ("backend", "top-1 %", "top-5 %", "top-10 %", "mean RMS", f"mean {_rw_name(meta)}#1 %",
                    "s/target", "only this", "matched in ref. SG %",
                    *(("raw match %",) if raw else ())):
            if col == "backend":  # never cut a+b names short: the other columns wrap instead
                t.add_column(col, no_wrap=True, min_width=max(map(len, names), default=7))
            else:
                t.add_column(col, justify="right")
        for b, r in summary.items():
            if b.startswith("_"):
                continue
            f = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731 - percent, as the header says
            t.add_row(b, f(r["top1"]), f(r["top5"]), f(r["top10"]),
                      "-" if r["mean_rms"] is None else f"{r['mean_rms']:.3f}", f(r["mean_rwp_top1"]),
                      "-" if r["s_per_target"] is None else f"{r['s_per_target']:.1f}",
                      "-" if r["solved_only_by_this"] is None else str(r["solved_only_by_this"]),
                      "-" if r.get("sg_same") is None else f"{100 * r['sg_same']:.0f}",
                      *((f(r.get("raw_match")),) if raw else ()))
        con = Console()
        con.print(t)
        if summary.get("_only_diffusion_solved") is not None:
            con.print(f"targets only the diffusion model solved: {summary['_only_diffusion_solved']}")
    return doc


