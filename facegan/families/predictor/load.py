"""Loading for the predictor family: the frozen GAN it trains against, and trained predictors.

    gan = load_gan("runs/infogan_celeba64", resolution=64)   # facegan.families.loading.Generator (EMA G)
    P = load_predictor("runs/infogan_celeba64/predictor")    # CPU, eval mode, frozen
    latent_BL = P(img_BCHW)                                 # images in [-1, 1] -> the GAN's latent layout
    P.gan_checkpoint, P.latent_layout                       # the GAN it belongs to; its code layout (or None)

`load_predictor` needs only the predictor's checkpoint (P's architecture and latent size are in its
meta); starting GAN inversion from it: latent_0 = P(photo), then refine G(latent) against the photo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from facegan.config import ConfigError, from_dict
from facegan.errors import CheckpointError
from facegan.families import FAMILIES, RunConfig
from facegan.families.loading import Generator, LoadedRun, load_generator, read_checkpoint
from facegan.families.predictor import UNTRAINED
from facegan.families.predictor.nets import LatentPredictor


def _check_target(family: Any, *, where: str) -> None:
    if family.generator is None or family.name == "predictor":
        raise ConfigError(f"gan.generator: {where} is a {family.name} run, not a GAN; give the GAN's checkpoint or "
                          "run folder")
    if family.takes_attrs:
        raise ConfigError(f"gan.generator: the {family.name} family's generator takes attribute rows; the predictor "
                          "inverts generators whose input is the latent alone")


def _untrained(family_name: str, *, resolution: int, shards: str) -> Generator:
    """A freshly initialised generator of `family_name` at its smoke size and this resolution (seeded)."""
    if family_name not in FAMILIES:
        raise ConfigError(f"gan.generator: {UNTRAINED}{family_name}: no such family (families: "
                          f"{', '.join(sorted(FAMILIES))})")
    family = FAMILIES[family_name]
    _check_target(family, where=f"{UNTRAINED}{family_name}")
    data: dict[str, Any] = {"data": {"shards": shards or "unused"}}
    for section, values in family.smoke.items():
        data[section] = dict(values)
    data["model"] = dict(data.get("model", {}), family=family_name, resolution=resolution)
    cfg = from_dict(RunConfig, data)
    from facegan.families.base import DataInfo

    info = DataInfo(resolution=(resolution, resolution))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        nets = family.build_nets(cfg, info)
    for net in nets.values():
        net.eval().requires_grad_(False)
    run = LoadedRun(checkpoint=Path(f"{UNTRAINED}{family_name}"), family=family, cfg=cfg, meta={}, data=info,
                    nets=nets, steps=family.build_steps(cfg, info))
    return Generator(run=run, G=nets[family.generator])


def load_gan(spec: str, *, resolution: int, shards: str = "") -> Generator:
    """The generator a predictor trains against: a GAN checkpoint or run folder (its EMA weights), or
    untrained:<family>. ConfigError when it cannot be a predictor's target (no generator, attribute
    inputs, another resolution)."""
    if spec.startswith(UNTRAINED):
        gan = _untrained(spec[len(UNTRAINED):], resolution=resolution, shards=shards)
    else:
        # Loading seeds torch's RNG; keep the caller's stream (the loop's seeded init of P) untouched.
        with torch.random.fork_rng(devices=[]):
            gan = load_generator(spec)
    _check_target(gan.family, where=spec)
    if tuple(gan.resolution) != (resolution, resolution):
        raise ConfigError(f"model.resolution: {resolution} is not the GAN's ({gan.resolution[0]}x{gan.resolution[1]}, "
                          f"{spec})")
    return gan


def build_predictor(model: Any, *, arch: str, latent_dim: int) -> LatentPredictor:
    """P for a predictor run's `model:` section, with the architecture already resolved."""
    return LatentPredictor(arch=arch, resolution=model.resolution, base_channels=model.base_channels,
                           latent_dim=latent_dim, batchnorm=model.batchnorm)


def load_predictor(path: str | Path) -> LatentPredictor:
    """A trained predictor (checkpoint or run folder, its newest): CPU, eval mode, no grads. Its
    `gan_checkpoint`, `gan_family`, `latent_layout` (None for GANs without codes) and `checkpoint`
    say what it predicts for."""
    from facegan.checkpoint import find_checkpoint

    ckpt = find_checkpoint(path)
    state, meta, family, cfg = read_checkpoint(ckpt)
    if family.name != "predictor":
        raise CheckpointError(f"{ckpt}: a {family.name} checkpoint, not a latent predictor's "
                              "(train one with `facegan predictor train --checkpoint GAN_RUN`)")
    info = meta.get("predictor") or {}
    try:
        P = build_predictor(cfg.model, arch=info["arch"], latent_dim=int(info["latent_dim"]))
        P.load_state_dict(state["P"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{ckpt}: its predictor weights or meta do not fit: {exc}") from None
    P.eval().requires_grad_(False)
    P.checkpoint = str(ckpt)
    P.gan_checkpoint = info.get("gan_checkpoint", "")
    P.gan_family = info.get("gan_family", "")
    P.latent_layout = info.get("latent_layout")
    return P
