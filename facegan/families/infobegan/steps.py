"""InfoBEGAN's phases: BEGAN's (k_t control, rate decay) plus info_weight x L_info of Q in both
phases (see the package docstring for how the predictor's loss enters).

    d(ctx):  BEGAN's L_D on latents with codes, + lambda L_info(Q(G(latent) detached)): D's Adam steps D and Q
    g(ctx):  BEGAN's L_G + lambda L_info(Q(G(latent)))

Tests: .venv/bin/python -m pytest tests/test_began.py -q
"""

from __future__ import annotations

from torch import Tensor, nn

from facegan.families.base import DataInfo
from facegan.families.began.steps import BEGANSteps
from facegan.families.infogan.codes import LatentLayout
from facegan.families.infogan.steps import LatentCodes
from facegan.families.steps import StepContext


class InfoBEGANSteps(LatentCodes, BEGANSteps):
    """BEGAN's phases on latents with codes; `layout` describes G's input (z ~ U(-1, 1))."""

    def __init__(self, cfg, data: DataInfo | None = None):
        super().__init__(cfg, data)
        m = cfg.model
        self.layout = LatentLayout(z_dim=m.z_dim, cat_dim=m.cat_dim, cont_dim=m.cont_dim, z_dist="uniform")

    # --- the phases
    def d(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        loss, scalars = super().d(ctx)
        info, info_scalars = self.info(ctx.nets["Q"](ctx.carry["fake_BCHW"].detach()), ctx.carry["latent"])
        scalars.update(info_scalars, **{"loss/info": info.detach()})
        return loss + self.options.info_weight * info, scalars

    def g(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        fake_BCHW = ctx.carry.get("fake_BCHW")
        if fake_BCHW is None:
            ctx.carry["fake_BCHW"] = fake_BCHW = ctx.nets["G"](ctx.carry["latent"])
        loss, scalars = super().g(ctx)
        info, _ = self.info(ctx.nets["Q"](fake_BCHW), ctx.carry["latent"])
        scalars["loss/g_info"] = info.detach()
        return loss + self.options.info_weight * info, scalars

    # --- grids
    def tick_images(self, nets: dict[str, nn.Module], *, latent: Tensor, attrs: Tensor | None,
                    real: Tensor | None) -> dict[str, Tensor]:
        grids = super().tick_images(nets, latent=latent, attrs=attrs, real=real)
        return {**grids, **self.traversal_images(nets["G"], latent)}
