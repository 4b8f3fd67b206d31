"""Thread counts of torch and the BLAS libraries: one setter for the CLI and the worker processes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["THREAD_VARS", "WORK_THREADS_ENV", "MAX_WORK_THREADS", "set_threads", "work_threads", "map_in_threads"]

#: Environment variables that size the OpenMP/MKL/OpenBLAS thread pools (read when a library loads).
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def set_threads(n: int) -> None:
    """Use ``n`` torch/BLAS threads in this process (and its child processes, through the environment).

    Set before torch is imported, the environment decides torch's thread pool; when torch is
    already imported (an in-process call, a forked worker), ``torch.set_num_threads`` is called too.
    """
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


#: Environment variable for the number of Python threads that share independent pieces of work within
#: one process (:func:`work_threads`).  Worker processes (``--workers``) set it to 1: they already
#: use the cores.
WORK_THREADS_ENV = "DIFFPY_DIFFUSION_WORK_THREADS"
#: Most work threads by default: the screen's per-candidate fits are memory-bound, so more threads than
#: this are unlikely to pay (measured only on 2 cores: stage A of 200 templates 0.56 -> 0.37 s wall).
MAX_WORK_THREADS = 4

T = TypeVar("T")


def work_threads() -> int:
    """How many Python threads :func:`map_in_threads` uses in this process.

    ``$DIFFPY_DIFFUSION_WORK_THREADS`` when set (1 in worker processes), else the CPUs this process
    may run on, at most :data:`MAX_WORK_THREADS`.  These are not torch's or BLAS's thread pools
    (:func:`set_threads`, one thread by default): each work thread runs its torch and NumPy calls on
    one core and waits without spinning. The threads cost ~15 % more CPU in all than one thread
    (stage A of 200 templates: 0.65 against 0.56 CPU s), so on a machine whose cores are busy with
    other jobs they gain nothing; set the variable to 1 there.
    """
    value = os.environ.get(WORK_THREADS_ENV)
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise ValueError(f"${WORK_THREADS_ENV}: expected a whole number of threads, got {value!r}") from None
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORK_THREADS))


def map_in_threads(fn: Callable[[Sequence[int]], list[T]], n: int, *, min_per_thread: int = 8) -> list[T]:
    """``fn(indices)`` over ``range(n)`` split into contiguous parts run by :func:`work_threads` threads.

    ``fn`` returns one result per index of its part; the results come back in index order, so the
    outcome equals ``fn(range(n))`` when the items are independent (``fn`` must not write shared
    state).  Runs inline with one thread or fewer than ``2 * min_per_thread`` items.  Pays where
    ``fn`` spends its time in torch or NumPy calls that release the GIL (FFTs, products).
    """
    threads = min(work_threads(), n // max(min_per_thread, 1))
    if threads <= 1:
        return list(fn(range(n)))
    from concurrent.futures import ThreadPoolExecutor

    # more parts than threads: the items' costs differ (peak counts), and a thread that is done takes the next
    bounds = [round(i * n / (4 * threads)) for i in range(4 * threads + 1)]
    parts = [range(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    out: list[Any] = []
    with ThreadPoolExecutor(threads, thread_name_prefix="diffpy-diffusion-work") as pool:
        for res in pool.map(fn, parts):
            out.extend(res)
    return out
