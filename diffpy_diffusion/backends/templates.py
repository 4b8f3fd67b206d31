"""The ``templates`` backend: the composition substituted into known structures.

For a composition such as ``BaTiO3`` the backend looks up every structure type of the
library with the same *anonymous* stoichiometry (``ABC3``), maps the library's species
onto the target's (elements with equal counts are interchangeable; every permutation is
tried when there are few, ordered by chemical similarity — Pauling electronegativity
and atomic radius — so the electronegativity order is kept first), rescales the cell to
the target's sum of atomic volumes and returns one proposal per (type, member,
assignment), best first.

Libraries
---------
* default: ``"pool,aflow"``, the union of the next two;
* ``library="pool"``: the indexed training pool shipped inside the package
  (``backends/data/pool_templates.npz``, about 1.9 MB: every structure of the pool below with its
  space group and Wyckoff orbits precomputed, so no dataset and no spglib run is needed; see
  ``backends/data/README.md`` for its sources and licences).  It holds the same members as
  ``"training-pool"`` and gives the same proposals;
* ``library="aflow"``: pymatgen's bundled AFLOW prototype library (288 prototypes);
* ``library="training-pool"``: the training pool of docs/design.md (MP-20 train/val,
  MP-20 test rows after the first 1,000, MPTS-52 ≤ 20 atoms, perov_5; never an
  evaluation-set ``material_id``), grouped into structure types by
  (anonymous formula, atoms per cell, space group, Wyckoff orbits);
* ``library=PATH``: a folder of CIF files, or a CSV file with a ``cif`` column
  (and optionally ``material_id``).

A library is indexed once and cached as ``.npz`` in ``$DIFFPY_DIFFUSION_CACHE``
(default: the user cache folder, :func:`diffpy_diffusion.datasets.cache_dir`); the cache key
contains the files' sizes and modification times, so editing the library re-indexes it.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import cache, lru_cache, reduce
from pathlib import Path

import numpy as np

from ..errors import BackendError, InputFileError
from ..hookspecs import hookimpl
from ..types import Observation, Proposal, integer_counts
from .common import as_bool, crystal_system, spacegroup_number
from .priors import atomic_volume

__version__ = "0.1.0"

#: Tried assignments per (type, member) when elements share a count: all when ≤ this many.
MAX_PERMUTATIONS = 24
#: Templates proposed in chemical order before the pattern has a say (:meth:`TemplatesBackend.sample`).
#: On the validation split (48 targets, leave-one-out) the first matching template, where the
#: library held one, was among the first 16 in chemical order for 37 of 42 targets and never
#: between 32 and 128; the four beyond were at 131–458 (what the pattern pre-screen is for).
RETRIEVAL_KEEP = 32
#: Retrieval positions up to which the pattern pre-screen ranks (``screen.prescreen``, about 1–3.5 ms
#: per template): at most 608 templates after the kept head.
PRESCREEN_MAX = 640


def cache_dir() -> Path:
    """Folder for indexed libraries: :func:`diffpy_diffusion.datasets.cache_dir`."""
    from ..datasets import cache_dir as _shared_cache_dir

    return _shared_cache_dir()


@dataclass
class Library:
    """An indexed template library (flat arrays, as cached).

    Attributes
    ----------
    name : str
    lattices : (M, 3, 3) Å rows
    frac : (N, 3); numbers : (N,); offsets : (M+1,) site ranges per member
    anon : list[str] anonymous reduced formula key per member, e.g. ``"1-1-3"``
    type_key : list[str] coarse structure-type key per member ``anon|natoms|spacegroup``; the full key
        (:meth:`full_type_key`) adds the Wyckoff orbits, computed lazily per anonymous formula
        (spglib on the whole pool takes minutes) and cached next to the index
    ids : list[str] material id / prototype label per member
    spacegroup : (M,) int
    """

    name: str
    lattices: np.ndarray
    frac: np.ndarray
    numbers: np.ndarray
    offsets: np.ndarray
    anon: list[str]
    type_key: list[str]
    ids: list[str]
    spacegroup: np.ndarray

    cache_path: str | None = None
    _wyck: dict | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def _wyck_file(self) -> Path | None:
        return Path(self.cache_path).with_suffix(".wyckoff.json") if self.cache_path else None

    def ensure_wyckoff(self, members) -> None:
        """Compute (spglib) and cache the Wyckoff signature of ``members`` that lack one."""
        import json

        if self._wyck is None:
            self._wyck = {}
            f = self._wyck_file()
            if f is not None and f.exists():
                try:
                    self._wyck = {int(k): v for k, v in json.loads(f.read_text()).items()}
                except (OSError, ValueError):
                    self._wyck = {}
        todo = [int(i) for i in members if int(i) not in self._wyck]
        if not todo:
            return
        for i in todo:
            lat, frac, z = self.member(i)
            self._wyck[i] = _symmetry(lat, frac, z)[1]
        f = self._wyck_file()
        if f is not None:
            try:
                tmp = f.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps({str(k): v for k, v in self._wyck.items()}))
                os.replace(tmp, f)
            except OSError:
                pass

    def full_type_key(self, i: int) -> str:
        """``anon|natoms|spacegroup|wyckoff-orbits`` (call :meth:`ensure_wyckoff` first)."""
        w = (self._wyck or {}).get(int(i), "")
        return f"{self.type_key[i]}|{w}"

    def member(self, i: int):
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.lattices[i], self.frac[a:b], self.numbers[a:b]

    @cache  # noqa: B019 - one library object per process
    def by_anon(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, k in enumerate(self.anon):
            out.setdefault(k, []).append(i)
        return out

    def __hash__(self) -> int:
        return id(self)


def anon_key(numbers) -> str:
    """Anonymous reduced stoichiometry, counts sorted ascending, e.g. BaTiO3 -> ``"1-1-3"``."""
    c = sorted(Counter(int(z) for z in numbers).values())
    g = reduce(math.gcd, c)
    return "-".join(str(x // g) for x in c)


def _symmetry(lat, frac, numbers, symprec=0.1) -> tuple[int, str]:
    """(space-group number, Wyckoff signature) of a cell; the signature lists the Wyckoff
    letter and multiplicity of every orbit, sorted, e.g. ``"2a.2b"`` for NaCl's primitive cell."""
    import spglib

    try:
        d = spglib.get_symmetry_dataset((lat, frac, numbers), symprec=symprec)
    except Exception:  # noqa: BLE001 - spglib raises various errors on odd cells
        d = None
    if d is None:
        return 1, ""
    orbits = Counter((int(e), d.wyckoffs[i]) for i, e in enumerate(d.equivalent_atoms))
    sig = ".".join(sorted(f"{m}{w}" for (_, w), m in orbits.items()))
    return int(d.number), sig


