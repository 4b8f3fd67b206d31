"""Pattern readers: ``.xy .xye .dat .csv .txt .chi .iq`` (diffraction) and ``.gr .fgr`` (PDF).

:func:`read_observation` is the one entry point.  It reads the numbers with
:func:`diffpy_diffusion.io.text.parse_table`, then works out what they mean:

- *kind* (``xrd``/``pdf``) from the argument, the extension or column names;
- *x axis* (2θ in degrees, Q in Å⁻¹, r in Å) from the argument (``--x``), the
  column labels, the header text, or -- for 2θ only -- from the range when a
  wavelength is known and the values exceed 4π/λ; anything still ambiguous is
  an error naming ``--x``;
- instrument parameters from PDFgetX2/X3, xPDFsuite, PDFgetN and PDFgui
  headers: ``wavelength``/``lambda``, ``qmax``, ``qmin``, ``qdamp``,
  ``qbroad`` and the radiation (``mode = neutron``, ``type = N``, PDFgetN);
- uncertainties from the third column of ``.xye`` files, a column labelled
  ``sigma``/``esd``/``err``/``dy``/``dG``, or the dG column of PDF files.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ..errors import InputFileError
from ..types import TUBE_WAVELENGTHS, Observation, parse_composition
from .text import TextTable, parse_table, read_text

XRD_EXTENSIONS = (".xy", ".xye", ".dat", ".csv", ".txt", ".chi", ".iq", ".xyd")
PDF_EXTENSIONS = (".gr", ".fgr", ".rdf")

_NUM = r"([-+]?\d*\.?\d+(?:[eEdD][-+]?\d+)?)"
_RE_TTH = re.compile(r"2\s*-?\s*th(?:eta)?(?![a-z])|two[\s_-]*theta|2θ|(?<![a-z])tth(?![a-z])|\bangle\b|"
                     r"(?<![a-z])deg(?:ree)?s?(?![a-z])", re.I)
_RE_Q_NAME = re.compile(r"^q(?:\s*[\(\[_/].*)?$|^q\s*\(.*", re.I)
_RE_Q_TEXT = re.compile(r"(?<![a-z])q\s*[\(\[]\s*(?:1/|a|å|inv)|1/\s*(?:a|å)\b|(?:a|å)\s*\^?\s*-1|(?:a|å)⁻¹|"
                        r"inverse\s+angstrom|\bq\s*-?\s*space\b|\bq\s+\(", re.I)
_RE_R_NAME = re.compile(r"^r(?:\s*[\(\[_/].*)?$", re.I)
_RE_SIGMA = re.compile(r"^(?:sig(?:ma)?|esd|e\.?s\.?d|err(?:or)?s?|unc\w*|dy|d_?i|di\(?\w*\)?|d_?g\w*|dg\(r\)|"
                       r"sig_?\w*|std\w*|e)$", re.I)


def _header_float(text: str, key: str) -> float | None:
    m = re.search(rf"(?<![A-Za-z_]){key}\s*[:=]\s*{_NUM}", text, re.I)
    if not m:
        return None
    try:
        return float(m.group(1).replace("D", "E").replace("d", "e"))
    except ValueError:
        return None


def parse_header(text: str) -> dict:
    """Instrument metadata from a pattern-file header (PDFgetX2/X3, xPDFsuite, PDFgetN, PDFgui, free text).

    Returns
    -------
    dict
        Subset of ``wavelength``, ``wavelength2`` (Å), ``qmax``, ``qmin``,
        ``qdamp``, ``qbroad`` (Å⁻¹), ``radiation`` and ``composition`` (the raw
        header string; not trusted: it is stored in ``meta`` only).
    """
    out: dict = {}
    # two wavelengths: "Kalpha1/Kalpha2 1.540560/1.544390 A"
    m = re.search(r"k\s*-?\s*(?:alpha|a|α)\s*1?\s*/\s*k?\s*-?\s*(?:alpha|a|α)?\s*2\s*[:=]?\s*" + _NUM
                  + r"\s*/\s*" + _NUM, text, re.I)
    if m:
        out["wavelength"], out["wavelength2"] = float(m.group(1)), float(m.group(2))
    else:
        for key in ("wavelength", "lambda", "wavelen", "wave_length", "lambda1", "lam"):
            v = _header_float(text, key)
            if v is not None and 1e-11 < v < 1e-9:  # metres (pyFAI writes "Wavelength: 1.54e-10")
                v *= 1e10
            if v is not None and 0.01 < v < 10:
                out["wavelength"] = v
                break
        v2 = _header_float(text, "lambda2") or _header_float(text, "wavelength2")
        if "wavelength" in out and v2 is not None and 0.01 < v2 < 10:
            out["wavelength2"] = v2
        if "wavelength" not in out:
            for name, (l1, l2, _ratio) in TUBE_WAVELENGTHS.items():
                el = name[:-2]
                if re.search(rf"\b{el}\s*-?\s*k\s*-?\s*(?:alpha|a|α)", text, re.I):
                    out["wavelength"], out["wavelength2"] = l1, l2
                    break
    for key in ("qmax", "qmin", "qdamp", "qbroad"):
        v = _header_float(text, key)
        if v is not None:
            out[key] = v
    if re.search(r"(?<![a-z])mode\s*=\s*neutron|^\s*#?\s*type\s*=\s*n\b|pdfgetn|\bneutron\b", text, re.I | re.M):
        out["radiation"] = "neutron"
    elif re.search(r"(?<![a-z])mode\s*=\s*x-?ray|^\s*#?\s*type\s*=\s*x\b|pdfgetx|x-?ray", text, re.I | re.M):
        out["radiation"] = "xray"
    m = re.search(r"(?<![A-Za-z_])composition\s*[:=]\s*(\S+)", text, re.I)
    if m:
        out["composition"] = m.group(1)
    return out


def _detect_x_kind(table: TextTable) -> tuple[str | None, str]:
    """Guess 2theta/q/r from labels and header; returns (kind or None, evidence)."""
    if table.names:
        first = table.names[0].strip().lower()
        if _RE_TTH.search(first):
            return "2theta", f"column label {table.names[0]!r}"
        if _RE_Q_NAME.match(first) or _RE_Q_TEXT.search(first):
            return "q", f"column label {table.names[0]!r}"
        if _RE_R_NAME.match(first):
            return "r", f"column label {table.names[0]!r}"
    text = table.header_text
    tth = bool(_RE_TTH.search(text))
    q = bool(_RE_Q_TEXT.search(text))
    if tth and q:
        return None, "the header mentions both 2θ and Q"
    if tth:
        return "2theta", "header text"
    if q:
        return "q", "header text"
    return None, "no column label or header names the x axis"


def _sigma_column(table: TextTable, kind: str, suffix: str) -> int | None:
    ncols = table.data.shape[1]
    if table.names and len(table.names) == ncols:
        for k in range(2, ncols):
            if _RE_SIGMA.match(table.names[k].strip()):
                return k
        if kind == "pdf" and ncols >= 4 and re.match(r"^d", table.names[3], re.I):
            return 3
        if kind == "pdf" and ncols == 3 and re.match(r"^d", table.names[2], re.I):
            return 2
        return 2 if (suffix == ".xye" and ncols >= 3) else None
    if kind == "pdf":
        return 3 if ncols >= 4 else (2 if ncols == 3 else None)
    if suffix in (".xye", ".xyd") and ncols >= 3:
        return 2
    return None


def read_pattern_file(path, *, kind=None, x_kind=None, wavelength=None, radiation=None,
                      composition=None, **fields) -> Observation:
    """Built-in reader for all column formats (see module docstring)."""
    p = Path(path)
    suffix = p.suffix.lower()
    text = read_text(p)
    table = parse_table(p, text, csv=(suffix == ".csv"))
    data = table.data
    header = parse_header(table.header_text)

    if kind is None:
        if x_kind == "r" or suffix in PDF_EXTENSIONS:
            kind = "pdf"
        elif table.names and table.names[1:2] and re.match(r"^g\s*\(?r", table.names[1], re.I):
            kind = "pdf"
        else:
            kind = "xrd"
    if kind not in ("xrd", "pdf"):
        raise InputFileError(p, f"unknown pattern kind {kind!r}; use 'xrd' or 'pdf'")

    if table.step_scan is not None:
        start, step, end = table.step_scan
        n = data.shape[0]
        x = start + step * np.arange(n)
        implied = (end - start) / step + 1  # float: may overflow for absurd headers
        if not np.isfinite(implied) or abs(x[-1] - end) > 0.5 * step + 1e-9 * abs(end):
            raise InputFileError(p, f"step-scan header 'start={start:g} step={step:g} end={end:g}' implies "
                                 f"{implied:.0f} points, found {n}",
                                 line=int(table.linenos[0]) - 1)
        y, sigma_col, cols = data[:, 0], None, 1
    else:
        x, y, cols = data[:, 0], data[:, 1], data.shape[1]
        sigma_col = _sigma_column(table, kind, suffix)

    evidence = "--x"
    if kind == "pdf":
        if x_kind not in (None, "r"):
            raise InputFileError(p, f"--x {x_kind} does not fit a PDF file: its first column is r (Å)")
        x_kind, evidence = "r", "PDF file: column 1 is r (Å)"
    elif x_kind is None:
        if table.step_scan is not None:
            x_kind, evidence = "2theta", "step scan (start step end) header"
        else:
            x_kind, evidence = _detect_x_kind(table)
            if x_kind == "q" and re.search(r"nm\s*\^?\s*-\s*1|nm⁻¹|1\s*/\s*nm|inverse\s+nano",
                                           " ".join(table.names or []) + "\n" + table.header_text, re.I):
                x = x / 10.0  # Q in nm⁻¹ (pyFAI "q_nm^-1") -> Å⁻¹
                evidence += "; converted from nm⁻¹ to Å⁻¹"
        if x_kind == "r":
            raise InputFileError(p, "the first column looks like r (Å) but the file was read as a "
                                 "diffraction pattern; use a .gr extension or pass --x r")
        if x_kind is None:
            lam = wavelength or header.get("wavelength")
            qlim = 4 * np.pi / lam if lam else None
            if qlim is not None and qlim * 1.001 < x.max() <= 180:
                x_kind, evidence = "2theta", f"values up to {x.max():g} exceed 4π/λ = {qlim:.3g} Å⁻¹"
            else:
                raise InputFileError(
                    p, f"cannot tell whether column 1 is 2θ (degrees) or Q (Å⁻¹): {evidence}; "
                    "pass --x 2theta or --x q (Python: x_kind=)")
    elif x_kind == "r":
        raise InputFileError(p, "--x r means a PDF; read it as kind 'pdf' (e.g. a .gr file)")

    sigma = None
    meta: dict = {"format": suffix.lstrip(".") or "text", "x_kind_from": evidence,
                  "columns": table.names, "header": table.header[:400]}
    if sigma_col is not None:
        s = data[:, sigma_col]
        if np.all(s == 0):
            meta["sigma_note"] = "uncertainty column is all zero; ignored"
        elif np.any(s <= 0):
            bad = int(np.argmax(s <= 0))
            raise InputFileError(p, f"uncertainty (column {sigma_col + 1}) must be positive, found {s[bad]:g}",
                                 line=int(table.linenos[bad]))
        else:
            sigma = s
    ignored = [k + 1 for k in range(2, cols) if k != sigma_col]
    if ignored:
        meta["ignored_columns"] = ignored

    # order and range checks (errors point at the offending row)
    dx = np.diff(x)
    if np.all(dx < 0):
        x, y = x[::-1], y[::-1]
        sigma = sigma[::-1] if sigma is not None else None
        linenos = table.linenos[::-1]
    else:
        linenos = table.linenos
        if np.any(dx <= 0):
            bad = int(np.argmax(dx <= 0)) + 1
            raise InputFileError(p, f"x values must increase; x={x[bad]:g} follows x={x[bad - 1]:g}",
                                 line=int(table.linenos[bad]) if table.step_scan is None else None)
    if x_kind == "2theta" and (x[0] <= 0 or x[-1] >= 180):
        bad = 0 if x[0] <= 0 else len(x) - 1
        raise InputFileError(p, f"2θ = {x[bad]:g}° is outside (0, 180); if column 1 is Q pass --x q",
                             line=int(linenos[bad]))
    if x_kind in ("q", "r") and x[0] < 0:
        raise InputFileError(p, f"{'Q' if x_kind == 'q' else 'r'} = {x[0]:g} is negative", line=int(linenos[0]))

    if kind == "pdf":
        _check_pdf_header(p, header, radiation, fields)
    if radiation is None:
        radiation = header.get("radiation", "xray")
    if wavelength is None:
        wavelength = header.get("wavelength")
        wavelength2 = header.get("wavelength2")
    else:
        wavelength2 = getattr(wavelength, "wavelength2", None)
        fields.setdefault("ka2_ratio", getattr(wavelength, "ka2_ratio", 0.5))
        wavelength = float(wavelength)
    if "composition" in header:
        meta["header_composition"] = header["composition"]
    comp = composition if composition is not None else {}
    if isinstance(comp, str):
        comp = parse_composition(comp)
    for key in ("qmax", "qmin", "qdamp", "qbroad"):
        if key in header:
            if kind == "pdf" and fields.get(key) is None:
                fields[key] = header[key]
            else:
                meta[f"header_{key}"] = header[key]
    return Observation(kind=kind, x=x, y=y, x_kind=x_kind, composition=comp, sigma=sigma,
                       wavelength=wavelength, wavelength2=wavelength2, radiation=radiation,
                       source=str(p), meta=meta, **fields)


#: Relative difference above which a PDF header's Qmax and the one given contradict each other
#: (headers print Qmax with 3-6 digits; 0.1 % is far above rounding, far below a real change).
QMAX_RTOL = 1e-3
#: Shortest r range (Å) the proposers can use: the screen and the model read the first
#: coordination shells (1.5-3.5 Å) and the next ones to tell structure types apart.
PDF_MIN_RMAX = 5.0
#: Coarsest r step (Å) the proposers can use: a first-shell peak at Uiso 0.005 Å² is
#: ~0.24 Å wide (FWHM), so a coarser grid does not resolve it.
PDF_MAX_RSTEP = 0.2


def _check_pdf_header(path: Path, header: dict, radiation, fields: dict) -> None:
    """A PDF header's Qmax and radiation must agree with what the user gave (InputFileError otherwise).

    The G(r) was transformed with the header's Qmax from data of the header's radiation: a
    different value given on the command line would refine the wrong termination or
    scattering factors without a word, so it is an error and not an override.
    """
    given_q = fields.get("qmax")
    if given_q is not None and header.get("qmax") is not None:
        hq = float(header["qmax"])
        if not math.isclose(float(given_q), hq, rel_tol=QMAX_RTOL):
            raise InputFileError(path, f"the header says qmax = {hq:g} 1/Å but qmax = {float(given_q):g} 1/Å was "
                                       "given; the G(r) was transformed with the header's Qmax: drop the option "
                                       "or pass the header's value")
    if radiation is not None and header.get("radiation") not in (None, radiation):
        raise InputFileError(path, f"the header says {header['radiation']} data but --radiation {radiation} was "
                                   "given; drop the option, or correct the header if it is wrong")


def check_pdf_grid(obs: Observation, *, min_rmax: float = PDF_MIN_RMAX, max_step: float = PDF_MAX_RSTEP) -> None:
    """Check that a PDF observation's r grid is one the proposers can use.

    Parameters
    ----------
    obs : Observation
        A ``kind="pdf"`` observation (others are ignored).
    min_rmax : float
        Shortest usable r range, Å (:data:`PDF_MIN_RMAX`).
    max_step : float
        Coarsest usable r step, Å (:data:`PDF_MAX_RSTEP`).

    Raises
    ------
    InputFileError
        One line naming the file (``obs.source``) and the offending value: r not increasing,
        r max below ``min_rmax``, a step above ``max_step``, or non-finite G(r).
    """
    if obs.kind != "pdf":
        return
    src = obs.source or "PDF data"
    r, g = np.asarray(obs.x, float), np.asarray(obs.y, float)
    if len(r) < 2:
        raise InputFileError(src, f"only {len(r)} r point(s); a G(r) needs a grid up to at least {min_rmax:g} Å")
    if not np.all(np.isfinite(r)) or not np.all(np.isfinite(g)):
        bad = int(np.argmax(~(np.isfinite(r) & np.isfinite(g))))
        raise InputFileError(src, f"non-finite value at r point {bad + 1} (r = {r[bad]:g})")
    dr = np.diff(r)
    if np.any(dr <= 0):
        bad = int(np.argmax(dr <= 0)) + 1
        raise InputFileError(src, f"r must increase; r = {r[bad]:g} Å follows r = {r[bad - 1]:g} Å")
    if r[-1] < min_rmax:
        raise InputFileError(src, f"r max = {r[-1]:g} Å: the proposers need G(r) up to at least {min_rmax:g} Å "
                                  "(the first coordination shells and the next ones)")
    step = float(dr.max())
    if step > max_step:
        raise InputFileError(src, f"r step {step:g} Å: the proposers need a step of at most {max_step:g} Å "
                                  "(coarser grids do not resolve the first peaks); write the G(r) on a finer grid")


_OBS_FIELDS = ("kind", "x", "y", "x_kind", "composition", "sigma", "wavelength", "wavelength2", "ka2_ratio",
               "radiation", "size_nm", "qmax", "qmin", "qdamp", "qbroad", "spacegroup", "crystal_system", "z",
               "max_atoms", "meta")


def read_observation_json(path, *, kind=None, x_kind=None, wavelength=None, radiation=None,
                          composition=None, **fields) -> Observation:
    """Read an Observation saved as JSON (``io.write_json(dataclasses.asdict(obs), path)``).

    Required keys: ``x``, ``y``, ``x_kind``; ``kind`` defaults from ``x_kind``.
    Arguments given here override the file.
    """
    import json

    p = Path(path)
    text = read_text(p)
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(p, f"invalid JSON: {exc.msg}", line=exc.lineno) from None
    except RecursionError:  # a JSON bomb ([[[[...]]]]) must be a clean error too
        raise InputFileError(p, "invalid JSON: nested too deeply", line=1) from None
    if not isinstance(d, dict) or "x" not in d or "y" not in d:
        raise InputFileError(p, "expected a JSON object with 'x' and 'y' arrays (and 'x_kind')", line=1)
    args = {k: d[k] for k in _OBS_FIELDS if d.get(k) is not None}
    for key, val in (("kind", kind), ("x_kind", x_kind), ("wavelength", wavelength), ("radiation", radiation),
                     ("composition", composition)):
        if val is not None:
            args[key] = float(val) if key == "wavelength" else val
    args.update(fields)
    if "x_kind" not in args:
        raise InputFileError(p, "no 'x_kind' in the file: pass --x 2theta, --x q or --x r")
    args.setdefault("kind", "pdf" if args["x_kind"] == "r" else "xrd")
    for key in ("x", "y", "sigma"):
        if key in args:
            try:
                arr = np.asarray(args[key], dtype=float)
            except (TypeError, ValueError):
                raise InputFileError(p, f"'{key}' must be an array of numbers") from None
            if not np.all(np.isfinite(arr)):
                raise InputFileError(p, f"'{key}' has non-finite values (null, NaN or inf)")
            args[key] = arr
    try:
        obs = Observation(source=str(p), **args)
    except ValueError as exc:
        raise InputFileError(p, str(exc)) from None
    if len(obs.x) < 3:
        raise InputFileError(p, f"only {len(obs.x)} data point(s); expected at least 3")
    return obs


def may_be_observation_json(path) -> bool:
    """Whether a ``.json`` file found in a folder should be read as a saved Observation.

    ``False`` only for a well-formed JSON document whose top level is not an object with an
    ``x`` or a ``y`` key -- what the results of our own runs (``results.json``,
    ``<name>.error.json``, ``batch.json``, ``evaluation.json``) and structure files are.
    Anything else, a broken Observation file included, is ``True``, so that
    :func:`read_observation_json` reports what is wrong with it instead of the file
    being passed over.  Registered as the ``accepts`` test of the built-in
    ``observation-json`` reader (:mod:`diffpy_diffusion.builtins.readers`).
    """
    import json

    from .text import MAX_FILE_BYTES

    p = Path(path)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            return True  # the reader refuses it with the size limit in the message
        d = json.loads(p.read_bytes())
    except (OSError, ValueError, RecursionError):  # unreadable or not JSON: the reader says why
        return True
    return isinstance(d, dict) and ("x" in d or "y" in d)


def read_observation(path, *, kind=None, x_kind=None, wavelength=None, radiation=None,
                     composition=None, **fields) -> Observation:
    """Read a powder pattern or PDF file into an :class:`~diffpy_diffusion.types.Observation`.

    Parameters
    ----------
    path : str or Path
        ``.xy .xye .dat .csv .txt .chi .iq`` (diffraction), ``.gr .fgr``
        (PDF), ``.json`` (a saved Observation) -- the readers of the built-in
        plugin :mod:`diffpy_diffusion.builtins.readers` -- or any extension a
        plugin reader registered (it takes precedence).  Files with another
        extension are read as columns of numbers.
    kind : {"xrd", "pdf"}, optional
        Override the kind guessed from the extension.
    x_kind : {"2theta", "q", "r"}, optional
        What column 1 is (the CLI's ``--x``); detected from the file when not given.
    wavelength : float or str, optional
        Å; overrides the header.  Text is parsed like the CLI's ``--wavelength``
        (:func:`~diffpy_diffusion.io.units.parse_wavelength`: ``"1.5406"``, ``"CuKa"``
        with Kα2, ``"CuKa1"``); a :class:`~diffpy_diffusion.io.units.Wavelength` also carries Kα2.
    radiation : {"xray", "neutron"}, optional
        Overrides the header; default x-ray.
    composition : str or dict, optional
        E.g. ``"CdSe"``; parsed with :func:`~diffpy_diffusion.types.parse_composition`.
    **fields
        Further :class:`Observation` fields: ``size_nm``, ``spacegroup``,
        ``crystal_system``, ``z``, ``max_atoms``, ``qmax``, ``qdamp``...
        (these override header values).

    Raises
    ------
    InputFileError
        One line naming the file, the line and what was expected.
    CompositionError
        Bad ``composition``.
    ValueError
        ``wavelength`` text that is neither a number nor a known tube (the message lists the tubes).
    """
    from .. import plugins
    from .units import parse_wavelength

    if isinstance(wavelength, str):
        wavelength = parse_wavelength(wavelength)

    p = Path(path)
    suffix = p.suffix.lower()
    fields = {k: v for k, v in fields.items() if v is not None}
    # the reader registered for the extension (a plugin's before the built-in plugin
    # diffpy_diffusion.builtins.readers); other files are read as columns of numbers
    reg = plugins.reader_for(suffix) if suffix else None
    reader = reg.obj if reg is not None else read_pattern_file
    return reader(p, kind=kind, x_kind=x_kind, wavelength=wavelength, radiation=radiation,
                  composition=composition, **fields)
