"""What the instrument-file readers share: safe XML and zip access, the wavelength rules, the Observation.

Safety: XML is parsed with :mod:`xml.parsers.expat` directly and any document type
declaration (the only place entities can be declared: "billion laughs", external
entities) is refused before it is read; zip members are read with a byte cap whatever
their header claims (zip bombs); every file is capped in size like the column readers
(:data:`diffpy_diffusion.io.text.MAX_FILE_BYTES`) and in points
(:data:`diffpy_diffusion.limits.PATTERN_POINTS`).  Nothing in a file is executed.

Wavelength rules (issue 15): a wavelength the user gives wins; otherwise the file's is
used and recorded in ``meta["wavelength_from"]``; a 2θ pattern with neither is an error
that asks for ``--wavelength`` -- never a silent Cu Kα.
"""

from __future__ import annotations

import math
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

import numpy as np

from ...errors import InputFileError, ResourceLimitError
from ...limits import PATTERN_POINTS, check_pattern_points
from ...types import Observation, parse_composition
from ..text import read_checked_bytes

#: Largest number of XML elements in one instrument file.  An XRDML or Bruker RawData file
#: has a few hundred elements (one ``<Datum>`` per step for Bruker), so this is a
#: safety cap against hostile files, not a format limit.
MAX_XML_ELEMENTS = 4 * 1_000_000
#: Bytes allowed per pattern point in a zip member (a Bruker ``<Datum>`` line is ~40-60
#: bytes); with :data:`~diffpy_diffusion.limits.PATTERN_POINTS` this caps what a member may
#: inflate to.
ZIP_BYTES_PER_POINT = 256
#: Largest number of members in a zip container (a ``.brml`` has about ten).
MAX_ZIP_MEMBERS = 10_000

_NUM_RE = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eEdD][-+]?\d+)?)\s*$")


def read_bytes(path: Path) -> bytes:
    """The file's bytes, refusing missing, directory, empty and oversized files (one-line errors)."""
    raw = read_checked_bytes(path)
    if not raw.strip():
        raise InputFileError(path, "file is empty", line=1)
    return raw


def to_float(text: str) -> float | None:
    """``"1.5406"``, ``"1.0D+03"`` -> float; anything else (including NaN/inf) -> None."""
    m = _NUM_RE.match(text)
    if not m:
        return None
    v = float(m.group(1).replace("D", "E").replace("d", "e"))
    return v if math.isfinite(v) else None


def numbers(text: str, where, what: str, line: int | None = None) -> np.ndarray:
    """Whitespace-separated numbers (an XML element's text); an error names the first bad token."""
    toks = text.split()
    if len(toks) > PATTERN_POINTS.value():
        check_pattern_points(len(toks), f"{where} ({what})")
    try:
        arr = np.array(toks, dtype=float)
    except ValueError:
        bad = next(t for t in toks if to_float(t) is None)
        raise InputFileError(where, f"{what}: expected numbers, found {bad[:40]!r}", line=line) from None
    if not np.all(np.isfinite(arr)):
        bad = toks[int(np.argmax(~np.isfinite(arr)))]
        raise InputFileError(where, f"{what}: non-finite value {bad!r}", line=line)
    return arr


# --------------------------------------------------------------------------- XML


@dataclass
class XmlNode:
    """One XML element: local name (namespace prefix dropped), attributes, text, children, line."""

    tag: str
    attrs: dict
    line: int
    children: list = field(default_factory=list)
    _text: list = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self._text)

    def child(self, tag: str) -> XmlNode | None:
        """First direct child called ``tag`` (case-insensitive local name)."""
        t = tag.lower()
        return next((c for c in self.children if c.tag.lower() == t), None)

    def all(self, tag: str) -> list[XmlNode]:
        """Direct children called ``tag``."""
        t = tag.lower()
        return [c for c in self.children if c.tag.lower() == t]

    def iter(self, tag: str | None = None):
        """This element and all below it, depth first (iterative: no recursion limit)."""
        t = tag.lower() if tag else None
        stack = [self]
        while stack:
            node = stack.pop()
            if t is None or node.tag.lower() == t:
                yield node
            stack.extend(reversed(node.children))

    def find(self, tag: str) -> XmlNode | None:
        """First element called ``tag`` at any depth below (or at) this one."""
        return next(self.iter(tag), None)

    def attr(self, name: str) -> str | None:
        """Attribute by local name, case-insensitive."""
        n = name.lower()
        for k, v in self.attrs.items():
            if k.split(":")[-1].lower() == n:
                return v
        return None


