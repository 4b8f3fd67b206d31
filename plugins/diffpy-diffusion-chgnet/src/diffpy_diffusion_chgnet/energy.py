"""CHGNet energies per atom: batched, cached per structure, on 1 CPU thread or on CUDA.

The pretrained weights ship inside the ``chgnet`` wheel (``chgnet/pretrained/``), so nothing
is downloaded.  torch and chgnet are imported on first use, never at plugin-import time.

Environment variables
---------------------
``DIFFPY_DIFFUSION_CHGNET_DEVICE``
    ``cpu`` or ``cuda`` (default: ``cuda`` when torch sees a GPU, else ``cpu``).
``DIFFPY_DIFFUSION_CHGNET_THREADS``
    torch threads while CHGNet runs on the CPU (default 1: the pipeline's own torch work and
    ``propose-batch`` workers already use the cores; the previous setting is restored after).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence

#: The CHGNet checkpoint (bundled in the chgnet 0.4.2 wheel): MPtrj-trained, PBE/PBE+U energies.
MODEL_NAME = "0.3.0"
#: CHGNet's element embedding covers atomic numbers 1 (H) to 94 (Pu).
MAX_Z = 94
#: Structures per CHGNet forward pass (chgnet's own default batch size).
BATCH_SIZE = 16
#: Rounding of the cache key: lattice vectors in Å and fractional coordinates to 1e-4
#: (0.001 Å in a 10 Å cell, far below any change that moves a CHGNet energy by 1 meV/atom).
KEY_DECIMALS = 4
#: Energies remembered per process (a run scores tens of candidates; evaluate runs hundreds).
CACHE_SIZE = 4096

ENV_DEVICE = "DIFFPY_DIFFUSION_CHGNET_DEVICE"
ENV_THREADS = "DIFFPY_DIFFUSION_CHGNET_THREADS"


def structure_key(structure) -> str:
    """Cache key of a pymatgen ``Structure``: a hash of its lattice, species and wrapped fractional coordinates.

    Values are rounded to :data:`KEY_DECIMALS` decimals; fractional coordinates are wrapped
    into [0, 1) so that an atom at 1.0 and one at 0.0 give the same key.
    """
    import numpy as np

    lat = np.round(np.asarray(structure.lattice.matrix, dtype=float), KEY_DECIMALS) + 0.0
    frac = np.round(np.mod(np.asarray(structure.frac_coords, dtype=float), 1.0), KEY_DECIMALS) % 1.0 + 0.0
    species = ",".join(str(sp) for sp in structure.species)
    h = hashlib.sha256()
    h.update(lat.tobytes())
    h.update(species.encode())
    h.update(frac.tobytes())
    return h.hexdigest()


def uncovered_elements(structure) -> list[str]:
    """Elements of ``structure`` that CHGNet has no embedding for (Z > :data:`MAX_Z`, or not an element)."""
    out = []
    for el in structure.composition.elements:
        z = getattr(el, "Z", None)
        if z is None or not 1 <= int(z) <= MAX_Z:
            out.append(str(el))
    return sorted(set(out))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, restoring the previous number after."""
    import torch

    old = torch.get_num_threads()
    change = n is not None and int(n) > 0 and int(n) != old
    if change:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(old)


def default_device() -> str:
    """``$DIFFPY_DIFFUSION_CHGNET_DEVICE``, else ``"cuda"`` when torch sees a GPU, else ``"cpu"``."""
    env = os.environ.get(ENV_DEVICE, "").strip().lower()
    if env:
        return env
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_threads() -> int:
    """``$DIFFPY_DIFFUSION_CHGNET_THREADS`` (default 1)."""
    raw = os.environ.get(ENV_THREADS, "").strip()
    try:
        return max(1, int(raw)) if raw else 1
    except ValueError:
        warnings.warn(f"chgnet: {ENV_THREADS}={raw!r} is not an integer; using 1 thread", stacklevel=2)
        return 1


