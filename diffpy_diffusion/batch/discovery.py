"""Discovery: which pattern files a batch covers and what each one's composition is."""

from __future__ import annotations

import csv
import io as _io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DiffpyDiffusionError, InputFileError

__all__ = ["PATTERN_EXTENSIONS", "read_composition_table", "find_patterns", "observation_for"]

#: Extensions of the pattern files a folder is searched for (the built-in readers' column
#: formats; ``.json`` is left out because result folders hold JSON files too).
PATTERN_EXTENSIONS = (".xy", ".xye", ".dat", ".txt", ".csv", ".chi", ".gr", ".fgr", ".iq")


def read_composition_table(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Read ``names.csv``: one row per pattern, columns ``file`` and ``composition`` (required)
    and optionally ``wavelength``, ``size``, ``spacegroup``, ``x``, ``radiation``.

    The ``file`` column may hold the file name (``cdse_01.xy``) or its stem
    (``cdse_01``); ``pattern`` and ``name`` are accepted as its header too.

    Returns
    -------
    dict
        Key (file name and stem, both) -> row dict.
    """
    from ..types import parse_composition

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:  # reader contract: a clean error naming the file
        raise InputFileError(path, f"not a UTF-8 text table ({exc.reason} at byte {exc.start}); "
                                   "save it as UTF-8 CSV", 1) from None
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror or exc}") from None
    sample = text[:2048]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(_io.StringIO(text), dialect=dialect)
    if reader.fieldnames is None:
        raise InputFileError(path, "empty composition table; expected a header 'file,composition'", 1)
    fields = {f.strip().lower(): f for f in reader.fieldnames if f}
    key_col = next((fields[c] for c in ("file", "pattern", "name", "filename") if c in fields), None)
    comp_col = next((fields[c] for c in ("composition", "formula") if c in fields), None)
    if key_col is None or comp_col is None:
        raise InputFileError(path, f"header {reader.fieldnames} needs columns 'file' and 'composition'", 1)
    out: dict[str, dict[str, str]] = {}
    for lineno, row in enumerate(reader, start=2):
        name = (row.get(key_col) or "").strip()
        comp = (row.get(comp_col) or "").strip()
        if not name and not comp:
            continue
        if not name or not comp:
            raise InputFileError(path, "each row needs a file name and a composition", lineno)
        try:
            parse_composition(comp)
        except DiffpyDiffusionError as exc:
            raise InputFileError(path, str(exc), lineno) from None
        clean = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        clean["composition"] = comp
        clean["_line"] = str(lineno)
        out[name] = clean
        out.setdefault(Path(name).stem, clean)
    return out


def find_patterns(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Pattern files in a folder (sorted by name, not recursive) or the given list of files."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in PATTERN_EXTENSIONS)
            if not files:
                raise InputFileError(p, f"no pattern files ({' '.join(PATTERN_EXTENSIONS)}) in this folder")
            return files
        return [p]
    return [Path(s) for s in source]


def observation_for(path: Path, row: dict[str, str] | None, defaults: dict[str, Any]):
    """Read one pattern with the defaults, overridden by its row of the composition table."""
    from ..io import parse_size_nm, parse_wavelength, read_observation

    kw = dict(defaults)
    if row:
        kw["composition"] = row["composition"]
        if row.get("wavelength"):
            kw["wavelength"] = parse_wavelength(row["wavelength"])
        if row.get("size"):
            kw["size_nm"] = parse_size_nm(row["size"])
        if row.get("spacegroup"):
            sg = row["spacegroup"]
            kw["spacegroup"] = int(sg) if sg.isdigit() else sg
        if row.get("x"):
            kw["x_kind"] = row["x"].lower()
        if row.get("radiation"):
            kw["radiation"] = row["radiation"].lower()
    if not kw.get("composition"):
        raise InputFileError(path, "no composition for this pattern: add it to --composition-from or give "
                                   "--composition")
    return read_observation(path, **{k: v for k, v in kw.items() if v is not None})