def parse_xml(data: bytes, where) -> XmlNode:
    """Parse an XML document into :class:`XmlNode` objects, refusing DTDs and entity declarations.

    Parameters
    ----------
    data : bytes
        The document.
    where : str or Path
        What errors name (the file, or ``file.brml[member]``).

    Raises
    ------
    InputFileError
        Not well-formed XML (with the line), a ``<!DOCTYPE``/``<!ENTITY`` declaration, or
        more than :data:`MAX_XML_ELEMENTS` elements.
    """
    parser = expat.ParserCreate()
    root = XmlNode("#document", {}, 1)
    stack = [root]
    count = [0]

    class _Refused(Exception):
        pass

    def refuse(*_args):
        raise _Refused("a DOCTYPE/ENTITY declaration (refused: entity expansion is unsafe)")

    def start(name, attrs):
        count[0] += 1
        if count[0] > MAX_XML_ELEMENTS:
            raise _Refused(f"more than {MAX_XML_ELEMENTS:,} XML elements; not an instrument file")
        node = XmlNode(name.split(":")[-1], attrs, parser.CurrentLineNumber)
        stack[-1].children.append(node)
        stack.append(node)

    def end(_name):
        stack.pop()

    def chars(text):
        stack[-1]._text.append(text)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.buffer_text = True
    try:
        parser.Parse(data, True)
    except _Refused as exc:
        raise InputFileError(where, str(exc), line=parser.CurrentLineNumber) from None
    except expat.ExpatError as exc:
        msg = expat.ErrorString(exc.code) if exc.code else str(exc)
        raise InputFileError(where, f"not well-formed XML ({msg}); the file is damaged or not XML",
                             line=exc.lineno) from None
    except LookupError as exc:  # <?xml encoding="..."?> names a codec Python does not know
        raise InputFileError(where, f"unknown text encoding in the XML declaration ({exc})", line=1) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise InputFileError(where, f"cannot parse XML: {type(exc).__name__}") from None
    if not root.children:
        raise InputFileError(where, "no XML root element", line=1)
    return root.children[0]


# --------------------------------------------------------------------------- zip


def open_zip(path: Path) -> zipfile.ZipFile:
    """Open a zip container (``.brml``) with one-line errors for anything that is not one."""
    read_bytes(path)  # existence, size and emptiness checks
    try:
        zf = zipfile.ZipFile(path)
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError):
        raise InputFileError(path, "not a zip archive (a Bruker .brml file is a zip of XML files)") from None
    if len(names) > MAX_ZIP_MEMBERS:
        zf.close()
        raise InputFileError(path, f"zip archive has {len(names):,} members (more than {MAX_ZIP_MEMBERS:,}); "
                             "not an instrument file")
    return zf


def read_member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    """One member's bytes, capped at :data:`ZIP_BYTES_PER_POINT` × the pattern-points cap.

    The cap is applied to the bytes actually inflated, not to the size the member's
    header claims, so a zip bomb stops at the cap.
    """
    cap = ZIP_BYTES_PER_POINT * PATTERN_POINTS.value()
    where = f"{path}[{name}]"
    try:
        with zf.open(name) as fh:
            data = fh.read(cap + 1)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError,
            zlib.error, KeyError) as exc:
        raise InputFileError(where, f"cannot read this zip member ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:80] if str(exc) else 'damaged'})") from None
    if len(data) > cap:
        raise ResourceLimitError(f"{where}: zip member inflates to more than {cap / 2**20:.0f} MiB "
                                 f"({ZIP_BYTES_PER_POINT} bytes per point of the {PATTERN_POINTS.name} cap); "
                                 + PATTERN_POINTS.how_to_raise())
    return data


# --------------------------------------------------------------------------- wavelength + Observation


@dataclass
class FileWavelength:
    """The radiation a file states.

    Attributes
    ----------
    wavelength : float
        Kα1 (or the single) wavelength in Å.
    wavelength2 : float or None
        Kα2 in Å when the beam holds the doublet.
    ka2_ratio : float or None
        Kα2/Kα1 intensity ratio when the file gives it.
    source : str
        Where in the file it was found (for ``meta["wavelength_from"]``).
    """

    wavelength: float
    wavelength2: float | None = None
    ka2_ratio: float | None = None
    source: str = "file"


def check_wavelength(value: float | None, where, what: str, line: int | None = None) -> float | None:
    """A wavelength in Å within 0.01-20 Å (the range ``--wavelength`` accepts), or an error."""
    if value is None:
        return None
    if not 0.01 <= value <= 20.0:
        raise InputFileError(where, f"{what} = {value:g} Å is outside 0.01-20 Å", line=line)
    return value


