"""The ``diffusion`` backend: sample crystal structures from the shipped (or a given) checkpoint.

``DiffusionBackend(**options).sample(observation, n, seed=...)`` returns ``n`` proposals with
exactly the observation's composition:

1. Z (formula units) is enumerated up to the atom cap (``observation.max_atoms``, default 20;
   the model was trained on cells of ≤ 20 atoms).  For PXRD, half of the candidates are a
   pilot split across Z in proportion to how often that cell size occurs in the training
   pool; the pilot is screened against the pattern and the other half goes to the Z values
   whose cells fit it (``adapt_z``); for a PDF, against the powder pattern its G(r) implies
   (``pdf_condition``).  Without a condition the prior alone decides.
2. The pattern is mapped to the canonical Q grid and encoded once.  A PDF is shown to the
   encoder as the powder pattern its G(r) implies (``conditioning.pdf_as_powder``: the sine
   transform back to F(Q), times Q⟨f⟩²): the shipped weights were trained on PXRD only, and
   this needs no retraining.  ``pdf_condition=False`` samples a PDF with the "no pattern"
   condition instead (the behaviour before; ``propose --no-condition``).
3. Reverse diffusion on a short schedule (``steps``, default 50), one batch per Z, with a
   Langevin corrector on the coordinates after every step (``corrector_steps``),
   classifier-free guidance (``cfg_scale``; 1 = conditional only) and optional physics
   guidance in the last ``guide_frac`` of the steps.
4. Clean-up: positive-volume lattice, coordinates wrapped to [0, 1), atoms closer than 0.5 Å
   pushed apart; the structures become pymatgen ``Structure``s.
5. Template seeds (``seed_fraction`` of ``n``, issue 17 lever 2): the reverse process of some
   candidates starts part-way, at ``seed_t``, from prototypes that retrieval (the ``templates``
   backend) re-decorates with the composition and that fit the pattern best in a short screen,
   noised to that level by the forward process, so the model explores distortions and orderings
   around known types instead of only from pure noise.
6. Optional symmetry hint (``observation.spacegroup`` / ``crystal_system``), training-free
   (see ``symmetry_hint.py``): the lattice is projected onto the crystal system's metric at
   every reverse step; with a space group, half of the candidates are sampled in that group's
   Wyckoff form (``wyckoff.py``: coordinates and metric projected onto the group after every
   step; ``hint_wyckoff``), and afterwards each proposal is symmetrised to the group where
   spglib finds it or a supergroup; matching proposals come first, ``provenance["hint"]``
   says what was done.
7. Optional space-group-constrained candidates without a hint (``wyckoff_fraction``, off by
   default; issue 17 lever 3): part of the free candidates is sampled in Wyckoff form in
   groups that retrieval and the pilot's lattices suggest.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np

from ...errors import BackendError, CompositionError, ResourceLimitError
from ...types import Observation, Proposal, integer_counts
from ..common import as_bool

__version__ = "0.1.0"

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "diffusion.pt"
#: Counts of Z (formula units per cell) by atoms per formula unit in the MP-20 + MPTS-52 part of the training
#: pool (perov_5 left out: it would make every 5-atom formula Z = 1) — the Z prior.
POOL_Z_HIST = {
    1: {1: 19, 2: 14, 3: 5, 4: 21, 6: 2, 7: 1, 8: 16, 9: 1, 12: 1, 15: 1, 16: 1, 20: 2},
    2: {1: 380, 2: 207, 3: 23, 4: 132, 5: 3, 6: 14, 8: 37, 9: 3, 10: 5},
    3: {1: 430, 2: 1062, 3: 319, 4: 940, 5: 8, 6: 69},
    4: {1: 2791, 2: 1127, 3: 38, 4: 474, 5: 3},
    5: {1: 1015, 2: 965, 3: 44, 4: 765},
    6: {1: 657, 2: 845, 3: 71},
    7: {1: 450, 2: 960},
    8: {1: 418, 2: 689},
    9: {1: 418, 2: 844},
    10: {1: 495, 2: 661},
}
TRAINED_MAX_ATOMS = 20
MIN_DIST = 0.5  # Å
#: Retrieved templates screened to choose the seeds of template-seeded sampling (``seed_fraction``).
SEED_POOL = 16
#: Cells of more atoms than this go through the network at most :data:`CHUNK_CELLS` at a time (the
#: sampler's batches, and with them its random numbers, are unchanged): its (cells, N, N, width) edge
#: tensor then stays in cache.  CPU ms per 64 cells, one thread (2026-12-05): 20 atoms 390 at 64,
#: 280-310 at 32, 310 at 16; 10 atoms 107-121 / 89-97; 6 atoms 66 at 64, 69-75 at 32.
CHUNK_ABOVE_ATOMS = 8
CHUNK_CELLS = 32


#: Draws of a Wyckoff placement before one that repeats in a smaller cell is accepted (all may).
MAX_REDRAWS = 20
#: spglib tolerance (Å) at which a space-group hint first looks at Wyckoff-sampled proposals (exact to rounding).
EXACT_TOLERANCE = 1e-4


def z_options(counts: dict[str, int], max_atoms: int, z: int | None = None) -> list[int]:
    """Formula units per cell allowed by the atom cap (or the given Z)."""
    per_fu = sum(counts.values())
    if z:
        if z * per_fu > max_atoms:
            raise ResourceLimitError(
                f"Z={z} of {per_fu}-atom formula units makes {z * per_fu} atoms per cell, above the atom cap of "
                f"{max_atoms}; raise it with --max-atoms (Observation.max_atoms)")
        return [int(z)]
    zs = list(range(1, max_atoms // per_fu + 1))
    if not zs:
        raise ResourceLimitError(
            f"one formula unit of {''.join(f'{e}{k}' for e, k in counts.items())} has {per_fu} atoms, more than the "
            f"atom cap of {max_atoms} atoms per cell; raise it with --max-atoms (Observation.max_atoms). "
            f"The shipped model was trained on cells of at most {TRAINED_MAX_ATOMS} atoms.")
    return zs


def z_prior(zs: list[int], per_fu: int) -> np.ndarray:
    """P(Z | atoms per formula unit) over ``zs`` from the training pool (+1 smoothing), normalised."""
    hist = POOL_Z_HIST.get(per_fu, {1: 10})
    w = np.array([hist.get(z, 0) + 1.0 for z in zs], float)
    return w / w.sum()


def allocate(n: int, zs: list[int], per_fu: int, weights: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Split n candidates over Z values ∝ ``weights`` (default: :func:`z_prior`), largest remainders first."""
    w = z_prior(zs, per_fu) if weights is None else np.asarray(weights, float) / np.sum(weights)
    counts = np.floor(w * n).astype(int)
    order = np.argsort(-w)
    i = 0
    while counts.sum() < n:
        counts[order[i % len(zs)]] += 1
        i += 1
    return [(z, int(c)) for z, c in zip(zs, counts) if c > 0]


