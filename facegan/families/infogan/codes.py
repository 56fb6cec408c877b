"""InfoGAN's latent codes: the layout of G's input, sampling, building a latent from chosen codes,
the info loss on Q's predictions, its metrics, and the code traversal grid's latents.

    layout = LatentLayout(z_dim=128, cat_dim=10, cont_dim=2)          # latent = [z | one-hot cat | c1 c2]
    latent_BL = layout.sample(16, generator=gen)                     # z ~ N(0, I), cat uniform, c ~ U(-1, 1)
    latent_BL = layout.from_codes(z_BZ, cat=3, cont=[0.8, -0.2])     # chosen codes, e.g. for `facegan edit`
    latent_BL = layout.set_codes(latent_BL, {"cat": 3, "c1": 0.8})   # change some codes of given latents
    z_BZ, cat_BK, cont_BC = layout.split(latent_BL)
    loss, scalars = info_loss(q_BQ, latent_BL, layout, cat_weight=1.0, cont_weight=1.0, z_weight=0.1)

Q's prediction q_BQ has the columns [categorical logits (cat_dim) | continuous means (cont_dim) |
recovered z (z_dim, only with noise recovery)]. `layout.describe()` is what checkpoints record
(meta["latent_layout"]) so tools can address the codes by name: "cat", then "c1".."c<cont_dim>".
Pure tensor functions: no modules, no global RNG (draws come from an explicit generator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

CONT_LOW, CONT_HIGH = -1.0, 1.0
CONT_VARIANCE = (CONT_HIGH - CONT_LOW) ** 2 / 12   # of U(-1, 1): R^2 is measured against it
MAX_TRAVERSAL = 16                                 # rows and columns of a traversal grid, at most


@dataclass(frozen=True)
class LatentLayout:
    """G's input [z | one-hot categorical code | continuous codes]; z normal (InfoGAN) or uniform (BEGAN)."""

    z_dim: int
    cat_dim: int
    cont_dim: int
    z_dist: Literal["normal", "uniform"] = "normal"

    def __post_init__(self) -> None:
        if self.z_dim < 1 or self.cat_dim < 0 or self.cat_dim == 1 or self.cont_dim < 0:
            raise ValueError(f"latent layout: need z_dim >= 1, cat_dim 0 or >= 2, cont_dim >= 0; got {self}")
        if self.z_dist not in ("normal", "uniform"):
            raise ValueError(f"latent layout: z_dist must be 'normal' or 'uniform', got {self.z_dist!r}")

    # --- geometry
    @property
    def dim(self) -> int:
        return self.z_dim + self.cat_dim + self.cont_dim

    @property
    def code_dim(self) -> int:
        """Q's outputs for the codes: categorical logits and continuous means."""
        return self.cat_dim + self.cont_dim

    @property
    def cat_slice(self) -> slice:
        return slice(self.z_dim, self.z_dim + self.cat_dim)

    @property
    def cont_slice(self) -> slice:
        return slice(self.z_dim + self.cat_dim, self.dim)

    @property
    def code_names(self) -> list[str]:
        return (["cat"] if self.cat_dim else []) + [f"c{j + 1}" for j in range(self.cont_dim)]

    def describe(self) -> dict[str, Any]:
        """The layout as JSON (checkpoint meta): column ranges [start, stop) and the codes' domains."""
        return {"dim": self.dim, "z": [0, self.z_dim], "z_dist": self.z_dist,
                "cat": [self.cat_slice.start, self.cat_slice.stop], "cat_dim": self.cat_dim,
                "cont": [self.cont_slice.start, self.cont_slice.stop], "cont_dim": self.cont_dim,
                "cont_range": [CONT_LOW, CONT_HIGH], "code_names": self.code_names}

    @classmethod
    def from_description(cls, d: Mapping[str, Any]) -> "LatentLayout":
        return cls(z_dim=int(d["z"][1]), cat_dim=int(d["cat_dim"]), cont_dim=int(d["cont_dim"]),
                   z_dist=d.get("z_dist", "normal"))

    # --- sampling and building
    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Tensor:
        """n latents: z from its prior, a uniform category, continuous codes ~ U(-1, 1)."""
        gen_device = generator.device if generator is not None else "cpu"
        if self.z_dist == "normal":
            z = torch.randn(n, self.z_dim, generator=generator, device=gen_device)
        else:
            z = torch.rand(n, self.z_dim, generator=generator, device=gen_device) * 2 - 1
        parts = [z]
        if self.cat_dim:
            cat = torch.randint(self.cat_dim, (n,), generator=generator, device=gen_device)
            parts.append(F.one_hot(cat, self.cat_dim).to(z.dtype))
        if self.cont_dim:
            u = torch.rand(n, self.cont_dim, generator=generator, device=gen_device)
            parts.append(CONT_LOW + (CONT_HIGH - CONT_LOW) * u)
        latent = torch.cat(parts, dim=1)
        return latent.to(device) if device is not None else latent

    def split(self, latent_BL: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z_BZ, one-hot cat_BK, cont_BC) views of latents in this layout."""
        self._check(latent_BL)
        return latent_BL[:, :self.z_dim], latent_BL[:, self.cat_slice], latent_BL[:, self.cont_slice]

    def categories(self, latent_BL: Tensor) -> Tensor:
        """The categorical code of each latent (argmax of its one-hot part), long (B,)."""
        if not self.cat_dim:
            raise ValueError("this latent layout has no categorical code (cat_dim 0)")
        return self.split(latent_BL)[1].argmax(dim=1)

    def from_codes(self, z_BZ: Tensor, *, cat: int | Tensor | None = None,
                   cont: Sequence[float] | Tensor | None = None) -> Tensor:
        """Latents from z and chosen codes: `cat` a category (or one per row), `cont` the continuous
        codes (one list for every row, or a (B, cont_dim) tensor). Every code the layout has must be
        given; values outside the training domain are refused (ValueError naming the code)."""
        if z_BZ.ndim != 2 or z_BZ.shape[1] != self.z_dim:
            raise ValueError(f"z: expected shape (B, {self.z_dim}), got {tuple(z_BZ.shape)}")
        n = z_BZ.shape[0]
        parts = [z_BZ]
        if self.cat_dim:
            if cat is None:
                raise ValueError(f"cat: this layout has a categorical code of {self.cat_dim} categories; give one")
            cat_B = torch.as_tensor(cat, device=z_BZ.device).long()
            cat_B = cat_B.expand(n) if cat_B.ndim == 0 else cat_B
            if cat_B.shape != (n,) or cat_B.min() < 0 or cat_B.max() >= self.cat_dim:
                raise ValueError(f"cat: expected a category in 0..{self.cat_dim - 1} (or one per row), got {cat}")
            parts.append(F.one_hot(cat_B, self.cat_dim).to(z_BZ.dtype))
        elif cat is not None:
            raise ValueError("cat: this layout has no categorical code")
        if self.cont_dim:
            if cont is None:
                raise ValueError(f"cont: this layout has {self.cont_dim} continuous codes; give {self.cont_dim} values")
            c = torch.as_tensor(cont, dtype=z_BZ.dtype, device=z_BZ.device)
            c = c.expand(n, -1) if c.ndim == 1 else c
            if c.shape != (n, self.cont_dim):
                raise ValueError(f"cont: expected {self.cont_dim} values (or a ({n}, {self.cont_dim}) tensor), "
                                 f"got shape {tuple(c.shape)}")
            self._check_cont(c)
            parts.append(c)
        elif cont is not None and len(cont):
            raise ValueError("cont: this layout has no continuous codes")
        return torch.cat(parts, dim=1)

    def set_codes(self, latent_BL: Tensor, values: Mapping[str, float | int]) -> Tensor:
        """A copy of `latent_BL` with the named codes set: {"cat": 3, "c1": 0.8} (names: code_names)."""
        self._check(latent_BL)
        out = latent_BL.clone()
        for name, value in values.items():
            if name == "cat" and self.cat_dim:
                k = int(value)
                if k != value or not 0 <= k < self.cat_dim:
                    raise ValueError(f"cat: expected a category in 0..{self.cat_dim - 1}, got {value!r}")
                out[:, self.cat_slice] = F.one_hot(torch.tensor(k), self.cat_dim).to(out)
            elif name in self.code_names and name != "cat":
                j = int(name[1:]) - 1
                v = torch.tensor(float(value))
                self._check_cont(v, name=name)
                out[:, self.cont_slice.start + j] = v.to(out)
            else:
                raise ValueError(f"unknown code {name!r}; this latent has {', '.join(self.code_names) or 'no codes'}")
        return out

    def _check(self, latent_BL: Tensor) -> None:
        if latent_BL.ndim != 2 or latent_BL.shape[1] != self.dim:
            raise ValueError(f"expected latents of shape (B, {self.dim}) [z {self.z_dim} | cat {self.cat_dim} | "
                             f"cont {self.cont_dim}], got {tuple(latent_BL.shape)}")

    @staticmethod
    def _check_cont(c: Tensor, *, name: str = "cont") -> None:
        if not torch.isfinite(c).all() or c.min() < CONT_LOW or c.max() > CONT_HIGH:
            raise ValueError(f"{name}: continuous codes lie in [{CONT_LOW:g}, {CONT_HIGH:g}] (their training "
                             f"range), got {c.tolist()}")

    # --- the traversal grid (InfoGAN Fig. 2)
    def traversals(self, z_Z: Tensor, *, base_BL: Tensor | None = None) -> dict[str, Tensor]:
        """Latents of the code traversal grids, name -> (rows * columns, dim), row-major and square
        (so a default grid layout shows rows as rows). For each continuous code c_j, "traverse_c<j>":
        rows are categories (at most MAX_TRAVERSAL), columns c_j from -1 to 1, z fixed to `z_Z` and
        the other continuous codes 0. Without a categorical code, rows are different z (the rows of
        `base_BL`'s z, else z_Z for every row). Without continuous codes, "traverse_cat": rows are
        different z, columns the categories."""
        if z_Z.shape != (self.z_dim,):
            raise ValueError(f"z: expected shape ({self.z_dim},), got {tuple(z_Z.shape)}")
        grids: dict[str, Tensor] = {}
        side = min(self.cat_dim, MAX_TRAVERSAL) if self.cat_dim else 8
        zs_RZ = z_Z.expand(side, -1)
        if base_BL is not None and base_BL.shape[0] >= side:
            zs_RZ = base_BL[:side, :self.z_dim]
        if self.cont_dim:
            values_C = torch.linspace(CONT_LOW, CONT_HIGH, side, device=z_Z.device, dtype=z_Z.dtype)
            for j in range(self.cont_dim):
                rows = []
                for r in range(side):
                    cont_CC = torch.zeros(side, self.cont_dim, device=z_Z.device, dtype=z_Z.dtype)
                    cont_CC[:, j] = values_C
                    z_CZ = (z_Z if self.cat_dim else zs_RZ[r]).expand(side, -1)
                    rows.append(self.from_codes(z_CZ, cat=r if self.cat_dim else None, cont=cont_CC))
                grids[f"traverse_c{j + 1}"] = torch.cat(rows)
        else:
            rows = [self.from_codes(zs_RZ[r].expand(side, -1), cat=torch.arange(side, device=z_Z.device))
                    for r in range(side)]
            grids["traverse_cat"] = torch.cat(rows)
        return grids


def info_loss(q_BQ: Tensor, latent_BL: Tensor, layout: LatentLayout, *, cat_weight: float, cont_weight: float,
              z_weight: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """L_info and its parts for Q's predictions `q_BQ` of the codes of `latent_BL` (see module doc).

    L_info = cat_weight * CE + cont_weight * 1/2 * sum_j (mu_j - c_j)^2 (batch mean) + z_weight * MSE(z_hat, z).
    Minimising it maximises InfoGAN's lower bound H(c) - L on I(c; G(z, c)). Scalars (detached):
    mi/cat_acc, mi/cat_nats (= log K - CE), mi/cont_mse, mi/cont_r2, mi/z_mse, as the layout has them.
    """
    z_BZ, cat_BK, cont_BC = layout.split(latent_BL)
    expected = layout.code_dim + (layout.z_dim if z_weight > 0 else 0)
    if q_BQ.ndim != 2 or q_BQ.shape[1] != expected:
        raise ValueError(f"Q's prediction: expected shape (B, {expected}), got {tuple(q_BQ.shape)}")
    q_BQ = q_BQ.float()
    loss = q_BQ.new_zeros(())
    scalars: dict[str, Tensor] = {}
    if layout.cat_dim:
        logits_BK = q_BQ[:, :layout.cat_dim]
        target_B = cat_BK.argmax(dim=1)
        ce = F.cross_entropy(logits_BK, target_B)
        loss = loss + cat_weight * ce
        scalars["mi/cat_acc"] = (logits_BK.detach().argmax(dim=1) == target_B).float().mean()
        scalars["mi/cat_nats"] = math.log(layout.cat_dim) - ce.detach()
    if layout.cont_dim:
        mu_BC = q_BQ[:, layout.cat_dim:layout.code_dim]
        sq_BC = (mu_BC - cont_BC.float()) ** 2
        loss = loss + cont_weight * 0.5 * sq_BC.sum(dim=1).mean()
        mse = sq_BC.detach().mean()
        scalars["mi/cont_mse"] = mse
        scalars["mi/cont_r2"] = 1.0 - mse / CONT_VARIANCE
    if z_weight > 0:
        z_mse = F.mse_loss(q_BQ[:, layout.code_dim:], z_BZ.float())
        loss = loss + z_weight * z_mse
        scalars["mi/z_mse"] = z_mse.detach()
    return loss, scalars
