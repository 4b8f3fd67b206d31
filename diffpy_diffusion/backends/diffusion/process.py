"""The joint diffusion process of DiffCSP (Jiao et al., NeurIPS 2023).

* **Lattice**: DDPM with a cosine schedule on the *normalised* lattice
  L̃ = L / (a₀ N^{1/3}) (rows = lattice vectors in Å, N atoms, a₀ = 2.5 Å), so cells of any size
  start near unit scale.  The network predicts the noise ε.
* **Fractional coordinates**: score matching with a wrapped normal on the torus [0, 1)³,
  σ(t) = σ_min (σ_max/σ_min)^t (a variance-exploding process).  The target is the score
  ∇ log WN(f_t; f_0, σ²), divided by its root mean square λ(σ)^{1/2} so that every t weighs
  the same; the network predicts that normalised score.
* **Species** are fixed by the composition and never diffused; Z (formula units) is chosen
  by the sampler.

Sampling uses a short schedule: DDIM (η configurable) for the lattice and the reverse VE SDE
(Euler–Maruyama predictor, optional Langevin corrector) for the coordinates, on S ≪ 1000 steps.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import torch

A0 = 2.5  # Å: lattice normalisation length per atom^(1/3)


@dataclass
class ProcessConfig:
    sigma_min: float = 0.005
    sigma_max: float = 0.5
    wn_terms: int = 3  # images k = -wn_terms..wn_terms in the wrapped normal
    cosine_s: float = 0.008

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- lattice (DDPM)
def alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Cosine schedule ᾱ(t), t ∈ [0, 1] (Nichol & Dhariwal 2021), clipped away from 0."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return (f / f0).clamp(1e-5, 1.0)


def normalise_lattice(lattice: torch.Tensor, natoms: torch.Tensor) -> torch.Tensor:
    return lattice / (A0 * natoms.to(lattice.dtype).clamp(min=1) ** (1 / 3))[:, None, None]


def denormalise_lattice(lat_n: torch.Tensor, natoms: torch.Tensor) -> torch.Tensor:
    return lat_n * (A0 * natoms.to(lat_n.dtype).clamp(min=1) ** (1 / 3))[:, None, None]


# ----------------------------------------------------------------------------- torus (wrapped normal)
def sigma(t: torch.Tensor, cfg: ProcessConfig) -> torch.Tensor:
    return cfg.sigma_min * (cfg.sigma_max / cfg.sigma_min) ** t


def wrapped_normal_score(x: torch.Tensor, mu: torch.Tensor, sig: torch.Tensor, terms: int = 3) -> torch.Tensor:
    """∂/∂x log Σ_k exp(-(x - mu + k)² / 2σ²), elementwise; sig broadcastable to x.

    Computed as a softmax-weighted mean of the Gaussian scores of the images (stable for small σ).
    """
    d = torch.remainder(x - mu + 0.5, 1.0) - 0.5  # nearest image in [-0.5, 0.5)
    k = torch.arange(-terms, terms + 1, device=x.device, dtype=x.dtype)
    dk = d[..., None] + k  # (..., K)
    s2 = (sig**2)[..., None]
    w = torch.softmax(-(dk**2) / (2 * s2), dim=-1)
    return (w * (-dk / s2)).sum(-1)


def score_norm(sig: torch.Tensor, terms: int = 3, n_grid: int = 2001) -> torch.Tensor:
    """λ(σ) = E_{x∼WN(0,σ²)}[score(x)²] by quadrature on [-0.5, 0.5] (per σ, shape of sig)."""
    x = torch.linspace(-0.5, 0.5, n_grid, dtype=torch.float64, device=sig.device)
    s = sig.double().reshape(-1, 1)
    k = torch.arange(-terms, terms + 1, dtype=torch.float64, device=sig.device)
    dk = x[None, :, None] + k
    logp = torch.logsumexp(-(dk**2) / (2 * s[..., None] ** 2), dim=-1)  # (S, G) unnormalised
    p = torch.softmax(logp, dim=-1)  # grid weights
    sc = wrapped_normal_score(x[None].expand(len(s), -1), torch.zeros_like(x)[None], s, terms)
    return (p * sc**2).sum(-1).reshape(sig.shape).to(sig.dtype)


#: Below this σ the wrapped normal's images at ±1 carry weight < e^(-1/(2·0.08²)) ≈ 1e-34, so
#: λ(σ) is the Gaussian's 1/σ²: it equals :func:`score_norm`'s quadrature to 1e-7 relative
#: (float32 resolution) on the default schedule, at no cost.
UNWRAPPED_SIGMA = 0.08


@functools.lru_cache(maxsize=8)
def _lam_table(sigma_min: float, sigma_max: float, wn_terms: int) -> torch.Tensor:
    """λ(σ(t)) on the 1,001-point t grid of :class:`Process` (float32, CPU), once per schedule.

    The quadrature (about 1.3 s for the whole grid) runs only where σ ≥ :data:`UNWRAPPED_SIGMA`.
    """
    cfg = ProcessConfig(sigma_min=sigma_min, sigma_max=sigma_max, wn_terms=wn_terms)
    sig = sigma(torch.linspace(0, 1, 1001), cfg).double()
    lam = 1.0 / sig**2
    wide = sig >= UNWRAPPED_SIGMA
    if wide.any():
        lam[wide] = score_norm(sig[wide], wn_terms)
    return lam.float()


class Process:
    """Noise/loss/sampling maths; holds a λ(σ) lookup table for speed."""

    def __init__(self, cfg: ProcessConfig | None = None, device="cpu"):
        self.cfg = cfg or ProcessConfig()
        self._tgrid = torch.linspace(0, 1, 1001, device=device)
        self._lam = _lam_table(self.cfg.sigma_min, self.cfg.sigma_max, self.cfg.wn_terms).to(device, copy=True)

    def lam(self, t: torch.Tensor) -> torch.Tensor:
        idx = (t.clamp(0, 1) * 1000).round().long()
        return self._lam.to(t.device)[idx]

    # ---------------------------------------------------------------- training
    def noise(self, lat_n, frac, mask, t, generator=None):
        """Noisy sample at time t (B,), and the regression targets."""
        ab = alpha_bar(t, self.cfg.cosine_s)[:, None, None]
        eps_l = torch.randn(lat_n.shape, device=lat_n.device, generator=generator)
        lat_t = ab.sqrt() * lat_n + (1 - ab).sqrt() * eps_l
        sig = sigma(t, self.cfg)[:, None, None]
        z = torch.randn(frac.shape, device=frac.device, generator=generator)
        frac_t = torch.remainder(frac + sig * z, 1.0)
        score = wrapped_normal_score(frac_t, frac, sig.expand_as(frac_t), self.cfg.wn_terms)
        target_f = score / self.lam(t).sqrt()[:, None, None]
        return lat_t, frac_t, eps_l, target_f * mask[..., None]

    def loss(self, pred_l, pred_f, eps_l, target_f, mask):
        """Mean-squared errors of the lattice noise and of the normalised coordinate score."""
        l_lat = ((pred_l.float() - eps_l) ** 2).mean()
        m = mask[..., None].float()
        l_f = (((pred_f.float() - target_f) ** 2) * m).sum() / (3 * m.sum())
        return l_lat, l_f

    # ---------------------------------------------------------------- sampling
    @staticmethod
    def timesteps(steps: int, device="cpu") -> torch.Tensor:
        """Decreasing times 1 → 0 (steps + 1 points)."""
        return torch.linspace(1.0, 0.0, steps + 1, device=device)

    def step(self, lat_t, frac_t, pred_l, pred_f, t, s, mask, *, eta: float = 0.0, generator=None):
        """One reverse step from time t to s < t for both lattice (DDIM) and coordinates (VE SDE).

        t and s are python floats; predictions are at (lat_t, frac_t, t).
        """
        dev = lat_t.device
        tt = torch.tensor([t], device=dev)
        ss = torch.tensor([s], device=dev)
        ab_t = alpha_bar(tt, self.cfg.cosine_s)
        ab_s = alpha_bar(ss, self.cfg.cosine_s) if s > 0 else torch.ones(1, device=dev)
        lat0 = (lat_t - (1 - ab_t).sqrt() * pred_l) / ab_t.sqrt()
        sig_eta = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).clamp(min=0).sqrt()
        lat_s = ab_s.sqrt() * lat0 + (1 - ab_s - sig_eta**2).clamp(min=0).sqrt() * pred_l
        if eta > 0 and s > 0:
            lat_s = lat_s + sig_eta * torch.randn(lat_t.shape, device=dev, generator=generator)
        # coordinates: reverse VE SDE, Euler–Maruyama
        sig_t = sigma(tt, self.cfg)
        sig_s = sigma(ss, self.cfg) if s > 0 else torch.zeros(1, device=dev)
        score = pred_f * self.lam(tt).sqrt()
        var = sig_t**2 - sig_s**2
        frac_s = frac_t + var * score
        if s > 0:
            frac_s = frac_s + var.sqrt() * torch.randn(frac_t.shape, device=dev, generator=generator)
        frac_s = torch.where(mask[..., None], torch.remainder(frac_s, 1.0), frac_t)
        return lat_s, frac_s, lat0

    def corrector(self, frac, pred_f, s, mask, step_lr: float = 1e-5, generator=None):
        """One Langevin corrector step at time s (DiffCSP's step size rule)."""
        ss = torch.tensor([s], device=frac.device)
        sig = sigma(ss, self.cfg)
        score = pred_f * self.lam(ss).sqrt()
        step = step_lr * (sig / self.cfg.sigma_min) ** 2
        out = frac + step * score + (2 * step).sqrt() * torch.randn(frac.shape, device=frac.device, generator=generator)
        return torch.where(mask[..., None], torch.remainder(out, 1.0), frac)
