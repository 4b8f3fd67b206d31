"""Training of the diffusion backend (``diffpy-diffuse train`` and ``python -m ...train``).

One code path for one CPU process, one GPU, or many processes under ``torchrun`` (DDP with
gloo on CPU, nccl on GPU)::

    python -m diffpy_diffusion.backends.diffusion.train --data $DIFFPY_DIFFUSION_DATA --out runs/r1
    torchrun --nproc_per_node 2 -m diffpy_diffusion.backends.diffusion.train --data ... --out runs/r1
    python -m diffpy_diffusion.backends.diffusion.train --out runs/r1 --resume   # continue where it stopped

The data is the training pool's array cache (``data.build_pool_arrays``, in the user cache
folder); ``--data`` may also be the data folder (default ``$DIFFPY_DIFFUSION_DATA``), in which
case the cache is built first when it is missing (needs pymatgen).  This
module imports neither pymatgen nor diffpy, so it runs on a bare GPU machine with torch.

Per step: a batch of cells (grouped by atom count to limit padding), a random PXRD pattern per
cell simulated from its reflection list (``conditioning.simulate_training_patterns``), the
pattern condition dropped with probability ``p_uncond`` (classifier-free guidance), random
diffusion times, and the DiffCSP loss.  bf16 autocast, AdamW, warm-up + cosine learning rate
over ``--steps`` or ``--time-budget`` seconds, EMA weights, validation loss (EMA weights,
fixed noise) once per epoch, ``log.csv`` in the output folder, checkpoints every
``--ckpt-every`` seconds and at the end (``last.pt`` + ``last.train.pt``).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


def _usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)

@dataclass
class TrainConfig:
    data: str = ""  # pool .npz (or the data folder holding mp20/)
    out: str = "runs/diffusion"
    batch_size: int = 64  # cells per process per step
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 300
    steps: int = 0  # 0 = no step limit
    epochs: int = 0  # 0 = no epoch limit
    time_budget: float = 0.0  # s of training (across resumes); 0 = none
    ckpt_every: float = 60.0  # s
    ema_decay: float = 0.999
    p_uncond: float = 0.15
    val_fraction: float = 0.02
    val_max: int = 512
    limit: int = 0  # use only the first N structures (tests)
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast
    log_every: int = 50
    progress: str = "auto"  # auto|rich|plain|none
    hidden: int = 224
    layers: int = 4
    n_freq: int = 10
    grad_clip: float = 1.0
    threads: int = 0
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- data
class PoolTensors:
    """The pool's arrays padded into dense tensors on the training device."""

    def __init__(self, npz_path, device, limit: int = 0, max_atoms: int = 20):
        import torch

        with np.load(npz_path, allow_pickle=False) as zf:  # decompress every array once
            z = {k: zf[k] for k in zf.files}
        nat = z["natoms"].astype(np.int64)
        B = len(nat) if not limit else min(limit, len(nat))
        off = np.concatenate([[0], np.cumsum(nat)])
        frac = np.zeros((B, max_atoms, 3), np.float32)
        num = np.zeros((B, max_atoms), np.int64)
        for b in range(B):
            frac[b, : nat[b]] = z["frac"][off[b] : off[b + 1]]
            num[b, : nat[b]] = z["numbers"][off[b] : off[b + 1]]
        self.ids = z["ids"][:B]
        self.natoms = torch.as_tensor(nat[:B], device=device)
        self.lattice = torch.as_tensor(z["lattice"][:B].astype(np.float32), device=device)
        self.frac = torch.as_tensor(frac, device=device)
        self.numbers = torch.as_tensor(num, device=device)
        rn = z["refl_n"].astype(np.int64)
        roff = np.concatenate([[0], np.cumsum(rn)])
        K = int(rn[:B].max())
        rq = np.zeros((B, K), np.float32)
        ri = np.zeros((B, K), np.float32)
        qb = float(z["q_bin"])
        for b in range(B):
            rq[b, : rn[b]] = z["refl_bin"][roff[b] : roff[b + 1]].astype(np.float32) * qb
            ri[b, : rn[b]] = z["refl_int"][roff[b] : roff[b + 1]].astype(np.float32)
        self.refl_q = torch.as_tensor(rq, device=device)
        self.refl_i = torch.as_tensor(ri, device=device)
        self.refl_mask = torch.as_tensor(np.arange(K)[None] < rn[:B, None], device=device)
        self.elements = sorted(set(int(v) for v in np.unique(z["numbers"])))

    def __len__(self):
        return len(self.natoms)

    def batch(self, idx):
        """Cells ``idx`` padded to the largest atom count among them."""
        n = int(self.natoms[idx].max())
        mask = (self._ar(n)[None] < self.natoms[idx][:, None])
        rn = int(self.refl_mask[idx].sum(1).max())
        return dict(numbers=self.numbers[idx, :n], frac=self.frac[idx, :n], lattice=self.lattice[idx],
                    natoms=self.natoms[idx], mask=mask, refl_q=self.refl_q[idx, :rn], refl_i=self.refl_i[idx, :rn],
                    refl_mask=self.refl_mask[idx, :rn])

    def _ar(self, n):
        import torch

        return torch.arange(n, device=self.natoms.device)