def _primitive(lat, frac, numbers, symprec=0.01):
    import spglib

    try:
        res = spglib.standardize_cell((lat, frac, numbers), to_primitive=True, no_idealize=True,
                                      symprec=symprec)
    except Exception:  # noqa: BLE001
        res = None
    if res is None or len(res[2]) >= len(numbers):
        return lat, frac, numbers
    return np.asarray(res[0]), np.asarray(res[1]), np.asarray(res[2])


def _build(name: str, items) -> Library:
    """Index (id, lattice, frac, numbers, spacegroup or None) tuples."""
    lats, fracs, nums, offs, anon, tkey, ids, sgs = [], [], [], [0], [], [], [], []
    for mid, lat, frac, z, sg in items:
        z = np.asarray(z, dtype=np.int64)
        if sg is None:
            sg, _ = _symmetry(lat, frac, z)
        a = anon_key(z)
        lats.append(np.asarray(lat, float))
        fracs.append(np.asarray(frac, float) % 1.0)
        nums.append(z)
        offs.append(offs[-1] + len(z))
        anon.append(a)
        tkey.append(f"{a}|{len(z)}|{sg}")
        ids.append(str(mid))
        sgs.append(int(sg))
    if not ids:
        raise InputFileError(name, "template library holds no readable structure")
    return Library(name, np.stack(lats), np.concatenate(fracs), np.concatenate(nums),
                   np.asarray(offs), anon, tkey, ids, np.asarray(sgs))


