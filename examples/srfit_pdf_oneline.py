#!/usr/bin/env python
"""The standard SrFit PDF example (fcc nickel, measured x-ray PDF) with ONE added line.

This is the classic diffpy.srfit recipe -- Profile + PDFParser, a PDFGenerator,
a FitContribution, a FitRecipe with space-group constraints, scipy
least_squares, FitResults -- except that the starting structure is not read
from a CIF: it is *proposed* from the data by diffpy-diffusion (the line marked
``<-- the one added line``).  Everything after it is unchanged SrFit.

Where diffpy.srreal is installed, srfit's own PDFGenerator is used; otherwise
(pip-only installs) diffpy-diffusion's torch-backed drop-in with the same
parameters.

Run::

    python examples/srfit_pdf_oneline.py                     # the bundled examples/data/ni-q27r60-xray.gr
    python examples/srfit_pdf_oneline.py my_nickel.gr

Data: measured x-ray PDF of Ni (PDFgetX2, 2008) from the diffpy.srfit examples, bundled in
``examples/data`` (DiffPy-CMI licence, see ``examples/data/README.md`` and the licence files there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from diffpy.srfit.fitbase import FitContribution, FitRecipe, FitResults, Profile
from diffpy.srfit.pdf import PDFParser
from diffpy.srfit.structure import constrainAsSpaceGroup
from scipy.optimize import least_squares

from diffpy_diffusion import propose_structure

try:  # srfit's own generator needs diffpy.srreal (conda only)
    import diffpy.srreal.pdfcalculator  # noqa: F401
    from diffpy.srfit.pdf import PDFGenerator
except ImportError:
    from diffpy_diffusion.refine import TorchPDFGenerator as PDFGenerator


def make_recipe(datname: str, *, xmax: float = 20.0, backend: str = "templates", n: int = 50, top: int = 3):
    """Create the fitting recipe for the crystalline PDF data in ``datname``."""
    # The Profile: observed data and metadata (stype, qmax) from the PDFgetX2 header.
    profile = Profile()
    parser = PDFParser()
    parser.parseFile(datname)
    profile.loadParsedData(parser)
    profile.setCalculationRange(xmin=1.5, xmax=xmax)

    # The ProfileGenerator, configured by the Profile metadata.
    generator = PDFGenerator("G")
    stru = propose_structure(profile, composition="Ni", backend=backend, n=n, top=top)  # <-- the one added line
    generator.setStructure(stru)

    # The FitContribution ties the generator to the profile.
    contribution = FitContribution("nickel")
    contribution.addProfileGenerator(generator)
    contribution.setProfile(profile, xname="r")

    recipe = FitRecipe()
    recipe.clearFitHooks()
    recipe.addContribution(contribution)

    # Space-group constraints: only free lattice parameters and ADPs are variables.
    phase = generator.phase
    sgpars = constrainAsSpaceGroup(phase, stru.pdffit["spcgr"])
    for par in sgpars.latpars:
        recipe.addVar(par)
    for par in sgpars.adppars:
        recipe.addVar(par, 0.005)

    # Non-structural parameters.
    recipe.addVar(generator.scale, 1)
    recipe.addVar(generator.qdamp, 0.01)
    recipe.addVar(generator.delta2, 5)
    return recipe


def fit(recipe) -> FitResults:
    """Refine scale first, then everything (the usual SrFit two-step)."""
    recipe.fix("all")
    recipe.free("scale")
    least_squares(recipe.residual, recipe.values, x_scale="jac")
    recipe.free("all")
    least_squares(recipe.residual, recipe.values, x_scale="jac")
    return FitResults(recipe)


def main(argv=None) -> FitResults:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=str(Path(__file__).resolve().parent / "data" / "ni-q27r60-xray.gr"),
                    help="a .gr file (default: the bundled examples/data/ni-q27r60-xray.gr)")
    ap.add_argument("--xmax", type=float, default=20.0, help="fit range end, Å")
    ap.add_argument("--backend", default="templates", help="diffpy-diffusion backend that proposes the structure")
    ap.add_argument("--n", type=int, default=50, help="raw proposals")
    ap.add_argument("--top", type=int, default=3, help="proposals refined before the best is returned")
    ap.add_argument("--plot", action="store_true")
    args = ap.parse_args(argv)
    recipe = make_recipe(args.data, xmax=args.xmax, backend=args.backend, n=args.n, top=args.top)
    res = fit(recipe)
    res.printResults()
    if args.plot:
        import matplotlib.pyplot as plt

        r = recipe.nickel.profile.x
        g = recipe.nickel.profile.y
        gcalc = recipe.nickel.profile.ycalc
        off = -0.8 * np.max(g)
        plt.plot(r, g, "bo", mfc="none", label="G(r) data")
        plt.plot(r, gcalc, "r-", label="G(r) fit")
        plt.plot(r, g - gcalc + off, "g-", label="difference")
        plt.xlabel("r (Å)")
        plt.ylabel("G (Å$^{-2}$)")
        plt.legend()
        plt.show()
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