def epoch_batches(natoms: np.ndarray, batch_size: int, rng: np.random.Generator, chunk: int = 64):
    """Shuffled batches, each drawn from cells of similar size (sort within chunks of 64 batches)."""
    perm = rng.permutation(len(natoms))
    out = []
    span = batch_size * chunk
    for s in range(0, len(perm), span):
        part = perm[s : s + span]
        part = part[np.argsort(natoms[part], kind="stable")]
        out += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    out = [b for b in out if len(b) == batch_size] or out  # drop ragged tails when possible
    rng.shuffle(out)
    return out


# ----------------------------------------------------------------------------- helpers
def _setup_distributed(device_arg: str):
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    if device_arg.startswith("cuda"):
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def bf16_autocast_pays(reps: int = 5) -> bool:
    """True when bf16 autocast speeds this CPU up (a timed probe of the denoiser's matrix sizes).

    CPUs without native bf16 (AVX2 only, e.g. AMD Zen 3) emulate it: measured 10x *slower* than
    fp32 for the denoiser's forward + backward on such a machine, while CPUs with AVX512-BF16 or
    AMX gain 2-4x (the design's compute budget).  Cheap (~0.1 s), so it is asked, not guessed.
    """
    import torch

    a = torch.randn(1024, 224)
    w = torch.randn(224, 224)

    def best(fn):
        t = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
        return min(t)

    def f32():
        (a @ w @ w).sum()

    def b16():
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            (a @ w @ w).sum()

    f32()
    b16()
    return best(b16) < best(f32)


def _lr_at(cfg: TrainConfig, step: int, elapsed: float) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup))
    prog = 0.0
    if cfg.steps:
        prog = max(prog, step / cfg.steps)
    if cfg.time_budget:
        prog = max(prog, elapsed / cfg.time_budget)
    prog = min(prog, 1.0)
    return cfg.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * prog)))


def compute_loss(model, process, b, cfg, generator=None, t=None, drop=None, cond=None):
    """The DiffCSP loss of one batch.

    The condition is ``cond`` when given (an encoded condition vector, e.g. the PDF encoder's in
    ``pdf_adapter.py``); otherwise patterns are simulated here from the batch's reflections and
    dropped with probability ``cfg.p_uncond`` (or where ``drop`` says).
    """
    import torch

    from .conditioning import simulate_training_patterns
    from .process import normalise_lattice

    B = b["lattice"].shape[0]
    dev = b["lattice"].device
    pattern = None
    with torch.no_grad():
        if cond is None:
            pattern = simulate_training_patterns(b["refl_q"], b["refl_i"], b["refl_mask"], generator)
        if t is None:
            t = torch.rand(B, device=dev, generator=generator).clamp(min=1e-3)
        if drop is None and cond is None:
            drop = torch.rand(B, device=dev, generator=generator) < cfg.p_uncond
        lat_n = normalise_lattice(b["lattice"], b["natoms"])
        lat_t, frac_t, eps_l, target_f = process.noise(lat_n, b["frac"], b["mask"], t, generator)
    amp = cfg.amp
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
        pred_l, pred_f = model(b["numbers"], frac_t, lat_t, t, b["mask"], pattern=pattern, drop=drop, cond=cond)
    l_lat, l_f = process.loss(pred_l, pred_f, eps_l, target_f, b["mask"])
    return l_lat, l_f


