"""Batch screening (diffpy_diffusion.batch, ``diffpy-diffuse propose-batch``).

The equality checks compare the ranked answers of the same 20 simulated patterns run
sequentially, in 2 local processes and on a Dask LocalCluster on loopback; the
resume check kills a CLI run halfway (SIGKILL) and checks that the rerun computes
only the rest.  A cheap backend (``example``) and the grid-only screen keep it at a
fraction of a second per pattern.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from diffpy_diffusion import batch
from diffpy_diffusion.errors import DiffpyDiffusionError, InputFileError, OutputExistsError

CHEAP = dict(backend="example", n=4, top=2, seed=3, screen_only=True, screen_options={"gradient_steps": 0},
             wavelength=1.540598, progress=False)

# (formula, space group, species, frac coords, a in Å) -- simple cubic prototypes
PROTOTYPES = [
    ("NaCl", "Fm-3m", ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]], 5.64),
    ("CsCl", "Pm-3m", ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]], 4.12),
    ("Cu", "Fm-3m", ["Cu"], [[0, 0, 0]], 3.615),
    ("Si", "Fd-3m", ["Si"], [[0, 0, 0]], 5.431),
    ("ZnS", "F-43m", ["Zn", "S"], [[0, 0, 0], [0.25, 0.25, 0.25]], 5.41),
]


def make_patterns(folder: Path, count: int = 20) -> Path:
    """``count`` simulated PXRD patterns (cubic prototypes at several sizes) and their names.csv."""
    import torch
    from pymatgen.core import Lattice, Structure

    from diffpy_diffusion.io import write_xy
    from diffpy_diffusion.physics.crystal import CrystalBatch
    from diffpy_diffusion.physics.xrd import xrd_pattern

    folder.mkdir(parents=True, exist_ok=True)
    x = np.arange(15.0, 75.0, 0.1)
    rows = ["file,composition"]
    structures, sizes, names = [], [], []
    for i in range(count):
        formula, sg, species, coords, a = PROTOTYPES[i % len(PROTOTYPES)]
        structures.append(Structure.from_spacegroup(sg, Lattice.cubic(a), species, coords))
        sizes.append([3.0, 5.0, 10.0, 20.0][(i // len(PROTOTYPES)) % 4])
        names.append((f"p{i:02d}_{formula}", formula))
    b = CrystalBatch.from_structures(structures, dtype=torch.float64)
    y = xrd_pattern(b, torch.as_tensor(x), x_kind="2theta", wavelength=1.540598,
                    size_nm=torch.as_tensor(sizes, dtype=torch.float64)).numpy()
    for (name, formula), yi in zip(names, y):
        write_xy(x, 1000 * yi / yi.max() + 20, folder / f"{name}.xy", force=True)
        rows.append(f"{name}.xy,{formula}")
    (folder / "names.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    return make_patterns(tmp_path_factory.mktemp("patterns"))


def answers(out: Path) -> dict:
    """Ranked answers per pattern: formula, space group, lattice (0.1 mÅ) and score (1e-6)."""
    res = {}
    for d in sorted(p for p in out.iterdir() if (p / batch.RESULT_FILE).is_file()):
        data = json.loads((d / batch.RESULT_FILE).read_text())
        res[d.name] = [(c["rank"], c["formula"], c["spacegroup"], round(c["score"], 6),
                        tuple(round(c["lattice"][k], 4) for k in ("a", "b", "c")))
                       for c in data["candidates"]]
    return res


# ----------------------------------------------------------------------------- small pieces


def test_composition_table(tmp_path):
    p = tmp_path / "names.csv"
    p.write_text("\ufefffile;Composition;size\ncdse_01.xy;CdSe;3nm\nni;Ni;\n")
    t = batch.read_composition_table(p)
    assert t["cdse_01.xy"]["composition"] == "CdSe" and t["cdse_01"]["size"] == "3nm"
    assert t["ni"]["composition"] == "Ni"
    p.write_text("file,composition\na.xy,CdSe\nb.xy,Xx2\n")
    with pytest.raises(InputFileError) as e:
        batch.read_composition_table(p)
    assert "line 3" in str(e.value) or ":3" in str(e.value)
    p.write_text("name,stuff\na,b\n")
    with pytest.raises(InputFileError):
        batch.read_composition_table(p)


def _square(x):
    return x * x


def _fail_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x


def test_map_tasks_sequential_and_errors():
    assert dict(batch.map_tasks(_square, range(5))) == {i: i * i for i in range(5)}
    res = dict(batch.map_tasks(_fail_on_three, range(5), on_error="return"))
    assert isinstance(res[3], batch.TaskError) and "three" in res[3].error
    assert res[4] == 4
    with pytest.raises(DiffpyDiffusionError, match="task 3 failed"):
        list(batch.map_tasks(_fail_on_three, range(5)))
    assert list(batch.map_tasks(_square, [])) == []


def test_failed_pattern_does_not_stop_the_batch(tmp_path, patterns):
    files = sorted(patterns.glob("p0[0-2]*.xy"))
    table = batch.read_composition_table(patterns / "names.csv")
    del table[files[1].name], table[files[1].stem]  # no composition for the second pattern
    out = tmp_path / "out"
    s = batch.propose_batch(files, out, compositions=table, **CHEAP)
    assert s.failed == [files[1].stem] and len(s.computed) == 2
    status = {r["pattern"]: r["status"] for r in s.rows}
    assert status[files[1].stem] == "failed" and status[files[0].stem] == "ok"
    assert (out / batch.SUMMARY_CSV).read_text().count("\n") == 4
    # other settings in the same folder are refused, unless --force
    with pytest.raises(OutputExistsError):
        batch.propose_batch(files, out, compositions=table, **{**CHEAP, "n": 5})
    s2 = batch.propose_batch(files, out, compositions=table, **CHEAP)
    assert s2.computed == [] and sorted(s2.skipped) == sorted([files[0].stem, files[2].stem])
    assert s2.failed == [files[1].stem]  # failures are retried, and fail again


# ----------------------------------------------------------------------------- acceptance


@pytest.mark.slow
def test_same_answers_sequential_processes_dask(tmp_path, patterns):
    """20 patterns: --workers 1, --workers 2 and a Dask LocalCluster give the same ranked answers."""
    distributed = pytest.importorskip("distributed", reason="dask.distributed not installed (extra 'dask')")
    csv = patterns / "names.csv"
    s1 = batch.propose_batch(patterns, tmp_path / "w1", compositions=csv, workers=1, **CHEAP)
    assert len(s1.computed) == 20 and not s1.failed
    ref = answers(tmp_path / "w1")
    assert len(ref) == 20 and all(len(v) == 2 for v in ref.values())
    assert all(v[0][1] == k.split("_")[1] for k, v in ref.items())  # rank 1 has the right composition

    s2 = batch.propose_batch(patterns, tmp_path / "w2", compositions=csv, workers=2, **CHEAP)
    assert len(s2.computed) == 20 and not s2.failed
    assert answers(tmp_path / "w2") == ref

    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1",
                                  scheduler_port=0, dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1")
        s3 = batch.propose_batch(patterns, tmp_path / "dask", compositions=csv,
                                 scheduler=cluster.scheduler_address, **CHEAP)
    assert len(s3.computed) == 20 and not s3.failed
    assert answers(tmp_path / "dask") == ref
    # the summary tables agree too (timings aside)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in s1.rows]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in s3.rows] == strip


_ORPHAN_PARENT = """
import os, sys, time
from pathlib import Path
from diffpy_diffusion import batch

