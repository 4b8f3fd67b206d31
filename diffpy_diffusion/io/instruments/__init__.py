"""Readers for diffractometer and refinement-program files, with their metadata.

=====================  ===========================  =====================================================
reader                 extensions                   what it reads
=====================  ===========================  =====================================================
:func:`read_pdcif`     ``.cif .pdcif``              IUCr powder CIF: ``_pd_meas_*``/``_pd_proc_*`` loops
:func:`read_xrdml`     ``.xrdml``                   PANalytical XRDML 1.x/2.x 2θ scans
:func:`read_gsas`      ``.gsa .gsas .gss .fxye``    GSAS CONS banks: STD, ESD, FXY, FXYE
                       ``.fxy .esd .std``
:func:`read_rigaku_ras`  ``.ras``                   Rigaku RAS scans
:func:`read_brml`      ``.brml``                    Bruker DIFFRAC.SUITE zip of XML
=====================  ===========================  =====================================================

Each is ``reader(path, **options) -> Observation`` with the options of
:func:`diffpy_diffusion.io.read_observation`; each records where its wavelength came from
in ``meta["wavelength_from"]`` and refuses 2θ data without one.  They are registered by the
built-in plugin :mod:`diffpy_diffusion.builtins.readers` (see :data:`INSTRUMENT_READERS`).
"""

from .bruker import read_brml
from .gsas import read_gsas
from .pdcif import may_be_pdcif, read_pdcif
from .rigaku import read_rigaku_ras
from .xrdml import read_xrdml

#: ``(reader name, function, extensions, accepts)`` for registration through ``register_readers``;
#: ``accepts`` (or None) tells a folder scan whether a file with that extension is a pattern.
INSTRUMENT_READERS = (
    ("pdcif", read_pdcif, (".cif", ".pdcif"), may_be_pdcif),
    ("xrdml", read_xrdml, (".xrdml",), None),
    ("gsas", read_gsas, (".gsa", ".gsas", ".gss", ".fxye", ".fxy", ".esd", ".std"), None),
    ("rigaku-ras", read_rigaku_ras, (".ras",), None),
    ("bruker-brml", read_brml, (".brml",), None),
)

__all__ = ["may_be_pdcif", "read_pdcif", "read_xrdml", "read_gsas", "read_rigaku_ras", "read_brml",
           "INSTRUMENT_READERS"]