class EMA:
    def __init__(self, model, decay):
        import torch

        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        self.frozen: set[str] = set()  # keys kept as they are (x·d + x·(1 − d) is not x in floating point)
        self._torch = torch

    @property
    def state(self):
        return self.shadow

    def update(self, model, step):
        d = min(self.decay, (1 + step) / (10 + step))  # short warm-up of the average
        with self._torch.no_grad():
            for k, v in model.state_dict().items():
                if k in self.frozen:
                    continue
                if v.is_floating_point():
                    self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
                else:
                    self.shadow[k].copy_(v)


def _progress(cfg, rank, total):
    mode = cfg.progress
    if rank != 0 or mode == "none":
        return None
    if mode == "auto":
        mode = "rich" if sys.stderr.isatty() else "plain"
    if mode != "rich":
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    p = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), transient=False)
    p.start()
    p.add_task("train", total=total or None, info="")
    return p


# ----------------------------------------------------------------------------- main loop
def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train (or resume) and return a summary dict (steps, epochs, final losses, cells/s)."""
    import torch

    from . import checkpoint as ckpt
    from .model import CrystalDiffusionModel, ModelConfig
    from .process import Process, ProcessConfig

    # 0: every core this process may use (the CLI sets one thread for the small tensors of the
    # other commands; training's large matrix products do use more)
    torch.set_num_threads(cfg.threads or _usable_cores())
    rank, world, device = _setup_distributed(cfg.device)
    if cfg.amp and device.type == "cpu" and not bf16_autocast_pays():
        cfg.amp = False
        if rank == 0:
            print("note: bf16 autocast is slower than fp32 on this CPU (no native bf16); training in fp32",
                  flush=True)
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    data_path = Path(cfg.data)
    if data_path.is_dir():  # the data folder: build the array cache once (needs pymatgen)
        from .data import build_pool_arrays, pool_cache_path

        if not (data_path / "mp20").is_dir() and (data_path.parent / "mp20").is_dir():
            data_path = data_path.parent  # e.g. --data <data>/mp20: the pool uses the whole data folder
        cache = pool_cache_path()
        if not cache.is_file() and rank == 0:
            build_pool_arrays(data_path, cache)
        if world > 1:
            torch.distributed.barrier()
        data_path = cache
    pool = PoolTensors(data_path, device, limit=cfg.limit)
    from ...datasets import split_ids

    is_val = split_ids(pool.ids, cfg.val_fraction) if len(pool) > 50 else np.zeros(len(pool), bool)
    train_idx = np.flatnonzero(~is_val)
    val_idx = np.flatnonzero(is_val)[: cfg.val_max]
    nat_np = pool.natoms.cpu().numpy()

    mcfg = ModelConfig(hidden=cfg.hidden, layers=cfg.layers, n_freq=cfg.n_freq, cond_dim=cfg.hidden)
    pcfg = ProcessConfig()
    torch.manual_seed(cfg.seed)
    model = CrystalDiffusionModel(mcfg).to(device)
    process = Process(pcfg, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay)
    step, epoch, elapsed0 = 0, 0, 0.0
    last = out / "last.pt"
    if resume:
        if not last.is_file():
            from ...errors import CheckpointError

            raise CheckpointError(f"{last}: nothing to resume from (no checkpoint in {out})")
        ck = ckpt.load_checkpoint(last, with_training_state=True)
        model.load_state_dict(ck["model"])
        if ck["config"]["model"].get("pdf_encoder"):
            # a PDF encoder fine-tuned by pdf_adapter.py: carried along frozen (its weights are in the
            # EMA only); it was fitted to the denoiser it started from, so re-run pdf_adapter afterwards
            from .conditioning import PatternEncoder

            mcfg.pdf_encoder = True
            model.pdf_encoder = PatternEncoder(mcfg.cond_dim).to(device)
            model.pdf_encoder.load_state_dict({k[len("pdf_encoder."):]: v for k, v in ck["ema"].items()
                                               if k.startswith("pdf_encoder.")})
            model.pdf_encoder.requires_grad_(False)
            if rank == 0:
                print("note: the checkpoint's PDF encoder is kept frozen; fine-tune it again after this run "
                      "(python -m diffpy_diffusion.backends.diffusion.pdf_adapter train ...)", flush=True)
        ema.shadow = {k: v.to(device).float() for k, v in ck["ema"].items()}
        ema.frozen = {k for k in ema.shadow if k.startswith("pdf_encoder.")}
        if ck["optim"] is not None:
            opt.load_state_dict(ck["optim"])
        step, epoch = int(ck["step"]), int(ck["epoch"])
        elapsed0 = float(ck["meta"].get("elapsed_s", 0.0))
        if "torch" in ck["rng"]:
            torch.set_rng_state(ck["rng"]["torch"])
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    core = model.module if world > 1 else model
    full_config = {"model": mcfg.to_dict(), "process": pcfg.to_dict(),
                   "train": {k: v for k, v in asdict(cfg).items() if k != "extra"},
                   "elements": pool.elements, "max_atoms": 20, "n_train": int(len(train_idx)), "world": world}
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed * 1000 + rank + 7919 * step)

    def save(tag="last"):
        if rank != 0:
            return
        meta = {"elapsed_s": elapsed0 + (time.time() - t_start), "cells_seen": cells_seen_total,
                "device": str(device), "world": world}
        ckpt.save_checkpoint(out / f"{tag}.pt", config=full_config, step=step, epoch=epoch, ema=ema.state,
                             model=core.state_dict(), optim=opt.state_dict(),
                             rng={"torch": torch.get_rng_state()}, meta=meta)

    def validate():
        if len(val_idx) == 0:
            return float("nan")
        backup = {k: v.clone() for k, v in core.state_dict().items()}
        core.load_state_dict({k: v.to(backup[k].dtype) for k, v in ema.state.items()})
        core.eval()
        vg = torch.Generator(device=device)
        vg.manual_seed(12345)
        tot, n = 0.0, 0
        with torch.no_grad():
            for s in range(0, len(val_idx), cfg.batch_size):
                idx = torch.as_tensor(val_idx[s : s + cfg.batch_size], device=device)
                b = pool.batch(idx)
                B = len(idx)
                t = (torch.arange(B, device=device).float() + 0.5) / B
                drop = torch.zeros(B, dtype=torch.bool, device=device)
                l_lat, l_f = compute_loss(core, process, b, cfg, vg, t=t, drop=drop)
                tot += float(l_lat + l_f) * B
                n += B
        core.load_state_dict(backup)
        core.train()
        return tot / n

    log_path = out / "log.csv"
    new_log = rank == 0 and not (resume and log_path.is_file())
    logf = open(log_path, "w" if new_log else "a", newline="") if rank == 0 else None
    logw = csv.writer(logf) if logf else None
    if new_log:
        logw.writerow(["step", "epoch", "loss", "loss_lattice", "loss_coord", "lr", "cells_per_s", "val_loss",
                       "elapsed_s"])
    steps_per_epoch = max(1, len(train_idx) // (cfg.batch_size * world))
    total_steps = cfg.steps or (cfg.epochs * steps_per_epoch if cfg.epochs else 0)
    prog = _progress(cfg, rank, total_steps)
    if prog:
        prog.update(0, completed=step)
    t_start = time.time()
    last_ck = t_start
    cells_seen_total = 0
    win_cells, win_t = 0, time.time()
    run_l = None
    val = float("nan")
    done = False
    model.train()
    while not done:
        rng = np.random.default_rng(cfg.seed * 100003 + epoch)
        batches = epoch_batches(nat_np[train_idx], cfg.batch_size, rng)
        batches = batches[rank::world][:steps_per_epoch]
        for bi in batches:
            elapsed = elapsed0 + time.time() - t_start
            if (cfg.steps and step >= cfg.steps) or (cfg.time_budget and elapsed >= cfg.time_budget):
                done = True
                break
            lr = _lr_at(cfg, step, elapsed)
            for g in opt.param_groups:
                g["lr"] = lr
            b = pool.batch(torch.as_tensor(train_idx[bi], device=device))
            l_lat, l_f = compute_loss(model, process, b, cfg, gen)
            loss = l_lat + l_f
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            ema.update(core, step)
            step += 1
            nb = len(bi) * world
            cells_seen_total += nb
            win_cells += nb
            if step % cfg.log_every == 0 or step == 1:
                lv, llv, lfv = loss.item(), l_lat.item(), l_f.item()
                run_l = lv if run_l is None else 0.9 * run_l + 0.1 * lv
                now = time.time()
                cps = win_cells / max(now - win_t, 1e-9)
                win_cells, win_t = 0, now
                if rank == 0:
                    logw.writerow([step, epoch, f"{lv:.5f}", f"{llv:.5f}", f"{lfv:.5f}", f"{lr:.3e}", f"{cps:.1f}", "",
                                   f"{elapsed:.1f}"])
                    logf.flush()
                    info = f"loss {run_l:.4f} (lat {llv:.3f} coord {lfv:.3f}) | {cps:.0f} cells/s | val {val:.4f}"
                    if prog:
                        prog.update(0, completed=step, info=info)
                    elif cfg.progress != "none":
                        print(f"step {step} epoch {epoch} {info} | lr {lr:.2e} | {elapsed:.0f}s", flush=True)
            elif prog:
                prog.update(0, completed=step)
            if rank == 0 and time.time() - last_ck >= cfg.ckpt_every:
                save()
                last_ck = time.time()
        else:
            epoch += 1
            val = validate()
            if rank == 0:
                elapsed = elapsed0 + time.time() - t_start
                logw.writerow([step, epoch, "", "", "", "", "", f"{val:.5f}", f"{elapsed:.1f}"])
                logf.flush()
                if not prog and cfg.progress != "none":
                    print(f"epoch {epoch} done: step {step} val_loss {val:.4f} ({elapsed:.0f}s)", flush=True)
            if cfg.epochs and epoch >= cfg.epochs:
                done = True
    if not math.isfinite(val) or (epoch == 0):
        val = validate()
    save()
    if prog:
        prog.stop()
    if logf:
        logf.close()
    wall = time.time() - t_start
    summary = {"step": step, "epoch": epoch, "val_loss": val, "train_loss": run_l,
               "cells_per_s": cells_seen_total / max(wall, 1e-9), "wall_s": wall, "checkpoint": str(last),
               "device": str(device), "world": world}
    if world > 1:  # DDP must keep the replicas identical: compare every rank's weights with rank 0's
        import torch.distributed as dist

        flat = torch.cat([p.detach().float().flatten() for p in core.parameters()])
        ref = flat.clone()
        dist.broadcast(ref, 0)
        diff = torch.tensor([float((flat - ref).abs().max())], device=flat.device)
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        summary["replica_max_abs_diff"] = float(diff)
        dist.barrier()
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffpy-diffuse train", description=__doc__.split("\n\n")[0])
    d = TrainConfig()
    p.add_argument("--data", default=d.data, help="pool .npz cache or data folder (default: the cache, built from "
                   "$DIFFPY_DIFFUSION_DATA when missing)")
    p.add_argument("--out", default=d.out, help="output folder (checkpoints, log.csv)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    for name in ("batch_size", "warmup", "steps", "epochs", "limit", "seed", "log_every", "hidden", "layers", "n_freq",
                 "threads", "val_max"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay", "time_budget", "ckpt_every", "ema_decay", "p_uncond", "val_fraction",
                 "grad_clip"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--device", default=d.device)
    p.add_argument("--no-amp", dest="amp", action="store_false", help="train in fp32 (default: bf16 autocast)")
    p.add_argument("--progress", default=d.progress, choices=["auto", "rich", "plain", "none"])
    return p


def main(argv: list[str] | None = None, **overrides) -> dict:
    """Entry point: ``main(["--out", "runs/x", ...])`` or ``main(out="runs/x", steps=100)``."""
    args = build_parser().parse_args(argv if argv is not None else ([] if overrides else None))
    kw = vars(args)
    resume = kw.pop("resume") or bool(overrides.pop("resume", False))
    kw.update(overrides)
    if not kw["data"]:
        from .data import pool_cache_path

        cache = pool_cache_path()
        if cache.is_file():
            kw["data"] = str(cache)
        else:  # build it from the data folder; a one-line error names DIFFPY_DIFFUSION_DATA when unset
            from ...datasets import data_dir

            kw["data"] = str(data_dir())
    cfg = TrainConfig(**kw)
    summary = train(cfg, resume=resume)
    import torch.distributed as dist

    # why is_available first: torch builds without distributed support lack is_initialized
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0 and cfg.progress != "none":
        fields = (f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())
        print("summary: " + ", ".join(fields), flush=True)
    return summary


if __name__ == "__main__":
    main()
