"""The worker side of ``propose-batch``: one observation in, plain candidate records out.

Workers only receive an :class:`~diffpy_diffusion.types.Observation` and the settings, and
return plain data (picklable both ways), so a Dask cluster needs no access to the input or
output folders, only the same diffpy-diffusion installation.
"""

from __future__ import annotations

import time

__all__ = ["propose_task", "propose_one"]


def propose_one(obs, settings: dict) -> list:
    """The proposals for one observation: the full pipeline, or sample + screen with ``screen_only``."""
    backend, n, top, seed = settings["backend"], settings["n"], settings["top"], settings["seed"]
    options = dict(settings.get("backend_options") or {})
    if not settings.get("screen_only"):
        from ..pipeline import propose

        return list(propose(obs, backend=backend, n=n, top=top, seed=seed, output_dir=None, progress=False,
                            backend_options=options or None))
    from .. import plugins
    from ..screen import screen

    names = backend.replace(",", "+").split("+")
    raw = []
    for j, name in enumerate(names):
        b = plugins.get_backend(name, **options)
        share = n // len(names) + (1 if j < n % len(names) else 0)
        raw.extend(b.sample(obs, share, seed=seed))
    return list(screen(obs, raw, k=top, **dict(settings.get("screen_options") or {})).kept)


def propose_task(task: dict) -> dict:
    """``{"name", "observation", "settings"}`` -> ``{"name", "seconds", "candidates"}`` (records with structures)."""
    from ..report import candidate_record

    t0 = time.perf_counter()
    props = propose_one(task["observation"], task["settings"])
    return {"name": task["name"], "seconds": time.perf_counter() - t0,
            "candidates": [candidate_record(p, i, structure=True) for i, p in enumerate(props, 1)]}
