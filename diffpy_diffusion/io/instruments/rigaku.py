"""Rigaku ``.ras`` (SmartLab, MiniFlex, Ultima: SmartLab Guidance / PDXL export).

Layout: ``*RAS_DATA_START``; per scan a header ``*RAS_HEADER_START`` ... ``*RAS_HEADER_END``
of ``*KEY "value"`` lines, then ``*RAS_INT_START``, one point per line (angle, intensity,
attenuator coefficient), ``*RAS_INT_END``; ``*RAS_DATA_END``.

Read from the header: ``HW_XG_WAVE_LENGTH_ALPHA1`` / ``_ALPHA2`` (unit
``HW_XG_WAVE_LENGTH_UNIT``, Å by default), the wave type (``HW_XG_WAVE_TYPE`` or
``MEAS_COND_XG_WAVE_TYPE``: ``Ka1`` means Kα1 only), ``HW_XG_TARGET_NAME`` (anode; its Kα
lines when no wavelength is written), ``MEAS_SCAN_AXIS_X`` (must be a 2θ axis),
``MEAS_SCAN_UNIT_Y``, ``MEAS_DATA_COUNT`` (checked against the rows: a truncated file is an
error).  The file gives no Kα2/Kα1 ratio; 0.5 is used and said so in ``meta``.  The third
column is the attenuator coefficient: intensities are multiplied by it when it is not 1
(the counts were measured through the attenuator).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import InputFileError
from ...limits import PATTERN_POINTS, check_pattern_points
from ..text import read_text
from .common import FileWavelength, check_wavelength, finish, to_float, tube_wavelength

EXTENSIONS = (".ras",)
_KEY = re.compile(r"^\*(\S+)\s*(.*)$")
_ANGSTROM_PER = {"angstrom": 1.0, "a": 1.0, "å": 1.0, "nm": 10.0}


def _scans(lines: list[str], path):
    """Yield (header dict key -> (value, line), rows, rows' lines, INT_START line) per scan."""
    i, n = 0, len(lines)
    while i < n:
        if lines[i].strip().upper() != "*RAS_HEADER_START":
            i += 1
            continue
        header: dict = {}
        i += 1
        while i < n and lines[i].strip().upper() != "*RAS_HEADER_END":
            m = _KEY.match(lines[i].strip())
            if m:
                header[m.group(1).upper()] = (m.group(2).strip().strip('"').strip(), i + 1)
            i += 1
        if i >= n:
            raise InputFileError(path, "*RAS_HEADER_START without *RAS_HEADER_END (truncated file?)", line=n)
        while i < n and lines[i].strip().upper() != "*RAS_INT_START":
            i += 1
        if i >= n:
            raise InputFileError(path, "scan header without *RAS_INT_START (truncated file?)", line=n)
        start = i + 1
        rows: list[list[float]] = []
        linenos: list[int] = []
        i += 1
        max_rows = PATTERN_POINTS.value()
        while i < n and lines[i].strip().upper() != "*RAS_INT_END":
            s = lines[i].strip()
            if s:
                toks = s.split()
                vals = [to_float(t) for t in toks]
                if len(toks) < 2 or None in vals:
                    bad = next((t for t, v in zip(toks, vals) if v is None), None)
                    what = f"found {bad[:30]!r}" if bad is not None else f"found {len(toks)} number(s)"
                    raise InputFileError(path, f"expected 'angle intensity [attenuator]' numbers, {what}", line=i + 1)
                rows.append(vals[:3] + [1.0] * (3 - len(vals[:3])))
                linenos.append(i + 1)
                if len(rows) > max_rows:
                    check_pattern_points(len(rows), str(path))
            i += 1
        if i >= n:
            raise InputFileError(path, "*RAS_INT_START without *RAS_INT_END (truncated file?)",
                                 line=linenos[-1] if linenos else start)
        yield header, rows, linenos, start
        i += 1


def read_rigaku_ras(path, *, kind=None, x_kind=None, wavelength=None, radiation=None, composition=None,
                    scan: int = 0, **fields):
    """Read one scan of a Rigaku ``.ras`` file into an :class:`~diffpy_diffusion.types.Observation`.

    Parameters
    ----------
    path : str or Path
    kind, x_kind, wavelength, radiation, composition, **fields
        As for :func:`diffpy_diffusion.io.read_observation`.
    scan : int
        0-based scan index (a ``.ras`` may hold several).

    Raises
    ------
    InputFileError
        Not a RAS file, a truncated scan, bad numbers, a scan axis that is not 2θ, a point
        count that disagrees with ``MEAS_DATA_COUNT``; one line with the line number.
    """
    p = Path(path)
    lines = read_text(p).splitlines()
    first = next((s.strip() for s in lines if s.strip()), "")
    if first.upper() != "*RAS_DATA_START":
        raise InputFileError(p, f"expected '*RAS_DATA_START' as the first line, found {first[:40]!r}; "
                             "not a Rigaku .ras file", line=1)
    scans = list(_scans(lines, p))
    if not scans:
        raise InputFileError(p, "no *RAS_HEADER_START ... *RAS_INT_END scan in the file", line=len(lines))
    if not 0 <= scan < len(scans):
        raise InputFileError(p, f"scan {scan} requested; the file has {len(scans)} scan(s)")
    header, rows, linenos, start = scans[scan]
    if not rows:
        raise InputFileError(p, "the scan has no data rows", line=start)
    data = np.asarray(rows, dtype=float)
    meta: dict = {"n_scans": len(scans), "scan": scan}

    def get(key):
        return header.get(key, (None, None))

    axis, axis_line = get("MEAS_SCAN_AXIS_X")
    if axis:
        meta["scan_axis"] = axis
        norm = re.sub(r"[\s_/-]", "", axis).lower()
        if "2theta" not in norm and "twotheta" not in norm:
            raise InputFileError(p, f"scan axis {axis!r} is not 2θ; only 2θ scans are powder patterns",
                                 line=axis_line)
    count, count_line = get("MEAS_DATA_COUNT")
    if count and to_float(count) is not None and int(to_float(count)) != len(rows):
        raise InputFileError(p, f"MEAS_DATA_COUNT is {count} but the scan has {len(rows)} rows (truncated file?)",
                             line=count_line)
    unit_y, _ = get("MEAS_SCAN_UNIT_Y")
    if unit_y:
        meta["y_unit"] = unit_y
    y = data[:, 1]
    att = data[:, 2]
    if np.any(att <= 0):
        bad = int(np.argmax(att <= 0))
        raise InputFileError(p, f"attenuator coefficient must be positive, found {att[bad]:g}", line=linenos[bad])
    if not np.allclose(att, 1.0):
        y = y * att
        meta["attenuation"] = "intensity × attenuator coefficient (column 3)"

    unit, unit_line = get("HW_XG_WAVE_LENGTH_UNIT")
    scale = _ANGSTROM_PER.get((unit or "angstrom").lower())
    if scale is None:
        raise InputFileError(p, f"HW_XG_WAVE_LENGTH_UNIT {unit!r}: expected Angstrom or nm", line=unit_line)
    l1_txt, l1_line = get("HW_XG_WAVE_LENGTH_ALPHA1")
    l2_txt, l2_line = get("HW_XG_WAVE_LENGTH_ALPHA2")
    target, _ = get("HW_XG_TARGET_NAME")
    if target:
        meta["anode"] = target[:20]
    wave_type = (get("HW_XG_WAVE_TYPE")[0] or get("MEAS_COND_XG_WAVE_TYPE")[0] or "").replace(" ", "").lower()
    mono = wave_type.endswith(("ka1", "alpha1"))
    fw = None
    l1 = to_float(l1_txt) if l1_txt else None
    if l1_txt and l1 is None:
        raise InputFileError(p, f"HW_XG_WAVE_LENGTH_ALPHA1 {l1_txt!r} is not a number", line=l1_line)
    if l1 is not None:
        l1 = check_wavelength(l1 * scale, p, "HW_XG_WAVE_LENGTH_ALPHA1", l1_line)
        fw = FileWavelength(l1, source=f"HW_XG_WAVE_LENGTH_ALPHA1 (line {l1_line})")
        l2 = to_float(l2_txt) if l2_txt else None
        if l2 is not None and not mono and abs(l2 * scale - l1) > 1e-6:
            fw.wavelength2 = check_wavelength(l2 * scale, p, "HW_XG_WAVE_LENGTH_ALPHA2", l2_line)
    elif target:
        fw = tube_wavelength(target + ("Ka1" if mono else ""))
        if fw is not None:
            fw.source = f"HW_XG_TARGET_NAME {target!r}: {fw.source}"
    return finish(p, data[:, 0], y, x_kind="2theta", fmt="ras", linenos=np.asarray(linenos), file_wavelength=fw,
                  meta=meta, kind=kind, user_x_kind=x_kind, wavelength=wavelength, radiation=radiation,
                  composition=composition, **fields)
