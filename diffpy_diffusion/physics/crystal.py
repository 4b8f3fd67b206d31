"""A batch of crystals as flat torch tensors: the input of every forward model.

Structures of different atom counts are concatenated ("flattened index
tensors", as in torch-geometric): atom ``i`` belongs to crystal
``batch[i]``.  All lengths in Å, ADPs (Uiso) in Å².
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch


@dataclass
class CrystalBatch:
    """B crystals with N atoms in total.

    Attributes
    ----------
    lattice : torch.Tensor, shape (B, 3, 3)
        Lattice vectors as rows, Å (pymatgen's ``Lattice.matrix`` convention).
    frac : torch.Tensor, shape (N, 3)
        Fractional coordinates.
    numbers : torch.LongTensor, shape (N,)
        Atomic numbers Z (1..94+).
    batch : torch.LongTensor, shape (N,)
        Index of the crystal each atom belongs to (sorted, 0..B-1).
    occupancy : torch.Tensor, shape (N,)
        Site occupancies (1 for ordered sites).
    uiso : torch.Tensor, shape (N,)
        Isotropic displacement parameters, Å² (Biso = 8π² Uiso).
    uij : torch.Tensor, shape (N, 3, 3), optional
        Anisotropic displacement tensors in Cartesian axes, Å² (used by the PDF
        where given; ``None``: isotropic ``uiso``).  Convert CIF/diffpy ``Uij``
        (crystal axes) with :func:`uij_cif_to_cartesian`.
    """

    lattice: torch.Tensor
    frac: torch.Tensor
    numbers: torch.Tensor
    batch: torch.Tensor
    occupancy: torch.Tensor
    uiso: torch.Tensor
    uij: torch.Tensor | None = None

    @property
    def num_crystals(self) -> int:
        return int(self.lattice.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.lattice.dtype

    @property
    def device(self) -> torch.device:
        return self.lattice.device

    def counts(self) -> torch.Tensor:
        """Atoms per crystal, shape (B,)."""
        return torch.bincount(self.batch, minlength=self.num_crystals)

    def cart(self) -> torch.Tensor:
        """Cartesian positions in Å, shape (N, 3)."""
        return torch.einsum("ni,nij->nj", self.frac, self.lattice[self.batch])

    def volume(self) -> torch.Tensor:
        """Cell volumes in Å³, shape (B,)."""
        return torch.linalg.det(self.lattice).abs()

    def to(self, device=None, dtype=None) -> CrystalBatch:
        """Copy to another device/float dtype (integer tensors keep their dtype)."""
        f = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        i = lambda t: t.to(device=device)  # noqa: E731
        return CrystalBatch(
            f(self.lattice), f(self.frac), i(self.numbers), i(self.batch), f(self.occupancy), f(self.uiso),
            None if self.uij is None else f(self.uij),
        )

    def replace(self, **changes) -> CrystalBatch:
        """A copy with some fields replaced (e.g. a lattice that requires grad)."""
        return replace(self, **changes)

    @classmethod
    def from_arrays(
        cls,
        lattices: Sequence[np.ndarray],
        fracs: Sequence[np.ndarray],
        numbers: Sequence[Sequence[int]],
        *,
        occupancies: Sequence[np.ndarray] | None = None,
        uisos: Sequence[np.ndarray] | float | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> CrystalBatch:
        """Build from per-crystal numpy arrays (lattice rows in Å, fractional coords, Z).

        Raises
        ------
        ValueError
            Naming the parameter: empty structure, non-positive cell volume,
            unknown atomic number.
        """
        if len(lattices) == 0:
            raise ValueError("lattices: need at least one crystal")
        lat = np.stack([np.asarray(m, dtype=float).reshape(3, 3) for m in lattices])
        vols = np.linalg.det(lat)
        for b, v in enumerate(vols):
            if not np.isfinite(v) or abs(v) < 1e-6:
                raise ValueError(f"lattice: crystal {b} has zero or non-finite cell volume ({v})")
        frac_list, num_list, batch_list, occ_list, u_list = [], [], [], [], []
        for b, (f, z) in enumerate(zip(fracs, numbers)):
            f = np.asarray(f, dtype=float).reshape(-1, 3)
            z = np.asarray(z, dtype=np.int64).reshape(-1)
            if len(z) == 0:
                raise ValueError(f"structure: crystal {b} has no atoms")
            if len(z) != len(f):
                raise ValueError(f"numbers: crystal {b} has {len(z)} numbers for {len(f)} positions")
            if (z < 1).any() or (z > 118).any():
                raise ValueError(f"numbers: crystal {b} has an unknown atomic number {z.min()}..{z.max()}")
            if not np.isfinite(f).all():
                raise ValueError(f"frac: crystal {b} has non-finite coordinates")
            frac_list.append(f)
            num_list.append(z)
            batch_list.append(np.full(len(z), b, dtype=np.int64))
            occ_list.append(
                np.ones(len(z)) if occupancies is None else np.asarray(occupancies[b], float).reshape(-1)
            )
            if uisos is None:
                u_list.append(np.zeros(len(z)))
            elif np.isscalar(uisos):
                u_list.append(np.full(len(z), float(uisos)))
            else:
                u_list.append(np.asarray(uisos[b], float).reshape(-1))
        t = lambda a: torch.as_tensor(np.concatenate(a), dtype=dtype, device=device)  # noqa: E731
        ti = lambda a: torch.as_tensor(np.concatenate(a), dtype=torch.long, device=device)  # noqa: E731
        return cls(
            torch.as_tensor(lat, dtype=dtype, device=device),
            t(frac_list),
            ti(num_list),
            ti(batch_list),
            t(occ_list),
            t(u_list),
        )

    @classmethod
    def from_padded(
        cls,
        lattice: torch.Tensor,
        frac: torch.Tensor,
        numbers: torch.Tensor,
        mask: torch.Tensor,
        *,
        uiso: float = 0.0,
    ) -> CrystalBatch:
        """Build from padded tensors (as a generative model holds them), keeping their autograd.

        Parameters
        ----------
        lattice : torch.Tensor, shape (B, 3, 3)
            Lattice vectors as rows, Å.
        frac : torch.Tensor, shape (B, N, 3)
            Fractional coordinates.
        numbers : torch.Tensor, shape (B, N)
            Atomic numbers (any value at padding).
        mask : torch.Tensor, shape (B, N)
            True (or 1) for the real atoms.
        uiso : float
            Uiso of every atom, Å².

        Raises
        ------
        ValueError
            When a crystal has no atom.
        """
        mask = mask.bool()
        counts = mask.sum(1)
        if bool((counts == 0).any()):
            raise ValueError(f"mask: crystal {int(torch.nonzero(counts == 0)[0])} has no atoms")
        dev = lattice.device
        batch = torch.repeat_interleave(torch.arange(mask.shape[0], device=dev), counts)
        occ = torch.ones(int(counts.sum()), dtype=lattice.dtype, device=dev)
        return cls(lattice, frac[mask].to(lattice.dtype), numbers[mask].long(), batch, occ, torch.full_like(occ, uiso))

    @classmethod
    def from_structures(
        cls,
        structures: Sequence,
        *,
        uiso: float | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> CrystalBatch:
        """Build from pymatgen ``Structure`` objects.

        Disordered sites become one atom per species with its occupancy.
        Uiso is taken from a site property ``"uiso"`` (Å²) or ``"Biso"``
        when present, else ``uiso`` (default 0).
        """
        lattices, fracs, numbers, occs, us = [], [], [], [], []
        for s in structures:
            f, z, o, u = [], [], [], []
            for site in s:
                site_u = site.properties.get("uiso") if site.properties else None
                if site_u is None and site.properties and site.properties.get("Biso") is not None:
                    site_u = float(site.properties["Biso"]) / (8 * np.pi**2)
                if site_u is None:
                    site_u = uiso or 0.0
                for sp, occ in site.species.items():
                    f.append(site.frac_coords)
                    z.append(getattr(sp, "Z", None) or sp.element.Z)
                    o.append(occ)
                    u.append(site_u)
            lattices.append(s.lattice.matrix)
            fracs.append(np.array(f).reshape(-1, 3))
            numbers.append(z)
            occs.append(np.array(o))
            us.append(np.array(u))
        return cls.from_arrays(lattices, fracs, numbers, occupancies=occs, uisos=us, dtype=dtype, device=device)


def uij_cif_to_cartesian(lattice, uij_cif):
    """Anisotropic ADPs from crystal axes (CIF ``U11..U23``, diffpy.structure ``Atom.U``) to Cartesian, Å².

    ``U_cart = A N U N^T A^T`` with ``A`` the lattice vectors as columns and
    ``N = diag(|a*|, |b*|, |c*|)`` (Grosse-Kunstleve & Adams, J. Appl. Cryst.
    35, 477 (2002), eq. 3).

    Parameters
    ----------
    lattice : array-like, shape (3, 3)
        Lattice vectors as rows, Å.
    uij_cif : array-like, shape (..., 3, 3)
    """
    lat = torch.as_tensor(lattice)
    u = torch.as_tensor(uij_cif, dtype=lat.dtype)
    a_cols = lat.T
    nrm = torch.linalg.inv(lat).norm(dim=0)  # |a*|, |b*|, |c*| (columns of A^-T rows)
    m = a_cols * nrm[None, :]
    return m @ u @ m.T
