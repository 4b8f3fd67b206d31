"""Bruker DIFFRAC.SUITE ``.brml``: a zip of XML files.

What is read (as documented by the GSAS-II importer ``G2pwd_BrukerBRML`` and by other
public readers; there is no published Bruker specification):

- ``Experiment0/RawData0.xml`` (``RawData<n>.xml``, the lowest number with data first;
  ``scan=`` picks another) holds the scan;
- DIFFRAC.SUITE 3 and later: ``RawData/DataRoutes/DataRoute`` elements, each with
  ``ScanInformation`` and one ``<Datum>`` per step; earlier versions put ``Datum`` and
  ``ScanInformation`` directly under ``RawData``;
- a ``<Datum>`` is ``time, (unused), 2θ, θ, counts`` (comma separated; five or more
  fields); the 2θ column must increase and lie between the ``ScanAxisInfo`` (TwoTheta)
  ``Start`` and ``Stop`` -- anything else is refused as an unknown layout rather than
  guessed; when the step times (field 1) differ, counts are scaled to the median time;
- a stationary-detector snapshot (``ScanInformation/ScaleAxes/ScaleAxisInfo`` with
  ``Start``/``Stop``/``Increment`` and one ``Datum`` of ``time, ?, ?, counts...``) gives 2θ
  from the scale axis;
- the radiation: ``WaveLengthAlpha1``, ``WaveLengthAlpha2``, ``WaveLengthRatio`` elements
  (``Value`` attribute, Å) anywhere in the RawData file, else in
  ``Experiment0/MeasurementContainer.xml``; ``TubeMaterial`` as the anode.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import InputFileError
from ...limits import check_pattern_points
from .common import (
    FileWavelength,
    XmlNode,
    check_wavelength,
    finish,
    numbers,
    open_zip,
    parse_xml,
    read_member,
    to_float,
    tube_wavelength,
)

EXTENSIONS = (".brml",)
_RAW = re.compile(r"(?:^|/)RawData(\d*)\.xml$", re.I)
_DATUM_TIME, _DATUM_2THETA, _DATUM_COUNTS = 0, 2, 4


def _value(node: XmlNode | None) -> float | None:
    if node is None:
        return None
    v = node.attr("Value")
    return to_float(v if v is not None else node.text)


def _wavelength(root: XmlNode, where) -> FileWavelength | None:
    a1 = root.find("WaveLengthAlpha1")
    l1 = _value(a1)
    if l1 is None or l1 <= 0:
        return None
    l1 = check_wavelength(l1, where, "WaveLengthAlpha1", a1.line)
    member = str(where).rsplit("[", 1)[-1].rstrip("]")
    fw = FileWavelength(l1, source=f"{member} WaveLengthAlpha1 (line {a1.line})")
    a2 = root.find("WaveLengthAlpha2")
    l2 = _value(a2)
    if l2 is not None and l2 > 0 and abs(l2 - l1) > 1e-6:
        fw.wavelength2 = check_wavelength(l2, where, "WaveLengthAlpha2", a2.line)
        ratio = _value(root.find("WaveLengthRatio"))
        if ratio is not None and 0 < ratio <= 1:
            fw.ka2_ratio = ratio
        elif ratio is not None and ratio == 0:
            fw.wavelength2 = None  # a zero Kα2 weight: Kα1 only
    return fw


def _axis(info: XmlNode | None, axes_tag: str, axis_name: str | None = None) -> XmlNode | None:
    if info is None:
        return None
    axes = info.child(axes_tag)
    if axes is None:
        return None
    nodes = [c for c in axes.children if c.tag.lower().endswith("axisinfo")]
    if axis_name is not None:
        for c in nodes:
            name = (c.attr("AxisName") or c.attr("AxisId") or "").replace(" ", "").lower()
            if name == axis_name:
                return c
        return None
    return nodes[0] if nodes else None


def _child_float(node: XmlNode, tag: str, where) -> float:
    c = node.child(tag)
    v = to_float(c.text) if c is not None else None
    if v is None:
        raise InputFileError(where, f"<{node.tag}> has no numeric <{tag}>", line=c.line if c is not None else node.line)
    return v


def _scan_xy(route: XmlNode, info: XmlNode | None, where) -> tuple[np.ndarray, np.ndarray, dict, int]:
    datums = route.all("Datum")
    meta: dict = {}
    scale = _axis(info, "ScaleAxes")
    if len(datums) == 1 and scale is not None:  # stationary detector: one Datum holds every channel
        start, stop = _child_float(scale, "Start", where), _child_float(scale, "Stop", where)
        inc = _child_float(scale, "Increment", where)
        vals = numbers(datums[0].text.replace(",", " "), where, "<Datum>", datums[0].line)
        y = vals[3:]
        if inc <= 0 or abs(start + (len(y) - 1) * inc - stop) > 1.5 * inc:
            raise InputFileError(where, f"stationary scan: {len(y)} channels do not span Start {start:g} to "
                                 f"Stop {stop:g} in steps of {inc:g}; unknown <Datum> layout", line=datums[0].line)
        meta["scan_type"] = "stationary detector"
        return start + inc * np.arange(len(y)), y, meta, datums[0].line
    check_pattern_points(len(datums), str(where))
    rows = np.empty((len(datums), 5))
    for i, d in enumerate(datums):
        toks = d.text.split(",")
        if len(toks) < 5:
            raise InputFileError(where, f"<Datum> has {len(toks)} fields; expected 'time, ?, 2θ, θ, counts'",
                                 line=d.line)
        for k in (_DATUM_TIME, _DATUM_2THETA, _DATUM_COUNTS):
            v = to_float(toks[k])
            if v is None:
                raise InputFileError(where, f"<Datum> field {k + 1}: expected a number, found {toks[k].strip()[:30]!r}",
                                     line=d.line)
            rows[i, k] = v
    x, y, t = rows[:, _DATUM_2THETA], rows[:, _DATUM_COUNTS], rows[:, _DATUM_TIME]
    tt = _axis(info, "ScanAxes", "twotheta")
    if tt is not None and len(x) > 1:
        start, stop = _child_float(tt, "Start", where), _child_float(tt, "Stop", where)
        lo, hi = min(start, stop), max(start, stop)
        step = float(np.median(np.abs(np.diff(x))))
        if x.min() < lo - 2 * step - 1e-6 or x.max() > hi + 2 * step + 1e-6:
            raise InputFileError(where, f"<Datum> field 3 runs {x.min():g}..{x.max():g}, outside the TwoTheta axis "
                                 f"{lo:g}..{hi:g}; unknown <Datum> layout", line=datums[0].line)
    if np.all(t > 0) and np.ptp(t) > 1e-6 * np.median(t):
        y = y * (np.median(t) / t)
        meta["count_time_note"] = "variable step times: counts scaled to the median step time"
    if np.all(t > 0):
        meta["count_time_s"] = float(np.median(t))
    return x, y, meta, datums[0].line


def read_brml(path, *, kind=None, x_kind=None, wavelength=None, radiation=None, composition=None,
              scan: int = 0, **fields):
    """Read a Bruker ``.brml`` 2θ scan into an :class:`~diffpy_diffusion.types.Observation`.

    Parameters
    ----------
    path : str or Path
    kind, x_kind, wavelength, radiation, composition, **fields
        As for :func:`diffpy_diffusion.io.read_observation`.
    scan : int
        0-based index among the RawData files that hold data.

    Raises
    ------
    InputFileError
        Not a zip, no ``RawData*.xml``, XML problems (DOCTYPE refused), an unknown ``Datum``
        layout; errors name ``file.brml[member]`` and the line in that member.
    ResourceLimitError
        A member inflating beyond the cap (zip bomb).
    """
    p = Path(path)
    with open_zip(p) as zf:
        names = [n for n in zf.namelist() if _RAW.search(n)]
        if not names:
            raise InputFileError(p, "no RawData*.xml inside; not a Bruker .brml file")
        names.sort(key=lambda n: (n.count("/"), int(_RAW.search(n).group(1) or 0), n))
        found = []
        for name in names:
            where = f"{p}[{name}]"
            root = parse_xml(read_member(zf, name, p), where)
            routes = [r for r in root.iter("DataRoute") if r.child("Datum") is not None]
            if not routes and root.child("Datum") is not None:
                routes = [root]  # before DIFFRAC.SUITE 3: Datum directly under RawData
            for r in routes:
                found.append((name, where, root, r))
            if len(found) > scan:
                break
        if not found:
            raise InputFileError(p, f"no <Datum> data in {', '.join(names[:3])}")
        if scan >= len(found):
            raise InputFileError(p, f"scan {scan} requested; the file has {len(found)} scan(s) with data")
        name, where, root, route = found[scan]
        info = route.child("ScanInformation") or root.child("ScanInformation")
        x, y, meta, line = _scan_xy(route, info, where)
        meta.update({"member": name, "scan": scan})
        if info is not None and info.attr("VisibleName"):
            meta["scan_name"] = info.attr("VisibleName")[:60]
        fw = _wavelength(root, where)
        anode = root.find("TubeMaterial")
        if fw is None:
            container = next((n for n in zf.namelist() if n.lower().endswith("measurementcontainer.xml")), None)
            if container is not None:
                croot = parse_xml(read_member(zf, container, p), f"{p}[{container}]")
                fw = _wavelength(croot, f"{p}[{container}]")
                anode = anode or croot.find("TubeMaterial")
    if anode is not None:
        name_txt = (anode.attr("Value") or anode.text).strip()
        if name_txt:
            meta["anode"] = name_txt[:20]
            if fw is None:
                fw = tube_wavelength(name_txt)
                if fw is not None:
                    fw.source = f"TubeMaterial {name_txt!r}: {fw.source}"
    # errors about single points name the file only: line numbers would be the member's
    meta["datum_line"] = line
    return finish(p, x, y, x_kind="2theta", fmt="brml", file_wavelength=fw,
                  meta=meta, kind=kind, user_x_kind=x_kind, wavelength=wavelength, radiation=radiation,
                  composition=composition, **fields)
