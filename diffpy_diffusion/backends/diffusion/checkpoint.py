"""Checkpoints of the diffusion backend: safe to load, self-describing, resumable.

A checkpoint is one file ``NAME.pt`` holding everything sampling needs — a format tag, the
configuration (plain dict), step/epoch counters and the EMA weights — plus, for resuming
training, two sidecars: ``NAME.train.pt`` (raw model weights, RNG states) and ``NAME.optim.pt``
(optimizer state, Adam moments stored in bfloat16 to halve the size).  Three files of about a
third each keep every file small (the shipped set is under 30 MB).  Both are written atomically
(temporary file + ``os.replace``) and read with ``torch.load(weights_only=True)``, so a
malicious pickle cannot execute code; a corrupt, truncated or foreign file raises
:class:`~diffpy_diffusion.errors.CheckpointError` with the path and what is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import CheckpointError

FORMAT = "diffpy-diffusion-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "config", "step", "ema")


def sidecar(path: str | Path, kind: str = "train") -> Path:
    """A training-state file beside ``path`` (``x.pt`` -> ``x.train.pt`` / ``x.optim.pt``)."""
    p = Path(path)
    return p.with_name(f"{p.stem}.{kind}.pt")


def _atomic_save(obj, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:  # disk full, Ctrl-C: leave no half-written temp file behind
        tmp.unlink(missing_ok=True)
        raise


def _tagged(p: Path, step: int) -> Path:
    """Step-tagged name of a sidecar while a save is in flight (``x.train.pt`` -> ``x.train.step12.pt``)."""
    return p.with_name(f"{p.stem}.step{int(step)}.pt")


def _compact_optim(state: dict) -> dict:
    """Adam moments to bfloat16 (halves the sidecar; resuming is unaffected in practice)."""
    import torch

    out = {"param_groups": state["param_groups"], "state": {}}
    for k, v in state["state"].items():
        out["state"][k] = {
            n: (t.to(torch.bfloat16) if torch.is_tensor(t) and t.is_floating_point() and t.dim() > 0 else t)
            for n, t in v.items()
        }
    return out


def save_checkpoint(path: str | Path, *, config: dict, step: int, epoch: int, ema: dict,
                    model: dict | None = None, optim: dict | None = None, rng: dict | None = None,
                    meta: dict | None = None) -> Path:
    """Write ``path`` (inference part) and, when ``model`` is given, its ``.train.pt`` sidecar."""
    path = Path(path)
    cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}  # noqa: E731
    main = {"format": FORMAT, "version": VERSION, "config": config, "step": int(step), "epoch": int(epoch),
            "ema": cpu(ema), "meta": meta or {}}
    pending = []
    if model is not None:
        # The three files cannot be replaced in one atomic step.  A kill -9 between them must not
        # leave a main file whose sidecars are from another step (--resume would be impossible), so
        # the new sidecars are first written under step-tagged names, then the main file, then the
        # sidecars are renamed into place; load_checkpoint looks for the tagged name as a fallback.
        pending.append((sidecar(path), {"format": FORMAT + "-train", "version": VERSION, "step": int(step),
                                        "model": cpu(model), "rng": rng or {}}))
        if optim is not None:
            pending.append((sidecar(path, "optim"), {"format": FORMAT + "-optim", "version": VERSION,
                                                     "step": int(step), "optim": _compact_optim(optim)}))
        for final, obj in pending:
            _atomic_save(obj, _tagged(final, step))
    _atomic_save(main, path)
    for final, _ in pending:
        os.replace(_tagged(final, step), final)
        for old in final.parent.glob(f"{final.stem}.step*.pt"):  # leftovers of saves that were killed
            old.unlink(missing_ok=True)
    return path


def _load_sidecar(sp: Path, step: int, fmt: str) -> dict | None:
    """The sidecar ``sp`` for ``step`` (or its step-tagged copy from an interrupted save), else None."""
    for cand in (sp, _tagged(sp, step)):
        if cand.is_file():
            o = _load(cand)
            if o.get("format") == fmt and o.get("step") == step:
                return o
    return None


def _load(path: Path) -> dict[str, Any]:

    import torch

    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    # Random or truncated bytes make torch's restricted unpickler raise almost any built-in
    # exception (UnpicklingError, RuntimeError, IndexError, struct.error...), so every one of
    # them is a corrupt file here; only a missing file was ruled out above.
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable diffpy-diffusion checkpoint (corrupt, truncated, or contains "
            f"objects that are not allowed to load safely): {first}"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: foreign checkpoint (expected a dict, found {type(obj).__name__})")
    return obj


def load_checkpoint(path: str | Path, *, with_training_state: bool = False) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and validate it.

    Returns
    -------
    dict
        ``format, version, config, step, epoch, ema, meta`` and, with ``with_training_state``,
        ``model, optim, rng`` from the sidecar (``optim`` moments cast back to float32).

    Raises
    ------
    CheckpointError
        File missing, corrupt, foreign (another program's checkpoint) or of a newer version.
    """
    import torch

    path = Path(path)
    ck = _load(path)
    if ck.get("format") != FORMAT:
        raise CheckpointError(f"{path}: foreign checkpoint (format tag {ck.get('format')!r}, expected {FORMAT!r})")
    missing = [k for k in REQUIRED if k not in ck]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    if int(ck["version"]) > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {ck['version']} is newer than supported ({VERSION}); upgrade"
        )
    if with_training_state:
        sp = sidecar(path)
        if not sp.is_file() and not _tagged(sp, ck["step"]).is_file():
            _load(sp)  # the clear "not found" error
        tr = _load_sidecar(sp, ck["step"], FORMAT + "-train")
        if tr is None:
            raise CheckpointError(f"{sp}: training state missing or from another step than {path}")
        optim = None
        op = sidecar(path, "optim")
        if op.is_file() or _tagged(op, ck["step"]).is_file():
            o = _load_sidecar(op, ck["step"], FORMAT + "-optim")
            if o is None:
                raise CheckpointError(f"{op}: optimizer state from another step than {path}")
            optim = o["optim"]
        if optim is not None:
            for v in optim["state"].values():
                for n, t in list(v.items()):
                    if torch.is_tensor(t) and t.dtype == torch.bfloat16:
                        v[n] = t.float()
        ck.update(model=tr["model"], optim=optim, rng=tr.get("rng", {}))
    return ck
