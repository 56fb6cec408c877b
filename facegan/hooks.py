"""The narrow interface between the training loop and whatever runs it (in-process or Ray).

The loop (`facegan.loop.train`) never imports Ray or W&B. It asks its `Hooks` where to resume
from, wraps models through them (DDP), and hands them metrics and finished checkpoints. The
in-process defaults below are what tests and `facegan train --no-ray` use; `facegan.launch`
implements the same hooks on top of Ray Train.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from facegan.stats import Sink


def _default_wrap(module: nn.Module, device: torch.device, **ddp_options: Any) -> nn.Module:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, **ddp_options)
    return module


@dataclass
class Hooks:
    """What the loop may ask of its runner. Every field has an in-process default.

    rank / world_size:  this process's DDP rank and the number of ranks.
    device:             the device the runner assigned (Ray: ray.train.torch.get_device()).
    resume_from():      a checkpoint directory to resume from, or None for a fresh start.
    wrap_model(m, dev, **ddp_options): DDP-wrap a module already on `dev` (Ray:
                        ray.train.torch.prepare_model). `ddp_options` are DistributedDataParallel
                        keyword arguments from the run's `ray:` section (RayConfig.ddp_options:
                        bucket_cap_mb, gradient_as_bucket_view); the loop passes only those the
                        config sets, so a two-argument wrap serves runs at DDP's defaults.
    report(metrics, checkpoint_dir): called on EVERY rank at each tick with the rank-reduced
                        metrics; on rank 0 `checkpoint_dir` is the checkpoint just written (None
                        on other ranks and between checkpoints). Ray turns this into
                        ray.train.report(...), which every rank must call.
    should_stop():      polled once per tick (e.g. a Tune scheduler stopping the trial).
    sinks:              metric sinks used on rank 0 besides the loop's JSON lines (W&B, the
                        progress line): each a facegan.stats.Sink.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None     # None: the loop picks (cuda:local_rank if available, else cpu)
    resume_from: Callable[[], Path | None] = lambda: None
    wrap_model: Callable[[nn.Module, torch.device], nn.Module] = _default_wrap
    report: Callable[[dict[str, float], Path | None], None] = lambda metrics, checkpoint_dir: None
    should_stop: Callable[[], bool] = lambda: False
    sinks: tuple["Sink", ...] = ()
