"""GSAS powder data files (``.gsa .gsas .gss .fxye .raw``): constant-wavelength banks.

Layout (GSAS manual, "raw data file"): line 1 a title; optionally ``Instrument parameter
file: NAME``; ``#`` comment lines; then per bank a line

``BANK ibank nchan nrec CONS start step 0 0 TYPE``

with ``start`` and ``step`` in centidegrees of 2θ for constant-wavelength data (``CONST``
is read like ``CONS``), and TYPE one of

- ``STD`` (default): ten 8-character fields per 80-column record, each a 2-character
  counter count ``NC`` (blank = 1) and a 6-character intensity; σ = √(I/NC), the
  format's definition (σ = √(1/NC) for a zero count);
- ``ESD``: five (intensity, σ) pairs of 8-character fields per record (whitespace
  separated pairs are accepted too);
- ``FXY`` / ``FXYE``: free format ``x y`` / ``x y σ`` per line, x in centidegrees.

Only the first bank is read (``bank=`` picks another).  Time-of-flight banks (``RALF``,
``SLOG``, ``LOG6``, ``TIME_MAP``, or CONS values beyond 180°) are refused.  The
wavelength is not part of a GSAS data file (it lives in the instrument parameter file,
``.prm``/``.instprm``): only a wavelength or anode written in the title or comments
(``wavelength = 1.5406``, ``Cu K-alpha``) is taken; otherwise pass ``--wavelength``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import InputFileError
from ...limits import PATTERN_POINTS, check_pattern_points
from ..patterns import parse_header
from ..text import read_text
from .common import FileWavelength, check_wavelength, finish, to_float

EXTENSIONS = (".gsa", ".gsas", ".gss", ".fxye", ".fxy", ".esd", ".std")
_TOF_BINTYPES = ("RALF", "SLOG", "LOG6", "TIME_MAP", "TIME", "LPSD")
#: 2θ in a CONS bank is in hundredths of a degree.
CENTIDEGREE = 0.01


def _fixed_fields(line: str, width: int) -> list[str]:
    s = line.rstrip("\r\n")
    return [s[i:i + width] for i in range(0, len(s), width)]


def read_gsas(path, *, kind=None, x_kind=None, wavelength=None, radiation=None, composition=None,
              bank: int = 0, **fields):
    """Read one constant-wavelength bank of a GSAS data file into an Observation.

    Parameters
    ----------
    path : str or Path
    kind, x_kind, wavelength, radiation, composition, **fields
        As for :func:`diffpy_diffusion.io.read_observation`.
    bank : int
        0-based index of the BANK to read.

    Raises
    ------
    InputFileError
        No BANK line, an unsupported bank type, bad or missing numbers (with the line), fewer
        points than the BANK line declares (truncated file), 2θ without a wavelength.
    """
    p = Path(path)
    lines = read_text(p).splitlines()
    banks = [i for i, s in enumerate(lines) if s.startswith("BANK")]
    if not banks:
        raise InputFileError(p, "no 'BANK' line; expected a GSAS data file (title, then "
                             "'BANK 1 nchan nrec CONS start step 0 0 TYPE')", line=min(len(lines), 2) or 1)
    if not 0 <= bank < len(banks):
        raise InputFileError(p, f"bank {bank} requested; the file has {len(banks)} BANK line(s)")
    b = banks[bank]
    head = lines[b].split()
    bline = b + 1
    header_lines = lines[:banks[0]] + [s for s in lines[banks[0]:b] if s.startswith("#")]
    meta: dict = {"title": lines[0].strip()[:120], "n_banks": len(banks), "bank": head[1] if len(head) > 1 else "?"}
    if len(lines) > 1 and lines[1].lower().startswith("instrument parameter"):
        meta["instrument_parameter_file"] = lines[1].split(":", 1)[-1].strip()[:200]
    if len(head) < 5:
        raise InputFileError(p, "BANK line: expected 'BANK ibank nchan nrec BINTYP ...'", line=bline)
    nchan = to_float(head[2])
    if nchan is None or nchan < 1 or nchan != int(nchan):
        raise InputFileError(p, f"BANK line: number of points {head[2]!r} is not a positive integer", line=bline)
    nchan = int(nchan)
    check_pattern_points(nchan, f"{p} (BANK line)")
    bintyp = head[4].upper()
    if bintyp in _TOF_BINTYPES:
        raise InputFileError(p, f"BANK type {bintyp}: time-of-flight data are not supported (2θ or Q only)",
                             line=bline)
    if bintyp not in ("CONS", "CONST"):
        raise InputFileError(p, f"BANK type {bintyp!r}: expected CONS (constant step)", line=bline)
    coefs = [to_float(t) for t in head[5:7]]
    fmt = head[9].upper() if len(head) > 9 else (head[-1].upper() if head[-1].upper() in
                                                  ("STD", "ESD", "FXY", "FXYE", "ALT") else "STD")
    if fmt == "ALT":
        raise InputFileError(p, "BANK format ALT (RALF): time-of-flight data are not supported", line=bline)
    if fmt not in ("STD", "ESD", "FXY", "FXYE"):
        raise InputFileError(p, f"BANK format {fmt!r}: expected STD, ESD, FXY or FXYE", line=bline)
    meta["gsas_type"] = fmt
    if fmt in ("STD", "ESD") and (len(coefs) < 2 or None in coefs or not coefs[1] or coefs[1] <= 0):
        raise InputFileError(p, "BANK line: expected start and a positive step (centidegrees) after CONS", line=bline)

    end = next((i for i in range(b + 1, len(lines)) if lines[i].startswith("BANK")), len(lines))
    max_rows = PATTERN_POINTS.value()
    xs: list[float] = []
    ys: list[float] = []
    ss: list[float] = []
    rows: list[int] = []
    for i in range(b + 1, end):
        s = lines[i]
        if not s.strip() or s.startswith("#"):
            continue
        if "\x1a" in s:  # DOS end-of-file mark written by old GSAS tools
            break
        if fmt in ("FXY", "FXYE"):
            toks = s.split()
            need = 3 if fmt == "FXYE" else 2
            if len(toks) < need:
                raise InputFileError(p, f"{fmt}: expected {need} numbers per line, found {len(toks)}", line=i + 1)
            vals = [to_float(t) for t in toks[:need]]
            if None in vals:
                bad = toks[vals.index(None)]
                raise InputFileError(p, f"{fmt}: expected a number, found {bad[:30]!r}", line=i + 1)
            xs.append(vals[0])
            ys.append(vals[1])
            if fmt == "FXYE":
                ss.append(vals[2])
            rows.append(i + 1)
        elif fmt == "STD":
            for f in _fixed_fields(s, 8):
                if not f.strip():
                    break
                nc_txt, y_txt = f[:2].strip(), f[2:].strip()
                nc = to_float(nc_txt) if nc_txt else 1.0
                yv = to_float(y_txt) if y_txt else 0.0
                if nc is None or yv is None:
                    raise InputFileError(p, f"STD: field {f!r} is not 'NNIIIIII' (2-digit counter count, "
                                         "6-digit intensity)", line=i + 1)
                ys.append(yv)
                ss.append(np.sqrt(max(yv, 1.0) / max(nc, 1.0)) if yv > 0 else np.sqrt(1.0 / max(nc, 1.0)))
                rows.append(i + 1)
        else:  # ESD
            toks = s.split()
            vals = [to_float(t) for t in toks]
            if len(toks) % 2 == 0 and None not in vals and len(toks) <= 10:
                pairs = list(zip(vals[0::2], vals[1::2]))
            else:
                pairs = []
                for f in _fixed_fields(s, 16):
                    if not f.strip():
                        break
                    a, e = to_float(f[:8]), to_float(f[8:])
                    if a is None or e is None:
                        raise InputFileError(p, f"ESD: field {f!r} is not an (intensity, esd) pair of "
                                             "8-character numbers", line=i + 1)
                    pairs.append((a, e))
            for a, e in pairs:
                ys.append(a)
                ss.append(e)
                rows.append(i + 1)
        if len(ys) >= nchan:
            break
        if len(ys) > max_rows:
            check_pattern_points(len(ys), str(p))
    if len(ys) < nchan:
        raise InputFileError(p, f"BANK {meta['bank']} declares {nchan} points, found {len(ys)} (truncated file?)",
                             line=rows[-1] if rows else bline)
    ys, ss, rows = ys[:nchan], ss[:nchan], rows[:nchan]
    if fmt in ("STD", "ESD"):
        x = (coefs[0] + coefs[1] * np.arange(nchan)) * CENTIDEGREE
    else:
        x = np.asarray(xs[:nchan]) * CENTIDEGREE
        start = coefs[0] if coefs and coefs[0] is not None and coefs[0] > 0 else None
        if start is not None and abs(xs[0] - start * CENTIDEGREE) < abs(xs[0] - start):
            # the column is in degrees while the BANK line's start is in centidegrees (a writer
            # that did not follow the format): the start value tells which one the column uses
            x = np.asarray(xs[:nchan])
            meta["x_note"] = "FXY(E) x column in degrees, BANK start in centidegrees"
    if x[-1] >= 180 or x[0] >= 180:
        raise InputFileError(p, f"x reaches {max(x[0], x[-1]) / CENTIDEGREE:g} centidegrees (beyond 180°): "
                             "time-of-flight data are not supported", line=bline)
    sigma = None
    if fmt in ("STD", "ESD", "FXYE"):
        sigma = np.asarray(ss, dtype=float)
        if fmt in ("ESD", "FXYE") and np.any(sigma <= 0):
            # GSAS gives such points zero weight; here σ must be positive: use √max(y, 1)
            bad = sigma <= 0
            sigma[bad] = np.sqrt(np.maximum(np.asarray(ys)[bad], 1.0))
            meta["sigma_note"] = f"{int(bad.sum())} non-positive esd(s) replaced by √max(y, 1)"

    # the instrument parameter file's name ("cuka.prm") says nothing reliable about the beam
    head_text = "\n".join(s for s in header_lines if not s.lower().startswith("instrument parameter"))
    hdr = parse_header(head_text)
    fw = None
    if "wavelength" in hdr:
        lam = check_wavelength(hdr["wavelength"], p, "wavelength in the title/comments")
        fw = FileWavelength(lam, hdr.get("wavelength2"), source="title/comment lines")
    return finish(p, x, np.asarray(ys, dtype=float), x_kind="2theta", fmt="gsas", sigma=sigma,
                  linenos=np.asarray(rows), file_wavelength=fw, file_radiation=hdr.get("radiation"),
                  meta=meta, kind=kind, user_x_kind=x_kind, wavelength=wavelength, radiation=radiation,
                  composition=composition, **fields)
