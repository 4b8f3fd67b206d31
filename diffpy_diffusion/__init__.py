"""diffpy-diffusion: structure proposals for information-poor powder patterns."""

__version__ = "0.1.0"
