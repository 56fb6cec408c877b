"""The sngan family: Mimicry's SNGAN at 64x64 (ResNet G and D, spectral norm in D, hinge loss,
n_dis 5, Adam 2e-4 betas (0, 0.9)). The registry-wide checks (a step, exact resume, 2-rank DDP,
augmentation) are in tests/test_families.py.

    .venv/bin/python -m pytest -q tests/test_sngan.py
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from facegan.config import ConfigError, from_dict
from facegan.families import FAMILIES, RunConfig
from facegan.families.sngan import sngan_params
from facegan.families.sngan.nets import build_sngan
from facegan.families.sngan.steps import hinge_d_loss


def cfg(**sections) -> RunConfig:
    return from_dict(RunConfig, {"data": {"shards": "x"}, "model": {"family": "sngan", **sections.pop("model", {})},
                                 **sections})


def test_declares_mimicrys_recipe() -> None:
    c = cfg()
    family = FAMILIES["sngan"]
    phases = family.phases(c)
    assert [(p.name, p.repeat, p.uses_data) for p in phases] == [("d", 5, True), ("g", 1, False)]
    opts = family.optimizers(c)
    assert opts["G"].lr == opts["D"].lr == 2e-4 and opts["G"].betas == opts["D"].betas == (0.0, 0.9)
    assert (c.model.resolution, c.model.z_dim, c.model.width) == (64, 128, 1024)


def test_64px_nets_are_mimicrys_and_d_is_spectrally_normalised_after_init() -> None:
    torch.manual_seed(0)
    nets = build_sngan(resolution=64, z_dim=8, width=64)
    G, D = nets["G"], nets["D"]
    assert len(G.blocks) == 4 and [b.c1.out_channels for b in G.blocks] == [32, 16, 8, 4]
    assert len(D.blocks) == 5 and [b.c2.out_channels for b in D.blocks] == [4, 8, 16, 32, 64]
    img = G(torch.randn(3, 8))
    assert img.shape == (3, 3, 64, 64) and img.abs().max() <= 1
    assert D(img).shape == (3,)
    layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
    assert not any(parametrize.is_parametrized(m) for m in G.modules())
    D.train()
    for _ in range(30):   # power iterations, one per training forward
        D(img.detach())
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.05)
    # The init was Mimicry's Xavier before the normalisation: the stored originals are not unit-norm.
    original = D.blocks[0].c1.parametrizations.weight.original
    assert torch.linalg.matrix_norm(original.detach().flatten(1), ord=2) > 1.05


def test_hinge_loss_by_hand() -> None:
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    lr, lf = hinge_d_loss(real, fake)
    assert float(lr) == pytest.approx((0 + 0.5 + 2.0) / 3) and float(lf) == pytest.approx((0 + 1.0 + 2.5) / 3)


def test_param_count_without_torch_matches_the_nets_and_bounds_the_width() -> None:
    nets = build_sngan(resolution=32, z_dim=16, width=64)
    real = tuple(sum(p.numel() for p in net.parameters() if p.dim() > 1) for net in nets.values())
    assert sngan_params(resolution=32, z_dim=16, width=64) == real
    with pytest.raises(ConfigError, match="model.width: expected a multiple of 16"):
        cfg(model={"width": 100})
    with pytest.raises(ConfigError, match="model.width: 8192 at resolution 64 gives a net of about"):
        cfg(model={"width": 8192})
    with pytest.raises(ConfigError, match="gan.n_dis"):
        cfg(gan={"n_dis": 0})
