"""The "favorite face" report's alpha/beta overlay: G's noise built from random noise and attributes.

For A attributes (CelebA: 40) the noise has 4*A coordinates (160), in four blocks of A. With a
standard-normal vector r and the attribute vector o (the classifier's outputs, or the labels),
coordinate i of block k is

    block 1:  alpha * r[i] + (1 - alpha) * o[i mod A]
    block 2:  alpha * r[i] - (1 - alpha) * o[i mod A]
    block 3:  beta  * r[i] + (1 - beta)  * o[i mod A]
    block 4:  beta  * r[i] - (1 - beta)  * o[i mod A]

alpha = 0.6 and beta = 0.8 by default: the alpha blocks carry more of the attributes, the beta
blocks more of the randomness; alpha = beta = 1 is an unconditioned generator.

    z_B160 = overlay_noise(torch.randn(16, 160), o_1x40, alpha=0.6, beta=0.8)
    faces = G(z_B160)

A pure tensor function: differentiable in r and o, no modules, no global state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from facegan.families.overlay import DEFAULT_ALPHA, DEFAULT_BETA, NUM_BLOCKS, check_weight


def overlay_noise(r_BZ: Tensor, o_BA: Tensor, *, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA) -> Tensor:
    """The report's noise: r_BZ (Z = 4*A, standard normal) overlaid with attributes o_BA.

    o_BA may have one row (or be 1-d) to use the same attributes for every r. Returns z_BZ in
    r's dtype. Raises ConfigError for alpha/beta outside [0, 1], ValueError for shapes that do
    not fit (naming both shapes).
    """
    alpha = check_weight("alpha", alpha)
    beta = check_weight("beta", beta)
    if o_BA.ndim == 1:
        o_BA = o_BA[None]
    if r_BZ.ndim != 2 or o_BA.ndim != 2 or r_BZ.shape[1] != NUM_BLOCKS * o_BA.shape[1] \
            or o_BA.shape[0] not in (1, r_BZ.shape[0]):
        raise ValueError(f"overlay_noise: r must be (B, 4*A) and o (B, A) or (1, A); got r {tuple(r_BZ.shape)} "
                         f"and o {tuple(o_BA.shape)}")
    num_attrs = o_BA.shape[1]
    weight_Z = torch.tensor([alpha, alpha, beta, beta], dtype=r_BZ.dtype, device=r_BZ.device).repeat_interleave(num_attrs)
    sign_Z = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=r_BZ.dtype, device=r_BZ.device).repeat_interleave(num_attrs)
    o_BZ = o_BA.to(r_BZ.dtype).repeat(1, NUM_BLOCKS)          # column i holds o[i mod A]
    return weight_Z * r_BZ + sign_Z * (1.0 - weight_Z) * o_BZ
