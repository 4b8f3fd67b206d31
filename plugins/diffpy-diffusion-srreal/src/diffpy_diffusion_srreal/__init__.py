"""srreal-backed PDF calculators for diffpy-diffusion (plugin ``srreal``)."""

__version__ = "0.1.0"
