"""Loading runs back: one function for every family's checkpoints, one generator bundle.

    run = load_run("runs/wgangp")                  # newest checkpoint of a run folder (or a ckpt-* folder)
    run.family, run.cfg, run.nets["G"], run.steps  # nets on the CPU, eval mode, EMA weights where there are
    gen = load_generator("runs/dcgan")             # any family with a generator
    faces = gen.sample(16, seed=0)                 # uint8-ready floats in [-1, 1]
    faces = gen.generate(gen.latent(16, seed=1), attrs=rows)   # families that take attributes

Checkpoints of format 1 (written before families were packages) are upgraded on load by their
family (`Family.upgrade_v1`); a checkpoint from a newer facegan is refused naming both versions.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from facegan.checkpoint import FORMAT_VERSION, fetch_checkpoint, find_checkpoint, load_checkpoint
from facegan.config import ConfigError, from_dict
from facegan.errors import CheckpointError, DataError
from facegan.families import FAMILIES, RunConfig
from facegan.families.base import DataInfo, Family
from facegan.families.steps import Steps


def family_of(meta: dict[str, Any], *, where: Path) -> Family:
    name = (meta.get("family") or (meta.get("config") or {}).get("model", {}).get("family")
            or ("classifier" if meta.get("kind") == "classifier" else None))
    if name not in FAMILIES:
        raise CheckpointError(f"{where}: written for model family {name!r}, which this facegan does not have "
                              f"(families: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[name]


def read_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu"
                    ) -> tuple[dict[str, Any], dict[str, Any], Family, RunConfig]:
    """(state, meta, family, run config) of a checkpoint folder, in today's format."""
    path = Path(path)
    state, meta = load_checkpoint(path, map_location=map_location)
    version = int(meta.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} is newer than this facegan's ({FORMAT_VERSION}); "
                              "upgrade facegan to load it")
    family = family_of(meta, where=path)
    if version < 2:
        state, meta = family.upgrade_v1(state, meta)
    try:
        cfg = from_dict(RunConfig, meta["config"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{path}: cannot read the run config stored in its meta.json ({exc}); it was written "
                              f"in checkpoint format {version}") from None
    return state, meta, family, cfg


def _data_from_shards(cfg: RunConfig, data: DataInfo, *, where: Path) -> DataInfo:
    """Attribute names and train-split counts from the run's shard set, for checkpoints whose meta
    lacks them (hand-made, or written before the meta carried them)."""
    from facegan.data.labels import label_counts
    from facegan.data.stream import ShardSet

    try:
        shards = ShardSet.open(cfg.data.shards)
        pos, n = label_counts(shards, "train")
    except (DataError, OSError) as exc:
        raise CheckpointError(f"{where}: its meta has no attribute names or rates and its shard set "
                              f"({cfg.data.shards!r}) cannot be read: {exc}") from None
    if not shards.attr_names or n == 0:
        raise CheckpointError(f"{where}: its meta has no attribute names or rates and {cfg.data.shards} has no "
                              "labelled train split")
    return DataInfo(attr_names=tuple(shards.attr_names), train_positives=tuple(int(p) for p in pos), train_count=n,
                    shard_recipe=data.shard_recipe or dict(shards.manifest.get("recipe", {})),
                    resolution=tuple(shards.resolution))


@dataclass
class LoadedRun:
    checkpoint: Path
    family: Family
    cfg: RunConfig
    meta: dict[str, Any]
    data: DataInfo
    nets: dict[str, nn.Module]          # CPU, eval mode, no grads; the EMA weights where asked and present
    steps: Steps

    @property
    def kimg(self) -> float:
        return float(self.meta.get("kimg", 0.0))


def load_run(path: str | Path, *, ema: bool = True) -> LoadedRun:
    """Every net of a run's checkpoint, rebuilt from its meta (no shard set needed) and loaded.
    `path` may be an fsspec URL (a checkpoint in ray.storage_path on S3): it is fetched first."""
    if "://" in str(path):
        with tempfile.TemporaryDirectory(prefix="facegan-checkpoint-") as tmp:
            return load_run(fetch_checkpoint(str(path), Path(tmp)), ema=ema)
    ckpt = find_checkpoint(path)
    state, meta, family, cfg = read_checkpoint(ckpt)
    data = DataInfo.from_meta(meta)
    if family.needs_labels and not data.attr_names:
        data = _data_from_shards(cfg, data, where=ckpt)
    elif family.needs_labels and data.train_positives is None:
        try:  # the rates are only needed to draw attributes at their training rates (sample, generate)
            data = _data_from_shards(cfg, data, where=ckpt)
        except CheckpointError:
            pass
    torch.manual_seed(0)  # initial weights are overwritten; seeded so loading never shifts a caller's stream
    nets = family.build_nets(cfg, data)
    for name, net in nets.items():
        key = f"{name}_ema" if ema and f"{name}_ema" in state else name
        try:
            net.load_state_dict(state[key])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{ckpt}: the {name} weights do not fit its config: {exc}") from None
        net.eval().requires_grad_(False)
    steps = family.build_steps(cfg, data)
    if "family" in state:
        steps.load_state_dict(state["family"])
    return LoadedRun(checkpoint=ckpt, family=family, cfg=cfg, meta=meta, data=data, nets=nets, steps=steps)


@dataclass
class Generator:
    """A trained generator with what sampling, evaluation, blending and inversion need around it."""

    run: LoadedRun
    G: nn.Module

    @property
    def family(self) -> Family:
        return self.run.family

    @property
    def steps(self) -> Steps:
        return self.run.steps

    @property
    def cfg(self) -> RunConfig:
        return self.run.cfg

    @property
    def attr_names(self) -> list[str]:
        return list(self.run.data.attr_names)

    @property
    def prevalence_A(self) -> Tensor | None:
        rates = self.run.data.attr_prevalence
        return torch.tensor(rates, dtype=torch.float32) if rates is not None else None

    @property
    def resolution(self) -> tuple[int, int]:
        return self.run.cfg.model.size

    @property
    def crop(self) -> str | tuple[int, int]:
        crop = self.run.data.shard_recipe.get("crop", "square")
        return crop if isinstance(crop, str) else (int(crop[0]), int(crop[1]))

    @property
    def checkpoint(self) -> str:
        return str(self.run.checkpoint)

    @property
    def kimg(self) -> float:
        return self.run.kimg

    @property
    def latent_dim(self) -> int:
        return self.steps.latent_dim

    def latent(self, n: int, *, seed: int) -> Tensor:
        return self.steps.latent(n, generator=torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def generate(self, latent: Tensor, attrs: Tensor | None = None) -> Tensor:
        if self.family.takes_attrs and attrs is None:
            attrs = self.default_attrs(latent.shape[0])
        return self.steps.generate(self.G, latent, attrs.to(latent.dtype) if attrs is not None else None)

    def default_attrs(self, n: int) -> Tensor:
        """Attribute rows at their train-split rates (families that take attributes)."""
        rates = self.prevalence_A
        if rates is None:
            raise CheckpointError(f"{self.checkpoint}: no train-split attribute rates in its meta, and its shard set "
                                  f"({self.cfg.data.shards}) cannot be read to count them")
        return rates.expand(n, -1).clone()

    def sample(self, n: int, *, seed: int = 0, attrs: Tensor | None = None) -> Tensor:
        """n images in [-1, 1] (CPU) from latents seeded by `seed`."""
        return self.generate(self.latent(n, seed=seed), attrs)


def load_generator(path: str | Path, *, ema: bool = True) -> Generator:
    """The generator of any generative family's checkpoint (or run folder): CPU, eval mode."""
    run = load_run(path, ema=ema)
    if run.family.generator is None:
        raise CheckpointError(f"{run.checkpoint}: a {run.family.name} checkpoint has no generator "
                              "(an attribute classifier's? sample/eval/blend need a GAN or VAE run)")
    return Generator(run=run, G=run.nets[run.family.generator])
