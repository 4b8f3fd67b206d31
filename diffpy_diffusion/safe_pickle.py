"""Safe reading of untrusted files: pickles (PDFgui ``.ddp`` projects) and CIF symmetry operations.

CIF: diffpy.structure's CIF parser turns the translation part of every
``_symmetry_equiv_pos_as_xyz`` string into a number with ``eval``, so a CIF
whose operation reads ``x,y,z+__import__("os").mkdir("...")`` runs code when
loaded.  :func:`install_safe_cif_symops` replaces that function (in
``diffpy.structure.parsers.p_cif``, for the whole process) with
:func:`safe_getsymop`, which accepts only numbers and fractions and raises
``ValueError`` (a CIF syntax error for the parser) for anything else.
``io.read_structure`` installs it before it hands a file to diffpy.structure.

Pickles:

A PDFgui project is a zip archive whose members are ``.stru`` text, data text
and *pickles* (fit parameters, constraints, results, calculated curves).
``pickle.loads`` on a file someone sent you runs whatever code the file names,
so every pickle a user supplies is read here, through :class:`SafeUnpickler`:

* only an allow-list of globals resolves: plain containers (``set``,
  ``frozenset``, ``complex``, ``collections.OrderedDict``), numpy's array and
  scalar reconstructors, and the handful of PDFgui/diffpy classes a project
  stores (``Parameter``, ``Constraint``, ``SpaceGroup``, ``SymOp``, ...);
* those PDFgui classes are *not* imported: each becomes a :class:`PickledRecord`
  holding the class name and the pickled state, so no foreign ``__setstate__``
  or ``__init__`` runs either (and diffpy.pdfgui need not be installed);
* anything else -- ``os.system``, ``builtins.eval``, ``subprocess.Popen``,
  ``torch._utils`` ... -- raises :class:`UnsafePickleError` naming the global.

:func:`read_ddp` opens a ``.ddp`` archive with the same care: member names
with ``..``, absolute paths or drive letters are refused (path traversal),
and the member count and uncompressed sizes are capped (zip bombs).  It
returns plain data (:class:`DdpProject`); use :meth:`DdpProject.structures` for
the phases as pymatgen structures.

Anything that is not a readable project raises
:class:`~diffpy_diffusion.errors.InputFileError` (or its subclass
:class:`UnsafePickleError`), naming the file and the archive member.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import InputFileError

#: Caps for .ddp archives (a PDFgui project is typically < 1 MB).
MAX_MEMBERS = 10_000
MAX_MEMBER_BYTES = 64 * 2**20
MAX_TOTAL_BYTES = 256 * 2**20


class UnsafePickleError(InputFileError):
    """A pickle names a global that is not on the allow-list (nothing was executed)."""


class PickledRecord:
    """Stand-in for an allow-listed foreign class: its name and pickled state, inert.

    Attributes
    ----------
    pickled_class : str
        ``module.QualName`` of the class in the file.
    state : object
        What the pickle passed to ``__setstate__`` (usually the instance ``__dict__``).
    args : tuple
        Arguments the pickle passed to ``__new__``.
    """

    pickled_class = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args, **kwargs):  # copyreg._reconstructor calls base.__init__ only for non-object bases
        pass

    def __setstate__(self, state):
        self.state = state

    def __getattr__(self, name):
        # attributes of the original object, read from its pickled __dict__
        st = self.__dict__.get("state")
        if isinstance(st, tuple) and len(st) == 2 and isinstance(st[1], dict):  # (dict, slots)
            st = {**(st[0] or {}), **st[1]}
        if isinstance(st, dict) and name in st:
            return st[name]
        raise AttributeError(f"{self.pickled_class} record has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"<PickledRecord {self.pickled_class} {self.__dict__.get('state')!r}>"


# Globals that resolve to the real object: containers and numpy reconstruction only.
_REAL_GLOBALS: dict[tuple[str, str], Any] = {}


def _real_globals() -> dict[tuple[str, str], Any]:
    if _REAL_GLOBALS:
        return _REAL_GLOBALS
    import collections
    import copyreg

    import numpy as np

    g = {
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "complex"): complex,
        ("builtins", "object"): object, ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset,
        ("__builtin__", "complex"): complex, ("__builtin__", "object"): object,
        ("collections", "OrderedDict"): collections.OrderedDict,
        # protocol-2 pickles of bytes (Python 2 -> 3 compatibility): _codecs.encode(text, "latin1")
        ("_codecs", "encode"): _latin1_encode,
        # copyreg._reconstructor(cls, base, state): cls and base come through find_class too
        ("copyreg", "_reconstructor"): copyreg._reconstructor, ("copy_reg", "_reconstructor"): copyreg._reconstructor,
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        g[(mod, "_reconstruct")] = _np_reconstruct
        g[(mod, "scalar")] = _np_scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        g[(mod, "_frombuffer")] = _np_frombuffer
    _REAL_GLOBALS.update(g)
    return _REAL_GLOBALS


def _latin1_encode(text, encoding="latin1", errors="strict"):
    if encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return str(text).encode("latin1", errors)


def _np_reconstruct(subtype, shape, dtype):
    import numpy as np

    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("only plain numpy arrays are allowed")
    return _np_attr("multiarray", "_reconstruct")(subtype, shape, dtype)


def _np_scalar(dtype, data=None):
    import numpy as np

    dt = np.dtype(dtype)
    if dt.hasobject:
        raise pickle.UnpicklingError("numpy object scalars are not allowed")
    scalar = _np_attr("multiarray", "scalar")
    return scalar(dt, data) if data is not None else scalar(dt)


def _np_frombuffer(buf, dtype, shape, order):
    import numpy as np

    dt = np.dtype(dtype)
    if dt.hasobject:
        raise pickle.UnpicklingError("numpy object buffers are not allowed")
    return _np_attr("numeric", "_frombuffer")(buf, dt, shape, order)


def _np_attr(module: str, name: str):
    import importlib

    try:  # numpy >= 2
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except ImportError:  # numpy 1.x
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


#: Foreign classes a PDFgui project pickles; they load as inert :class:`PickledRecord` objects.
#: Keys are the last two components of the module path plus the class name, so that
#: ``diffpy.pdfgui.control.parameter`` and the Python 2 era ``pdfgui.control.parameter`` both match.
RECORD_CLASSES = {
    ("control.parameter", "Parameter"),
    ("control.constraint", "Constraint"),
    ("control.pdfstructure", "PDFStructure"),
    ("structure.spacegroupmod", "SpaceGroup"),
    ("structure.spacegroupmod", "SymOp"),
    ("structure.lattice", "Lattice"),
    ("structure.atom", "Atom"),
    ("structure.structure", "Structure"),
    ("Structure.SpaceGroups", "SpaceGroup"),
    ("Structure.SpaceGroups", "SymOp"),
}
_RECORD_TYPES: dict[str, type] = {}


def _record_type(module: str, name: str) -> type:
    key = f"{module}.{name}"
    t = _RECORD_TYPES.get(key)
    if t is None:
        t = type(name, (PickledRecord,), {"pickled_class": key, "__module__": __name__})
        _RECORD_TYPES[key] = t
    return t


class SafeUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves only allow-listed globals (see module docstring)."""

    def __init__(self, file, *, source: str = "<bytes>", member: str | None = None):
        super().__init__(file, encoding="latin1")
        self._source = source
        self._member = member

    def find_class(self, module: str, name: str):  # noqa: D102 - documented in the class
        g = _real_globals()
        if (module, name) in g:
            return g[(module, name)]
        tail = ".".join(module.split(".")[-2:])
        if (tail, name) in RECORD_CLASSES:
            return _record_type(module, name)
        where = f" (member {self._member})" if self._member else ""
        raise UnsafePickleError(self._source, f"refused to load: the pickle{where} names {module}.{name}, "
                                "which is not on the allow-list of a PDFgui project; nothing was executed")

    def persistent_load(self, pid):  # noqa: D102
        raise UnsafePickleError(self._source, "refused to load: persistent ids are not allowed in a pickle")


