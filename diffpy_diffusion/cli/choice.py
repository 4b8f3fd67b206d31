"""Backend-choice policy of the command line: what ``--backend auto`` means.

``auto`` is :data:`AUTO_DEFAULT`, the merged ``diffusion+templates``, when the diffusion
backend's factory says it can run (``available()``: the trained weights are installed), else the
best baseline that is installed, with a notice on stderr saying which one was used.  Everything
else (names, ``a+b`` merges) is passed on.
"""

from __future__ import annotations

from ..errors import DiffpyDiffusionError
from .group import notice

#: What ``auto`` means when the diffusion weights are installed.  Of the combinations measured on
#: the first 100 evaluation targets (docs/benchmarks.rst; templates from the training pool, which
#: the package ships as its default template library), the merged list solves the most at 10 nm
#: (top-1/top-10: diffusion+templates 71/83 %, templates 67/79 %, diffusion 51/61 %) and beats the
#: diffusion model alone at 1 nm (36/75 % against 25/37 %), where templates alone stays better
#: (61/77 %): see the model card for what is being done about that.
AUTO_DEFAULT = "diffusion+templates"

#: What ``auto`` falls back to, in order, when the diffusion backend cannot run.  Templates
#: first: of the baselines it matched the most targets in the 100-target evaluation at 1 nm
#: (top-10: templates 77 %, random 16 %; docs/benchmarks.rst); random adds candidates for
#: compositions that no template fits.
AUTO_FALLBACKS = ("templates+random", "templates", "random", "example")


def backend_available(name: str) -> bool:
    """True when backend ``name`` is registered and its factory's ``available()`` (if it has one) is true.

    ``available`` is an optional class attribute of a backend factory, checked without building
    the backend (no model weights are loaded, no torch is imported).
    """
    from .. import plugins

    if name not in plugins.backend_names():
        return False
    check = getattr(plugins.get_backend_registration(name).obj, "available", None)
    return bool(check()) if callable(check) else True


def diffusion_weights_available() -> bool:
    """True when the diffusion backend is installed with trained weights (checked without importing torch)."""
    return backend_available("diffusion")


def resolve_backend(name: str, quiet: bool = False) -> str:
    """Turn ``auto`` into a concrete backend name, with a notice when falling back.

    A comma list (``--backend random,templates``) is normalised to the merged
    form ``random+templates`` that the pipeline understands.
    """
    name = "+".join(p.strip() for p in str(name).replace(",", "+").split("+") if p.strip()) or "auto"
    if name != "auto":
        return name
    from .. import plugins

    names = plugins.backend_names()
    if diffusion_weights_available():
        return AUTO_DEFAULT if all(p in names for p in AUTO_DEFAULT.split("+")) else "diffusion"
    for fallback in AUTO_FALLBACKS:
        parts = fallback.split("+")
        if all(p in names for p in parts):
            notice(f"note: no trained diffusion weights installed; using backend '{fallback}' "
                   "(pass --backend to choose)", quiet)
            return fallback
    if names:
        notice(f"note: using backend '{names[0]}' (pass --backend to choose)", quiet)
        return names[0]
    raise DiffpyDiffusionError("no structure backend is installed; see 'diffpy-diffuse backends'")
