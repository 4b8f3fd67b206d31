"""``evaluate`` on a Dask cluster gives the same per-target records as the local run.

run_evaluation maps its targets through :func:`diffpy_diffusion.batch.map_tasks`; a Dask
LocalCluster on loopback stands in for a real cluster.  Tiny settings: 2 targets, the
``example`` backend, no refinement.
"""

from __future__ import annotations

import inspect

import pytest


@pytest.mark.slow
def test_evaluate_dask_equals_local(shared_data):
    distributed = pytest.importorskip("distributed", reason="dask.distributed not installed (extra 'dask')")
    from diffpy_diffusion import evaluate

    assert "scheduler" in inspect.signature(evaluate.run_evaluation).parameters
    kw = dict(dataset="mp20-test", data_dir=shared_data, limit=2, size_nm=10.0, backend="example", n=3, top=2,
              refine_top=0, seed=0, quiet=True)

    def records(res):
        return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in res["records"]),
                      key=lambda r: (r["index"], r["backend"]))

    local = evaluate.run_evaluation(**kw, workers=1)
    assert len(local["records"]) == 2 and not any(r["error"] for r in local["records"])
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  host="127.0.0.1", scheduler_port=0, dashboard_address=None) as cluster:
        remote = evaluate.run_evaluation(**kw, scheduler=cluster.scheduler_address)
    assert records(remote) == records(local)
