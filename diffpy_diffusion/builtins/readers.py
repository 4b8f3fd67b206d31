"""Built-in plugin ``readers``: the pattern file formats diffpy-diffusion reads itself.

- ``xy`` -- whitespace/CSV columns of diffraction data (``.xy .xye .dat .csv .txt .chi .iq .xyd``:
  2θ in degrees or Q in Å⁻¹ against intensity, optional uncertainties);
- ``gr`` -- PDF columns (``.gr .fgr .rdf``: r in Å against G(r) in Å⁻²);
- ``observation-json`` -- an :class:`~diffpy_diffusion.types.Observation` saved as JSON;
  its ``accepts`` test keeps the JSON results of our own runs out of folder scans;
- ``pdcif``, ``xrdml``, ``gsas``, ``rigaku-ras``, ``bruker-brml`` -- instrument and refinement
  files with their wavelength (:mod:`diffpy_diffusion.io.instruments`: ``.cif .pdcif``,
  ``.xrdml``, ``.gsa .gsas .gss .fxye .fxy .esd .std``, ``.ras``, ``.brml``; the ``pdcif``
  ``accepts`` test keeps structure CIFs out of folder scans).

The first three are :mod:`diffpy_diffusion.io.patterns` functions; a plugin that registers a
reader for one of these extensions takes precedence
(:func:`diffpy_diffusion.plugins.reader_for`).
"""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_readers(register):
    """Register the column readers (diffraction, PDF) and the saved-observation reader."""
    from ..io.patterns import (
        PDF_EXTENSIONS,
        XRD_EXTENSIONS,
        may_be_observation_json,
        read_observation_json,
        read_pattern_file,
    )

    register("xy", read_pattern_file, extensions=XRD_EXTENSIONS, kind="xrd")
    register("gr", read_pattern_file, extensions=PDF_EXTENSIONS, kind="pdf")
    register("observation-json", read_observation_json, extensions=(".json",), accepts=may_be_observation_json)

    from ..io.instruments import INSTRUMENT_READERS

    for name, reader, extensions, accepts in INSTRUMENT_READERS:
        register(name, reader, extensions=extensions, kind="xrd", **({"accepts": accepts} if accepts else {}))
