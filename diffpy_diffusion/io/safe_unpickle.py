"""A restricted unpickler for pickles from untrusted files (PDFgui ``.ddp`` project members).

``pickle.loads`` on a file someone sent you runs whatever code the file names,
so every pickle a user supplies is read through :class:`SafeUnpickler`:

* only an allow-list of globals resolves: plain containers (``set``,
  ``frozenset``, ``complex``, ``collections.OrderedDict``), numpy's array and
  scalar reconstructors, and the handful of PDFgui/diffpy classes a project
  stores (``Parameter``, ``Constraint``, ``SpaceGroup``, ``SymOp``, ...);
* those PDFgui classes are *not* imported: each becomes a :class:`PickledRecord`
  holding the class name and the pickled state, so no foreign ``__setstate__``
  or ``__init__`` runs either (and diffpy.pdfgui need not be installed);
* anything else -- ``os.system``, ``builtins.eval``, ``subprocess.Popen``,
  ``torch._utils`` ... -- raises :class:`UnsafePickleError` naming the global.

The archive itself is read by :func:`diffpy_diffusion.io.ddp.read_ddp`.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from ..errors import InputFileError

__all__ = ["UnsafePickleError", "PickledRecord", "RECORD_CLASSES", "SafeUnpickler", "safe_loads"]


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
    except ImportError:  # numpy 1.x, still supported: numpy._core was numpy.core (a version shim)
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
