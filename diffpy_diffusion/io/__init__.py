"""Readers and writers for patterns, structures and PDFgui projects.

Untrusted content is never executed: PDFgui projects (:func:`read_ddp`) go
through an allow-listed unpickler (:mod:`.safe_unpickle`), and CIF symmetry
operations are parsed without ``eval`` (:mod:`.symops`).  Readers raise
:class:`~diffpy_diffusion.errors.InputFileError` naming the file, the line and
what was expected.  Writers are atomic and refuse to overwrite an
existing file unless ``force=True`` (:class:`~diffpy_diffusion.errors.OutputExistsError`).
"""

from .ddp import DdpProject, read_ddp
from .patterns import PDF_EXTENSIONS, XRD_EXTENSIONS, check_pdf_grid, parse_header, read_observation
from .safe_unpickle import UnsafePickleError
from .structures import STRUCTURE_EXTENSIONS, diffpy_to_pymatgen, pymatgen_to_diffpy, read_structure
from .units import Wavelength, parse_size_nm, parse_wavelength
from .writers import (
    atomic_write_bytes,
    atomic_write_text,
    to_json_text,
    write_cif,
    write_json,
    write_stru,
    write_xy,
)

__all__ = [
    "read_observation", "read_structure", "parse_header", "check_pdf_grid", "pymatgen_to_diffpy", "diffpy_to_pymatgen",
    "write_cif", "write_stru", "write_xy", "write_json", "atomic_write_text", "atomic_write_bytes",
    "to_json_text", "Wavelength", "parse_wavelength", "parse_size_nm",
    "XRD_EXTENSIONS", "PDF_EXTENSIONS", "STRUCTURE_EXTENSIONS", "read_ddp", "DdpProject", "UnsafePickleError",
]
