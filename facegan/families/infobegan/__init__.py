"""InfoBEGAN: BEGAN with InfoGAN's latent codes and a latent predictor Q (the seed-002 report's final
architecture, its Fig. 15).

    facegan train configs/infobegan_celeba64.yaml

G's input is the latent [z, c_cat, c_cont] of facegan.families.infogan.codes (z ~ U(-1, 1) as in
BEGAN). Q has D's encoder architecture (BEGAN's encoder, its own weights) and predicts the latent
from an image: the categorical logits, the continuous codes and, with `gan.noise_recovery` > 0
(default 0.1, the report's noise coefficient), z. How its loss enters (our decision):

    L_D-phase = L(x) - k_t L(G(z))  +  info_weight * L_info(Q(G(z) detached))   (steps D's and Q's Adam)
    L_G       = L(G(z))             +  info_weight * L_info(Q(G(z)))

with L_info InfoGAN's (cross-entropy + Gaussian NLL of the codes + noise_recovery x MSE of z). Q is
a separate net rather than a head on D's encoder because BEGAN's D is trained to reconstruct, not to
tell real from fake: sharing its encoder would let the info term pull on the autoencoder whose
losses drive the equilibrium. The control (k_t, M, the rate decay) sees only L(x) and L(G(z)), so
the info term does not move the balance; Q shares D's optimizer (and its rate decay) and is used in
both phases, so DDP never meets an unused parameter. The MI metrics are InfoGAN's (mi/cat_acc, ...),
measured on fresh fakes in the D phase before Q trains on them.

`info_weight` defaults to 0.1, not InfoGAN's 1: BEGAN's G loss is an L1 reconstruction error of about
0.1, far weaker than a GAN's adversarial term, and at lambda = 1 the predictor's loss took over. On
the 2,160 CelebA training faces at 32 px (n = 16, 20 kimg) plain BEGAN drew faint faces, InfoBEGAN
at lambda = 1 drew code-carrying textures (mi/cat_acc 1.0, no faces), at lambda = 0.1 faces with
mi/cat_acc 1.0 and continuous-code R^2 0.95.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from facegan.families.base import DataInfo, Phase
from facegan.families.began import (BEGAN, BEGAN_CURVES, BEGAN_METRICS, BEGANModelConfig, BEGANOptions,
                                    check_began_size)
from facegan.families.infogan import INFO_CURVES, INFO_METRICS, InfoLossOptions, check_codes


@dataclass(kw_only=True)
class InfoBEGANModelConfig(BEGANModelConfig):
    family: str = "infobegan"
    cat_dim: int = 10                 # categories of the categorical code; 0: none
    cont_dim: int = 2                 # continuous codes, each U(-1, 1); 0: none
    q_hidden: int = 128               # hidden width of Q's head on its embedding

    def __post_init__(self) -> None:
        super().__post_init__()
        check_codes(self, what="an InfoBEGAN")
        check_began_size(self, in_dim=self.z_dim + self.cat_dim + self.cont_dim)


@dataclass(kw_only=True)
class InfoBEGANOptions(InfoLossOptions, BEGANOptions):
    """`gan:` of the infobegan family: BEGAN's control plus the predictor's loss weights."""

    info_weight: float = 0.1          # lambda on L_info in both phases (at 1 it drowned BEGAN's L1 signal: see the docstring)
    noise_recovery: float = 0.1       # weight of z's recovery MSE inside L_info (the report's 0.1); 0: Q predicts codes only


class InfoBEGAN(BEGAN):
    name = "infobegan"
    model_options = InfoBEGANModelConfig
    gan_options = InfoBEGANOptions
    latent_codes = True
    metrics = BEGAN_METRICS + INFO_METRICS
    curves = BEGAN_CURVES + INFO_CURVES
    shape_keys = BEGAN.shape_keys + ("cat_dim", "cont_dim", "q_hidden")
    smoke = {"model": {"resolution": 32, "z_dim": 16, "h_dim": 16, "base_channels": 8, "cat_dim": 4, "cont_dim": 2,
                       "q_hidden": 16},
             "gan": {"lr_patience_kimg": 0.016, "m_window_kimg": 0.008}}

    def phases(self, cfg) -> list[Phase]:
        return [Phase("d", opt="D"), Phase("g", opt="G", uses_data=False)]

    def optimizers(self, cfg):
        d = cfg.optim.spec("D", "d_lr")
        return {"G": cfg.optim.spec("G", "g_lr"), "D": dataclasses.replace(d, nets=("D", "Q"))}

    def build_nets(self, cfg, data: DataInfo):
        from facegan.families.began.nets import build_began
        from facegan.families.infobegan.nets import LatentPredictorQ
        from facegan.families.infogan.codes import LatentLayout

        m = cfg.model
        layout = LatentLayout(z_dim=m.z_dim, cat_dim=m.cat_dim, cont_dim=m.cont_dim, z_dist="uniform")
        nets = build_began(resolution=m.resolution, z_dim=layout.dim, h_dim=m.h_dim, base_channels=m.base_channels)
        nets["Q"] = LatentPredictorQ(resolution=m.resolution, base_channels=m.base_channels, h_dim=m.h_dim,
                                     hidden=m.q_hidden,
                                     out_dim=layout.code_dim + (m.z_dim if cfg.gan.noise_recovery > 0 else 0))
        return nets

    def build_steps(self, cfg, data: DataInfo):
        from facegan.families.infobegan.steps import InfoBEGANSteps

        return InfoBEGANSteps(cfg, data)


FAMILY = InfoBEGAN()
