"""Peaks of a powder pattern that no refined phase explains (an unaccounted impurity shows here).

:func:`unexplained_peaks` looks for peaks in the difference curve ``y_obs − y_calc`` of a finished
fit.  A misfit of a peak the model has (wrong width, a small shift) also leaves positive
residual, so a residual peak counts only where the model explains less than half of what was
observed at the residual's maximum and has no peak of its own near it: no local maximum of the
calculated intensity above background, of at least :data:`MODEL_PEAK_FRACTION` of the residual,
within the residual peak's FWHM on either side.  An impurity peak on top of a peak of the model is
therefore not reported (nothing in the difference curve tells it from an intensity misfit).
Noise is estimated from the point-to-point scatter of the residual itself, so the test does not
depend on the intensity units (counts or scaled).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["unexplained_peaks", "MIN_SIGNIFICANCE", "MIN_REL_INTENSITY", "MODEL_PEAK_FRACTION", "MAX_PEAKS"]

#: A residual peak must stand this many noise σ above zero (after smoothing).  Five σ: a
#: 5,000-point pattern has no chance (≈ 3e-7 per point) of a pure-noise excursion this large.
MIN_SIGNIFICANCE = 5.0
#: ...and be at least this fraction of the strongest observed peak (above background): weaker
#: residuals are within what profile and background misfit leave on measured data.
MIN_REL_INTENSITY = 0.01
#: A residual peak counts as unexplained only where the model has no peak (a local maximum above
#: background) of at least this fraction of the residual within the residual's FWHM: such a
#: peak means the phase has the reflection and misses its intensity or shape.
MODEL_PEAK_FRACTION = 0.25
#: At most this many peaks are reported (the strongest).
MAX_PEAKS = 10
#: Boxcar smoothing of the residual (points) before the search: averages counting noise
#: over a few points of a peak that is wider than this on any sensibly sampled scan.
_SMOOTH_POINTS = 5


def _noise_sigma(r: np.ndarray) -> float:
    """Robust point-to-point noise of ``r``: MAD of the first differences / √2 (normal-consistent)."""
    d = np.diff(r)
    if d.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


def unexplained_peaks(
    x: np.ndarray,
    y_obs: np.ndarray,
    y_calc: np.ndarray,
    background: np.ndarray | None = None,
    *,
    x_kind: str = "2theta",
    wavelength: float | None = None,
    zero: float = 0.0,
    max_peaks: int = MAX_PEAKS,
    min_significance: float = MIN_SIGNIFICANCE,
    min_rel_intensity: float = MIN_REL_INTENSITY,
) -> list[dict[str, float]]:
    """The strongest peaks of ``y_obs − y_calc`` that the model does not explain, strongest first.

    Parameters
    ----------
    x : numpy.ndarray
        2θ (degrees) or Q (Å⁻¹), increasing.
    y_obs, y_calc : numpy.ndarray
        Observed and calculated (all phases and background) intensities.
    background : numpy.ndarray, optional
        The fitted background (default: zero); intensities are measured above it.
    x_kind : {"2theta", "q"}
    wavelength : float, optional
        Kα1 wavelength (Å), needed for the d-spacing of 2θ data.
    zero : float
        Zero shift of the fit (peaks at 2θ + zero): the d-spacing is computed at 2θ − zero.
    max_peaks : int
    min_significance : float
        Smoothed residual / its noise σ at the peak, at least.
    min_rel_intensity : float
        Residual peak height / the strongest observed peak above background, at least.

    Returns
    -------
    list of dict
        ``two_theta_deg`` (2θ data) or ``q_invA`` (Q data), ``d_A`` (None without a
        wavelength for 2θ), ``rel_intensity`` (fraction of the strongest observed peak),
        ``significance`` (in noise σ).
    """
    from scipy.signal import find_peaks

    x = np.asarray(x, float)
    yo = np.asarray(y_obs, float)
    yc = np.asarray(y_calc, float)
    bkg = np.zeros_like(yo) if background is None else np.asarray(background, float)
    if x.size < 3 * _SMOOTH_POINTS:
        return []
    r = yo - yc
    kernel = np.ones(_SMOOTH_POINTS) / _SMOOTH_POINTS
    rs = np.convolve(r, kernel, mode="same")
    net_obs = np.convolve(yo - bkg, kernel, mode="same")
    strongest = float(np.max(net_obs))
    noise = _noise_sigma(r) / math.sqrt(_SMOOTH_POINTS)
    if not strongest > 0 or not noise > 0:
        return []
    net_calc = np.convolve(yc - bkg, kernel, mode="same")
    height = max(min_significance * noise, min_rel_intensity * strongest)
    # prominence as well as height: a wiggle on the tail of a stronger residual peak is that peak
    idx, props = find_peaks(rs, height=height, prominence=height, distance=2 * _SMOOTH_POINTS, width=0)
    # unexplained: the model has no peak of its own there.  A residual on a peak of the model (an
    # intensity or shape misfit: preferred orientation, the profile) is not an impurity; tested at
    # the residual's maximum alone, the sharp peaks of a lab pattern whose intensities the model
    # misses were all listed (NaCu2P2, Cu Kα: its (002), (101), (105) and (116)).  A model peak's
    # tail under the residual does not explain it (Cu (111) 0.4° from MgO (200) stays listed).
    model_max = np.zeros(len(net_calc), bool)
    model_max[1:-1] = (net_calc[1:-1] >= net_calc[:-2]) & (net_calc[1:-1] >= net_calc[2:])
    # within the residual peak's FWHM on either side: a residual on the flank of a model peak (a shift,
    # an asymmetry the profile lacks) peaks about half its own width from the model's maximum
    reach = np.maximum(np.ceil(props["widths"]).astype(int), 1)

    def has_model_peak(i, h):
        w = slice(max(i - h, 0), i + h + 1)
        return bool(np.any(model_max[w] & (net_calc[w] >= MODEL_PEAK_FRACTION * rs[i])))

    # ... and, as before, at least half of what was observed at the residual's maximum is missing from
    # the model (a noise wiggle on a broad peak of the model is not a peak of its own)
    idx = [i for i, h in zip(idx, reach, strict=True) if rs[i] >= net_calc[i] and not has_model_peak(i, h)]
    idx.sort(key=lambda i: -rs[i])
    out = []
    for i in idx[:max_peaks]:
        row: dict[str, float] = {}
        if x_kind == "q":
            row["q_invA"] = float(x[i])
            row["d_A"] = float(2 * math.pi / x[i]) if x[i] > 0 else None
        else:
            row["two_theta_deg"] = float(x[i])
            tt = math.radians(float(x[i]) - float(zero))
            row["d_A"] = float(wavelength / (2 * math.sin(tt / 2))) if wavelength and tt > 0 else None
        row["rel_intensity"] = float(rs[i] / strongest)
        row["significance"] = float(rs[i] / noise)
        out.append(row)
    return out
