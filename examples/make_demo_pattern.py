"""Make the bundled demo pattern: 3 nm rock-salt NaCl, Cu Kα1+Kα2, 2θ 10-90°.

The demo (`make demo`) runs ``diffpy-diffuse propose`` on this file.  The
pattern is simulated by the project's own forward model
(:func:`diffpy_diffusion.simulation.simulate`, falling back to
:func:`diffpy_diffusion.physics.xrd.xrd_pattern` when the high-level API is not
installed), with a Chebyshev-like background and Poisson counting noise from a
fixed seed, so rerunning this script reproduces the file (bit for bit while the
forward model is unchanged; tests/test_examples.py checks it to within the noise).

Usage::

    python examples/make_demo_pattern.py [--force] [-o OUT.xy]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "diffpy_diffusion" / "examples_data" / "nacl_3nm_cuka.xy"
A_NACL = 5.6402  # Å, rock salt at room temperature
SIZE_NM = 3.0
UISO = 0.012  # Å², a typical room-temperature value for NaCl
PEAK_COUNTS = 4000.0  # counts at the strongest peak
SEED = 20260101


def nacl():
    from pymatgen.core import Lattice, Structure

    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(A_NACL), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s.add_site_property("uiso", [UISO] * len(s))
    return s


def simulate_ideal(tth):
    from diffpy_diffusion.types import TUBE_WAVELENGTHS

    l1, l2, ratio = TUBE_WAVELENGTHS["CuKa"]
    params = {"wavelength": l1, "wavelength2": l2, "ka2_ratio": ratio, "size_nm": SIZE_NM, "W": 0.003}
    try:
        from diffpy_diffusion.simulation import simulate

        return np.asarray(simulate(nacl(), kind="xrd", x=tth, x_kind="2theta", **params).y, dtype=float), \
            "diffpy_diffusion.simulation.simulate"
    except ImportError:
        import torch

        from diffpy_diffusion.physics.crystal import CrystalBatch
        from diffpy_diffusion.physics.xrd import xrd_pattern

        batch = CrystalBatch.from_structures([nacl()], dtype=torch.float64)
        y = xrd_pattern(batch, torch.as_tensor(tth, dtype=torch.float64), x_kind="2theta", **params)
        return y[0].detach().numpy(), "diffpy_diffusion.physics.xrd.xrd_pattern"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="overwrite the existing file")
    ap.add_argument("-o", "--output", type=Path, default=OUT, help=f"where to write (default: {OUT})")
    args = ap.parse_args(argv)
    from diffpy_diffusion import __version__
    from diffpy_diffusion.io import write_xy

    tth = np.round(np.arange(10.0, 90.0 + 1e-9, 0.02), 2)
    ideal, how = simulate_ideal(tth)
    ideal = ideal / ideal.max() * PEAK_COUNTS
    background = 150.0 + 60.0 * np.exp(-(tth - 10.0) / 25.0)
    rng = np.random.default_rng(SEED)
    counts = rng.poisson(ideal + background).astype(float)
    header = (f"Demo pattern for diffpy-diffusion {__version__}: simulated, not measured.\n"
              f"NaCl rock salt Fm-3m a={A_NACL} A, Uiso={UISO} A^2, crystallite size {SIZE_NM} nm (Scherrer)\n"
              "Cu Kalpha1/Kalpha2 1.540598/1.544426 A, ratio 0.5; background + Poisson noise, seed "
              f"{SEED}\nmade by examples/make_demo_pattern.py with {how}")
    write_xy(tth, counts, args.output, header=header, columns=("2theta_deg", "intensity_counts"), force=args.force)
    print(f"wrote {args.output} ({len(tth)} points)")


if __name__ == "__main__":
    main()
