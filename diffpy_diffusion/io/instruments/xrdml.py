"""PANalytical / Malvern Panalytical XRDML (``.xrdml``), schema 1.x and 2.x.

``xrdMeasurements/xrdMeasurement``: ``usedWavelength`` (``kAlpha1``, ``kAlpha2``,
``ratioKAlpha2KAlpha1``, Å; the attribute ``intended="K-Alpha 1"`` means a monochromator
removed Kα2, ``"K-Alpha"`` the doublet), ``incidentBeamPath/xRayTube`` (anode), and one
or more ``scan/dataPoints`` with

- ``positions axis="2Theta"``: ``startPosition``/``endPosition`` (evenly spaced over the
  points) or ``listPositions``; a ``commonPosition`` 2θ is a fixed axis, not a 2θ scan;
- ``intensities`` (schema 1.x: already on the unattenuated scale) or ``counts`` (schema
  2.x: raw detector counts, multiplied here by ``beamAttenuationFactors`` or
  ``commonBeamAttenuationFactor`` when present);
- ``commonCountingTime``/``countingTimes`` (s), kept in ``meta``; intensities are not
  divided by it.

Only the first 2θ scan is read (``scan=`` picks another); the others are counted in
``meta["n_scans"]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import InputFileError
from .common import FileWavelength, XmlNode, check_wavelength, finish, numbers, parse_xml, read_bytes, to_float

EXTENSIONS = (".xrdml",)
_ANGSTROM_PER = {"angstrom": 1.0, "a": 1.0, "å": 1.0, "nm": 10.0, "pm": 0.01}


def _length(node: XmlNode | None, path, what: str) -> float | None:
    if node is None or not node.text.strip():
        return None
    v = to_float(node.text)
    if v is None:
        raise InputFileError(path, f"<{node.tag}>: expected a number, found {node.text.strip()[:30]!r}", line=node.line)
    unit = (node.attr("unit") or "Angstrom").strip().lower()
    if unit not in _ANGSTROM_PER:
        raise InputFileError(path, f"<{node.tag}> in unknown unit {unit!r}", line=node.line)
    return check_wavelength(v * _ANGSTROM_PER[unit], path, what, node.line)


def _wavelength(meas: XmlNode, path) -> FileWavelength | None:
    wl = meas.child("usedWavelength")
    if wl is None:
        return None
    k1 = _length(wl.child("kAlpha1"), path, "kAlpha1")
    if k1 is None:
        return None
    k2 = _length(wl.child("kAlpha2"), path, "kAlpha2")
    intended = (wl.attr("intended") or "").replace(" ", "").replace("-", "").lower()
    ratio_node = wl.child("ratioKAlpha2KAlpha1")
    ratio = to_float(ratio_node.text) if ratio_node is not None else None
    src = f"<usedWavelength intended={wl.attr('intended')!r}> (line {wl.line})"
    if intended.endswith("alpha1") or k2 is None or abs(k2 - k1) < 1e-6 or (ratio is not None and ratio <= 0):
        return FileWavelength(k1, source=src)
    if ratio is not None and not 0 < ratio <= 1:
        raise InputFileError(path, f"ratioKAlpha2KAlpha1 = {ratio:g} is outside (0, 1]", line=ratio_node.line)
    return FileWavelength(k1, k2, ratio, source=src)


def _two_theta_positions(points: XmlNode) -> XmlNode | None:
    for pos in points.all("positions"):
        if (pos.attr("axis") or "").replace(" ", "").lower() in ("2theta", "2θ", "twotheta"):
            return pos
    return None


def read_xrdml(path, *, kind=None, x_kind=None, wavelength=None, radiation=None, composition=None,
               scan: int = 0, **fields):
    """Read a PANalytical ``.xrdml`` 2θ scan into an :class:`~diffpy_diffusion.types.Observation`.

    Parameters
    ----------
    path : str or Path
    kind, x_kind, wavelength, radiation, composition, **fields
        As for :func:`diffpy_diffusion.io.read_observation`.
    scan : int
        0-based index among the file's 2θ scans.

    Raises
    ------
    InputFileError
        Not XML or not XRDML, a DOCTYPE (refused), no 2θ scan, a position count that does not
        match the intensities, bad numbers; one line with the XML line.
    """
    p = Path(path)
    root = parse_xml(read_bytes(p), p)
    if root.tag.lower() != "xrdmeasurements":
        raise InputFileError(p, f"root element <{root.tag}> is not <xrdMeasurements>; not an XRDML file",
                             line=root.line)
    scans = [(meas, sc) for meas in root.all("xrdMeasurement") for sc in meas.all("scan")
             if sc.child("dataPoints") is not None and _two_theta_positions(sc.child("dataPoints")) is not None]
    if not scans:
        raise InputFileError(p, "no scan with <positions axis=\"2Theta\"> in <dataPoints>", line=root.line)
    if not 0 <= scan < len(scans):
        raise InputFileError(p, f"scan {scan} requested; the file has {len(scans)} 2θ scan(s)")
    meas, sc = scans[scan]
    points = sc.child("dataPoints")
    meta: dict = {"n_scans": len(scans), "scan": scan, "scan_axis": sc.attr("scanAxis")}
    if meas.attr("measurementType"):
        meta["measurement_type"] = meas.attr("measurementType")

    counts = points.child("counts")
    inten = points.child("intensities")
    ynode = inten if inten is not None else counts
    if ynode is None:
        raise InputFileError(p, "<dataPoints> has neither <intensities> nor <counts>", line=points.line)
    y = numbers(ynode.text, p, f"<{ynode.tag}>", ynode.line)
    n = len(y)
    meta["y_unit"] = ynode.attr("unit") or "counts"
    if ynode is counts:  # raw counts: the attenuator factors are not applied yet
        att = points.child("beamAttenuationFactors")
        if att is not None and att.text.strip():
            f = numbers(att.text, p, "<beamAttenuationFactors>", att.line)
            if len(f) != n:
                raise InputFileError(p, f"<beamAttenuationFactors> has {len(f)} values for {n} counts", line=att.line)
            y = y * f
            meta["attenuation"] = "beamAttenuationFactors applied to <counts>"
        common = points.child("commonBeamAttenuationFactor")
        if common is not None and common.text.strip():
            f = to_float(common.text)
            if f is None or f <= 0:
                raise InputFileError(p, "<commonBeamAttenuationFactor>: expected a positive number", line=common.line)
            y = y * f
            meta["attenuation"] = f"commonBeamAttenuationFactor {f:g} applied to <counts>"

    pos = _two_theta_positions(points)
    unit = (pos.attr("unit") or "deg").lower()
    if unit not in ("deg", "degree", "degrees", "°"):
        raise InputFileError(p, f"2θ positions in unit {unit!r}; expected degrees", line=pos.line)
    start, end, lst = pos.child("startPosition"), pos.child("endPosition"), pos.child("listPositions")
    if lst is not None:
        x = numbers(lst.text, p, "<listPositions>", lst.line)
        if len(x) != n:
            raise InputFileError(p, f"<listPositions> has {len(x)} values for {n} intensities", line=lst.line)
    elif start is not None and end is not None:
        a, b = to_float(start.text), to_float(end.text)
        if a is None or b is None:
            bad = start if a is None else end
            raise InputFileError(p, f"<{bad.tag}>: expected a number, found {bad.text.strip()[:30]!r}", line=bad.line)
        x = np.linspace(a, b, n) if n > 1 else np.array([a])
    elif pos.child("commonPosition") is not None:
        raise InputFileError(p, "2θ is fixed (<commonPosition>) in this scan; expected a 2θ scan", line=pos.line)
    else:
        raise InputFileError(p, "<positions axis=\"2Theta\"> has no startPosition/endPosition or listPositions",
                             line=pos.line)

    t = points.child("commonCountingTime")
    if t is not None and to_float(t.text) is not None:
        meta["count_time_s"] = to_float(t.text)
    ts = points.child("countingTimes")
    if ts is not None and ts.text.strip():
        times = numbers(ts.text, p, "<countingTimes>", ts.line)
        if len(times):
            meta["count_time_s"] = [float(times.min()), float(times.max())]
    tube = meas.find("xRayTube")
    if tube is not None:
        anode = tube.child("anodeMaterial")
        if anode is not None and anode.text.strip():
            meta["anode"] = anode.text.strip()[:20]
    sample = root.child("sample")
    if sample is not None:
        for tag in ("name", "id"):
            node = sample.child(tag)
            if node is not None and node.text.strip():
                meta["sample"] = node.text.strip()[:80]
                break
    fw = _wavelength(meas, p)
    if fw is None:  # anode name only: its Kα lines are still "in the file", and labelled as such
        from .common import tube_wavelength

        fw = tube_wavelength(meta.get("anode", "")) if meta.get("anode") else None
        if fw is not None:
            fw.source = f"<anodeMaterial> {meta['anode']}: {fw.source}"
    line = ynode.line
    return finish(p, x, y, x_kind="2theta", fmt="xrdml", linenos=np.full(n, line), file_wavelength=fw,
                  meta=meta, kind=kind, user_x_kind=x_kind, wavelength=wavelength, radiation=radiation,
                  composition=composition, **fields)
