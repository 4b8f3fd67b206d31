"""A structure backend plugin in under 50 lines: cubic AB prototypes, then propose on the demo pattern.

Packaged, declare this module in pyproject.toml and drop the register() line below:
``[project.entry-points.diffpy_diffusion]`` ``prototypes = "my_package.backend_plugin"``.
Run: python examples/backend_plugin.py [--quick]   (--quick: screen only, no refinement)
"""
import sys
from importlib.resources import files

import numpy as np
from pymatgen.core import Lattice, Structure

from diffpy_diffusion import Proposal, hookimpl, plugins, propose, read_observation
from diffpy_diffusion.errors import BackendError

PROTOTYPES = {"rocksalt": ("Fm-3m", [[0, 0, 0], [0.5] * 3]), "CsCl": ("Pm-3m", [[0, 0, 0], [0.5] * 3]),
              "zincblende": ("F-43m", [[0, 0, 0], [0.25] * 3])}


class PrototypeBackend:
    name, version, capabilities = "prototypes", "1.0", {"composition"}

    def sample(self, observation, n, *, seed=None, progress=None):
        comp = observation.composition
        if len(comp) != 2 or len(set(comp.values())) != 1:
            raise BackendError(f"prototypes: needs an AB composition, got {observation.formula}")
        rng, out = np.random.default_rng(seed), []
        for i in range(n):
            kind, (sg, xyz) = list(PROTOTYPES.items())[i % len(PROTOTYPES)]
            s = Structure.from_spacegroup(sg, Lattice.cubic(rng.uniform(3.5, 6.5)), list(comp), xyz)
            if len(s) <= observation.max_atoms:
                out.append(Proposal(s, backend=self.name, seed=seed, provenance={"structure_type": kind}))
            if progress:
                progress(1)
        return out


@hookimpl
def register_backends(register):
    register("prototypes", lambda **options: PrototypeBackend())


if __name__ == "__main__":
    plugins.get_plugin_manager().register(sys.modules[__name__], name="prototypes")  # what the entry point does
    obs = read_observation(files("diffpy_diffusion") / "examples_data" / "nacl_3nm_cuka.xy", composition="NaCl",
                           wavelength=1.540598)
    best = propose(obs, backend="prototypes", n=6, top=2, seed=1, refine="--quick" not in sys.argv, progress=False)
    for p in best:
        print(p.formula, p.provenance["structure_type"], {k: round(v, 3) for k, v in p.scores.items()})
