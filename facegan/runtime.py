"""What the training loop (`facegan.loop`) needs from its process group. Imports neither Ray nor W&B.

- collective decisions: `finite_flag` (a loss finite on every rank, as a device flag the fused
  optimizers read, no host sync), `all_ranks_finite` (the same as a bool), `agree` (rank 0's
  decision broadcast), so DDP never hangs on a rank that took another branch;
- `BadSteps`: counts skipped (non-finite) steps and stops the run after `max_bad_steps` in a row;
- `gather_rng`, `resume_dir`, `bare`: checkpoint/resume helpers (facegan.runstate holds the run's state);
- `setup_torch`: device (CUDA when asked or available, else CPU), precision (`resolve_precision`:
  autocast dtype and channels_last, agreed across ranks),
  threads and determinism.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from facegan.checkpoint import list_checkpoints
from facegan.config import CommonTrainConfig, ConfigError
from facegan.hooks import Hooks

log = logging.getLogger(__name__)


def pick_device(tc: CommonTrainConfig, hooks: Hooks) -> torch.device:
    """The runner's device (Ray Train's), else `train.device`: auto = CUDA when available."""
    if hooks.device is not None:
        return hooks.device
    want = tc.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", hooks.local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


@dataclass(frozen=True)
class Precision:
    """What a run computes in: the autocast dtype (None: fp32), whether nets and batches are
    channels_last, and why (the one line a run logs)."""

    amp_dtype: torch.dtype | None
    channels_last: bool
    why: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]


_DTYPE_CODES = (None, torch.bfloat16, torch.float16)


def resolve_precision(tc: CommonTrainConfig, device: torch.device, family: Any = None) -> Precision:
    """`train.precision` and `train.channels_last` made concrete for this device and family.

    CUDA: auto and bf16 give bf16 autocast (fp16 where the GPU has no bf16), fp16 gives fp16 (with a
    loss scaler). CPU: auto is bf16 autocast where the CPU has bf16 units (AVX512-BF16 or AMX;
    `cpu_has_bf16`) and the family has not opted out (`Family.cpu_bf16`, its `cpu_bf16_note` says
    why), else fp32; bf16, asked for explicitly, is honoured (warning on CPUs without bf16 units,
    where autocast emulates it); fp16 falls back to fp32 with a warning (its loss scaling is a CUDA
    path). channels_last auto: on when a CPU run computes in bf16 (oneDNN's bf16 convolutions are
    fastest on NHWC: DCGAN 64x64 1.70x fp32 with both, benchmarks/bench_precision.py per family),
    off otherwise (on CUDA it stays what it was until a GPU measures it: set it explicitly)."""
    p, name = tc.precision, getattr(family, "name", "this family")
    if device.type == "cuda":
        if p in ("auto", "bf16"):
            amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            why = f"train.precision={p} on CUDA"
        else:
            amp, why = (torch.float16 if p == "fp16" else None), f"train.precision={p}"
    elif p == "bf16":
        if not cpu_has_bf16():
            log.warning("train.precision=bf16 on a CPU without bf16 units: autocast emulates it, slower than fp32")
        amp, why = torch.bfloat16, "train.precision=bf16"
    elif p == "auto":
        if not cpu_has_bf16():
            amp, why = None, "train.precision=auto: this CPU has no bf16 units"
        elif family is not None and not getattr(family, "cpu_bf16", True):
            amp, why = None, f"train.precision=auto: {name} keeps fp32 on CPU ({family.cpu_bf16_note})"
        else:
            amp, why = torch.bfloat16, "train.precision=auto: this CPU has bf16 units (train.precision=fp32 to opt out)"
    else:
        if p == "fp16":
            log.warning("train.precision=fp16 needs CUDA; running fp32 on %s (train.precision: bf16 runs CPU autocast)",
                        device)
        amp, why = None, f"train.precision={p}"
    cl = tc.channels_last
    if cl == "auto":
        cl = device.type == "cpu" and amp is torch.bfloat16
    return Precision(amp, bool(cl), why)


def agree_precision(prec: Precision) -> Precision:
    """Rank 0's precision on every rank: ranks on different machines (a CPU with and one without
    bf16 units) could resolve `auto` differently, and DDP ranks must compute the same way."""
    if not distributed():
        return prec
    t = torch.tensor([_DTYPE_CODES.index(prec.amp_dtype), int(prec.channels_last)], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    code, cl = (int(v) for v in t.tolist())
    if (_DTYPE_CODES[code], bool(cl)) == (prec.amp_dtype, prec.channels_last):
        return prec
    log.warning("rank %d resolved %s, channels_last %s; using rank 0's choice", dist.get_rank(), prec.name,
                prec.channels_last)
    return Precision(_DTYPE_CODES[code], bool(cl), prec.why + " (rank 0's choice)")


def pick_precision(tc: CommonTrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for fp32 (`resolve_precision` without a family)."""
    return resolve_precision(tc, device).amp_dtype


