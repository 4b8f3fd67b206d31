"""Differences between diffpy.srfit 3.2 and 3.4 in one place.

srfit 3.4 renamed a few camelCase methods (``processMetaData`` ->
``_process_metadata``, ``setProfile`` -> ``set_profile``, ``_setCalculator``
-> ``_set_calculator``, ...).  Code in :mod:`diffpy_diffusion.refine` calls
the helpers below instead of either spelling, and our own generators define
both names (see :class:`MetadataCompatMixin`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "srfit_version",
    "set_profile",
    "set_calculator",
    "process_metadata",
    "set_observed_profile",
    "set_equation",
    "add_profile_generator",
    "MetadataCompatMixin",
]


def srfit_version() -> tuple[int, ...]:
    """The installed diffpy.srfit version as a tuple of ints, e.g. ``(3, 2, 0)``."""
    from importlib.metadata import version

    parts = []
    for p in version("diffpy.srfit").split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _call_first(obj: Any, names: tuple[str, ...], *args, **kw):
    """Call the first of ``names`` that ``obj`` has (new spelling first)."""
    for n in names:
        fn = getattr(obj, n, None)
        if fn is not None:
            return fn(*args, **kw)
    raise AttributeError(f"{type(obj).__name__} has none of {names}")


def set_profile(obj: Any, profile: Any, *args, **kw):
    """``obj.set_profile(profile)`` (srfit ≥ 3.4) or ``obj.setProfile(profile)`` (3.2)."""
    return _call_first(obj, ("set_profile", "setProfile"), profile, *args, **kw)


def set_calculator(gen: Any, calc: Any):
    """``gen._set_calculator(calc)`` (3.4) or ``gen._setCalculator(calc)`` (3.2)."""
    return _call_first(gen, ("_set_calculator", "_setCalculator"), calc)


def process_metadata(gen: Any):
    """``gen._process_metadata()`` (3.4) or ``gen.processMetaData()`` (3.2)."""
    return _call_first(gen, ("_process_metadata", "processMetaData"))


def set_observed_profile(profile: Any, x, y, dy=None):
    """``Profile.set_observed_profile`` (3.4) or ``setObservedProfile`` (3.2)."""
    return _call_first(profile, ("set_observed_profile", "setObservedProfile"), x, y, dy)


def set_equation(contribution: Any, eq: str):
    """``FitContribution.set_equation`` (3.4) or ``setEquation`` (3.2)."""
    return _call_first(contribution, ("set_equation", "setEquation"), eq)


def add_profile_generator(contribution: Any, gen: Any, name: str | None = None):
    """``FitContribution.add_profile_generator`` (3.4) or ``addProfileGenerator`` (3.2)."""
    return _call_first(contribution, ("add_profile_generator", "addProfileGenerator"), gen, name)


class MetadataCompatMixin:
    """Give a ProfileGenerator subclass both metadata hook names.

    srfit 3.2's ``setProfile`` calls ``self.processMetaData()``; 3.4's
    ``set_profile`` calls ``self._process_metadata()``.  Subclasses implement
    :meth:`_apply_metadata` once.
    """

    def _apply_metadata(self) -> None:  # pragma: no cover - overridden
        return None

    def processMetaData(self):  # noqa: N802 - srfit 3.2 name
        self._apply_metadata()

    def _process_metadata(self):  # srfit 3.4 name
        self._apply_metadata()
