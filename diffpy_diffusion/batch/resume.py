"""Resuming ``propose-batch``: the settings manifest, finished patterns, leftovers of killed runs.

A rerun with the same settings skips the patterns whose ``results.json`` exists; a rerun
with other settings is refused (``batch.json`` holds a hash of them) unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ..errors import OutputExistsError
from .records import RESULT_FILE

__all__ = ["MANIFEST_FILE", "settings_key", "check_manifest", "is_finished", "remove_stale_partials",
           "remove_stale_temp_files"]

#: Batch settings; a rerun with different settings refuses to mix results.
MANIFEST_FILE = "batch.json"


def settings_key(settings: dict) -> str:
    """A short hash of the settings (JSON with sorted keys)."""
    from ..report import plain

    text = json.dumps(plain(settings), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_manifest(out: Path, settings: dict, force: bool) -> str:
    """Refuse to mix settings in one output folder; returns the settings key.

    Raises
    ------
    OutputExistsError
        ``out`` holds a batch run with other settings and ``force`` is false.
    """
    key = settings_key(settings)
    manifest_path = Path(out) / MANIFEST_FILE
    if manifest_path.exists() and not force:
        old = json.loads(manifest_path.read_text())
        if old.get("settings_key") != key:
            raise OutputExistsError(f"{out} holds a batch run with other settings ({old.get('settings')}); "
                                    "use another -o folder or --force to redo everything")
    return key


def is_finished(out: Path, name: str) -> bool:
    """True when the pattern's result folder is complete (its ``results.json`` exists)."""
    return (Path(out) / name / RESULT_FILE).is_file()


def remove_stale_partials(out: Path) -> None:
    """Delete half-written result folders left by a killed run (their process is gone)."""
    for tmp in out.glob(".*.partial-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            os.kill(pid, 0)  # still running: another batch is writing it
            continue
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temp_files(out: Path, started_at: float) -> None:
    """Delete the atomic writers' temp files (``.NAME.*.tmp``) in ``out`` that predate this run.

    A kill -9 during a write leaves one behind (``io.writers`` renames it into place only when
    the write completes).  A write takes milliseconds, so a temp file older than this whole run
    belongs to a process that is gone; newer ones are left alone.
    """
    for tmp in out.glob(".*.tmp"):
        try:
            if tmp.is_file() and tmp.stat().st_mtime < started_at:
                tmp.unlink()
        except OSError:  # removed meanwhile, or not ours to remove
            continue
