"""Thread counts of torch and the BLAS libraries: one setter for the CLI and the worker processes."""

from __future__ import annotations

import os
import sys

__all__ = ["THREAD_VARS", "set_threads"]

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