def record_and_sleep(folder):
    Path(folder, str(os.getpid())).write_text("")
    time.sleep(120)

if __name__ == "__main__":
    list(batch.map_tasks(record_and_sleep, [sys.argv[1]] * 2, workers=2))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_workers_end_when_the_parent_is_killed(tmp_path):
    # a parent killed by SIGKILL runs no clean-up; its spawned workers must not go on computing
    script = tmp_path / "parent.py"
    script.write_text(_ORPHAN_PARENT)
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(pids_dir)], cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(pids_dir.iterdir())) < 2:
            time.sleep(0.1)
        workers = [int(p.name) for p in pids_dir.iterdir()]
        assert len(workers) == 2, "the workers did not start"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for p in left:  # do not leave them behind if the test fails
        os.kill(p, signal.SIGKILL)
    assert not left, f"worker(s) {left} still running 30 s after their parent was killed"


@pytest.mark.slow
def test_killed_halfway_rerun_finishes_only_the_rest(tmp_path, patterns):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "diffpy_diffusion", "propose-batch", str(patterns), "--composition-from",
           str(patterns / "names.csv"), "-w", "1.540598", "--backend", "example", "--n", "4", "--top", "2",
           "--seed", "3", "--screen-only", "--screen-steps", "0", "-o", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if out.is_dir() and len(list(out.glob(f"*/{batch.RESULT_FILE}"))) >= 6:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the batch finished before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob(f"*/{batch.RESULT_FILE}")}
    assert 6 <= len(finished) < 20
    rerun = subprocess.run([*cmd[:-1], "--json"], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert sorted(report["skipped"]) == sorted(finished)
    assert len(report["computed"]) == 20 - len(finished)
    assert not set(report["computed"]) & set(finished)
    # finished results were not rewritten; all 20 are there; no partial folders left behind
    assert all((out / n / batch.RESULT_FILE).stat().st_mtime_ns == t for n, t in finished.items())
    assert len(list(out.glob(f"*/{batch.RESULT_FILE}"))) == 20
    assert [r["status"] for r in report["patterns"]] == ["ok"] * 20
    assert "pattern,composition,status" in (out / batch.SUMMARY_CSV).read_text()


@pytest.mark.slow
def test_cli_dask_scheduler_and_workers(tmp_path, patterns):
    """The CLI options reach the executor: --dask-scheduler on a LocalCluster equals --workers 1."""
    distributed = pytest.importorskip("distributed", reason="dask.distributed not installed (extra 'dask')")
    from click.testing import CliRunner

    from diffpy_diffusion.cli import cli

    files = sorted(patterns.glob("p0[0-2]*.xy"))
    sub = tmp_path / "in"
    sub.mkdir()
    for f in files:
        (sub / f.name).write_bytes(f.read_bytes())
    base = ["propose-batch", str(sub), "--composition-from", str(patterns / "names.csv"), "-w", "1.540598",
            "--backend", "example", "--n", "4", "--top", "2", "--seed", "3", "--screen-only", "--screen-steps", "0",
            "--json"]
    r1 = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / "w1")])
    assert r1.exit_code == 0, r1.output
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  host="127.0.0.1", scheduler_port=0, dashboard_address=None) as cluster:
        r2 = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / "dask"), "--dask-scheduler",
                                      cluster.scheduler_address])
    assert r2.exit_code == 0, r2.output
    assert len(json.loads(r2.output)["computed"]) == 3
    assert answers(tmp_path / "dask") == answers(tmp_path / "w1")
    bad = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / "x"), "--dask-scheduler", "tcp://127.0.0.1:9"])
    assert bad.exit_code == 2 and "Dask scheduler" in bad.output


def test_stale_writer_temp_files_are_removed_but_not_fresh_ones(tmp_path):
    """A kill -9 mid-write leaves ``.summary.csv.XXXX.tmp``; the next run removes it, never a newer one."""
    import time

    from diffpy_diffusion.batch.resume import remove_stale_temp_files

    stale = tmp_path / ".summary.csv.k_h3prhp.tmp"
    stale.write_text("half")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    started = time.time() - 1
    fresh = tmp_path / ".summary.csv.abcdef.tmp"
    fresh.write_text("being written")
    keep = tmp_path / "summary.csv"
    keep.write_text("done")
    remove_stale_temp_files(tmp_path, started)
    assert not stale.exists() and fresh.exists() and keep.exists()