def finish(path: Path, x, y, *, x_kind: str, fmt: str, sigma=None, linenos=None,
           file_wavelength: FileWavelength | None = None, file_radiation: str | None = None,
           meta: dict | None = None, kind=None, user_x_kind=None, wavelength=None, radiation=None,
           composition=None, **fields) -> Observation:
    """Validate the arrays and apply the user's options and the wavelength rules.

    Parameters
    ----------
    path : Path
        The file (named in errors).
    x, y, sigma : array_like
        Abscissa (2θ in degrees or Q in Å⁻¹), intensity and optional positive uncertainties.
    x_kind : {"2theta", "q"}
        What the file's x is.
    fmt : str
        Format name for ``meta["format"]``.
    linenos : array_like of int, optional
        Line of each point, for errors about a point.
    file_wavelength, file_radiation
        What the file states.
    kind, user_x_kind, wavelength, radiation, composition, **fields
        The reader options (:func:`diffpy_diffusion.io.read_observation`).
    """
    meta = dict(meta or {})
    meta["format"] = fmt
    if kind not in (None, "xrd"):
        raise InputFileError(path, f"a {fmt} file holds a diffraction pattern; kind {kind!r} does not fit")
    if user_x_kind not in (None, x_kind):
        name = {"2theta": "2θ (degrees)", "q": "Q (Å⁻¹)"}[x_kind]
        raise InputFileError(path, f"--x {user_x_kind} does not fit: the file's x axis is {name}")
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    sigma = None if sigma is None else np.asarray(sigma, dtype=float)
    n = len(x)
    check_pattern_points(n, str(path))
    if n < 3:
        raise InputFileError(path, f"only {n} data point(s); expected at least 3",
                             line=int(linenos[-1]) if linenos is not None and n else None)
    if len(y) != n or (sigma is not None and len(sigma) != n):
        raise InputFileError(path, f"{n} x values but {len(y)} intensities")
    for arr, what in ((x, "x"), (y, "intensity"), (sigma, "uncertainty")):
        if arr is not None and not np.all(np.isfinite(arr)):
            bad = int(np.argmax(~np.isfinite(arr)))
            raise InputFileError(path, f"non-finite {what} at point {bad + 1}",
                                 line=int(linenos[bad]) if linenos is not None else None)
    if sigma is not None and np.any(sigma <= 0):
        bad = int(np.argmax(sigma <= 0))
        raise InputFileError(path, f"uncertainty must be positive, found {sigma[bad]:g} at point {bad + 1}",
                             line=int(linenos[bad]) if linenos is not None else None)
    order = np.arange(n)
    dx = np.diff(x)
    if np.all(dx < 0):
        order = order[::-1]
    elif np.any(dx <= 0):
        bad = int(np.argmax(dx <= 0)) + 1
        raise InputFileError(path, f"x values must increase; x={x[bad]:g} follows x={x[bad - 1]:g} "
                             f"(point {bad + 1})", line=int(linenos[bad]) if linenos is not None else None)
    x, y = x[order], y[order]
    sigma = sigma[order] if sigma is not None else None
    if x_kind == "2theta" and (x[0] <= 0 or x[-1] >= 180):
        bad = 0 if x[0] <= 0 else n - 1
        raise InputFileError(path, f"2θ = {x[bad]:g}° is outside (0, 180)",
                             line=int(np.asarray(linenos)[order][bad]) if linenos is not None else None)
    if x_kind == "q" and x[0] < 0:
        raise InputFileError(path, f"Q = {x[0]:g} Å⁻¹ is negative")

    wavelength2 = None
    ka2_ratio = None
    if wavelength is not None:
        if file_wavelength is not None:
            meta["file_wavelength"] = file_wavelength.wavelength
        wavelength2 = getattr(wavelength, "wavelength2", None)
        ka2_ratio = getattr(wavelength, "ka2_ratio", None)
        wavelength = float(wavelength)
        meta["wavelength_from"] = "user"
    elif file_wavelength is not None:
        wavelength = file_wavelength.wavelength
        wavelength2 = file_wavelength.wavelength2
        ka2_ratio = file_wavelength.ka2_ratio
        meta["wavelength_from"] = file_wavelength.source
    elif x_kind == "2theta":
        raise InputFileError(path, "2θ data but no wavelength in the file; give --wavelength "
                             "(e.g. --wavelength CuKa or 1.5406; Python: wavelength=)")
    if wavelength2 is not None:
        if ka2_ratio is None:
            ka2_ratio = 0.5
            meta["ka2_ratio_from"] = "default 0.5 (not in the file)"
        fields.setdefault("ka2_ratio", float(ka2_ratio))
    if radiation is None:
        radiation = file_radiation or "xray"
    comp = composition if composition is not None else {}
    if isinstance(comp, str):
        comp = parse_composition(comp)
    try:
        return Observation(kind="xrd", x=x, y=y, x_kind=x_kind, composition=comp, sigma=sigma,
                           wavelength=wavelength, wavelength2=wavelength2, radiation=radiation,
                           source=str(path), meta=meta, **fields)
    except ValueError as exc:
        raise InputFileError(path, str(exc)) from None


def tube_wavelength(text: str) -> FileWavelength | None:
    """A named anode in free text (``"Cu K\\a"``, ``"CuKa1"``, ``"Mo"``) -> its Kα lines, else None."""
    from ...types import TUBE_WAVELENGTHS

    s = re.sub(r"[\s_\\-]", "", text).lower().replace("alpha", "a")
    for name, (l1, l2, ratio) in TUBE_WAVELENGTHS.items():
        el = name[:-2].lower()
        m = re.fullmatch(rf"{el}(?:ka(1|12)?)?", s)
        if m:
            mono = m.group(1) == "1"
            return FileWavelength(l1, None if mono else l2, None if mono else ratio,
                                  source=f"anode {name[:-2]} (International Tables, Kα{'1' if mono else '1/Kα2'})")
    return None
