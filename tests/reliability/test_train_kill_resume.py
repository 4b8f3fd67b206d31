"""kill -9 during ``diffpy-diffuse train``, then ``--resume``: it continues from the last checkpoint's step.

A 64-structure pool from $DIFFPY_DIFFUSION_DATA and a tiny model (hidden 16, one layer)
checkpointed after every step (``--ckpt-every 0``), so a kill can land inside a
checkpoint write.  After each kill the checkpoint must load (atomic writes: the
inference file and its training-state sidecars agree), and the resumed run must
start at exactly the checkpointed step and finish at ``--steps``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings

import pytest

pytestmark = pytest.mark.slow

STEPS = 40


@pytest.fixture(scope="module")
def tiny_pool(shared_data, tmp_path_factory):
    from diffpy_diffusion.backends.diffusion.data import build_pool_arrays

    out = tmp_path_factory.mktemp("pool") / "pool64.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_pool_arrays(shared_data, out, limit=64, progress=False)
    return out


def _cmd(pool, out, *extra):
    return [sys.executable, "-m", "diffpy_diffusion", "train", "--data", str(pool), "--out", str(out),
            "--steps", str(STEPS), "--hidden", "16", "--layers", "1", "--n-freq", "2", "--batch-size", "16",
            "--warmup", "5", "--no-amp", "--val-fraction", "0", "--progress", "none", "--ckpt-every", "0",
            "--log-every", "1", "--threads", "1", "--seed", "2", *extra]


def _logged_steps(out):
    log = out / "log.csv"
    if not log.is_file():
        return []
    rows = [r.split(",") for r in log.read_text().splitlines()[1:]]
    return [int(r[0]) for r in rows if len(r) > 2 and r[0].isdigit() and r[2]]


@pytest.mark.parametrize("trial", range(3))
def test_train_kill9_resume_continues_at_checkpoint_step(tiny_pool, tmp_path, trial):
    from diffpy_diffusion.backends.diffusion import checkpoint as ckpt

    rng = random.Random(77 + trial)
    out = tmp_path / "run"
    target = rng.randint(3, STEPS - 10)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cmd(tiny_pool, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 400
    try:
        while time.time() < deadline and proc.poll() is None and len(_logged_steps(out)) < target:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        assert proc.poll() is None, f"training ended before the kill: {proc.stderr.read().decode()[-1500:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    logged_at_kill = len(_logged_steps(out))
    # the checkpoint on disk is whole and self-consistent after a kill -9
    ck = ckpt.load_checkpoint(out / "last.pt", with_training_state=True)
    step0 = int(ck["step"])
    assert 1 <= step0 <= logged_at_kill
    # A write cut by the kill may leave one temporary file (saves run one at a time); it must be
    # the killed run's own, dot-named and tagged with its pid, so nothing can take it for a checkpoint.
    stale = {f.name for f in out.glob(".*tmp*")}
    assert len(stale) <= 1 and all(n.endswith(f".tmp{proc.pid}") for n in stale), stale

    r = subprocess.run(_cmd(tiny_pool, out, "--resume"), capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    steps = _logged_steps(out)
    resumed = steps[logged_at_kill:]
    assert resumed and resumed[0] == step0 + 1, (step0, resumed[:3])
    assert resumed == list(range(step0 + 1, STEPS + 1))
    # the resumed run completed every save: no temporary file of its own, no step-tagged sidecar left
    assert {f.name for f in out.glob(".*tmp*")} <= stale
    assert not list(out.glob("*.step*.pt")), sorted(f.name for f in out.iterdir())
    final = ckpt.load_checkpoint(out / "last.pt", with_training_state=True)
    assert int(final["step"]) == STEPS
    print(f"\ntrial {trial}: killed after {logged_at_kill} logged steps, checkpoint at step {step0}, "
          f"resumed at {resumed[0]}, finished at {final['step']}")
