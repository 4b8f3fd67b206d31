"""Exception hierarchy of diffpy-diffusion.

Every error a user can cause with bad input is a :class:`DiffpyDiffusionError`
subclass.  The CLI turns these into a one-line message and exit status 2
(a traceback only with ``--debug``).
"""

from __future__ import annotations


class DiffpyDiffusionError(Exception):
    """Base class of all errors caused by user input or environment."""


class InputFileError(DiffpyDiffusionError, ValueError):
    """A data or structure file could not be read.

    Parameters
    ----------
    path : str
        The file that failed.
    message : str
        What was expected.
    line : int, optional
        1-based line number where the problem is, when known.
    """

    def __init__(self, path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class CompositionError(DiffpyDiffusionError, ValueError):
    """A composition string could not be parsed or is not allowed."""


class PluginError(DiffpyDiffusionError):
    """A plugin failed to load or registered something invalid."""


class BackendError(DiffpyDiffusionError):
    """A backend cannot serve the request (unknown name, unsatisfiable composition...)."""


class NotAvailableError(DiffpyDiffusionError):
    """A feature whose engine is not installed or not implemented yet."""


class ResourceLimitError(DiffpyDiffusionError, ValueError):
    """An input exceeds a safety cap (atoms per cell, pattern length...); the message names the option to raise it."""


class CheckpointError(DiffpyDiffusionError):
    """A model checkpoint is corrupt, foreign or unsafe."""


class OutputExistsError(DiffpyDiffusionError):
    """An output file exists and ``--force`` was not given."""
