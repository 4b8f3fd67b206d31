"""Discovery: which pattern files a batch covers and what each one's composition is."""

from __future__ import annotations

import csv
import io as _io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DiffpyDiffusionError, InputFileError, PluginError

__all__ = ["pattern_extensions", "is_pattern_file", "read_composition_table", "find_patterns", "observation_for"]


def pattern_extensions() -> tuple[str, ...]:
    """The file extensions a folder is searched for: every one a registered reader claims (sorted).

    Built-in and third-party readers alike (:func:`diffpy_diffusion.plugins.get_readers`),
    so the files of a plugin's format are found without a change here.
    """
    from ..plugins import get_readers

    return tuple(sorted({str(e).lower() for reg in get_readers().values()
                         for e in reg.options.get("extensions", ())}))


def is_pattern_file(path: str | os.PathLike) -> bool:
    """Whether a folder scan takes ``path``: a reader claims its extension and, if that reader
    registered an ``accepts`` test, the test says yes.

    The built-in ``observation-json`` reader's test passes over JSON documents that are not
    saved Observations, such as the ``results.json``/``*.error.json``/``batch.json`` of our
    own runs (:func:`diffpy_diffusion.io.patterns.may_be_observation_json`).

    Raises
    ------
    PluginError
        The reader's ``accepts`` is not callable or raised.
    """
    from ..plugins import reader_for

    p = Path(path)
    reg = reader_for(p.suffix) if p.suffix else None
    if reg is None:
        return False
    accepts = reg.options.get("accepts")
    if accepts is None:
        return True
    if not callable(accepts):
        raise PluginError(f"plugin {reg.plugin!r}: reader {reg.name!r} registered accepts={accepts!r}, "
                          "expected a callable path -> bool")
    try:
        return bool(accepts(p))
    except Exception as exc:  # a plugin bug: name it, do not guess whether the file is data
        raise PluginError(f"plugin {reg.plugin!r}: reader {reg.name!r} accepts() failed on {p}: "
                          f"{type(exc).__name__}: {exc}") from exc


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
    """Pattern files in a folder (sorted by name, not recursive; :func:`is_pattern_file`) or the
    given list of files (taken as they are)."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and is_pattern_file(f))
            if not files:
                raise InputFileError(p, f"no pattern files ({' '.join(pattern_extensions())}) in this folder")
            return files
        return [p]
    return [Path(s) for s in source]


def observation_for(path: Path, row: dict[str, str] | None, defaults: dict[str, Any]):
    """Read one pattern with the defaults, overridden by its row of the composition table."""
    from ..io import check_pdf_grid, parse_size_nm, parse_wavelength, read_observation

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
    obs = read_observation(path, **{k: v for k, v in kw.items() if v is not None})
    check_pdf_grid(obs)  # a G(r) the proposers cannot use is that pattern's one-line error
    return obs