def cpu_has_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def setup_torch(tc: CommonTrainConfig, hooks: Hooks, family: Any = None) -> tuple[torch.device, Precision]:
    """Device, precision (autocast dtype and memory format, agreed across ranks), thread count and
    determinism from a train config section (`facegan.config.CommonTrainConfig` fields)."""
    device = pick_device(tc, hooks)
    prec = agree_precision(resolve_precision(tc, device, family))
    if hooks.rank == 0:
        log.info("precision: %s%s (%s)", prec.name, " + channels_last" if prec.channels_last else "", prec.why)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if tc.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device, prec


def check_writable_dir(path: str | Path, *, field: str) -> Path:
    """Create `path` if needed and prove it takes a file; ConfigError naming `field` otherwise.
    Run before training (and before Ray starts), not at the first checkpoint."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{field}: {path} exists and is not a directory")
    probe = path / f".facegan-write-test-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{field}: cannot write to {path} ({exc.strerror or exc})") from None
    return path


def memory_bytes() -> int:
    """This machine's physical memory (what user-chosen sizes are checked against before allocating)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. losses stayed non-finite); the message says what to do."""


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def bare(module: nn.Module) -> nn.Module:
    """The module inside DDP (or the module itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def finite_flag(loss: torch.Tensor) -> torch.Tensor:
    """1.0 when `loss` is finite on every rank, else 0.0: a 0-dim float32 tensor on the loss's
    device. No host sync: under DDP it is a MIN all-reduce that the device runs in stream order
    (NCCL), so every rank holds the same flag and takes the same (device-side) decision."""
    flag = torch.isfinite(loss.detach()).all().to(torch.float32)
    if distributed():
        if dist.get_backend() == "nccl" and flag.device.type != "cuda":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag


def all_ranks_finite(loss: torch.Tensor) -> bool:
    """True when the loss is finite on every rank (one host sync: the paths that must branch on it)."""
    # Ranks must agree on skipping: a rank that skips backward while others run it would hang DDP.
    return bool(finite_flag(loss).item() > 0)


def agree(flag: bool) -> bool:
    """Rank 0's decision, broadcast so that every rank takes the same branch."""
    if not distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    return bool(t.item() > 0)


def gather_rng(gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """Every rank's RNG states, gathered on all ranks (rank 0 writes them)."""
    mine = {"torch": torch.get_rng_state(), "gen": gen.get_state()}
    if device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(device)
    if distributed():
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, {k: v.cpu() for k, v in mine.items()})
    else:
        everyone = [mine]
    return {f"{k}_rank{r}": v for r, states in enumerate(everyone) for k, v in states.items()}


def resume_dir(resume: str, hooks: Hooks, ckpt_root: Path) -> Path | None:
    """The checkpoint to resume from: the runner's (Ray Train after a restart) first, then
    `train.resume`: "latest" (the newest under ckpt_root; none there is an error, since the user
    asked to resume), "latest_or_fresh" (the newest, or a fresh start), a checkpoint folder, or ""
    for a fresh start."""
    from_runner = hooks.resume_from()
    if from_runner is not None:
        return Path(from_runner)
    if resume in ("latest", "latest_or_fresh"):
        found = list_checkpoints(ckpt_root)
        if found:
            return found[-1]
        if resume == "latest":
            raise ConfigError(f"train.resume: latest, but {ckpt_root} holds no checkpoint to resume from "
                              "(set train.resume: latest_or_fresh to start fresh when there is none)")
        return None
    if resume:
        path = Path(resume)
        if not (path / "meta.json").is_file():
            raise ConfigError(f"train.resume: {resume} is not a facegan checkpoint (no meta.json); give a "
                              "checkpoints/ckpt-* folder, latest or latest_or_fresh")
        return path
    return None


class BadSteps:
    """Skipped-step bookkeeping: a step whose loss is non-finite on any rank is skipped on all
    (facegan.loop.SkipNonFinite); `max_in_row` such steps in a row end the run with a TrainingError
    naming the last good checkpoint.

    The loop records steps when it reads their flags from the device (at ticks, epoch ends and
    checkpoints, with the per-step losses), in step order, on every rank alike: the run stops there,
    before any checkpoint is written, with the step and kimg at which the limit was reached. The
    total is run state (a counter of facegan.runstate.RunState: meta.json's `bad_steps`)."""

    def __init__(self, *, max_in_row: int, rank: int, advice: str, total: int = 0) -> None:
        self.max_in_row, self.rank, self.advice = max_in_row, rank, advice
        self.total, self.in_row = total, 0

    def state_dict(self) -> dict[str, int]:
        return {"bad_steps": self.total}

    def load_state_dict(self, meta: dict[str, Any]) -> None:
        self.total, self.in_row = int(meta.get("bad_steps", 0)), 0

    def record(self, ok: bool, *, step: int, images_seen: int, last_ckpt: Path | None) -> None:
        if ok:
            self.in_row = 0
            return
        self.in_row += 1
        self.total += 1
        log.warning("rank %d step %d: non-finite loss, step skipped (%d in a row)", self.rank, step, self.in_row)
        if self.in_row >= self.max_in_row:
            where = f"; last good checkpoint: {last_ckpt}" if last_ckpt else "; no checkpoint was written"
            raise TrainingError(
                f"losses were non-finite for {self.in_row} steps in a row at {images_seen / 1000:.1f} kimg "
                f"(train.max_bad_steps={self.max_in_row}){where}. {self.advice}")
