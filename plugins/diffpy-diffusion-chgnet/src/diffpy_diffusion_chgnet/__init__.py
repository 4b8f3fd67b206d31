"""diffpy-diffusion-chgnet: CHGNet energies score, relax and re-rank diffpy-diffusion's candidates."""

__version__ = "0.1.0"
