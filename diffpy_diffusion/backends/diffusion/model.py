"""The denoiser: a periodic, E(3)-invariant message-passing network over all atom pairs of a cell.

Read this file top to bottom; it is the whole network (DiffCSP's CSPNet, Jiao et al. 2023,
rewritten densely for cells of at most a few dozen atoms).

Inputs, per crystal b (padded to N atoms, ``mask`` marks real atoms):

* ``numbers`` (B, N) atomic numbers — fixed by the composition, never diffused;
* ``frac`` (B, N, 3) noisy fractional coordinates on the torus [0, 1)³;
* ``lattice`` (B, 3, 3) noisy *normalised* lattice (rows = vectors, see ``process.py``);
* ``t`` (B,) diffusion time in [0, 1];
* ``cond`` (B, C) condition vector (pattern encoder + composition, see ``conditioning.py``).

Invariances: the network only sees the Gram matrix L Lᵀ (rotation invariant), and
sin/cos of fractional *differences* (translation invariant, periodic); the per-atom outputs
are fractional-coordinate scores (invariant) and the lattice output is A·L with A built from
invariants (rotation equivariant).  Mean aggregation over all j makes it permutation
equivariant.

Speed: the first edge layer acts on [h_i, h_j, Gram, fourier(f_j − f_i)]; its h_i and h_j
blocks are applied once per atom and broadcast ("split edge linear"), so the per-edge cost is
one small Fourier projection and one hidden×hidden matmul.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    hidden: int = 224  # node/edge width (224 x 4 keeps a resumable checkpoint under 30 MB)
    layers: int = 4  # message-passing layers
    n_freq: int = 10  # Fourier frequencies k = 1..n_freq of fractional differences
    time_dim: int = 128  # sinusoidal time embedding width
    cond_dim: int = 224  # condition vector width (pattern + composition)
    max_z: int = 100  # atomic numbers 1..max_z-1
    pdf_encoder: bool = False  # a second pattern encoder for PDFs (pdf_adapter.py); PXRD never uses it

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style embedding of t ∈ [0, 1] (scaled to 0..1000), shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1)


def fourier(d: torch.Tensor, n_freq: int) -> torch.Tensor:
    """sin/cos(2πk d), k = 1..n_freq, of fractional differences d (..., 3) -> (..., 6 n_freq)."""
    k = torch.arange(1, n_freq + 1, device=d.device, dtype=d.dtype)
    x = 2 * math.pi * d[..., None] * k  # (..., 3, K)
    return torch.cat([x.sin(), x.cos()], dim=-1).flatten(-2)


class MessageLayer(nn.Module):
    """One CSPNet layer: edge MLP over all pairs, mean aggregation, residual node MLP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H = cfg.hidden
        self.norm = nn.LayerNorm(H)
        # split edge linear: W [h_i | h_j | gram | fourier] = W_i h_i + W_j h_j + W_g g + W_f f
        self.e_i = nn.Linear(H, H)
        self.e_j = nn.Linear(H, H, bias=False)
        self.e_g = nn.Linear(9, H, bias=False)
        self.e_f = nn.Linear(6 * cfg.n_freq, H, bias=False)
        self.e_out = nn.Linear(H, H)
        self.node = nn.Sequential(nn.Linear(2 * H, H), nn.SiLU(), nn.Linear(H, H))
        self.film = nn.Linear(H, H)  # time+condition injected in every layer

    def forward(self, h, ff, gram, tc, mask):
        # h (B,N,H); ff (B,N,N,6K) Fourier features; gram (B,9); tc (B,H); mask (B,N) bool
        x = self.norm(h) + self.film(tc)[:, None]
        if torch.is_grad_enabled():  # training: plain ops, autograd keeps every intermediate
            e = self.e_i(x)[:, :, None] + self.e_j(x)[:, None, :] + self.e_g(gram)[:, None, None] + self.e_f(ff)
            e = F.silu(self.e_out(F.silu(e)))  # (B,N,N,H)
            m = mask[:, None, :, None].to(e.dtype)  # average over real neighbours j
            agg = (e * m).sum(2) / m.sum(2).clamp(min=1)
        else:
            # sampling: the same function with the (B,N,N,H) edge tensor updated in place and the masked
            # mean as one matmul; a third less CPU time for 20-atom cells (fewer passes over memory)
            e = self.e_f(ff)
            e += (self.e_i(x) + self.e_g(gram)[:, None])[:, :, None]
            e += self.e_j(x)[:, None, :]
            e = F.silu(self.e_out(F.silu(e, inplace=True)), inplace=True)
            m = mask.to(e.dtype)
            agg = (m[:, None, None, :] @ e).squeeze(-2) / m.sum(1).clamp(min=1)[:, None, None]
        return h + self.node(torch.cat([x, agg], dim=-1))


