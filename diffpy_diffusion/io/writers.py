"""Writers: atomic, and never overwriting an existing file unless ``force=True``.

Each writer renders the whole content in memory, writes it to a temporary file
in the destination folder and moves it into place with :func:`os.replace`, so
a crash or Ctrl-C never leaves a half-written output.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import OutputExistsError


def _check_target(path: Path, force: bool) -> None:
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a directory, expected a file name")
    if path.exists() and not force:
        raise OutputExistsError(f"{path}: exists; pass --force (Python: force=True) to overwrite")


def atomic_write_bytes(path, data: bytes, *, force: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + os.replace); parent folders are created.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``force`` is false.
    """
    path = Path(path)
    _check_target(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if not force and path.exists():  # appeared while we were writing
            raise OutputExistsError(f"{path}: exists; pass --force (Python: force=True) to overwrite")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def atomic_write_text(path, text: str, *, force: bool = False) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically; see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"), force=force)


def write_cif(structure, path, *, force: bool = False, symprec: float | None = None) -> Path:
    """Write a pymatgen Structure as CIF (P1 unless ``symprec`` is given, then symmetrised)."""
    from pymatgen.io.cif import CifWriter

    text = str(CifWriter(structure, symprec=symprec))
    return atomic_write_text(path, text, force=force)


def write_stru(structure, path, *, force: bool = False) -> Path:
    """Write a pymatgen Structure (or diffpy Structure) in PDFfit/PDFgui ``.stru`` format."""
    from .structures import pymatgen_to_diffpy

    ds = structure if hasattr(structure, "writeStr") else pymatgen_to_diffpy(structure)
    return atomic_write_text(path, ds.writeStr("pdffit"), force=force)


def write_xy(x, y, path, *, header: str = "", force: bool = False, sigma=None,
             columns: tuple[str, ...] | None = None) -> Path:
    """Write columns ``x y [sigma]`` as text; ``header`` lines are prefixed with ``#``.

    ``columns`` (e.g. ``("2theta_deg", "intensity")``) become a last header
    line so that :func:`~diffpy_diffusion.io.read_observation` can tell the x
    axis when the file is read back.
    """
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    cols = [x, y]
    if sigma is not None:
        cols.append(np.asarray(sigma, dtype=float).ravel())
    if any(len(c) != len(x) for c in cols):
        raise ValueError("write_xy: x, y (and sigma) must have the same length")
    lines = [f"# {h}" if not h.startswith("#") else h for h in header.splitlines()] if header else []
    if columns:
        lines.append("# " + " ".join(columns))
    body = np.column_stack(cols)
    lines.extend(" ".join(f"{v:.8g}" for v in row) for row in body)
    return atomic_write_text(path, "\n".join(lines) + "\n", force=force)


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "as_dict"):
        return o.as_dict()
    if hasattr(o, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def _clean(o):
    # JSON has no NaN/inf: write null so every JSON parser reads our files
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def to_json_text(obj, indent: int | None = 2) -> str:
    """Serialise ``obj`` (numpy arrays, sets, pymatgen objects allowed; NaN -> null)."""
    roundtrip = json.loads(json.dumps(obj, default=_json_default))
    return json.dumps(_clean(roundtrip), indent=indent, allow_nan=False) + "\n"


def write_json(obj, path, *, force: bool = False) -> Path:
    """Write ``obj`` as JSON (see :func:`to_json_text`)."""
    return atomic_write_text(path, to_json_text(obj), force=force)