class DiffusionBackend:
    """The pattern-conditioned crystal diffusion sampler (see module docstring).

    Parameters
    ----------
    checkpoint : path, optional
        Checkpoint file (default: the weights shipped in the package).
    steps : int
        Reverse-diffusion steps (short schedule).
    cfg_scale : float
        Classifier-free guidance weight w: ε = ε_∅ + w (ε_c − ε_∅); 1 = conditional only.
    physics_guidance : bool
        Pull the last part of the reverse process toward the observed pattern.  Off by
        default: on the first 10 evaluation targets at 10 nm (n = 128 candidates, shipped
        weights) it lowered the top-10 match rate from 30 % to 10 %, and it pulls rock-salt
        NaCl proposals off Fm-3m; the screen and srfit refinement do the fitting to the data.
    guide_frac, guide_step : float
        Fraction of steps (at the end) that are guided, and the guidance step size.
    batch_size : int
        Candidates denoised together.
    device : str
    adapt_z : float
        Fraction of ``n`` sampled first as a pilot over the Z prior (PXRD only; 1 or 0 = no
        second round).  The pilot is screened against the pattern
        (:func:`diffpy_diffusion.screen.screen`: lattice scale, strain and size fitted), and the
        rest of ``n`` is spread over Z ∝ prior × exp(−(Rwp_Z − Rwp_best) / T), where Rwp_Z is
        the best screening Rwp of the pilot's Z-cells: cells of the wrong size rarely fit the
        peak positions and their density, so candidates go where the data point.
    adapt_z_temperature : float
        T above, in units of Rwp.
    pdf_condition : bool
        Condition PDF observations on the powder pattern their G(r) implies (default); False:
        the unconditioned "no pattern" embedding (for comparison).
    corrector_steps, corrector_lr : int, float
        Langevin corrector steps on the coordinates after each reverse step (predictor-corrector
        sampling as in DiffCSP, with its step rule ``lr (σ/σ_min)²``; each costs one more network
        call per step), and ``lr`` (not tuned here).  On evaluation-set targets 0–19 at 10 nm
        (n 128, adaptive Z) one corrector step raised the screened top-10 matches from 9 to 11
        of 20 and about doubled the sampling time; ``benchmarks/sampler_diagnostics.py``.
    seed_fraction : float
        Fraction of ``n`` whose reverse process starts from a retrieved template instead of
        pure noise (0 = off, the default).  On the validation split (PXRD, n = 128,
        diffusion+templates, leave-one-out) 0.25 gave top-1/top-10 17/18 of 24 targets at 10 nm
        against 16/18 without, and 16/18 of 23 at 1 nm both ways, at no extra time: one target
        either way is within what a different random stream alone changes, so it is not on by
        default (``docs/model_card.md``).  The templates (``library``, less ``exclude``, as the ``templates``
        backend retrieves them) are screened against the pattern and the best ``seed_templates``
        are used in turn; a composition no template fits samples all of ``n`` from noise.
    seed_t : float or sequence of float
        Diffusion time(s) in (0, 1] at which seeded candidates start (split evenly): the
        template is noised by the forward process to that level (coordinates by the wrapped
        normal of σ(t), the normalised lattice by the DDPM's ᾱ(t)) and denoised from there in
        ``round(steps · t)`` steps.
    seed_templates : int
        How many of the best-screening templates seed candidates.
    library, exclude : optional
        The template library and the members left out (as for the ``templates`` backend).
    hint_wyckoff : bool
        With a space-group hint (``observation.spacegroup``, groups 3-230), sample half of the
        candidates in that group (default): its primitive cell, a Wyckoff placement of the
        composition drawn with the training pool's site frequencies, the coordinates and the
        metric projected onto the group after every reverse step (``wyckoff.py``).  The other
        half keeps free coordinates, in the hinted system's metric (for A/B/C/I/F groups outside
        the cubic system: in the primitive cell, without one).  On 24 validation cells of 10-20
        atoms at 10 nm, targets with a matching raw proposal: 8 without a hint, 3 with every
        candidate in the true group (groups with many free coordinates lose), 10 with this
        half-and-half (``benchmarks/wyckoff_sampling.md``).  False: every candidate the
        metric-only way, as before.
    wyckoff_fraction : float
        Without a hint: the fraction of the free candidates (after the pilot) sampled in
        space-group-constrained form, in ``wyckoff_groups`` groups suggested by retrieval (the
        groups of the best-screening templates) and by the pilot's lattices (the most frequent
        groups of their Bravais types); or in ``spacegroups`` when given.  Off (0) by default:
        0.25 raised top-10 from 29 to 31 of 40 validation-split cells of 10-20 atoms at 10 nm
        (diffusion+templates, leave-one-out), left 40 validation targets at 1 nm unchanged, and
        cost 2-5 s per target; on the evaluation set it lost one target at 10 nm and four top-1
        answers at 1 nm, because the groups suggested are rarely the missed structures' groups
        (``benchmarks/wyckoff_sampling.md``).  With 0 the sampler is bit-identical to before.
    wyckoff_groups : int
        Groups tried by ``wyckoff_fraction``.
    spacegroups : sequence of int or str, optional
        Groups (3-230) for ``wyckoff_fraction`` instead of the suggested ones, e.g. ``"62,14"``.
    """

    name = "diffusion"
    version = __version__
    capabilities: ClassVar[set[str]] = {"composition", "xrd", "pdf", "spacegroup"}

    def __init__(self, checkpoint: str | Path | None = None, steps: int = 50, cfg_scale: float = 1.0,
                 physics_guidance: bool = False, guide_frac: float = 0.3, guide_step: float = 0.02,
                 batch_size: int = 64, device: str = "cpu", eta: float = 0.0, adapt_z: float = 0.5,
                 adapt_z_temperature: float = 0.05, corrector_steps: int = 1, corrector_lr: float = 1e-5,
                 pdf_condition: bool = True, seed_fraction: float = 0.0, seed_t=(0.3, 0.5),
                 seed_templates: int = 4, library: str | None = None, exclude=None,
                 wyckoff_fraction: float = 0.0, wyckoff_groups: int = 4, spacegroups=None, hint_wyckoff: bool = True,
                 **_ignored):
        self.checkpoint = Path(checkpoint) if checkpoint else DEFAULT_WEIGHTS
        self.steps = int(steps)
        self.cfg_scale = float(cfg_scale)
        self.physics_guidance = as_bool(physics_guidance, "physics_guidance", "diffusion")
        self.guide_frac = float(guide_frac)
        self.guide_step = float(guide_step)
        self.batch_size = int(batch_size)
        self.device = device
        self.eta = float(eta)
        if not 0.0 <= float(adapt_z) <= 1.0:
            raise ValueError(f"diffusion backend: adapt_z is a fraction of n in [0, 1], got {adapt_z}")
        self.adapt_z = float(adapt_z)
        self.adapt_z_temperature = float(adapt_z_temperature)
        self.corrector_steps = max(0, int(corrector_steps))
        self.corrector_lr = float(corrector_lr)
        self.pdf_condition = as_bool(pdf_condition, "pdf_condition", "diffusion")
        if not 0.0 <= float(seed_fraction) <= 1.0:
            raise ValueError(f"diffusion backend: seed_fraction is a fraction of n in [0, 1], got {seed_fraction}")
        self.seed_fraction = float(seed_fraction)
        ts = [seed_t] if isinstance(seed_t, (int, float)) else (
            [x for x in str(seed_t).replace(";", ",").split(",") if x.strip()] if isinstance(seed_t, str) else seed_t)
        self.seed_t = [float(x) for x in ts]
        if not self.seed_t or not all(0.0 < t <= 1.0 for t in self.seed_t):
            raise ValueError(f"diffusion backend: seed_t are diffusion times in (0, 1], got {seed_t!r}")
        self.seed_templates = max(1, int(seed_templates))
        self.library = library
        self.exclude = exclude
        if not 0.0 <= float(wyckoff_fraction) <= 1.0:
            raise ValueError(f"diffusion backend: wyckoff_fraction is a fraction of n in [0, 1], "
                             f"got {wyckoff_fraction}")
        self.wyckoff_fraction = float(wyckoff_fraction)
        self.wyckoff_groups = max(1, int(wyckoff_groups))
        if isinstance(spacegroups, str):
            spacegroups = [x for x in spacegroups.replace(";", ",").split(",") if x.strip()]
        self.spacegroups = [int(x) for x in spacegroups] if spacegroups else None
        if self.spacegroups and not all(3 <= g <= 230 for g in self.spacegroups):
            raise ValueError(f"diffusion backend: spacegroups are numbers 3-230 (P1 and P-1 are sampled "
                             f"unconstrained), got {spacegroups!r}")
        self.hint_wyckoff = as_bool(hint_wyckoff, "hint_wyckoff", "diffusion")
        self._model = None

    @classmethod
    def available(cls) -> bool:
        """True when the shipped weights are installed (checked without importing torch).

        ``--backend auto`` picks this backend only then; with ``checkpoint=...`` it runs anyway.
        """
        return DEFAULT_WEIGHTS.is_file()

    # ------------------------------------------------------------------ model
    def _load(self):
        if self._model is not None:
            return
        from .checkpoint import load_checkpoint
        from .model import CrystalDiffusionModel, ModelConfig
        from .process import Process, ProcessConfig

        if not self.checkpoint.is_file():
            raise BackendError(f"diffusion backend: no weights at {self.checkpoint} (train with `diffpy-diffuse train` "
                               "or pass checkpoint=...)")
        ck = load_checkpoint(self.checkpoint)
        cfg = ck["config"]
        model = CrystalDiffusionModel(ModelConfig(**cfg["model"]))
        try:
            model.load_state_dict(ck["ema"])
        except RuntimeError as exc:
            from ...errors import CheckpointError

            raise CheckpointError(f"{self.checkpoint}: weights do not fit the stored configuration: "
                                  f"{str(exc).splitlines()[0]}") from None
        model.eval().to(self.device)
        self._model = model
        self._process = Process(ProcessConfig(**cfg["process"]), device=self.device)
        self._elements = {int(z) for z in cfg.get("elements", [])}
        self._ck_step = int(ck["step"])

    # ------------------------------------------------------------------ sampling
    def sample(self, observation: Observation, n: int, *, seed: int | None = None, progress=None) -> list[Proposal]:
        """``n`` proposals with exactly the observation's composition (see class docstring)."""
        import torch
        from pymatgen.core import Element

        from .conditioning import N_CHANNELS, Q_GRID_POINTS, canonical_pattern

        if n <= 0:
            return []
        if not observation.composition:
            raise CompositionError("the diffusion backend needs a composition (e.g. --composition CdSe)")
        counts = integer_counts(observation.composition)
        zs = zs_all = z_options(counts, int(observation.max_atoms or TRAINED_MAX_ATOMS), observation.z)
        hint = None
        if observation.spacegroup not in (None, "") or observation.crystal_system:
            from .symmetry_hint import resolve_hint

            hint = resolve_hint(observation)
            zs = hint.allowed_z(counts, zs)  # (Wyckoff samples use primitive cells: any Z of zs_all)
        self._load()
        numbers_fu = {el: Element(el).Z for el in counts}
        unseen = [el for el, z in numbers_fu.items() if self._elements and z not in self._elements]
        if unseen:
            warnings.warn(f"diffusion backend: element(s) {', '.join(unseen)} never occur in the training data; "
                          "proposals for them are extrapolations (sampling continues)", UserWarning, stacklevel=2)
        if int(observation.max_atoms or 0) > TRAINED_MAX_ATOMS and max(zs) * sum(counts.values()) > TRAINED_MAX_ATOMS:
            warnings.warn(f"diffusion backend: cells above {TRAINED_MAX_ATOMS} atoms are beyond the training data",
                          UserWarning, stacklevel=2)
        t0 = time.time()
        seed_value = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % 2**31)
        gen = torch.Generator().manual_seed(seed_value)
        use_pattern = observation.kind == "xrd" or (observation.kind == "pdf" and self.pdf_condition)
        pattern = torch.as_tensor(canonical_pattern(observation) if use_pattern
                                  else np.zeros((N_CHANNELS, Q_GRID_POINTS), np.float32))[None]
        guide = None
        if self.physics_guidance and observation.kind == "xrd":
            from .guidance import PhysicsGuide, canonical_q_range

            guide = PhysicsGuide(pattern[0, 0].numpy(), list(numbers_fu.values()), size_nm=observation.size_nm,
                                 wavelength=observation.wavelength, q_range=canonical_q_range(observation))
        with torch.no_grad():
            c_cond = self._model.encode(pattern, torch.tensor([not use_pattern]), kind=observation.kind)
            c_null = self._model.encode(pattern, torch.tensor([True]))
        out: list[Proposal] = []
        per_fu = sum(counts.values())
        metric = hint.metric if hint is not None else None
        c_un = c_null if use_pattern else None

        def run(alloc, metric=metric):
            self._run_free(alloc, counts, c_cond, c_un, guide, gen, metric, seed, out, progress)

        # a conditioned PDF: the pilot is screened against the powder pattern its G(r) implies
        zobs = observation
        if observation.kind == "pdf" and use_pattern:
            from .conditioning import pdf_powder_observation

            zobs = pdf_powder_observation(observation)
        n_seeded = round(self.seed_fraction * n)
        if n_seeded > 0:
            seeds = self._template_seeds(observation, zobs if use_pattern else None, per_fu)
            if seeds:
                self._run_seeded(seeds, n_seeded, c_cond, c_un, guide, gen, metric, seed, out, progress)
        n_free = n - len(out)
        n1 = round(self.adapt_z * n_free)
        if self._wyckoff_hint(hint):
            # half the candidates the metric-only way (free coordinates in the hinted system: they are the
            # Z pilot, and in groups with many free coordinates they find more than the constrained ones),
            # the other half in the hinted group's Wyckoff form, Z weighted by the pilot's evidence
            n_half = n_free - n_free // 2
            n_before = len(out)
            if hint.centring > 1:
                # a centred group's conventional cell is far from the Niggli cells the model was trained
                # on: the free half is sampled as without a hint (on 24 validation cells, Cmcm PuB4Os was
                # matched by 11 of 64 free samples and by none in the conventional cell)
                run(allocate(n_half, zs_all, per_fu), metric=None)
            else:
                run(allocate(n_half, zs, per_fu))
            w = z_prior(zs_all, per_fu)
            if zobs.kind == "xrd" and len(zs_all) > 1:
                w = w * self._z_evidence(zobs, out[n_before:], zs_all)[0]
            self._run_wyckoff(n - len(out), counts, zs_all, w, [int(hint.spacegroup)], c_cond, c_un, guide, gen, seed,
                              out, progress)
            n_free = n1 = 0
        # (a crystal-system hint, or a group hint sampled the old way, is not mixed with other groups)
        n_sym = round(self.wyckoff_fraction * n_free) if hint is None else 0
        pilot_ranked: list[Proposal] = []
        w = z_prior(zs, per_fu)
        if not n_free:
            pass
        elif zobs.kind != "xrd" or len(zs) < 2 or not 0 < n1 < n_free:
            if n_sym and zobs.kind == "xrd" and 0 < n1 < n_free and not self.spacegroups:
                # one Z: the pilot still runs, for the space groups its best cells suggest
                n_before = len(out)
                run(allocate(n1, zs, per_fu))
                pilot_ranked = self._z_evidence(zobs, out[n_before:], zs)[1]
            run(allocate(n - len(out) - n_sym, zs, per_fu))
        else:
            n_before = len(out)
            run(allocate(n1, zs, per_fu))
            ev, pilot_ranked = self._z_evidence(zobs, out[n_before:], zs)
            w = w * ev
            run(allocate(n - len(out) - n_sym, zs, per_fu, weights=w))
        if n_sym:
            seed_groups = []
            if not self.spacegroups and zobs.kind == "xrd":
                seeds = self._template_seeds(observation, zobs, per_fu)
                seed_groups = [int(sd[3]["template_spacegroup"]) for sd in seeds
                               if (sd[3].get("template_spacegroup") or 0) >= 3]
            self._run_wyckoff(n - len(out), counts, zs, w, self._candidate_groups(pilot_ranked, seed_groups), c_cond,
                              c_un, guide, gen, seed, out, progress)
        if hint is not None:
            from ...refine.symmetry import LOOSE_TOLERANCES
            from .symmetry_hint import apply_hint

            # Wyckoff samples are exact: looked at first at a tight tolerance (a loose one can see another
            # group of the same order in a near-degenerate arrangement)
            tols = (EXACT_TOLERANCE, *LOOSE_TOLERANCES) if self._wyckoff_hint(hint) else LOOSE_TOLERANCES
            out = apply_hint(out, hint, max_atoms=int(observation.max_atoms or TRAINED_MAX_ATOMS), per_fu=per_fu,
                             min_dist=MIN_DIST, tolerances=tols)
        dt = time.time() - t0
        for p in out:
            p.provenance["sample_seconds_total"] = dt
        return out

    def _template_seeds(self, observation: Observation, screen_obs: Observation | None,
                        per_fu: int) -> list[tuple[list[int], np.ndarray, np.ndarray, dict]]:
        """Retrieved templates to start the reverse process from, best first.

        The ``templates`` backend's first :data:`SEED_POOL` re-decorated prototypes are screened
        against ``screen_obs`` (lattice scale, strain, size fitted; duplicates removed) and the
        best ``seed_templates`` kept, their cells strained to the fit; without a pattern to
        screen against, the first ones in retrieval order.  Each seed is (atomic numbers,
        Niggli cell in Å (3, 3), fractional coordinates, provenance).  Empty when retrieval has
        nothing for the composition.
        """
        from ...errors import DiffpyDiffusionError
        from ..templates import TemplatesBackend
        from .data import canonical_arrays

        try:
            # chemical order (no pattern pre-screen): the short screen below picks the seeds
            props = TemplatesBackend(library=self.library, exclude=self.exclude,
                                     prescreen=False).sample(observation, SEED_POOL)
        except DiffpyDiffusionError:
            return []
        props = [p for p in props if len(p.structure) <= TRAINED_MAX_ATOMS]
        if screen_obs is not None and screen_obs.kind == "xrd" and len(props) > 1:
            from ...screen import screen

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                props = screen(screen_obs, props, self.seed_templates, fuse_backends=False).kept
        seeds = []
        for p in props[: self.seed_templates]:
            lat, frac, numbers = canonical_arrays(p.structure)
            prov = {"seeded_from": p.provenance.get("template"), "z": len(numbers) // per_fu,
                    "template_spacegroup": p.provenance.get("template_spacegroup")}
            seeds.append(([int(z) for z in numbers], lat.astype(np.float64), frac.astype(np.float64), prov))
        return seeds

    def _run_seeded(self, seeds, n_seeded, c_cond, c_un, guide, gen, metric, seed, out, progress) -> None:
        """Denoise ``n_seeded`` candidates started from ``seeds`` (round robin) at the times ``seed_t``."""
        import torch
        from pymatgen.core import Element

        from .process import normalise_lattice

        jobs = [(seeds[i % len(seeds)], self.seed_t[(i // len(seeds)) % len(self.seed_t)]) for i in range(n_seeded)]
        # one batch per (start time, cell size): the steps differ by start time, and padding costs atoms²
        groups: dict[tuple[float, int], list] = {}
        for sd, t0 in jobs:
            groups.setdefault((t0, len(sd[0])), []).append(sd)
        for (t0, natoms), members in groups.items():
            for s0 in range(0, len(members), self.batch_size):
                chunk = members[s0: s0 + self.batch_size]
                lat_n = normalise_lattice(torch.as_tensor(np.stack([m[1] for m in chunk]), dtype=torch.float32),
                                          torch.full((len(chunk),), natoms))
                frac0 = torch.as_tensor(np.stack([m[2] for m in chunk]), dtype=torch.float32)
                lat, frac = self._reverse([m[0] for m in chunk], c_cond, c_un, guide, gen, metric=metric,
                                          init=(lat_n, frac0), t_start=t0)
                for b, m in enumerate(chunk):
                    species = [Element.from_Z(z).symbol for z in m[0]]
                    p = self._proposal(lat[b], frac[b, :natoms], species, m[3]["z"], seed, len(out))
                    p.provenance.update({**m[3], "seed_t": t0})
                    out.append(p)
                if progress:
                    progress(len(chunk))

    def _candidate_groups(self, pilot_ranked: list[Proposal], seed_groups: list[int]) -> list[int]:
        """Space groups to sample in: ``spacegroups``, else retrieval's and the pilot's suggestions.

        The groups of the best-screening retrieved templates (``seed_groups``) alternate with those
        of the pilot's lattices (``pilot_ranked``, the screened pilot, best first): the Bravais type of each
        of the 8 best-screening pilot cells (spglib on the lattice alone, 0.1 Å; the screen
        fitted their metric to the pattern) gives, in order of first appearance, the two groups
        of that type most frequent in the training pool among cells of that size
        (:func:`.wyckoff.likely_groups`).  At most ``wyckoff_groups``.  For the cells the model
        misses, those lattices are mostly wrong too (``benchmarks/wyckoff_sampling.md``).
        """
        if self.spacegroups:
            return list(self.spacegroups)
        from .wyckoff import bravais_type, likely_groups

        from_pilot: list[int] = []
        for p in pilot_ranked[:8]:
            for g in likely_groups(bravais_type(p.structure.lattice.matrix), len(p.structure)):
                if g not in from_pilot:
                    from_pilot.append(g)
        out: list[int] = []
        for g in itertools.chain.from_iterable(itertools.zip_longest(seed_groups, from_pilot)):
            if g is not None and g not in out:
                out.append(g)
        return out[: self.wyckoff_groups]

    def _wyckoff_hint(self, hint) -> bool:
        """Whether a hint's space group is imposed by Wyckoff sampling (``hint_wyckoff``, groups 3-230)."""
        return bool(self.hint_wyckoff and hint is not None and (hint.spacegroup or 0) >= 3)

    def _run_wyckoff(self, n, counts, zs, z_weights, groups, c_cond, c_un, guide, gen, seed, out, progress) -> None:
        """``n`` candidates sampled in space-group-constrained form (``wyckoff.py``).

        ``groups`` share ``n`` evenly; each candidate draws Z from ``z_weights`` among the Z whose
        primitive cell has Wyckoff placements in its group, and a placement from
        :func:`.wyckoff.combinations` with the prior :func:`.wyckoff.combination_weights`.
        Candidates no group can take are sampled free (with a warning when ``groups`` was given
        by the user).
        """
        import torch
        from pymatgen.core import Element

        from .wyckoff import BatchConstraint, cached_template, combination_weights, combinations

        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        options = []
        for g in groups:
            zopt = [(z, c) for z, wz in zip(zs, z_weights) if wz > 0
                    for c in [combinations(g, {el: k * z for el, k in counts.items()})] if c]
            if zopt:
                options.append((g, zopt))
        jobs, prior = [], {}
        for i in range(n if options else 0):
            g, zopt = options[i % len(options)]
            wz = np.array([float(z_weights[zs.index(z)]) for z, _ in zopt])
            z, combos = zopt[int(rng.choice(len(zopt), p=wz / wz.sum()))]
            key = (g, z)
            if key not in prior:
                prior[key] = combination_weights(g, combos)
            # placements that repeat in a smaller cell belong to another group: drawn again (a few times)
            for _ in range(MAX_REDRAWS):
                t = cached_template(g, combos[int(rng.choice(len(combos), p=prior[key]))])
                if not t.extra_translations:
                    break
            jobs.append((t, z))
        by_size: dict[int, list] = {}
        for job in jobs:
            by_size.setdefault(job[0].natoms, []).append(job)
        for natoms, members in by_size.items():
            for s0 in range(0, len(members), self.batch_size):
                chunk = members[s0: s0 + self.batch_size]
                numbers = [[Element(el).Z for el in t.species] for t, _ in chunk]
                lat, frac = self._reverse(numbers, c_cond, c_un, guide, gen,
                                          constraint=BatchConstraint([t for t, _ in chunk]))
                for b, (t, z) in enumerate(chunk):
                    p = self._proposal(lat[b], frac[b, :natoms], list(t.species), z, seed, len(out))
                    p.provenance["wyckoff"] = {"spacegroup": t.spacegroup,
                                               "orbits": " ".join(f"{el}:{lab}" for el, lab in t.orbits)}
                    out.append(p)
                if progress:
                    progress(len(chunk))
        rest = n - len(jobs)
        if rest > 0 and groups and not options:
            warnings.warn(f"diffusion backend: no Wyckoff placement of {counts} with Z in {zs} in space group(s) "
                          f"{', '.join(map(str, groups))}; sampling {rest} candidate(s) without the constraint",
                          UserWarning, stacklevel=3)
        if rest > 0:
            # no group could take them: free samples, Z as the main round
            alloc = allocate(rest, zs, sum(counts.values()), weights=np.asarray(z_weights, dtype=float))
            self._run_free(alloc, counts, c_cond, c_un, guide, gen, None, seed, out, progress)

    def _run_free(self, alloc, counts, c_cond, c_un, guide, gen, metric, seed, out, progress) -> None:
        """Candidates with free coordinates: ``k`` of each ``(Z, k)`` in ``alloc`` (``metric``: :meth:`_reverse`)."""
        from pymatgen.core import Element

        # one batch per Z (chunked at batch_size): the network's cost grows as atoms², so a
        # 4-atom cell must not be padded to the 20 atoms of another Z
        numbers_fu = {el: Element(el).Z for el in counts}
        chunks = [[(z, [el for el, c in counts.items() for _ in range(c * z)])] * min(self.batch_size, k - s)
                  for z, k in alloc for s in range(0, k, self.batch_size)]
        for chunk in chunks:
            lat, frac = self._reverse([[numbers_fu[el] for el in sp] for _, sp in chunk], c_cond, c_un, guide, gen,
                                      metric=metric)
            for b, (z, sp) in enumerate(chunk):
                out.append(self._proposal(lat[b], frac[b, : len(sp)], sp, z, seed, len(out)))
            if progress:
                progress(len(chunk))

    def _z_evidence(self, observation, pilot: list[Proposal], zs: list[int]) -> tuple[np.ndarray, list[Proposal]]:
        """exp(−(Rwp_Z − Rwp_best) / T) per Z from a screen of the pilot (1 for Z the pilot did not
        sample), and the screened pilot, best first."""
        from ...screen import screen

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ranked = screen(observation, [p.copy() for p in pilot], 1, do_dedupe=False).ranked
        best: dict[int, float] = {}
        for q in ranked:
            z = int(q.provenance["z"])
            best[z] = min(best.get(z, np.inf), float(q.scores["screen_rwp"]))
        if not best:
            return np.ones(len(zs)), ranked
        r0 = min(best.values())
        ev = np.array([math.exp(-(best[z] - r0) / max(self.adapt_z_temperature, 1e-6)) if z in best else 1.0
                       for z in zs])
        for p in pilot:
            p.provenance["z_evidence"] = {int(z): round(float(e), 4) for z, e in zip(zs, ev)}
        return ev, ranked

    def _reverse(self, nums_list, c_cond, c_null, guide, gen, metric=None, init=None, t_start: float = 1.0,
                 constraint=None):
        """Denoise one padded batch; ``metric`` (a crystal system's, or None) is imposed on the lattice every step.

        ``constraint`` (a :class:`.wyckoff.BatchConstraint`, cells of one size) projects the
        coordinates and the lattice onto each cell's space group after every step.

        ``init`` = (normalised lattices (B, 3, 3), fractional coordinates (B, N, 3)): start at
        time ``t_start`` from these, noised by the forward process, in ``round(steps · t_start)``
        steps, instead of from pure noise at t = 1.
        """
        import torch

        from .process import alpha_bar, denormalise_lattice, sigma
        from .symmetry_hint import project_lattice

        model, proc = self._model, self._process
        B = len(nums_list)
        N = max(len(x) for x in nums_list)
        numbers = torch.zeros(B, N, dtype=torch.long)
        mask = torch.zeros(B, N, dtype=torch.bool)
        for b, x in enumerate(nums_list):
            numbers[b, : len(x)] = torch.tensor(x)
            mask[b, : len(x)] = True
        natoms = mask.sum(1)
        if init is None:
            lat = torch.randn(B, 3, 3, generator=gen)
            frac = torch.rand(B, N, 3, generator=gen) * mask[..., None]
            ts = proc.timesteps(self.steps).tolist()
        else:
            # the forward process q(x_t | x_0) at t_start: DDPM for the lattice, wrapped normal on the torus
            tt0 = torch.tensor([float(t_start)])
            ab = alpha_bar(tt0, proc.cfg.cosine_s)
            lat = ab.sqrt() * init[0] + (1 - ab).sqrt() * torch.randn(B, 3, 3, generator=gen)
            frac = torch.zeros(B, N, 3)
            frac[:, : init[1].shape[1]] = init[1]
            frac = torch.remainder(frac + sigma(tt0, proc.cfg) * torch.randn(B, N, 3, generator=gen), 1.0)
            frac = frac * mask[..., None]
            ts = torch.linspace(float(t_start), 0.0, max(1, round(self.steps * float(t_start))) + 1).tolist()
        if constraint is not None:
            lat, frac = constraint.lattice(lat), constraint.frac(frac)
        n_steps = len(ts) - 1
        n_guided = round(self.guide_frac * n_steps) if guide is not None else 0
        rows = CHUNK_CELLS if N > CHUNK_ABOVE_ATOMS else B

        def net(f, la, tt, c):
            # the network sees one cell at a time (no batch statistics), so chunking changes nothing but speed
            if B <= rows:
                return model(numbers, f, la, tt, mask, cond=c)
            outs = [model(numbers[k: k + rows], f[k: k + rows], la[k: k + rows], tt[k: k + rows], mask[k: k + rows],
                          cond=c[k: k + rows]) for k in range(0, B, rows)]
            return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

        cc = c_cond.expand(B, -1)
        cn = c_null.expand(B, -1) if c_null is not None and self.cfg_scale != 1.0 else None
        for i, (t, s) in enumerate(itertools.pairwise(ts)):
            tt = torch.full((B,), t)
            with torch.no_grad():
                pl, pf = net(frac, lat, tt, cc)
                if cn is not None:
                    ul, uf = net(frac, lat, tt, cn)
                    pl = ul + self.cfg_scale * (pl - ul)
                    pf = uf + self.cfg_scale * (pf - uf)
            lat_new, frac_new, lat0 = proc.step(lat, frac, pl.float(), pf.float(), t, s, mask, eta=self.eta,
                                                generator=gen)
            if metric is not None:
                # why: physics guidance should simulate a cell of the hinted system
                lat0 = project_lattice(lat0, metric)
            if constraint is not None:
                lat0, frac_new = constraint.lattice(lat0), constraint.frac(frac_new)
            if i >= n_steps - n_guided and s > 0:
                # guide with the predicted clean lattice and the denoised coordinates
                sig2 = float(sigma(torch.tensor([s]), proc.cfg)) ** 2
                f0 = torch.remainder(frac_new + sig2 * pf.float() * proc.lam(torch.tensor([s])).sqrt(), 1.0)
                _chi, g_f, g_l = guide(denormalise_lattice(lat0, natoms), f0, numbers, mask)
                gnorm = (g_f.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None]
                         / (3 * natoms.float()).sqrt()[:, None, None])
                stepped = torch.remainder(frac_new - self.guide_step * g_f / gnorm, 1.0)
                frac_new = torch.where(mask[..., None], stepped, frac_new)
                # lattice: a relative step of size guide_step/2 along -∇χ (direction is unit-free)
                ldir = g_l / g_l.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None]
                lat_new = lat_new - 0.5 * self.guide_step * ldir * lat0.flatten(1).norm(dim=1)[:, None, None]
            if metric is not None:
                # why: keep the state on the metric subspace so the network denoises a cell of that system
                lat_new = project_lattice(lat_new, metric)
            if constraint is not None:
                lat_new, frac_new = constraint.lattice(lat_new), constraint.frac(frac_new)
            for _ in range(self.corrector_steps if s > 0 else 0):
                # Langevin corrector on the coordinates at time s (predictor-corrector, as in DiffCSP)
                ts_ = torch.full((B,), s)
                with torch.no_grad():
                    _pl, pf_s = net(frac_new, lat_new, ts_, cc)
                    if cn is not None:  # the same classifier-free guidance as the predictor
                        _ul, uf_s = net(frac_new, lat_new, ts_, cn)
                        pf_s = uf_s + self.cfg_scale * (pf_s - uf_s)
                frac_new = proc.corrector(frac_new, pf_s.float(), s, mask, step_lr=self.corrector_lr, generator=gen)
                if constraint is not None:
                    frac_new = constraint.frac(frac_new)
            lat, frac = lat_new, frac_new
        lat, frac = denormalise_lattice(lat, natoms).double(), frac.double()
        if constraint is not None:
            lat, frac = constraint.lattice(lat), constraint.frac(frac)
        if metric is not None or constraint is not None:
            # exact to float64 rounding, and right-handed by inverting the cell *and* the coordinates
            # ((−f)(−L) = f L: same atoms, same metric; flipping one axis, as _proposal does, would break α = β = γ)
            lat = project_lattice(lat, metric) if metric is not None else lat
            left = torch.linalg.det(lat) < 0
            lat = torch.where(left[:, None, None], -lat, lat)
            frac = torch.where(left[:, None, None], torch.remainder(-frac, 1.0), frac)
        return lat, frac

    def _proposal(self, lattice, frac, species, z, seed, index) -> Proposal:
        from pymatgen.core import Lattice, Structure

        L = lattice.numpy().copy()
        if not np.isfinite(L).all():
            L = np.eye(3) * (15.0 * len(species)) ** (1 / 3)
        if np.linalg.det(L) < 0:
            L[2] = -L[2]
            frac = frac.clone()
            frac[:, 2] = -frac[:, 2]
        vol = abs(np.linalg.det(L))
        vmin = 4.0 * len(species)  # Å³: no crystal is denser than ~4 Å³/atom
        if vol < vmin:
            L = L * (vmin / max(vol, 1e-9)) ** (1 / 3)
        f = np.mod(np.nan_to_num(frac.numpy(), nan=0.5), 1.0)
        s = Structure(Lattice(L), species, f)
        s = _separate(s)
        return Proposal(structure=s, backend=self.name, seed=seed,
                        provenance={"backend_version": self.version, "z": z, "index": index, "steps": self.steps,
                                    "cfg_scale": self.cfg_scale, "physics_guidance": self.physics_guidance,
                                    "checkpoint": str(self.checkpoint), "checkpoint_step": self._ck_step})


def _separate(s, dmin: float = MIN_DIST, iters: int = 50):
    """Push apart atoms closer than ``dmin`` Å (minimum image); expand the cell if that fails."""
    for _ in range(iters):
        d = s.distance_matrix + np.eye(len(s)) * 1e9
        if len(s) < 2 or d.min() >= dmin:
            return s
        i, j = np.unravel_index(np.argmin(d), d.shape)
        _, img = s[i].distance_and_image(s[j])
        vec = s.lattice.get_cartesian_coords(s[j].frac_coords + img - s[i].frac_coords)
        nrm = np.linalg.norm(vec)
        u = vec / nrm if nrm > 1e-8 else np.random.default_rng(i * 31 + j).normal(size=3)
        u = u / np.linalg.norm(u)
        push = (dmin * 1.05 - nrm) / 2
        s.translate_sites([i], -push * u, frac_coords=False)
        s.translate_sites([j], push * u, frac_coords=False)
    if len(s) > 1 and (s.distance_matrix + np.eye(len(s)) * 1e9).min() < dmin:
        s.scale_lattice(s.volume * 1.5)
        return _separate(s, dmin, iters)
    return s