class EnergyModel:
    """CHGNet energy per atom (eV/atom) of pymatgen structures, batched and cached.

    Parameters
    ----------
    device : str, optional
        ``"cpu"`` or ``"cuda"`` (default :func:`default_device`).
    threads : int, optional
        torch threads while predicting on the CPU (default :func:`default_threads`).
    batch_size : int
        Structures per forward pass.
    """

    def __init__(self, device: str | None = None, threads: int | None = None, batch_size: int = BATCH_SIZE):
        self.device = device or default_device()
        self.threads = threads or default_threads()
        self.batch_size = int(batch_size)
        self._model = None
        self._cache: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._lock = threading.RLock()
        self.calls = 0  # structures actually sent to CHGNet (the rest came from the cache)

    @property
    def model(self):
        """The CHGNet model, loaded on first use (its start-up banner silenced)."""
        if self._model is None:
            from chgnet.model import CHGNet

            with contextlib.redirect_stdout(io.StringIO()):
                self._model = CHGNet.load(model_name=MODEL_NAME, use_device=self.device, verbose=False)
            self._model.eval()
        return self._model

    def thread_context(self):
        """Context manager: :attr:`threads` torch threads on the CPU, torch's own setting on a GPU."""
        return torch_threads(self.threads if self.device == "cpu" else None)

    def _predict(self, structures: Sequence) -> list[float]:
        """Energies (eV/atom) for ``structures`` in one batched call; raises on any failure."""
        with self.thread_context(), warnings.catch_warnings():
            # chgnet converts a requires-grad tensor to a float inside predict (harmless, every call)
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad", category=UserWarning)
            preds = self.model.predict_structure(list(structures), task="e", batch_size=self.batch_size)
        if isinstance(preds, dict):
            preds = [preds]
        return [float(p["e"]) for p in preds]

    def energies(self, structures: Sequence) -> tuple[list[float], list[str | None]]:
        """Energy per atom of each structure and, where it could not be computed, why.

        Parameters
        ----------
        structures : sequence of pymatgen.core.Structure

        Returns
        -------
        energies : list of float
            eV/atom (CHGNet's total energy divided by the number of sites); NaN where it failed.
        errors : list of str or None
            ``None``, or a one-line reason (an element CHGNet does not cover, or CHGNet's error).
        """
        keys = [structure_key(s) for s in structures]
        with self._lock:
            todo: dict[str, object] = {}
            for k, s in zip(keys, structures):
                if k in self._cache or k in todo:
                    continue
                missing = uncovered_elements(s)
                if missing:
                    self._store(k, math.nan, f"element(s) {', '.join(missing)} not covered by CHGNet (Z 1-{MAX_Z})")
                elif len(s) == 0:
                    self._store(k, math.nan, "empty structure")
                else:
                    todo[k] = s
            if todo:
                self._compute(todo)
            out = [self._cache[k] for k in keys]
            for k in keys:
                self._cache.move_to_end(k)
        return [e for e, _ in out], [r for _, r in out]

    def _compute(self, todo: dict) -> None:
        items = list(todo.items())
        self.calls += len(items)
        try:
            values = self._predict([s for _, s in items])
            results = [(v, None) if math.isfinite(v) else (math.nan, "CHGNet returned a non-finite energy")
                       for v in values]
        except Exception:  # noqa: BLE001 - one bad structure fails the batch: retry one by one
            results = []
            for _, s in items:
                try:
                    v = self._predict([s])[0]
                    results.append((v, None) if math.isfinite(v) else (math.nan, "CHGNet returned a non-finite energy"))
                except Exception as exc:  # noqa: BLE001 - reported as a one-line warning by the caller
                    results.append((math.nan, f"CHGNet failed: {' '.join(str(exc).split()) or type(exc).__name__}"))
        for (k, _), (v, why) in zip(items, results):
            self._store(k, v, why)

    def _store(self, key: str, value: float, why: str | None) -> None:
        self._cache[key] = (float(value), why)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    def clear(self) -> None:
        """Forget the cached energies."""
        with self._lock:
            self._cache.clear()


_shared: EnergyModel | None = None
_shared_lock = threading.Lock()


def shared_model() -> EnergyModel:
    """The process-wide :class:`EnergyModel` (one CHGNet load, one cache per process)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = EnergyModel()
        return _shared


def chgnet_available() -> bool:
    """Whether the ``chgnet`` package can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("chgnet") is not None
