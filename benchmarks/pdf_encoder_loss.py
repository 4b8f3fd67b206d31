"""Denoising loss on Debye-cluster PDFs (the evaluation's 5 nm simulation) of validation-split cells.

For a checkpoint with a PDF encoder (``backends/diffusion/pdf_adapter.py``): the lattice and
coordinate loss terms, averaged over 64 validation cells at 16 fixed diffusion times and split into
the low, middle and high thirds of t, with the condition from the PDF encoder, from the PXRD
encoder on the same implied pattern, and from the "no pattern" embedding.

    DIFFPY_DIFFUSION_DATA=<datasets> python benchmarks/pdf_encoder_loss.py runs/pdf/pdf_encoder.pt
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

from diffpy_diffusion.backends.diffusion.checkpoint import load_checkpoint
from diffpy_diffusion.backends.diffusion.conditioning import canonical_pattern
from diffpy_diffusion.backends.diffusion.data import canonical_arrays
from diffpy_diffusion.backends.diffusion.model import CrystalDiffusionModel, ModelConfig
from diffpy_diffusion.backends.diffusion.process import Process, ProcessConfig, normalise_lattice
from diffpy_diffusion.evaluate.protocol import pool_validation_entries
from diffpy_diffusion.evaluate.targets import simulate_pdf_target

N_CELLS = 64
T_GRID = torch.linspace(0.02, 0.98, 16)
THIRDS = (slice(0, 5), slice(5, 11), slice(11, 16))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--size", type=float, default=5.0, help="particle diameter, nm")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    ck = load_checkpoint(args.checkpoint)
    cfg = ck["config"]
    model = CrystalDiffusionModel(ModelConfig(**cfg["model"]))
    model.load_state_dict(ck["ema"])
    model.eval()
    proc = Process(ProcessConfig(**cfg["process"]))
    cells = []
    for i, e in enumerate(pool_validation_entries(2 * N_CELLS)):
        s = e.structure()
        if len(s) <= 20:
            cells.append((*canonical_arrays(s), canonical_pattern(simulate_pdf_target(s, args.size, seed=i))))
        if len(cells) >= N_CELLS:
            break
    B = len(T_GRID)
    for name in ("pdf", "xrd", "null"):
        lat_loss, coord_loss = np.zeros(B), np.zeros(B)
        g = torch.Generator().manual_seed(0)
        for lat, frac, z, pat in cells:
            n = len(z)
            numbers = torch.as_tensor(z, dtype=torch.long)[None].expand(B, n)
            fr = torch.as_tensor(frac)[None].expand(B, n, 3).contiguous()
            la = torch.as_tensor(lat)[None].expand(B, 3, 3).contiguous()
            mask = torch.ones(B, n, dtype=torch.bool)
            with torch.no_grad():
                c = model.encode(torch.as_tensor(pat)[None].expand(B, 3, -1), torch.full((B,), name == "null"),
                                 kind="pdf" if name == "pdf" else "xrd")
                lat_t, frac_t, eps_l, target_f = proc.noise(normalise_lattice(la, torch.full((B,), n)), fr, mask,
                                                            T_GRID, g)
                pred_l, pred_f = model(numbers, frac_t, lat_t, T_GRID, mask, cond=c)
            lat_loss += ((pred_l - eps_l) ** 2).mean((1, 2)).numpy()
            coord_loss += ((pred_f - target_f) ** 2).mean((1, 2)).numpy()
        lat_loss, coord_loss = lat_loss / len(cells), coord_loss / len(cells)
        print(f"{name:5s} lattice (low/mid/high t) {[round(float(lat_loss[s].mean()), 4) for s in THIRDS]}  "
              f"coordinates {[round(float(coord_loss[s].mean()), 4) for s in THIRDS]}  ({len(cells)} cells)")


if __name__ == "__main__":
    main()
