"""kill -9 at random points of ``propose-batch``, then rerun: nothing lost, nothing doubled, same answers.

Acceptance (issue 8): five trials; after each, every pattern's result is
present exactly once and identical (all files; JSON apart from timing fields)
to an uninterrupted run with the same seed.  A cheap backend (``example``),
the grid-only screen and 8 small patterns keep one run at a few seconds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import cli, tree_snapshot

pytestmark = pytest.mark.slow

N_TRIALS = 5


def _args(patterns: Path, out: Path) -> list[str]:
    return ["propose-batch", str(patterns), "--composition-from", str(patterns / "names.csv"), "-w", "1.540598",
            "--backend", "example", "--n", "4", "--top", "2", "--seed", "3", "--screen-only", "--screen-steps", "0",
            "-o", str(out), "--quiet"]


def _finished(out: Path) -> int:
    return len(list(out.glob("*/results.json"))) if out.is_dir() else 0


def _seconds_per_pattern(out: Path) -> float:
    """Median of the patterns' own ``seconds`` in a finished batch folder (their screening)."""
    times = sorted(json.loads(p.read_text(encoding="utf-8"))["seconds"] for p in out.glob("*/results.json"))
    return max(times[len(times) // 2], 0.005)


def _kill_at(cmd: list[str], out: Path, rng: random.Random, n_patterns: int, per_pattern_s: float) -> dict:
    """Start ``cmd``, SIGKILL it at a random point; return what was finished at the kill.

    ``per_pattern_s``: how long a pattern takes (:func:`_seconds_per_pattern`); the "after k" kills
    land up to 1.5 patterns after the k-th result, so they fall inside the batch (and now and then
    inside a write) however fast the screen is: a fixed 0-0.3 s outlasted the rest of the batch once
    a pattern took 30 ms.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "diffpy_diffusion", *cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    mode = rng.choice(["early", "after_k", "after_k"])
    target = rng.randint(1, n_patterns - 1)
    extra = rng.uniform(0.0, 1.5 * per_pattern_s)  # lands inside a write now and then
    deadline = time.time() + 300
    t0 = time.time()
    try:
        if mode == "early":
            time.sleep(rng.uniform(0.2, 3.0))
        else:
            while time.time() < deadline and proc.poll() is None and _finished(out) < target:
                time.sleep(0.02)
            time.sleep(extra)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    return {"mode": mode, "target": target, "killed": killed, "at_s": round(time.time() - t0, 2),
            "finished_at_kill": _finished(out)}


def test_kill9_then_resume_five_trials(tmp_path, batch_patterns):
    n = len(list(batch_patterns.glob("*.xy")))
    ref = tmp_path / "reference"
    r = cli(*_args(batch_patterns, ref))
    assert r.returncode == 0, r.stderr
    expected = tree_snapshot(ref)
    per_pattern_s = _seconds_per_pattern(ref)
    names = sorted(p.stem for p in batch_patterns.glob("*.xy"))
    assert sorted(p.parent.name for p in ref.glob("*/results.json")) == names

    log = []
    for trial in range(N_TRIALS):
        rng = random.Random(1000 + trial)
        out = tmp_path / f"trial{trial}"
        kills = [_kill_at(_args(batch_patterns, out), out, rng, n, per_pattern_s)]
        if trial == N_TRIALS - 1:  # the last trial is killed twice before it may finish
            kills.append(_kill_at(_args(batch_patterns, out), out, rng, n, per_pattern_s))
        rerun = cli(*_args(batch_patterns, out)[:-1], "--json")
        assert rerun.returncode == 0, f"trial {trial}: rerun failed: {rerun.stderr[-2000:]}"
        report = json.loads(rerun.stdout)
        # nothing redone that was finished, nothing missing
        assert len(report["skipped"]) + len(report["computed"]) == n, report
        assert not report["failed"], report["failed"]
        # every pattern's result exactly once; no partial folders or error files left behind
        dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
        assert dirs == names, f"trial {trial}: folders {dirs}"
        assert not list(out.glob(".*partial*")), f"trial {trial}: partial folders left"
        assert not list(out.glob("*.error.json"))
        assert not list(out.rglob(".*.tmp")), "temporary files left behind"
        got = tree_snapshot(out)
        assert got.keys() == expected.keys(), f"trial {trial}: files differ: {set(got) ^ set(expected)}"
        for k in expected:
            assert got[k] == expected[k], f"trial {trial}: {k} differs from the uninterrupted run"
        log.append({"trial": trial, "kills": kills, "skipped": len(report["skipped"]),
                    "computed": len(report["computed"])})
    print("\n" + "\n".join(json.dumps(x) for x in log))
    interrupted = [x for x in log if any(k["killed"] and 0 < k["finished_at_kill"] < n for k in x["kills"])]
    assert len(interrupted) >= 3, f"too few trials were killed mid-batch: {log}"
