"""The torch side of a family: `Steps`, the object whose methods are its phases.

    steps = family.build_steps(cfg, data)
    ctx = StepContext(nets={"G": G_ddp, "D": D_ddp}, batch=batch, kimg=0.0, generator=gen)
    loss, scalars = steps.run("d", ctx)     # one phase: the loss the loop backpropagates, detached scalars
    steps.after_step(ctx)                   # adaptive state (k_t, noise levels) from this step, agreed across ranks
    img = steps.generate(G, steps.latent(16, generator=gen))

A phase returns (loss, scalars): scalars are detached 0-dim tensors left on the device, so the
loop can reduce them at ticks without a host sync per step. `state_dict()` holds the family's
non-parameter training state; the loop checkpoints it and restores it on resume. Every rank must
hold the same state: update it from values all-reduced across ranks (`mean_over_ranks`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from facegan.errors import CheckpointError, ConfigError
from facegan.families.base import DataInfo
from facegan.runtime import distributed


@dataclass
class StepContext:
    """What a phase sees. `nets` are the training nets (DDP-wrapped under DDP; with augmentation,
    the Family.augment_nets see their image input through the pipe); `carry` hands values from one
    phase to the next within a step (cleared by the loop after the step)."""

    nets: dict[str, nn.Module]
    batch: dict[str, Tensor]
    kimg: float
    generator: torch.Generator
    carry: dict[str, Any] = field(default_factory=dict)
    # The run's augmentation pipe (facegan.augpipe) for a family that augments explicitly (the loop
    # already sends the images of Family.augment_nets through it); identity for augment.kind none.
    augment: Callable[[Tensor], Tensor] = field(default=lambda x: x)
    step: int = 0                     # 0-based index of this step (lazy regularisers: R1 every N)

    @property
    def real(self) -> Tensor:
        return self.batch["image"]

    @property
    def batch_size(self) -> int:
        return int(self.batch["image"].shape[0])

    @property
    def device(self) -> torch.device:
        return self.batch["image"].device


def mean_over_ranks(values: Tensor) -> Tensor:
    """The mean of `values` over all ranks (itself on one process): adaptive state computed from
    it is the same on every rank."""
    if not distributed():
        return values
    t = values.detach().clone()
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        t = t.cuda()
    dist.all_reduce(t)
    return (t / dist.get_world_size()).to(values.device)


class Steps:
    """Base of every family's phases. Subclasses define one method per phase name."""

    def __init__(self, cfg: Any, data: DataInfo) -> None:
        self.cfg = cfg
        self.data = data
        self.options = cfg.gan
        self.device = torch.device("cpu")

    # --- training
    def run(self, phase: str, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        return getattr(self, phase)(ctx)

    def after_step(self, ctx: StepContext) -> None:
        """Called on every rank after a step whose phases all ran (adaptive state updates)."""

    def tick_metrics(self, kimg: float) -> dict[str, float]:
        """Scalars reported at each tick besides the phases' means (e.g. the current noise level)."""
        return {}

    def lr_factors(self) -> dict[str, float]:
        """Optimizer name -> factor on its configured rate (BEGAN's decay when M stalls); the loop
        applies it after every step. Part of the family state: keep it in state_dict()."""
        return {}

    # --- structure that changes during training (progressive growing)
    def stage(self, kimg: float) -> int:
        """The net structure in use after `kimg` thousand images (a deterministic function of kimg,
        so every rank agrees). When it changes the loop calls enter_stage on the bare nets, re-wraps
        them for DDP (which registers only parameters with requires_grad) and, if the family says so
        (Family.reset_optimizers_on_stage), clears the Adam moments."""
        return 0

    def enter_stage(self, nets: dict[str, nn.Module], stage: int) -> None:
        """Switch the nets to `stage` (e.g. requires_grad on the blocks grown so far)."""

    # --- rank 0 side effects at ticks and at the end (videos, extra files)
    def on_tick(self, nets: dict[str, nn.Module], *, out_dir: Any, kimg: float, images_seen: int) -> None:
        """Called on rank 0 at every tick with the evaluation nets (EMA where kept), after the grids."""

    def finish(self, *, out_dir: Any) -> None:
        """Called on rank 0 when training ends (write a video from the frames kept at ticks)."""

    # --- state
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no training state, got {sorted(state)}")

    def to(self, device: torch.device | str) -> "Steps":
        self.device = torch.device(device)
        return self

    def meta(self) -> dict[str, Any]:
        """Extra checkpoint meta (JSON) for loading this family's checkpoints later."""
        return {}

    def check_resume(self, meta: dict[str, Any], *, where: Any) -> None:
        """Raise CheckpointError when a checkpoint cannot continue in this run (beyond the model's
        shape keys, which the loop compares). Default: the same attribute names, if any."""
        saved = list(meta.get("attr_names") or [])
        if saved and self.data.attr_names and saved != list(self.data.attr_names):
            raise CheckpointError(f"{where} does not fit this run: the shard set's attribute names differ")

    # --- sampling (generative families)
    @property
    def latent_dim(self) -> int:
        return int(self.cfg.model.z_dim)

    def latent(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Tensor:
        """G's input for n samples: standard normal z unless the family says otherwise."""
        gen_device = generator.device if generator is not None else "cpu"
        z = torch.randn(n, self.latent_dim, generator=generator, device=gen_device)
        return z.to(device) if device is not None else z

    def generate(self, G: nn.Module, latent: Tensor, attrs: Tensor | None = None) -> Tensor:
        """Images in [-1, 1] from G for `latent` (and attribute rows, for families that take them)."""
        return G(latent)

    def project_latent(self, latent: Tensor) -> Tensor:
        """The nearest valid latent (e.g. back onto a sphere); GAN inversion calls it after each step."""
        return latent

    def set_codes(self, latent: Tensor, values: Mapping[str, float]) -> Tensor:
        """`latent` with named codes set, e.g. {"cat": 3, "c1": 0.8} (families with latent codes:
        InfoGAN, InfoBEGAN). ValueError for an unknown code or a value out of range."""
        raise ConfigError(f"the {type(self).__name__.removesuffix('Steps')} latent has no named codes")

    def check_codes(self, values: Mapping[str, float]) -> None:
        """ConfigError unless `values` name this family's codes with valid values."""
        try:
            self.set_codes(torch.zeros(1, self.latent_dim), values)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"--set: {exc}") from None

    def encode(self, nets: dict[str, nn.Module], img_BCHW: Tensor) -> Tensor | None:
        """A latent for each image when the family has an encoder (a VAE's mean, a latent predictor's
        output): GAN inversion starts there. None: no encoder."""
        return None

    def tick_images(self, nets: dict[str, nn.Module], *, latent: Tensor, attrs: Tensor | None,
                    real: Tensor | None) -> dict[str, Tensor]:
        """Grids written at every tick: name -> images. `nets` are the evaluation nets (EMA where the
        family has one, eval mode); `latent`/`attrs` are fixed for the run; `real` a fixed real batch."""
        G = nets.get(self.cfg.family.generator or "")   # Family.generator: the net that makes images
        if G is None:
            return {}
        return {"samples": self.generate(G, latent, attrs)}

    # Whether tick_images draws on the fixed real batch (reconstructions): only then does rank 0
    # read one from the val split.
    grid_uses_real = False

    # --- evaluation hook (families with their own scoring, e.g. the classifier)
    def evaluate(self, nets: dict[str, nn.Module], *, final: bool, rank: int, world_size: int,
                 out_dir: Any, kimg: float, step: int = 0, images_seen: int = 0, checkpoint: Any = None,
                 autocast: Any = None) -> dict[str, float]:
        """Family-specific evaluation at eval ticks (final=False) and at the end (final=True); every
        rank calls it (collective ops allowed). `nets` are the evaluation nets (EMA where kept)."""
        return {}