class Denoiser(nn.Module):
    """Predicts the lattice noise ε_L (B,3,3) and the normalised coordinate score (B,N,3)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden
        self.atom_emb = nn.Embedding(cfg.max_z, H)
        self.tc = nn.Sequential(nn.Linear(cfg.time_dim + cfg.cond_dim + H, H), nn.SiLU(), nn.Linear(H, H))
        self.inp = nn.Linear(2 * H, H)
        self.layers = nn.ModuleList(MessageLayer(cfg) for _ in range(cfg.layers))
        self.out_norm = nn.LayerNorm(H)
        self.coord_out = nn.Linear(H, 3, bias=False)
        self.lattice_out = nn.Sequential(nn.Linear(H, H), nn.SiLU(), nn.Linear(H, 9, bias=False))

    def forward(self, numbers, frac, lattice, t, cond, mask):
        B, N = numbers.shape
        m = mask.to(frac.dtype)[..., None]
        a = self.atom_emb(numbers)  # (B,N,H)
        comp = (a * m).sum(1) / m.sum(1)  # composition embedding: mean element embedding
        tc = self.tc(torch.cat([sinusoidal(t, self.cfg.time_dim), cond, comp], dim=-1))  # (B,H)
        h = self.inp(torch.cat([a, tc[:, None].expand(B, N, -1)], dim=-1))
        gram = (lattice @ lattice.transpose(1, 2)).reshape(B, 9)  # rotation-invariant lattice features
        ff = fourier(frac[:, None, :, :] - frac[:, :, None, :], self.cfg.n_freq)  # (B,N,N,6K): f_j - f_i
        for layer in self.layers:
            h = layer(h, ff, gram, tc, mask)
        h = self.out_norm(h)
        eps_f = self.coord_out(h)  # (B,N,3)
        pooled = (h * m).sum(1) / m.sum(1)
        A = self.lattice_out(pooled).reshape(B, 3, 3)
        eps_l = A @ lattice  # equivariant: rotating the rows of L rotates the output rows
        return eps_l, eps_f * m


class CrystalDiffusionModel(nn.Module):
    """Pattern encoder + denoiser: the full network that a checkpoint holds."""

    def __init__(self, cfg: ModelConfig, encoder_width: int = 64):
        super().__init__()
        from .conditioning import PatternEncoder

        self.cfg = cfg
        self.encoder = PatternEncoder(cfg.cond_dim, encoder_width)
        # fine-tuned on the implied powder patterns of PDFs; None in checkpoints trained on PXRD only
        self.pdf_encoder = PatternEncoder(cfg.cond_dim, encoder_width) if cfg.pdf_encoder else None
        self.denoiser = Denoiser(cfg)

    def encode(self, pattern, drop=None, kind: str = "xrd"):
        """The condition vector of ``pattern``; ``kind="pdf"`` uses the PDF encoder when the model has one.

        Dropped rows (``drop``) always get the PXRD encoder's "no pattern" embedding, the one
        classifier-free guidance was trained against.
        """
        if kind == "pdf" and self.pdf_encoder is not None:
            c = self.pdf_encoder(pattern)
            if drop is not None:
                c = torch.where(drop[:, None], self.encoder.null.to(c.dtype).expand_as(c), c)
            return c
        return self.encoder(pattern, drop)

    def forward(self, numbers, frac, lattice, t, mask, pattern=None, drop=None, cond=None):
        """Denoise; the condition is ``cond`` (from :meth:`encode`) or encoded here from ``pattern``."""
        if cond is None:
            cond = self.encoder(pattern, drop)
        return self.denoiser(numbers, frac, lattice, t, cond, mask)
