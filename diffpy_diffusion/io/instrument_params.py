"""Instrument parameter files: the diffractometer's profile, refined once on a standard, then held fixed.

A user refines a line-profile standard (Si, LaB6, ...) once with
``diffpy-diffuse refine standard.xy LaB6.cif --save-instrument lab.instr`` and then passes
``--instrument lab.instr`` to ``refine`` and ``propose``: the peak widths, asymmetry, zero shift,
wavelengths and polarisation come from the file and are not refined; only what belongs to the
sample (cell, coordinates, size, strain, displacement, preferred orientation) is.

Format: UTF-8 text, one ``key = value`` per line; ``#`` starts a comment; blank lines are ignored;
every key at most once.  Numbers only, except ``wavelength``, which also takes a tube name
(``CuKa``: Kα1, Kα2 and their ratio; ``CuKa1``: Kα1 alone), and ``radiation``.  Keys
(:data:`KEYS`; only ``wavelength`` is required, the others default to 0 or "none")::

    # diffpy-diffuse instrument parameters
    wavelength = 1.540596          # Å, Kα1 (or the monochromatic wavelength), or a tube: CuKa
    wavelength2 = 1.544493         # Å, Kα2 (omit for monochromatic radiation)
    ka2_ratio = 0.5                # Kα2/Kα1 intensity ratio
    U = 0.0041                     # deg², Gaussian FWHM² = U tan²θ + V tanθ + W (Caglioti)
    V = -0.0022                    # deg²
    W = 0.0011                     # deg²
    X = 0.0150                     # deg 2θ, Lorentzian FWHM = X / cosθ + Y tanθ (Thompson-Cox-Hastings)
    Y = 0.0210                     # deg 2θ
    axial_deg = 0.040              # deg 2θ, axial-divergence asymmetry (simple axial model)
    zero_deg = -0.012              # deg 2θ, zero shift: peaks at 2θ + zero
    monochromator_2theta_deg = 26.6   # deg, polarisation of a monochromator at this 2θ (omit: none)
    radiation = xray

The profile functions these parameters feed are documented in
:func:`diffpy_diffusion.physics.xrd.xrd_profile`.  Errors name the file and the line
(:class:`~diffpy_diffusion.errors.InputFileError`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import InputFileError
from .text import read_checked_bytes
from .units import parse_wavelength
from .writers import atomic_write_text

__all__ = ["InstrumentParameters", "read_instrument", "write_instrument", "KEYS", "FORMAT_LINE"]

#: First comment line of the files :func:`write_instrument` writes (informative; not required to read).
FORMAT_LINE = "# diffpy-diffuse instrument parameters (key = value; '#' starts a comment)"

#: Every key of the format: unit and meaning (written as the comments of :func:`write_instrument`).
KEYS: dict[str, str] = {
    "wavelength": "Å, Kα1 (or the monochromatic wavelength)",
    "wavelength2": "Å, Kα2 (omit for monochromatic radiation)",
    "ka2_ratio": "Kα2/Kα1 intensity ratio",
    "U": "deg², Gaussian FWHM² = U tan²θ + V tanθ + W",
    "V": "deg²",
    "W": "deg²",
    "X": "deg 2θ, Lorentzian FWHM = X / cosθ + Y tanθ",
    "Y": "deg 2θ",
    "axial_deg": "deg 2θ, axial-divergence asymmetry",
    "zero_deg": "deg 2θ, zero shift (peaks at 2θ + zero)",
    "monochromator_2theta_deg": "deg, monochromator 2θ for the polarisation factor (omit: none)",
    "radiation": "xray or neutron",
}

#: Ranges a value must lie in (inclusive): physical limits, or far beyond any diffractometer
#: (a zero shift of 5° 2θ is a mis-set goniometer, not a calibration).
_RANGES: dict[str, tuple[float, float]] = {
    "wavelength": (0.01, 20.0), "wavelength2": (0.01, 20.0), "ka2_ratio": (0.0, 1.0),
    "U": (-10.0, 10.0), "V": (-10.0, 10.0), "W": (0.0, 10.0), "X": (0.0, 10.0), "Y": (0.0, 10.0),
    "axial_deg": (0.0, 10.0), "zero_deg": (-5.0, 5.0), "monochromator_2theta_deg": (0.0, 179.0),
}

_LINE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


@dataclass
class InstrumentParameters:
    """A diffractometer's profile parameters (see the module docstring for the units).

    Attributes
    ----------
    wavelength : float
        Kα1 or monochromatic wavelength, Å.
    wavelength2 : float or None
        Kα2 wavelength, Å (None: monochromatic).
    ka2_ratio : float
        Kα2/Kα1 intensity ratio.
    U, V, W : float
        Caglioti coefficients of the Gaussian FWHM, deg².
    X, Y : float
        Lorentzian FWHM X/cosθ + Y tanθ, degrees 2θ.
    axial_deg : float
        Axial-divergence asymmetry, degrees 2θ.
    zero_deg : float
        Zero shift, degrees 2θ.
    monochromator_2theta_deg : float or None
        Monochromator 2θ for the polarisation factor (None: no monochromator).
    radiation : {"xray", "neutron"}
    """

    wavelength: float
    wavelength2: float | None = None
    ka2_ratio: float = 0.5
    U: float = 0.0
    V: float = 0.0
    W: float = 0.0
    X: float = 0.0
    Y: float = 0.0
    axial_deg: float = 0.0
    zero_deg: float = 0.0
    monochromator_2theta_deg: float | None = None
    radiation: str = "xray"

    def profile_values(self) -> dict[str, float]:
        """The profile parameters by their refinement names (U, V, W, X, Y, axial_deg, zero_deg)."""
        return {k: float(getattr(self, k)) for k in ("U", "V", "W", "X", "Y", "axial_deg", "zero_deg")}

    @classmethod
    def from_refinement(cls, state: dict, shape_factor: float = 0.9) -> InstrumentParameters:
        """The instrument a refinement of a line-profile standard found.

        ``state`` is :attr:`diffpy_diffusion.refine.RefinementResult.instrument` (a PXRD fit with the
        Thompson–Cox–Hastings profile; ``instrument="standard"`` refines X itself).  After a fit that
        refined a crystallite size instead (``"rietveld"``), that size is the instrument's
        Lorentzian X/cosθ term: its Scherrer width ``K λ / (L cosθ)`` (radians, L in Å) is added to X
        in degrees, with ``shape_factor`` K the refinement's Scherrer constant (0.9).  Specimen
        displacement belongs to the specimen and is not kept.
        """
        lam = float(state["wavelength"])
        X = float(state.get("X", 0.0))
        size_nm = 0.0 if state.get("standard") else float(state.get("size_nm") or 0.0)
        if size_nm > 0:
            X += math.degrees(shape_factor * lam / (10.0 * size_nm))
        return cls(wavelength=lam, wavelength2=state.get("wavelength2"),
                   ka2_ratio=float(state.get("ka2_ratio", 0.5)), U=float(state["U"]), V=float(state["V"]),
                   W=float(state["W"]), X=X, Y=float(state.get("Y", 0.0)),
                   axial_deg=float(state.get("axial_deg", 0.0)), zero_deg=float(state.get("zero_deg", 0.0)),
                   monochromator_2theta_deg=state.get("monochromator_2theta_deg"),
                   radiation=state.get("radiation", "xray"))

    def to_text(self, comments: list[str] | None = None) -> str:
        """The file text: :data:`FORMAT_LINE`, ``comments`` (one ``#`` line each), then one key a line.

        Floats are written with ``repr`` (shortest round-trip form), so reading the text back gives
        the same values exactly.
        """
        lines = [FORMAT_LINE] + [f"# {c}" for c in comments or []]
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            val = v if isinstance(v, str) else repr(float(v))
            lines.append(f"{f.name + ' = ' + val:<40s} # {KEYS[f.name]}")
        return "\n".join(lines) + "\n"


def _number(path, lineno: int, key: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise InputFileError(path, f"{key}: expected a number, found {text[:40]!r}", line=lineno) from None
    if not math.isfinite(v):
        raise InputFileError(path, f"{key}: expected a finite number, found {text[:40]!r}", line=lineno)
    lo, hi = _RANGES[key]
    if not lo <= v <= hi:
        raise InputFileError(path, f"{key} = {v:g} is outside {lo:g}..{hi:g} ({KEYS[key]})", line=lineno)
    return v


def read_instrument(path: str | Path) -> InstrumentParameters:
    """Read an instrument parameter file (format: the module docstring).

    Raises
    ------
    InputFileError
        One line naming the file and the line: not text, a line that is not ``key = value``, an
        unknown or repeated key, a value that is not a number or out of range, no ``wavelength``.
    """
    path = Path(path)
    raw = read_checked_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputFileError(path, "not a UTF-8 text file (expected key = value lines)", line=line) from None
    if "\x00" in text:
        raise InputFileError(path, "binary file: expected key = value lines",
                             line=text[:text.index("\x00")].count("\n") + 1)
    seen: dict[str, int] = {}
    values: dict[str, object] = {}
    tube_line = None
    for lineno, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0]
        if not body.strip():
            continue
        m = _LINE_RE.match(body)
        if not m or not m.group(2):
            raise InputFileError(path, f"expected 'key = value', found {body.strip()[:60]!r}", line=lineno)
        key, val = m.group(1), m.group(2)
        if key not in KEYS:
            raise InputFileError(path, f"unknown key {key!r} (known: {', '.join(KEYS)})", line=lineno)
        if key in seen:
            raise InputFileError(path, f"{key} given twice (first on line {seen[key]})", line=lineno)
        seen[key] = lineno
        if key == "radiation":
            if val.lower() not in ("xray", "neutron"):
                raise InputFileError(path, f"radiation: expected xray or neutron, found {val[:40]!r}", line=lineno)
            values[key] = val.lower()
        elif key == "wavelength":
            try:
                wl = parse_wavelength(val)
            except ValueError as exc:
                raise InputFileError(path, str(exc), line=lineno) from None
            values["wavelength"] = float(wl)
            if wl.wavelength2 is not None:  # a tube name: its Kα2 unless the file gives its own
                tube_line = lineno
                values.setdefault("_tube_wavelength2", wl.wavelength2)
                values.setdefault("_tube_ka2_ratio", wl.ka2_ratio)
        else:
            values[key] = _number(path, lineno, key, val)
    if "wavelength" not in values:
        raise InputFileError(path, "no 'wavelength = ...' line (Å or a tube such as CuKa)", line=1)
    if tube_line is not None:
        values.setdefault("wavelength2", values["_tube_wavelength2"])
        values.setdefault("ka2_ratio", values["_tube_ka2_ratio"])
    values = {k: v for k, v in values.items() if not k.startswith("_")}
    if values.get("wavelength2") is not None and values["wavelength2"] <= values["wavelength"]:
        raise InputFileError(path, f"wavelength2 = {values['wavelength2']:g} Å must be longer than "
                                   f"wavelength = {values['wavelength']:g} Å (Kα2 > Kα1)",
                             line=seen.get("wavelength2", tube_line))
    return InstrumentParameters(**values)


def write_instrument(params: InstrumentParameters, path: str | Path, *, comments: list[str] | None = None,
                     force: bool = False) -> Path:
    """Write ``params`` to ``path`` atomically (refusing to overwrite unless ``force``).

    See :meth:`InstrumentParameters.to_text` for the text.
    """
    return atomic_write_text(path, params.to_text(comments), force=force)
