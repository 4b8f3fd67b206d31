"""A checkpoint save interrupted at any point leaves a checkpoint that loads with its training state.

``save_checkpoint`` writes three files (inference part, ``.train.pt``, ``.optim.pt``).  Here a
"crash" is injected before each file operation in turn (``os.replace`` / ``torch.save`` raising),
after a good save at step 1; the files on disk must then load, with training state, at step 1 or 2,
never a mix -- the property ``train --resume`` needs after a kill -9.
"""

from __future__ import annotations

import os

import pytest
import torch


class Crash(BaseException):
    pass


def _save(ck, path, step):
    w = {"w": torch.full((3,), float(step))}
    opt = {"param_groups": [{"lr": 0.1, "params": [0]}], "state": {0: {"exp_avg": torch.full((3,), float(step)),
                                                                       "step": torch.tensor(float(step))}}}
    ck.save_checkpoint(path, config={"h": 1}, step=step, epoch=0, ema=w, model=w, optim=opt,
                       rng={"torch": torch.get_rng_state()})


@pytest.mark.parametrize("where", ["replace", "save"])
def test_every_crash_point_leaves_a_loadable_checkpoint(tmp_path, monkeypatch, where):
    from diffpy_diffusion.backends.diffusion import checkpoint as ck

    n_ops = 0
    for k in range(1, 20):
        path = tmp_path / f"k{k}" / "last.pt"
        _save(ck, path, 1)
        calls = {"n": 0}
        real_replace, real_save = os.replace, torch.save

        def counting(real, calls=calls, k=k):
            def f(*a, **kw):
                calls["n"] += 1
                if calls["n"] == k:
                    raise Crash()
                return real(*a, **kw)
            return f

        if where == "replace":
            monkeypatch.setattr(ck.os, "replace", counting(real_replace))
        else:
            monkeypatch.setattr(torch, "save", counting(real_save))
        try:
            _save(ck, path, 2)
            crashed = False
        except Crash:
            crashed = True
        monkeypatch.undo()
        got = ck.load_checkpoint(path, with_training_state=True)
        step = int(got["step"])
        assert step in (1, 2)
        assert float(got["model"]["w"][0]) == step and float(got["ema"]["w"][0]) == step
        assert float(got["optim"]["state"][0]["exp_avg"][0]) == step
        if not crashed:
            n_ops = k - 1
            break
    assert n_ops >= 3, "the save did fewer file operations than expected"
