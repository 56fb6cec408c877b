"""The run's state, declared once: what a checkpoint holds is what resume restores.

    state = RunState({"G": G, "D": D, "G_ema": G_ema, "opt_G": opt_G, "opt_D": opt_D, "scaler": scaler,
                      "family": steps, "rng": RankRNG(gen, device, rank=0, world_size=1)},
                     counters=(progress, bad_steps), info=lambda: {"family": "dcgan", ...})
    state.save(root / "ckpt-000000200", keep=3, rank=rank)   # every rank calls it (the RNG gather)
    state.load(state_pt, meta_json, where=path)              # on resume, every rank

The model is torchtitan's Stateful / CheckpointManager: the run hands the checkpointer a mapping of
named components that each have `state_dict()` / `load_state_dict()`, and the checkpoint is that
mapping's state_dicts, nothing laid out by hand.

- `components` (checkpoint key -> Stateful) go to `state.pt`, one entry per key: the nets by name,
  EMA copies `<net>_ema`, optimizers `opt_<name>`, `scaler`, the family's `Steps` as `family`,
  every rank's RNG as `rng` (facegan.checkpoint's format 2).
- `counters` (Stateful too, JSON-valued) go to `meta.json`: each one's state_dict() is merged into
  the meta at the top level, and load_state_dict() is handed the whole meta (a counter reads its
  own keys; a key missing from an older checkpoint takes its default). `Progress` holds the step,
  images seen, the stream position, the training time and the stage; `facegan.runtime.BadSteps`
  the skipped steps.
- `info()`: what else the meta records for readers of the checkpoint (family, model, config, what
  the family knows of its data): written at each save, not read back by resume.

Adding a piece of state (an augmentation pipe's probability `p`, say) is one entry in the
`components` mapping that `facegan.loop.build_run` builds: `"augment": pipe`, where `pipe.state_dict()` returns tensors and
plain values and `pipe.load_state_dict(d)` restores them. A checkpoint written before the entry
existed has no such key: resume hands the component `{}`, so its load_state_dict({}) must leave
its fresh state as it is (and one that cannot start fresh raises ValueError, which resume reports
as a checkpoint that does not fit). state_dict() is called on every rank at every checkpoint
(rank 0 writes); it may run collectives, as the RNG gather does, and must then hold the same value
on every rank for anything all ranks use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from facegan.checkpoint import prune_checkpoints, save_checkpoint
from facegan.errors import CheckpointError
from facegan.runtime import gather_rng

log = logging.getLogger(__name__)


@runtime_checkable
class Stateful(Protocol):
    """What a checkpoint component is: nn.Module, torch.optim.Optimizer, GradScaler, a family's Steps."""

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


@dataclass
class Progress:
    """The run's counters (meta.json): steps, images seen over all ranks, batches this rank drew
    (the stream position a resumed loader starts at), training time over restarts (train.max_minutes
    spans them) and the stage the last step ran in (None: a fresh run)."""

    loader: dict[str, Any] = field(default_factory=dict)   # the stream's settings, recorded beside its position
    step: int = 0
    images_seen: int = 0
    batches: int = 0
    train_seconds: float = 0.0
    stage: int | None = None
    _clock_from: float | None = field(default=None, repr=False)

    @property
    def kimg(self) -> float:
        return self.images_seen / 1000

    def start_clock(self) -> None:
        """Training time counts from here, on top of what the checkpoint brought."""
        self._clock_from = time.perf_counter() - self.train_seconds

    def seconds(self) -> float:
        """Training time so far, earlier attempts included."""
        return self.train_seconds if self._clock_from is None else time.perf_counter() - self._clock_from

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "images_seen": self.images_seen, "kimg": self.kimg,
                "loader": dict(self.loader, start_batch=self.batches), "train_seconds": self.seconds(),
                "stage": self.stage}

    def load_state_dict(self, meta: Mapping[str, Any]) -> None:
        self.step, self.images_seen = int(meta["step"]), int(meta["images_seen"])
        self.batches = int(meta.get("loader", {}).get("start_batch", self.step))
        self.train_seconds = float(meta.get("train_seconds", 0.0))
        self.stage = meta.get("stage")
        self._clock_from = None


class RankRNG:
    """Every rank's RNG streams (torch's global one, the loop's generator, CUDA's), one component.

    state_dict() gathers all ranks' states (a collective: every rank calls it) as
    {"torch_rank0": ..., "gen_rank0": ..., "cuda_rank0": ...}; load_state_dict() restores this
    rank's when the checkpoint has as many ranks as this run, and otherwise says that the streams
    restart (the nets and counters still resume)."""

    def __init__(self, gen: torch.Generator, device: torch.device, *, rank: int, world_size: int) -> None:
        self.gen, self.device, self.rank, self.world_size = gen, device, rank, world_size

    def state_dict(self) -> dict[str, torch.Tensor]:
        return gather_rng(self.gen, self.device)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        saved_ranks = sum(1 for key in state if key.startswith("torch_rank"))
        r = self.rank
        if saved_ranks != self.world_size or f"torch_rank{r}" not in state:
            log.warning("resuming with %d ranks from a %s-rank checkpoint: RNG streams restart", self.world_size,
                        saved_ranks)
            return
        torch.set_rng_state(state[f"torch_rank{r}"])
        self.gen.set_state(state[f"gen_rank{r}"])
        if self.device.type == "cuda" and f"cuda_rank{r}" in state:
            torch.cuda.set_rng_state(state[f"cuda_rank{r}"], self.device)


class RunState:
    """Everything a checkpoint holds (see the module docstring): `components` to state.pt by key,
    `counters` merged into meta.json, `info()` beside them."""

    def __init__(self, components: Mapping[str, Stateful], *, counters: Iterable[Stateful],
                 info: Callable[[], dict[str, Any]]) -> None:
        self.components = dict(components)
        self.counters = tuple(counters)
        self.info = info

    def state_dict(self) -> dict[str, Any]:
        """state.pt's contents (every rank calls it: components may gather across ranks)."""
        return {key: component.state_dict() for key, component in self.components.items()}

    def meta(self) -> dict[str, Any]:
        meta = dict(self.info())
        for counter in self.counters:
            values = counter.state_dict()
            clash = sorted(set(values) & set(meta))
            if clash:
                raise ValueError(f"run state: meta keys {clash} are written twice")
            meta.update(values)
        return meta

    def load_state_dict(self, state: Mapping[str, Any], *, where: Path | str = "checkpoint") -> None:
        """Every component from state.pt's entry of its key ({} where the checkpoint has none);
        CheckpointError naming the component that does not fit."""
        for key, component in self.components.items():
            try:
                component.load_state_dict(state.get(key, {}))
            except (KeyError, RuntimeError, ValueError) as exc:
                raise CheckpointError(f"{where}: does not fit this model: {key}: {exc}") from None

    def load_meta(self, meta: Mapping[str, Any]) -> None:
        for counter in self.counters:
            counter.load_state_dict(meta)

    def load(self, state: Mapping[str, Any], meta: Mapping[str, Any], *, where: Path) -> None:
        """Resume: the components from `state`, the counters from `meta`."""
        self.load_state_dict(state, where=where)
        self.load_meta(meta)

    def save(self, directory: Path, *, keep: int, rank: int) -> Path | None:
        """Write the checkpoint `directory` from rank 0 and keep the newest `keep` beside it;
        every rank calls it. Returns the checkpoint on rank 0, None on the others."""
        state = self.state_dict()
        if rank != 0:
            return None
        path = save_checkpoint(directory, state=state, meta=self.meta())
        prune_checkpoints(directory.parent, keep=keep)
        return path
