"""The "favorite face" report's family: a DCGAN whose noise is the alpha/beta attribute overlay.

G is DCGAN's generator on a 4*A-dimensional noise (160 for CelebA's 40 attributes) built by
`facegan.overlay.overlay_noise` from the loop's standard-normal z and an attribute vector o; D is
DCGAN's discriminator, unconditioned (the report does not condition D). During training o comes
from a frozen attribute classifier applied to the real batch (`attr_source: classifier`, the
report's method) or from the batch's labels (`attr_source: labels`). The DCGAN tricks (label
flipping, smoothing, instance noise) are the same options as the dcgan family.

    steps = make_steps(alpha=0.6, beta=0.8, attr_source="classifier", classifier="runs/classifier",
                       label_flip=0.05)
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

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facegan.config import ConfigError
from facegan.overlay import DEFAULT_ALPHA, DEFAULT_BETA, check_weight, overlay_noise
from facegan.steps.dcgan import DCGANOptions, DCGANSteps

ATTR_SOURCES = ("classifier", "labels")


@dataclass(kw_only=True)
class OverlayOptions(DCGANOptions):
    """The overlay family's GAN options (`gan:` in a run config): DCGAN's tricks plus the overlay."""

    alpha: float = DEFAULT_ALPHA      # weight of r in blocks 1-2 (1 - alpha on the attributes), [0, 1]
    beta: float = DEFAULT_BETA        # weight of r in blocks 3-4, [0, 1]
    attr_source: Literal["classifier", "labels"] = "classifier"   # where o comes from during training
    classifier: str = ""              # classifier checkpoint or run folder; required for attr_source classifier

    def __post_init__(self):
        super().__post_init__()
        self.alpha = check_weight("alpha", self.alpha)
        self.beta = check_weight("beta", self.beta)
        if self.attr_source not in ATTR_SOURCES:
            raise ConfigError(f"attr_source must be one of {list(ATTR_SOURCES)}, got {self.attr_source!r}")
        if self.attr_source == "classifier" and not self.classifier:
            raise ConfigError("classifier: required when attr_source is 'classifier' (a checkpoint or run folder "
                              "written by `facegan classifier train`); or set attr_source: labels")


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no grads: a fixed function of its input."""
    return module.eval().requires_grad_(False)


@torch.no_grad()
def attribute_probs(classifier: nn.Module, img_BCHW: Tensor) -> Tensor:
    """The classifier's attribute probabilities o_BA (float32) for images in [-1, 1].

    Images are resized to the classifier's `resolution` when it has one and they differ.
    Attributes outside its `scored_attrs` (when it has them) get their train-split rate.
    """
    res = getattr(classifier, "resolution", None)
    if res is not None and tuple(img_BCHW.shape[-2:]) != (res, res):
        img_BCHW = F.interpolate(img_BCHW.float(), size=(res, res), mode="bilinear", align_corners=False,
                                 antialias=True)
    o_BA = torch.sigmoid(classifier(img_BCHW).float())
    scored = getattr(classifier, "scored_attrs", None)
    names = getattr(classifier, "attr_names", None)
    if scored is not None and names is not None and len(scored) < len(names):
        rate_A = torch.tensor(classifier.train_positives, dtype=torch.float32, device=o_BA.device) \
            / max(int(classifier.train_count), 1)
        keep_A = torch.tensor([n in scored for n in names], device=o_BA.device)
        o_BA = torch.where(keep_A, o_BA, rate_A)
    return o_BA


class OverlaySteps(DCGANSteps):
    """DCGAN phases on overlay noise. The loop passes `attrs_BA` (uses_attrs) and moves the
    classifier with `to(device)`; d_step hands g_step its fakes (and o) through `carry`."""

    uses_attrs = True

    def __init__(self, options: OverlayOptions, *, classifier: nn.Module | None = None):
        super().__init__(options)
        self.options: OverlayOptions = options
        self._classifier = freeze(classifier) if classifier is not None else None
        self._device: torch.device | None = None

    @property
    def classifier(self) -> nn.Module:
        """The frozen classifier (loaded from options.classifier on first use)."""
        if self._classifier is None:
            from facegan.classify import load_classifier

            self._classifier = freeze(load_classifier(self.options.classifier))
            if self._device is not None:
                self._classifier.to(self._device)
        return self._classifier

    def to(self, device: torch.device | str) -> "OverlaySteps":
        self._device = torch.device(device)
        if self.options.attr_source == "classifier":
            self.classifier.to(self._device)  # load now: a bad path fails before training starts
        return self

    def noise(self, r_BZ: Tensor, o_BA: Tensor) -> Tensor:
        return overlay_noise(r_BZ, o_BA, alpha=self.options.alpha, beta=self.options.beta)

    def generate(self, G: nn.Module, z_BZ: Tensor, attrs_BA: Tensor) -> Tensor:
        """Faces for noise z_BZ and attribute rows (probabilities or 0/1) attrs_BA."""
        return G(self.noise(z_BZ, attrs_BA))

    def attributes(self, *, real_BCHW: Tensor, attrs_BA: Tensor | None) -> Tensor:
        """o_BA for a training batch: classifier outputs on the reals, or the labels."""
        if self.options.attr_source == "classifier":
            return attribute_probs(self.classifier, real_BCHW)
        if attrs_BA is None:
            raise ValueError("attr_source 'labels' needs the batch's attrs_BA (the loop passes them to "
                             "families with uses_attrs)")
        return attrs_BA.float()

    def d_step(self, *, G: nn.Module, D: nn.Module, real_BCHW: Tensor, z_BZ: Tensor, kimg: float,
               generator: torch.Generator | None = None, carry: dict[str, Tensor] | None = None,
               attrs_BA: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """DCGAN's D loss on fakes G(overlay(z, o)); o from the reals (classifier) or their labels."""
        o_BA = self.attributes(real_BCHW=real_BCHW, attrs_BA=attrs_BA)
        if carry is not None:
            carry["o_BA"] = o_BA
        loss, scalars = super().d_step(G=G, D=D, real_BCHW=real_BCHW, z_BZ=self.noise(z_BZ, o_BA), kimg=kimg,
                                       generator=generator, carry=carry)
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


def make_steps(**options) -> OverlaySteps:
    """OverlaySteps from keyword options; an unknown option is a TypeError, a bad value a ConfigError."""
    return OverlaySteps(OverlayOptions(**options))
