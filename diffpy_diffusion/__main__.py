"""``python -m diffpy_diffusion`` = ``diffpy-diffuse``."""

from .cli import main

main()
