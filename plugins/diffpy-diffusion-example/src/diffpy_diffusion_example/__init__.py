"""diffpy-diffusion-example: a minimal structure backend plugin (template for plugin authors)."""

__version__ = "0.1.0"
