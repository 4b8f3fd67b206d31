"""The executor: run a picklable function over many items, here, in local processes or on Dask.

:func:`map_tasks` runs ``fn`` over a list of items sequentially, in a local process pool
(``workers=N``) or on an existing `Dask distributed <https://distributed.dask.org>`_ cluster
(``scheduler="tcp://host:port"``) and yields ``(index, result)`` as tasks finish.
``propose-batch`` and ``evaluate`` both use it, so both commands scale out the same way.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import DiffpyDiffusionError, NotAvailableError
from ..threads import WORK_THREADS_ENV, set_threads

__all__ = ["TaskError", "map_tasks"]


@dataclass
class TaskError:
    """A task that raised: returned instead of a result by :func:`map_tasks` with ``on_error="return"``."""

    index: int
    error: str
    traceback: str = ""

    def __str__(self) -> str:
        return self.error


#: Seconds between a worker's checks that the process that started it is still alive.
PARENT_POLL_S = 1.0


def _exit_when_orphaned(parent_pid: int) -> None:
    """Leave this worker process once ``parent_pid`` is gone (checked every :data:`PARENT_POLL_S`).

    A parent killed by SIGTERM or SIGKILL runs no clean-up, and its spawned workers would go on
    computing their current task (minutes of CPU for an ``evaluate`` target) with nobody to
    read the result.
    """
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(1)  # no clean-up to run: the results have no reader


def _worker_init(threads: int | None, parent_pid: int | None = None) -> None:
    """Pool initializer: one BLAS/torch thread and one work thread per worker process so N workers use
    N cores, and a watcher that ends the worker when the parent process dies."""
    os.environ[WORK_THREADS_ENV] = "1"  # the workers are the parallelism (threads.work_threads)
    if parent_pid is not None:
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True,
                         name="diffpy-diffusion-orphan-watch").start()
    if not threads:
        return
    try:  # torch may already be imported (fork); without torch only the environment is set
        set_threads(threads)
    except Exception:  # noqa: BLE001 - best effort only
        pass


class _Call:
    """Picklable wrapper: runs ``fn(item)`` and turns an exception into a :class:`TaskError`."""

    def __init__(self, fn: Callable[[Any], Any], threads: int | None = None):
        self.fn = fn
        self.threads = threads

    def __call__(self, indexed):
        index, item = indexed
        if self.threads:
            _worker_init(self.threads)
        try:
            return index, self.fn(item)
        except Exception as exc:  # noqa: BLE001 - reported per task, the batch goes on
            return index, TaskError(index, f"{type(exc).__name__}: {' '.join(str(exc).split())}",
                                    traceback.format_exc())


def map_tasks(fn: Callable[[Any], Any], items: Iterable[Any], *, workers: int = 1, scheduler: Any = None,
              on_error: str = "raise", threads_per_worker: int | None = 1) -> Iterator[tuple[int, Any]]:
    """Run ``fn`` over ``items`` and yield ``(index, result)`` as each task finishes.

    Parameters
    ----------
    fn : callable
        A module-level (picklable) function of one argument.
    items : iterable
        Task inputs; must be picklable for ``workers > 1`` or a scheduler.
    workers : int
        Local worker processes; 1 runs in this process, in order.
    scheduler : str or distributed.Client, optional
        Address of an existing Dask distributed scheduler (``"tcp://host:8786"``)
        or a connected ``Client``.  Overrides ``workers``.  Needs the ``dask``
        extra (``pip install diffpy-diffusion[dask]``).
    on_error : {"raise", "return"}
        "return" yields a :class:`TaskError` for a failed task and goes on;
        "raise" raises :class:`DiffpyDiffusionError` naming the task.
    threads_per_worker : int, optional
        BLAS/torch threads in each local worker process (None: leave as is).

    Yields
    ------
    (int, object)
        Index of the item in ``items`` and ``fn(item)`` (or a :class:`TaskError`).
        Order is completion order, not input order, except for ``workers=1``.
    """
    if on_error not in ("raise", "return"):
        raise ValueError("on_error must be 'raise' or 'return'")
    indexed = list(enumerate(items))
    if not indexed:
        return
    if scheduler is not None:
        gen = _map_dask(fn, indexed, scheduler)
    elif workers is None or int(workers) <= 1:
        call = _Call(fn)
        gen = (call(it) for it in indexed)
    else:
        gen = _map_processes(fn, indexed, int(workers), threads_per_worker)
    for index, result in gen:
        if isinstance(result, TaskError) and on_error == "raise":
            raise DiffpyDiffusionError(f"task {index} failed: {result.error}")
        yield index, result


def _map_processes(fn, indexed, workers: int, threads: int | None):
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn, not fork: forking a process that has torch/OpenMP threads can deadlock
    ctx = mp.get_context("spawn")
    call = _Call(fn, threads)
    with ProcessPoolExecutor(max_workers=min(workers, len(indexed)), mp_context=ctx,
                             initializer=_worker_init, initargs=(threads, os.getpid())) as pool:
        pending = {pool.submit(call, it) for it in indexed}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        finally:
            for fut in pending:  # interrupted: don't start what has not started
                fut.cancel()


def _dask_client(scheduler):
    try:
        from distributed import Client
    except ImportError:  # dask.distributed is the optional extra 'dask': say how to get it
        raise NotAvailableError("--dask-scheduler needs dask.distributed: pip install 'diffpy-diffusion[dask]'") \
            from None
    if isinstance(scheduler, Client):
        return scheduler, False
    try:
        return Client(str(scheduler), timeout="20s", set_as_default=False), True
    except (OSError, TimeoutError) as exc:
        raise DiffpyDiffusionError(f"cannot connect to the Dask scheduler at {scheduler}: {exc}") from None


def _map_dask(fn, indexed, scheduler):
    from distributed import as_completed

    client, owned = _dask_client(scheduler)
    call = _Call(fn)
    try:
        futures = client.map(call, indexed, pure=False)
        try:
            for fut in as_completed(futures, loop=client.loop):
                yield fut.result()
        finally:
            client.cancel([f for f in futures if not f.done()])
    finally:
        if owned:
            client.close()
