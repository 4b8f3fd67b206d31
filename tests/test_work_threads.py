"""Work threads (``threads.map_in_threads``): the screen's candidates shared among threads, same results."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from diffpy_diffusion.threads import WORK_THREADS_ENV, map_in_threads, work_threads


def _names(rows):
    time.sleep(0.02)  # long enough that every thread takes a part
    return [(i, threading.current_thread().name) for i in rows]


def test_results_in_index_order_from_several_threads(monkeypatch):
    monkeypatch.setenv(WORK_THREADS_ENV, "3")
    out = map_in_threads(_names, 100)
    assert [i for i, _ in out] == list(range(100))
    assert len({name for _, name in out}) > 1  # shared among threads
    assert all(name != threading.current_thread().name for _, name in out)


def test_one_thread_or_few_items_run_inline(monkeypatch):
    monkeypatch.setenv(WORK_THREADS_ENV, "1")
    assert {name for _, name in map_in_threads(_names, 100)} == {threading.current_thread().name}
    monkeypatch.setenv(WORK_THREADS_ENV, "4")
    assert {name for _, name in map_in_threads(_names, 10)} == {threading.current_thread().name}
    assert map_in_threads(_names, 0) == []


def test_default_is_the_usable_cpus_capped(monkeypatch):
    import os

    from diffpy_diffusion.threads import MAX_WORK_THREADS

    monkeypatch.delenv(WORK_THREADS_ENV, raising=False)
    assert work_threads() == max(1, min(len(os.sched_getaffinity(0)), MAX_WORK_THREADS))


def test_bad_variable_names_itself(monkeypatch):
    monkeypatch.setenv(WORK_THREADS_ENV, "two")
    with pytest.raises(ValueError, match=WORK_THREADS_ENV):
        work_threads()


def test_worker_processes_use_one_work_thread(monkeypatch):
    import os

    from diffpy_diffusion.batch.executor import _worker_init

    monkeypatch.setenv(WORK_THREADS_ENV, "4")
    _worker_init(None)
    assert os.environ[WORK_THREADS_ENV] == "1"


def test_screen_is_the_same_with_one_or_several_threads(monkeypatch):
    from diffpy_diffusion import screen as S
    from diffpy_diffusion.testing import noisy_pxrd
    from diffpy_diffusion.types import Proposal

    truth = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    obs = noisy_pxrd(truth, size_nm=5.0)
    rng = np.random.default_rng(0)
    props = []
    for _ in range(40):  # rock salts, tetragonal cells (axial variants) and random cells
        a, c = 5.64 * rng.uniform(0.93, 1.07), 5.64 * rng.uniform(0.85, 1.15)
        lat = Lattice.cubic(a) if rng.random() < 0.3 else Lattice.tetragonal(a, c)
        props.append(Proposal(Structure(lat, truth.species, truth.frac_coords), "t"))
    runs = {}
    for n in ("1", "3"):
        monkeypatch.setenv(WORK_THREADS_ENV, n)
        res = S.screen(obs, props, k=5, gradient_steps=0)
        runs[n] = [(p.scores["screen_rwp"], p.structure.lattice.abc) for p in res.ranked]
        runs[n + "pre"] = S.prescreen(obs, [p.structure for p in props], chunk=4)
    assert runs["1"] == runs["3"]
    np.testing.assert_array_equal(runs["1pre"], runs["3pre"])
