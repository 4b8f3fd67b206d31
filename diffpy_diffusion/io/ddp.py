"""Safe reading of PDFgui project files (``.ddp``).

A PDFgui project is a zip archive whose members are ``.stru`` text, data text
and pickles (fit parameters, constraints, results, calculated curves).
:func:`read_ddp` opens it with care: member names with ``..``, absolute paths
or drive letters are refused (path traversal), the member count and
uncompressed sizes are capped (zip bombs), and every pickle goes through
:func:`~diffpy_diffusion.io.safe_unpickle.safe_loads` (allow-listed globals,
nothing executed).  It returns plain data (:class:`DdpProject`); use
:meth:`DdpProject.structures` for the phases as pymatgen structures.

Anything that is not a readable project raises
:class:`~diffpy_diffusion.errors.InputFileError` (or its subclass
:class:`~diffpy_diffusion.io.safe_unpickle.UnsafePickleError`), naming the
file and the archive member.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InputFileError
from .safe_unpickle import PickledRecord, safe_loads

__all__ = ["read_ddp", "check_member_name", "DdpProject", "DdpFit", "DdpPhase", "DdpDataset",
           "MAX_MEMBERS", "MAX_MEMBER_BYTES", "MAX_TOTAL_BYTES"]

#: Caps for .ddp archives (a PDFgui project is typically < 1 MB).
MAX_MEMBERS = 10_000
MAX_MEMBER_BYTES = 64 * 2**20
MAX_TOTAL_BYTES = 256 * 2**20


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
        from .structures import diffpy_to_pymatgen

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
