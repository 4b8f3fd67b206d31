"""Torch forward models: batched, differentiable, float32/float64, CPU/CUDA.

Leaf package: imports nothing else from diffpy_diffusion except ``errors``.
"""