def safe_loads(data: bytes, *, source: str = "<bytes>", member: str | None = None) -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler`.

    Raises
    ------
    UnsafePickleError
        The pickle names a global outside the allow-list.
    InputFileError
        The bytes are not a valid pickle.
    """
    try:
        return SafeUnpickler(io.BytesIO(data), source=source, member=member).load()
    except InputFileError:
        raise
    except RecursionError:
        raise InputFileError(source, _where(member) + "pickle nested too deeply") from None
    except MemoryError:
        raise InputFileError(source, _where(member) + "pickle too large to load") from None
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, EOFError, struct/Value/Type/Index errors...
        raise InputFileError(source, _where(member) + f"not a valid pickle ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]})") from None


def _where(member: str | None) -> str:
    return f"member {member}: " if member else ""


# --------------------------------------------------------------------------- .ddp projects


def check_member_name(name: str) -> bool:
    """True when an archive member name is a safe relative path (no ``..``, not absolute, no drive)."""
    if not name or "\x00" in name or "\\" in name:
        return False
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return False
    parts = PurePosixPath(name).parts
    return ".." not in parts


@dataclass
class DdpPhase:
    """One structure of a fit: ``.stru`` texts and constraints (formula strings by variable)."""

    name: str
    initial: str | None = None
    refined: str | None = None
    constraints: dict[str, str] = field(default_factory=dict)


@dataclass
class DdpDataset:
    """One dataset of a fit: the observed-data text and constraints."""

    name: str
    obs: str | None = None
    constraints: dict[str, str] = field(default_factory=dict)


@dataclass
class DdpFit:
    """One fitting of a PDFgui project."""

    name: str
    parameters: dict[int, dict[str, Any]] = field(default_factory=dict)
    rw: float | None = None
    phases: list[DdpPhase] = field(default_factory=list)
    datasets: list[DdpDataset] = field(default_factory=list)


@dataclass
class DdpProject:
    """What :func:`read_ddp` returns: plain data, nothing executable."""

    path: str
    name: str
    fits: list[DdpFit] = field(default_factory=list)
    journal: str = ""

    def structures(self, refined: bool = True) -> list:
        """Every phase as a pymatgen Structure (the refined one when present and ``refined``)."""
        from .io.structures import diffpy_to_pymatgen

        out = []
        for fit in self.fits:
            for ph in fit.phases:
                text = (ph.refined if refined and ph.refined else None) or ph.initial
                if not text:
                    continue
                out.append(diffpy_to_pymatgen(_parse_stru(text, self.path, f"{fit.name}/{ph.name}")))
        return out


def _parse_stru(text: str, path: str, member: str):
    import contextlib

    from diffpy.structure.parsers import getParser

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return getParser("pdffit").parse(text)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file
        raise InputFileError(path, f"member {member}: not a PDFfit structure ({' '.join(str(exc).split())[:200]})") \
            from None


def _constraints(obj) -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            formula = getattr(v, "formula", None) if isinstance(v, PickledRecord) else v
            if isinstance(formula, str):
                out[str(k)] = formula
    return out


def _parameters(obj) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, PickledRecord) and isinstance(v.state, dict):
                st = v.state
                out[k if isinstance(k, int) else str(k)] = {
                    "name": st.get("name"),
                    "initial": st.get("_Parameter__initial", st.get("initial")),  # name-mangled private
                    "refined": st.get("refined"), "fixed": st.get("fixed")}
    return out


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def read_ddp(path) -> DdpProject:
    """Read a PDFgui project (``.ddp``) safely: allow-listed pickles, no path traversal, bounded sizes.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    DdpProject

    Raises
    ------
    InputFileError
        Not a zip archive, a member name that escapes the project folder,
        too many or too large members, a corrupt pickle.
    UnsafePickleError
        A pickle names a global that is not allowed (nothing is executed).
    """
    p = Path(path)
    src = str(p)
    if not p.is_file():
        raise InputFileError(p, "no such file" if not p.exists() else "not a file")
    try:
        zf = zipfile.ZipFile(p)
    except Exception as exc:  # noqa: BLE001 - BadZipFile, NotImplementedError (zip version), struct.error...
        raise InputFileError(p, f"not a PDFgui project (.ddp is a zip archive): {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]}") from None
    with zf:
        try:
            infos = zf.infolist()
        except Exception as exc:  # noqa: BLE001
            raise InputFileError(p, f"corrupt archive: {exc}") from None
        if len(infos) > MAX_MEMBERS:
            raise InputFileError(p, f"{len(infos)} archive members, more than the {MAX_MEMBERS} allowed")
        total = 0
        for info in infos:
            if not check_member_name(info.filename):
                raise InputFileError(p, f"refused archive member {info.filename!r}: its path leaves the project "
                                     "folder (path traversal)")
            if info.file_size > MAX_MEMBER_BYTES:
                raise InputFileError(p, f"archive member {info.filename} is {info.file_size} bytes uncompressed, "
                                     f"more than the {MAX_MEMBER_BYTES} allowed")
            total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise InputFileError(p, f"archive holds {total} bytes uncompressed, more than {MAX_TOTAL_BYTES} allowed")
        names = {i.filename for i in infos}

        def read(member: str) -> bytes:
            try:
                with zf.open(member) as fh:
                    data = fh.read(MAX_MEMBER_BYTES + 1)  # never trust the size in the header
            except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib.error, CRC, NotImplementedError...
                raise InputFileError(p, f"member {member}: cannot read ({type(exc).__name__}: "
                                     f"{' '.join(str(exc).split())[:200]})") from None
            if len(data) > MAX_MEMBER_BYTES:
                raise InputFileError(p, f"member {member}: larger than {MAX_MEMBER_BYTES} bytes")
            return data

        roots = sorted({n.split("/", 1)[0] for n in names if "/" in n})
        if len(roots) != 1:
            raise InputFileError(p, "not a PDFgui project: expected one top folder in the archive, "
                                 f"found {len(roots)}")
        root = roots[0]
        proj = DdpProject(path=src, name=root)
        if f"{root}/journal" in names:
            proj.journal = _text(read(f"{root}/journal"))
        if f"{root}/fits" in names:
            fitnames = [s for s in _text(read(f"{root}/fits")).splitlines() if s]
        else:
            fitnames = sorted({n.split("/")[1] for n in names if n.count("/") >= 2})
        from urllib.parse import quote_plus

        for fname in fitnames[:MAX_MEMBERS]:
            sub = f"{root}/{quote_plus(fname)}/"
            if not any(n.startswith(sub) for n in names):
                sub = f"{root}/{fname}/"
            fit = DdpFit(name=fname)
            if sub + "parameters" in names:
                fit.parameters = _parameters(safe_loads(read(sub + "parameters"), source=src,
                                                        member=sub + "parameters"))
            if sub + "result" in names:
                res = safe_loads(read(sub + "result"), source=src, member=sub + "result")
                if isinstance(res, tuple) and res and isinstance(res[0], (int, float)):
                    fit.rw = float(res[0])
            phases: dict[str, DdpPhase] = {}
            datasets: dict[str, DdpDataset] = {}
            for n in sorted(names):
                if not n.startswith(sub):
                    continue
                parts = n[len(sub):].split("/")
                if len(parts) != 3:
                    continue
                kind, item, leaf = parts
                if kind == "structure":
                    ph = phases.setdefault(item, DdpPhase(name=item))
                    if leaf in ("initial", "refined"):
                        setattr(ph, leaf, _text(read(n)))
                    elif leaf == "constraints":
                        ph.constraints = _constraints(safe_loads(read(n), source=src, member=n))
                    elif leaf == "custom_spacegroup":
                        safe_loads(read(n), source=src, member=n)  # validated, not needed
                elif kind == "dataset":
                    ds = datasets.setdefault(item, DdpDataset(name=item))
                    if leaf == "obs":
                        ds.obs = _text(read(n))
                    elif leaf == "constraints":
                        ds.constraints = _constraints(safe_loads(read(n), source=src, member=n))
                    elif leaf == "calc":
                        safe_loads(read(n), source=src, member=n)
            fit.phases = list(phases.values())
            fit.datasets = list(datasets.values())
            proj.fits.append(fit)
    return proj


# --------------------------------------------------------------------------- CIF symmetry operations

_TERM = re.compile(r"[+-]?[^+-]+")
_NUMBER = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:/(\d+(?:\.\d*)?|\.\d+))?$")


def _translation(part: str, op: str) -> float:
    """``''``, ``'+1/2'``, ``'-0.25'``, ``'1/3+1/3'`` -> float; anything else is an error (never eval)."""
    if part in ("", "+", "-"):
        return 0.0
    terms = _TERM.findall(part)
    if "".join(terms) != part:
        raise ValueError(f"invalid symmetry operation {op!r}")
    total = 0.0
    for term in terms:
        sign = -1.0 if term[0] == "-" else 1.0
        body = term.lstrip("+-")
        m = _NUMBER.match(body)
        if not m:
            raise ValueError(f"invalid symmetry operation {op!r}: {body!r} is not a number or fraction")
        if m.group(2) is not None:
            num, den = body.split("/")
            if float(den) == 0:
                raise ValueError(f"invalid symmetry operation {op!r}: division by zero")
            total += sign * float(num) / float(den)
        else:
            total += sign * float(body)
    return total


def safe_getsymop(s: str):
    """Drop-in for ``diffpy.structure.parsers.p_cif.getSymOp`` without ``eval``.

    Parameters
    ----------
    s : str
        Equivalent position such as ``'x,1/2-y,1/2+z'``.

    Returns
    -------
    diffpy.structure.spacegroups.SymOp

    Raises
    ------
    ValueError
        Not three components, an unknown token, or a translation that is not
        a number or fraction.
    """
    import numpy as np
    from diffpy.structure.parsers import p_cif
    from diffpy.structure.spacegroups import SymOp

    text = str(s).replace(" ", "")
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError(f"invalid symmetry operation {s!r}: expected three comma-separated components")
    rot = np.zeros((3, 3), dtype=float)
    t = np.zeros(3, dtype=float)
    for i, comp in enumerate(parts):
        pieces = re.split("(?i)([+-]?[xyz])", comp)
        for rpart in pieces[1::2]:
            rot[i, :] += p_cif.symvec[rpart.lower()]
        for tpart in pieces[::2]:
            t[i] += _translation(tpart, s)
    if not np.all(np.isfinite(t)):
        raise ValueError(f"invalid symmetry operation {s!r}: translation is not finite")
    t -= np.floor(t)
    return SymOp(rot, t)


def install_safe_cif_symops() -> None:
    """Make diffpy.structure's CIF parser use :func:`safe_getsymop` (idempotent, process-wide)."""
    try:
        from diffpy.structure.parsers import p_cif
    except ImportError:  # nothing to protect
        return
    if getattr(p_cif, "getSymOp", None) is not safe_getsymop:
        p_cif.getSymOp = safe_getsymop
