"""Torch forward models: batched, differentiable, float32/float64, CPU/CUDA.

Leaf package: imports nothing else from diffpy_diffusion except ``errors``.

Modules
-------
crystal      CrystalBatch: B crystals as flat tensors (the input of every model)
scattering   X-ray form factors (Waasmaier–Kirfel; pymatgen's table), neutron b_c
xrd          reflections() peak lists, xrd_profile() broadening, xrd_pattern(), xrd_peaks();
             lorentz_polarization(), debye_waller(), size_fwhm_q(), pseudo_voigt()
canonical    powder_pattern_q(), sticks_pattern_q(): cheap patterns on a uniform Q grid
             (the diffusion backend's training patterns and physics guidance)
pdf          pdf_gr(): G(r) with PDFfit2/PDFgui conventions
debye        cut_sphere(), debye_iq/sq/fq/gr(): Debye scattering of finite clusters
benchmark    speed against pymatgen and pdffit2 (``diffpy-diffuse bench``)
reference    reference structures for tests and benchmarks

Import the submodules directly (``from diffpy_diffusion.physics.xrd import
xrd_pattern``); importing this package does not import torch.
"""
