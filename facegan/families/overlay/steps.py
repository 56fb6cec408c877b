"""The "favorite face" report's family: a DCGAN whose noise is the alpha/beta attribute overlay.

G is DCGAN's generator on a 4*A-dimensional noise (160 for CelebA's 40 attributes) built by
`facegan.families.overlay.noise.overlay_noise` from the step's standard-normal z and an attribute vector o; D is
DCGAN's discriminator, unconditioned (the report does not condition D). During training o comes
from a frozen attribute classifier applied to the real batch (`attr_source: classifier`, the
report's method) or from the batch's labels (`attr_source: labels`). The DCGAN tricks (label
flipping, smoothing, instance noise) are the same options as the dcgan family.

    steps = FAMILIES["overlay"].build_steps(cfg, data)   # cfg.gan: alpha, beta, attr_source, classifier
    steps.to(device)                                   # loads the classifier on first use, frozen
    carry = {}
    loss_d, _ = steps.d_step(G=G, D=D, real_BCHW=real, z_BZ=r_B160, kimg=0, attrs_BA=attrs, carry=carry)
    loss_g, _ = steps.g_step(G=G, D=D, z_BZ=r_B160, kimg=0, attrs_BA=attrs, carry=carry)
    faces = steps.generate(G, r_B160, o_BA)            # o: attribute probabilities or 0/1 rows

The classifier's outputs are probabilities (sigmoid of its logits), on the same 0..1 scale as
labels. Attributes the classifier was not trained on (constant in its training data, e.g. the 29
fixed attributes of synthetic faces) would give untrained, image-dependent outputs: they are
replaced by their train-split rate, which is what such a label always is.

Tests: .venv/bin/python -m pytest tests/test_control.py -q
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from facegan.families.base import DataInfo
from facegan.families.classifier.scoring import attribute_probs, freeze
from facegan.families.dcgan.steps import DCGANSteps
from facegan.families.overlay.noise import overlay_noise
from facegan.families.steps import StepContext


class OverlaySteps(DCGANSteps):
    """DCGAN phases on overlay noise. The batch carries `attrs` (needs_labels) and the loop moves the
    classifier with `to(device)`; d_step hands g_step its fakes (and o) through `carry`."""

    def __init__(self, cfg, data: DataInfo | None = None, *, classifier: nn.Module | None = None):
        super().__init__(cfg, data)
        self._classifier = freeze(classifier) if classifier is not None else None
        self._device: torch.device | None = None

    def d(self, ctx: StepContext):
        ctx.carry["z"] = z_BZ = self.latent(ctx.batch_size, generator=ctx.generator, device=ctx.device)
        return self.d_step(G=ctx.nets["G"], D=ctx.nets["D"], real_BCHW=ctx.real, z_BZ=z_BZ, kimg=ctx.kimg,
                           generator=ctx.generator, carry=ctx.carry, r1=self.options.r1_weight(ctx.step),
                           attrs_BA=ctx.batch.get("attrs"))

    def g(self, ctx: StepContext):
        return self.g_step(G=ctx.nets["G"], D=ctx.nets["D"], z_BZ=ctx.carry["z"], kimg=ctx.kimg,
                           generator=ctx.generator, carry=ctx.carry, attrs_BA=ctx.batch.get("attrs"))

    @property
    def classifier(self) -> nn.Module:
        """The frozen classifier (loaded from options.classifier on first use)."""
        if self._classifier is None:
            from facegan.families.classifier.scoring import load_classifier

            self._classifier = freeze(load_classifier(self.options.classifier))
            if self._device is not None:
                self._classifier.to(self._device)
        return self._classifier

    def to(self, device: torch.device | str) -> "OverlaySteps":
        super().to(device)
        self._device = torch.device(device)
        if self.options.attr_source == "classifier":
            self.classifier.to(self._device)  # load now: a bad path fails before training starts
        return self

    def noise(self, r_BZ: Tensor, o_BA: Tensor) -> Tensor:
        return overlay_noise(r_BZ, o_BA, alpha=self.options.alpha, beta=self.options.beta)

    def generate(self, G: nn.Module, latent: Tensor, attrs: Tensor | None = None) -> Tensor:
        """Faces for noise r (latent) and attribute rows (probabilities or 0/1)."""
        if attrs is None:
            raise ValueError("the overlay family's G needs attribute rows")
        return G(self.noise(latent, attrs))

    def attributes(self, *, real_BCHW: Tensor, attrs_BA: Tensor | None) -> Tensor:
        """o_BA for a training batch: classifier outputs on the reals, or the labels."""
        if self.options.attr_source == "classifier":
            return attribute_probs(self.classifier, real_BCHW)
        if attrs_BA is None:
            raise ValueError("attr_source 'labels' needs the batch's attrs_BA (the loop passes them to "
                             "families that need labels)")
        return attrs_BA.float()

    def d_step(self, *, G: nn.Module, D: nn.Module, real_BCHW: Tensor, z_BZ: Tensor, kimg: float,
               generator: torch.Generator | None = None, carry: dict[str, Tensor] | None = None,
               r1: float = 0.0, attrs_BA: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """DCGAN's D loss on fakes G(overlay(z, o)); o from the reals (classifier) or their labels."""
        o_BA = self.attributes(real_BCHW=real_BCHW, attrs_BA=attrs_BA)
        if carry is not None:
            carry["o_BA"] = o_BA
        loss, scalars = super().d_step(G=G, D=D, real_BCHW=real_BCHW, z_BZ=self.noise(z_BZ, o_BA), kimg=kimg,
                                       generator=generator, carry=carry, r1=r1)
        scalars["overlay/o_mean"] = o_BA.mean()
        return loss, scalars

    def g_step(self, *, G: nn.Module, D: nn.Module, z_BZ: Tensor, kimg: float,
               generator: torch.Generator | None = None, carry: dict[str, Tensor] | None = None,
               attrs_BA: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """DCGAN's G loss; reuses d_step's fakes from `carry`, else runs G on the same overlay."""
        o_BA = carry.pop("o_BA", None) if carry else None
        if carry and "fake_BCHW" in carry:
            return super().g_step(G=G, D=D, z_BZ=z_BZ, kimg=kimg, generator=generator, carry=carry)
        if o_BA is None:
            if self.options.attr_source == "classifier":
                raise ValueError("g_step without d_step's carry cannot see the real batch: pass the carry "
                                 "from d_step (attr_source 'classifier' takes o from the reals)")
            if attrs_BA is None:
                raise ValueError("attr_source 'labels' needs the batch's attrs_BA")
            o_BA = attrs_BA.float()
        return super().g_step(G=G, D=D, z_BZ=self.noise(z_BZ, o_BA), kimg=kimg, generator=generator, carry=carry)
