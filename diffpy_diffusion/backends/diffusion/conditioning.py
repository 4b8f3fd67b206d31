"""Conditioning: a canonical pattern representation, its on-the-fly simulation, and its encoder.

**Canonical representation.**  Any PXRD pattern (2θ at any wavelength, or Q) is mapped to a
fixed grid Q = 0 … 8.15 Å⁻¹ (PXRDnet's range, :data:`Q_GRID_POINTS` points), linearly
interpolated, zero outside the measured range, baseline-shifted to min 0 and divided by its
maximum.  Two channels go to the encoder: y and √y (the square root lifts weak peaks).
A third channel is reserved for a PDF G(r) on r = 0 … 20 Å (normalised by its max |G|); the
shipped weights were trained with it zero.  A PDF observation is therefore shown to the encoder
as the powder pattern it implies (:func:`pdf_as_powder`: I(Q) = Q F(Q) ⟨f⟩², F(Q) the sine
transform of G(r), :mod:`physics.reciprocal`), in the PXRD channels, with the third channel
zero; ``pdf_mode="gr"`` gives the old representation (G(r) in the third channel only).

**Training patterns** are made on the fly from each structure's precomputed reflection list
(``data.binned_reflections``: Q and Σ|F|² per Q bin).  This module holds only the randomisation
policy (:func:`sample_settings`: wavelength, measured range, zero shift, Uiso, crystallite size,
instrument width, pseudo-Voigt mixing, background, noise) and the canonical representation; the
diffraction physics (Lorentz–polarisation, Debye–Waller, Scherrer width, profile) is
:func:`physics.canonical.powder_pattern_q`.  All in torch on the training device.

**Encoder**: a 1-D CNN over the grid → a vector; with probability ``p_uncond`` in training the
vector is replaced by a learned "no pattern" embedding (classifier-free guidance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from ...physics.canonical import powder_pattern_q, pv_area_fraction

Q_GRID_MAX = 8.15  # Å⁻¹
Q_GRID_POINTS = 512
R_GRID_MAX = 20.0  # Å
N_CHANNELS = 3  # y, sqrt(y), G(r)


def q_grid(device="cpu", dtype=torch.float32) -> torch.Tensor:
    """The canonical Q grid, Å⁻¹."""
    return torch.linspace(0.0, Q_GRID_MAX, Q_GRID_POINTS, device=device, dtype=dtype)


def _normalise(y: np.ndarray) -> np.ndarray:
    y = np.nan_to_num(np.asarray(y, float))
    y = y - y.min()
    mx = y.max()
    return y / mx if mx > 0 else y


#: A PDF's implied powder pattern is given the Lorentz-polarisation factor of this wavelength (Å, Mo Kα1):
#: 80 % of the training patterns carry LP, and Mo is a training wavelength that reaches the whole
#: canonical grid (Q = 8.15 Å⁻¹ at 2θ = 55°).
PDF_AS_POWDER_WAVELENGTH = 0.7093
#: Below this Q (Å⁻¹) a PDF's implied powder pattern is set to zero: the particle envelope's
#: small-angle term and the unknown G(r) below the data's r_min live there.  Inside the training
#: policy's measured-range start (0–1.2 Å⁻¹, :func:`sample_settings`).
PDF_AS_POWDER_Q_MIN = 1.0
#: Width (Å⁻¹) of the lower-envelope baseline taken off a PDF's implied powder pattern: the
#: uncorrelated part of S(Q) − 1 (−⟨f²⟩/⟨f⟩² e^{−U Q²} and the Laue term) is smooth on this scale,
#: and a Bragg peak seen through a ≥ 15 Å r range with a Lorch window is narrower (FWHM ≈ 2π·1.2/r_max).
PDF_BASELINE_WIDTH_Q = 0.5


def pdf_as_powder(observation, grid: np.ndarray | None = None) -> np.ndarray:
    """The powder pattern a PDF observation implies, on the canonical Q grid (min 0, max 1).

    I(Q) = Q F(Q) ⟨f(Q)⟩² (:func:`physics.reciprocal.powder_intensity_from_gr`: peaks at the Bragg
    positions with intensities Σ m |F|²), times the Lorentz-polarisation factor at
    :data:`PDF_AS_POWDER_WAVELENGTH`, its smooth lower envelope taken off, zero outside
    [:data:`PDF_AS_POWDER_Q_MIN`, min(Qmax of the data, the grid's end)], normalised.

    Raises
    ------
    ValueError
        The observation has no composition (the form factors need it).
    """
    from pymatgen.core import Element
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    from ...physics.reciprocal import powder_intensity_from_gr
    from ...physics.xrd import lorentz_polarization

    if not observation.composition:
        raise ValueError("a PDF's implied powder pattern needs the composition (the atomic form factors)")
    grid = np.linspace(0, Q_GRID_MAX, Q_GRID_POINTS) if grid is None else np.asarray(grid, float)
    els = list(observation.composition)
    numbers = [Element(el).Z for el in els]
    counts = [float(observation.composition[el]) for el in els]
    r = np.asarray(observation.x, float)
    g = np.nan_to_num(np.asarray(observation.y, float))
    q_hi = min(float(grid[-1]), float(observation.qmax) if getattr(observation, "qmax", None) else np.inf)
    inside = (grid >= PDF_AS_POWDER_Q_MIN) & (grid <= q_hi)
    y = np.zeros_like(grid)
    if inside.sum() < 4:
        return y
    qi = grid[inside]
    inten = powder_intensity_from_gr(r, g, qi, numbers, counts, radiation=observation.radiation or "xray").numpy()
    theta = np.arcsin(np.clip(qi * PDF_AS_POWDER_WAVELENGTH / (4 * np.pi), 1e-4, 0.999))
    inten = inten * lorentz_polarization(torch.from_numpy(theta)).numpy()
    win = max(3, int(round(PDF_BASELINE_WIDTH_Q / (grid[1] - grid[0]))))
    inten = inten - uniform_filter1d(minimum_filter1d(inten, win, mode="nearest"), win, mode="nearest")
    y[inside] = np.clip(inten, 0.0, None)
    return _normalise(y)


def pdf_powder_observation(observation):
    """The PDF's implied powder pattern (:func:`pdf_as_powder`) as a Q-space PXRD observation.

    Lets the sampler screen its pilot proposals against a PDF the way it does against a PXRD
    pattern (the adaptive choice of Z): peaks with the Lorentz-polarisation factor of
    :data:`PDF_AS_POWDER_WAVELENGTH`, which is therefore the observation's wavelength.
    """
    from dataclasses import replace

    grid = np.linspace(0, Q_GRID_MAX, Q_GRID_POINTS)
    y = pdf_as_powder(observation, grid)
    keep = y > 0
    lo, hi = (int(np.argmax(keep)), len(y) - int(np.argmax(keep[::-1]))) if keep.any() else (0, len(y))
    return replace(observation, kind="xrd", x=grid[lo:hi], y=y[lo:hi], x_kind="q", sigma=None,
                   wavelength=PDF_AS_POWDER_WAVELENGTH, wavelength2=None,
                   meta={**(observation.meta or {}), "implied_by_pdf": True})


def canonical_pattern(observation, pdf_mode: str = "powder") -> np.ndarray:
    """Map an :class:`~diffpy_diffusion.types.Observation` to the encoder input (N_CHANNELS, M).

    PXRD: Q = 4π sin θ / λ (from 2θ and the Kα1 wavelength) → Q grid, normalised, y and √y.
    PDF, ``pdf_mode="powder"``: the powder pattern G(r) implies (:func:`pdf_as_powder`) as y and √y,
    the third channel zero (what the shipped weights were trained on); ``"gr"``: G(r) resampled on
    0–20 Å into the third channel only.
    """
    if pdf_mode not in ("powder", "gr"):
        raise ValueError(f"pdf_mode: must be 'powder' or 'gr', got {pdf_mode!r}")
    out = np.zeros((N_CHANNELS, Q_GRID_POINTS), dtype=np.float32)
    if observation.kind == "xrd":
        q = observation.q()
        order = np.argsort(q)
        q, y = q[order], np.asarray(observation.y, float)[order]
        grid = np.linspace(0, Q_GRID_MAX, Q_GRID_POINTS)
        yy = np.interp(grid, q, _normalise(y), left=0.0, right=0.0)
        yy[(grid < q.min()) | (grid > q.max())] = 0.0
        yy = _normalise(yy)
        out[0] = yy
        out[1] = np.sqrt(yy)
    elif pdf_mode == "powder":
        yy = pdf_as_powder(observation)
        out[0] = yy
        out[1] = np.sqrt(yy)
    else:
        r = np.asarray(observation.x, float)
        g = np.asarray(observation.y, float)
        grid = np.linspace(0, R_GRID_MAX, Q_GRID_POINTS)
        gg = np.interp(grid, r, g, left=0.0, right=0.0)
        mx = np.abs(gg).max()
        out[2] = gg / mx if mx > 0 else gg
    return out


#: Wavelengths of the training mix, Å: Cu Kα1, Mo Kα1, Co Kα1 (lab sources).
LAB_WAVELENGTHS = (1.5406, 0.7093, 1.789)
#: Cap on the Lorentz-polarisation factor of training patterns: the shipped weights were trained with
#: sin²θ cosθ clamped at 1e-4, i.e. (1 + cos²2θ)/1e-4 ≤ 2e4 near 2θ = 0.
TRAIN_LP_MAX = 2e4


@dataclass
class PatternSettings:
    """Random measurement settings of B training patterns (every field has one value per pattern).

    Attributes
    ----------
    wavelength : Tensor (B,)
        Å.
    q_min, q_max : Tensor (B,)
        Measured Q range, Å⁻¹ (the pattern is zero outside).
    zero_shift_deg : Tensor (B,)
        Zero shift in degrees 2θ.
    uiso : Tensor (B,)
        Debye–Waller Uiso of every atom, Å².
    lorentz_polarization : Tensor (B,) bool
    size_nm : Tensor (B,)
        Crystallite size (Scherrer), nm.
    inst_fwhm_q : Tensor (B,)
        Instrument FWHM in Q, Å⁻¹.
    eta : Tensor (B,)
        Lorentzian area fraction of the pseudo-Voigt.
    bg_decay_amp, bg_decay_len, bg_hump_amp, bg_hump_centre, bg_hump_width, bg_const : Tensor (B,)
        Background ``a·exp(−Q/ℓ) + h·exp(−(Q − c)²/w) + const`` (fractions of the pattern maximum, Å⁻¹, Å⁻²).
    bg_on : Tensor (B,) bool
    noise_level : Tensor (B,)
        Poisson-like noise ``level · N(0, 1) · sqrt(y + bg + 0.05)``.
    noise : Tensor (B, M)
        The standard normal draws of the noise.
    """

    wavelength: torch.Tensor
    q_min: torch.Tensor
    q_max: torch.Tensor
    zero_shift_deg: torch.Tensor
    uiso: torch.Tensor
    lorentz_polarization: torch.Tensor
    size_nm: torch.Tensor
    inst_fwhm_q: torch.Tensor
    eta: torch.Tensor
    bg_decay_amp: torch.Tensor
    bg_decay_len: torch.Tensor
    bg_hump_amp: torch.Tensor
    bg_hump_centre: torch.Tensor
    bg_hump_width: torch.Tensor
    bg_const: torch.Tensor
    bg_on: torch.Tensor
    noise_level: torch.Tensor
    noise: torch.Tensor


def sample_settings(batch_size: int, generator: torch.Generator | None = None, *, device="cpu",
                    size_nm_range: tuple[float, float] = (1.0, 20.0)) -> PatternSettings:
    """Draw the randomisation policy of the training patterns.

    60 % Cu, 15 % Mo, 10 % Co, 15 % synchrotron 0.1–0.8 Å; measured up to 2θ = 60–150° and from
    Q = 0–1.2 Å⁻¹; a zero shift of ±0.15° on 70 %; Uiso 0.002–0.03 Å²; Lorentz–polarisation on 80 %;
    size log-uniform in ``size_nm_range``; instrument FWHM 0.005–0.04 Å⁻¹; any pseudo-Voigt mixing;
    a background (decay + hump + constant, up to 35 % of the maximum) on 70 %; noise up to 3 %.
    The random numbers are drawn in the order of the sampler the shipped weights were trained with.
    """
    B, dev = batch_size, device

    def rand(shape=(B,)):
        return torch.rand(shape, device=dev, generator=generator)

    def U(lo, hi):
        return lo + (hi - lo) * rand()

    u = rand()
    cu, mo, co = (torch.full_like(u, v) for v in LAB_WAVELENGTHS)
    lam = torch.where(u < 0.6, cu, torch.where(u < 0.75, mo, torch.where(u < 0.85, co, U(0.1, 0.8))))
    tth_max = U(60.0, 150.0)
    q_max = (4 * math.pi * torch.sin(torch.deg2rad(tth_max) / 2) / lam).clamp(max=Q_GRID_MAX)
    q_min = U(0.0, 1.2)
    zero = U(-0.15, 0.15) * (rand() < 0.7)
    uiso = U(0.002, 0.03)
    use_lp = rand() < 0.8
    lo, hi = size_nm_range
    size_nm = torch.exp(U(math.log(lo), math.log(hi)))
    inst = U(0.005, 0.04)
    # drawn as the Lorentzian fraction of the peak height (as in training of the shipped weights)
    eta = pv_area_fraction(U(0.0, 1.0))
    bg = [U(0, 0.15), U(0.5, 4.0), U(0, 0.15), U(1.0, 3.0), U(0.2, 1.5), U(0, 0.05)]
    bg_on = rand() < 0.7
    noise_level = U(0.0, 0.03)
    noise = torch.randn((B, Q_GRID_POINTS), device=dev, generator=generator)
    return PatternSettings(lam, q_min, q_max, zero, uiso, use_lp, size_nm, inst, eta, *bg, bg_on, noise_level, noise)


def render_training_patterns(refl_q, refl_i, refl_mask, settings: PatternSettings) -> torch.Tensor:
    """Encoder inputs (B, N_CHANNELS, M) of reflection lists measured with ``settings``.

    The diffraction physics is :func:`physics.canonical.powder_pattern_q`; here the pattern is
    max-normalised, a background and noise are added, the measured range is cut and the result
    mapped to the canonical representation (min 0, max 1; y and √y).

    Parameters
    ----------
    refl_q : Tensor (B, K)
        Reflection positions Q, Å⁻¹ (padding anywhere, masked).
    refl_i : Tensor (B, K)
        Σ|F|² per reflection (no LP, no Debye–Waller), any scale.
    refl_mask : Tensor (B, K) bool
    settings : PatternSettings
    """
    st = settings
    grid = q_grid(refl_q.device)
    y = powder_pattern_q(refl_q, refl_i, grid, wavelength=st.wavelength, size_nm=st.size_nm,
                         inst_fwhm_q=st.inst_fwhm_q, eta=st.eta, mask=refl_mask, zero_shift_deg=st.zero_shift_deg,
                         uiso=st.uiso, lorentz_polarization=st.lorentz_polarization, lp_max=TRAIN_LP_MAX)
    y = y / y.amax(1, keepdim=True).clamp(min=1e-12)
    g = grid[None]
    bg = (st.bg_decay_amp[:, None] * torch.exp(-g / st.bg_decay_len[:, None])
          + st.bg_hump_amp[:, None] * torch.exp(-((g - st.bg_hump_centre[:, None]) ** 2) / st.bg_hump_width[:, None])
          + st.bg_const[:, None])
    bg = bg * st.bg_on[:, None]
    y = y + bg + st.noise_level[:, None] * st.noise * (y + bg + 0.05).sqrt()
    inside = (g >= st.q_min[:, None]) & (g <= st.q_max[:, None])
    y = torch.where(inside, y, torch.zeros_like(y))
    ymin = torch.where(inside, y, torch.full_like(y, float("inf"))).amin(1, keepdim=True)
    y = torch.where(inside, y - ymin, torch.zeros_like(y)).clamp(min=0)
    y = y / y.amax(1, keepdim=True).clamp(min=1e-12)
    return torch.stack([y, y.sqrt(), torch.zeros_like(y)], dim=1)


def simulate_training_patterns(refl_q, refl_i, refl_mask, generator=None, *, size_nm_range=(1.0, 20.0)):
    """Random realistic patterns (B, N_CHANNELS, M) from reflection lists, in torch.

    :func:`sample_settings` then :func:`render_training_patterns` (see there for the arguments).
    """
    settings = sample_settings(refl_q.shape[0], generator, device=refl_q.device, size_nm_range=size_nm_range)
    return render_training_patterns(refl_q, refl_i, refl_mask, settings)


class PatternEncoder(nn.Module):
    """1-D CNN: (B, N_CHANNELS, 512) → (B, out_dim); 6 stride-2 stages then a linear head."""

    def __init__(self, out_dim: int = 256, width: int = 64):
        super().__init__()
        chans = [N_CHANNELS, width // 2, width, width, 2 * width, 2 * width, 2 * width]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv1d(cin, cout, 5, stride=2, padding=2), nn.GroupNorm(8, cout), nn.SiLU()]
        self.conv = nn.Sequential(*layers)
        n_out = Q_GRID_POINTS // 2 ** (len(chans) - 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * n_out, out_dim), nn.SiLU(),
                                  nn.Linear(out_dim, out_dim))
        self.null = nn.Parameter(torch.zeros(out_dim))  # the "no pattern" condition

    def forward(self, pattern: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Encode; rows where ``drop`` is True get the learned null embedding."""
        c = self.head(self.conv(pattern))
        if drop is not None:
            c = torch.where(drop[:, None], self.null.to(c.dtype).expand_as(c), c)
        return c