def _save(lib: Library, path: Path) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, name=lib.name, lattices=lib.lattices, frac=lib.frac, numbers=lib.numbers,
                        offsets=lib.offsets, anon=np.array(lib.anon), type_key=np.array(lib.type_key),
                        ids=np.array(lib.ids), spacegroup=lib.spacegroup)
    os.replace(tmp, path)


def _load(path: Path) -> Library:
    d = np.load(path, allow_pickle=False)
    return Library(str(d["name"]), d["lattices"], d["frac"], d["numbers"], d["offsets"],
                   [str(x) for x in d["anon"]], [str(x) for x in d["type_key"]],
                   [str(x) for x in d["ids"]], d["spacegroup"], cache_path=str(path))


def _aflow_errata(label: str, s):
    """Corrected structure for prototypes whose entry in pymatgen's AFLOW library is wrong, else ``s``.

    * ``A2B_tI12_141_e_a`` (anatase, C5): pymatgen's entry puts Ti at 4a of origin choice 2 but
      keeps O at the origin-choice-1 value z = 0.208, which gives two Ti–O bonds of 2.05 Å
      instead of the TiO6 octahedron (4 × 1.93 + 2 × 1.98 Å).  Rebuilt in origin choice 1
      (Ti 4a (0, 0, 0), O 8e (0, 0, z)) with the entry's own a, c and z, which agree with
      Horn, Schwerdtfeger & Meagher, Z. Kristallogr. 136, 273 (1972).
    """
    if label == "A2B_tI12_141_e_a":
        from pymatgen.core import Lattice, Structure

        a, c = s.lattice.a, 2.0 * float(np.linalg.norm(s.lattice.matrix[2] @ np.array([0, 0, 1.0])))
        return Structure.from_spacegroup("I4_1/amd", Lattice.tetragonal(a, c), ["Ti", "O"],
                                         [[0, 0, 0], [0, 0, 0.20806]])
    return s


def _aflow_items():
    from pymatgen.analysis.prototypes import AFLOW_PROTOTYPE_LIBRARY

    for entry in AFLOW_PROTOTYPE_LIBRARY:
        s = _aflow_errata(entry.get("tags", {}).get("aflow"), entry["snl"].structure)
        if not s.is_ordered:
            continue
        z = np.array([sp.Z for sp in s.species])
        lat, frac, z = _primitive(s.lattice.matrix, s.frac_coords, z)
        tags = entry.get("tags", {})
        label = tags.get("aflow") or tags.get("mineral") or s.composition.reduced_formula
        yield label, lat, frac, z, None


def _pool_items():
    from ..datasets import iter_training_pool

    for e in iter_training_pool():
        lat, frac, z = e.arrays()
        yield e.material_id, lat, frac, z, e.spacegroup


def _path_items(path: Path):
    from ..datasets import cif_to_structure, parse_p1_cif

    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".cif")
        for f in files:
            try:
                s = cif_to_structure(f.read_text(errors="replace"))
            except Exception as exc:  # noqa: BLE001 - skip unreadable library files, say which
                warnings.warn(f"template library: skipping {f}: {exc}", stacklevel=2)
                continue
            if not s.is_ordered:
                continue
            yield f.stem, s.lattice.matrix, s.frac_coords, [sp.Z for sp in s.species], None
    else:
        import pandas as pd

        df = pd.read_csv(path)
        if "cif" not in df.columns:
            raise InputFileError(path, "template library CSV needs a 'cif' column")
        idcol = "material_id" if "material_id" in df.columns else None
        for i, cif in enumerate(df["cif"]):
            try:
                lat, frac, z = parse_p1_cif(cif)
            except Exception as exc:  # noqa: BLE001
                warnings.warn(f"template library {path}: skipping row {i + 2}: {exc}", stacklevel=2)
                continue
            yield (df[idcol].iloc[i] if idcol else f"row{i + 2}"), lat, frac, z, None


