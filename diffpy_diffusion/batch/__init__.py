"""Batch screening of many patterns: local processes or an existing Dask cluster, resumable.

Modules, one job each:

* :mod:`.executor` -- :func:`map_tasks`, the executor abstraction: a picklable function
  over a list of items, sequentially, in a local process pool (``workers=N``) or on an
  existing `Dask distributed <https://distributed.dask.org>`_ cluster
  (``scheduler="tcp://host:port"``).  ``evaluate`` uses it too, so both commands scale
  out the same way;
* :mod:`.discovery` -- which pattern files and compositions (:func:`find_patterns`,
  :func:`read_composition_table`);
* :mod:`.task` -- the worker side: one observation in, candidate records out;
* :mod:`.records` -- each pattern's result folder, error file and ``summary.csv``;
* :mod:`.resume` -- settings manifest, finished patterns, leftovers of killed runs;
* :mod:`.ui` -- progress bar and summary table;
* :mod:`.run` -- :func:`propose_batch` (``diffpy-diffuse propose-batch``): one proposal
  run per pattern file, each result written atomically into its own folder, so an
  interrupted campaign is resumed by running the same command again (finished patterns
  are skipped), then a summary table and ``summary.csv``.

Design choices that keep remote runs simple: the parent process reads every pattern
and writes every output; workers only receive an :class:`~diffpy_diffusion.types.Observation`
and return plain data.  A Dask cluster therefore needs no access to the input or
output folders, only the same diffpy-diffusion installation.
"""

from __future__ import annotations

from ..report import candidate_record as proposal_record, score_of
from .discovery import find_patterns, is_pattern_file, pattern_extensions, read_composition_table
from .executor import TaskError, map_tasks
from .records import RESULT_FILE, SUMMARY_COLUMNS, SUMMARY_CSV, write_summary
from .resume import MANIFEST_FILE, is_finished
from .run import BatchSummary, propose_batch
from .task import propose_task
from .ui import print_summary

__all__ = [
    "map_tasks", "TaskError", "read_composition_table", "find_patterns", "pattern_extensions", "is_pattern_file",
    "proposal_record",
    "score_of", "propose_task", "propose_batch", "BatchSummary", "print_summary", "write_summary", "is_finished",
    "RESULT_FILE", "MANIFEST_FILE", "SUMMARY_CSV", "SUMMARY_COLUMNS",
]