def _fingerprint(paths) -> str:
    h = hashlib.sha1(b"templates-index-v3")  # v3: AFLOW errata (anatase)
    for p in paths:
        st = Path(p).stat()
        h.update(f"{Path(p).resolve()}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


#: The indexed training pool shipped with the package (``library="pool"``, the default).
SHIPPED_LIBRARY = Path(__file__).resolve().parent / "data" / "pool_templates.npz"
#: Fixed-point scale of the shipped fractional coordinates (uint16): 1/65536 of a cell edge,
#: ≤ 2e-4 Å on a 20 Å axis, far below what screening and refinement resolve.
_FRAC_SCALE = 65536


def export_library(lib: Library, path: str | Path) -> Path:
    """Write ``lib`` compactly for shipping (float32 lattices, uint16 fractional coordinates,
    precomputed Wyckoff signatures) as ``.npz``; read back by ``load_library("pool")``.

    Computes the Wyckoff orbits of every member first (spglib, minutes for the whole pool).
    """
    path = Path(path)
    lib.ensure_wyckoff(range(len(lib)))
    frac_q = np.rint((np.asarray(lib.frac) % 1.0) * _FRAC_SCALE).astype(np.int64) % _FRAC_SCALE
    arrays = dict(
        format=np.array("diffpy-diffusion-templates-1"),
        lattices=np.asarray(lib.lattices, np.float32),
        frac_u16=frac_q.astype(np.uint16),
        numbers=np.asarray(lib.numbers, np.uint8),
        offsets=np.asarray(lib.offsets, np.int32),
        ids=np.array(lib.ids).astype("S"),
        spacegroup=np.asarray(lib.spacegroup, np.uint8),
        wyckoff=np.array([lib._wyck.get(i, "") for i in range(len(lib))]).astype("S"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def _load_shipped(path: Path = SHIPPED_LIBRARY) -> Library:
    """The library written by :func:`export_library` (no pickle: ``allow_pickle=False``)."""
    try:
        with np.load(path, allow_pickle=False) as d:
            if str(d["format"]) != "diffpy-diffusion-templates-1":
                raise ValueError(f"unknown format {str(d['format'])!r}")
            lat = d["lattices"].astype(np.float64)
            frac = d["frac_u16"].astype(np.float64) / _FRAC_SCALE
            numbers = d["numbers"].astype(np.int64)
            offsets = d["offsets"].astype(np.int64)
            ids = [x.decode() for x in d["ids"]]
            sgs = d["spacegroup"].astype(np.int64)
            wyck = [x.decode() for x in d["wyckoff"]]
    except (OSError, KeyError, ValueError) as exc:
        raise InputFileError(path, f"not a readable template library ({exc}); reinstall diffpy-diffusion") from None
    anon = [anon_key(numbers[offsets[i]:offsets[i + 1]]) for i in range(len(ids))]
    tkey = [f"{a}|{offsets[i + 1] - offsets[i]}|{sgs[i]}" for i, a in enumerate(anon)]
    lib = Library("pool", lat, frac, numbers, offsets, anon, tkey, ids, sgs)
    lib._wyck = dict(enumerate(wyck))
    return lib


def default_library() -> str:
    """``"pool,aflow"`` (the shipped pool and pymatgen's AFLOW prototypes) when the shipped library
    is installed, else ``"aflow"``.

    The AFLOW prototypes are added because the pool, made of MP-20/MPTS-52/perov_5 compounds,
    lacks canonical types of the elements (no fcc cell is among Ni's or Cu's ten nearest types, no
    diamond among Si's) that a crystallographer expects first.
    """
    return "pool,aflow" if SHIPPED_LIBRARY.is_file() else "aflow"


def union(libraries: list[Library]) -> Library:
    """One library holding the members of ``libraries`` in order (Wyckoff signatures computed)."""
    wyck: dict[int, str] = {}
    start = 0
    for lib in libraries:
        lib.ensure_wyckoff(range(len(lib)))
        wyck.update({start + i: w for i, w in lib._wyck.items()})
        start += len(lib)
    offsets = [np.asarray([0])]
    n = 0
    for lib in libraries:
        offsets.append(np.asarray(lib.offsets[1:]) + n)
        n += int(lib.offsets[-1])
    out = Library(
        ",".join(lib.name for lib in libraries),
        np.concatenate([lib.lattices for lib in libraries]),
        np.concatenate([lib.frac for lib in libraries]),
        np.concatenate([lib.numbers for lib in libraries]),
        np.concatenate(offsets),
        [a for lib in libraries for a in lib.anon],
        [k for lib in libraries for k in lib.type_key],
        [i for lib in libraries for i in lib.ids],
        np.concatenate([lib.spacegroup for lib in libraries]),
    )
    out._wyck = wyck
    return out


@lru_cache(maxsize=8)
def load_library(library: str | None = None) -> Library:
    """Index (or load from cache) a template library.

    Parameters
    ----------
    library : str, optional
        ``"pool"`` (the shipped, indexed training pool), ``"aflow"`` (pymatgen's AFLOW
        prototypes), ``"training-pool"`` (indexed from ``$DIFFPY_DIFFUSION_DATA``), a path to a
        folder of CIFs or a CSV file with a ``cif`` column, or several of these separated by
        commas (their union, e.g. ``"pool,aflow,my_cifs/"``).  Default (``None``):
        :func:`default_library`.
    """
    if library in (None, ""):
        library = default_library()
    if "," in library:
        return union([load_library(part.strip()) for part in library.split(",") if part.strip()])
    if library == "pool":
        if not SHIPPED_LIBRARY.is_file():
            raise InputFileError(SHIPPED_LIBRARY, "the shipped template library is not installed; "
                                                  "use --library aflow or training-pool")
        return _load_shipped()
    if library == "aflow":
        import importlib.util

        # locate the bundled JSON without importing the module (its import parses all 288 prototypes)
        spec = importlib.util.find_spec("pymatgen.analysis.prototypes")
        key = _fingerprint([Path(spec.origin).parent / "aflow_prototypes.json.gz"])
        name, items = "aflow", _aflow_items
    elif library == "training-pool":
        from ..datasets import data_dir

        root = data_dir()
        key = _fingerprint(sorted(root.glob("*/*.csv.gz")))
        name, items = "training-pool", _pool_items
    else:
        p = Path(library).expanduser()
        if not p.exists():
            raise InputFileError(p, "template library not found (give a folder of CIFs, a CSV with a "
                                    "'cif' column, 'aflow' or 'training-pool')")
        files = sorted(p.rglob("*.cif")) if p.is_dir() else [p]
        key = _fingerprint(files)
        name, items = str(p), (lambda: _path_items(p))
    cache = cache_dir() / f"templates-{name if name in ('aflow', 'training-pool') else 'user'}-{key}.npz"
    if cache.exists():
        try:
            return _load(cache)
        except Exception:  # noqa: BLE001 - a broken cache is rebuilt
            pass
    lib = _build(name, items())
    try:
        _save(lib, cache)
        lib.cache_path = str(cache)
    except OSError as exc:  # read-only home: work uncached
        warnings.warn(f"could not cache template index at {cache}: {exc}", stacklevel=2)
    return lib


# --------------------------------------------------------------------------- chemistry

@cache
def _elem_props(z: int) -> tuple[float, float]:
    """(Pauling electronegativity, atomic radius Å) with fallbacks for missing values."""
    from pymatgen.core.periodic_table import Element

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for elements without tabulated radii
        el = Element.from_Z(int(z))
        x = el.X if el.X and not math.isnan(el.X) else 1.5
        r = float(el.atomic_radius or el.atomic_radius_calculated or 1.5)
    return float(x), r


@cache  # ~15,000 calls while the pre-screen substitutes 640 templates
def _symbol(z: int) -> str:
    from pymatgen.core.periodic_table import Element

    return Element.from_Z(int(z)).symbol


def assignments(template_counts: dict[int, int], target_counts: dict[int, int], limit: int = MAX_PERMUTATIONS):
    """Species maps template Z -> target Z that conserve the anonymous stoichiometry.

    Elements whose reduced counts are equal may be exchanged; returns a list of
    ``(distance, mapping)`` sorted by chemical distance (count-weighted mean of
    ``|ΔX| + |Δr|/Å``), at most ``limit`` per call (all of them when few).
    """
    gt = reduce(math.gcd, template_counts.values())
    gs = reduce(math.gcd, target_counts.values())
    groups_t: dict[int, list[int]] = {}
    groups_s: dict[int, list[int]] = {}
    for z, n in template_counts.items():
        groups_t.setdefault(n // gt, []).append(z)
    for z, n in target_counts.items():
        groups_s.setdefault(n // gs, []).append(z)
    if sorted((k, len(v)) for k, v in groups_t.items()) != sorted((k, len(v)) for k, v in groups_s.items()):
        return []
    keys = sorted(groups_t)
    per_group = []
    for k in keys:
        # electronegativity order first: the order-preserving map leads the permutations
        src = sorted(groups_t[k], key=lambda z: _elem_props(z)[0])
        dst = sorted(groups_s[k], key=lambda z: _elem_props(z)[0])
        per_group.append([(src, list(p)) for p in itertools.permutations(dst)])
    total = sum(template_counts.values())
    out = []
    for combo in itertools.islice(itertools.product(*per_group), 2000):
        mapping = {}
        for src, dst in combo:
            mapping.update(zip(src, dst))
        d = 0.0
        for zt, zs in mapping.items():
            xt, rt = _elem_props(zt)
            xs, rs = _elem_props(zs)
            d += template_counts[zt] / total * (abs(xt - xs) + abs(rt - rs))
        out.append((d, mapping))
    out.sort(key=lambda t: t[0])
    return out[:limit]


def substitute(lat, frac, numbers, mapping: dict[int, int]):
    """Replace species by ``mapping`` and rescale the cell to the target's sum of atomic volumes.

    Returns a pymatgen ``Structure``.
    """
    from pymatgen.core import Lattice, Structure

    new = [mapping[int(z)] for z in numbers]
    v_old = sum(atomic_volume(_symbol(z)) for z in numbers)
    v_new = sum(atomic_volume(_symbol(z)) for z in new)
    f = (v_new / v_old) ** (1.0 / 3.0) if v_old > 0 else 1.0
    return Structure(Lattice(np.asarray(lat) * f), new, frac)


# --------------------------------------------------------------------------- backend

class TemplatesBackend:
    """Known structure types of the same anonymous stoichiometry, re-decorated with the target's species.

    Parameters
    ----------
    library : str, optional
        Default ``"pool,aflow"``: the indexed training pool shipped with the package and
        pymatgen's AFLOW prototypes (:func:`default_library`).  Also ``"pool"``, ``"aflow"``,
        ``"training-pool"`` (indexed from the datasets folder), a path (folder of CIFs, or CSV
        with a ``cif`` column), or a comma-separated union of these.
    members_per_type : int
        How many library members of one structure type may become proposals (the most
        similar in chemistry first): members differ in axial ratios and free coordinates.
    exclude : str or iterable of str, optional
        Library members (material ids or prototype labels; a comma-separated string or a list)
        never proposed.  For honest validation on structures the library holds: ``evaluate``
        leaves each target's own ``material_id`` out (``--dataset pool-val`` targets are pool
        members, so retrieval would otherwise return the answer itself).
    prescreen : bool
        When a PXRD pattern has more templates of its stoichiometry than ``n``: the first
        :data:`RETRIEVAL_KEEP` come in chemical order and the rest of ``n`` are the templates (of
        the next :data:`PRESCREEN_MAX`) whose powder pattern, at the best isotropic scale, fits
        best (``screen.prescreen``).  Chemistry alone ranks a type of distant elements last even
        when its pattern is the observed one.  False: chemical order only.
    """

    name = "templates"
    version = __version__
    capabilities = {"composition", "spacegroup"}

    def __init__(self, library: str | None = None, members_per_type: int = 3, exclude=None,
                 prescreen: bool = True, **_ignored):
        self.library_name = library or default_library()
        self.prescreen = as_bool(prescreen, "prescreen", "templates")
        self._library_chosen = bool(library)
        self.members_per_type = int(members_per_type)
        if isinstance(exclude, str):
            exclude = exclude.split(",")
        self.exclude = frozenset(str(x).strip() for x in (exclude or ()) if str(x).strip())

    @property
    def library(self) -> Library:
        """The library named by ``library_name`` (indexed once per process)."""
        return load_library(self.library_name)

    def library_name_for(self, observation: Observation) -> str:
        """The library used for ``observation``: ``library_name``, except that a single-element
        composition gets ``"aflow"`` unless a library was chosen.

        The pool's 84 elemental cells are MP-20/MPTS-52 polymorphs of a few elements; mixed with
        AFLOW's elemental prototypes (A1 fcc, A2 bcc, A3 hcp, A4 diamond, ...) they push the
        common types of most elements out of the first candidates (fcc Pt ninth), while the
        prototypes alone put them first.
        """
        if not self._library_chosen and "," in self.library_name and len(integer_counts(observation.composition)) == 1:
            return "aflow"
        return self.library_name

    def library_for(self, observation: Observation) -> Library:
        """The indexed library :meth:`library_name_for` names."""
        return load_library(self.library_name_for(observation))

    def candidates(self, observation: Observation):
        """All (distance, member index, mapping) tuples usable for ``observation``, ranked.

        The order interleaves structure types: first the best (member, assignment) of every
        type (types ranked by chemical distance, ties by how common the type is), then the
        second-best of every type, and so on.
        """
        lib = self.library_for(observation)
        target = integer_counts(observation.composition)
        from pymatgen.core.periodic_table import Element

        tz = {Element(el).Z: n for el, n in target.items()}
        key = anon_key(np.repeat(list(tz), list(tz.values())))
        idx = lib.by_anon().get(key, [])
        per_formula = sum(target.values())
        sg_hint = spacegroup_number(observation.spacegroup)
        by_type: dict[str, list] = {}
        usable = [i for i in idx if lib.offsets[i + 1] - lib.offsets[i] <= observation.max_atoms
                  and lib.ids[i] not in self.exclude]
        lib.ensure_wyckoff(usable)
        for i in usable:
            lat, frac, z = lib.member(i)
            natoms = len(z)
            if natoms > observation.max_atoms:
                continue
            if observation.z and natoms != observation.z * per_formula:
                continue
            if sg_hint and lib.spacegroup[i] != sg_hint:
                continue
            if observation.crystal_system and crystal_system(lib.spacegroup[i]) != observation.crystal_system.lower():
                continue
            tc = Counter(int(x) for x in z)
            for rank, (d, mapping) in enumerate(assignments(dict(tc), tz)):
                by_type.setdefault(lib.full_type_key(i), []).append((d + 0.05 * rank, i, mapping))
        if not by_type:
            return []
        # within a type keep distinct members first (a member's alternative assignments later)
        tiers: list[list] = []
        for tkey, lst in by_type.items():
            lst.sort(key=lambda t: t[0])
            seen_members: set[int] = set()
            firsts, rest = [], []
            for t in lst:
                (firsts if t[1] not in seen_members else rest).append(t)
                seen_members.add(t[1])
            ordered = firsts[: self.members_per_type] + rest
            pop = len(firsts)
            for j, t in enumerate(ordered):
                while len(tiers) <= j:
                    tiers.append([])
                tiers[j].append((t[0] - 0.02 * math.log(pop), tkey, t))
        out = []
        for tier in tiers:
            tier.sort(key=lambda u: u[0])
            out.extend((u[2][0], u[2][1], u[2][2], u[1]) for u in tier)
        return out

    def sample(self, observation: Observation, n: int, *, seed: int | None = None, progress=None) -> list[Proposal]:
        """Up to ``n`` substituted templates (fewer when the library holds fewer matches).

        Raises
        ------
        BackendError
            When the library has no structure of the composition's anonymous stoichiometry
            within ``observation.max_atoms``.
        """
        cands = self.candidates(observation)
        name = self.library_name_for(observation)
        if not cands:
            other = "" if "pool" in name else "--library pool, "
            raise BackendError(
                f"templates: no structure with the stoichiometry of {observation.formula} "
                f"(≤ {observation.max_atoms} atoms) in library {name!r}; "
                f"try {other}a larger --max-atoms, or another backend"
            )
        lib = self.library_for(observation)
        n = max(int(n), 0)
        by_pattern: dict[int, tuple[float, object]] = {}
        if self.prescreen and observation.kind == "xrd" and len(cands) > n > RETRIEVAL_KEEP:
            cands, by_pattern = self._pattern_order(observation, lib, cands)
        out = []
        for j, (d, i, mapping, tkey) in enumerate(cands[:n]):
            # the pre-screen already built the substituted structures it ranked
            s = by_pattern[j][1] if j in by_pattern else substitute(*lib.member(i), mapping)
            prov = {"template": lib.ids[i], "library": lib.name, "type": tkey,
                    "template_spacegroup": int(lib.spacegroup[i]),
                    "assignment": {_symbol(a): _symbol(b) for a, b in mapping.items()}}
            if j in by_pattern:
                prov["prescreen_rwp"] = round(by_pattern[j][0], 5)
            out.append(Proposal(structure=s, backend=self.name, seed=seed,
                                scores={"template_distance": float(d)}, provenance=prov))
            if progress:
                progress(1)
        return out

    def _pattern_order(self, observation: Observation, lib: Library, cands: list):
        """``cands`` with the first :data:`RETRIEVAL_KEEP` kept and the next :data:`PRESCREEN_MAX`
        ordered by their pre-screen Rwp against the pattern; also {new position: (Rwp, substituted
        structure)}.

        A pattern the pre-screen cannot use (no wavelength for 2θ, nothing finite) keeps the
        chemical order.
        """
        from ..screen import prescreen

        head, rest, tail = cands[:RETRIEVAL_KEEP], cands[RETRIEVAL_KEEP:PRESCREEN_MAX], cands[PRESCREEN_MAX:]
        structs = [substitute(*lib.member(i), mapping) for _d, i, mapping, _t in rest]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rwp = prescreen(observation, structs)
        except Exception as exc:  # noqa: BLE001 - the pre-screen only reorders; chemistry order stands
            warnings.warn(f"templates: pattern pre-screen skipped ({type(exc).__name__}: {exc})", stacklevel=3)
            return cands, {}
        if not np.isfinite(rwp).any():
            return cands, {}
        order = np.argsort(rwp, kind="stable")
        return (head + [rest[j] for j in order] + tail,
                {len(head) + k: (float(rwp[j]), structs[j]) for k, j in enumerate(order) if np.isfinite(rwp[j])})


@hookimpl
def register_backends(register):
    """Register the ``templates`` backend."""
    register("templates", TemplatesBackend)


if __name__ == "__main__":  # python -m diffpy_diffusion.backends.templates OUT.npz  (needs the datasets)
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else str(SHIPPED_LIBRARY)
    print(export_library(load_library("training-pool"), out))
